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
