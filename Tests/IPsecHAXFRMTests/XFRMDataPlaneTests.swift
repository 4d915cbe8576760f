import IPsecHACore
import IPsecHASync
import IPsecHATestKit
import IPsecHAXFRM
import IPsecHAXFRMDataPlane
import Testing

/// The kernel as a table of SAs: what GETAE reads and NEWAE writes, with ESRCH for the rest;
/// the SAs and policies installed; events queued for the next read.
struct TableKernel: XFRMKernel {
    var sas: [XFRMSAIdentifier: XFRMAsyncEvent] = [:]
    var installedStates: [XFRMSAIdentifier: XFRMState] = [:]
    var policies: [XFRMPolicy] = []
    var queuedEvents: [XFRMAsyncEvent] = []
    var eventOverruns = 0
    var writes = 0
    var reads = 0

    mutating func asyncEvent(of sa: XFRMSAIdentifier, source: XFRMAddress) throws(XFRMCodecError) -> XFRMAsyncEvent {
        guard let event = sas[sa] else { throw .kernelRefused(errno: 3) }
        reads += 1
        return event
    }

    mutating func setAsyncEvent(_ event: XFRMAsyncEvent) throws(XFRMCodecError) {
        guard var held = sas[event.sa] else { throw .kernelRefused(errno: 3) }
        held.replay = event.replay
        sas[event.sa] = held
        writes += 1
    }

    mutating func receiveAsyncEvents() throws(XFRMCodecError) -> [XFRMAsyncEvent] {
        defer { queuedEvents = [] }
        return queuedEvents
    }

    mutating func install(_ state: XFRMState) throws(XFRMCodecError) {
        guard sas[state.sa] == nil else { throw .kernelRefused(errno: 17) }
        installedStates[state.sa] = state
        sas[state.sa] = XFRMAsyncEvent(sa: state.sa, source: state.source, replay: state.replay.map { .extended($0) })
    }

    mutating func install(_ policy: XFRMPolicy) throws(XFRMCodecError) {
        policies.removeAll { $0.selector == policy.selector && $0.direction == policy.direction }
        policies.append(policy)
    }

    /// SAs whose deletion the kernel refuses (EPERM, as for an SA another subsystem holds).
    var refusedDeletions: Set<XFRMSAIdentifier> = []
    /// SAs whose deletion happens but whose answer is lost (ETIMEDOUT after the fact).
    var unansweredDeletions: Set<XFRMSAIdentifier> = []

    mutating func delete(_ sa: XFRMSAIdentifier) throws(XFRMCodecError) {
        guard !refusedDeletions.contains(sa) else { throw .kernelRefused(errno: 1) }
        if unansweredDeletions.contains(sa) {
            sas[sa] = nil
            throw .kernelRefused(errno: 110)
        }
        guard sas.removeValue(forKey: sa) != nil else { throw .kernelRefused(errno: 3) }
        installedStates[sa] = nil
    }

    mutating func deletePolicy(selector: XFRMSelector, direction: XFRMPolicyDirection) throws(XFRMCodecError) {
        let before = policies.count
        policies.removeAll { $0.selector == selector && $0.direction == direction }
        guard policies.count < before else { throw .kernelRefused(errno: 2) }
    }
}

@Suite("XFRMDataPlane: Child SA counters read from and written to kernel SAs")
struct XFRMDataPlaneTests {
    /// One IKE SA with an ESN Child SA and a 32-bit one whose window fits the legacy state, and
    /// a kernel that holds all four SAs with counters moved by traffic the package never saw.
    static func setUp() throws -> (GatewayState, TableKernel, esn: ChildSA, legacy: ChildSA) {
        var random = SplitMix64(seed: 31)
        let ike = try SAFixtures.ikeSA(1, remote: IPAddress(ipv4: 0xC633_6401), &random)
        let esn = try SAFixtures.childSA(0x5000, parent: ike.identifier, window: 128, &random)
        let legacy = try SAFixtures.childSA(0x5001, parent: ike.identifier, window: 32, extendedSequenceNumbers: false, &random)
        var state = GatewayState()
        _ = try state.createIKESA(ike)
        _ = try state.createChildSA(esn)
        _ = try state.createChildSA(legacy)
        let local = XFRMAddress(ike.local.address), remote = XFRMAddress(ike.remote.address)
        var kernel = TableKernel()
        func add(_ destination: XFRMAddress, _ spi: UInt32, _ source: XFRMAddress, _ replay: XFRMReplayState, packets: UInt64) {
            let sa = XFRMSAIdentifier(destination: destination, spi: spi)
            kernel.sas[sa] = XFRMAsyncEvent(sa: sa, source: source, replay: replay, lifetime: XFRMLifetimeCurrent(bytes: packets * 100, packets: packets))
        }
        add(local, esn.inboundSPI, remote, .extended(XFRMExtendedReplayState(outboundLastSent: 0, inboundTop: 0x1_0000_0040, replayWindow: 128)), packets: 70)
        add(remote, esn.outboundSPI, local, .extended(XFRMExtendedReplayState(outboundLastSent: 0x1_0000_0100, inboundTop: 0, replayWindow: 128)), packets: 260)
        add(local, legacy.inboundSPI, remote, .legacy(outboundLastSent: 0, inboundTop: 500, bitmap: 0b1011), packets: 500)
        add(remote, legacy.outboundSPI, local, .legacy(outboundLastSent: 900, inboundTop: 0, bitmap: 0), packets: 900)
        return (state, kernel, esn, legacy)
    }

