import IPsecHACore
import IPsecHASync
import IPsecHATestKit
import Testing

/// Synchronous replication as Docs/Replication.md asks it (review M4): a reply leaves only
/// once the standby holds the state behind it.
@Suite("Held replies: synchronous replication")
struct HeldRepliesTests {
    static let standby = ReplicationPair.standbyID

    static func ikeSA(seed: UInt64) -> IKESA {
        var generator = RecordGenerator(seed: seed)
        return generator.ikeSA()
    }

    func release(_ held: inout HeldReplies<String>, _ pair: ReplicationPair) -> [String] {
        held.release(channel: pair.activeChannel, replicator: pair.replicator, now: pair.now)
    }

    @Test func aReplyWaitsForItsTicketAndNothingElseWaits() throws {
        var pair = try ReplicationPair(seed: 80)
        #expect(try pair.settle())
        var held = HeldReplies<String>()
        #expect(held.hold("free", tickets: [], standbys: [Self.standby], replicator: pair.replicator) == "free")
        let tickets = try pair.replicate(try pair.state.createIKESA(Self.ikeSA(seed: 81)))
        #expect(held.hold("reply", tickets: tickets, standbys: [Self.standby], replicator: pair.replicator) == nil)
        #expect(release(&held, pair).isEmpty, "not acknowledged yet")
        try pair.run(for: 20_000_000)
        #expect(release(&held, pair) == ["reply"] && held.count == 0)
    }

    /// A standby catching up (here a backlog: the channel's buffer was full) gets no ticket.
    /// The reference gateway sent such replies at once; they wait until it has caught up.
    @Test func aReplyWaitsForAStandbyThatIsCatchingUp() throws {
        var pair = try ReplicationPair(seed: 82) { $0.retransmitBufferLimit = 8 }
        #expect(try pair.settle())
        var history = HistoryGenerator(seed: 83)
        for _ in 0..<200 { _ = try pair.replicate(try history.step(&pair.state)) }
        let tickets = try pair.replicate(try history.step(&pair.state))
        #expect(tickets.isEmpty && pair.replicator.isCatchingUp(Self.standby))
        var held = HeldReplies<String>()
        #expect(held.hold("reply", tickets: tickets, standbys: [Self.standby], replicator: pair.replicator) == nil)
        #expect(release(&held, pair).isEmpty)
        var released: [String] = []
        while released.isEmpty, pair.now.nanoseconds < 20_000_000_000 {
            try pair.run(for: 1_000_000)
            released = release(&held, pair)
            if released.isEmpty { #expect(!pair.replicator.hasCaughtUp(Self.standby, channel: pair.activeChannel)) }
        }
        #expect(released == ["reply"] && pair.replicator.hasCaughtUp(Self.standby, channel: pair.activeChannel))
        #expect(pair.replica.state == pair.state, "the standby has what the reply depends on")
    }

    /// A ticket a stream reset dropped is never acknowledged; the resync that follows carries
    /// the state, so the reply waits for it (the gateway took the drop as an acknowledgement).
    @Test func aDroppedTicketWaitsForTheResyncThatReplacesIt() throws {
        var pair = try ReplicationPair(seed: 84)
        #expect(try pair.settle())
        pair.network.faults.partitions = [[1, 2]]
        let tickets = try pair.replicate(try pair.state.createIKESA(Self.ikeSA(seed: 85)))
        var held = HeldReplies<String>()
        #expect(held.hold("reply", tickets: tickets, standbys: [Self.standby], replicator: pair.replicator) == nil)
        pair.activeChannel.resetStream(to: Self.standby)
        _ = pair.replicator.startResync(of: Self.standby, from: pair.state, channel: &pair.activeChannel, now: pair.now)
        #expect(tickets.allSatisfy(pair.activeChannel.wasDropped))
        #expect(release(&held, pair).isEmpty, "dropped is not delivered")
        pair.network.faults.partitions = []
        #expect(try pair.settle())
        #expect(release(&held, pair) == ["reply"])
    }

    @Test func aDeadlineOrAStandbyThatIsGoneSendsTheReplyAnyway() throws {
        var pair = try ReplicationPair(seed: 86)
        #expect(try pair.settle())
        pair.network.faults.partitions = [[1, 2]]
        let tickets = try pair.replicate(try pair.state.createIKESA(Self.ikeSA(seed: 87)))
        var held = HeldReplies<String>()
        let deadline = Timestamp(nanoseconds: pair.now.nanoseconds + 50_000_000)
        _ = held.hold("late", tickets: tickets, standbys: [Self.standby], replicator: pair.replicator, deadline: deadline)
        _ = held.hold("orphan", tickets: tickets, standbys: [Self.standby], replicator: pair.replicator)
        #expect(release(&held, pair).isEmpty)
        try pair.run(for: 60_000_000)
        #expect(release(&held, pair) == ["late"] && held.expired == 1)
        #expect(held.release(channel: pair.activeChannel, replicator: pair.replicator, now: pair.now, gone: { $0 == Self.standby }) == ["orphan"])
        #expect(held.count == 0 && held.expired == 1)
    }
}
