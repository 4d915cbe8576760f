import IPsecHACore
import IPsecHASync
import IPsecHATestKit
import Testing

/// The data plane contract's second shape: ESP counters kept by the data plane (a kernel),
/// observed by the member rather than driven by it.
@Suite("ClusterMember with a data plane that keeps its own counters")
struct ClusterDataPlaneTests {
    /// Packets the package never sees still reach the standby through the checkpoints, and the
    /// member that takes over installs counters past every number the failed kernel used.
    @Test func countersObservedInTheActiveKernelSurviveATakeover() throws {
        var cluster = try EmbeddedCluster(seed: 20)
        var kernels = [SimulatedKernelDataPlane(), SimulatedKernelDataPlane()]
        try cluster.run(for: .milliseconds(300))
        _ = try cluster.createSAs(ikeSPI: 61, childSPI: 0x8000, seed: 21)
        try kernels[0].startServing(cluster.members[0].state)
        #expect(kernels[0].sas[0x8000] != nil)
        var used: UInt64 = 0
        for step in 0..<200 {
            let sent = kernels[0].send(spi: 0x8000, count: 50)
            used = try #require(sent)
            kernels[0].receive(spi: 0x8000, sequenceNumber: UInt64(step + 1))
            try cluster.members[0].tick(now: cluster.now, dataPlane: &kernels[0])
            cluster.drain(0)
            try cluster.run(for: .milliseconds(1))
        }
        let active = try #require(cluster.members[0].state.childSA(inboundSPI: 0x8000))
        #expect(active.outboundCounter.lastSent == used && active.inboundWindow.top == 200 && active.lifetime.usage.outboundPackets == used)
        try cluster.members[0].tick(now: cluster.now, dataPlane: &kernels[0])
        try cluster.run(for: .milliseconds(50))
        #expect(cluster.members[1].state.childSA(inboundSPI: 0x8000)?.outboundCounter.lastSent == used, "checkpointed to the standby")

        cluster.crash(0)
        let before = cluster.events[1].count
        try cluster.run(for: .milliseconds(400))
        for action in cluster.events[1][before...] { try cluster.members[1].drive(&kernels[1], for: action) }
        #expect(kernels[1].isServing)
        let resumed = try #require(kernels[1].sas[0x8000])
        #expect(resumed.lastSent > used, "resumes after \(resumed.lastSent), the failed kernel used \(used)")
        #expect(resumed.inboundTop >= 200)
        #expect(kernels[1].send(spi: 0x8000, count: 1) == resumed.lastSent + 1)
    }

    /// A kernel that reports each SA once a second (its timer threshold): a ping flow's counters
    /// move by a second's packets at once. The rates checkpointed, and the one the takeover's
    /// inbound advance is sized from, are the flow's 100 a second, not the ten times as many the
    /// 100 ms rate window alone made of each step (interop-kernel.sh's failovers then dropped
    /// up to seven seconds of the peer's pings).
    @Test func countersReportedOnceASecondAreMeasuredAtTheirRate() throws {
        var cluster = try EmbeddedCluster(seed: 27)
        var kernels = [SimulatedKernelDataPlane(), SimulatedKernelDataPlane()]
        kernels[0].counterReportInterval = .seconds(1)
        try cluster.run(for: .milliseconds(300))
        _ = try cluster.createSAs(ikeSPI: 63, childSPI: 0x8300, seed: 28)
        try kernels[0].startServing(cluster.members[0].state)
        let before = cluster.events[0].count
        for step in 1...400 {
            _ = kernels[0].send(spi: 0x8300, count: 1)
            kernels[0].receive(spi: 0x8300, sequenceNumber: UInt64(step))
            try cluster.members[0].tick(now: cluster.now, dataPlane: &kernels[0])
            cluster.drain(0)
            try cluster.run(for: .milliseconds(10))
        }
        let rates = cluster.events[0][before...].flatMap { action -> [UInt32] in
            guard case .countersCheckpointed(let entries) = action else { return [] }
            return entries.map(\.packetsPerSecond)
        }
        #expect(rates.count >= 3 && rates.allSatisfy { (90...120).contains($0) }, "\(rates)")
        cluster.crash(0)
        try cluster.run(for: .milliseconds(400))
        let plan = try #require(cluster.takeover(of: 1)).plan
        let child = try #require(plan.childSAs.first)
        let rate = try #require(child.reason.packetsPerSecond)
        #expect((90...120).contains(rate), "the rate the takeover's advance is sized from: \(child.reason)")
    }