    @Test func theKernelsCountersBecomeCheckpointsOfBothDirections() throws {
        let (state, kernel, esn, legacy) = try Self.setUp()
        var dataPlane = XFRMDataPlane(kernel: kernel)
        let observed = try dataPlane.observedCounters(of: state, now: Timestamp(nanoseconds: 1))
        let byInbound = Dictionary(uniqueKeysWithValues: observed.map { ($0.inboundSPI, $0) })
        #expect(byInbound[esn.inboundSPI]?.outbound.lastSent == 0x1_0000_0100 && byInbound[esn.inboundSPI]?.inbound.highestAuthenticatedSequenceNumber == 0x1_0000_0040)
        #expect(byInbound[legacy.inboundSPI]?.outbound.lastSent == 900 && byInbound[legacy.inboundSPI]?.inbound.highestAuthenticatedSequenceNumber == 500)
        #expect(byInbound[legacy.inboundSPI]?.usage.outboundPackets == 900 && byInbound[legacy.inboundSPI]?.usage.inboundPackets == 500)
        #expect(dataPlane.missing.isEmpty)
        // The state adopts them (forward only), so that checkpoints carry them.
        var adopted = state
        for checkpoint in observed { try adopted.observeCounters(checkpoint) }
        #expect(adopted.childSA(inboundSPI: esn.inboundSPI)?.outboundCounter.lastSent == 0x1_0000_0100)
    }

    /// After a takeover the plan's counters go into both kernel SAs of every Child SA, in the
    /// kind of replay state each SA has; the inbound windows count everything below their top
    /// as seen. A Child SA whose kernel SAs are missing is reported, not fatal.
    @Test func startServingWritesThePlansCountersIntoBothDirections() throws {
        var (state, kernel, esn, legacy) = try Self.setUp()
        _ = try state.updateChildSA(inboundSPI: esn.inboundSPI) {
            $0.outboundCounter = try! OutboundSequenceCounter(extendedSequenceNumbers: true, lastSent: 0x2_0000_0000)
        }
        _ = try state.updateChildSA(inboundSPI: legacy.inboundSPI) {
            $0.outboundCounter = try! OutboundSequenceCounter(extendedSequenceNumbers: false, lastSent: 5_000)
        }
        var random = SplitMix64(seed: 32)
        _ = try state.createChildSA(SAFixtures.childSA(0x5002, parent: esn.parent, window: 64, &random))
        var dataPlane = XFRMDataPlane(kernel: kernel)
        try dataPlane.startServing(state)
        kernel = dataPlane.kernel
        #expect(kernel.writes == 4 && dataPlane.missing == [0x5002])
        let ike = try #require(state.ikeSAs[esn.parent])
        let local = XFRMAddress(ike.local.address), remote = XFRMAddress(ike.remote.address)
        let esnOut = try #require(kernel.sas[XFRMSAIdentifier(destination: remote, spi: esn.outboundSPI)]?.replay)
        #expect(esnOut.outboundLastSent == 0x2_0000_0000)
        guard case .extended(let esnIn)? = kernel.sas[XFRMSAIdentifier(destination: local, spi: esn.inboundSPI)]?.replay else {
            Issue.record("the ESN SA lost its kind of replay state")
            return
        }
        #expect(UInt64(esnIn.inboundHigh) << 32 | UInt64(esnIn.inbound) == state.childSA(inboundSPI: esn.inboundSPI)!.inboundWindow.top)
        #expect(esnIn.bitmap.count == 4 && esnIn.bitmap.allSatisfy { $0 == .max }, "the bitmap length kept, everything below the top seen")
        guard case .legacy(let sent, _, _)? = kernel.sas[XFRMSAIdentifier(destination: remote, spi: legacy.outboundSPI)]?.replay,
            case .legacy(_, _, let bitmap)? = kernel.sas[XFRMSAIdentifier(destination: local, spi: legacy.inboundSPI)]?.replay
        else {
            Issue.record("the legacy SA lost its kind of replay state")
            return
        }
        #expect(sent == 5_000 && bitmap == .max)
    }

