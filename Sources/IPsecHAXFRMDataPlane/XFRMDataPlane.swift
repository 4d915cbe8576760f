public import IPsecHACore
public import IPsecHASync
public import IPsecHAXFRM

/// What ``XFRMDataPlane`` needs of the kernel: SAs' counters read (GETAE) and written
/// (NEWAE), the async events that arrived, and, when the data plane installs the Child SAs
/// itself, SAs and policies added and removed. `XFRMSocket` is the real one; tests give a table.
public protocol XFRMKernel {
    /// The counters the kernel holds for `sa`.
    mutating func asyncEvent(of sa: XFRMSAIdentifier, source: XFRMAddress) throws(XFRMCodecError) -> XFRMAsyncEvent
    /// Writes `event`'s counters to its SA.
    mutating func setAsyncEvent(_ event: XFRMAsyncEvent) throws(XFRMCodecError)
    /// The async events (`XFRMNLGRP_AEVENTS`) that arrived since the last call, without waiting.
    mutating func receiveAsyncEvents() throws(XFRMCodecError) -> [XFRMAsyncEvent]
    /// How often the kernel dropped events for want of buffer (`ENOBUFS`), so far.
    var eventOverruns: Int { get }
    /// Installs an SA (NEWSA).
    mutating func install(_ state: XFRMState) throws(XFRMCodecError)
    /// Adds or replaces a policy (UPDPOLICY).
    mutating func install(_ policy: XFRMPolicy) throws(XFRMCodecError)
    /// Deletes an SA (DELSA).
    mutating func delete(_ sa: XFRMSAIdentifier) throws(XFRMCodecError)
    /// Deletes an SA and returns its counters as the deletion left them (for a planned
    /// switchover: nothing may move them afterwards). `XFRMSocket` reads them from the kernel's
    /// notice of the deletion; the default reads them just before (GETAE, then DELSA), which
    /// is exact only for an SA no packet uses meanwhile.
    mutating func deleteReportingCounters(_ sa: XFRMSAIdentifier, source: XFRMAddress) throws(XFRMCodecError) -> XFRMAsyncEvent
    /// Deletes a policy (DELPOLICY).
    mutating func deletePolicy(selector: XFRMSelector, direction: XFRMPolicyDirection) throws(XFRMCodecError)
}

extension XFRMKernel {
    public mutating func deleteReportingCounters(_ sa: XFRMSAIdentifier, source: XFRMAddress) throws(XFRMCodecError) -> XFRMAsyncEvent {
        let last = try asyncEvent(of: sa, source: source)
        try delete(sa)
        return last
    }
}

#if canImport(Glibc)
extension XFRMSocket: XFRMKernel {
    public func deleteReportingCounters(_ sa: XFRMSAIdentifier, source: XFRMAddress) throws(XFRMCodecError) -> XFRMAsyncEvent {
        try deleteReportingCounters(sa)
    }
}
#endif

extension XFRMSelector {
    /// The XFRM selector of traffic from `source` to `destination`, or nil when either is not
    /// a prefix with one port or any port (XFRM matches prefixes and port masks, not ranges).
    init?(source: TrafficSelector, destination: TrafficSelector) {
        guard source.family == destination.family, let sourcePrefix = source.prefixLength, let destinationPrefix = destination.prefixLength,
            let sourcePort = source.portAndMask, let destinationPort = destination.portAndMask
        else { return nil }
        let ipProtocol = source.ipProtocol != 0 ? source.ipProtocol : destination.ipProtocol
        self.init(
            destination: XFRMAddress(destination.startAddress), source: XFRMAddress(source.startAddress), destinationPort: destinationPort.port,
            destinationPortMask: destinationPort.mask, sourcePort: sourcePort.port, sourcePortMask: sourcePort.mask,
            family: XFRMAddress.family(of: source.startAddress), destinationPrefixLength: destinationPrefix, sourcePrefixLength: sourcePrefix,
            upperLayerProtocol: ipProtocol, interfaceIndex: 0, user: 0)
    }
}

