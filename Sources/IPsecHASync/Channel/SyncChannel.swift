public import IPsecHACore
public import Logging

/// How a member's synch channel behaves. Times are nanoseconds.
public struct SyncChannelConfiguration: Sendable {
    /// The cluster every datagram must name.
    public var clusterID: UInt32
    /// This member.
    public var member: ClusterMemberID
    /// This member's epoch (its role epoch, ``ClusterRole/epoch``), carried in every header.
    /// Nonce uniqueness does not rest on it: a restarted member may come back with any epoch,
    /// equal or lower, whatever its clock says.
    public var epoch: UInt32
    /// This run of the channel: random, new on every start. Every direction key is bound to the
    /// incarnations of both ends, so nothing sealed by or for an earlier run is ever reused or
    /// accepted. The default draws from the system's secure generator; only deterministic
    /// simulations pass their own.
    public var incarnation = ChannelIncarnation.random()
    /// The cluster key; nil only with ``allowInsecure``.
    public var key: ChannelKey?
    /// Run without a key: datagrams travel in clear, unauthenticated. For tests only.
    public var allowInsecure: Bool
    /// The AEAD that seals datagrams; the same on every member (default ChaCha20-Poly1305;
    /// ``SyncChannelCipher/fastestAvailable`` picks AES-256-GCM where the CPU has it).
    public var cipher: SyncChannelCipher = .chacha20Poly1305
    /// The synch protocol versions this member speaks (default: every one this release knows,
    /// ``SyncProtocolVersion/supported``). `2...2` speaks as the previous release does, no
    /// protocol-versions record included: for a cluster whose every member must keep to it.
    public var protocolVersions: ClosedRange<UInt8> = SyncProtocolVersion.supported
    /// The other members.
    public var peers: [ClusterMemberID]
    /// Largest datagram sent or accepted (default 1,400 bytes, below common MTUs).
    public var maximumDatagramSize: Int = 1_400
    /// The ``maximumDatagramSize``s the package's front ends accept (the C API, ikeha-gateway,
    /// `ikeha-demo member`): room for any record at the bottom, what UDP over IPv4 carries at
    /// the top.
    public static let supportedDatagramSizes = 512...65_507
    /// Heartbeat interval (default 50 ms).
    public var heartbeatInterval: Duration {
        get { .nanoseconds(Int64(clamping: heartbeatIntervalNanoseconds)) }
        set { heartbeatIntervalNanoseconds = newValue.nonNegativeNanoseconds }
    }
    /// ``heartbeatInterval`` in nanoseconds, for the channel's clock arithmetic.
    package var heartbeatIntervalNanoseconds: UInt64 = 50_000_000
    /// A reliable datagram unacknowledged this long is sent again (default 100 ms).
    public var retransmitTimeout: Duration {
        get { .nanoseconds(Int64(clamping: retransmitTimeoutNanoseconds)) }
        set { retransmitTimeoutNanoseconds = newValue.nonNegativeNanoseconds }
    }
    /// ``retransmitTimeout`` in nanoseconds, for the channel's clock arithmetic.
    package var retransmitTimeoutNanoseconds: UInt64 = 100_000_000
    /// A gap still open this long after the last negative acknowledgement of every missing
    /// range is asked for again (default 10 ms). Keep it above the synch link's round-trip
    /// time, or datagrams are sent again while the first copy is still on its way; below
    /// ``retransmitTimeout`` it is what repairs a lost retransmission quickly: under 30% loss
    /// one hole in a few thousand loses seven copies in a row, and at 100 ms a copy that
    /// stalls the standby's stream for most of a second.
    public var negativeAcknowledgementRepeat: Duration {
        get { .nanoseconds(Int64(clamping: negativeAcknowledgementRepeatNanoseconds)) }
        set { negativeAcknowledgementRepeatNanoseconds = newValue.nonNegativeNanoseconds }
    }
    /// ``negativeAcknowledgementRepeat`` in nanoseconds, for the channel's clock arithmetic.
    package var negativeAcknowledgementRepeatNanoseconds: UInt64 = 10_000_000
    /// Unacknowledged reliable datagrams held per peer (default 4,096).
    public var retransmitBufferLimit: Int = 4_096
    /// Early datagrams held per peer while a gap is open (default 4,096).
    public var receiveHoldLimit: Int = 4_096
    /// Packet numbers the replay window remembers per peer (default 4,096).
    public var replayWindowSize: UInt32 = 4_096
    /// Reliable datagrams received in order before an acknowledgement goes out at once
    /// (default 8); out-of-order arrivals are acknowledged at once.
    public var acknowledgeEvery: Int = 8
    /// Longest wait before acknowledging what arrived in order (default 2 ms); call
    /// ``SyncChannel/tick(now:)`` at least this often.
    public var acknowledgementDelay: Duration {
        get { .nanoseconds(Int64(clamping: acknowledgementDelayNanoseconds)) }
        set { acknowledgementDelayNanoseconds = newValue.nonNegativeNanoseconds }
    }
    /// ``acknowledgementDelay`` in nanoseconds, for the channel's clock arithmetic.
    package var acknowledgementDelayNanoseconds: UInt64 = 2_000_000
    /// How long datagrams sealed under the cluster key before the last rotation keep opening,
    /// counted from the first ``SyncChannel/tick(now:)`` after the rotation (default 30 s). The
    /// previous key is retired and wiped sooner, as soon as every peer was heard under the new
    /// key.
    public var previousKeyGrace: Duration {
        get { .nanoseconds(Int64(clamping: previousKeyGraceNanoseconds)) }
        set { previousKeyGraceNanoseconds = newValue.nonNegativeNanoseconds }
    }
    /// ``previousKeyGrace`` in nanoseconds, for the channel's clock arithmetic.
    package var previousKeyGraceNanoseconds: UInt64 = 30_000_000_000
    /// Where the channel logs what an operator should know: gaps, stream resets, peers
    /// restarting (notice), authentication failures (debug: they are counted, and an attacker
    /// must not be able to flood the log).
    public var logger = Logger(label: "ipsecha.sync.channel")

    /// A configuration with defaults for everything else. Without a key, ``allowInsecure``
    /// must be set explicitly.
    public init(
        clusterID: UInt32, member: ClusterMemberID, epoch: UInt32, key: ChannelKey?, peers: [ClusterMemberID],
        allowInsecure: Bool = false
    ) {
        self.clusterID = clusterID
        self.member = member
        self.epoch = epoch
        self.key = key
        self.peers = peers
        self.allowInsecure = allowInsecure
    }
}

/// What the channel asks its owner to do.
public enum SyncChannelAction: Sendable, Equatable {
    /// Hand these bytes to the transport, for this member.
    case transmit(to: ClusterMemberID, datagram: [UInt8])
    /// Records from a peer, in the order the peer sent them (reliable ones exactly once).
    case deliver(from: ClusterMemberID, records: [SyncRecord])
    /// A handshake established a new incarnation of a peer: a start, or a restart after which
    /// whatever it held of this member's stream is gone (``resyncNeeded(_:)`` comes with it
    /// then). `epoch` is the epoch in the peer's header.
    case peerRestarted(ClusterMemberID, epoch: UInt32)
    /// The stream to this peer was reset (the peer restarted or rotated its keys, or asked for
    /// datagrams never sent): send it a resync.
    case resyncNeeded(ClusterMemberID)
    /// A datagram was dropped, and why. No state changed.
    case dropped(SyncChannelError)
}

