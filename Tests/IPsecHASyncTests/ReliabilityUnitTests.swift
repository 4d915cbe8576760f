import IPsecHACore
import IPsecHATestKit
@testable import IPsecHASync
import Testing

@Suite("Reliable sender")
struct ReliableSenderTests {
    let t0 = Timestamp(nanoseconds: 1_000)

    func filled(_ count: Int, limit: Int = 8) -> ReliableSender {
        var sender = ReliableSender(limit: limit)
        for index in 0..<count { _ = sender.enqueue([UInt8(index)], now: t0) }
        return sender
    }

    @Test func boundedBufferAndSequenceNumbers() {
        var sender = filled(8)
        #expect(sender.highestSent == 8)
        #expect(!sender.hasRoom)
        #expect(sender.enqueue([9], now: t0) == nil)
        sender.acknowledge(cumulative: 3, selective: [], now: t0)
        #expect(sender.freeSlots == 3)
        #expect(sender.enqueue([9], now: t0)?.sequence == 9)
    }

    @Test func selectiveAcknowledgementsAndTickets() {
        var sender = filled(6)
        sender.acknowledge(cumulative: 2, selective: [SequenceRange(4, 5)], now: t0)
        #expect(sender.isAcknowledged(2))
        #expect(!sender.isAcknowledged(3))
        #expect(!sender.isAcknowledged(5), "3 is still missing below 5")
        sender.acknowledge(cumulative: 3, selective: [], now: t0)
        #expect(sender.isAcknowledged(5))
        #expect(!sender.isAcknowledged(6))
        // Acknowledgements beyond what was sent are ignored.
        sender.acknowledge(cumulative: 100, selective: [], now: t0)
        #expect(sender.isAcknowledged(6))
        #expect(sender.outstanding.isEmpty)
    }

    @Test func negativeAcknowledgementsRetransmitWhatIsHeldAndIgnoreTheRest() {
        var sender = filled(6)
        sender.acknowledge(cumulative: 2, selective: [SequenceRange(4, 4)], now: t0)
        let answer = sender.negativeAcknowledge([SequenceRange(3, 5)], now: Timestamp(nanoseconds: 2_000))
        #expect(answer.map(\.sequence) == [3, 5])
        #expect(sender.negativeAcknowledge([SequenceRange(1, 2)], now: t0).isEmpty, "acknowledged before: nothing to do")
        #expect(sender.negativeAcknowledge([SequenceRange(6, 9)], now: t0).map(\.sequence) == [6], "7-9 never sent: ignored")
        #expect(sender.negativeAcknowledge([SequenceRange(.max, .max)], now: t0).isEmpty)
    }

    /// A receiver that has not yet seen the datagram announcing a stream reset (it can arrive
    /// after later ones) asks for numbers the reset dropped: nothing to resend, and no reset.
    @Test func aRequestForWhatAResetDroppedNeedsNoFurtherReset() {
        var sender = filled(8, limit: 16)
        sender.resetStream()
        for index in 0..<4 { _ = sender.enqueue([UInt8(index)], now: t0) }
        let answer = sender.negativeAcknowledge([SequenceRange(1, 10)], now: t0)
        #expect(answer.map(\.sequence) == [9, 10])
        #expect(answer.first?.streamReset == true, "the resent first datagram still announces the reset")
    }

    @Test func timeoutsAndStreamReset() {
        var sender = filled(4)
        sender.acknowledge(cumulative: 0, selective: [SequenceRange(2, 2)], now: t0)
        #expect(sender.timedOut(now: Timestamp(nanoseconds: 1_500), timeout: 1_000, maximum: 10).isEmpty)
        let due = sender.timedOut(now: Timestamp(nanoseconds: 2_000), timeout: 1_000, maximum: 2)
        #expect(due.map(\.sequence) == [1, 3])
        #expect(due.allSatisfy { $0.transmissions == 2 })
        #expect(!sender.isAcknowledged(3))
        sender.resetStream()
        #expect(sender.outstanding.isEmpty)
        // What the reset dropped is never acknowledged, even though the stream moved past it.
        #expect(sender.wasDropped(3) && sender.wasDropped(1) && !sender.isAcknowledged(3) && !sender.isAcknowledged(4))
        #expect(!sender.wasDropped(5))
        let next = sender.enqueue([1], now: t0)
        #expect(next?.sequence == 5)
        #expect(next?.streamReset == true)
        #expect(sender.enqueue([2], now: t0)?.streamReset == false)
        sender.acknowledge(cumulative: 6, selective: [], now: t0)
        #expect(sender.isAcknowledged(6) && !sender.isAcknowledged(4), "later datagrams are acknowledged as usual")
    }

