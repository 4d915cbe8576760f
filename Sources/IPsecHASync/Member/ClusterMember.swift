public import IPsecHACore

/// What a change made through ``ClusterMember/update(now:_:)`` is known by: the member gives it
/// back as ``ClusterMemberAction/released(_:)`` once every standby holds the change, so that
/// what depends on it (an IKE reply) may leave.
public struct ReplicationToken: Sendable, Hashable, CustomStringConvertible {
    /// Tokens count up from 1 in one member's run.
    public let value: UInt64

    public var description: String { "token \(value)" }
}

/// What an embedder does next for its ``ClusterMember``, in order.
public enum ClusterMemberAction: Sendable, Hashable {
    /// Send `datagram` to `peer` on the synch transport.
    case transmit(to: ClusterMemberID, datagram: [UInt8])
    /// Every standby holds the change behind this token (or none could be waited for): what
    /// depends on it may leave.
    case released(ReplicationToken)
    /// This standby holds a complete copy of the active member's state: it can take over.
    case becameReady
    /// The active member checkpointed these Child SAs' counters and sent them to the standbys
    /// (for logs and metrics; nothing to do).
    case countersCheckpointed([CounterCheckpointEntry])
    /// This member took over: the plan is applied (outbound counters advanced, inbound windows
    /// rebuilt, lifetimes on this member's clock; the Child SAs in `rekey` can neither send nor
    /// accept until rekeyed). Without a complete copy from the active member (a member that
    /// stepped down and was told to take over before it was resynced) the plan is made from the
    /// state this member served before, every IKE SA suspect. Start serving IKE and ESP, and carry out the plan's message-ID
    /// decisions with the peers (RFC 6311).
    case tookOver(TakeoverPlan, rekey: [UInt32])
    /// This member stopped serving: it is a standby now and resyncs from the active member
    /// (once one says so, after an external step-down).
    case steppedDown(StepDownReason)
    /// The active member fell silent but keepalived has not given this host the address
    /// (``ClusterMemberConfiguration/followsVRRP``): this standby does not take over. Once per
    /// silence.
    case heldBack(String)
    /// Load sharing: this member serves `segment` from now on, the IKE SAs and Child SAs of
    /// it adopted from its replica of `previousOwner` (nil: nobody, or this member itself
    /// after a lapse of its lease; nothing adopted) with `plan`, after a failure or a handover
    /// (`handedOver`): carry out its message-ID decisions with the peers as after a takeover.
    /// The Child SAs in `rekey` could not move on and were not adopted. When `previousOwner`
    /// is nil or this member and `handedOver` is false, `plan` concerns SAs of the segment this
    /// member held already: from an earlier ownership of the segment (nobody's now), or its own
    /// after a lapse of its lease during which a peer restarted. Another member may have served
    /// them meanwhile, so `plan` moves them as a blind takeover does (the Child SAs in `rekey`
    /// stay, unusable until rekeyed).
    case segmentStarted(Segment, previousOwner: ClusterMemberID?, handedOver: Bool, plan: TakeoverPlan, rekey: [UInt32])
    /// Load sharing: this member must not send or answer on `segment`'s SAs any more (its
    /// lease lapsed, or the segment went to another member).
    case segmentStopped(Segment)
    /// A member that had been active too (a split brain that healed) stepped down: this one
    /// moved every outbound counter on by `jump` past anything that member could have used,
    /// and moved to a newer epoch. The Child SAs in `rekey` could not move that far (32-bit
    /// counters near their end) and were deleted.
    case reasserted(jump: UInt64, rekey: [UInt32])
    /// An IKE or ESP datagram another member received on the cluster address and relayed to
    /// this one, the active member (``ClusterMember/relay(_:to:now:)``): take it as if it had arrived here.
    /// Only on an active member; a standby drops relayed datagrams.
    case relayed(RelayedDatagram)
}

/// Why a ``ClusterMember`` stopped serving.
public enum StepDownReason: Sendable, Hashable {
    /// Another member is active with a newer epoch (a split brain that healed).
    case newerActive(ClusterMemberID, epoch: UInt32)
    /// This member took over without a complete copy, and another is active with one (a
    /// partition healed after a last-resort takeover): completeness wins over epochs.
    case activeWithCompleteCopy(ClusterMemberID)
    /// keepalived or an operator said so (``ClusterMemberSignal``).
    case external(String)
}

/// Whether a member may be given the cluster address, as its readiness check tells keepalived
/// (``ClusterMember/readiness``): only a member that holds the whole state should serve it.
public enum ClusterMemberReadiness: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// It serves (the active member, or a load-sharing member), or took over and waits for
    /// the other members it hears to acknowledge that it did
    /// (``ClusterMemberAction/tookOver(_:rekey:)`` comes then).
    case active
    /// A standby with a complete copy of the active member's state.
    case completeCopy = "complete-copy"
    /// A standby without a complete copy, but no member has said it is active or a ready
    /// standby for ``ClusterMemberConfiguration/lastResortTakeover`` and none with a lower ID
    /// is heard: serving what it holds is better than nobody serving (every member restarted,
    /// or the active member died while the only standby was resyncing).
    case lastResort = "last-resort"
    /// A standby receiving a bulk resync: electing it would lose what it lacks.
    case resyncing
    /// A standby without a complete copy and not receiving one: just started, stepped down
    /// from the active role, cut off from the active member, or holding a copy of a member
    /// that says it stepped down (another serves beyond it); or a complete copy that lost
    /// the active member and another member it heard at about the same time (a partition
    /// around it: the other may have taken over unseen, and this copy would resume below it).
    case incomplete

    /// Whether keepalived may elect it (its track file holds 0).
    public var isElectable: Bool {
        switch self {
        case .active, .completeCopy, .lastResort: true
        case .resyncing, .incomplete: false
        }
    }

    public var description: String { rawValue }
}

