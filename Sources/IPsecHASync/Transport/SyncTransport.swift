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
    /// Sends several datagrams at once, in order (a backend may hand them to the system in
    /// fewer calls); one it refuses is skipped, as a refused ``send(_:to:now:)`` is. The
    /// default sends them one by one.
    mutating func send(contentsOf datagrams: [(to: ClusterMemberID, datagram: [UInt8])], now: Timestamp)
}

/// Errors of a synch transport.
public enum SyncTransportError: Error, Sendable, Hashable {
    /// The member is not reachable through this transport.
    case unreachable(ClusterMemberID)
    /// The datagram exceeds what the transport carries.
    case tooLarge(Int)
}

extension SyncTransport {
    public mutating func send(contentsOf datagrams: [(to: ClusterMemberID, datagram: [UInt8])], now: Timestamp) {
        for (to, datagram) in datagrams { try? send(datagram, to: to, now: now) }
    }

    /// One turn of a member's loop on this transport: every datagram waiting goes into the
    /// channel, the channel's timers run, and what the channel wants sent is sent (a refused
    /// send stays in the channel's retransmission buffer), what it answers a datagram as soon
    /// as it answers (as the cluster member's turn below says why). The channel's other actions
    /// (deliveries, resync needs, restarts, drops) are returned in order.
    public mutating func service(_ channel: inout SyncChannel, now: Timestamp) -> [SyncChannelAction] {
        var others: [SyncChannelAction] = []
        for datagram in receive(now: now) { sendTransmitting(channel.receive(datagram, now: now), keeping: &others, now: now) }
        sendTransmitting(channel.tick(now: now), keeping: &others, now: now)
        return others
    }

    /// Sends the datagrams among `actions` and appends the rest to `others`.
    private mutating func sendTransmitting(_ actions: [SyncChannelAction], keeping others: inout [SyncChannelAction], now: Timestamp) {
        var outgoing: [(to: ClusterMemberID, datagram: [UInt8])] = []
        for action in actions {
            if case .transmit(let to, let datagram) = action { outgoing.append((to, datagram)) } else { others.append(action) }
        }
        if !outgoing.isEmpty { send(contentsOf: outgoing, now: now) }
    }
}

extension SyncTransport {
    /// One turn of a cluster member's loop on this transport: every datagram waiting goes into
    /// the member, the member's time runs, and what it wants sent is sent (a refused send stays
    /// in the channel's retransmission buffer). The member's other actions are returned in
    /// order. Sleep until the member's ``ClusterMember/nextDeadline`` or the next datagram.
    ///
    /// What the member answers a datagram (its acknowledgements above all) goes out before the
    /// next datagram goes in: a bulk resync arrives in bursts of thousands of datagrams, and
    /// answered only once the whole burst was taken in, the sender's window stayed shut
    /// meanwhile and the two members took turns instead of working at once.
    public mutating func service(_ member: inout ClusterMember, now: Timestamp) -> [ClusterMemberAction] {
        var others: [ClusterMemberAction] = []
        for datagram in receive(now: now) {
            member.receive(datagram, now: now)
            sendTransmitting(&member, keeping: &others, now: now)
        }
        member.tick(now: now)
        sendTransmitting(&member, keeping: &others, now: now)
        return others
    }

    /// Sends the datagrams among `member`'s next actions and appends the rest to `others`.
    private mutating func sendTransmitting(_ member: inout ClusterMember, keeping others: inout [ClusterMemberAction], now: Timestamp) {
        var outgoing: [(to: ClusterMemberID, datagram: [UInt8])] = []
        while let action = member.nextAction() {
            if case .transmit(let to, let datagram) = action { outgoing.append((to, datagram)) } else { others.append(action) }
        }
        if !outgoing.isEmpty { send(contentsOf: outgoing, now: now) }
    }
}
