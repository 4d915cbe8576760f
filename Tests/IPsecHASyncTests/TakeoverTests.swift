import IPsecHACore
import IPsecHASync
import IPsecHATestKit
import Testing

@Suite("Takeover after a crash of the active member")
struct TakeoverTests {
    /// Traffic on a few Child SAs with checkpoints over a lossy synch link; the active member
    /// stops at a random moment; the standby's plan must never reuse an outbound sequence
    /// number and, under the conservative policy, must count every packet the failed member
    /// accepted as seen.
    @Test(arguments: [90, 91, 92, 93, 94, 95] as [UInt64])
    func planNeverReusesNorAcceptsAReplay(seed: UInt64) throws {
        var faults = NetworkFaults()
        faults.loss = 0.1
        faults.jitter = .milliseconds(2)
        var pair = try ReplicationPair(seed: seed, faults: faults)
        #expect(try pair.settle())
        var generator = RecordGenerator(seed: seed + 100)
        var random = SplitMix64(seed: seed + 200)
        let ike = generator.ikeSA()
        _ = try pair.replicate(try pair.state.createIKESA(ike))
        var spis: [UInt32] = []
        for _ in 0..<5 {
            var child = generator.childSA(parent: ike.identifier)
            child.policy = nil
            child.outboundCounter = try OutboundSequenceCounter(extendedSequenceNumbers: true)
            child.inboundWindow = try ReplayWindow(size: 1024, extendedSequenceNumbers: true)
            _ = try pair.replicate(try pair.state.createChildSA(child))
            spis.append(child.inboundSPI)
        }
        var scheduler = CounterCheckpointScheduler(policy: CounterCheckpointPolicy(packets: 500, interval: .milliseconds(20)))
        var peerSent = [UInt32: UInt64]()
        let crashAt = 50 + random.next() % 400
        for _ in 0..<crashAt {
            for spi in spis {
                let slot = pair.state.slot(forInboundSPI: spi)!
                for _ in 0..<(random.next() % 80) { _ = try pair.state.nextOutboundSequenceNumber(at: slot, bytes: 100) }
                for _ in 0..<(random.next() % 80) {
                    let number = (peerSent[spi] ?? 0) + 1
                    peerSent[spi] = number
                    if case .fresh(let inferred) = pair.state.checkInbound(wire: UInt32(truncatingIfNeeded: number), at: slot) {
                        try pair.state.commitInbound(inferred, bytes: 100, at: slot)
                    }
                }
            }
            _ = try pair.replicate(checkpoints: scheduler.takeDueCheckpoints(from: &pair.state, now: pair.now))
            try pair.run(for: 1_000_000)
        }
        // The active member dies here; the standby notices after a few heartbeats.
        let crashed = pair.state
        pair.network.faults.partitions = [[1, 2]]
        try pair.run(for: 150_000_000)
        let plan = pair.replica.takeoverPlan(now: pair.now)
        #expect(plan.childSAs.count == pair.replica.state.childSACount)
        for decision in plan.childSAs {
            let failed = try #require(crashed.childSA(inboundSPI: decision.inboundSPI))
            switch decision.outbound {
            case .resume(let lastSent):
                #expect(lastSent >= failed.outboundCounter.lastSent, "outbound \(decision.inboundSPI): \(decision.reason)")
            case .rekey:
                break
            }
            switch decision.inbound {
            case .restore(.conservative(let advance)):
                let standbyTop = try #require(pair.replica.state.childSA(inboundSPI: decision.inboundSPI)).inboundWindow.top
                #expect(standbyTop + advance >= failed.inboundWindow.top, "inbound \(decision.inboundSPI): \(decision.reason)")
            case .restore(let other):
                Issue.record("unexpected inbound policy \(other)")
            case .rekey:
                break
            }
            #expect(!decision.reason.description.isEmpty)
        }
        #expect(plan.ikeSAs.count == pair.replica.state.ikeSAs.count)
    }