    /// Between sweeps only the events count: one event per direction becomes one checkpoint
    /// with the other direction as the state holds it; events of SAs the state does not hold
    /// are ignored. A sweep comes each interval and at once after the socket overran.
    @Test func eventsFeedCheckpointsBetweenSweepsAndOverrunsForceASweep() throws {
        let (state, kernel, esn, legacy) = try Self.setUp()
        let ike = try #require(state.ikeSAs[esn.parent])
        let local = XFRMAddress(ike.local.address), remote = XFRMAddress(ike.remote.address)
        var dataPlane = XFRMDataPlane(kernel: kernel)
        _ = try dataPlane.observedCounters(of: state, now: Timestamp(nanoseconds: 1_000))
        #expect(dataPlane.sweeps == 1, "the first call reads every SA")
        let readsAfterSweep = dataPlane.kernel.reads
        let outbound = XFRMSAIdentifier(destination: remote, spi: esn.outboundSPI)
        dataPlane.kernel.queuedEvents = [
            XFRMAsyncEvent(sa: outbound, source: local, flags: [.causedByReplay], replay: .extended(XFRMExtendedReplayState(outboundLastSent: 0x1_0000_0200, inboundTop: 0, replayWindow: 128))),
            XFRMAsyncEvent(sa: XFRMSAIdentifier(destination: local, spi: 0xDEAD), source: remote, replay: .legacy(outboundLastSent: 0, inboundTop: 9, bitmap: 1)),
            XFRMAsyncEvent(sa: XFRMSAIdentifier(destination: local, spi: legacy.inboundSPI), source: remote, replay: .legacy(outboundLastSent: 0, inboundTop: 700, bitmap: 1)),
        ]
        let observed = try dataPlane.observedCounters(of: state, now: Timestamp(nanoseconds: 500_000_000))
        #expect(dataPlane.sweeps == 1 && dataPlane.kernel.reads == readsAfterSweep, "no GETAE between sweeps")
        #expect(observed.map(\.inboundSPI) == [esn.inboundSPI, legacy.inboundSPI].sorted())
        let byInbound = Dictionary(uniqueKeysWithValues: observed.map { ($0.inboundSPI, $0) })
        #expect(byInbound[esn.inboundSPI]?.outbound.lastSent == 0x1_0000_0200)
        #expect(byInbound[esn.inboundSPI]?.inbound == esn.counterCheckpoint.inbound, "the direction without an event as the state holds it")
        #expect(byInbound[legacy.inboundSPI]?.inbound.highestAuthenticatedSequenceNumber == 700)
        #expect(try dataPlane.observedCounters(of: state, now: Timestamp(nanoseconds: 600_000_000)).isEmpty, "no events, no sweep due")
        dataPlane.kernel.eventOverruns = 1
        #expect(try dataPlane.observedCounters(of: state, now: Timestamp(nanoseconds: 700_000_000)).count == 2)
        #expect(dataPlane.sweeps == 2, "an overrun lost events: every SA is read again")
        _ = try dataPlane.observedCounters(of: state, now: Timestamp(nanoseconds: 1_700_000_000))
        #expect(dataPlane.sweeps == 3, "a second after the last sweep")
    }

