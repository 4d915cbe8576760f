import IPsecHACore
import IPsecHASync
import IPsecHATestKit
import Testing

@Suite("Replication over the synch channel")
struct ReplicationTests {
    @Test func standbyBecomesReadyAndFollowsChanges() throws {
        var cluster = try ReplicationPair(seed: 1)
        try cluster.run(for: 300_000_000)
        #expect(cluster.replica.isReady)
        var history = HistoryGenerator(seed: 2)
        for _ in 0..<200 {
            _ = try cluster.replicate(try history.step(&cluster.state))
            #expect(cluster.state.invariantViolations().isEmpty, "\(cluster.state.invariantViolations())")
        }
        try cluster.run(for: 300_000_000)
        #expect(cluster.replica.state == cluster.state)
        #expect(cluster.replica.state.invariantViolations().isEmpty, "\(cluster.replica.state.invariantViolations())")
        #expect(cluster.replica.statistics.stale == 0)
        #expect(cluster.replica.statistics.rejected == 0)
    }

    @Test(arguments: [3, 4, 5] as [UInt64])
    func convergesUnderLossDuplicationReorderingAndCorruption(seed: UInt64) throws {
        var cluster = try ReplicationPair(seed: seed, faults: .hostile)
        try cluster.run(for: 500_000_000)
        var history = HistoryGenerator(seed: seed * 10)
        for _ in 0..<300 {
            _ = try cluster.replicate(try history.step(&cluster.state))
            try cluster.run(for: 2_000_000)
        }
        cluster.network.faults = NetworkFaults()
        try cluster.checkpointAll()
        try cluster.run(for: 2_000_000_000)
        #expect(cluster.replica.isReady)
        #expect(cluster.replica.state == cluster.state)
        #expect(cluster.replica.state.invariantViolations().isEmpty && cluster.state.invariantViolations().isEmpty)
        #expect(cluster.activeChannel.statistics.retransmissions > 0)
        #expect(cluster.standbyChannel.statistics.gapsDetected > 0)
        #expect(cluster.standbyChannel.statistics.authenticationFailures > 0, "corrupted datagrams were refused")
        #expect(cluster.state.ikeSAs.count > 5)
    }

    @Test func aResyncKeepsTheReplicasSPDCacheCapacity() {
        var replica = Replica(spdCacheCapacity: 100)
        replica.apply(
            [
                .resyncBegin(id: 1, scope: .everything, ikeSAs: 0, childSAs: 0, policies: 0),
                .resyncEnd(id: 1, ikeSAs: 0, childSAs: 0, policies: 0),
            ], now: Timestamp(nanoseconds: 1))
        #expect(replica.isReady)
        #expect(replica.state.spdCacheCapacity == 100)
    }

    /// RFC 7296 section 2.18 on the standby: the new IKE SA (naming the one it replaced), the
    /// Child SAs moved to it, then the old IKE SA's delete.
    @Test func anIKESARekeyReachesTheStandby() throws {
        var cluster = try ReplicationPair(seed: 8)
        var random = SplitMix64(seed: 9)
        let old = try SAFixtures.ikeSA(1, &random)
        var changes = try cluster.state.createIKESA(old)
        changes += try cluster.state.createChildSA(SAFixtures.childSA(0x2001, parent: old.identifier, window: 64, &random))
        _ = try cluster.replicate(changes)
        let new = try SAFixtures.ikeSA(2, &random)
        _ = try cluster.replicate(try cluster.state.rekeyIKESA(old.identifier, to: new))
        #expect(try cluster.settle())
        #expect(cluster.replica.state == cluster.state)
        #expect(cluster.replica.state.ikeSAs[new.identifier]?.rekeyedFrom == old.identifier)
        #expect(cluster.replica.state.childSA(inboundSPI: 0x2001)?.parent == new.identifier)
        _ = try cluster.replicate(try cluster.state.deleteIKESA(old.identifier))
        #expect(try cluster.settle())
        #expect(cluster.replica.state == cluster.state && cluster.replica.state.childSACount == 1)
    }

    @Test func lateJoinerCatchesUpByBulkResync() throws {
        var cluster = try ReplicationPair(seed: 6)
        var history = HistoryGenerator(seed: 7)
        // The active member works alone for a while: the standby is cut off.
        cluster.network.faults.partitions = [[1, 2]]
        for _ in 0..<400 { _ = try cluster.replicate(try history.step(&cluster.state)) }
        try cluster.run(for: 100_000_000)
        #expect(!cluster.replica.isReady)
        cluster.network.faults.partitions = []
        try cluster.run(for: 1_000_000_000)
        #expect(cluster.replica.isReady)
        #expect(cluster.replica.state == cluster.state)
        #expect(cluster.replicator.resyncsStarted >= 1)

        // Every resynced IKE SA dates from the resync; one changed afterwards, from its record.
        let identifier = try #require(cluster.state.ikeSAs.keys.min())
        let resynced = try #require(cluster.replica.lastUpdate(of: identifier))
        #expect(cluster.state.ikeSAs.keys.allSatisfy { cluster.replica.lastUpdate(of: $0) == resynced })
        try cluster.run(for: 50_000_000)
        let changedAt = cluster.now
        _ = try cluster.replicate(try cluster.state.updateIKESA(identifier) { $0.state = .rekeying })
        try cluster.run(for: 50_000_000)
        #expect(try #require(cluster.replica.lastUpdate(of: identifier)) >= changedAt)
        #expect(cluster.replica.lastUpdate(of: IKESAIdentifier(initiatorSPI: 0xDEAD, responderSPI: 1)) == nil)
    }