/// Counters of a synch channel.
public struct SyncChannelStatistics: Sendable, Hashable {
    /// Datagrams handed to the transport.
    public var datagramsSent: UInt64 = 0
    /// Records sent (each once, however often its datagram was retransmitted).
    public var recordsSent: UInt64 = 0
    /// Records in the datagrams accepted.
    public var recordsReceived: UInt64 = 0
    /// Reliable datagrams sent again.
    public var retransmissions: UInt64 = 0
    /// Datagrams accepted.
    public var datagramsReceived: UInt64 = 0
    /// Datagrams that failed authentication.
    public var authenticationFailures: UInt64 = 0
    /// Datagrams sealed with another cipher than this member's (a configuration error).
    public var cipherMismatches: UInt64 = 0
    /// Datagrams refused as replays.
    public var replaysRejected: UInt64 = 0
    /// Datagrams dropped for any other reason (malformed, wrong cluster, unknown member...).
    public var malformedDropped: UInt64 = 0
    /// Gaps noticed in a reliable stream from a peer.
    public var gapsDetected: UInt64 = 0
    /// Negative acknowledgements sent.
    public var negativeAcknowledgementsSent: UInt64 = 0
    /// Streams reset: a peer restarted, or asked for datagrams never sent.
    public var streamResets: UInt64 = 0
    /// Handshake datagrams sent.
    public var handshakesSent: UInt64 = 0
    /// Incarnations of peers established by a handshake (starts and restarts).
    public var peerIncarnationsAccepted: UInt64 = 0
}

/// Names a reliable send: acknowledged once every datagram up to `sequence` to `peer` was.
public struct SyncTicket: Sendable, Hashable {
    /// The peer.
    public let peer: ClusterMemberID
    /// The last reliable sequence number the send used.
    public let sequence: UInt64
}

/// One member's end of the synch channel to every peer: sealing and opening (libsodium AEAD),
/// replay protection, reliable in-order delivery with acknowledgements, negative
/// acknowledgements, retransmission and heartbeats.
///
/// Sans-I/O: feed it what to send (``send(_:to:now:)``), what arrived (``receive(_:now:)``)
/// and the passing of time (``tick(now:)``); it returns ``SyncChannelAction`` values. It never
/// reads a clock or touches a socket.
public struct SyncChannel {
    struct Peer {
        /// Never reset while this channel runs: with keys bound to this channel's incarnation,
        /// that makes every (key, nonce) pair unique whatever else changes.
        var nextPacketNumber: UInt64 = 1
        var sender: ReliableSender
        var lastHeartbeatSent: Timestamp?
        /// The peer's incarnation, taken from a handshake that answered this member's challenge.
        var incarnation: ChannelIncarnation?
        /// This member's current challenge to the peer; a new one after each incarnation taken,
        /// so that no recorded handshake can install an incarnation again.
        var challenge: UInt64 = 0
        /// The peer's incarnation and challenge from its latest handshake, echoed in ours.
        var heardIncarnation: ChannelIncarnation?
        /// The versions the peer's current run announced (nil: none, the previous release).
        var protocolVersions: ClosedRange<UInt8>?
        var heardChallenge: UInt64 = 0
        /// Whether the peer took this member's incarnation: data from it opened.
        var established = false
        var lastHandshakeSent: Timestamp?
        /// Whether this member asked the peer to answer again after a silence.
        var renewing = false
        /// Unreliable payloads sent before the handshake gave the peer's incarnation (a
        /// standby's first hello, say), sent once it does; the oldest go beyond
        /// ``SyncChannel/unreliableHoldLimit``.
        var heldUnreliable: [[UInt8]] = []
        /// Whether data sealed under the current cluster key came from it since the last rotation.
        var heardUnderCurrentKey = false
        var replay: ReplayWindow
        var receiver: ReliableReceiver
        var lastHeard: Timestamp?
        /// The incarnation of the peer's last authentic datagram (handshakes included) and the
        /// epoch in the first one heard of it, the highest epoch it has moved to above that in
        /// any incarnation (``SyncChannel/highestEpochMovedTo(by:)``), and the epoch in its last
        /// data datagram.
        var epochIncarnation: ChannelIncarnation?
        var incarnationEpoch: UInt32 = 0
        var highestEpochMovedTo: UInt32?
        var lastEpoch: UInt32?
        /// When the peer's current incarnation was taken (``SyncChannel/incarnationTaken(of:)``).
        var incarnationTaken: Timestamp?
        /// Reliable datagrams received since the last acknowledgement, and when the first came.
        var unacknowledged = 0
        var firstUnacknowledged: Timestamp?
        /// Round trips of this member's reliable datagrams to the peer.
        var roundTrip = RoundTripBound()

        /// For a datagram to the peer: its incarnation and the next packet number, used up;
        /// nil, nothing used, for data while its incarnation is unknown (data keys are bound
        /// to it). Mutating, so that `peers.withPeer(at:_:)` reaches it in place: reading a
        /// field through a getter copies the whole peer (about 250 instructions, for every
        /// datagram).
        mutating func nextDatagram(handshake: Bool) -> (incarnation: ChannelIncarnation?, packetNumber: UInt64)? {
            guard handshake || incarnation != nil else { return nil }
            defer { nextPacketNumber += 1 }
            return (incarnation, nextPacketNumber)
        }

        /// Notes the epoch of an authentic datagram from the peer. Its epoch rises within one
        /// run only when it takes over or reasserts; a datagram of another incarnation starts a
        /// new base, and a reordered older one falls below it. `highestEpochMovedTo` never
        /// falls, so a replayed datagram of an earlier run hides nothing.
        mutating func noteEpoch(of header: DatagramHeader) {
            if epochIncarnation == header.senderIncarnation {
                if header.epoch > incarnationEpoch { highestEpochMovedTo = max(highestEpochMovedTo ?? 0, header.epoch) }
            } else {
                epochIncarnation = header.senderIncarnation
                incarnationEpoch = header.epoch
            }
        }
    }

    /// The peers by member ID, for a handful of them (1 to 64 configured, fixed when the
    /// channel is made), in increasing order of ID: found by comparing IDs where a `Dictionary`
    /// hashed the sender's ID (SipHash) three or four times a datagram, about 110 instructions
    /// a Child SA of a bulk resync. The per-datagram paths change a peer in place through
    /// ``withPeer(at:_:)`` or take it out and put it back, moved: accessors that yield (`_modify`)
    /// were tried and allocated a coroutine frame for the large peer state at every use.
    struct PeerTable {
        private var members: [ClusterMemberID] = []
        /// nil while a peer is taken out.
        private var states: [Peer?] = []