    /// With installation on, the active member's Child SAs reach the kernel as two SAs (keys,
    /// counters, event thresholds) and out/in/fwd policies; a rekeyed Child SA's policies
    /// replace its predecessor's, and deleting the predecessor leaves them; deleting the last
    /// one removes everything. A takeover installs missing SAs with the plan's counters.
    @Test func installationFollowsTheStateAndTakeoverInstallsWithThePlansCounters() throws {
        var random = SplitMix64(seed: 33)
        let ike = try SAFixtures.ikeSA(1, remote: IPAddress(ipv4: 0xC633_6401), &random)
        var state = GatewayState()
        _ = try state.createIKESA(ike)
        let first = try SAFixtures.childSA(0x6000, parent: ike.identifier, window: 128, &random)
        _ = try state.createChildSA(first)
        var configuration = XFRMDataPlaneConfiguration()
        configuration.installsChildSAs = true
        configuration.replayThreshold = 100
        configuration.timerThreshold = .milliseconds(20)
        var dataPlane = XFRMDataPlane(kernel: TableKernel(), configuration: configuration)
        try dataPlane.reconcile(state)
        let local = XFRMAddress(ike.local.address), remote = XFRMAddress(ike.remote.address)
        let inbound = try #require(dataPlane.kernel.installedStates[XFRMSAIdentifier(destination: local, spi: first.inboundSPI)])
        #expect(inbound.source == remote && inbound.aead?.name == XFRMAEADAlgorithm.aesGCM && inbound.aead?.key.count == 36)
        #expect(inbound.replayThreshold == 100 && inbound.timerThreshold == 5, "20 ms at 250 jiffies a second")
        #expect(inbound.replay?.replayWindow == 128 && inbound.flags == XFRMState.extendedSequenceNumbersFlag && inbound.replayWindow == 0)
        #expect(dataPlane.kernel.installedStates[XFRMSAIdentifier(destination: remote, spi: first.outboundSPI)] != nil)
        #expect(dataPlane.kernel.policies.map(\.direction) == [.outbound, .inbound, .forward])
        let out = dataPlane.kernel.policies[0]
        #expect(out.selector.source == XFRMAddress(ipv4: 0x0A00_0000) && out.selector.sourcePrefixLength == 16 && out.selector.destinationPrefixLength == 0)
        #expect(out.template.destination == remote && out.template.source == local && out.template.requestID == first.requestID)

        let rekeyed = try SAFixtures.childSA(0x6001, parent: ike.identifier, window: 128, &random)
        _ = try state.createChildSA(rekeyed)
        try dataPlane.reconcile(state)
        _ = try state.deleteChildSA(inboundSPI: first.inboundSPI)
        try dataPlane.reconcile(state)
        #expect(dataPlane.kernel.sas.count == 2 && dataPlane.kernel.policies.count == 3, "the successor keeps the policies")
        #expect(dataPlane.kernel.policies.allSatisfy { $0.template.requestID == rekeyed.requestID })
        _ = try state.deleteChildSA(inboundSPI: rekeyed.inboundSPI)
        try dataPlane.reconcile(state)
        #expect(dataPlane.kernel.sas.isEmpty && dataPlane.kernel.policies.isEmpty)

        // A standby's takeover: nothing in its kernel yet, the plan's counters in the state.
        var taken = try SAFixtures.childSA(0x6002, parent: ike.identifier, window: 128, &random)
        taken.outboundCounter = try OutboundSequenceCounter(extendedSequenceNumbers: true, lastSent: 0x1_0000_0010)
        _ = try state.createChildSA(taken)
        var standby = XFRMDataPlane(kernel: TableKernel(), configuration: configuration)
        try standby.startServing(state)
        #expect(standby.missing.isEmpty)
        #expect(standby.kernel.installedStates[XFRMSAIdentifier(destination: remote, spi: taken.outboundSPI)]?.replay.map { UInt64($0.outboundHigh) << 32 | UInt64($0.outbound) } == 0x1_0000_0010)
        #expect(standby.kernel.policies.count == 3)
    }

    /// How often the member can count on the kernel reporting a moving SA: the timer threshold
    /// in whole jiffies on the SAs it installs (7 ms at 250 a second is one jiffy, 4 ms),
    /// the sweep interval when sooner, and for SAs the IKE stack installed only the sweep.
    @Test func theCountersAreReportedAtTheTimerThresholdOrTheSweep() {
        var configuration = XFRMDataPlaneConfiguration()
        configuration.installsChildSAs = true
        configuration.timerThreshold = .milliseconds(7)
        #expect(XFRMDataPlane(kernel: TableKernel(), configuration: configuration).counterReportInterval == .milliseconds(4))
        configuration.timerThreshold = .seconds(1)
        configuration.jiffiesPerSecond = 1_000
        #expect(XFRMDataPlane(kernel: TableKernel(), configuration: configuration).counterReportInterval == .seconds(1))
        configuration.timerThreshold = .seconds(5)
        #expect(XFRMDataPlane(kernel: TableKernel(), configuration: configuration).counterReportInterval == configuration.sweepInterval)
        configuration.timerThreshold = .milliseconds(20)
        configuration.installsChildSAs = false
        #expect(XFRMDataPlane(kernel: TableKernel(), configuration: configuration).counterReportInterval == configuration.sweepInterval)
    }