    @Test func changesMadeWhileAResyncStreamsArriveAfterIt() throws {
        var cluster = try ReplicationPair(seed: 8)
        var history = HistoryGenerator(seed: 9)
        cluster.network.faults.partitions = [[1, 2]]
        for _ in 0..<400 { _ = try cluster.replicate(try history.step(&cluster.state)) }
        // More SAs than the channel's buffer holds in records, so that the resync streams.
        var records = RecordGenerator(seed: 10)
        for _ in 0..<20_000 { _ = try cluster.state.createIKESA(records.ikeSA()) }
        cluster.network.faults.partitions = []
        // Run until the resync is under way but not done, then keep changing the state (SAs
        // the resync's snapshot holds are updated and deleted meanwhile).
        var resyncing = false
        for _ in 0..<10_000 where !resyncing {
            try cluster.run(for: 100_000, step: 100_000)
            resyncing = cluster.replicator.isResyncing(ReplicationPair.standbyID)
        }
        #expect(resyncing, "the resync takes more than one step (\(cluster.replicator.resyncsStarted) started, ready: \(cluster.replica.isReady), \(cluster.state.ikeSAs.count) IKE SAs)")
        var tickets: [SyncTicket] = []
        for _ in 0..<300 { tickets += try cluster.replicate(try history.step(&cluster.state)) }
        // No ticket for a standby being resynced: synchronous replication waits for it to catch up.
        #expect(tickets.isEmpty)
        #expect(!cluster.replicator.hasCaughtUp(ReplicationPair.standbyID, channel: cluster.activeChannel))
        try cluster.run(for: 2_000_000_000)
        #expect(cluster.replicator.hasCaughtUp(ReplicationPair.standbyID, channel: cluster.activeChannel))
        #expect(!cluster.replicator.isResyncing(ReplicationPair.standbyID))
        #expect(cluster.replica.isReady)
        #expect(cluster.replica.state == cluster.state)
        #expect(cluster.replica.statistics.resyncsIncomplete == 0)
    }

    @Test func eachMembersWorkIsTimedOnlyWhenAskedFor() throws {
        var cluster = try ReplicationPair(seed: 12)
        var history = HistoryGenerator(seed: 13)
        for _ in 0..<50 { _ = try cluster.replicate(try history.step(&cluster.state)) }
        try cluster.run(for: 50_000_000)
        #expect(cluster.workTime == (0, 0))
        // A clock that moves 1 ns a reading: both members' shares grow, and together they cover
        // every interval between readings (one run of steps reads it once more than it charges).
        final class Counter: @unchecked Sendable { var value: UInt64 = 0 }
        let counter = Counter()
        cluster.workClock = {
            counter.value += 1
            return counter.value
        }
        for _ in 0..<50 { _ = try cluster.replicate(try history.step(&cluster.state)) }
        try cluster.run(for: 50_000_000)
        #expect(cluster.workTime.active > 0 && cluster.workTime.standby > 0)
        #expect(cluster.workTime.active + cluster.workTime.standby == counter.value - 1)
    }

    @Test func tailLossIsDetectedWithinTwoHeartbeats() throws {
        var cluster = try ReplicationPair(seed: 8)
        try cluster.run(for: 300_000_000)
        let heartbeat = cluster.standbyChannel.configuration.heartbeatIntervalNanoseconds
        var history = HistoryGenerator(seed: 9)
        // A burst whose last datagram is lost.
        for _ in 0..<20 { _ = try cluster.replicate(try history.step(&cluster.state)) }
        try cluster.run(for: 10_000_000)
        cluster.network.faults.loss = 1
        var sa = history.records.ikeSA()
        sa.generation = 0
        _ = try cluster.replicate(try cluster.state.createIKESA(sa))
        let lostAt = cluster.now
        try cluster.run(for: 1_000_000)
        cluster.network.faults.loss = 0
        var detectedAt: Timestamp?
        for _ in 0..<Int(3 * heartbeat / 1_000_000) {
            try cluster.run(for: 1_000_000)
            if detectedAt == nil, cluster.standbyChannel.missingSince(from: ReplicationPair.activeID) != nil {
                detectedAt = cluster.now
                #expect(cluster.replica.mayHaveMissedUpdates(of: sa.identifier))
            }
        }
        let detected = try #require(detectedAt)
        #expect(detected.nanoseconds - lostAt.nanoseconds <= 2 * heartbeat)
        #expect(cluster.replica.state == cluster.state, "and repaired")
        #expect(!cluster.replica.mayHaveMissedUpdates(of: sa.identifier))
    }
}

@Suite("Counter checkpoints")
struct CounterCheckpointTests {
    /// A settled pair whose active member holds one IKE SA with `count` Child SAs (no policy),
    /// replicated.
    func pair(seed: UInt64, childSAs count: Int) throws -> (cluster: ReplicationPair, childSAs: [ChildSA]) {
        var cluster = try ReplicationPair(seed: seed)
        try cluster.run(for: 300_000_000)
        var generator = RecordGenerator(seed: seed + 1)
        let ike = generator.ikeSA()
        _ = try cluster.replicate(try cluster.state.createIKESA(ike))
        var childSAs: [ChildSA] = []
        for _ in 0..<count {
            var sa = generator.childSA(parent: ike.identifier)
            sa.policy = nil
            _ = try cluster.replicate(try cluster.state.createChildSA(sa))
            childSAs.append(sa)
        }
        return (cluster, childSAs)
    }