/// A decision from outside the synch channel, for ``ClusterMember/signal(_:now:)``.
public enum ClusterMemberSignal: Sendable, Hashable {
    /// keepalived's state for this host's VRRP instance (its notify FIFO): MASTER takes over,
    /// BACKUP, FAULT and STOP step an active member down (``VRRPFollower``'s rule).
    case vrrp(VRRPState)
    /// An operator makes this standby active now, whether or not its copy is complete.
    case takeOver(reason: String)
    /// An operator makes this active member stop serving and rejoin as a standby.
    case stepDown(reason: String)
}

/// How a ``ClusterMember`` runs.
public struct ClusterMemberConfiguration: Sendable {
    /// The synch channel: this member, its peers, the cluster key.
    public var channel: SyncChannelConfiguration
    /// The member that is active at the start; this one when it names this member.
    public var activeMember: ClusterMemberID
    /// When the active member checkpoints counters.
    public var checkpoints = CounterCheckpointPolicy()
    /// How a takeover advances counters and rebuilds windows.
    public var takeover = TakeoverPolicy()
    /// How often a standby that is not ready says hello, and an active member says who it is.
    public var helloInterval: Duration = .milliseconds(200)
    /// Heartbeat intervals of silence before a ready standby declares the active member failed.
    public var missCount: UInt64 = 3
    /// A change's token is released at the latest this long after the change (nil: never
    /// without the standbys), so that a standby that heartbeats but never acknowledges cannot
    /// hold the IKE SAs for good.
    public var releaseDeadline: Duration? = .seconds(2)
    /// Whether keepalived (VRRP) decides who is active: a standby then takes over on
    /// ``ClusterMemberSignal/vrrp(_:)`` MASTER only, and a silent active member alone yields
    /// ``ClusterMemberAction/heldBack(_:)``. Without it the failure detector decides: the lowest
    /// ready standby that is heard takes over.
    public var followsVRRP = false
    /// A standby that is not a complete copy takes over with what it holds (perhaps nothing)
    /// once no member has said it is active, and nothing came from the active member, for this
    /// long, and no member with a lower ID is heard (it takes over instead): the way back to
    /// service after every member restarted, or after the active member died while the only
    /// standby was resyncing. Its hellos say its copy is incomplete, so that a member with a
    /// complete copy wins over it if a partition was the cause (`ClusterRole`). With
    /// ``followsVRRP`` keepalived decides: the member then only says it is electable
    /// (``ClusterMember/readiness`` is ``ClusterMemberReadiness/lastResort``). Not in load
    /// sharing. Nil: wait for an operator.
    public var lastResortTakeover: Duration? = .seconds(1)
    /// Members (this one included) a standby must count as heard, the failed one aside, before
    /// it takes over: by default a majority of all the members with three or more, 1 with two
    /// (two members cannot tell a partition from a crash; keepalived decides there, or a
    /// split brain is possible). A standby cut off with a minority does not take over, so that
    /// no member serves from a copy that misses what another, cut off elsewhere, did (the
    /// torture run found a lone standby taking over in a partition, dying, and the next
    /// standby taking over from an older copy that had never seen the peer's packets the first
    /// accepted: replays went through). Not with ``followsVRRP`` (keepalived decides).
    public var takeoverQuorum: Int?
    /// Load sharing (design, "Load sharing"): every member serves the segments
    /// `SegmentOwnership` gives it, replicates its own SAs to every other member, holds a
    /// replica of each of theirs, and takes or hands over segments with their SAs
    /// (``ClusterMemberAction/segmentStarted(_:previousOwner:handedOver:plan:rekey:)``). Its
    /// `member` must be the channel's; ``activeMember``, the failure detector and
    /// ``followsVRRP`` do not apply. Nil: one active member and standbys.
    public var loadSharing: SegmentOwnershipConfiguration?

    /// A configuration for the channel, with `activeMember` active at the start.
    public init(channel: SyncChannelConfiguration, activeMember: ClusterMemberID) {
        self.channel = channel
        self.activeMember = activeMember
    }
}

/// Why ``ClusterMember`` refused a call. A struct over a private reason, as swift-nio-ssh's
/// errors are, so that a later release can add reasons without breaking anybody's `switch`:
/// compare with the static members (`catch ClusterMemberError.notActive`, `==`).
public struct ClusterMemberError: Error, Sendable, Hashable, CustomStringConvertible {
    private enum Reason: Sendable, Hashable {
        case notActive
        case state(GatewayStateError)
        case noCurrentStandby(ClusterMemberID?)
        case peersOnTheCurrentKey([ClusterMemberID])
        case channel(SyncChannelError)
        case dataPlane(DataPlaneError)
    }
    private let reason: Reason

    /// Only the active member changes the state; a standby's comes from it.
    public static let notActive = ClusterMemberError(reason: .notActive)

    /// A switchover needs a standby that holds everything replicated so far and is heard
    /// (``StandbyStatus/current``): this one (nil: none) is not.
    public static func noCurrentStandby(_ standby: ClusterMemberID?) -> ClusterMemberError { ClusterMemberError(reason: .noCurrentStandby(standby)) }

