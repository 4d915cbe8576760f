/// How a member that takes over tells one IKE SA's state apart (RFC 6027 section 3.3, the
/// design's "Failover").
public enum IKESAClassification: Sendable, Hashable {
    /// Nothing was in flight and no synch message is known to be missing: the replicated
    /// message IDs are exact.
    case certain
    /// An exchange was under way when the active member failed.
    case inFlight
    /// The replica knows it may have missed synch messages that concern this SA.
    case suspect
}

/// What the standby knows of a Child SA's last counter checkpoint.
public struct ChildSAFreshness: Sendable, Hashable {
    /// When the last checkpoint (or the Child SA itself) arrived.
    public var lastCheckpoint: Timestamp
    /// The packet rate measured by the active member at that checkpoint; nil when unknown.
    public var packetsPerSecond: UInt64?

    /// Freshness from its parts.
    public init(lastCheckpoint: Timestamp, packetsPerSecond: UInt64?) {
        self.lastCheckpoint = lastCheckpoint
        self.packetsPerSecond = packetsPerSecond
    }
}

/// How the planner sizes the jumps of a takeover.
public struct TakeoverPolicy: Sendable, Hashable {
    /// The least any outbound counter or inbound window moves (at least the checkpoint
    /// policy's packet count: that many may have gone out after the last checkpoint).
    public var minimumAdvance: UInt64
    /// Added to the time since the last checkpoint's arrival when the synch channel's delay
    /// is not known (see ``measuredMarginFloor``): the checkpoint's making and transit, which
    /// the failed member spent sending beyond the checkpoint. (The time from the arrival to
    /// the takeover, the failure's detection included, is the checkpoint's age itself.)
    public var stalenessMargin: Duration
    /// With the synch channel's delay measured (the failed member's round trip to this one,
    /// ``TakeoverPlanner/plan(state:inFlight:suspect:policy:now:restrictedTo:completeAsOf:synchDelay:)``),
    /// the margin is that delay, at least this floor, in place of ``stalenessMargin`` (default
    /// 2 ms; nil: always ``stalenessMargin``). A round trip bounds the one-way transit of a
    /// checkpoint: the acknowledgement left after the checkpoint arrived. A conservative window's
    /// advance drops the peer's packets for rate x margin, so a measured margin of a few
    /// milliseconds instead of 200 ms lets a peer that ignores RFC 6311's replay-counter
    /// sync through that much sooner.
    public var measuredMarginFloor: Duration?
    /// The most packets one Child SA can send a second (default 15,000,000: 10 Gb/s of the
    /// smallest packets; nil: trust the measured rates). The outbound counter, and with RFC
    /// 6311 the peer's counters, move at least this rate times the time the standby cannot
    /// account for. A checkpoint's rate only says what the SA did then: a burst while synch
    /// messages were lost reused sequence numbers, and with them ESP IVs (review M3). Moving
    /// an outbound counter far costs only sequence numbers; the conservative inbound window,
    /// whose advance drops the peer's packets, keeps the measured rate.
    public var maximumPacketsPerSecond: UInt64?
    /// Suspect SAs, and SAs whose rate is unknown, take this many times the advance.
    public var suspectFactor: UInt64
    /// The advance when nothing is known (RFC 6311 section 5.2: "a very large number, e.g. 2^30").
    public var unknownAdvance: UInt64
    /// How inbound windows are rebuilt.
    public var inbound: InboundTakeoverPolicy
    /// Added to every outbound advance, and to the jump asked of the peer by an RFC 6311
    /// replay-counter sync (not to a conservative window's advance, which drops the peer's
    /// packets): a member's own offset, so that two members taking over from the same copy
    /// (a split brain, or two standbys that both found the active member dead) send, and
    /// accept, different sequence numbers until one of them has seen this many.
    /// `ClusterMember` sets it from the member's rank.
    public var outboundOffset: UInt64 = 0