    @Test func dueByPacketsOrIntervalWithMeasuredRates() throws {
        var (cluster, childSAs) = try pair(seed: 40, childSAs: 2)
        let (busy, quiet) = (childSAs[0], childSAs[1])
        var scheduler = CounterCheckpointScheduler(policy: CounterCheckpointPolicy(packets: 1_000, interval: .milliseconds(50)))
        #expect(scheduler.takeDueCheckpoints(from: &cluster.state, now: cluster.now).isEmpty, "first pass only starts tracking")

        let busySlot = try #require(cluster.state.slot(forInboundSPI: busy.inboundSPI))
        let quietSlot = try #require(cluster.state.slot(forInboundSPI: quiet.inboundSPI))
        var checkpoints: [CounterCheckpointEntry] = []
        for millisecond in 1...100 {
            for _ in 0..<100 { _ = try cluster.state.nextOutboundSequenceNumber(at: busySlot, bytes: 100) }
            if millisecond % 10 == 0 { _ = try cluster.state.nextOutboundSequenceNumber(at: quietSlot, bytes: 100) }
            try cluster.run(for: 1_000_000)
            let due = scheduler.takeDueCheckpoints(from: &cluster.state, now: cluster.now)
            checkpoints += due
            _ = cluster.replicator.replicate(checkpoints: due, state: cluster.state, channel: &cluster.activeChannel, now: cluster.now)
        }
        let busyCheckpoints = checkpoints.filter { $0.checkpoint.inboundSPI == busy.inboundSPI }
        let quietCheckpoints = checkpoints.filter { $0.checkpoint.inboundSPI == quiet.inboundSPI }
        // 100 packets a millisecond: due by packets every 10 ms, at about 100,000 packets/s.
        #expect((9...11).contains(busyCheckpoints.count))
        #expect(busyCheckpoints.allSatisfy { (90_000...110_000).contains($0.packetsPerSecond) })
        // 100 packets a second: due by the 50 ms interval.
        #expect((1...2).contains(quietCheckpoints.count))
        try cluster.run(for: 100_000_000)
        #expect(cluster.replica.state.childSA(inboundSPI: busy.inboundSPI)?.outboundCounter.lastSent == busyCheckpoints.last?.checkpoint.outbound.lastSent)
        try cluster.checkpointAll()
        try cluster.run(for: 100_000_000)
        #expect(cluster.replica.state == cluster.state)
    }
}

extension CounterCheckpointTests {
    /// A Child SA deleted and another installed in its slot: the newcomer starts a track of its
    /// own (its first pass is not due), whether its counters are below the old one's or above,
    /// and is then due by its own packets.
    @Test func aSlotsNextChildSAIsTrackedAfresh() throws {
        var (cluster, childSAs) = try pair(seed: 44, childSAs: 1)
        var scheduler = CounterCheckpointScheduler(policy: CounterCheckpointPolicy(packets: 10, interval: .seconds(10)))
        let old = childSAs[0]
        let slot = try #require(cluster.state.slot(forInboundSPI: old.inboundSPI))
        for _ in 0..<5 { _ = try cluster.state.nextOutboundSequenceNumber(at: slot, bytes: 100) }
        _ = scheduler.takeDueCheckpoints(from: &cluster.state, now: cluster.now)
        for _ in 0..<5 { _ = try cluster.state.nextOutboundSequenceNumber(at: slot, bytes: 100) }
        var generator = RecordGenerator(seed: 45)
        for packetsBefore in [UInt64(0), 1_000] {
            _ = try cluster.state.deleteChildSA(inboundSPI: cluster.state.childSAs[0].inboundSPI)
            var newcomer = generator.childSA(parent: old.parent)
            newcomer.policy = nil
            newcomer.lifetime.usage = ChildSAUsage(outboundPackets: packetsBefore)
            _ = try cluster.state.createChildSA(newcomer)
            #expect(cluster.state.slot(forInboundSPI: newcomer.inboundSPI) == slot, "the slot is reused")
            #expect(scheduler.takeDueCheckpoints(from: &cluster.state, now: cluster.now).isEmpty, "a new track, not the old one's count")
            for _ in 0..<9 { _ = try cluster.state.nextOutboundSequenceNumber(at: slot, bytes: 100) }
            #expect(scheduler.takeDueCheckpoints(from: &cluster.state, now: cluster.now).isEmpty, "9 of its own packets")
            _ = try cluster.state.nextOutboundSequenceNumber(at: slot, bytes: 100)
            let due = scheduler.takeDueCheckpoints(from: &cluster.state, now: cluster.now)
            #expect(due.map(\.checkpoint.inboundSPI) == [newcomer.inboundSPI])
        }
    }

