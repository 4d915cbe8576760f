public import IPsecHACore
public import IPsecHASync

/// A data plane that keeps its own ESP counters, as a kernel's does (the shape of a Linux XFRM
/// adapter): packets sent and received here move its counters and nothing in the package sees
/// them, so a `ClusterMember` must observe them (`CounterKeeping.dataPlane`). For tests of
/// that contract.
public struct SimulatedKernelDataPlane: ClusterDataPlane {
    /// One Child SA as this data plane holds it, by inbound SPI.
    public struct SA: Sendable, Hashable {
        /// The last outbound sequence number used.
        public var lastSent: UInt64
        /// The largest outbound sequence number this SA may use.
        public var hardLimit: UInt64
        /// The highest inbound sequence number accepted.
        public var inboundTop: UInt64
        /// Packets and bytes both ways.
        public var usage: ChildSAUsage
    }

    /// The Child SAs installed, by inbound SPI.
    public private(set) var sas: [UInt32: SA] = [:]
    /// Whether this data plane sends and accepts (its member is active).
    public private(set) var isServing = false

    public var counterKeeping: CounterKeeping { .dataPlane }

    /// How often it reports counters, as a kernel whose SAs carry a timer threshold reports
    /// them (zero: at every call).
    public var counterReportInterval: Duration = .zero
    private var lastReport: Timestamp?

    /// An empty data plane that does not serve yet.
    public init() {}

    /// Installs `childSA` with its counters, as an IKE stack installs a new Child SA.
    public mutating func install(_ childSA: ChildSA) {
        sas[childSA.inboundSPI] = SA(
            lastSent: childSA.outboundCounter.lastSent, hardLimit: childSA.outboundCounter.hardLimit, inboundTop: childSA.inboundWindow.top,
            usage: childSA.lifetime.usage)
    }

    /// Sends `count` packets of `bytes` bytes on the Child SA with inbound SPI `spi` and returns
    /// the last sequence number used; nil, sending nothing, when not serving, for an unknown SA,
    /// or when its sequence space would run out.
    public mutating func send(spi: UInt32, count: UInt64, bytes: UInt64 = 1_000) -> UInt64? {
        guard isServing, var sa = sas[spi], sa.hardLimit - min(sa.lastSent, sa.hardLimit) >= count else { return nil }
        sa.lastSent += count
        sa.usage.outboundPackets &+= count
        sa.usage.outboundBytes &+= count &* bytes
        sas[spi] = sa
        return sa.lastSent
    }

    /// Accepts an inbound packet numbered `sequenceNumber` on the Child SA with inbound SPI
    /// `spi` (when serving).
    public mutating func receive(spi: UInt32, sequenceNumber: UInt64, bytes: UInt64 = 1_000) {
        guard isServing, var sa = sas[spi] else { return }
        sa.inboundTop = max(sa.inboundTop, sequenceNumber)
        sa.usage.inboundPackets &+= 1
        sa.usage.inboundBytes &+= bytes
        sas[spi] = sa
    }

    /// Whether ``stopServingForHandover(_:)`` refuses (it then serves on), as a kernel that
    /// refuses to delete an SA would.
    public var refusesHandover = false

    public mutating func observedCounters(of state: GatewayState, now: Timestamp) throws(DataPlaneError) -> [ChildSACounterCheckpoint] {
        if let lastReport, now.nanoseconds &- lastReport.nanoseconds < counterReportInterval.nonNegativeNanoseconds { return [] }
        lastReport = now
        return counters
    }

    /// Stops at once and reports the counters it ended with (unless ``refusesHandover``).
    public mutating func stopServingForHandover(_ state: GatewayState) throws(DataPlaneError) -> [ChildSACounterCheckpoint] {
        guard !refusesHandover else { throw DataPlaneError("refused, as asked") }
        isServing = false
        return counters
    }

    /// Every SA's counters, by inbound SPI.
    private var counters: [ChildSACounterCheckpoint] {
        sas.keys.sorted().map { spi in
            let sa = sas[spi]!
            return ChildSACounterCheckpoint(
                inboundSPI: spi, outbound: OutboundCounterCheckpoint(lastSent: sa.lastSent),
                inbound: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: sa.inboundTop), usage: sa.usage)
        }
    }

    /// Installs every Child SA of `state` with the counters it holds (after a takeover: the
    /// plan's) and serves.
    public mutating func startServing(_ state: GatewayState) throws(DataPlaneError) {
        sas = [:]
        for childSA in state.childSAs { install(childSA) }
        isServing = true
    }

    public mutating func stopServing() { isServing = false }
}