    /// A round trip is sampled from the newest datagram an acknowledgement covers, and only
    /// when it went out once (Karn's rule): after a retransmission the acknowledgement may
    /// answer the first copy, and the sample would be too short.
    @Test func roundTripSamplesComeFromFirstTransmissionsOnly() {
        var sender = ReliableSender(limit: 8)
        _ = sender.enqueue([1], now: Timestamp(nanoseconds: 1_000_000))
        _ = sender.enqueue([2], now: Timestamp(nanoseconds: 2_000_000))
        #expect(sender.acknowledge(cumulative: 2, selective: [], now: Timestamp(nanoseconds: 5_000_000)) == 3_000_000, "from datagram 2")
        #expect(sender.acknowledge(cumulative: 2, selective: [], now: Timestamp(nanoseconds: 6_000_000)) == nil, "nothing new")
        _ = sender.enqueue([3], now: Timestamp(nanoseconds: 7_000_000))
        _ = sender.timedOut(now: Timestamp(nanoseconds: 9_000_000), timeout: 1_000_000, maximum: 8)
        #expect(sender.acknowledge(cumulative: 3, selective: [], now: Timestamp(nanoseconds: 9_500_000)) == nil, "retransmitted")
        _ = sender.enqueue([4], now: Timestamp(nanoseconds: 10_000_000))
        #expect(sender.acknowledge(cumulative: 0, selective: [SequenceRange(4, 4)], now: Timestamp(nanoseconds: 11_000_000)) == nil, "selective")
    }

    @Test func manyAcknowledgementsKeepTheBufferConsistent() {
        var sender = ReliableSender(limit: 64)
        var random = SplitMix64(seed: 1)
        var acknowledged: UInt64 = 0
        for _ in 0..<5_000 {
            while sender.hasRoom, random.next() % 3 != 0 { _ = sender.enqueue([0], now: t0) }
            let step = random.next() % 8
            acknowledged = min(acknowledged + step, sender.highestSent)
            sender.acknowledge(cumulative: acknowledged, selective: [], now: t0)
            #expect(sender.outstanding.count == Int(sender.highestSent - acknowledged))
            #expect(sender.outstanding.first.map { $0.sequence == acknowledged + 1 } ?? true)
        }
    }
}

@Suite("Reliable receiver")
struct ReliableReceiverTests {
    let now = Timestamp(nanoseconds: 5)
    let record = SyncRecord.childSADelete(inboundSPI: 300)

    @Test func deliversInOrderExactlyOnce() {
        var receiver = ReliableReceiver(limit: 16)
        #expect(receiver.receive(sequence: 2, records: [record], streamReset: false, now: now).isEmpty)
        #expect(receiver.hasGap)
        #expect(receiver.missingRanges() == [SequenceRange(1, 1)])
        #expect(receiver.acknowledgement() == .acknowledgement(cumulative: 0, selective: [SequenceRange(2, 2)]))
        #expect(receiver.receive(sequence: 1, records: [record], streamReset: false, now: now).count == 2)
        #expect(!receiver.hasGap)
        #expect(receiver.receive(sequence: 1, records: [record], streamReset: false, now: now).isEmpty, "duplicate")
        #expect(receiver.receive(sequence: 2, records: [record], streamReset: false, now: now).isEmpty, "duplicate")
        #expect(receiver.delivered == 2)
    }

    @Test func heartbeatsRevealTailLoss() {
        var receiver = ReliableReceiver(limit: 16)
        _ = receiver.receive(sequence: 1, records: [record], streamReset: false, now: now)
        receiver.announce(highest: 4, now: Timestamp(nanoseconds: 9))
        #expect(receiver.missingRanges() == [SequenceRange(2, 4)])
        #expect(receiver.gapSince == Timestamp(nanoseconds: 9))
        _ = receiver.receive(sequence: 3, records: [record], streamReset: false, now: now)
        #expect(receiver.missingRanges() == [SequenceRange(2, 2), SequenceRange(4, 4)])
    }

    @Test func holdLimitDropsWhatComesAgainLater() {
        var receiver = ReliableReceiver(limit: 2)
        for sequence in 2...5 as ClosedRange<UInt64> {
            _ = receiver.receive(sequence: sequence, records: [record], streamReset: false, now: now)
        }
        #expect(receiver.held.count == 2)
        #expect(receiver.receive(sequence: 1, records: [record], streamReset: false, now: now).count == 3)
        #expect(receiver.delivered == 3)
        #expect(receiver.missingRanges() == [SequenceRange(4, 5)])
    }