    /// The scan visits only Child SAs whose counters moved since their last checkpoint: one
    /// idle for ten seconds is not due (and costs nothing); when it starts sending again its
    /// rate is measured over the last window, not over the idle time. Packets not yet due
    /// stay tracked: due by the interval with no packet more.
    @Test func idleChildSAsAreSkippedAndResumeWithARecentRate() throws {
        var (cluster, childSAs) = try pair(seed: 46, childSAs: 1)
        let slot = try #require(cluster.state.slot(forInboundSPI: childSAs[0].inboundSPI))
        var scheduler = CounterCheckpointScheduler(policy: CounterCheckpointPolicy(packets: 1_000, interval: .milliseconds(50)))
        var now = cluster.now
        func pass(after milliseconds: UInt64) -> [CounterCheckpointEntry] {
            now = Timestamp(nanoseconds: now.nanoseconds + milliseconds * 1_000_000)
            return scheduler.takeDueCheckpoints(from: &cluster.state, now: now)
        }
        #expect(pass(after: 0).isEmpty, "the first pass starts tracking")
        var taken: [CounterCheckpointEntry] = []
        for _ in 0..<20 {
            _ = try cluster.state.nextOutboundSequenceNumber(at: slot, bytes: 100)
            taken += pass(after: 10)
        }
        #expect(!taken.isEmpty && taken.allSatisfy { (80...120).contains($0.packetsPerSecond) }, "\(taken.map(\.packetsPerSecond))")
        // Idle for ten seconds: whatever was sent last is checkpointed, then nothing.
        var idle: [CounterCheckpointEntry] = []
        for _ in 0..<1_000 { idle += pass(after: 10) }
        #expect(idle.count <= 1, "only the last packets' checkpoint: \(idle.count)")
        // Ten packets in 10 ms after the idle time: 100 a second over the last window, not one
        // a second over the idle ten seconds.
        for _ in 0..<10 { _ = try cluster.state.nextOutboundSequenceNumber(at: slot, bytes: 100) }
        let resumed = pass(after: 10)
        #expect(resumed.count == 1 && (50...110).contains(resumed.first?.packetsPerSecond ?? 0), "\(resumed.map(\.packetsPerSecond))")
        // Five packets, then none: not due by count, due by the interval all the same.
        for _ in 0..<5 { _ = try cluster.state.nextOutboundSequenceNumber(at: slot, bytes: 100) }
        var later: [CounterCheckpointEntry] = []
        for _ in 0..<6 { later += pass(after: 10) }
        #expect(later.count == 1 && later.first?.checkpoint.outbound.lastSent == cluster.state[slot]?.outboundCounter.lastSent)
    }

    /// Counters that a data plane reports once a second move by a second's packets at once:
    /// measured over the report interval, not the 100 ms rate window, they are the flow's 100 a
    /// second.
    @Test func countersReportedInStepsAreMeasuredOverTheReportInterval() throws {
        var (cluster, childSAs) = try pair(seed: 47, childSAs: 1)
        let slot = try #require(cluster.state.slot(forInboundSPI: childSAs[0].inboundSPI))
        var scheduler = CounterCheckpointScheduler(policy: CounterCheckpointPolicy(packets: 1_000, interval: .milliseconds(50)))
        scheduler.counterReportInterval = .seconds(1)
        var now = cluster.now
        var rates: [UInt32] = []
        for millisecond in stride(from: 0, through: 5_000, by: 10) {
            if millisecond % 1_000 == 0, millisecond > 0 {
                for _ in 0..<100 { _ = try cluster.state.nextOutboundSequenceNumber(at: slot, bytes: 100) }
            }
            now = Timestamp(nanoseconds: cluster.now.nanoseconds + UInt64(millisecond) * 1_000_000)
            rates += scheduler.takeDueCheckpoints(from: &cluster.state, now: now).map(\.packetsPerSecond)
        }
        #expect(rates.count >= 4 && rates.allSatisfy { (90...110).contains($0) }, "\(rates)")
    }

    /// A ping flow, 100 packets a second each way, checkpointed every 4 packets: each
    /// checkpoint's rate is the busier direction's 100 a second, not the 200 of both, and not
    /// the rounding of one checkpoint's 4 packets (cluster.sh's crash lost 10 pings to an
    /// inbound advance sized from 238 a second).
    @Test func ratesAreOneDirectionsOverTheRateWindow() throws {
        var (cluster, childSAs) = try pair(seed: 42, childSAs: 1)
        let ping = childSAs[0]
        let slot = try #require(cluster.state.slot(forInboundSPI: ping.inboundSPI))
        var scheduler = CounterCheckpointScheduler(policy: CounterCheckpointPolicy(packets: 4, interval: .milliseconds(20)))
        var inbound = try #require(cluster.state.childSA(inboundSPI: ping.inboundSPI)).inboundWindow.top
        var rates: [UInt32] = []
        // A request in, a reply out every 10 ms, offset by 3 ms; the scheduler scans every 4 ms.
        for millisecond in 1...1_000 {
            if millisecond % 10 == 0 {
                inbound += 1
                try cluster.state.commitInbound(inbound, bytes: 84, at: slot)
            }
            if millisecond % 10 == 3 { _ = try cluster.state.nextOutboundSequenceNumber(at: slot, bytes: 84) }
            try cluster.run(for: 1_000_000)
            if millisecond % 4 == 0 { rates += scheduler.takeDueCheckpoints(from: &cluster.state, now: cluster.now).map(\.packetsPerSecond) }
        }
        let settled = rates.dropFirst(10)
        #expect(settled.count >= 30)
        #expect(settled.allSatisfy { (85...115).contains($0) }, "\(settled)")
    }
}