extension TrafficSelector {
    /// The prefix length when the address range is one prefix, else nil.
    var prefixLength: UInt8? {
        let (start, end) = (startAddress, endAddress)
        let width = family == .ipv4 ? 32 : 128
        // The host part: the bits where start and end differ, all ones in end, all zeros in start.
        let high = start.high ^ end.high, low = start.low ^ end.low
        let hostBits = high != 0 ? 128 - high.leadingZeroBitCount : (low != 0 ? 64 - low.leadingZeroBitCount : 0)
        guard hostBits <= width else { return nil }
        let lowMask: UInt64 = hostBits >= 64 ? .max : (1 << UInt64(hostBits)) - 1
        let highMask: UInt64 = hostBits > 64 ? (hostBits == 128 ? .max : (1 << UInt64(hostBits - 64)) - 1) : 0
        guard high == highMask, low == lowMask, start.high & highMask == 0, start.low & lowMask == 0 else { return nil }
        return UInt8(width - hostBits)
    }

    /// Any port (mask 0) or one port (mask 0xFFFF), else nil.
    var portAndMask: (port: UInt16, mask: UInt16)? {
        if isAnyPort { return (0, 0) }
        return startPort == endPort ? (startPort, 0xFFFF) : nil
    }
}

extension XFRMAddress {
    /// The XFRM form of `address`.
    public init(_ address: IPAddress) {
        switch address.family {
        case .ipv4:
            self.init(ipv4: UInt32(truncatingIfNeeded: address.low))
        case .ipv6:
            var bytes: [UInt8] = []
            for half in [address.high, address.low] { for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: half >> UInt64(shift))) } }
            self.init(bytes: bytes)!
        }
    }

    /// XFRM's family field for `address`.
    static func family(of address: IPAddress) -> UInt16 { address.family == .ipv4 ? ipv4Family : ipv6Family }
}

/// How ``XFRMDataPlane`` reads the kernel's counters and whether it installs Child SAs.
public struct XFRMDataPlaneConfiguration: Sendable, Hashable {
    /// Packets between an SA's async events (`XFRMA_REPLAY_THRESH`), set on the SAs this data
    /// plane installs: the checkpoint policy's packet count is the natural choice.
    public var replayThreshold: UInt32 = 64
    /// The longest an SA that carries traffic goes without an async event
    /// (`XFRMA_ETIMER_THRESH`): the checkpoint policy's interval.
    public var timerThreshold: Duration = .milliseconds(20)
    /// The kernel's `CONFIG_HZ`: NEWAE and NEWSA take the timer threshold in jiffies (Debian and
    /// Ubuntu: 250; Red Hat: 1000). GETAE reports it in 100 ms units instead.
    public var jiffiesPerSecond: UInt32 = 250
    /// How often every SA is read with GETAE whatever the events said: the events of a full
    /// socket buffer are lost (counted as overruns, which also start a sweep at once).
    public var sweepInterval: Duration = .seconds(1)
    /// Whether this data plane installs each Child SA's two kernel SAs and its policies
    /// (``XFRMDataPlane/reconcile(_:)`` on the active member, ``XFRMDataPlane/startServing(_:)``
    /// after a takeover), as the reference gateway does; false when the IKE stack installs
    /// them itself.
    public var installsChildSAs = false
    /// The priority of the policies it installs (lower wins in the kernel).
    public var policyPriority: UInt32 = 1_000
    /// Packets a planned switchover adds to each inbound window's top
    /// (``XFRMDataPlane/stopServingForHandover(_:)``): the kernel checks that an SA is alive
    /// before it decrypts a packet, not after, so a packet under decryption when the SA was
    /// deleted can still move the deleted SA's window past what the kernel reported. One SA's
    /// packets share their outer addresses and SPI, so one CPU usually handles them: a few
    /// cover it. What it costs: the peer's packets numbered within it that reach the new
    /// active member are dropped, and those the peer sends until the cluster address moved
    /// are lost anyway.
    public var handoverInboundMargin: UInt64 = 8