    /// A key rotation on the active member while these standbys are still heard under the
    /// current key: rotate them first (the active member's datagrams under a key they lack
    /// would look like its failure to them).
    public static func peersOnTheCurrentKey(_ peers: [ClusterMemberID]) -> ClusterMemberError { ClusterMemberError(reason: .peersOnTheCurrentKey(peers)) }

    /// The synch channel refused (a key rotation without a key: insecure mode).
    public static func channel(_ error: SyncChannelError) -> ClusterMemberError { ClusterMemberError(reason: .channel(error)) }

    /// The data plane could not stop for a switchover; it serves on, and so does this member.
    public static func dataPlane(_ error: DataPlaneError) -> ClusterMemberError { ClusterMemberError(reason: .dataPlane(error)) }

    /// The change itself failed (what it changed before failing was replicated).
    public static func state(_ error: GatewayStateError) -> ClusterMemberError { ClusterMemberError(reason: .state(error)) }

    /// The state's own error, when the change itself failed.
    public var stateError: GatewayStateError? { if case .state(let error) = reason { error } else { nil } }

    public var description: String {
        switch reason {
        case .notActive: "not the active member: a standby's state comes from the active member"
        case .state(let error): "the change failed: \(error)"
        case .noCurrentStandby(let standby?): "member \(standby.rawValue) is not a current standby: no switchover"
        case .noCurrentStandby(nil): "no standby is current: no switchover"
        case .peersOnTheCurrentKey(let peers):
            "member(s) \(peers.map { "\($0.rawValue)" }.joined(separator: ", ")) still seal under the current key: rotate the standbys first"
        case .channel(let error): "the synch channel refused: \(error)"
        case .dataPlane(let error): "the data plane could not stop for the switchover: \(error)"
        }
    }
}

/// One cluster member as one sans-I/O state machine: it owns the synch channel, the replicator
/// (active) or the replica (standby), the role and its failure detection, the counter
/// checkpoints and the keepalived follower, and routes what each says to the others. The
/// embedder feeds it datagrams (``receive(_:now:)``), the time (``tick(now:)``), state changes
/// (``update(now:_:)``) and external decisions (``signal(_:now:)``); it drains ``nextAction()``
/// after each call and sleeps until ``nextDeadline`` or the next datagram. Two roles: active
/// (serves, replicates, checkpoints) and standby (applies, and takes over when the active
/// member falls silent). The parts below it stay public for embedders that need another
/// arrangement.
public struct ClusterMember {
    /// What an active member owns.
    struct Active {
        var replicator: Replicator
        var state: GatewayState
        var lastHello: Timestamp?
        /// When the Child SAs were last scanned for due checkpoints.
        var lastCheckpointScan: Timestamp?
        /// A takeover the members heard at the time do not all know of yet: it serves only
        /// once they do (``ClusterMember/announcementDone(_:now:)``).
        var announcement: Announcement?
    }

    /// A takeover held back until the members this one heard when it took over hold the hello
    /// that says so, reliably sent: a standby that does not know of it still holds itself a
    /// complete copy of the failed member, and keepalived may elect it next (after this one
    /// dies, or is moved off) to resume below what this one sent, and to accept replays of what
    /// it accepted (torture seeds 2237 and 4594: the hello lost; 3817: 200 ms late).
    struct Announcement {
        var plan: TakeoverPlan
        var rekey: [UInt32]
        /// One per member told, for its acknowledgement.
        var tickets: [SyncTicket]
        /// It serves then all the same: a member that has not acknowledged by then is cut off.
        var deadline: Timestamp
    }

    /// What a standby owns.
    struct Standby {
        /// Nil after an external step-down, until an active member says hello.
        var active: ClusterMemberID?
        /// The epoch `active` last said hello at: a newer one means it served from another
        /// member's state meanwhile.
        var activeEpoch: UInt32?
        /// The highest epoch in the headers of the datagrams from `active` whose records went
        /// into the copy: with `activeEpoch`, the epoch the copy is of (a restart of `active`
        /// comes back at any epoch, and its records do not reach the copy).
        var copyEpoch: UInt32 = 0
        /// `activeEpoch` when this standby last said it stepped down: the active member's
        /// next epoch is then the reassertion that asked for, not a takeover.
        var reassertionAskedAt: UInt32?
        var replica = Replica()
        var lastHello: Timestamp?
        /// Whether it said ``ClusterMemberAction/becameReady`` since it last became a standby.
        var ready = false
        /// The state this member served before it stepped down, until it is a ready standby
        /// again: what it takes over from if told to before then. While it is set, the hellos
        /// say the member stepped down, since it may have sent on SAs the active member holds.
        var former: GatewayState?
        /// When it stopped serving `former` (it knows those counters exactly up to then).
        var formerAsOf: Timestamp?
        /// The active member started again (a new incarnation on the channel) after this
        /// standby had a complete copy: its state is gone, whatever it says now.
        var activeRestarted = false
        /// Another standby whose claim to the active role this one agreed to while following
        /// `active`: it may have taken over from its own copy, moved every counter by up to the
        /// unknown advance, and died before this standby heard from it.
        var agreedTo: ClusterMemberID?
        /// When this standby found the active member failed (for ``ClusterMember/takeoverStagger``).
        var failureNoticedAt: Timestamp?
        /// Its claim to the active role (with a quorum of three or more): the epoch it claims,
        /// when it asked, and who agreed.
        var claim: (epoch: UInt32, since: Timestamp, acks: Set<ClusterMemberID>)?
        /// The member this one handed the active role to (``ClusterMember/switchOver(to:now:)``):
        /// it sent nothing after the final state that member holds, so its hellos do not say it
        /// stepped down (which would make the new active member jump its counters).
        var handedOverTo: ClusterMemberID?
    }