@Suite("Epoch and key rotation")
struct RotationTests {
    @Test func activeMovesToANewEpochAndTheStandbyFollows() throws {
        var pair = try ReplicationPair(seed: 60)
        #expect(try pair.settle())
        var history = HistoryGenerator(seed: 61)
        for _ in 0..<50 { _ = try pair.replicate(try history.step(&pair.state)) }
        try pair.rotateActive(toEpoch: 2)
        for _ in 0..<50 { _ = try pair.replicate(try history.step(&pair.state)) }
        #expect(try pair.settle())
        #expect(pair.replica.state == pair.state)
        #expect(throws: SyncChannelError.self) { try pair.activeChannel.rotate(toEpoch: 2) }
    }

    @Test func bothMembersMoveToANewClusterKey() throws {
        var pair = try ReplicationPair(seed: 62)
        #expect(try pair.settle())
        var history = HistoryGenerator(seed: 63)
        for _ in 0..<30 { _ = try pair.replicate(try history.step(&pair.state)) }
        let newKey = try ChannelKey.generate()
        try pair.rotateStandby(toEpoch: 2, key: newKey)
        try pair.run(for: 20_000_000)
        try pair.rotateActive(toEpoch: 2, key: newKey)
        for _ in 0..<30 { _ = try pair.replicate(try history.step(&pair.state)) }
        #expect(try pair.settle())
        #expect(pair.replica.state == pair.state)
        #expect(pair.replicator.resyncsStarted >= 2)
    }
}

@Suite("Per-SA resync")
struct PerSAResyncTests {
    @Test func standbyAsksForAnIKESAItFoundMissing() throws {
        var pair = try ReplicationPair(seed: 70)
        #expect(try pair.settle())
        var generator = RecordGenerator(seed: 71)
        let ike = generator.ikeSA()
        var child = generator.childSA(parent: ike.identifier)
        child.policy = nil
        _ = try pair.replicate(try pair.state.createIKESA(ike) + pair.state.createChildSA(child))
        #expect(try pair.settle())
        // The standby loses the IKE SA (as after an undetected fault)...
        pair.deliverToStandby([.ikeSADelete(ike.identifier)])
        #expect(pair.replica.state.ikeSAs[ike.identifier] == nil)
        // ...and notices when an update of its Child SA names it.
        _ = try pair.replicate(try pair.state.updateChildSA(inboundSPI: child.inboundSPI) { $0.outboundSPI &+= 1 })
        try pair.run(for: 50_000_000)
        #expect(try pair.settle())
        #expect(pair.replica.state == pair.state)
        #expect(pair.replicator.resyncsStarted == 1, "answered per SA, not by a full resync")
    }

    /// Review L6: a request naming more than 256 IKE SAs (it fits one datagram when the synch
    /// link carries jumbo frames) started a full resync each time, past the rate limit.
    @Test func requestsForManyIKESAsAreFullResyncsUnderTheRateLimit() throws {
        var pair = try ReplicationPair(seed: 95) { $0.maximumDatagramSize = 9_000 }
        #expect(try pair.settle())
        try pair.run(for: pair.replicator.minimumResyncRequestInterval.nonNegativeNanoseconds)
        let started = pair.replicator.resyncsStarted
        let many = (1...300).map { IKESAIdentifier(initiatorSPI: UInt64($0), responderSPI: 7) }
        for _ in 0..<5 {
            try pair.sendFromStandby([.resyncRequest(.ikeSAs(many))])
            try pair.run(for: 2_000_000)
        }
        #expect(pair.replicator.resyncsStarted == started + 1)
        #expect(pair.replicator.resyncRequestsRefused >= 4)
    }

    @Test func askingForAnIKESAThatIsGoneDeletesIt() throws {
        var pair = try ReplicationPair(seed: 72)
        #expect(try pair.settle())
        var generator = RecordGenerator(seed: 73)
        let stray = generator.ikeSA()
        pair.deliverToStandby([.ikeSAUpsert(stray)])
        #expect(pair.replica.state.ikeSAs[stray.identifier] != nil)
        try pair.sendFromStandby([.resyncRequest(.ikeSAs([stray.identifier]))])
        #expect(try pair.settle())
        #expect(pair.replica.state.ikeSAs[stray.identifier] == nil)
        #expect(pair.replica.state == pair.state)
        #expect(pair.replicator.resyncsStarted == 1)
    }
}