    public init() {}

    /// ``timerThreshold`` in jiffies, at least 1.
    var timerThresholdJiffies: UInt32 {
        let nanoseconds = timerThreshold.nonNegativeNanoseconds
        let jiffies = nanoseconds.multipliedFullWidth(by: UInt64(jiffiesPerSecond))
        let (quotient, _) = UInt64(1_000_000_000).dividingFullWidth((jiffies.high, jiffies.low))
        return UInt32(clamping: max(quotient, 1))
    }
}

/// A cluster member's ESP in the Linux kernel: the counters live in the kernel's SAs
/// (`CounterKeeping.dataPlane`). Every Child SA is two kernel SAs: the inbound one (to this
/// gateway, the Child SA's inbound SPI) holds the replay window, the outbound one (to the peer,
/// its outbound SPI) the sequence counter.
///
/// Counters come from the kernel's async events (`XFRMNLGRP_AEVENTS`: the kernel reports an SA
/// every ``XFRMDataPlaneConfiguration/replayThreshold`` packets and at most
/// ``XFRMDataPlaneConfiguration/timerThreshold`` after it moved), and from a GETAE sweep of
/// every SA each ``XFRMDataPlaneConfiguration/sweepInterval`` and after the socket overran.
/// After a takeover it writes the plan's counters into both directions (the receiver infers
/// the ESN high bits, so one direction alone fails every ICV): NEWAE on SAs that are there,
/// NEWSA with the counters in place for those it installs.
public struct XFRMDataPlane<Kernel: XFRMKernel>: ClusterDataPlane {
    /// The kernel.
    public var kernel: Kernel
    /// Thresholds, sweeps and installation.
    public let configuration: XFRMDataPlaneConfiguration
    /// Child SAs whose kernel SAs were missing at the last read or write (ESRCH): installed
    /// later, or deleted meanwhile.
    public private(set) var missing: [UInt32] = []
    /// GETAE sweeps so far.
    public private(set) var sweeps = 0
    /// Async events read so far.
    public private(set) var eventsReceived = 0
    /// Child SAs installed by this data plane, by inbound SPI, with their kernel SAs and the
    /// policies they own.
    private var installed: [UInt32: Installed] = [:]
    /// Which Child SA's policies hold each selector and direction now (a rekeyed Child SA's
    /// replace its predecessor's).
    private var policyOwners: [PolicyKey: UInt32] = [:]
    private var lastSweep: Timestamp?
    /// Child SAs that lost a kernel SA in a switchover's stop without its last counters
    /// (``stopServingForHandover(_:)``): no switchover until they are gone.
    private var countersUnknown: Set<UInt32> = []
    private var overrunsAtLastSweep = 0

    struct Installed {
        var inbound: XFRMSAIdentifier
        var outbound: XFRMSAIdentifier
        var policies: [PolicyKey]
    }

    struct PolicyKey: Hashable {
        var selector: XFRMSelector
        var direction: XFRMPolicyDirection
    }

    public var counterKeeping: CounterKeeping { .dataPlane }

    /// The sweep interval, or the SAs' timer threshold (in whole jiffies, as the kernel keeps
    /// it) where this data plane installs them and that is sooner: the kernel reports an SA
    /// that moved when its timer expires. SAs the IKE stack installed carry its thresholds,
    /// unknown here; the sweep reads them all the same.
    public var counterReportInterval: Duration {
        guard configuration.installsChildSAs else { return configuration.sweepInterval }
        let timer = Duration.nanoseconds(Int64(configuration.timerThresholdJiffies) * 1_000_000_000 / Int64(max(configuration.jiffiesPerSecond, 1)))
        return min(timer, configuration.sweepInterval)
    }