    @Test func streamResetSkipsTheGap() {
        var receiver = ReliableReceiver(limit: 16)
        _ = receiver.receive(sequence: 1, records: [record], streamReset: false, now: now)
        _ = receiver.receive(sequence: 5, records: [record], streamReset: false, now: now)
        let ready = receiver.receive(sequence: 9, records: [record], streamReset: true, now: now)
        #expect(ready.count == 1)
        #expect(receiver.delivered == 9)
        #expect(!receiver.hasGap)
        #expect(receiver.held.isEmpty)
    }
}

@Suite("Synch channel: repairing gaps")
struct GapRepairTests {
    static let active = ClusterMemberID(rawValue: 1)
    static let standby = ClusterMemberID(rawValue: 2)

    /// Two established channels and five reliable datagrams from the active member, not yet
    /// delivered, in sequence order.
    func sent() throws -> (active: SyncChannel, standby: SyncChannel, datagrams: [[UInt8]], now: Timestamp) {
        let key = try ChannelKey.generate()
        var active = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 9, member: Self.active, epoch: 1, key: key, peers: [Self.standby]))
        var standby = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 9, member: Self.standby, epoch: 1, key: key, peers: [Self.active]))
        let now = establish(&active, &standby)
        var generator = RecordGenerator(seed: 5)
        var datagrams: [[UInt8]] = []
        for _ in 0..<5 {
            for case .transmit(_, let bytes) in try active.send([.ikeSAUpsert(generator.ikeSA())], to: Self.standby, now: now).actions {
                datagrams.append(bytes)
            }
        }
        return (active, standby, datagrams, now)
    }

    /// What the active member sends again when the standby's datagrams reach it.
    func retransmissions(_ fromStandby: [SyncChannelAction], to active: inout SyncChannel, now: Timestamp) -> UInt64 {
        let before = active.statistics.retransmissions
        for case .transmit(_, let bytes) in fromStandby { _ = active.receive(bytes, now: now) }
        return active.statistics.retransmissions - before
    }

    @Test func aHoleOpeningAboveOneBeingRepairedIsAskedForAtOnce() throws {
        var (active, standby, datagrams, now) = try sent()
        try #require(datagrams.count == 5)
        _ = standby.receive(datagrams[0], now: now)
        #expect(retransmissions(standby.receive(datagrams[2], now: now), to: &active, now: now) == 1, "2 is missing")
        // 2 is still missing (its copy is on its way); 4 goes missing too: only 4 is asked for.
        #expect(retransmissions(standby.receive(datagrams[4], now: now), to: &active, now: now) == 1, "4 is missing")
        #expect(standby.statistics.gapsDetected == 2)
    }

    @Test func aGapStillOpenIsAskedForAgainSoonNotAfterTheRetransmitTimeout() throws {
        var (active, standby, datagrams, now) = try sent()
        _ = standby.receive(datagrams[0], now: now)
        _ = retransmissions(standby.receive(datagrams[2], now: now), to: &active, now: now)
        // The copy of 2 was lost: the standby asks again once the repeat interval has passed,
        // long before the active member's retransmission timer would send it.
        let repeatAt = now + standby.configuration.negativeAcknowledgementRepeat
        #expect(standby.configuration.negativeAcknowledgementRepeat < active.configuration.retransmitTimeout)
        #expect(retransmissions(standby.tick(now: Timestamp(nanoseconds: repeatAt.nanoseconds - 1)), to: &active, now: repeatAt) == 0)
        #expect(retransmissions(standby.tick(now: repeatAt), to: &active, now: repeatAt) == 1)
    }
}

@Suite("Synch channel: a silent peer")
struct SilentPeerTests {
    /// A standby that went away made the active member retransmit everything unacknowledged
    /// every 100 ms for as long as it was gone. Once the peer is silent (four heartbeats),
    /// only the renewal handshake goes out; its answer brings everything at once.
    @Test func nothingIsRetransmittedToASilentPeerAndEverythingWhenItAnswers() throws {
        var (active, standby, datagrams, start) = try GapRepairTests().sent()
        #expect(datagrams.count == 5)
        var now = start
        for _ in 0..<1_000 {
            now = Timestamp(nanoseconds: now.nanoseconds + 1_000_000)
            _ = active.tick(now: now)
        }
        #expect(!active.isEstablished(with: GapRepairTests.standby))
        #expect(active.statistics.retransmissions <= 5, "one round before the silence was noticed, none after")
        var records = 0
        _ = establish(&active, &standby, now: now) { receiver, delivered in
            if receiver == GapRepairTests.standby { records += delivered.count }
        }
        #expect(records >= 5, "everything unacknowledged arrived once the handshake was answered")
    }
}