@Suite("Exchanges in flight")
struct InFlightTests {
    @Test func standbyKnowsWhichExchangesAreUnderWay() throws {
        var pair = try ReplicationPair(seed: 80)
        #expect(try pair.settle())
        var generator = RecordGenerator(seed: 81)
        let ike = generator.ikeSA()
        _ = try pair.replicate(try pair.state.createIKESA(ike))
        var request: UInt32 = 0
        let changes = try pair.state.updateMessageIDs(of: ike.identifier) { request = (try? $0.requests.nextRequestID()) ?? 0 }
        _ = try pair.replicate(changes)
        _ = pair.replicator.replicateExchange(
            of: ike.identifier, messageID: request, initiatedHere: true, finished: false, state: pair.state,
            channel: &pair.activeChannel, now: pair.now)
        #expect(try pair.settle())
        #expect(pair.replica.inFlight == [InFlightExchange(ikeSA: ike.identifier, messageID: request, initiatedHere: true)])
        #expect(pair.replica.state.ikeSAs[ike.identifier]?.messageIDs == pair.state.ikeSAs[ike.identifier]?.messageIDs)
        _ = pair.replicator.replicateExchange(
            of: ike.identifier, messageID: request, initiatedHere: true, finished: true, state: pair.state,
            channel: &pair.activeChannel, now: pair.now)
        #expect(try pair.settle())
        #expect(pair.replica.inFlight.isEmpty)
        if case .messageIDsUpdated = changes.first {} else { Issue.record("expected a message-ID-only change") }
    }
}

@Suite("Flow control toward a standby")
struct FlowControlTests {
    /// A pair whose channel holds only 8 unacknowledged datagrams, ready and idle.
    func smallBufferPair(seed: UInt64, backlogLimit: Int = 16_384) throws -> ReplicationPair {
        var pair = try ReplicationPair(seed: seed) { $0.retransmitBufferLimit = 8 }
        pair.replicator = Replicator(standbys: [ReplicationPair.standbyID], backlogLimit: backlogLimit)
        #expect(try pair.settle())
        return pair
    }

    @Test func aFullBufferQueuesRecordsInsteadOfResyncing() throws {
        var pair = try smallBufferPair(seed: 90)
        var history = HistoryGenerator(seed: 91)
        // Many sends within one instant: the buffer fills long before any acknowledgement.
        var tickets: [SyncTicket] = []
        for _ in 0..<200 { tickets += try pair.replicate(try history.step(&pair.state)) }
        #expect(tickets.count < 200, "some sends found the buffer full")
        #expect(pair.replicator.backlogsStarted == 1)
        #expect(pair.replicator.isCatchingUp(ReplicationPair.standbyID))
        #expect(!pair.replicator.isResyncing(ReplicationPair.standbyID))
        #expect(!pair.replicator.hasCaughtUp(ReplicationPair.standbyID, channel: pair.activeChannel))
        #expect(try pair.settle())
        #expect(pair.replicator.hasCaughtUp(ReplicationPair.standbyID, channel: pair.activeChannel))
        #expect(pair.replica.state == pair.state)
        #expect(pair.replicator.resyncsStarted == 1, "only the resync that made the standby ready")
        #expect(pair.replicator.backlogOverflows == 0)
    }

    @Test func aBacklogPastItsLimitBecomesAResync() throws {
        var pair = try smallBufferPair(seed: 92, backlogLimit: 20)
        var history = HistoryGenerator(seed: 93)
        for _ in 0..<200 { _ = try pair.replicate(try history.step(&pair.state)) }
        #expect(pair.replicator.backlogOverflows >= 1)
        #expect(pair.replicator.resyncsStarted >= 2)
        #expect(try pair.settle())
        #expect(pair.replica.state == pair.state)
        #expect(pair.replica.statistics.resyncsIncomplete == 0)
    }

    /// A standby out of reach while the active member keeps changing its state: its backlog
    /// passes the limit again and again, and each time a resync began from a snapshot of the
    /// whole state (which the next change then copied: quadratic in the state while the
    /// standby is away; 160,000 IKE SAs built with no standby took 3.8 s instead of 1.0). Now
    /// the first overflow starts one, and once that one overflows too with nothing sent, the
    /// next is owed: nothing is queued or held for it, and it starts once the channel has room.
    @Test func aStandbyOutOfReachIsOwedOneResyncNotOnePerOverflow() throws {
        var pair = try smallBufferPair(seed: 97, backlogLimit: 20)
        // More state than the 8-datagram buffer holds: a resync of it fills the buffer.
        var records = RecordGenerator(seed: 96)
        for _ in 0..<100 { _ = try pair.replicate(try pair.state.createIKESA(records.ikeSA())) }
        #expect(try pair.settle())
        let resyncsBefore = pair.replicator.resyncsStarted
        pair.network.faults.partitions = [[1, 2]]
        var history = HistoryGenerator(seed: 98)
        for _ in 0..<400 {
            _ = try pair.replicate(try history.step(&pair.state))
            try pair.run(for: 1_000_000)
        }
        #expect(pair.replicator.backlogOverflows >= 2)
        #expect(pair.replicator.resyncsStarted == resyncsBefore + 1, "one resync while the standby cannot take one")
        let standby = ReplicationPair.standbyID
        let (owed, catchingUp, caughtUp) = (
            pair.replicator.isResyncOwed(standby), pair.replicator.isCatchingUp(standby),
            pair.replicator.hasCaughtUp(standby, channel: pair.activeChannel)
        )
        #expect(owed && catchingUp && !caughtUp)
        #expect(pair.replicator.waitingRecords(for: standby) == 0)
        pair.network.faults.partitions = []
        #expect(try pair.settle())
        #expect(pair.replica.state == pair.state)
        #expect(pair.replicator.resyncsStarted == resyncsBefore + 2)
        let stillOwed = pair.replicator.isResyncOwed(standby)
        #expect(!stillOwed)
        #expect(pair.replica.statistics.resyncsIncomplete == 0)
    }