    /// The largest outbound advance an ESN peer follows: its receiver infers a packet's high
    /// 32 bits from its window (RFC 4303, Appendix A2.2) and takes a number 2^32 less the
    /// window or more above its top for an older one, whose ICV fails. A Child SA with ESN
    /// whose advance is larger is rekeyed instead: 2^32 - 2^24 leaves 2^24 for the peer's
    /// window and for packets lost before the takeover, above a blind takeover's largest
    /// advance (about 3 x 2^30). Counted with every jump the counter made before (`lastSent`
    /// less the packets sent): the peer may have seen none of them. Without ESN the 32-bit
    /// hard limit bounds it.
    public static let maximumExtendedSequenceNumberAdvance: UInt64 = (1 << 32) - (1 << 24)

    /// Whether a peer still follows a Child SA whose outbound counter, at `lastSent` after
    /// `packetsSent` packets, moves on by `advance` without the peer seeing the jump: always
    /// without ESN (the hard limit bounds it), else when every jump the counter made, this one
    /// included, stays within ``maximumExtendedSequenceNumberAdvance``. The takeover planner and
    /// a reassertion after a split brain ask it.
    static func peerFollows(advance: UInt64, lastSent: UInt64, packetsSent: UInt64, extendedSequenceNumbers: Bool) -> Bool {
        guard extendedSequenceNumbers else { return true }
        let (unseen, overflow) = advance.addingReportingOverflow(lastSent - min(packetsSent, lastSent))
        return !overflow && unseen <= maximumExtendedSequenceNumberAdvance
    }

    /// A policy; by default an advance of at least 4,096 (the default checkpoint packet count),
    /// 200 ms of staleness margin (the measured synch delay, at least 2 ms, where the channel
    /// measured it), at least 15,000,000 packets a second of the time
    /// unaccounted for outbound, 4 times for suspect SAs, 2^30 when nothing is known, and the
    /// conservative inbound policy.
    public init(
        minimumAdvance: UInt64 = 4_096, stalenessMargin: Duration = .milliseconds(200), maximumPacketsPerSecond: UInt64? = 15_000_000,
        suspectFactor: UInt64 = 4, unknownAdvance: UInt64 = 1 << 30, inbound: InboundTakeoverPolicy = .conservative,
        measuredMarginFloor: Duration? = .milliseconds(2)
    ) {
        self.measuredMarginFloor = measuredMarginFloor
        self.minimumAdvance = max(minimumAdvance, 1)
        self.stalenessMargin = stalenessMargin
        self.maximumPacketsPerSecond = maximumPacketsPerSecond
        self.suspectFactor = max(suspectFactor, 1)
        self.unknownAdvance = max(unknownAdvance, minimumAdvance)
        self.inbound = inbound
    }
}

extension TakeoverPolicy {
    /// The staleness margin in force: with `synchDelay` measured and ``measuredMarginFloor``
    /// set, the larger of the two; ``stalenessMargin`` otherwise.
    public func stalenessMargin(synchDelay: Duration?) -> Duration {
        guard let floor = measuredMarginFloor, let synchDelay else { return stalenessMargin }
        return max(floor, synchDelay)
    }
}

/// How a takeover rebuilds inbound replay windows.
public enum InboundTakeoverPolicy: Sendable, Hashable {
    /// Everything up to the checkpoint plus the advance counts as seen. Safe without the peer.
    case conservative
    /// Ask the peer (RFC 6311 IPSEC_REPLAY_COUNTER_SYNC) to jump its counters by the advance
    /// where the IKE SA negotiated it; conservative elsewhere.
    case replayCounterSyncWhereNegotiated
    /// **Unsafe**: resume at the checkpoint with nothing seen below it; replays inside the
    /// window are accepted once.
    case permissiveUnsafe
}

/// The outbound part of a Child SA's takeover.
public enum OutboundTakeover: Sendable, Hashable {
    /// Continue after `lastSent`: the next packet carries `lastSent + 1`.
    case resume(lastSent: UInt64)
    /// The advance would pass the counter's limit: do not send on this SA, rekey it.
    case rekey
}

