import IPsecHACore
import Testing

@testable import IPsecHASync

/// keepalived decides who holds the address; the synch channel's detector never overrides it.
@Suite struct VRRPFollowerTests {
    let active = ClusterMemberID(rawValue: 1)

    @Test func readsKeepalivedNotifyFIFOLines() {
        #expect(VRRPState(notifyFIFOLine: "INSTANCE \"VI_1\" MASTER 150", instance: "VI_1") == .master)
        #expect(VRRPState(notifyFIFOLine: "INSTANCE \"VI_1\" BACKUP 100", instance: "VI_1") == .backup)
        #expect(VRRPState(notifyFIFOLine: "INSTANCE \"VI_1\" FAULT 100", instance: "VI_1") == .fault)
        #expect(VRRPState(notifyFIFOLine: "INSTANCE \"VI_1\" STOP 100", instance: "VI_1") == .stop)
        // Still master: nothing to do.
        #expect(VRRPState(notifyFIFOLine: "INSTANCE \"VI_1\" MASTER_RX_LOWER_PRI 150", instance: "VI_1") == nil)
        #expect(VRRPState(notifyFIFOLine: "INSTANCE \"VI_2\" MASTER 150", instance: "VI_1") == nil)
        #expect(VRRPState(notifyFIFOLine: "GROUP \"G1\" MASTER", instance: "VI_1") == nil)
        #expect(VRRPState(notifyFIFOLine: "", instance: "VI_1") == nil)
    }

    @Test func aStandbyTakesOverOnMasterEvenWhileTheActiveStillTalks() {
        var follower = VRRPFollower()
        #expect(follower.heard(.backup, isActive: false) == .stay)
        // Split brain if the old active is alive: the promotion's newer epoch decides.
        #expect(follower.heard(.master, isActive: false) == .takeOver(.external("keepalived: MASTER")))
    }

    @Test func aStandbyHoldsBackWhenOnlyTheDetectorSaysTheActiveIsDead() {
        var follower = VRRPFollower()
        _ = follower.heard(.backup, isActive: false)
        guard case .holdBack = follower.activeMemberSilent(active) else {
            Issue.record("took over without keepalived")
            return
        }
        // Reported once per silence, again after the active member was heard.
        #expect(follower.activeMemberSilent(active) == .stay)
        follower.activeMemberHeard()
        guard case .holdBack = follower.activeMemberSilent(active) else {
            Issue.record("a new silence was not reported")
            return
        }
        // Nothing heard from keepalived yet: still no takeover.
        var fresh = VRRPFollower()
        guard case .holdBack = fresh.activeMemberSilent(active) else {
            Issue.record("took over before keepalived said anything")
            return
        }
        // keepalived says MASTER: the detector's opinion agrees, take over.
        _ = follower.heard(.master, isActive: false)
        #expect(follower.activeMemberSilent(active) == .takeOver(.external("keepalived: MASTER")))
    }

    @Test func anActiveMemberStepsDownWhenKeepalivedMovesTheAddressAway() {
        var follower = VRRPFollower()
        #expect(follower.heard(.master, isActive: true) == .stay)
        #expect(follower.heard(.backup, isActive: true) == .stepDown("keepalived: BACKUP"))
        #expect(follower.heard(.fault, isActive: true) == .stepDown("keepalived: FAULT"))
        #expect(follower.heard(.stop, isActive: true) == .stepDown("keepalived: STOP"))
        #expect(follower.state == .stop)
    }
}