        /// A loop over the buffer: `members.firstIndex(of:)` measured 57 instructions more a
        /// resync's Child SA (it is not inlined into the per-datagram paths).
        func index(forKey member: ClusterMemberID) -> Int? {
            members.withUnsafeBufferPointer { members in
                for index in members.indices where members[index] == member { return index }
                return nil
            }
        }

        /// The peer of `member`: nil when there is none or it is taken out. Setting a member
        /// that is not in the table adds it. (Changing a field through it copies the peer out
        /// and back: for the paths that run per tick, not per datagram.)
        subscript(member: ClusterMemberID) -> Peer? {
            get { index(forKey: member).flatMap { states[$0] } }
            set {
                if let index = index(forKey: member) {
                    states[index] = newValue
                } else if let newValue {
                    let position = members.firstIndex { $0 > member } ?? members.endIndex
                    members.insert(member, at: position)
                    states.insert(newValue, at: position)
                }
            }
        }

        /// Runs `body` on the peer at `index` (from ``index(forKey:)``, not taken out), in place.
        mutating func withPeer<Result>(at index: Int, _ body: (inout Peer) -> Result) -> Result {
            body(&states[index]!)
        }

        /// Runs `body` on the peer at `index`, read where it lies.
        func withPeer<Result>(at index: Int, reading body: (borrowing Peer) -> Result) -> Result {
            body(states[index]!)
        }

        /// Takes the peer of `member` out, moved rather than copied; ``putBack(_:forKey:)``
        /// returns it.
        mutating func removeValue(forKey member: ClusterMemberID) -> Peer? {
            guard let index = index(forKey: member) else { return nil }
            return states[index].take()
        }

        mutating func putBack(_ peer: consuming Peer, forKey member: ClusterMemberID) {
            states[index(forKey: member)!] = consume peer
        }

        /// The members whose peer is in the table, in increasing order.
        var keys: [ClusterMemberID] { members.indices.compactMap { states[$0] == nil ? nil : members[$0] } }

        /// The peers in the table, in their members' order.
        var values: some Sequence<Peer> { states.lazy.compactMap { $0 } }
    }

    /// The configuration in force.
    public private(set) var configuration: SyncChannelConfiguration
    private var sealer: DatagramSealer
    private var peers = PeerTable()
    /// When the previous cluster key is retired at the latest (set at the first tick after a
    /// rotation).
    private var previousKeyDeadline: Timestamp?
    /// Selector arrays decoded before, shared with the Child SAs that arrive with the same.
    private var selectorCache = StateEncoding.SelectorCache()
    /// The channel's counters.
    public private(set) var statistics = SyncChannelStatistics()

    /// A channel. Throws ``SyncChannelError/security(_:)`` with
    /// ``ChannelSecurityError/noKey`` when there is no key and insecure mode was not chosen,
    /// and with ``ChannelSecurityError/cipherUnavailable(_:)`` when this CPU cannot run the
    /// configured cipher.
    public init(configuration: SyncChannelConfiguration) throws(SyncChannelError) {
        guard configuration.key != nil || configuration.allowInsecure else { throw .security(.noKey) }
        guard configuration.cipher.isAvailable else { throw .security(.cipherUnavailable(configuration.cipher)) }
        guard configuration.maximumDatagramSize >= DatagramHeader.size + DatagramSealer.tagSize + 64 else {
            throw .invalidHeader("maximum datagram size \(configuration.maximumDatagramSize)")
        }
        self.configuration = configuration
        sealer = DatagramSealer(key: configuration.key, cipher: configuration.cipher)
        for peer in configuration.peers where peer != configuration.member {
            peers[peer] = Self.freshPeer(configuration)
        }
    }

    private static func freshPeer(_ configuration: SyncChannelConfiguration) -> Peer {
        Peer(
            sender: ReliableSender(limit: configuration.retransmitBufferLimit),
            replay: replayWindow(configuration, seenUpTo: 0),
            receiver: ReliableReceiver(limit: configuration.receiveHoldLimit))
    }