    /// A planned switchover's stop: every kernel SA deleted, the counters they ended with
    /// reported (inbound tops raised by the margin, within a 32-bit SA's space), the policies
    /// kept (what they match is dropped, not sent in clear); a Child SA whose SAs are gone keeps
    /// the state's counters. Without installing the SAs itself the data plane refuses.
    @Test func aHandoverDeletesTheKernelSAsAndReportsTheirLastCounters() throws {
        var (state, kernel, esn, legacy) = try Self.setUp()
        var configuration = XFRMDataPlaneConfiguration()
        var dataPlane = XFRMDataPlane(kernel: kernel, configuration: configuration)
        #expect(throws: DataPlaneError.self) { _ = try dataPlane.stopServingForHandover(state) }
        #expect(dataPlane.kernel.sas.count == 4, "nothing deleted")
        var random = SplitMix64(seed: 35)
        let gone = try SAFixtures.childSA(0x5003, parent: esn.parent, window: 64, &random)
        _ = try state.createChildSA(gone)
        configuration.installsChildSAs = true
        dataPlane = XFRMDataPlane(kernel: kernel, configuration: configuration)
        try dataPlane.reconcile(state)
        let ike = try #require(state.ikeSAs[esn.parent])
        let local = XFRMAddress(ike.local.address), remote = XFRMAddress(ike.remote.address)
        try dataPlane.kernel.delete(XFRMSAIdentifier(destination: local, spi: gone.inboundSPI))
        try dataPlane.kernel.delete(XFRMSAIdentifier(destination: remote, spi: gone.outboundSPI))
        let policies = dataPlane.kernel.policies
        #expect(!policies.isEmpty)
        let handedOver = try dataPlane.stopServingForHandover(state)
        kernel = dataPlane.kernel
        #expect(kernel.sas.isEmpty && kernel.policies == policies)
        let byInbound = Dictionary(uniqueKeysWithValues: handedOver.map { ($0.inboundSPI, $0) })
        #expect(byInbound[esn.inboundSPI]?.outbound.lastSent == 0x1_0000_0100)
        #expect(byInbound[esn.inboundSPI]?.inbound.highestAuthenticatedSequenceNumber == 0x1_0000_0040 + 8)
        #expect(byInbound[esn.inboundSPI]?.usage.outboundPackets == 260 && byInbound[esn.inboundSPI]?.usage.inboundPackets == 70)
        #expect(byInbound[legacy.inboundSPI]?.outbound.lastSent == 900 && byInbound[legacy.inboundSPI]?.inbound.highestAuthenticatedSequenceNumber == 508)
        #expect(byInbound[gone.inboundSPI] == gone.counterCheckpoint, "its SAs were gone: the state's counters")
        // Near the end of a 32-bit space the margin stops at 2^32 - 1.
        var nearEnd = try Self.setUp()
        let top = XFRMSAIdentifier(destination: local, spi: nearEnd.legacy.inboundSPI)
        nearEnd.1.sas[top]?.replay = .legacy(outboundLastSent: 0, inboundTop: 0xFFFF_FFFC, bitmap: 1)
        var ending = XFRMDataPlane(kernel: nearEnd.1, configuration: configuration)
        let last = try ending.stopServingForHandover(nearEnd.0).first { $0.inboundSPI == nearEnd.legacy.inboundSPI }
        #expect(last?.inbound.highestAuthenticatedSequenceNumber == 0xFFFF_FFFF)
    }