    /// `count` Child SAs under one new IKE SA, replicated and settled; their slots.
    func childSAs(_ count: Int, in pair: inout ReplicationPair, seed: UInt64) throws -> [ChildSASlot] {
        var random = SplitMix64(seed: seed)
        let ike = try SAFixtures.ikeSA(seed, &random)
        _ = try pair.replicate(try pair.state.createIKESA(ike))
        var slots: [ChildSASlot] = []
        for index in 0..<count {
            let spi = UInt32(0x2000 + index)
            _ = try pair.replicate(try pair.state.createChildSA(SAFixtures.childSA(spi, parent: ike.identifier, window: 64, &random)))
            slots.append(try #require(pair.state.slot(forInboundSPI: spi)))
        }
        #expect(try pair.settle())
        return slots
    }

    /// Checkpoints made while a standby catches up wait as the latest of each Child SA, not
    /// each: during a long resync of a busy state they took more memory than the state
    /// (`bench-udp.sh`, 100,000 IKE SAs at 10 packets a second: the active member's peak 160 MB
    /// above its state, against 53 MB without traffic).
    @Test func checkpointsForAStandbyCatchingUpKeepTheLatestOfEachChildSA() throws {
        var pair = try smallBufferPair(seed: 99)
        let slots = try childSAs(20, in: &pair, seed: 100)
        var scheduler = CounterCheckpointScheduler(policy: CounterCheckpointPolicy(packets: 1, interval: .milliseconds(1)))
        _ = scheduler.takeDueCheckpoints(from: &pair.state, now: pair.now)
        // All within one instant: the buffer fills after a few rounds.
        var made = 0
        for _ in 0..<100 {
            for slot in slots { _ = try pair.state.nextOutboundSequenceNumber(at: slot, bytes: 100) }
            let due = scheduler.takeDueCheckpoints(from: &pair.state, now: pair.now)
            made += due.count
            _ = try pair.replicate(checkpoints: due)
        }
        #expect(made == 2_000)
        let standby = ReplicationPair.standbyID
        let catchingUp = pair.replicator.isCatchingUp(standby)
        #expect(catchingUp)
        // The record that found the buffer full, and one of the latest checkpoints (there were 93).
        #expect(pair.replicator.waitingRecords(for: standby) <= 2)
        #expect(try pair.settle())
        #expect(pair.replica.state == pair.state)
    }

    /// One scan's checkpoints can need more datagrams than the channel's buffer holds: as one
    /// record they never went, and replication stopped behind them.
    @Test func checkpointsBeyondTheBufferStillGoOut() throws {
        var pair = try smallBufferPair(seed: 101)
        let slots = try childSAs(1_000, in: &pair, seed: 102)
        var scheduler = CounterCheckpointScheduler(policy: CounterCheckpointPolicy(packets: 1, interval: .milliseconds(1)))
        _ = scheduler.takeDueCheckpoints(from: &pair.state, now: pair.now)
        for slot in slots { _ = try pair.state.nextOutboundSequenceNumber(at: slot, bytes: 100) }
        let due = scheduler.takeDueCheckpoints(from: &pair.state, now: pair.now)
        #expect(due.count == 1_000)
        _ = try pair.replicate(checkpoints: due)
        #expect(try pair.settle(limit: 2_000_000_000))
        #expect(pair.replica.state == pair.state)
    }

    /// The changes made while a large state is resynced may outnumber the fixed backlog limit
    /// (a million IKE SAs rekeyed hourly make about 30,000 records during their resync): the
    /// resync then started again from the beginning, and again, never done. The backlog of a
    /// state holds up to an eighth of its SAs.
    @Test func changesDuringTheResyncOfALargeStateDoNotRestartIt() throws {
        var pair = try smallBufferPair(seed: 103, backlogLimit: 20)
        var records = RecordGenerator(seed: 104)
        for _ in 0..<800 { _ = try pair.replicate(try pair.state.createIKESA(records.ikeSA())) }
        #expect(try pair.settle())
        #expect(pair.replicator.backlogCapacity(for: pair.state) == 100)
        let (resyncsBefore, overflowsBefore) = (pair.replicator.resyncsStarted, pair.replicator.backlogOverflows)
        // A resync of the 800 IKE SAs that cannot finish yet, and changes behind it.
        pair.network.faults.partitions = [[1, 2]]
        try pair.rotateActive(toEpoch: 9)
        var history = HistoryGenerator(seed: 105)
        for _ in 0..<1_000 where pair.replicator.waitingRecords(for: ReplicationPair.standbyID) < 60 {
            _ = try pair.replicate(try history.step(&pair.state))
        }
        #expect(pair.replicator.backlogOverflows == overflowsBefore)
        pair.network.faults.partitions = []
        #expect(try pair.settle())
        #expect(pair.replicator.resyncsStarted == resyncsBefore + 1)
        #expect(pair.replica.state == pair.state)
    }

    /// A resync leaves in one burst; with reordering, later datagrams reach the standby before
    /// the one that announces the stream's reset, and the standby asks for the numbers below
    /// them. That request must not reset the stream again (it did: a lossy standby was resynced
    /// over and over and was not ready when the active failed).
    @Test func aReorderedResyncDoesNotResetItself() throws {
        var faults = NetworkFaults()
        faults.jitter = .milliseconds(2)
        var pair = try ReplicationPair(seed: 94, faults: faults)
        // Datagrams the standby never gets, so that the reset skips numbers it must not ask for.
        pair.network.faults.partitions = [[1, 2]]
        var history = HistoryGenerator(seed: 96)
        for _ in 0..<20 { _ = try pair.replicate(try history.step(&pair.state)) }
        var records = RecordGenerator(seed: 95)
        for _ in 0..<1_000 { _ = try pair.state.createIKESA(records.ikeSA()) }
        try pair.run(for: 10_000_000)
        pair.network.faults.partitions = []
        #expect(try pair.settle())
        #expect(pair.replicator.resyncsStarted == 1)
        #expect(pair.activeChannel.statistics.streamResets == 1)
        pair.network.faults.loss = 0.2
        for _ in 0..<300 {
            _ = try pair.replicate(try history.step(&pair.state))
            try pair.run(for: 1_000_000)
        }
        pair.network.faults.loss = 0
        #expect(try pair.settle())
        #expect(pair.replica.state == pair.state)
        #expect(pair.replicator.resyncsStarted == 1)
        #expect(pair.standbyChannel.statistics.negativeAcknowledgementsSent > 0)
    }
}

@Suite("Replication: records at the size limit of a datagram")
struct RecordSizeLimitTests {
    /// A Child SA under `parent` with 24 distinct IPv6 selectors (the most the model allows)
    /// and keys of `keyLength` bytes in each direction, both for encryption and integrity.
    static func childSA(_ generator: inout RecordGenerator, parent: IKESAIdentifier, keyLength: Int) -> ChildSA {
        var sa = generator.childSA(parent: parent)
        sa.policy = nil
        sa.localSelectors = (0..<12).map { _ in generator.selector(.ipv6) }
        sa.remoteSelectors = (0..<12).map { _ in generator.selector(.ipv6) }
        sa.inboundKeys = ChildSAKeys(encryption: generator.key(keyLength), integrity: generator.key(keyLength))
        sa.outboundKeys = ChildSAKeys(encryption: generator.key(keyLength), integrity: generator.key(keyLength))
        return sa
    }