    /// What a load-sharing member owns.
    struct Sharing {
        /// Its own SAs: those of the segments it serves, and, until the new owner holds them,
        /// those of segments it lost.
        var state: GatewayState
        var replicator: Replicator
        /// A copy of every other member's own state.
        var replicas: [ClusterMemberID: Replica]
        /// Made at the first tick (its start time counts for the startup silence).
        var ownership: SegmentOwnership?
        var lastHello: [ClusterMemberID: Timestamp] = [:]
        var streamResets: UInt64 = 0
        /// Segments started whose SAs are still to be adopted from the previous owner's
        /// replica, which was not complete yet.
        var pendingAdoptions: [Segment: (previous: ClusterMemberID, handedOver: Bool)] = [:]
        /// When each segment this member stopped serving, and has not served since, stopped:
        /// its own SAs of the segment were exact then.
        var stoppedAt: [Segment: Timestamp] = [:]
        /// The last tick at which this member heard fewer than a quorum: cut off, it saw
        /// nothing of what the others did with a segment meanwhile (its owner resuming it
        /// blind, another member taking it over).
        var lastCutOff: Timestamp?
    }

    enum Lifecycle {
        case standby(Standby)
        case active(Active)
        case sharing(Sharing)
        /// Only while a lifecycle's parts are out being changed, so that none is copied.
        case moving
    }

    /// The configuration it runs with.
    public let configuration: ClusterMemberConfiguration
    /// The synch channel (read its statistics, or ``SyncChannel/isEstablished(with:)``).
    public internal(set) var channel: SyncChannel
    var role: ClusterRole
    var lifecycle: Lifecycle
    var scheduler: CounterCheckpointScheduler
    var vrrp = VRRPFollower()
    /// When this member last stepped down because another was active with a newer epoch.
    var steppedDownAt: Timestamp?
    var lastPromotion: PromotionReason?
    /// Times this member became active by a takeover (a switchover included).
    public internal(set) var promotions = 0
    /// Times this member left the active role.
    public internal(set) var stepDowns = 0
    var held = HeldReplies<ReplicationToken>()
    var outbox: [ClusterMemberAction] = []
    private var outboxHead = 0
    private var nextToken: UInt64 = 1
    var lastTick = Timestamp(nanoseconds: 0)
    /// The first tick, and the last hello of any member saying it is active or a ready standby
    /// (for ``ClusterMemberConfiguration/lastResortTakeover``).
    var firstTick: Timestamp?
    var lastCompleteCopyHeard: Timestamp?
    /// The claim this member agreed to (it claims nothing else, and agrees to no other, until
    /// then).
    var promise: (to: ClusterMemberID, epoch: UInt32, until: Timestamp)?
    var highestEpochHeard: UInt32 = 0
    /// When each other standby last said it is ready (its hellos to the standbys): a ready
    /// standby with a lower ID that is heard is the one to take over.
    var readyStandbys: [ClusterMemberID: Timestamp] = [:]
    /// How far a reassertion moves outbound counters: RFC 6311's "very large number" (2^30,
    /// section 5.2), since nothing says how far the other member went.
    public static let reassertionJump: UInt64 = 1 << 30
    /// The hello capability bit of a ready standby, in the hellos it sends the other standbys.
    public static let readyStandbyCapability: UInt32 = 0x4
    /// How far apart the takeovers of two members put their outbound counters (2^20): two that
    /// take over from the same copy at once send different sequence numbers until one of them
    /// has sent a million packets on a Child SA, by which time a split brain has long healed.
    /// With eight members the largest offset is 7 x 2^20, far inside what ESN inference and
    /// the reassertion jump (2^30) allow.
    public static let takeoverOffsetSpacing: UInt64 = 1 << 20
    /// The hello capability bit of a standby that claims the active role at the hello's epoch
    /// (clusters of three or more): it takes over once a quorum agreed, so that every member
    /// of that quorum knows of the takeover before it happens.
    public static let claimCapability: UInt32 = 0x10
    /// The low bits of an epoch a member takes: its rank among the members by ID (up to 64
    /// members; beyond, ranks share them).
    public static let epochRankMask: UInt32 = 63
    /// The hello capability bit that agrees to the claim at the hello's epoch.
    public static let claimAgreedCapability: UInt32 = 0x20
    /// The hello capability bit of an active member that handed its role over to the hello's
    /// receiver (``switchOver(to:now:)``), after its final state.
    public static let switchOverCapability: UInt32 = 0x40

    /// A member as the configuration says: active, or a standby of the active member.
    public init(configuration: ClusterMemberConfiguration) throws(SyncChannelError) {
        self.configuration = configuration
        channel = try SyncChannel(configuration: configuration.channel)
        let me = configuration.channel.member
        let isActive = configuration.activeMember == me
        role = ClusterRole(
            member: me, epoch: configuration.channel.epoch, isActive: isActive, activeMember: isActive ? nil : configuration.activeMember,
            heartbeatInterval: configuration.channel.heartbeatInterval, missCount: configuration.missCount)
        if configuration.loadSharing != nil {
            lifecycle = .sharing(
                Sharing(
                    state: GatewayState(localMember: me), replicator: Replicator(standbys: configuration.channel.peers),
                    replicas: Dictionary(uniqueKeysWithValues: configuration.channel.peers.map { ($0, Replica()) })))
        } else {
            lifecycle =
                isActive
                ? .active(Active(replicator: Replicator(standbys: configuration.channel.peers), state: GatewayState()))
                : .standby(Standby(active: configuration.activeMember))
        }
        scheduler = CounterCheckpointScheduler(policy: configuration.checkpoints)
    }

