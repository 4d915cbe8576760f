import IPsecHACore
import IPsecHASync
import IPsecHATestKit
import Testing

@Suite("Failure detection, promotion, split brain")
struct ClusterRoleTests {
    let one = ClusterMemberID(rawValue: 1)
    let two = ClusterMemberID(rawValue: 2)

    @Test func silentActiveIsReportedOnceAfterTheMissCount() throws {
        var role = ClusterRole(member: two, epoch: 1, isActive: false, activeMember: one, heartbeatInterval: .nanoseconds(50), missCount: 3)
        #expect(role.tick(now: Timestamp(nanoseconds: 1_000), lastHeard: Timestamp(nanoseconds: 900)).isEmpty)
        #expect(role.tick(now: Timestamp(nanoseconds: 1_049), lastHeard: Timestamp(nanoseconds: 900)).isEmpty)
        #expect(role.tick(now: Timestamp(nanoseconds: 1_050), lastHeard: Timestamp(nanoseconds: 900)) == [.activeMemberFailed(one)])
        #expect(role.tick(now: Timestamp(nanoseconds: 2_000), lastHeard: Timestamp(nanoseconds: 900)).isEmpty, "reported once")
        #expect(throws: ClusterRoleError.epochNotNewer(current: 1, proposed: 1)) { try role.promote(.activeMemberSilent(one), newEpoch: 1) }
        #expect(try role.promote(.activeMemberSilent(one), newEpoch: 2) == [.promoted(.activeMemberSilent(one))])
        #expect(role.isActive && role.capabilities == ClusterRole.activeCapability)
        #expect(throws: ClusterRoleError.alreadyActive) { try role.promote(.external("operator"), newEpoch: 3) }
    }

    @Test func splitBrainIsResolvedByEpochs() throws {
        var role = ClusterRole(member: two, epoch: 5, isActive: true, activeMember: nil)
        #expect(role.heardHello(from: one, epoch: 4, capabilities: ClusterRole.activeCapability).isEmpty, "older epoch: stay")
        #expect(role.heardHello(from: one, epoch: 9, capabilities: 0).isEmpty, "not active: no conflict")
        #expect(role.heardHello(from: one, epoch: 6, capabilities: ClusterRole.activeCapability) == [.steppedDown(newerActive: one, epoch: 6)])
        #expect(!role.isActive && role.activeMember == one)
        var tie = ClusterRole(member: one, epoch: 7, isActive: true, activeMember: nil)
        #expect(tie.heardHello(from: two, epoch: 7, capabilities: ClusterRole.activeCapability) == [.steppedDown(newerActive: two, epoch: 7)])
    }

    /// With the real channel: the active member falls silent (cut off), the standby notices
    /// within the miss count plus one heartbeat, promotes itself and computes its plan.
    @Test func standbyDetectsTheCrashAndTakesOver() throws {
        var pair = try ReplicationPair(seed: 100)
        #expect(try pair.settle())
        let heartbeat = pair.standbyChannel.configuration.heartbeatIntervalNanoseconds
        var role = ClusterRole(member: ReplicationPair.standbyID, epoch: 1, isActive: false, activeMember: ReplicationPair.activeID)
        pair.network.faults.partitions = [[1, 2]]
        let crashedAt = pair.now
        var events: [ClusterRoleEvent] = []
        while events.isEmpty, pair.now.nanoseconds - crashedAt.nanoseconds < 10 * heartbeat {
            try pair.run(for: 1_000_000)
            events = role.tick(now: pair.now, lastHeard: pair.standbyChannel.lastHeard(from: ReplicationPair.activeID))
        }
        #expect(events == [.activeMemberFailed(ReplicationPair.activeID)])
        #expect(pair.now.nanoseconds - crashedAt.nanoseconds <= 4 * heartbeat)
        #expect(try role.promote(.activeMemberSilent(ReplicationPair.activeID), newEpoch: 2).count == 1)
        #expect(pair.replica.takeoverPlan(now: pair.now).ikeSAs.count == pair.replica.state.ikeSAs.count)
    }

    /// Review M2 (5) and L8: every hello from a stepped-down member with a new epoch made the
    /// active member jump its counters by 2^30. Once per epoch, at most once per 10 s; the
    /// memory of it survives the reassertion's own epoch change.
    @Test func reassertionsAreOncePerEpochAndAtMostEveryTenSeconds() throws {
        let other = ClusterMemberID(rawValue: 2)
        var role = ClusterRole(member: ClusterMemberID(rawValue: 1), epoch: 5, isActive: true, activeMember: nil)
        let steppedDown = ClusterRole.steppedDownCapability
        func due(_ epoch: UInt32, _ capabilities: UInt32, at seconds: UInt64) -> Bool {
            role.reassertionDue(afterHelloFrom: other, epoch: epoch, capabilities: capabilities, now: .seconds(seconds))
        }
        #expect(!due(9, 0, at: 1), "an ordinary hello")
        #expect(due(9, steppedDown, at: 1))
        try role.reassert(newEpoch: 10)
        #expect(role.epoch == 10 && role.isActive)
        #expect(!due(9, steppedDown, at: 30), "that epoch was answered")
        for epoch in 11..<100 as Range<UInt32> {
            #expect(!due(epoch, steppedDown, at: 5), "within 10 s")
        }
        #expect(due(100, steppedDown, at: 11))
        var standby = ClusterRole(member: ClusterMemberID(rawValue: 3), epoch: 5, isActive: false, activeMember: other)
        let standbyDue = standby.reassertionDue(afterHelloFrom: other, epoch: 9, capabilities: steppedDown, now: .seconds(1))
        #expect(!standbyDue)
        #expect(throws: ClusterRoleError.notActive) { try standby.reassert(newEpoch: 10) }
    }
}