    /// A pair (not yet settled) whose active member holds one IKE SA, and the generator that
    /// made it.
    static func pairWithAnIKESA(seed: UInt64) throws -> (ReplicationPair, RecordGenerator, IKESA) {
        var pair = try ReplicationPair(seed: seed)
        var generator = RecordGenerator(seed: seed + 1)
        let ike = generator.ikeSA()
        _ = try pair.state.createIKESA(ike)
        return (pair, generator, ike)
    }

    /// The largest Child SA a gateway makes (24 IPv6 selectors; 64 bytes per key, more than
    /// HMAC-SHA2-512 or AES-GCM-256 with its salt need) fits one datagram of the default size,
    /// in a bulk resync and as a change.
    @Test func theLargestChildSAReachesTheStandbyInAResyncAndAsAChange() throws {
        var (pair, generator, ike) = try Self.pairWithAnIKESA(seed: 40)
        let first = Self.childSA(&generator, parent: ike.identifier, keyLength: 64)
        #expect(first.localSelectors.count + first.remoteSelectors.count == ChildSA.maximumSelectors)
        #expect(try SyncRecord.childSAUpsert(first).encoded().count <= pair.activeChannel.maximumPayload)
        _ = try pair.state.createChildSA(first)
        #expect(try pair.settle())
        #expect(pair.replica.state == pair.state)
        _ = try pair.replicate(try pair.state.createChildSA(Self.childSA(&generator, parent: ike.identifier, keyLength: 64)))
        #expect(try pair.settle())
        #expect(pair.replica.state == pair.state && pair.replicator.recordsTooLarge == 0)
    }

    /// A Child SA whose record cannot fit any datagram (keys of a kilobyte) is skipped and
    /// counted: the resync completes without it and later changes still arrive. (It stopped the
    /// resync for good: the standby was never ready again.)
    @Test func aRecordLargerThanADatagramIsSkippedNotRetriedForever() throws {
        var (pair, generator, ike) = try Self.pairWithAnIKESA(seed: 42)
        let huge = Self.childSA(&generator, parent: ike.identifier, keyLength: 1_000)
        _ = try pair.state.createChildSA(huge)
        var normal = generator.childSA(parent: ike.identifier)
        normal.policy = nil
        _ = try pair.state.createChildSA(normal)
        #expect(try pair.settle(limit: 2_000_000_000))
        #expect(pair.replica.isReady && pair.replicator.recordsTooLarge == 1)
        #expect(pair.replica.state.childSAs.map(\.inboundSPI).sorted() == [normal.inboundSPI])
        // A change carrying the huge SA with another: the other still goes.
        let changes = try pair.state.updateChildSA(inboundSPI: huge.inboundSPI) { $0.requestID += 1 }
            + pair.state.updateChildSA(inboundSPI: normal.inboundSPI) { $0.requestID += 1 }
        _ = try pair.replicate(changes)
        #expect(try pair.settle(limit: 2_000_000_000))
        #expect(pair.replicator.recordsTooLarge == 2 && pair.replicator.resyncsStarted == 1)
        #expect(pair.replica.state.childSA(inboundSPI: normal.inboundSPI)?.requestID == pair.state.childSA(inboundSPI: normal.inboundSPI)?.requestID)
    }
}
