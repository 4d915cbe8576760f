public import IPsecHACore

/// A way to move synch datagrams between cluster members.
///
/// The contract a backend keeps:
/// - datagrams are delivered whole or not at all, at most `maximumDatagramSize` bytes;
/// - they may be lost, duplicated, reordered, delayed or corrupted: the channel above copes
///   (authentication, replay window, reliable stream), so the backend adds no reliability;
/// - `send` never blocks: a backend that cannot send now drops the datagram (or throws
///   ``SyncTransportError/unreachable(_:)``), it does not queue without bound;
/// - `receive` returns what has arrived by `now` and never blocks;
/// - the sender of a received datagram is a hint only (the channel trusts the authenticated
///   header, not the transport).
public protocol SyncTransport {
    /// The member this transport belongs to.
    var member: ClusterMemberID { get }
    /// Sends a datagram to a member.
    mutating func send(_ datagram: [UInt8], to member: ClusterMemberID, now: Timestamp) throws(SyncTransportError)
    /// Everything that arrived for this member by `now`.
    mutating func receive(now: Timestamp) -> [[UInt8]]
}

/// Errors of a synch transport.
public enum SyncTransportError: Error, Sendable, Hashable {
    /// The member is not reachable through this transport.
    case unreachable(ClusterMemberID)
    /// The datagram exceeds what the transport carries.
    case tooLarge(Int)
}

extension SyncTransport {
    /// One turn of a member's loop on this transport: every datagram waiting goes into the
    /// channel, the channel's timers run, and what the channel wants sent is sent (a refused
    /// send stays in the channel's retransmission buffer). The channel's other actions
    /// (deliveries, resync needs, restarts, drops) are returned in order.
    public mutating func service(_ channel: inout SyncChannel, now: Timestamp) -> [SyncChannelAction] {
        var actions: [SyncChannelAction] = []
        for datagram in receive(now: now) { actions += channel.receive(datagram, now: now) }
        actions += channel.tick(now: now)
        var others: [SyncChannelAction] = []
        for action in actions {
            if case .transmit(let to, let datagram) = action { try? send(datagram, to: to, now: now) } else { others.append(action) }
        }
        return others
    }
}

extension SyncTransport {
    /// One turn of a cluster member's loop on this transport: every datagram waiting goes into
    /// the member, the member's time runs, and what it wants sent is sent (a refused send stays
    /// in the channel's retransmission buffer). The member's other actions are returned in
    /// order. Sleep until the member's ``ClusterMember/nextDeadline`` or the next datagram.
    public mutating func service(_ member: inout ClusterMember, now: Timestamp) -> [ClusterMemberAction] {
        for datagram in receive(now: now) { member.receive(datagram, now: now) }
        member.tick(now: now)
        var others: [ClusterMemberAction] = []
        while let action = member.nextAction() {
            if case .transmit(let to, let datagram) = action { try? send(datagram, to: to, now: now) } else { others.append(action) }
        }
        return others
    }
}
