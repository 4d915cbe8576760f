public import IPsecHACore

/// IKE replies that synchronous replication holds until the standbys hold the state they
/// depend on (Docs/Replication.md): a reply that leaves first, and an active member that fails
/// right after, leave the peer with an SA or a message ID the new active member lacks.
///
/// A reply waits for the tickets ``Replicator/replicate(_:state:channel:now:)`` gave for its
/// changes, and for every standby that was catching up (a bulk resync or a backlog: such a
/// standby gets no ticket) until ``Replicator/hasCaughtUp(_:channel:)``. A ticket whose
/// datagram a stream reset dropped will never be acknowledged: the resync that follows carries
/// the state instead, so it waits for that standby to catch up too.
public struct HeldReplies<Reply> {
    struct Entry {
        let reply: Reply
        let tickets: [SyncTicket]
        let catchingUp: [ClusterMemberID]
        let deadline: Timestamp?
    }

    private var entries: [Entry] = []
    /// Replies sent at their deadline without the standbys' acknowledgement.
    public private(set) var expired = 0

    /// No reply held.
    public init() {}

    /// Replies held now.
    public var count: Int { entries.count }

    /// The replies held now, oldest first.
    public var replies: [Reply] { entries.map(\.reply) }

    /// Whether a held reply matches, without building ``replies``.
    public func contains(where matches: (Reply) -> Bool) -> Bool { entries.contains { matches($0.reply) } }

    /// Holds `reply` until every ticket is acknowledged and every standby that is catching up
    /// now has caught up; returns it instead when there is nothing to wait for. With a
    /// `deadline`, it goes then anyway (counted in ``expired``): a standby that heartbeats but
    /// never acknowledges must not stop the IKE SAs for good.
    public mutating func hold(
        _ reply: Reply, tickets: [SyncTicket], standbys: [ClusterMemberID], replicator: Replicator, deadline: Timestamp? = nil
    ) -> Reply? {
        let catchingUp = standbys.filter(replicator.isCatchingUp)
        guard !tickets.isEmpty || !catchingUp.isEmpty else { return reply }
        entries.append(Entry(reply: reply, tickets: tickets, catchingUp: catchingUp, deadline: deadline))
        return nil
    }

    /// The held replies free to go, oldest first: everything they wait for is there, every
    /// standby they wait for is `gone` (failed: there is nobody to wait for), or their deadline
    /// passed.
    public mutating func release(
        channel: SyncChannel, replicator: Replicator, now: Timestamp, gone: (ClusterMemberID) -> Bool = { _ in false }
    ) -> [Reply] {
        var released: [Reply] = []
        var waiting: [Entry] = []
        func caughtUp(_ standby: ClusterMemberID) -> Bool { gone(standby) || replicator.hasCaughtUp(standby, channel: channel) }
        for entry in entries {
            let ready =
                entry.tickets.allSatisfy { ticket in
                    gone(ticket.peer) || channel.isAcknowledged(ticket) || (channel.wasDropped(ticket) && caughtUp(ticket.peer))
                } && entry.catchingUp.allSatisfy(caughtUp)
            if ready {
                released.append(entry.reply)
            } else if let deadline = entry.deadline, now >= deadline {
                expired += 1
                released.append(entry.reply)
            } else {
                waiting.append(entry)
            }
        }
        entries = waiting
        return released
    }

    /// Forgets every held reply (the member stopped being active, or crashed).
    public mutating func removeAll() { entries.removeAll() }
}

extension HeldReplies: Sendable where Reply: Sendable {}
extension HeldReplies.Entry: Sendable where Reply: Sendable {}