    /// A pair with one IKE SA and one Child SA, replicated and settled.
    func pairWithOneChildSA(seed: UInt64) throws -> (ReplicationPair, UInt32) {
        var pair = try ReplicationPair(seed: seed)
        #expect(try pair.settle())
        var generator = RecordGenerator(seed: seed)
        let ike = generator.ikeSA()
        _ = try pair.replicate(try pair.state.createIKESA(ike))
        var child = generator.childSA(parent: ike.identifier)
        child.policy = nil
        child.outboundCounter = try OutboundSequenceCounter(extendedSequenceNumbers: true)
        _ = try pair.replicate(try pair.state.createChildSA(child))
        #expect(try pair.settle())
        return (pair, child.inboundSPI)
    }

    /// Review M3 end to end: an SA checkpointed at 100 packets a second bursts to 100,000 a
    /// second while the synch link is down, and the active member dies. Its last checkpoint
    /// said 100 packets a second; the standby must still resume past every number used.
    @Test func aBurstWhileTheSynchLinkIsDownReusesNoSequenceNumber() throws {
        var (pair, spi) = try pairWithOneChildSA(seed: 70)
        let slot = try #require(pair.state.slot(forInboundSPI: spi))
        var scheduler = CounterCheckpointScheduler(policy: CounterCheckpointPolicy(packets: 64, interval: .milliseconds(20)))
        for _ in 0..<500 {
            if pair.now.nanoseconds % 10_000_000 == 0 { _ = try pair.state.nextOutboundSequenceNumber(at: slot, bytes: 100) }
            _ = try pair.replicate(checkpoints: scheduler.takeDueCheckpoints(from: &pair.state, now: pair.now))
            try pair.run(for: 1_000_000)
        }
        pair.network.faults.partitions = [[1, 2]]
        for _ in 0..<100 {
            for _ in 0..<100 { _ = try pair.state.nextOutboundSequenceNumber(at: slot, bytes: 100) }
            _ = try pair.replicate(checkpoints: scheduler.takeDueCheckpoints(from: &pair.state, now: pair.now))
            try pair.run(for: 1_000_000)
        }
        let used = try #require(pair.state.childSA(inboundSPI: spi)).outboundCounter.lastSent
        try pair.run(for: 150_000_000)
        let plan = pair.replica.takeoverPlan(now: pair.now)
        guard case .resume(let resumeAfter)? = plan.childSAs.first?.outbound else {
            Issue.record("expected to resume: \(plan.childSAs)")
            return
        }
        #expect(used > 10_000 && resumeAfter > used, "\(plan.childSAs[0].reason)")
    }

    /// A counter checkpoint that arrived behind a lost datagram is not delivered (what is
    /// missing may change what follows), but at takeover it is the freshest count there is.
    @Test func checkpointsHeldBehindAGapAreAppliedAtTakeover() throws {
        var (pair, spi) = try pairWithOneChildSA(seed: 71)
        let slot = try #require(pair.state.slot(forInboundSPI: spi))
        // A change the standby never gets, then a checkpoint it gets, then the active dies.
        pair.network.faults.partitions = [[1, 2]]
        _ = try pair.replicate(try pair.state.updateChildSA(inboundSPI: spi) { $0.requestID &+= 1 })
        pair.network.faults.partitions = []
        for _ in 0..<50_000 { _ = try pair.state.nextOutboundSequenceNumber(at: slot, bytes: 100) }
        _ = try pair.replicate(pair.state.checkpointCounters(at: slot))
        pair.network.faults.partitions = [[1, 2]]
        try pair.run(for: 150_000_000)
        #expect(pair.replica.missingSince != nil)
        #expect(try #require(pair.replica.state.childSA(inboundSPI: spi)).outboundCounter.lastSent < 50_000)
        var replica = pair.replica
        replica.applyHeldCheckpoints(pair.standbyChannel.recordsHeldBehindGap(from: ReplicationPair.activeID), now: pair.now)
        #expect(try #require(replica.state.childSA(inboundSPI: spi)).outboundCounter.lastSent == 50_000)
        let plan = replica.takeoverPlan(policy: TakeoverPolicy(maximumPacketsPerSecond: nil), now: pair.now)
        guard case .resume(let resumeAfter)? = plan.childSAs.first?.outbound else {
            Issue.record("expected to resume")
            return
        }
        #expect(resumeAfter > 50_000)
    }