    /// A planned switchover with a data plane that keeps its own counters: the data plane stops
    /// first, and the counters it ended with, past the last checkpoint, travel with the
    /// handover: the target resumes at the next number with no advance. (The plain
    /// `switchOver(now:)` hands over the last checkpoint, below what the kernel had sent.)
    @Test func aSwitchoverCarriesTheCountersTheDataPlaneEndedWith() throws {
        var cluster = try EmbeddedCluster(seed: 25)
        var kernels = [SimulatedKernelDataPlane(), SimulatedKernelDataPlane()]
        try cluster.run(for: .milliseconds(300))
        _ = try cluster.createSAs(ikeSPI: 62, childSPI: 0x8200, seed: 26)
        try kernels[0].startServing(cluster.members[0].state)
        _ = kernels[0].send(spi: 0x8200, count: 100)
        kernels[0].receive(spi: 0x8200, sequenceNumber: 40)
        try cluster.members[0].tick(now: cluster.now, dataPlane: &kernels[0])
        cluster.drain(0)
        try cluster.run(for: .milliseconds(50))
        let sent = kernels[0].send(spi: 0x8200, count: 7)
        let used = try #require(sent)
        kernels[0].receive(spi: 0x8200, sequenceNumber: 45)
        #expect(cluster.members[1].state.childSA(inboundSPI: 0x8200)?.outboundCounter.lastSent ?? 0 < used, "sent after the last checkpoint")
        let before = cluster.events[1].count
        try cluster.members[0].switchOver(dataPlane: &kernels[0], now: cluster.now)
        #expect(!kernels[0].isServing && kernels[0].send(spi: 0x8200, count: 1) == nil, "the old kernel stopped before the handover")
        cluster.drain(0)
        try cluster.run(for: .milliseconds(50))
        for action in cluster.events[1][before...] { try cluster.members[1].drive(&kernels[1], for: action) }
        #expect(cluster.activeMembers == [1])
        let plan = try #require(cluster.takeover(of: 1)).plan
        #expect(plan.childSAs.allSatisfy { $0.advance == 0 }, "\(plan)")
        let resumed = try #require(kernels[1].sas[0x8200])
        #expect(resumed.lastSent == used && resumed.inboundTop == 45)
        #expect(kernels[1].send(spi: 0x8200, count: 1) == used + 1, "the next number, never one the old kernel used")
    }

    /// A data plane that cannot stop refuses the switchover: it serves on, and so does the
    /// member; so does one that keeps its own counters and does not say how to stop.
    @Test func aDataPlaneThatCannotStopKeepsTheMemberActive() throws {
        var cluster = try EmbeddedCluster(seed: 27)
        var kernel = SimulatedKernelDataPlane()
        try cluster.run(for: .milliseconds(300))
        _ = try cluster.createSAs(ikeSPI: 63, childSPI: 0x8300, seed: 28)
        try cluster.run(for: .milliseconds(50))
        try kernel.startServing(cluster.members[0].state)
        kernel.refusesHandover = true
        #expect(throws: ClusterMemberError.dataPlane(DataPlaneError("refused, as asked"))) {
            try cluster.members[0].switchOver(dataPlane: &kernel, now: cluster.now)
        }
        #expect(cluster.members[0].isActive && kernel.isServing)
        struct Silent: ClusterDataPlane {
            var counterKeeping: CounterKeeping { .dataPlane }
            mutating func startServing(_ state: GatewayState) throws(DataPlaneError) {}
            mutating func stopServing() {}
        }
        var silent = Silent()
        #expect(throws: ClusterMemberError.self) { try cluster.members[0].switchOver(dataPlane: &silent, now: cluster.now) }
        #expect(cluster.members[0].isActive)
        try cluster.run(for: .milliseconds(300))
        #expect(cluster.activeMembers == [0])
    }

    /// A member that steps down stops its data plane; a standby reads no counters.
    @Test func aStepDownStopsTheDataPlaneAndAStandbyObservesNothing() throws {
        var cluster = try EmbeddedCluster(seed: 22)
        var kernel = SimulatedKernelDataPlane()
        try cluster.run(for: .milliseconds(300))
        try kernel.startServing(cluster.members[0].state)
        cluster.signal(0, .stepDown(reason: "maintenance"))
        for action in cluster.events[0] { try cluster.members[0].drive(&kernel, for: action) }
        #expect(!kernel.isServing)
        #expect(throws: ClusterMemberError.notActive) { try cluster.members[1].observeCounters([]) }
    }

    /// Counters from outside are checked: an unknown SA or one beyond the sequence space is
    /// refused and changes nothing; the others are adopted, forward only.
    @Test func observedCountersAreCheckedAndOnlyMoveForward() throws {
        var cluster = try EmbeddedCluster(seed: 23)
        try cluster.run(for: .milliseconds(300))
        var random = SplitMix64(seed: 24)
        let ike = try SAFixtures.ikeSA(71, &random)
        let child = try SAFixtures.childSA(0x8100, parent: ike.identifier, window: 64, extendedSequenceNumbers: false, &random)
        _ = try cluster.members[0].update(now: cluster.now) { state, changes throws(GatewayStateError) in
            changes += try state.createIKESA(ike) + state.createChildSA(child)
        }
        func observation(_ spi: UInt32, lastSent: UInt64, top: UInt64) -> ChildSACounterCheckpoint {
            ChildSACounterCheckpoint(
                inboundSPI: spi, outbound: OutboundCounterCheckpoint(lastSent: lastSent),
                inbound: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: top), usage: ChildSAUsage(outboundPackets: lastSent))
        }
        #expect(try cluster.members[0].observeCounters([observation(0x8100, lastSent: 500, top: 40), observation(0x9999, lastSent: 1, top: 1)]) == [0x9999])
        #expect(try cluster.members[0].observeCounters([observation(0x8100, lastSent: 100, top: 10)]) == [])
        var sa = try #require(cluster.members[0].state.childSA(inboundSPI: 0x8100))
        #expect(sa.outboundCounter.lastSent == 500 && sa.inboundWindow.top == 40 && sa.lifetime.usage.outboundPackets == 500, "never back")
        // A 32-bit SA: a counter beyond 2^32 cannot be, whatever the kernel said.
        #expect(try cluster.members[0].observeCounters([observation(0x8100, lastSent: 1 << 33, top: 41)]) == [0x8100])
        sa = try #require(cluster.members[0].state.childSA(inboundSPI: 0x8100))
        #expect(sa.outboundCounter.lastSent == 500 && sa.inboundWindow.top == 40, "a refused observation changes nothing")
    }
}