    /// Whether this member serves from its own state: the active member, and every member in
    /// load sharing (for the segments it serves).
    ///
    /// A member that took over is active once the members it heard know that it did
    /// (``ClusterMemberAction/tookOver(_:rekey:)`` says so); until then it holds the role, and
    /// keepalived's address, but serves nothing.
    public var isActive: Bool {
        switch lifecycle {
        case .active(let active): active.announcement == nil
        case .sharing: true
        case .standby, .moving: false
        }
    }

    /// Whether this member holds the active role, its takeover announced or not.
    var holdsActiveRole: Bool { if case .active = lifecycle { true } else { false } }

    /// Whether this member can serve: the active member, or a standby that holds a complete
    /// copy of the active member's state.
    public var isReady: Bool {
        switch lifecycle {
        case .active: true
        case .standby(let standby): standby.ready
        case .sharing(let sharing): sharing.replicas.values.allSatisfy(\.isReady)
        case .moving: false
        }
    }

    /// Whether keepalived may give this member the cluster address, as of its last tick: the
    /// readiness check (a `track_file` holding 0 when ``ClusterMemberReadiness/isElectable``,
    /// 1 otherwise, at weight 0) puts a member that is not a complete copy in keepalived's FAULT
    /// state, so that it is never elected while another holds the state whole.
    public var readiness: ClusterMemberReadiness {
        switch lifecycle {
        case .active, .sharing: .active
        case .standby(let standby):
            if standby.ready { isCutOff(standby, now: lastTick) ? .incomplete : .completeCopy }
            else if mayTakeOverAsLastResort(standby, now: lastTick) { .lastResort }
            else if standby.replica.isResyncing { .resyncing }
            else { .incomplete }
        case .moving: .incomplete
        }
    }

    /// Whether this standby is receiving a bulk resync from the active member.
    public var isResyncing: Bool { if case .standby(let standby) = lifecycle { standby.replica.isResyncing } else { false } }

    /// The state this member holds: the one it serves from (active), or its copy (standby).
    public var state: GatewayState {
        switch lifecycle {
        case .active(let active): active.state
        case .standby(let standby): standby.replica.state
        case .sharing(let sharing): sharing.state
        case .moving: GatewayState()
        }
    }

    /// Why this member is active, when it became so by a takeover (nil on a standby, and on a
    /// member configured active).
    public var promotionReason: PromotionReason? { isActive ? lastPromotion : nil }

    /// Tokens released at ``ClusterMemberConfiguration/releaseDeadline`` because the standbys
    /// did not acknowledge in time: replies that left without the standbys holding what they
    /// depend on. Worth a warning each.
    public var tokensReleasedAtDeadline: Int { held.expired }

    /// What this standby's replica counted (nil on the active member).
    public var replicaStatistics: ReplicaStatistics? { if case .standby(let standby) = lifecycle { standby.replica.statistics } else { nil } }

    /// What the active member knows of `standby` (nil on a standby).
    public func status(of standby: ClusterMemberID, now: Timestamp) -> StandbyStatus? {
        switch lifecycle {
        case .active(let active): active.replicator.status(of: standby, channel: channel, now: now)
        case .sharing(let sharing): sharing.replicator.status(of: standby, channel: channel, now: now)
        case .standby, .moving: nil
        }
    }

    /// Load sharing: which member serves which segment, as this member knows it (nil before
    /// the first tick, and without load sharing).
    public var segmentOwnership: SegmentOwnership? { if case .sharing(let sharing) = lifecycle { sharing.ownership } else { nil } }

    /// Load sharing: whether this member serves `segment` at `now` (sends and answers on its SAs).
    public func isServing(_ segment: Segment, now: Timestamp) -> Bool { segmentOwnership?.isServing(segment, now: now) ?? false }

    /// Load sharing: ownership records the channel refused (its buffer to a peer full); each
    /// made the ownership table go again under a newer number.
    public internal(set) var ownershipSendsRefused = 0

    // MARK: Inputs

    /// Takes a datagram from the synch transport.
    public mutating func receive(_ datagram: [UInt8], now: Timestamp) {
        // A load-sharing member that just started stays silent, and answers nothing.
        if isStartupSilent(now: now) { return }
        route(channel.receive(datagram, now: now), now: now)
        release(now: now)
    }

    /// Lets time pass: the channel's timers, checkpoints, hellos, failure detection, and a
    /// takeover when the active member fell silent.
    public mutating func tick(now: Timestamp) {
        lastTick = now
        if firstTick == nil { firstTick = now }
        startOwnership(now: now)
        if isStartupSilent(now: now) { return }
        route(channel.tick(now: now), now: now)
        switch lifecycle {
        case .active: activeTick(now: now)
        case .standby: standbyTick(now: now)
        case .sharing: sharingTick(now: now)
        case .moving: break
        }
        release(now: now)
    }

