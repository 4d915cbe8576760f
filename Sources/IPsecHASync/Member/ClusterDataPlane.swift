public import IPsecHACore

/// Who keeps a data plane's ESP sequence numbers and replay windows.
public enum CounterKeeping: Sendable, Hashable {
    /// The package: every packet passes ``ClusterMember/packetPath(_:)`` (userspace ESP, as
    /// the reference gateway's), and the member's state is the counters.
    case package
    /// The data plane itself (ESP in a kernel, as Linux XFRM, or in a NIC): nothing in the
    /// package sees each packet, so the active member reads them
    /// (``ClusterDataPlane/observedCounters(of:now:)``) and adopts them
    /// (``ClusterMember/observeCounters(_:)``) before each checkpoint.
    case dataPlane
}

/// Why a data plane refused (the adapter's own words; the member's state is unchanged).
public struct DataPlaneError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What failed, in the data plane's words (the kernel's error, the SA concerned).
    public var description: String

    /// An error that says `description`.
    public init(_ description: String) { self.description = description }
}

/// Where one cluster member's ESP runs, as its ``ClusterMember`` sees it: one of two shapes,
/// by ``counterKeeping``. A data plane that runs on the package's counters needs nothing but
/// ``startServing(_:)`` and ``stopServing()``; one that keeps its own counters also reports
/// them, so that checkpoints carry counters observed rather than driven.
///
/// ``ClusterMember/tick(now:dataPlane:)`` reads the counters before the checkpoints, and
/// ``ClusterMember/drive(_:for:)`` serves or stops on the member's takeovers and step-downs.
public protocol ClusterDataPlane {
    /// Who keeps the counters.
    var counterKeeping: CounterKeeping { get }

    /// The longest the counters of a Child SA that carries traffic go unreported by
    /// ``observedCounters(of:now:)`` (``CounterKeeping/dataPlane`` only; the default is zero:
    /// every call reports what moved). The member measures packet rates over at least this,
    /// since counters reported in steps look idle between them and then jump.
    var counterReportInterval: Duration { get }

    /// The counters of the Child SAs of `state` that the data plane keeps and that moved since
    /// the last call, or all of them (``CounterKeeping/dataPlane`` only; the default returns
    /// none). `now` lets a data plane that learns of counters from events pace its full reads.
    mutating func observedCounters(of state: GatewayState, now: Timestamp) throws(DataPlaneError) -> [ChildSACounterCheckpoint]

    /// Serve `state` from now on: after a takeover it holds the plan's counters (outbound
    /// counters past anything the failed member used, windows restored, Child SAs to rekey
    /// neither sending nor accepting), which a data plane that keeps its own counters
    /// installs as they are.
    mutating func startServing(_ state: GatewayState) throws(DataPlaneError)

    /// Stop sending and accepting on every Child SA: this member is a standby again.
    mutating func stopServing()

    /// Stop sending and accepting on every Child SA for a planned switchover
    /// (``ClusterMember/switchOver(to:dataPlane:now:)``), and return the counters of the Child
    /// SAs of `state` as stopping left them: the member hands them over exactly, so nothing
    /// may move them afterwards (a data plane that keeps its own counters stops numbering
    /// packets before it reads them). On an error it serves on as before, and the switchover
    /// does not happen. The default: none for a data plane on the package's counters (the
    /// member holds them; the step-down stops it), and an error for one that keeps its own.
    mutating func stopServingForHandover(_ state: GatewayState) throws(DataPlaneError) -> [ChildSACounterCheckpoint]
}

extension ClusterDataPlane {
    public var counterReportInterval: Duration { .zero }

    public mutating func observedCounters(of state: GatewayState, now: Timestamp) throws(DataPlaneError) -> [ChildSACounterCheckpoint] { [] }

    public mutating func stopServingForHandover(_ state: GatewayState) throws(DataPlaneError) -> [ChildSACounterCheckpoint] {
        guard counterKeeping == .package else {
            throw DataPlaneError("this data plane keeps its own counters and cannot stop for a switchover with them exact")
        }
        return []
    }
}
