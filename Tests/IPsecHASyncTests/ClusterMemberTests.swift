import IPsecHACore
import IPsecHASync
import IPsecHATestKit
import Testing

extension EmbeddedCluster {
    /// An IKE SA with one Child SA (inbound SPI `spi`) made through member `member`.
    mutating func createSAs(ikeSPI: UInt64, childSPI spi: UInt32, seed: UInt64, through member: Int = 0) throws -> (IKESA, ReplicationToken) {
        var random = SplitMix64(seed: seed)
        let ike = try SAFixtures.ikeSA(ikeSPI, &random)
        let child = try SAFixtures.childSA(spi, parent: ike.identifier, window: 64, &random)
        let token = try members[member].update(now: now) { state throws(GatewayStateError) in try state.createIKESA(ike) + state.createChildSA(child) }
        return (ike, token)
    }

    /// `count` packets out on the Child SA with inbound SPI `spi`, if `member` is active.
    mutating func send(_ member: Int, spi: UInt32, count: Int) {
        _ = members[member].packetPath { state in
            guard let slot = state.slot(forInboundSPI: spi) else { return }
            for _ in 0..<count { _ = try? state.nextOutboundSequenceNumber(at: slot, bytes: 100) }
        }
    }
}

@Suite("ClusterMember: one machine per member")
struct ClusterMemberTests {
    @Test func theStandbyBecomesReadyAndAChangeIsReleasedOnceItHoldsIt() throws {
        var pair = try EmbeddedCluster(seed: 1)
        try pair.run(for: .milliseconds(500))
        #expect(pair.events[1] == [.becameReady])
        let (ike, token) = try pair.createSAs(ikeSPI: 7, childSPI: 0x4000, seed: 2)
        pair.drain(0)
        #expect(!pair.events[0].contains(.released(token)), "not before the standby acknowledged")
        try pair.run(for: .milliseconds(20))
        #expect(pair.events[0].contains(.released(token)))
        #expect(pair.members[1].state == pair.members[0].state && pair.members[1].state.childSACount == 1)
        #expect(throws: ClusterMemberError.notActive) { try pair.members[1].update(now: pair.now) { _ throws(GatewayStateError) in [] } }
        // A change that fails leaves the state as it was and replicates nothing.
        let before = pair.members[0].state
        #expect(throws: ClusterMemberError.state(.ikeSAExists(ike.identifier))) {
            try pair.members[0].update(now: pair.now) { state throws(GatewayStateError) in try state.createIKESA(ike) }
        }
        #expect(pair.members[0].state == before && pair.members[0].nextAction() == nil)
        #expect(pair.members[1].packetPath { _ in true } == nil, "a standby does not send")
    }

    /// The active member dies with counters moving; the ready standby notices within the miss
    /// count, takes over with the plan applied, and resumes beyond every number used.
    @Test func theStandbyTakesOverWhenTheActiveMemberFallsSilent() throws {
        var pair = try EmbeddedCluster(seed: 3)
        try pair.run(for: .milliseconds(300))
        _ = try pair.createSAs(ikeSPI: 9, childSPI: 0x5000, seed: 4)
        for _ in 0..<300 {
            pair.send(0, spi: 0x5000, count: 10)
            try pair.run(for: .milliseconds(1))
        }
        let used = try #require(pair.members[0].state.childSA(inboundSPI: 0x5000)).outboundCounter.lastSent
        pair.crash(0)
        try pair.run(for: .milliseconds(400))
        guard case .tookOver(let plan, let rekey)? = pair.events[1].last else {
            Issue.record("no takeover: \(pair.events[1])")
            return
        }
        #expect(pair.members[1].isActive && rekey.isEmpty && plan.childSAs.count == 1)
        #expect(try #require(pair.members[1].state.childSA(inboundSPI: 0x5000)).outboundCounter.lastSent > used)
        #expect(pair.members[1].packetPath { _ in true } == true, "it serves now")
    }

    /// The event loop sleeps until the next deadline: an idle pair ticks about once a heartbeat
    /// each, not every millisecond.
    @Test func anIdlePairWakesAboutOnceAHeartbeat() throws {
        var pair = try EmbeddedCluster(seed: 5)
        try pair.run(for: .milliseconds(500))
        let before = pair.ticks
        try pair.run(for: .milliseconds(1000))
        #expect(pair.ticks - before < 200, "\(pair.ticks - before) ticks in an idle second")
    }

    /// A split brain: the members cannot hear each other, the standby takes over while the
    /// active member goes on sending; when they hear each other again, epochs decide. The
    /// older active steps down and says so, and the newer moves every counter past anything
    /// the other could have used, then resyncs it.
    @Test func aHealedSplitBrainLeavesOneActiveMemberBeyondTheOthersCounters() throws {
        var pair = try EmbeddedCluster(seed: 6)
        try pair.run(for: .milliseconds(300))
        _ = try pair.createSAs(ikeSPI: 11, childSPI: 0x6000, seed: 7)
        try pair.run(for: .milliseconds(50))
        pair.network.faults.partitions = [[1, 2]]
        for _ in 0..<400 {
            pair.send(0, spi: 0x6000, count: 100)
            pair.send(1, spi: 0x6000, count: 100)
            try pair.run(for: .milliseconds(1))
        }
        #expect(pair.members[0].isActive && pair.members[1].isActive, "both active during the split")
        let oldActiveSent = try #require(pair.members[0].state.childSA(inboundSPI: 0x6000)).outboundCounter.lastSent
        pair.network.faults.partitions = []
        try pair.run(for: .milliseconds(2000))
        #expect(!pair.members[0].isActive && pair.members[1].isActive)
        #expect(pair.events[0].contains { if case .steppedDown(ClusterMemberID(rawValue: 2), _) = $0 { true } else { false } }, "\(pair.events[0])")
        #expect(pair.events[1].contains(.reasserted(jump: ClusterMember.reassertionJump, rekey: [])), "\(pair.events[1])")
        #expect(pair.events[0].last == .becameReady, "resynced from the newer active member")
        let resumed = try #require(pair.members[1].state.childSA(inboundSPI: 0x6000)).outboundCounter.lastSent
        #expect(resumed > oldActiveSent + ClusterMember.reassertionJump / 2, "beyond what the other sent")
        #expect(pair.members[0].state == pair.members[1].state)
    }

    /// Three members: when the active one fails, only the lowest standby that is alive takes
    /// over; the other follows it, is resynced from it (its copy came from the failed member),
    /// and holds what the new active member changes from then on.
    @Test func withTwoStandbysOneTakesOverAndTheOtherFollowsIt() throws {
        var cluster = try EmbeddedCluster(members: 3, seed: 8)
        try cluster.run(for: .milliseconds(500))
        #expect(cluster.events[1] == [.becameReady] && cluster.events[2] == [.becameReady])
        _ = try cluster.createSAs(ikeSPI: 21, childSPI: 0x7000, seed: 9)
        cluster.send(0, spi: 0x7000, count: 5_000)
        try cluster.run(for: .milliseconds(100))
        cluster.crash(0)
        try cluster.run(for: .seconds(2))
        #expect(cluster.activeMembers == [1], "\(cluster.events)")
        #expect(!cluster.events[2].contains { if case .tookOver = $0 { true } else { false } }, "\(cluster.events[2])")
        #expect(cluster.members[2].isReady && cluster.members[2].state == cluster.members[1].state, "resynced from member 2")
        let (_, token) = try cluster.createSAs(ikeSPI: 22, childSPI: 0x7100, seed: 10, through: 1)
        try cluster.run(for: .milliseconds(50))
        #expect(cluster.events[1].contains(.released(token)))
        #expect(cluster.members[2].state.childSA(inboundSPI: 0x7100) != nil)
        #expect(cluster.members[2].state == cluster.members[1].state)
    }
}