    /// Changes the state (active member only): `body` makes the change with the state's own
    /// mutations and appends the `StateChange` values they return to `changes`, which go to the
    /// standbys. The token comes back as ``ClusterMemberAction/released(_:)`` once they hold
    /// the change. Throws ``ClusterMemberError/notActive`` on a standby, changing nothing.
    ///
    /// When `body` throws (``ClusterMemberError/state(_:)``), what it changed before is kept
    /// and replicated all the same, so that the standbys never hold less than this member: each
    /// of the state's mutations changes nothing when it throws, so a body of one mutation that
    /// fails changes nothing at all.
    public mutating func update(
        now: Timestamp, _ body: (_ state: inout GatewayState, _ changes: inout [StateChange]) throws(GatewayStateError) -> Void
    ) throws(ClusterMemberError) -> ReplicationToken {
        var failure: GatewayStateError?
        let token = try replicate(now: now) { replicator, state, channel throws(ClusterMemberError) in
            var changes: [StateChange] = []
            do throws(GatewayStateError) { try body(&state, &changes) } catch { failure = error }
            return replicator.replicate(changes, state: state, channel: &channel, now: now)
        }
        if let failure { throw .state(failure) }
        return token
    }

    /// Tells the standbys that an exchange on an IKE SA started (`finished` false: before the
    /// request leaves, or once an authentic new request arrived) or finished (after its changes
    /// went through ``update(now:_:)``), so that a takeover knows what was in flight. The token
    /// is released once they hold it. Throws ``ClusterMemberError/notActive`` on a standby.
    public mutating func replicateExchange(
        of identifier: IKESAIdentifier, messageID: UInt32, initiatedHere: Bool, finished: Bool, now: Timestamp
    ) throws(ClusterMemberError) -> ReplicationToken {
        try replicate(now: now) { replicator, state, channel throws(ClusterMemberError) in
            replicator.replicateExchange(
                of: identifier, messageID: messageID, initiatedHere: initiatedHere, finished: finished, state: state, channel: &channel, now: now)
        }
    }

    /// Runs `body` on the active member's replicator, state and channel (moved out, so that
    /// none is copied) and holds a new token until the standbys acknowledge what it sent.
    private mutating func replicate(
        now: Timestamp,
        _ body: (inout Replicator, inout GatewayState, inout SyncChannel) throws(ClusterMemberError) -> (tickets: [SyncTicket], actions: [SyncChannelAction])
    ) throws(ClusterMemberError) -> ReplicationToken {
        let token = ReplicationToken(value: nextToken)
        try serving { replicator, state, member throws(ClusterMemberError) in
            let sent = try body(&replicator, &state, &member.channel)
            member.nextToken += 1
            member.enqueue(sent.actions)
            let standbys = member.configuration.channel.peers.filter { member.channel.isEstablished(with: $0) }
            let deadline = member.configuration.releaseDeadline.map { now + $0 }
            if let free = member.held.hold(token, tickets: sent.tickets, standbys: standbys, replicator: replicator, deadline: deadline) {
                member.outbox.append(.released(free))
            }
        }
        return token
    }

    /// Runs the packet path on the state (active member only): sequence numbers, replay
    /// checks, SPD cache decisions. Nothing is replicated from here; the counters reach the
    /// standbys with the next checkpoint (``ClusterMemberConfiguration/checkpoints``). Nil on
    /// a standby, which must not send.
    public mutating func packetPath<Result>(_ body: (inout GatewayState) -> Result) -> Result? {
        try? serving { _, state, _ throws(ClusterMemberError) in body(&state) }
    }

    /// Runs `body` on the replicator and the state this member serves from (active, or load
    /// sharing), moved out of the lifecycle so that neither is copied, with the rest of the
    /// member. Throws ``ClusterMemberError/notActive`` on a standby.
    mutating func serving<Result>(
        _ body: (inout Replicator, inout GatewayState, inout ClusterMember) throws(ClusterMemberError) -> Result
    ) throws(ClusterMemberError) -> Result {
        switch lifecycle {
        case .active(var active):
            // A takeover not yet announced serves nothing.
            guard active.announcement == nil else { throw .notActive }
            lifecycle = .moving
            defer { lifecycle = .active(active) }
            return try body(&active.replicator, &active.state, &self)
        case .sharing(var sharing):
            lifecycle = .moving
            defer { lifecycle = .sharing(sharing) }
            return try body(&sharing.replicator, &sharing.state, &self)
        case .standby, .moving:
            throw .notActive
        }
    }

    /// Takes a decision from outside the synch channel: keepalived's VRRP state, or an
    /// operator's. A takeover or a step-down shows as the usual action; a signal that changes
    /// nothing (MASTER on the active member, a step-down on a standby) is ignored.
    public mutating func signal(_ signal: ClusterMemberSignal, now: Timestamp) {
        lastTick = now
        let decision: VRRPFollower.Decision
        // A takeover still announcing holds the role: keepalived's BACKUP must step it down.
        let servesOrAnnounces = holdsActiveRole || isSharing
        switch signal {
        case .vrrp(let state): decision = vrrp.heard(state, isActive: servesOrAnnounces)
        case .takeOver(let reason): decision = servesOrAnnounces ? .stay : .takeOver(.external(reason))
        case .stepDown(let reason): decision = servesOrAnnounces ? .stepDown(reason) : .stay
        }
        switch decision {
        case .takeOver(let reason):
            takeOver(reason: reason, now: now)
        case .stepDown(let reason):
            _ = try? role.stepDown()
            stepDown(.external(reason), following: nil)
        case .stay, .holdBack:
            break
        }
    }