/// The inbound part of a Child SA's takeover: the restore policy for its window, or a rekey.
public enum InboundTakeover: Sendable, Hashable {
    /// Restore the window from the checkpoint with this policy.
    case restore(ReplayWindowRestorePolicy)
    /// The window cannot move that far (beyond the sequence space): rekey the SA.
    case rekey
}

/// What to do with one Child SA on takeover, and why.
public struct ChildSATakeover: Sendable, Hashable {
    /// The Child SA.
    public var inboundSPI: UInt32
    /// Its IKE SA.
    public var parent: IKESAIdentifier
    /// The outbound counter.
    public var outbound: OutboundTakeover
    /// The inbound window.
    public var inbound: InboundTakeover
    /// How far the outbound counter moves beyond the checkpoint (``TakeoverPolicy/outboundOffset``
    /// included). The inbound window carries its own advance, or the delta asked of the peer
    /// with RFC 6311.
    public var advance: UInt64
    /// The reasoning, for the operator (``ChildSATakeoverReason/description`` reads it out).
    public var reason: ChildSATakeoverReason
}

/// Why a Child SA's counters move as they do: the facts the advance was computed from.
public struct ChildSATakeoverReason: Sendable, Hashable, CustomStringConvertible {
    /// How old the last checkpoint was at takeover (nil: no checkpoint known).
    public var checkpointAge: Duration?
    /// The packet rate measured at the last checkpoint (nil: unknown, so the large jump).
    public var packetsPerSecond: UInt64?
    /// Whether synch messages about its IKE SA may have been missed (the advance is multiplied).
    public var suspect: Bool
    /// The advance would pass the outbound counter's limit.
    public var outboundLimitReached: Bool
    /// The advance would pass the inbound sequence space.
    public var inboundLimitReached: Bool

    public var description: String {
        var text: String
        if let rate = packetsPerSecond, let age = checkpointAge {
            text = "checkpoint \(age.nonNegativeNanoseconds / 1_000_000) ms old at \(rate) packets/s"
        } else {
            text = "no measured rate: the large jump of RFC 6311 section 5.2"
        }
        if suspect { text += "; synch messages may have been missed" }
        if outboundLimitReached { text += "; outbound counter would pass its limit: rekey" }
        if inboundLimitReached { text += "; inbound window would pass the sequence space: rekey" }
        return text
    }
}

/// What to do with one IKE SA's message IDs on takeover.
public enum MessageIDTakeover: Sendable, Hashable {
    /// The replicated values are exact: continue with them.
    case exact(nextRequestID: UInt64, nextExpectedRequestID: UInt64)
    /// Run an RFC 6311 message-ID sync proposing these values (M1 above anything possibly used,
    /// by at least the peer's window; P1 the next request expected), optionally with a
    /// replay-counter delta for the Child SAs.
    case messageIDSync(send: UInt32, receive: UInt32, replayCounterDelta: UInt64?)
    /// Without RFC 6311: keep the replicated values and let the peer's retransmission of its
    /// in-flight request come in (we hold the state from before it).
    case awaitPeerRetransmission(nextRequestID: UInt64, nextExpectedRequestID: UInt64)
    /// Without RFC 6311 and with our own request possibly lost: the IKE SA cannot continue
    /// reliably; delete it and establish a new one.
    case deleteAndReestablish
}

/// What to do with one IKE SA on takeover, and why.
public struct IKESATakeover: Sendable, Hashable {
    /// The IKE SA.
    public var identifier: IKESAIdentifier
    /// How it was classified.
    public var classification: IKESAClassification
    /// Its message IDs.
    public var messageIDs: MessageIDTakeover
    /// The reasoning, for the operator.
    public var reason: IKESATakeoverReason
    /// Set when this IKE SA came from a rekey of the named one (still held) that the peer has
    /// not used yet: the failed member may have died before its answer left, and an RFC 6311
    /// sync on the old IKE SA tells the peer to stop waiting for it, so the peer may never
    /// learn of this one. Probe it (a liveness check, or the message-ID sync this plan asks
    /// for); answered, the peer has it and is done with the old one, whose Delete may have
    /// died with the failed member: delete the old IKE SA. Unanswered after the peer's
    /// retransmission time, ``GatewayState/undoIKESARekey(_:)`` moves the Child SAs back.
    public var unconfirmedRekey: IKESAIdentifier?