    /// A deletion the kernel refuses midway: what was deleted is installed again with the
    /// counters it ended with (never the state's older ones, which would send numbers twice),
    /// and the data plane throws, serving on.
    @Test func aRefusedDeletionRestoresWhatWasDeleted() throws {
        let (state, kernel, esn, legacy) = try Self.setUp()
        var configuration = XFRMDataPlaneConfiguration()
        configuration.installsChildSAs = true
        var dataPlane = XFRMDataPlane(kernel: kernel, configuration: configuration)
        let ike = try #require(state.ikeSAs[esn.parent])
        let local = XFRMAddress(ike.local.address), remote = XFRMAddress(ike.remote.address)
        let order = state.childSAs.map(\.inboundSPI)
        let (first, second) = order[0] == esn.inboundSPI ? (esn, legacy) : (legacy, esn)
        dataPlane.kernel.refusedDeletions = [XFRMSAIdentifier(destination: local, spi: second.inboundSPI)]
        #expect(throws: DataPlaneError.self) { _ = try dataPlane.stopServingForHandover(state) }
        let restored = dataPlane.kernel
        #expect(restored.sas.count == 4, "every Child SA has both kernel SAs again")
        let firstOut = try #require(restored.sas[XFRMSAIdentifier(destination: remote, spi: first.outboundSPI)]?.replay)
        let secondOut = try #require(restored.sas[XFRMSAIdentifier(destination: remote, spi: second.outboundSPI)]?.replay)
        let expected: [UInt32: UInt64] = [esn.inboundSPI: 0x1_0000_0100, legacy.inboundSPI: 900]
        #expect(firstOut.outboundLastSent == expected[first.inboundSPI] && secondOut.outboundLastSent == expected[second.inboundSPI])
        #expect(state.childSA(inboundSPI: first.inboundSPI)!.outboundCounter.lastSent < expected[first.inboundSPI]!, "the state lagged the kernel")
    }

    /// A deletion whose outcome is unknown (done, but its answer lost): that kernel SA is not
    /// installed again from the state's older counters (it would send numbers the kernel used),
    /// and no switchover is made until its Child SA is gone.
    @Test func aDeletionWithoutAnAnswerIsNotUndoneFromOlderCounters() throws {
        var (state, kernel, esn, legacy) = try Self.setUp()
        var configuration = XFRMDataPlaneConfiguration()
        configuration.installsChildSAs = true
        let ike = try #require(state.ikeSAs[esn.parent])
        let local = XFRMAddress(ike.local.address), remote = XFRMAddress(ike.remote.address)
        let order = state.childSAs.map(\.inboundSPI)
        let (first, second) = order[0] == esn.inboundSPI ? (esn, legacy) : (legacy, esn)
        let secondOut = XFRMSAIdentifier(destination: remote, spi: second.outboundSPI)
        kernel.unansweredDeletions = [secondOut]
        var dataPlane = XFRMDataPlane(kernel: kernel, configuration: configuration)
        #expect(throws: DataPlaneError.self) { _ = try dataPlane.stopServingForHandover(state) }
        #expect(dataPlane.kernel.sas[secondOut] == nil, "not installed again from older counters")
        #expect(dataPlane.kernel.sas[XFRMSAIdentifier(destination: local, spi: second.inboundSPI)] != nil, "its inbound SA was never deleted")
        #expect(dataPlane.kernel.sas[XFRMSAIdentifier(destination: remote, spi: first.outboundSPI)] != nil, "the first Child SA is back")
        let held = dataPlane.kernel.sas.count
        #expect(throws: DataPlaneError.self) { _ = try dataPlane.stopServingForHandover(state) }
        #expect(dataPlane.kernel.sas.count == held, "refused before deleting anything")
        _ = try state.deleteChildSA(inboundSPI: second.inboundSPI)
        #expect(try dataPlane.stopServingForHandover(state).map(\.inboundSPI) == [first.inboundSPI], "once it is gone (rekeyed)")
    }

    /// Selectors XFRM cannot express (an address range that is not a prefix, a port range)
    /// are refused with a typed error, not installed wider.
    @Test func rangesThatAreNotPrefixesAreRefused() throws {
        var random = SplitMix64(seed: 34)
        let ike = try SAFixtures.ikeSA(1, remote: IPAddress(ipv4: 0xC633_6401), &random)
        var state = GatewayState()
        _ = try state.createIKESA(ike)
        var child = try SAFixtures.childSA(0x6100, parent: ike.identifier, window: 64, &random)
        child.localSelectors = [try TrafficSelector(startAddress: IPAddress(ipv4: 0x0A00_0001), endAddress: IPAddress(ipv4: 0x0A00_0005))]
        _ = try state.createChildSA(child)
        var configuration = XFRMDataPlaneConfiguration()
        configuration.installsChildSAs = true
        var dataPlane = XFRMDataPlane(kernel: TableKernel(), configuration: configuration)
        #expect(throws: DataPlaneError.self) { try dataPlane.reconcile(state) }
        #expect(dataPlane.kernel.policies.isEmpty)
    }
}