    /// Hands the active role over to `target` (a current standby; nil: the lowest current one)
    /// with exact state, for a planned move (an upgrade, a reboot): this member stops sending
    /// at once, replicates every Child SA whole (exact counters and replay windows), says so
    /// to the target after that (the channel delivers in order), and becomes its standby. The
    /// target takes over with nothing moved: no counter advance, no RFC 6311 sync for IKE SAs
    /// with nothing in flight, no packet of the peer refused. Shows as
    /// ``ClusterMemberAction/steppedDown(_:)`` here and ``ClusterMemberAction/tookOver(_:rekey:)``
    /// there. Returns the target. If the target dies before it took over, the usual failover follows (this member
    /// then takes over from its former state as after a step-down). Throws
    /// ``ClusterMemberError/notActive`` unless active (load sharing moves segments instead), and
    /// ``ClusterMemberError/noCurrentStandby(_:)`` without a current target.
    @discardableResult
    public mutating func switchOver(to target: ClusterMemberID? = nil, now: Timestamp) throws(ClusterMemberError) -> ClusterMemberID {
        lastTick = now
        guard case .active(var active) = lifecycle else { throw .notActive }
        let to = try switchOverTarget(target, of: active, now: now)
        lifecycle = .moving
        var changes: [StateChange] = []
        for spi in active.state.childSAs.map(\.inboundSPI).sorted() { changes += (try? active.state.updateChildSA(inboundSPI: spi) { _ in }) ?? [] }
        enqueue(active.replicator.replicate(changes, state: active.state, channel: &channel, now: now).actions)
        lifecycle = .active(active)
        _ = try? role.stepDown()
        stepDown(.external("planned switchover to member \(to.rawValue)"), following: to, handedOverTo: to)
        say(SyncRecord.hello(epoch: role.epoch, capabilities: Self.switchOverCapability, needsResync: false), to: [to], now: now)
        return to
    }

    /// ``switchOver(to:now:)`` for a member whose data plane keeps its own counters (ESP in the
    /// kernel): the data plane stops first and reports the counters it ended with
    /// (``ClusterDataPlane/stopServingForHandover(_:)``), the member adopts them, and the
    /// handover carries them, so that the target resumes exactly where the kernel stopped
    /// (nothing sent twice, nothing accepted twice). Throws as ``switchOver(to:now:)`` does,
    /// before the data plane stops, and ``ClusterMemberError/dataPlane(_:)`` when it could not
    /// stop (it then serves on, and so does this member). With a data plane on the package's
    /// counters it is ``switchOver(to:now:)``.
    @discardableResult
    public mutating func switchOver<DataPlane: ClusterDataPlane>(
        to target: ClusterMemberID? = nil, dataPlane: inout DataPlane, now: Timestamp
    ) throws(ClusterMemberError) -> ClusterMemberID {
        lastTick = now
        guard case .active(let active) = lifecycle else { throw .notActive }
        let to = try switchOverTarget(target, of: active, now: now)
        let last: [ChildSACounterCheckpoint]
        do { last = try dataPlane.stopServingForHandover(active.state) } catch { throw .dataPlane(error) }
        _ = try observeCounters(last)
        do {
            return try switchOver(to: to, now: now)
        } catch {
            // Checked above, in the same turn: not expected. The data plane resumes from the
            // counters it reported, which the state now holds.
            do { try dataPlane.startServing(state) } catch let failure { throw .dataPlane(failure) }
            throw error
        }
    }

    /// `target` if it is a current standby (nil: the lowest current one).
    private func switchOverTarget(_ target: ClusterMemberID?, of active: Active, now: Timestamp) throws(ClusterMemberError) -> ClusterMemberID {
        let current = configuration.channel.peers.filter { active.replicator.status(of: $0, channel: channel, now: now) == .current }
        guard let to = target ?? current.min(), current.contains(to) else { throw .noCurrentStandby(target) }
        return to
    }

    /// Seals the synch channel under a new cluster key (an operator's rotation: write the new
    /// key on every member, then rotate the standbys, then the active member, within
    /// ``SyncChannelConfiguration/previousKeyGrace`` of the first). A standby rotates at once;
    /// the active member throws ``ClusterMemberError/peersOnTheCurrentKey(_:)``, changing
    /// nothing, while a standby is still heard under the current key (not silent for the miss
    /// count of heartbeats, as the failure detector counts): rotated first, the active member
    /// would fall silent to its standbys, which take that for its failure.
    public mutating func rotateKey(_ key: ChannelKey, now: Timestamp) throws(ClusterMemberError) {
        if case .active = lifecycle {
            let heard = peersHeard(now: now)
            guard heard.isEmpty else { throw .peersOnTheCurrentKey(heard) }
        }
        do { try channel.rotateKey(to: key) } catch { throw .channel(error) }
    }

    /// Relays an IKE or ESP datagram this member received on the cluster address to `peer`,
    /// the active member: after a switchover, until the address moved, the peers still send to
    /// this host, and what it received would be lost (``ClusterMemberAction/relayed(_:)`` on
    /// the other side). Returns false, sending nothing, when `peer` does not speak synch
    /// protocol version 3 (the previous release skips the record), or the channel refused it (a
    /// datagram larger than a synch datagram holds).
    @discardableResult
    public mutating func relay(_ datagram: RelayedDatagram, to peer: ClusterMemberID, now: Timestamp) -> Bool {
        guard case .speaking(let version) = channel.protocolVersion(with: peer), version >= SyncProtocolVersion.relayedDatagrams else { return false }
        guard let sent = try? channel.send([.relayedDatagram(datagram)], to: peer, now: now) else { return false }
        enqueue(sent.actions)
        return true
    }