    public init(kernel: Kernel, configuration: XFRMDataPlaneConfiguration = XFRMDataPlaneConfiguration()) {
        self.kernel = kernel
        self.configuration = configuration
    }

    /// The kernel SAs of a Child SA: inbound (to the local address) and outbound (to the peer).
    static func kernelSAs(of child: ChildSA, in state: GatewayState) -> (inbound: XFRMSAIdentifier, outbound: XFRMSAIdentifier, local: XFRMAddress, remote: XFRMAddress)? {
        guard let ike = state.ikeSAs[child.parent] else { return nil }
        let local = XFRMAddress(ike.local.address), remote = XFRMAddress(ike.remote.address)
        let family = XFRMAddress.family(of: ike.local.address)
        return (
            XFRMSAIdentifier(destination: local, spi: child.inboundSPI, family: family),
            XFRMSAIdentifier(destination: remote, spi: child.outboundSPI, family: family), local, remote
        )
    }

    /// The counters that moved since the last call: from the async events, or from every SA
    /// when a sweep is due (the first call, each sweep interval, after an overrun).
    public mutating func observedCounters(of state: GatewayState, now: Timestamp) throws(DataPlaneError) -> [ChildSACounterCheckpoint] {
        let events: [XFRMAsyncEvent]
        do { events = try kernel.receiveAsyncEvents() } catch { throw DataPlaneError("reading XFRM async events: \(error)") }
        eventsReceived += events.count
        let sweepDue =
            lastSweep.map { now.nanoseconds &- $0.nanoseconds >= configuration.sweepInterval.nonNegativeNanoseconds } ?? true
            || kernel.eventOverruns != overrunsAtLastSweep
        if sweepDue { return try sweep(state, now: now) }
        return Self.checkpoints(from: events, in: state)
    }

    /// Every Child SA's counters, read with GETAE.
    mutating func sweep(_ state: GatewayState, now: Timestamp) throws(DataPlaneError) -> [ChildSACounterCheckpoint] {
        lastSweep = now
        overrunsAtLastSweep = kernel.eventOverruns
        sweeps += 1
        missing = []
        var observed: [ChildSACounterCheckpoint] = []
        for child in state.childSAs {
            guard let sas = Self.kernelSAs(of: child, in: state) else { continue }
            let inbound: XFRMAsyncEvent
            let outbound: XFRMAsyncEvent
            do {
                inbound = try kernel.asyncEvent(of: sas.inbound, source: sas.remote)
                outbound = try kernel.asyncEvent(of: sas.outbound, source: sas.local)
            } catch where error.kernelErrno == 3 /* ESRCH */ {
                missing.append(child.inboundSPI)
                continue
            } catch {
                throw DataPlaneError("GETAE of Child SA \(child.inboundSPI): \(error)")
            }
            observed.append(Self.checkpoint(of: child, inbound: inbound, outbound: outbound))
        }
        return observed
    }