    /// A replay window for a peer's packet numbers with everything up to `packetNumber` seen.
    private static func replayWindow(_ configuration: SyncChannelConfiguration, seenUpTo packetNumber: UInt64) -> ReplayWindow {
        let size = min(max(configuration.replayWindowSize, ReplayWindow.minimumSize), ReplayWindow.maximumSize)
        // Cannot throw: the size is clamped to the allowed range and 64-bit numbers have room.
        return try! ReplayWindow(
            size: size, extendedSequenceNumbers: true,
            restoringFrom: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: packetNumber), policy: .conservative(advance: 0))
    }

    /// Unreliable payloads held per peer until its handshake completes.
    static let unreliableHoldLimit = 16

    /// The largest payload of records one datagram carries.
    public var maximumPayload: Int {
        configuration.maximumDatagramSize - DatagramHeader.size - (configuration.key == nil ? 0 : DatagramSealer.tagSize)
    }

    // MARK: Sending

    /// Sends records to a peer. Reliable records are packed into numbered datagrams, kept until
    /// acknowledged; the others go out once. The ticket names the last reliable datagram (nil
    /// when nothing reliable was sent). Throws ``SyncChannelError/sendQueueFull`` when the
    /// retransmission buffer cannot take the reliable records (nothing is sent then), and
    /// ``SyncChannelError/codec(_:)`` when a record does not fit a datagram.
    public mutating func send(
        _ records: [SyncRecord], to peer: ClusterMemberID, now: Timestamp
    ) throws(SyncChannelError) -> (ticket: SyncTicket?, actions: [SyncChannelAction]) {
        guard peers.index(forKey: peer) != nil else { throw .unknownMember(peer) }
        // Most sends are all reliable (or all not): no filtered copies then.
        let allReliable = records.allSatisfy(\.isReliable)
        let reliable = try pack(allReliable ? records : records.filter(\.isReliable))
        let unreliable = allReliable ? [] : try pack(withProtocolVersions(records.filter { !$0.isReliable }))
        let sent = try transmit(reliable: reliable, unreliable: unreliable, to: peer, now: now)
        statistics.recordsSent &+= UInt64(records.count)
        return sent
    }

    /// Sends, reliably, the records that `fill` packs (with ``PayloadPacker/append(_:)`` or
    /// ``PayloadPacker/append(encoding:)``), as ``send(_:to:now:)`` would send them: the path of
    /// a bulk resync, which encodes SAs straight from the state instead of building records.
    mutating func sendReliable(
        to peer: ClusterMemberID, now: Timestamp, _ fill: (inout PayloadPacker) throws(SyncChannelError) -> Void
    ) throws(SyncChannelError) -> (ticket: SyncTicket?, actions: [SyncChannelAction]) {
        guard peers.index(forKey: peer) != nil else { throw .unknownMember(peer) }
        var packer = PayloadPacker(maximumPayload: maximumPayload)
        try fill(&packer)
        let records = packer.recordCount
        let sent = try transmit(reliable: packer.payloads(), unreliable: [], to: peer, now: now)
        statistics.recordsSent &+= UInt64(records)
        return sent
    }

    /// Queues the reliable payloads for retransmission and seals every payload for `peer`;
    /// throws, sending nothing, when the retransmission buffer lacks room for the reliable ones.
    private mutating func transmit(
        reliable: [[UInt8]], unreliable: [[UInt8]], to peer: ClusterMemberID, now: Timestamp
    ) throws(SyncChannelError) -> (ticket: SyncTicket?, actions: [SyncChannelAction]) {
        // In place, here and for each datagram: changed through an optional-valued subscript,
        // the whole peer was copied back in at its end (a retain per reference it holds; with
        // the getter's copies, about 750 instructions a resync's Child SA).
        let index = peers.index(forKey: peer)!
        guard reliable.count <= peers.withPeer(at: index, reading: { $0.sender.freeSlots }) else { throw .sendQueueFull }
        var actions: [SyncChannelAction] = []
        actions.reserveCapacity(reliable.count + unreliable.count)
        var last: UInt64?
        for payload in reliable {
            let entry = peers.withPeer(at: index) { $0.sender.enqueue(payload, now: now)! }
            last = entry.sequence
            // Before the handshake with the peer, reliable datagrams wait in the buffer: they go
            // out once it completes.
            if let action = try transmit(payload, to: peer, reliableSequence: entry.sequence, streamReset: entry.streamReset) {
                actions.append(action)
            }
        }
        for payload in unreliable {
            if let action = try transmit(payload, to: peer, reliableSequence: 0, streamReset: false) {
                actions.append(action)
            } else {
                peers.withPeer(at: index) { peer in
                    if peer.heldUnreliable.count >= Self.unreliableHoldLimit { peer.heldUnreliable.removeFirst() }
                    peer.heldUnreliable.append(payload)
                }
            }
        }
        return (last.map { SyncTicket(peer: peer, sequence: $0) }, actions)
    }

    /// How many more reliable datagrams the peer's retransmission buffer takes now.
    public func reliableCapacity(to peer: ClusterMemberID) -> Int { peers.index(forKey: peer).map { peers.withPeer(at: $0, reading: { $0.sender.freeSlots }) } ?? 0 }

    /// Whether the peer acknowledged everything up to the ticket. Never true for a ticket whose
    /// datagram a stream reset dropped (``wasDropped(_:)``).
    public func isAcknowledged(_ ticket: SyncTicket) -> Bool {
        peers[ticket.peer]?.sender.isAcknowledged(ticket.sequence) ?? false
    }

    /// Whether a stream reset (a bulk resync, a peer's restart, an epoch change) dropped the
    /// ticket's datagram before the peer acknowledged it: it never will be. The resync that
    /// follows carries the state instead; wait for ``Replicator/hasCaughtUp(_:channel:)``.
    public func wasDropped(_ ticket: SyncTicket) -> Bool {
        peers[ticket.peer]?.sender.wasDropped(ticket.sequence) ?? false
    }

    /// Drops everything unacknowledged to `peer` and restarts the stream (the next reliable
    /// datagram tells the peer to skip whatever it was missing). Used before a bulk resync.
    public mutating func resetStream(to peer: ClusterMemberID) {
        peers[peer]?.sender.resetStream()
        statistics.streamResets += 1
    }

    /// Moves this member to a new, higher epoch, and to a new cluster key when `key` is given.
    /// Nothing restarts: packet numbers go on, streams go on. Datagrams sealed under the previous
    /// cluster key keep opening until every peer was heard under the new one, or for
    /// ``SyncChannelConfiguration/previousKeyGrace`` at most; then the previous key is wiped.
    /// Throws when `epoch` is not above the current one.
    public mutating func rotate(toEpoch epoch: UInt32, key: ChannelKey? = nil) throws(SyncChannelError) {
        guard epoch > configuration.epoch else { throw .invalidHeader("epoch \(epoch) not above \(configuration.epoch)") }
        if let key { try rotateKey(to: key) }
        configuration.epoch = epoch
        configuration.logger.notice("synch channel moved to a new epoch", metadata: ["epoch": "\(epoch)", "newKey": "\(key != nil)"])
    }

    /// Seals with a new cluster key from now on, at the same epoch (an operator's key rotation:
    /// nonces stay unique, since packet numbers go on). Datagrams under the previous key keep
    /// opening as ``rotate(toEpoch:key:)`` says. Throws ``SyncChannelError/security(_:)`` in
    /// insecure mode (no key to rotate).
    public mutating func rotateKey(to key: ChannelKey) throws(SyncChannelError) {
        guard configuration.key != nil else { throw .security(.noKey) }
        sealer.rotate(to: key)
        configuration.key = key
        previousKeyDeadline = nil
        for member in peers.keys { peers[member]!.heardUnderCurrentKey = false }
        configuration.logger.notice("synch channel sealing under a new cluster key")
    }

    /// Whether datagrams sealed under the cluster key before the last rotation still open.
    public var acceptsPreviousKey: Bool { sealer.previousKey != nil }

    /// Stops opening datagrams sealed under the previous cluster key, and wipes it.
    public mutating func retirePreviousKey() {
        guard sealer.previousKey != nil else { return }
        sealer.retirePreviousKey()
        previousKeyDeadline = nil
        configuration.logger.notice("previous cluster key retired")
    }

    /// The peer's incarnation this channel established by handshake, if any.
    public func incarnation(of peer: ClusterMemberID) -> ChannelIncarnation? { peers[peer]?.incarnation }

    /// Whether the handshake with `peer` is complete both ways: each end took the other's
    /// incarnation, so data flows.
    public func isEstablished(with peer: ClusterMemberID) -> Bool {
        guard let state = peers[peer] else { return false }
        return state.incarnation != nil && state.established
    }

    // MARK: Receiving

    /// Takes a datagram from the transport. Any failed check drops it with a
    /// ``SyncChannelAction/dropped(_:)`` action and changes nothing.
    public mutating func receive(_ datagram: [UInt8], now: Timestamp) -> [SyncChannelAction] {
        do {
            return try accept(datagram, now: now)
        } catch {
            configuration.logger.debug("synch datagram dropped", metadata: ["reason": "\(error)"])
            switch error {
            case .security(.authenticationFailed), .security(.noKey): statistics.authenticationFailures += 1
            case .security(.cipherMismatch(let theirs)):
                // A configuration error, not an attack: said once, loudly, then counted.
                if statistics.cipherMismatches == 0 {
                    configuration.logger.error(
                        "synch peer seals with another cipher: configure every member alike",
                        metadata: ["theirs": "\(theirs)", "ours": "\(configuration.cipher)"])
                }
                statistics.cipherMismatches += 1
            case .security(.replayed): statistics.replaysRejected += 1
            default: statistics.malformedDropped += 1
            }
            return [.dropped(error)]
        }
    }

    private mutating func accept(_ datagram: [UInt8], now: Timestamp) throws(SyncChannelError) -> [SyncChannelAction] {
        guard datagram.count <= configuration.maximumDatagramSize else { throw .tooLong(datagram.count) }
        guard datagram.count >= DatagramHeader.size else { throw .tooShort(datagram.count) }
        // Cheap checks on the clear header first, so that no key is derived for junk.
        let claimed = try DatagramHeader.read(datagram[0..<DatagramHeader.size])
        guard claimed.clusterID == configuration.clusterID else { throw .wrongCluster(claimed.clusterID) }
        guard claimed.receiver == configuration.member else { throw .unknownMember(claimed.receiver) }
        // The peer is taken out of the table while it is read and changed, so that it is
        // neither copied to be read nor copied to be changed; it goes back unchanged when the
        // datagram is dropped.
        guard var peer = peers.removeValue(forKey: claimed.sender) else { throw .unknownMember(claimed.sender) }
        if claimed.isHandshake {
            let handshake: ChannelHandshake
            do throws(SyncChannelError) {
                let opened = try sealer.open(datagram, claimed, receiverIncarnation: configuration.incarnation)
                handshake = try ChannelHandshake.decode(opened.payload)
            } catch {
                peers.putBack(consume peer, forKey: claimed.sender)
                throw error
            }
            return acceptHandshake(handshake, claimed, from: &peer, now: now)
        }
        let header = claimed
        let records: [SyncRecord]
        let underPreviousKey: Bool
        do throws(SyncChannelError) {
            // Data is sealed for one pair of incarnations: anything else (a peer's earlier run,
            // or data for an earlier run of this member) cannot open, and is dropped unopened.
            guard peer.incarnation == claimed.senderIncarnation else { throw SyncChannelError.security(.unknownIncarnation) }
            guard case .fresh = peer.replay.classify(claimed.packetNumber) else {
                throw SyncChannelError.security(.replayed(claimed.packetNumber))
            }
            guard claimed.reliableSequence < ReliableReceiver.sequenceCeiling else {
                throw SyncChannelError.invalidHeader("reliable sequence \(claimed.reliableSequence)")
            }
            let payload: [UInt8]
            (payload, underPreviousKey) = try sealer.open(datagram, claimed, receiverIncarnation: configuration.incarnation)
            do { records = try SyncRecord.decodeAll(payload[...], cache: &selectorCache) } catch { throw SyncChannelError.codec(error) }
            for case .heartbeat(let highest, _) in records where highest >= ReliableReceiver.sequenceCeiling {
                throw SyncChannelError.invalidHeader("heartbeat announcing reliable sequence \(highest)")
            }
        } catch {
            peers.putBack(consume peer, forKey: claimed.sender)
            throw error
        }

        // Authentic and well formed: from here on, state changes.
        var actions: [SyncChannelAction] = []
        peer.established = true
        peer.renewing = false
        if peer.heardIncarnation != peer.incarnation { peer.heardIncarnation = nil }
        if !underPreviousKey && sealer.previousKey != nil && !peer.heardUnderCurrentKey {
            peer.heardUnderCurrentKey = true
            if peers.values.allSatisfy(\.heardUnderCurrentKey) { retirePreviousKey() }
        }
        try? peer.replay.commit(header.packetNumber)
        peer.lastHeard = now
        peer.lastEpoch = header.epoch
        peer.noteEpoch(of: header)
        statistics.datagramsReceived += 1
        statistics.recordsReceived &+= UInt64(records.count)

        var control: [SyncRecord] = []
        var retransmit: [ReliableSender.Outstanding] = []
        var unreliable: [SyncRecord] = []
        for record in records where !record.isReliable {
            switch record {
            case .acknowledgement(let cumulative, let selective):
                if let sample = peer.sender.acknowledge(cumulative: cumulative, selective: selective, now: now) {
                    peer.roundTrip.record(sample, now: now)
                }
            case .negativeAcknowledgement(let ranges):
                retransmit += peer.sender.negativeAcknowledge(ranges, now: now)
            case .protocolVersions(let oldest, let newest):
                heardProtocolVersions(oldest...newest, from: &peer, sender: header.sender)
            case .heartbeat(let highest, _):
                let hadGap = peer.receiver.hasGap
                peer.receiver.announce(highest: highest, now: now)  // below the ceiling, checked above
                if peer.receiver.hasGap && !hadGap { statistics.gapsDetected += 1 }
                if peer.receiver.hasGap { control.append(negativeAcknowledgement(&peer, now: now)) }
                unreliable.append(record)
            default:
                unreliable.append(record)
            }
        }
        if !unreliable.isEmpty { actions.append(.deliver(from: header.sender, records: unreliable)) }
        if header.reliableSequence > 0 {
            let highestBefore = peer.receiver.highestKnown
            let sender = header.sender
            var delivered = false
            peer.receiver.receive(
                sequence: header.reliableSequence, records: records.allSatisfy(\.isReliable) ? records : records.filter(\.isReliable),
                streamReset: header.flags & DatagramHeader.streamResetFlag != 0, now: now
            ) { batch in
                delivered = true
                if !batch.isEmpty { actions.append(.deliver(from: sender, records: batch)) }
            }
            // A datagram above the next expected one opens a hole: asked for at once, even while
            // older holes are still being repaired (under steady loss the stream is never
            // whole, and waiting for the next heartbeat would put the standby that much behind).
            // Both numbers are below the sequence ceiling, checked above; after a stream reset
            // nothing below the datagram is missing any more.
            if header.reliableSequence > max(highestBefore, peer.receiver.delivered) + 1 {
                statistics.gapsDetected += 1
                control.append(negativeAcknowledgement(&peer, now: now, only: SequenceRange(highestBefore + 1, header.reliableSequence - 1)))
            }
            // Acknowledge at once every few datagrams, or when out of order (the sender needs
            // the selective ranges); otherwise ``tick(now:)`` acknowledges within the delay.
            peer.unacknowledged += 1
            if peer.firstUnacknowledged == nil { peer.firstUnacknowledged = now }
            if peer.unacknowledged >= configuration.acknowledgeEvery || peer.receiver.hasGap || !delivered {
                control.append(acknowledgement(&peer))
            }
        }
        peers.putBack(consume peer, forKey: header.sender)
        transmit(retransmit, control: control, to: header.sender, into: &actions)
        return actions
    }

    /// Takes an authentic handshake: remembers the peer's challenge to echo it, takes the peer's
    /// incarnation when the handshake answers this member's current challenge, and answers when
    /// there is something new to say.
    private mutating func acceptHandshake(
        _ handshake: ChannelHandshake, _ header: DatagramHeader, from peer: inout Peer, now: Timestamp
    ) -> [SyncChannelAction] {
        var actions: [SyncChannelAction] = []
        // A member that cannot finish a handshake (its answers lost) still says in each one
        // whether it moved to a new epoch: it may have taken over unseen (torture seed 114116).
        peer.noteEpoch(of: header)
        var answer = peer.heardIncarnation != header.senderIncarnation || peer.heardChallenge != handshake.challenge
        peer.heardIncarnation = header.senderIncarnation
        peer.heardChallenge = handshake.challenge
        let answersUs = handshake.echoedIncarnation == configuration.incarnation && handshake.echoedChallenge == peer.challenge
        let renewal = answersUs && peer.renewing && peer.incarnation == header.senderIncarnation
        let newIncarnation = answersUs && peer.incarnation != header.senderIncarnation
        // Either completes this member's side of a handshake: what waited for it goes out.
        let completed = renewal || newIncarnation
        if completed {
            peer.challenge &+= 1
            peer.renewing = false
            // The peer's packet numbers are shared by handshakes and data: nothing it sent before
            // this answer can be fresh. (After a silence this also moves a window that a forgery
            // pushed far ahead back to where the peer is, so it no longer shuts the peer out.)
            peer.replay = Self.replayWindow(configuration, seenUpTo: header.packetNumber)
            answer = true
        }
        if newIncarnation {
            let restarted = peer.incarnation != nil
            peer.incarnation = header.senderIncarnation
            peer.incarnationTaken = now
            peer.established = false
            // A run of another release may follow (an upgrade, or a downgrade back).
            peer.protocolVersions = nil
            peer.receiver.reset()
            peer.unacknowledged = 0
            peer.firstUnacknowledged = nil
            if restarted {
                // It lost our stream with its previous run: restart the stream and let the
                // owner resync the peer.
                peer.sender.resetStream()
                statistics.streamResets += 1
                actions.append(.resyncNeeded(header.sender))
            }
            actions.append(.peerRestarted(header.sender, epoch: header.epoch))
            statistics.peerIncarnationsAccepted += 1
            configuration.logger.notice(
                "synch peer started",
                metadata: [
                    "peer": "\(header.sender.rawValue)", "epoch": "\(header.epoch)", "incarnation": "\(header.senderIncarnation)",
                    "restart": "\(restarted)",
                ])
        } else if renewal {
            configuration.logger.notice("synch peer answered after a silence", metadata: ["peer": "\(header.sender.rawValue)"])
        }
        // Datagrams queued before the peer was known go out now, after the answer that
        // completes its side of the handshake.
        let queued = completed ? peer.sender.timedOut(now: now, timeout: 0, maximum: Int.max) : []
        let heldUnreliable = completed ? peer.heldUnreliable : []
        if completed { peer.heldUnreliable = [] }
        peers[header.sender] = peer
        if answer { actions.append(contentsOf: sendHandshake(to: header.sender, now: now)) }
        transmit(queued, control: [], to: header.sender, into: &actions)
        for payload in heldUnreliable {
            if let action = try? transmit(payload, to: header.sender, reliableSequence: 0, streamReset: false) { actions.append(action) }
        }
        return actions
    }

    /// A handshake datagram to `member`: this member's challenge, and the peer's last heard.
    /// Empty when sealing fails (a later tick tries again).
    private mutating func sendHandshake(to member: ClusterMemberID, now: Timestamp) -> [SyncChannelAction] {
        peers[member]!.lastHandshakeSent = now
        let peer = peers[member]!
        let payload = ChannelHandshake(
            challenge: peer.challenge, echoedIncarnation: peer.heardIncarnation, echoedChallenge: peer.heardChallenge
        ).encoded
        do {
            let action = try transmit(payload, to: member, reliableSequence: 0, streamReset: false, handshake: true)
            statistics.handshakesSent += 1
            return action.map { [$0] } ?? []
        } catch {
            configuration.logger.error("synch handshake not sent", metadata: ["peer": "\(member.rawValue)", "reason": "\(error)"])
            return []
        }
    }

    private func acknowledgement(_ peer: inout Peer) -> SyncRecord {
        peer.unacknowledged = 0
        peer.firstUnacknowledged = nil
        return peer.receiver.acknowledgement()
    }

    /// Asks `peer` again for what is missing from its stream: every missing range, or `only`
    /// the hole one datagram just opened. Asking for one hole starts the timer of the repeated
    /// requests for every range but does not restart it: holes opening all the time must not
    /// keep the older ones from being asked for again.
    private mutating func negativeAcknowledgement(_ peer: inout Peer, now: Timestamp, only hole: SequenceRange? = nil) -> SyncRecord {
        if hole == nil || peer.receiver.lastNegativeAcknowledgement == nil { peer.receiver.lastNegativeAcknowledgement = now }
        statistics.negativeAcknowledgementsSent += 1
        let missing = hole.map { [$0] } ?? peer.receiver.missingRanges()
        configuration.logger.info("synch records missing, asking again", metadata: ["missing": "\(missing)"])
        return .negativeAcknowledgement(missing)
    }

    // MARK: Time

    /// Heartbeats (with the highest reliable sequence sent and an acknowledgement), timed-out
    /// retransmissions, and repeated negative acknowledgements for gaps still open.
    public mutating func tick(now: Timestamp) -> [SyncChannelAction] {
        var actions: [SyncChannelAction] = []
        if sealer.previousKey != nil {
            if let deadline = previousKeyDeadline {
                if now >= deadline { retirePreviousKey() }
            } else {
                let (deadline, overflow) = now.nanoseconds.addingReportingOverflow(configuration.previousKeyGraceNanoseconds)
                previousKeyDeadline = Timestamp(nanoseconds: overflow ? .max : deadline)
            }
        }
        for member in peers.keys {
            if peers[member]!.established,
                let heard = peers[member]!.lastHeard,
                now.nanoseconds >= heard.nanoseconds &+ configuration.heartbeatIntervalNanoseconds &* 4
            {
                // Silent for four heartbeats: a partition, a dead peer, or a window a forgery
                // pushed ahead. Handshakes go out until data comes again; an answer moves the
                // window to the peer's packet numbers.
                peers[member]!.established = false
                peers[member]!.renewing = true
            }
            let peerState = peers[member]!
            // Handshakes until both ends hold each other's incarnation, and again when the peer
            // shows another incarnation (it restarted, or a recording is replayed).
            let handshakeWanted =
                peerState.incarnation == nil || !peerState.established
                || (peerState.heardIncarnation != nil && peerState.heardIncarnation != peerState.incarnation)
            if handshakeWanted,
                peerState.lastHandshakeSent.map({ now.nanoseconds >= $0.nanoseconds &+ configuration.heartbeatIntervalNanoseconds }) ?? true
            {
                actions += sendHandshake(to: member, now: now)
            }
            var peer = peers.removeValue(forKey: member)!
            var control: [SyncRecord] = []
            if peer.incarnation != nil,
                peer.lastHeartbeatSent.map({ now.nanoseconds >= $0.nanoseconds &+ configuration.heartbeatIntervalNanoseconds }) ?? true
            {
                peer.lastHeartbeatSent = now
                control.append(.heartbeat(highestSequence: peer.sender.highestSent, sentAt: now))
                if let roundTrip = peer.roundTrip.nanoseconds,
                    case .speaking(let version) = protocolVersion(of: peer),
                    version >= SyncProtocolVersion.synchDelay
                {
                    control.append(.synchDelay(roundTrip: .nanoseconds(Int64(clamping: roundTrip))))
                }
                control.append(acknowledgement(&peer))
            } else if let first = peer.firstUnacknowledged,
                now.nanoseconds >= first.nanoseconds &+ configuration.acknowledgementDelayNanoseconds
            {
                control.append(acknowledgement(&peer))
            }
            if peer.receiver.hasGap,
                peer.receiver.lastNegativeAcknowledgement.map({ now.nanoseconds >= $0.nanoseconds &+ configuration.negativeAcknowledgementRepeatNanoseconds }) ?? true
            {
                control.append(negativeAcknowledgement(&peer, now: now))
            }
            // Nothing is sent again to a peer silent for four heartbeats: the renewal handshake
            // goes out instead, and its answer sends everything unacknowledged at once. (A
            // standby that was gone kept the active member retransmitting thousands of
            // datagrams a second.)
            let due = peer.established ? peer.sender.timedOut(now: now, timeout: configuration.retransmitTimeoutNanoseconds, maximum: 64) : []
            peers.putBack(consume peer, forKey: member)
            transmit(due, control: control, to: member, into: &actions)
        }
        return actions
    }

    /// Whether records from `peer` are known to be missing (a gap not yet repaired), and since when.
    public func missingSince(from peer: ClusterMemberID) -> Timestamp? { peers[peer]?.receiver.gapSince }

    /// When ``tick(now:)`` next has something to do, given that it last ran at `lastTick`: the
    /// earliest heartbeat, delayed acknowledgement, retransmission, repeated negative
    /// acknowledgement, handshake or silence check among the peers. An event loop sleeps until
    /// then (or until a datagram arrives) instead of polling.
    public func nextDeadline(after lastTick: Timestamp) -> Timestamp {
        let interval = configuration.heartbeatIntervalNanoseconds
        var earliest = lastTick.nanoseconds &+ interval
        func consider(_ time: UInt64) { earliest = min(earliest, max(time, lastTick.nanoseconds &+ 1)) }
        if sealer.previousKey != nil, let deadline = previousKeyDeadline { consider(deadline.nanoseconds) }
        for peer in peers.values {
            // Heartbeats go only to a peer whose incarnation is known; handshakes before.
            if peer.incarnation != nil { consider((peer.lastHeartbeatSent?.nanoseconds ?? 0) &+ interval) }
            if let first = peer.firstUnacknowledged { consider(first.nanoseconds &+ configuration.acknowledgementDelayNanoseconds) }
            if let heard = peer.lastHeard, peer.established { consider(heard.nanoseconds &+ interval &* 4) }
            if peer.incarnation == nil || !peer.established { consider((peer.lastHandshakeSent?.nanoseconds ?? 0) &+ interval) }
            if peer.receiver.hasGap {
                consider((peer.receiver.lastNegativeAcknowledgement?.nanoseconds ?? 0) &+ configuration.negativeAcknowledgementRepeatNanoseconds)
            }
            if peer.established, let oldest = peer.sender.outstanding.lazy.filter({ !$0.selectivelyAcknowledged }).map(\.lastSent.nanoseconds).min() {
                consider(oldest &+ configuration.retransmitTimeoutNanoseconds)
            }
        }
        return Timestamp(nanoseconds: earliest)
    }

    /// Every broken invariant of the reliable streams to and from each peer, described (for the
    /// tests, which run it through lossy, reordering exchanges).
    func invariantViolations() -> [String] {
        peers.keys.flatMap { member in
            let peer = peers[member]!
            return (peer.sender.invariantViolations() + peer.receiver.invariantViolations()).map { "peer \(member.rawValue): \($0)" }
        }
    }

    /// The reliable records from `peer` that arrived early and wait behind a gap, in sequence
    /// order. Not delivered, since what is missing may change what they mean; a standby that
    /// takes over reads the counter checkpoints among them
    /// (``Replica/applyHeldCheckpoints(_:now:)``).
    public func recordsHeldBehindGap(from peer: ClusterMemberID) -> [SyncRecord] {
        guard let receiver = peers[peer]?.receiver else { return [] }
        return receiver.heldInOrder.flatMap { receiver.held[$0] ?? [] }
    }

    /// How long the oldest reliable datagram to `peer` has waited for its acknowledgement: the
    /// replication lag (0 when everything is acknowledged).
    public func replicationLag(to peer: ClusterMemberID, now: Timestamp) -> Duration {
        .nanoseconds(Int64(clamping: replicationLagNanoseconds(to: peer, now: now)))
    }

    /// Whether records sent to `peer` wait for its acknowledgement (a member that handed over
    /// waits until they do not before it exits).
    public func awaitsAcknowledgement(from peer: ClusterMemberID) -> Bool {
        peers[peer]?.sender.outstanding.contains { !$0.selectivelyAcknowledged } ?? false
    }

    func replicationLagNanoseconds(to peer: ClusterMemberID, now: Timestamp) -> UInt64 {
        guard let oldest = peers[peer]?.sender.outstanding.first(where: { !$0.selectivelyAcknowledged }) else { return 0 }
        return now.nanoseconds > oldest.firstSent.nanoseconds ? now.nanoseconds - oldest.firstSent.nanoseconds : 0
    }

    /// When the last datagram from `peer` was accepted.
    public func lastHeard(from peer: ClusterMemberID) -> Timestamp? { peers[peer]?.lastHeard }

    /// The highest epoch `peer` moved to while it ran, over every incarnation this channel
    /// heard: above the epoch of the first authentic datagram of that incarnation, handshakes
    /// included (a peer that cannot finish its handshake still says its epoch in each). A
    /// member's epoch rises while it runs only when it takes over or reasserts
    /// (``rotate(toEpoch:key:)``), so this says that it served, even if nothing else it said
    /// arrived (its hellos lost, or it died before they came). A restart's new epoch is not a
    /// move. Nil if none was seen.
    public func highestEpochMovedTo(by peer: ClusterMemberID) -> UInt32? { peers[peer]?.highestEpochMovedTo }

    /// When this channel took `peer`'s current incarnation (its run since then is the one
    /// heard); nil before any.
    public func incarnationTaken(of peer: ClusterMemberID) -> Timestamp? { peers[peer]?.incarnationTaken }

    /// The epoch in the last data datagram accepted from `peer`.
    public func epoch(of peer: ClusterMemberID) -> UInt32? { peers[peer]?.lastEpoch }

    /// The synch protocol version this member and `peer` speak: the newest both know, version 2
    /// with a peer that announced none (the previous release).
    public func protocolVersion(with peer: ClusterMemberID) -> SyncPeerProtocol {
        peers[peer].map(protocolVersion(of:)) ?? .notHeard
    }

    private func protocolVersion(of peer: Peer) -> SyncPeerProtocol {
        guard peer.lastHeard != nil else { return .notHeard }
        let theirs = peer.protocolVersions ?? SyncProtocolVersion.previousRelease...SyncProtocolVersion.previousRelease
        return SyncPeerProtocol(mine: configuration.protocolVersions, theirs: theirs)
    }

    /// The longest round trip to `peer` measured over the last one to two seconds in which
    /// reliable datagrams went to it (from a datagram's first transmission to its
    /// acknowledgement, delayed acknowledgements included; retransmitted datagrams do not
    /// count); nil before the first. An active member sends it to its standbys beside each
    /// heartbeat (``SyncRecord/synchDelay(roundTrip:)``).
    public func roundTrip(to peer: ClusterMemberID) -> Duration? {
        peers[peer]?.roundTrip.nanoseconds.map { .nanoseconds(Int64(clamping: $0)) }
    }

    /// `records` (unreliable ones), with this member's protocol versions when they carry a hello
    /// and it speaks beyond the previous release.
    private func withProtocolVersions(_ records: [SyncRecord]) -> [SyncRecord] {
        let versions = configuration.protocolVersions
        guard versions.upperBound > SyncProtocolVersion.previousRelease, records.contains(where: { if case .hello = $0 { true } else { false } })
        else { return records }
        return records + [.protocolVersions(oldest: versions.lowerBound, newest: versions.upperBound)]
    }

    /// A peer's announced versions: said when they change, loudly when no version is common.
    private func heardProtocolVersions(_ versions: ClosedRange<UInt8>, from peer: inout Peer, sender: ClusterMemberID) {
        guard peer.protocolVersions != versions else { return }
        peer.protocolVersions = versions
        let mine = configuration.protocolVersions
        let metadata: Logger.Metadata = [
            "peer": "\(sender)", "theirs": "\(versions.lowerBound)...\(versions.upperBound)", "ours": "\(mine.lowerBound)...\(mine.upperBound)",
        ]
        if case .speaking(let newest) = SyncPeerProtocol(mine: mine, theirs: versions) {
            configuration.logger.notice("synch peer's protocol versions", metadata: metadata.merging(["speaking": "\(newest)"]) { $1 })
        } else {
            configuration.logger.error("synch peer speaks no protocol version this member does: upgrade through a release that speaks both", metadata: metadata)
        }
    }

    // MARK: Internals

    /// Packs records into payloads no larger than ``maximumPayload`` (see ``PayloadPacker``).
    private func pack(_ records: [SyncRecord]) throws(SyncChannelError) -> [[UInt8]] {
        var packer = PayloadPacker(maximumPayload: maximumPayload)
        for record in records { try packer.append(record) }
        return packer.payloads()
    }

    /// Sends reliable datagrams again and control records (acknowledgements, negative
    /// acknowledgements, heartbeats) to a peer whose state has already changed. It does not
    /// throw: the caller's state change stands either way, and what fails to go out now is sent
    /// again by a later ``tick(now:)`` (retransmission timer, next heartbeat or acknowledgement).
    private mutating func transmit(
        _ retransmit: [ReliableSender.Outstanding], control: [SyncRecord], to member: ClusterMemberID,
        into actions: inout [SyncChannelAction]
    ) {
        do {
            for entry in retransmit {
                guard let action = try transmit(entry.payload, to: member, reliableSequence: entry.sequence, streamReset: entry.streamReset)
                else { break }
                statistics.retransmissions += 1
                actions.append(action)
            }
            guard !control.isEmpty, peers[member]!.incarnation != nil else { return }
            for payload in try pack(control) {
                if let action = try transmit(payload, to: member, reliableSequence: 0, streamReset: false) { actions.append(action) }
            }
            statistics.recordsSent &+= UInt64(control.count)
        } catch {
            configuration.logger.error(
                "synch datagram not sent; a later tick sends it", metadata: ["peer": "\(member.rawValue)", "reason": "\(error)"])
        }
    }

    /// Seals one datagram to `member`; nil (nothing sent, no packet number used) for data while
    /// the peer's incarnation is unknown, since data keys are bound to it.
    private mutating func transmit(
        _ payload: [UInt8], to member: ClusterMemberID, reliableSequence: UInt64, streamReset: Bool, handshake: Bool = false
    ) throws(SyncChannelError) -> SyncChannelAction? {
        guard let (receiverIncarnation, packetNumber) = peers.withPeer(at: peers.index(forKey: member)!, { $0.nextDatagram(handshake: handshake) }) else {
            return nil
        }
        let header = DatagramHeader(
            flags: (streamReset ? DatagramHeader.streamResetFlag : 0) | (handshake ? DatagramHeader.handshakeFlag : 0),
            clusterID: configuration.clusterID, sender: configuration.member, receiver: member, epoch: configuration.epoch,
            senderIncarnation: configuration.incarnation, packetNumber: packetNumber, reliableSequence: reliableSequence)
        let datagram: [UInt8]
        do {
            datagram = try sealer.seal(header, payload: payload, receiverIncarnation: receiverIncarnation ?? .none)
        } catch {
            throw .security(error)
        }
        statistics.datagramsSent += 1
        return .transmit(to: member, datagram: datagram)
    }
}