@Suite("Synch channel: the reliable streams' invariants")
struct ReliableStreamInvariantTests {
    /// Loss, duplication, reordering and corruption, a stream reset and a resync: after every
    /// millisecond the senders' and receivers' tables still agree with themselves.
    @Test(arguments: [7, 8] as [UInt64])
    func hostileLinksLeaveTheTablesConsistent(seed: UInt64) throws {
        var pair = try ReplicationPair(seed: seed, faults: .hostile)
        var history = HistoryGenerator(seed: seed + 1)
        var checked = 0
        for step in 0..<400 {
            _ = try pair.replicate(try history.step(&pair.state))
            if step == 200 { pair.activeChannel.resetStream(to: ReplicationPair.standbyID) }
            try pair.run(for: 1_000_000)
            let violations = pair.activeChannel.invariantViolations() + pair.standbyChannel.invariantViolations()
            #expect(violations.isEmpty, "step \(step): \(violations)")
            if !violations.isEmpty { break }
            checked += 1
        }
        #expect(checked == 400)
        #expect(pair.standbyChannel.statistics.gapsDetected > 0 && pair.activeChannel.statistics.retransmissions > 0)
    }
}

@Suite("Round-trip bound")
struct RoundTripBoundTests {
    func at(_ milliseconds: UInt64) -> Timestamp { Timestamp(nanoseconds: milliseconds * 1_000_000) }

    /// A slower link raises the bound at once; a faster one lowers it only after the window
    /// that held the slow samples and the next one ended; an idle stretch keeps the last bound.
    @Test func theBoundRisesAtOnceAndFallsAfterTwoWindows() {
        var bound = RoundTripBound()
        #expect(bound.nanoseconds == nil)
        bound.record(2_000_000, now: at(1_000))
        bound.record(9_000_000, now: at(1_500))
        bound.record(1_000_000, now: at(1_900))
        #expect(bound.nanoseconds == 9_000_000)
        bound.record(1_000_000, now: at(2_100))
        #expect(bound.nanoseconds == 9_000_000, "the previous window still counts")
        bound.record(1_500_000, now: at(3_200))
        #expect(bound.nanoseconds == 1_500_000)
        // Idle for a minute: the last bound stands; the first sample after starts afresh.
        #expect(bound.nanoseconds == 1_500_000)
        bound.record(700_000, now: at(63_000))
        #expect(bound.nanoseconds == 700_000)
    }
}

@Suite("Synch channel: the peer table")
struct PeerTableTests {
    /// A peer whose next packet number tells it apart.
    static func peer(_ number: UInt64) throws -> SyncChannel.Peer {
        var peer = SyncChannel.Peer(
            sender: ReliableSender(limit: 8), replay: try ReplayWindow(size: 64, extendedSequenceNumbers: true),
            receiver: ReliableReceiver(limit: 8))
        peer.nextPacketNumber = number
        return peer
    }

    /// As a dictionary would answer, in increasing order of member ID: a peer taken out (the
    /// channel's per-datagram path) is absent from the keys and values until it is put back, so
    /// that a tick or the key-retirement check never sees it twice or stale.
    @Test func answersAsADictionaryInMemberOrder() throws {
        var table = SyncChannel.PeerTable()
        for id in [7, 2, 40] as [UInt16] { table[ClusterMemberID(rawValue: id)] = try Self.peer(UInt64(id)) }
        let (two, seven, forty) = (ClusterMemberID(rawValue: 2), ClusterMemberID(rawValue: 7), ClusterMemberID(rawValue: 40))
        #expect(table.keys == [two, seven, forty])
        #expect(table.values.map(\.nextPacketNumber) == [2, 7, 40])
        #expect(table[ClusterMemberID(rawValue: 3)] == nil && table.index(forKey: ClusterMemberID(rawValue: 3)) == nil)

        let removed = table.removeValue(forKey: seven)
        var taken = try #require(removed)
        #expect(taken.nextPacketNumber == 7)
        #expect(table.keys == [two, forty] && table[seven] == nil)
        #expect(table.values.map(\.nextPacketNumber) == [2, 40])
        let again = table.removeValue(forKey: seven)
        #expect(again == nil, "taken once")
        taken.nextPacketNumber = 8
        table.putBack(taken, forKey: seven)
        #expect(table.keys == [two, seven, forty] && table[seven]?.nextPacketNumber == 8)

        let index = try #require(table.index(forKey: forty))
        _ = table.withPeer(at: index) { $0.nextDatagram(handshake: true) }
        #expect(table.withPeer(at: index, reading: { $0.nextPacketNumber }) == 41, "changed in place")
        table[two] = try Self.peer(20)
        #expect(table.values.map(\.nextPacketNumber) == [20, 8, 41], "a member set again replaces its peer")
    }
}