    /// A measured synch delay belongs to the member that measured it. A bulk resync begins a
    /// copy from whichever member is active now (after a failover, another one, perhaps over a
    /// slower link): until that member sends its own measure, a takeover sizes its margin from
    /// the configured one, never from the former member's faster link. A measure that comes
    /// with the resync counts.
    @Test func aResyncForgetsTheFormerActiveMembersSynchDelay() {
        let policy = TakeoverPolicy(stalenessMargin: .milliseconds(200))
        var generator = RecordGenerator(seed: 73)
        let ike = generator.ikeSA()
        var replica = Replica()
        func resync(id: UInt32, with extra: [SyncRecord] = []) {
            replica.apply(
                [.resyncBegin(id: id, scope: .everything, ikeSAs: 1, childSAs: 0, policies: 0)] + extra + [
                    .ikeSAUpsert(ike), .resyncEnd(id: id, ikeSAs: 1, childSAs: 0, policies: 0),
                ], now: .seconds(5))
        }
        replica.apply([.synchDelay(roundTrip: .milliseconds(3))], now: .seconds(4))
        resync(id: 1)
        #expect(replica.isReady && replica.activeSynchDelay == nil)
        #expect(replica.takeoverPlan(policy: policy, now: .seconds(6)).stalenessMargin == .milliseconds(200))
        resync(id: 2, with: [.synchDelay(roundTrip: .milliseconds(40))])
        #expect(replica.activeSynchDelay == .milliseconds(40))
        #expect(replica.takeoverPlan(policy: policy, now: .seconds(6)).stalenessMargin == .milliseconds(40))
    }

    /// Review L9 and M6: lifetimes are replicated in the active member's clock, which means
    /// nothing on another host (a rebooted one, here 995 s behind). The takeover moves them
    /// onto the new active member's clock, measured from the heartbeats, so that a hard
    /// lifetime ends when it should; then the state names the Child SA as expired.
    @Test func lifetimesMoveOntoTheNewActiveMembersClockAndHardOnesEnd() throws {
        var generator = RecordGenerator(seed: 72)
        let ike = generator.ikeSA()
        var child = generator.childSA(parent: ike.identifier)
        child.policy = nil
        child.lifetime = try ChildSALifetime(soft: LifetimeLimits(seconds: 5), hard: LifetimeLimits(seconds: 10), installedAt: .seconds(999))
        var replica = Replica()
        // The active member's clock reads 1,000 s when this member's reads 5 s.
        replica.apply([.heartbeat(highestSequence: 0, sentAt: .seconds(1_000))], now: .seconds(5))
        replica.apply(
            [
                .resyncBegin(id: 1, scope: .everything, ikeSAs: 1, childSAs: 1, policies: 0), .ikeSAUpsert(ike), .childSAUpsert(child),
                .resyncEnd(id: 1, ikeSAs: 1, childSAs: 1, policies: 0),
            ], now: .seconds(5))
        #expect(replica.isReady && replica.activeClockOffset == -995_000_000_000)
        let plan = replica.takeoverPlan(now: .seconds(6))
        var state = replica.state
        _ = state.applyTakeover(plan)
        let moved = try #require(state.childSA(inboundSPI: child.inboundSPI))
        #expect(moved.lifetime.installedAt == .seconds(4), "installed 1 s before the heartbeat, on this clock")
        #expect(state.expiredChildSAs(at: .seconds(13)).isEmpty)
        #expect(state.expiredChildSAs(at: .seconds(14)) == [child.inboundSPI])
        // Unmoved, it would have lived for 16 more minutes here.
        #expect(replica.state.expiredChildSAs(at: .seconds(14)).isEmpty)
    }
}