/// Packs encoded records, in order, into payloads no larger than a maximum: each record is
/// encoded straight into the current payload, which is cut before it when it does not fit.
///
/// A counter checkpoint record of any length is split at entry boundaries into records that
/// each fill what is left of a payload, so that checkpoints are sized once, by encoding them.
struct PayloadPacker: ~Copyable {
    private let maximumPayload: Int
    private var current: ByteWriter
    private var finished: [[UInt8]] = []
    /// Records appended so far (a checkpoint record split across payloads counts once).
    private(set) var recordCount = 0

    init(maximumPayload: Int) {
        self.maximumPayload = maximumPayload
        current = ByteWriter(capacity: maximumPayload + 64)
    }

    /// Appends one record.
    mutating func append(_ record: SyncRecord) throws(SyncChannelError) {
        guard case .counterCheckpoints(let entries) = record, !entries.isEmpty else {
            try append { (writer: inout ByteWriter) throws(SyncCodecError) in try record.encode(into: &writer) }
            return
        }
        recordCount += 1
        var next = entries.startIndex
        while next < entries.endIndex {
            let after = SyncRecord.encodeCheckpoints(entries, from: next, into: &current, limit: maximumPayload)
            if after > next {
                next = after
            } else {
                // Not even one entry fits what is left: a new payload, unless this one is empty.
                guard current.count > 0 else { throw .codec(.recordTooLarge(maximumPayload)) }
                cut()
            }
        }
    }

    /// Appends the one whole record (type, length and value) that `encode` writes.
    mutating func append(encoding encode: (inout ByteWriter) throws(SyncCodecError) -> Void) throws(SyncChannelError) {
        let start = current.count
        do { try encode(&current) } catch { throw .codec(error) }
        recordCount += 1
        let length = current.count - start
        guard length <= maximumPayload else { throw .codec(.recordTooLarge(length)) }
        if current.count > maximumPayload {
            // The record starts the next payload: moved down in place, not through a copy.
            finished.append(current.bytes(upTo: start))
            current.removeFirst(start)
        }
    }

    /// The payloads, the last one included.
    consuming func payloads() -> [[UInt8]] {
        if current.count > 0 { finished.append(current.bytes) }
        return finished
    }

    private mutating func cut() {
        finished.append(current.bytes)
        current.truncate(to: 0)
    }
}