    /// `child`'s checkpoint with what the kernel reported of either direction; the other keeps
    /// what the state holds (the member adopts counters forward only).
    static func checkpoint(of child: ChildSA, inbound: XFRMAsyncEvent?, outbound: XFRMAsyncEvent?) -> ChildSACounterCheckpoint {
        var checkpoint = child.counterCheckpoint
        if let replay = outbound?.replay { checkpoint.outbound = OutboundCounterCheckpoint(lastSent: replay.outboundLastSent) }
        if let lifetime = outbound?.lifetime {
            checkpoint.usage.outboundBytes = lifetime.bytes
            checkpoint.usage.outboundPackets = lifetime.packets
        }
        if let replay = inbound?.replay { checkpoint.inbound = ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: replay.inboundTop) }
        if let lifetime = inbound?.lifetime {
            checkpoint.usage.inboundBytes = lifetime.bytes
            checkpoint.usage.inboundPackets = lifetime.packets
        }
        return checkpoint
    }

    /// The checkpoints the events carry, one per Child SA whichever direction they reported.
    /// Events of SAs the state does not hold (another IKE stack's, a deleted Child SA's) are
    /// ignored.
    static func checkpoints(from events: [XFRMAsyncEvent], in state: GatewayState) -> [ChildSACounterCheckpoint] {
        guard !events.isEmpty else { return [] }
        var latest: [UInt32: (inbound: XFRMAsyncEvent?, outbound: XFRMAsyncEvent?)] = [:]
        var byOutboundSPI: [UInt32: UInt32]?
        for event in events where event.sa.ipsecProtocol == 50 {
            if let child = state.childSA(inboundSPI: event.sa.spi), kernelSAs(of: child, in: state)?.inbound == event.sa {
                latest[child.inboundSPI, default: (nil, nil)].inbound = event
                continue
            }
            if byOutboundSPI == nil { byOutboundSPI = Dictionary(state.childSAs.map { ($0.outboundSPI, $0.inboundSPI) }, uniquingKeysWith: { first, _ in first }) }
            if let inboundSPI = byOutboundSPI?[event.sa.spi], let child = state.childSA(inboundSPI: inboundSPI),
                kernelSAs(of: child, in: state)?.outbound == event.sa
            {
                latest[inboundSPI, default: (nil, nil)].outbound = event
            }
        }
        return latest.sorted { $0.key < $1.key }.compactMap { spi, events in
            state.childSA(inboundSPI: spi).map { checkpoint(of: $0, inbound: events.inbound, outbound: events.outbound) }
        }
    }

    /// Writes every Child SA's counters from `state` (after a takeover: the plan's) into both of
    /// its kernel SAs: read, change the counters, write back (NEWAE must keep the SA's kind of
    /// replay state and bitmap length). The inbound window counts everything up to its top as
    /// seen, as the conservative restore does. With ``XFRMDataPlaneConfiguration/installsChildSAs``,
    /// a Child SA without kernel SAs is installed with these counters, and its policies.
    public mutating func startServing(_ state: GatewayState) throws(DataPlaneError) {
        missing = []
        for child in state.childSAs {
            guard let sas = Self.kernelSAs(of: child, in: state) else { continue }
            do {
                var outbound = try kernel.asyncEvent(of: sas.outbound, source: sas.local)
                outbound.replay = outbound.replay.map { Self.moving($0, outboundTo: child.outboundCounter.lastSent) }
                var inbound = try kernel.asyncEvent(of: sas.inbound, source: sas.remote)
                inbound.replay = inbound.replay.map { Self.moving($0, inboundTo: child.inboundWindow.top) }
                for var event in [outbound, inbound] {
                    event.flags = [.replayValues]
                    event.lifetime = nil
                    try kernel.setAsyncEvent(event)
                }
                if configuration.installsChildSAs { try installPolicies(of: child, sas) }
            } catch where error.kernelErrno == 3 /* ESRCH */ {
                if configuration.installsChildSAs {
                    try install(child, in: state)
                } else {
                    missing.append(child.inboundSPI)
                }
            } catch {
                throw DataPlaneError("NEWAE of Child SA \(child.inboundSPI): \(error)")
            }
        }
    }

    /// Nothing to stop in the kernel: the cluster address moves away, and the SAs stay for the
    /// next takeover (their counters are rewritten then).
    public mutating func stopServing() {}

    /// A planned switchover's stop (``XFRMDataPlaneConfiguration/installsChildSAs`` only: the
    /// SAs are this data plane's to delete): deletes both kernel SAs of every Child SA,
    /// outbound first, and returns their counters as the deletions left them
    /// (``XFRMKernel/deleteReportingCounters(_:source:)``), each inbound top raised by
    /// ``XFRMDataPlaneConfiguration/handoverInboundMargin``. The policies stay: with no SA
    /// behind them the kernel drops what they match, nothing leaves in clear, until the
    /// cluster address has moved. A Child SA whose kernel SAs are gone already keeps the
    /// counters `state` holds. If the kernel refuses a deletion, the SAs deleted so far are
    /// installed again with the counters they ended with, and this throws: the member serves on.
    public mutating func stopServingForHandover(_ state: GatewayState) throws(DataPlaneError) -> [ChildSACounterCheckpoint] {
        guard configuration.installsChildSAs else {
            throw DataPlaneError("the IKE stack owns the kernel SAs (installsChildSAs is off): they cannot be stopped for a switchover here")
        }
        countersUnknown.formIntersection(state.childSAs.map(\.inboundSPI))
        if let spi = countersUnknown.min() {
            throw DataPlaneError("Child SA \(spi) lost a kernel SA with its last counters unknown (an earlier switchover): rekey it first")
        }
        var handedOver: [ChildSACounterCheckpoint] = []
        for child in state.childSAs {
            guard let sas = Self.kernelSAs(of: child, in: state) else { continue }
            var outbound: XFRMAsyncEvent?
            var inbound: XFRMAsyncEvent?
            do {
                outbound = try deleteReportingCounters(sas.outbound, source: sas.local)
                inbound = try deleteReportingCounters(sas.inbound, source: sas.remote)
            } catch {
                // The deletion that failed may have happened all the same (its notice lost, or
                // its answer): that SA's last counters are then unknown, and installing it again
                // from the state's older ones would send numbers, or accept packets, the kernel
                // already had. Such an SA stays out of the kernel (its traffic is dropped), and
                // no switchover is made until its Child SA is gone.
                let lost = [(sas.outbound, sas.local, outbound), (sas.inbound, sas.remote, inbound)].compactMap { sa, source, known in
                    known == nil && (try? kernel.asyncEvent(of: sa, source: source)) == nil ? sa : nil
                }
                if !lost.isEmpty { countersUnknown.insert(child.inboundSPI) }
                restore(handedOver, partly: Self.checkpoint(of: child, inbound: inbound, outbound: outbound), lost: lost, in: state)
                throw DataPlaneError(
                    "deleting the kernel SAs of Child SA \(child.inboundSPI) for a switchover: \(error); serving on"
                        + (lost.isEmpty ? "" : ", without \(lost.count) of its kernel SAs (last counters unknown: rekey it)"))
            }
            var checkpoint = Self.checkpoint(of: child, inbound: inbound, outbound: outbound)
            if inbound?.replay != nil {
                let top = checkpoint.inbound.highestAuthenticatedSequenceNumber
                let last: UInt64 = child.extendedSequenceNumbers ? .max : UInt64(UInt32.max)
                checkpoint.inbound.highestAuthenticatedSequenceNumber = top &+ min(configuration.handoverInboundMargin, last &- min(top, last))
            }
            handedOver.append(checkpoint)
        }
        return handedOver
    }

    /// DELSA reading the last counters; nil when the SA is gone already (ESRCH).
    private mutating func deleteReportingCounters(_ sa: XFRMSAIdentifier, source: XFRMAddress) throws(XFRMCodecError) -> XFRMAsyncEvent? {
        do {
            return try kernel.deleteReportingCounters(sa, source: source)
        } catch where error.kernelErrno == 3 /* ESRCH */ {
            return nil
        }
    }

    /// After a refused switchover: the Child SAs of `checkpoints` installed again with the
    /// counters their deleted SAs ended with, and the one whose deletion failed (`partly`)
    /// likewise except its `lost` SAs (a kernel SA still there stays as it is).
    private mutating func restore(_ checkpoints: [ChildSACounterCheckpoint], partly failed: ChildSACounterCheckpoint, lost: [XFRMSAIdentifier], in state: GatewayState) {
        var restored = state
        for checkpoint in checkpoints + [failed] { try? restored.observeCounters(checkpoint) }
        for checkpoint in checkpoints {
            if let child = restored.childSA(inboundSPI: checkpoint.inboundSPI) { try? install(child, in: restored) }
        }
        if let child = restored.childSA(inboundSPI: failed.inboundSPI) { try? install(child, in: restored, skipping: lost) }
    }

    /// Makes the kernel hold what `state` holds (``XFRMDataPlaneConfiguration/installsChildSAs``
    /// only): Child SAs new since the last call installed with their policies, those gone
    /// deleted, their policies too unless a newer Child SA took them over. The active member
    /// calls it after each change of its Child SAs (an IKE exchange).
    public mutating func reconcile(_ state: GatewayState) throws(DataPlaneError) {
        guard configuration.installsChildSAs else { return }
        for spi in installed.keys.sorted() where state.childSA(inboundSPI: spi) == nil {
            remove(spi)
        }
        for child in state.childSAs where installed[child.inboundSPI] == nil {
            try install(child, in: state)
        }
    }

    /// Installs `child`'s two kernel SAs with its counters, its keys and the thresholds of the
    /// async events, then its policies.
    mutating func install(_ child: ChildSA, in state: GatewayState, skipping lost: [XFRMSAIdentifier] = []) throws(DataPlaneError) {
        guard let sas = Self.kernelSAs(of: child, in: state) else { return }
        let requestID = Self.requestID(of: child)
        do {
            let inboundKey = try Self.aead(child.transforms, child.inboundKeys)
            let outboundKey = try Self.aead(child.transforms, child.outboundKeys)
            for (sa, source, key, replay) in [
                (sas.inbound, sas.remote, inboundKey, XFRMExtendedReplayState(outboundLastSent: 0, inboundTop: child.inboundWindow.top, replayWindow: child.inboundWindow.size)),
                (sas.outbound, sas.local, outboundKey, XFRMExtendedReplayState(outboundLastSent: child.outboundCounter.lastSent, inboundTop: 0, replayWindow: child.inboundWindow.size)),
            ] where !lost.contains(sa) {
                var state = XFRMState(
                    selector: .any(family: sa.family), sa: sa, source: source, requestID: requestID,
                    flags: child.extendedSequenceNumbers ? XFRMState.extendedSequenceNumbersFlag : 0, aead: key,
                    replay: sa == sas.inbound ? Self.allSeenBelowTop(replay) : replay)
                state.replayThreshold = configuration.replayThreshold
                state.timerThreshold = configuration.timerThresholdJiffies
                do {
                    try kernel.install(state)
                } catch where error.kernelErrno == 17 /* EEXIST */ {
                    // Installed by an earlier run of this member: its counters are set below.
                }
            }
            installed[child.inboundSPI] = Installed(inbound: sas.inbound, outbound: sas.outbound, policies: [])
            try installPolicies(of: child, sas)
        } catch {
            throw DataPlaneError("installing Child SA \(child.inboundSPI): \(error)")
        }
    }

    /// `child`'s policies: out (local to remote selectors), in and fwd (remote to local), each
    /// through its SA by request ID; UPDPOLICY replaces a predecessor's with the same selectors.
    private mutating func installPolicies(of child: ChildSA, _ sas: (inbound: XFRMSAIdentifier, outbound: XFRMSAIdentifier, local: XFRMAddress, remote: XFRMAddress)) throws(XFRMCodecError) {
        let requestID = Self.requestID(of: child)
        var keys: [PolicyKey] = []
        for local in child.localSelectors {
            for remote in child.remoteSelectors {
                guard let outbound = XFRMSelector(source: local, destination: remote), let inbound = XFRMSelector(source: remote, destination: local) else {
                    throw .invalidValue("traffic selector not a prefix with one port or any", 0)
                }
                for (selector, direction, template) in [
                    (outbound, XFRMPolicyDirection.outbound, XFRMTemplate(destination: sas.remote, source: sas.local, requestID: requestID, family: sas.outbound.family)),
                    (inbound, .inbound, XFRMTemplate(destination: sas.local, source: sas.remote, requestID: requestID, family: sas.inbound.family)),
                    (inbound, .forward, XFRMTemplate(destination: sas.local, source: sas.remote, requestID: requestID, family: sas.inbound.family)),
                ] {
                    try kernel.install(XFRMPolicy(selector: selector, direction: direction, template: template, priority: configuration.policyPriority))
                    let key = PolicyKey(selector: selector, direction: direction)
                    policyOwners[key] = child.inboundSPI
                    keys.append(key)
                }
            }
        }
        installed[child.inboundSPI]?.policies = keys
    }

    /// Deletes a Child SA's kernel SAs and the policies it still owns; what is gone already is
    /// fine (the peer's delete may have raced it).
    private mutating func remove(_ spi: UInt32) {
        guard let gone = installed.removeValue(forKey: spi) else { return }
        try? kernel.delete(gone.inbound)
        try? kernel.delete(gone.outbound)
        for key in gone.policies where policyOwners[key] == spi {
            policyOwners[key] = nil
            try? kernel.deletePolicy(selector: key.selector, direction: key.direction)
        }
    }

    /// The request ID that ties a Child SA's policies to its SAs: the IKE stack's, or the
    /// inbound SPI when it chose none.
    static func requestID(of child: ChildSA) -> UInt32 { child.requestID != 0 ? child.requestID : child.inboundSPI }

    /// The kernel's AEAD algorithm for `transforms` with `keys` (key and salt, as RFC 4106 and
    /// RFC 7634 take them from KEYMAT).
    static func aead(_ transforms: ChildSATransforms, _ keys: ChildSAKeys) throws(XFRMCodecError) -> XFRMAEADAlgorithm {
        let key = keys.encryptionKey.withUnsafeBytes { Array($0) }
        switch transforms.encryption {
        case .chacha20Poly1305?: return XFRMAEADAlgorithm(name: XFRMAEADAlgorithm.chaCha20Poly1305, key: key)
        case .aesGCM16?: return XFRMAEADAlgorithm(name: XFRMAEADAlgorithm.aesGCM, key: key, icvBits: 128)
        case .aesGCM12?: return XFRMAEADAlgorithm(name: XFRMAEADAlgorithm.aesGCM, key: key, icvBits: 96)
        case .aesGCM8?: return XFRMAEADAlgorithm(name: XFRMAEADAlgorithm.aesGCM, key: key, icvBits: 64)
        default: throw .invalidValue("ESP encryption transform (AEAD only)", UInt64(transforms.encryption?.rawValue ?? 0))
        }
    }

    static func allSeenBelowTop(_ replay: XFRMExtendedReplayState) -> XFRMExtendedReplayState {
        var replay = replay
        replay.bitmap = replay.bitmap.map { _ in .max }
        return replay
    }

    static func moving(_ replay: XFRMReplayState, outboundTo lastSent: UInt64) -> XFRMReplayState {
        switch replay {
        case .legacy(_, let top, let bitmap):
            return .legacy(outboundLastSent: UInt32(truncatingIfNeeded: lastSent), inboundTop: top, bitmap: bitmap)
        case .extended(var state):
            state.outbound = UInt32(truncatingIfNeeded: lastSent)
            state.outboundHigh = UInt32(truncatingIfNeeded: lastSent >> 32)
            return .extended(state)
        }
    }

    static func moving(_ replay: XFRMReplayState, inboundTo top: UInt64) -> XFRMReplayState {
        switch replay {
        case .legacy(let outbound, _, _):
            return .legacy(outboundLastSent: outbound, inboundTop: UInt32(truncatingIfNeeded: top), bitmap: .max)
        case .extended(var state):
            state.inbound = UInt32(truncatingIfNeeded: top)
            state.inboundHigh = UInt32(truncatingIfNeeded: top >> 32)
            state.bitmap = state.bitmap.map { _ in .max }
            return .extended(state)
        }
    }
}