    /// A decision for one IKE SA.
    public init(
        identifier: IKESAIdentifier, classification: IKESAClassification, messageIDs: MessageIDTakeover, reason: IKESATakeoverReason,
        unconfirmedRekey: IKESAIdentifier? = nil
    ) {
        self.identifier = identifier
        self.classification = classification
        self.messageIDs = messageIDs
        self.reason = reason
        self.unconfirmedRekey = unconfirmedRekey
    }
}

/// Why an IKE SA's message IDs are handled as they are.
public enum IKESATakeoverReason: Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Nothing in flight, nothing missed: the replicated values are exact.
    case nothingInFlightNothingMissed
    /// An exchange was in flight; the peer negotiated RFC 6311.
    case exchangeInFlightSync
    /// Synch messages may have been missed; the peer negotiated RFC 6311.
    case missedSynchSync
    /// Nothing in flight, nothing missed, but the inbound windows were rebuilt for an RFC 6311
    /// replay-counter jump: a message-ID sync (at the exact values) carries it to the peer.
    case replayCounterSyncOnly
    /// The peer's request was in flight and there is no RFC 6311: its retransmission is
    /// answered from the replicated state.
    case peerRequestInFlight
    /// Our own request was in flight and there is no RFC 6311: its response cannot be matched.
    case ownRequestInFlight
    /// Synch messages may have been missed and there is no RFC 6311.
    case missedSynchWithoutSync
    /// The message-ID space is used up.
    case messageIDsExhausted

    public var description: String {
        switch self {
        case .nothingInFlightNothingMissed: "nothing in flight, nothing missed: message IDs exact"
        case .exchangeInFlightSync: "exchange in flight: RFC 6311 message-ID sync"
        case .missedSynchSync: "synch messages may have been missed: RFC 6311 message-ID sync"
        case .replayCounterSyncOnly: "nothing in flight, nothing missed: RFC 6311 message-ID sync carrying the replay-counter jump"
        case .peerRequestInFlight: "peer's request in flight, no RFC 6311: its retransmission is answered from the replicated state"
        case .ownRequestInFlight: "own request in flight, no RFC 6311: delete and re-establish"
        case .missedSynchWithoutSync: "synch messages may have been missed, no RFC 6311: delete and re-establish"
        case .messageIDsExhausted: "message IDs exhausted: delete and re-establish"
        }
    }
}

/// A whole takeover: one decision per IKE SA and per Child SA, computed in one pass.
public struct TakeoverPlan: Sendable, Hashable {
    /// One per IKE SA, in no particular order.
    public var ikeSAs: [IKESATakeover]
    /// One per Child SA, in no particular order.
    public var childSAs: [ChildSATakeover]
    /// This member's clock minus the failed member's, in nanoseconds, when known (a replica
    /// measures it from the heartbeats). The replicated lifetimes count in the failed member's
    /// clock; ``GatewayState/applyTakeover(_:)`` moves them onto this member's, so that hard
    /// lifetimes mean the same here (review L9).
    public var clockOffset: Int64?
    /// The staleness margin the plan added to every checkpoint's age: the measured synch delay
    /// or the configured margin (``TakeoverPolicy/stalenessMargin(synchDelay:)``).
    public var stalenessMargin: Duration

    /// A plan from its decisions.
    public init(ikeSAs: [IKESATakeover], childSAs: [ChildSATakeover], clockOffset: Int64? = nil, stalenessMargin: Duration = .zero) {
        self.ikeSAs = ikeSAs
        self.childSAs = childSAs
        self.clockOffset = clockOffset
        self.stalenessMargin = stalenessMargin
    }
}