    /// Adopts counters a data plane keeps itself (``CounterKeeping/dataPlane``), forward only,
    /// so that the next checkpoints carry them (active member only; a standby's come from the
    /// active member). Returns the SPIs it did not adopt: Child SAs this member does not hold
    /// (deleted while the data plane was read) or counters beyond their sequence space.
    @discardableResult
    public mutating func observeCounters(_ observed: [ChildSACounterCheckpoint]) throws(ClusterMemberError) -> [UInt32] {
        try serving { _, state, _ throws(ClusterMemberError) in
            var refused: [UInt32] = []
            for checkpoint in observed {
                do throws(GatewayStateError) { try state.observeCounters(checkpoint) } catch { refused.append(checkpoint.inboundSPI) }
            }
            return refused
        }
    }

    /// How long the counters of a Child SA that carries traffic may go unreported by the data
    /// plane that keeps them (``ClusterDataPlane/counterReportInterval``): packet rates, and the
    /// takeover advances sized from them, are measured over at least this.
    /// ``tick(now:dataPlane:)`` sets it from its data plane; an embedder that calls
    /// ``observeCounters(_:)`` itself sets it.
    public var counterReportInterval: Duration {
        get { scheduler.counterReportInterval }
        set { scheduler.counterReportInterval = newValue }
    }

    /// ``tick(now:)`` for a member whose ESP runs in `dataPlane`: an active member first adopts
    /// the counters the data plane keeps (``CounterKeeping/dataPlane``), so that the checkpoints
    /// this tick sends carry them. Throws the data plane's error, after ticking all the same.
    public mutating func tick<DataPlane: ClusterDataPlane>(now: Timestamp, dataPlane: inout DataPlane) throws(DataPlaneError) {
        var failure: DataPlaneError?
        if isActive, dataPlane.counterKeeping == .dataPlane {
            scheduler.counterReportInterval = dataPlane.counterReportInterval
            do throws(DataPlaneError) {
                let observed = try dataPlane.observedCounters(of: state, now: now)
                _ = try? observeCounters(observed)
            } catch {
                failure = error
            }
        }
        tick(now: now)
        if let failure { throw failure }
    }

    // MARK: Outputs

    /// The next thing to do, oldest first; nil when there is nothing.
    public mutating func nextAction() -> ClusterMemberAction? {
        guard outboxHead < outbox.count else { return nil }
        defer {
            outboxHead += 1
            if outboxHead == outbox.count {
                outbox.removeAll(keepingCapacity: true)
                outboxHead = 0
            }
        }
        return outbox[outboxHead]
    }

    /// Carries out on `dataPlane` what `action` asks of it: serve this member's state after a
    /// takeover or a reassertion (the counters already moved), stop after a step-down. Other
    /// actions ask nothing of it. Call it for each action ``nextAction()`` gives.
    public func drive<DataPlane: ClusterDataPlane>(_ dataPlane: inout DataPlane, for action: ClusterMemberAction) throws(DataPlaneError) {
        switch action {
        case .tookOver, .reasserted: try dataPlane.startServing(state)
        case .steppedDown: dataPlane.stopServing()
        case .transmit, .released, .becameReady, .heldBack, .countersCheckpointed, .segmentStarted, .segmentStopped, .relayed: break
        }
    }

    /// When ``tick(now:)`` next has work, unless a datagram comes first: sleep until then.
    public var nextDeadline: Timestamp {
        var earliest = channel.nextDeadline(after: lastTick).nanoseconds
        let hello = configuration.helloInterval
        switch lifecycle {
        case .active(let active):
            earliest = min(earliest, lastTick.nanoseconds &+ configuration.checkpoints.intervalNanoseconds, ((active.lastHello ?? Timestamp(nanoseconds: 0)) + hello).nanoseconds)
            if configuration.channel.peers.contains(where: active.replicator.isCatchingUp) || held.count > 0 || active.announcement != nil {
                earliest = min(earliest, lastTick.nanoseconds &+ configuration.channel.acknowledgementDelayNanoseconds)
            }
        case .standby(let standby):
            if (!standby.replica.isReady && !standby.replica.isResyncing) || (standby.ready && configuration.channel.peers.count > 1) {
                earliest = min(earliest, ((standby.lastHello ?? Timestamp(nanoseconds: 0)) + hello).nanoseconds)
            }
            // When the active member's silence reaches the miss count; once it has, the tick
            // that saw it decided (took over, held back, or deferred to a lower standby), and
            // the channel's own timers wake this member for what changes that.
            if standby.ready, let active = standby.active, let heard = channel.lastHeard(from: active) {
                let detection = heard.nanoseconds &+ configuration.channel.heartbeatIntervalNanoseconds &* max(configuration.missCount, 1)
                if detection > lastTick.nanoseconds { earliest = min(earliest, detection) }
            }
        case .sharing(let sharing):
            // Beacons, leases and claims run on the ownership's own clock: checked every
            // millisecond; a member in its startup silence sleeps until it ends.
            if let ownership = sharing.ownership,
                lastTick.nanoseconds < ownership.startedAt.nanoseconds &+ ownership.configuration.startupSilenceNanoseconds
            {
                return Timestamp(nanoseconds: ownership.startedAt.nanoseconds &+ ownership.configuration.startupSilenceNanoseconds)
            }
            earliest = min(earliest, lastTick.nanoseconds &+ 1_000_000)
        case .moving:
            break
        }
        return Timestamp(nanoseconds: max(earliest, lastTick.nanoseconds &+ 1))
    }
}
