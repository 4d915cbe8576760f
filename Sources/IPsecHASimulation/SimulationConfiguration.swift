public import IPsecHACore
import IPsecHASync
import IPsecHATestKit

/// What a ``ClusterSimulation`` runs.
public struct SimulationConfiguration: Sendable, Hashable {
    /// The one seed of the run: the same seed gives the same run.
    public var seed: UInt64 = 1
    /// Members: one active, the others standbys.
    public var members = 2
    /// IKE SAs established before the run starts.
    public var ikeSAs = 1_000
    /// Child SAs of each IKE SA.
    public var childSAsPerIKESA = 2
    /// ESP packets a second per Child SA, in each direction (at most 1,000: one per step).
    public var packetsPerSecond = 50
    /// Simulated time, in milliseconds.
    public var durationMs: UInt64 = 2_000
    /// When the active member crashes (nil: it does not).
    public var crashAtMs: UInt64? = 1_000
    /// When the crashed member restarts, after the crash; it rejoins as a standby (nil: never).
    public var restartAfterMs: UInt64? = 400
    /// New IKE SAs the peer establishes a second (IKE_SA_INIT and IKE_AUTH, as one exchange).
    public var newIKESAsPerSecond = 20
    /// Delay on the outside link, and extra random delay up to this (which reorders), in ms.
    public var outsideDelayMs: UInt64 = 1, outsideJitterMs: UInt64 = 0
    /// Loss on the synch link (0 to 1).
    public var syncLoss = 0.1
    /// Loss on the outside link, between the cluster and the peer (0 to 1).
    public var outsideLoss = 0.0
    /// Counter checkpoints: every this many packets...
    public var checkpointPackets: UInt64 = 4_096
    /// ...or this many milliseconds, whichever first.
    public var checkpointMs: UInt64 = 50
    /// How inbound windows are rebuilt on takeover (every IKE SA here negotiates RFC 6311, so
    /// the peer jumps its counters instead of losing a checkpoint's worth of packets).
    public var inboundPolicy: InboundTakeoverPolicy = .replayCounterSyncWhereNegotiated
    /// Synchronous replication of IKE state: a response leaves only once the standbys hold the
    /// state it depends on.
    public var synchronousReplication = true
    /// The takeover's bound on a Child SA's rate (`TakeoverPolicy.maximumPacketsPerSecond`;
    /// nil: the measured rates alone, the negative control of the burst below).
    public var maximumPacketsPerSecond: UInt64? = 15_000_000
    /// For this long before the crash the synch link loses everything (review M3)...
    public var outageBeforeCrashMs: UInt64 = 0
    /// ...while the first IKE SA's first Child SA sends this many more packets each
    /// millisecond to the peer: a burst the last checkpoint's rate knows nothing of.
    public var burstPacketsPerMs = 0
    /// Milliseconds between two exchanges the peer starts on each IKE SA (every fourth rekeys a
    /// Child SA); the cluster starts a liveness check on each at twice that.
    public var ikeExchangeIntervalMs: UInt64 = 400
    /// Every this many exchanges the peer starts on an IKE SA, it rekeys the IKE SA (RFC 7296
    /// section 2.18) instead, then deletes the old one; 0: never.
    public var ikeSARekeyEvery = 0
    /// Inbound replay window size, on both sides.
    public var replayWindow: UInt32 = 1_024
    /// The faults of the run, instead of the one crash of ``crashAtMs`` and its restart (which
    /// are then ignored, as are ``outageBeforeCrashMs`` and ``burstPacketsPerMs``); nil: that
    /// one crash.
    public var faults: FaultSchedule?
    /// Whether an external arbiter (keepalived-like VRRP, on a link of its own that synch-link
    /// faults do not touch) decides who is active: members take over only when it gives them
    /// the address (`ClusterMemberConfiguration.followsVRRP`). It moves the address 30 ms after
    /// its holder crashed, to the running member with the lowest ID (priorities by ID, no
    /// preemption), and whenever a `vrrp=` fault says so. On when ``faults`` has such a fault.
    public var arbiter = false

    /// The default run (see `ikeha-demo simulate`).
    public init() {}

    /// Checks the values; the message names the first that does not fit.
    public func validate() throws(SimulationError) {
        guard (2...8).contains(members) else { throw .invalid("members must be 2 to 8") }
        guard (1...100_000).contains(ikeSAs), (1...8).contains(childSAsPerIKESA) else { throw .invalid("1 to 100,000 IKE SAs, 1 to 8 Child SAs each") }
        guard (1...1_000).contains(packetsPerSecond) else { throw .invalid("packets per second must be 1 to 1,000") }
        guard (100...600_000).contains(durationMs) else { throw .invalid("duration must be 100 ms to 10 minutes") }
        guard crashAtMs.map({ $0 < durationMs }) ?? true else { throw .invalid("the crash must come before the end") }
        guard (0...0.9).contains(syncLoss), (0...0.9).contains(outsideLoss) else { throw .invalid("loss must be 0 to 0.9") }
        guard checkpointPackets >= 1, checkpointMs >= 1, ikeExchangeIntervalMs >= 10 else { throw .invalid("intervals must be positive") }
        guard ikeSARekeyEvery >= 0 else { throw .invalid("IKE SA rekeys every 0 (never) or more exchanges") }
        guard (0...1_000).contains(newIKESAsPerSecond), outsideDelayMs <= 1_000, outsideJitterMs <= 1_000 else {
            throw .invalid("new IKE SAs 0 to 1,000 a second, outside delay and jitter up to 1 s")
        }
        guard (ReplayWindow.minimumSize...ReplayWindow.maximumSize).contains(replayWindow) else { throw .invalid("replay window size") }
        guard outageBeforeCrashMs <= (crashAtMs ?? 0), (0...10_000).contains(burstPacketsPerMs) else {
            throw .invalid("an outage before the crash needs a crash after it; bursts of 0 to 10,000 packets a millisecond")
        }
        try faults?.validate(members: members, durationMs: durationMs)
    }
}

/// A configuration that cannot run.
public struct SimulationError: Error, Sendable, Hashable, CustomStringConvertible {
    // A struct over a private reason (swift-nio-ssh's pattern): reasons can be added later
    // without breaking a caller's `switch`.
    private enum Reason: Sendable, Hashable {
        case invalid(String)
        case standbysNotReady
    }
    private let reason: Reason

    /// A value out of range; `what` says which and the range.
    public static func invalid(_ what: String) -> SimulationError { SimulationError(reason: .invalid(what)) }
    /// The standbys did not become ready before the run (the synch link lost too much).
    public static let standbysNotReady = SimulationError(reason: .standbysNotReady)

    public var description: String {
        switch reason {
        case .invalid(let what): "invalid simulation configuration: \(what)"
        case .standbysNotReady: "the standbys did not become ready before the run"
        }
    }
}

/// What a ``ClusterSimulation`` observed. The invariants of the design must hold: no (SPI,
/// sequence number) sent twice, no replay accepted on either side, no IKE SA continued at a
/// message ID the peer refuses.
public struct SimulationReport: Sendable, Hashable {
    /// The seed of the run.
    public var seed: UInt64 = 0
    /// IKE SAs and Child SAs the run had (those established during it included).
    public var ikeSAs = 0, childSAs = 0
    /// ESP packets the cluster sent, and those the peer sent.
    public var espPacketsSent = 0, espPacketsFromPeer = 0
    /// Outbound packets whose (SPI, sequence number) the cluster had sent before.
    public var sequenceNumbersReused = 0
    /// Packets the cluster sent once, that the peer's own replay window rejected.
    public var legitPacketsRejectedByPeer = 0
    /// Packets from the peer the cluster rejected though they were new (inside a takeover's
    /// conservative advance: the price of never accepting a replay).
    public var legitPacketsRejectedByCluster = 0
    /// Replayed packets (the attacker's, or duplicates) accepted by the cluster or the peer.
    public var replaysAccepted = 0
    /// Replays the attacker sent.
    public var replaysAttempted = 0
    /// IKE requests of the cluster the peer dropped (a wrong message ID, a refused sync).
    public var ikeRequestsDroppedByPeer = 0
    /// IKE SAs alive on both sides at the end, and those lost (deleted by the takeover plan, or
    /// dead at the peer after unanswered requests).
    public var ikeSAsSurvived = 0, ikeSAsLost = 0
    /// IKE SAs carried across the takeover by an RFC 6311 message-ID sync.
    public var ikeSAsResyncedViaRFC6311 = 0
    /// IKE exchanges completed (peer's and cluster's), and those in flight at the crash.
    public var ikeExchanges = 0, ikeExchangesInFlightAtCrash = 0
    /// Child SAs rekeyed by CREATE_CHILD_SA, and Child SAs the takeover plan said to rekey.
    public var childSARekeys = 0, childSAsRekeyedByTakeover = 0
    /// IKE SAs the peer rekeyed (``SimulationConfiguration/ikeSARekeyEvery``), and rekeys the
    /// takeover took back because the peer never saw them (`IKESATakeover.unconfirmedRekey`).
    public var ikeSARekeys = 0, ikeSARekeysUndoneByTakeover = 0
    /// Gaps in the synch stream the standbys detected.
    public var missedSyncDetected = 0
    /// The longest time from the loss of a synch datagram to a standby to its detection there.
    public var missedSyncDetectionMsMax = 0.0
    /// Synch datagrams sent and lost.
    public var syncDatagrams = 0, syncDatagramsLost = 0
    /// From the crash to the new active member's first packet, in milliseconds (nil: no crash).
    public var takeoverMs: Double?
    /// Counter checkpoints sent.
    public var checkpointsSent = 0
    /// IKE SAs the peer established during the run.
    public var ikeSAsEstablished = 0
    /// Whether the crashed member restarted and became a complete standby again.
    public var restartedMemberReady: Bool?
    /// Records a replica refused as older than what it held (never applied).
    public var staleRecordsRefused = 0

    /// Whether the standby that took over was a complete copy (a standby still resyncing when
    /// the active member failed takes over what it has: the rest is lost). With several
    /// takeovers, whether every one was.
    public var standbyReadyAtTakeover: Bool?

    /// Faults of the schedule carried out, by kind (``SimulationFault/kind``); a fault whose
    /// target did not exist then (a crash of a standby when none ran) is not counted.
    public var faults: [String: Int] = [:]
    /// Takeovers (a member became active), and crashes of the active member.
    public var takeovers = 0, activeCrashes = 0
    /// Time two members or more were active at once, in all (a split brain: only a cut synch
    /// link or an arbiter's decision makes one).
    public var splitBrainMs = 0.0
    /// The longest time two members or more were active at once while the synch link between
    /// them was up (not partitioned, not losing everything one way): how long a healed split
    /// brain took to resolve. At most ``splitBrainResolutionBoundMs``.
    public var splitBrainConnectedMsMax = 0.0
    /// What a split brain may take to resolve once the members hear each other: ten hello
    /// intervals of `ClusterMemberConfiguration` (200 ms each), so that a run of lost hellos
    /// on a lossy link does not count as a violation.
    public static let splitBrainResolutionBoundMs = 2_000.0
    /// Packets on Child SAs two members sent on during a split brain that the peer's window
    /// refused (one side had gone far ahead of what the other, or a copy of it, held: the price
    /// of a split brain, never a reused number).
    public var splitBrainPacketsRejectedByPeer = 0
    /// Replays accepted on Child SAs two members served during a split brain: neither saw what
    /// the other accepted (the other damage of a split brain, until the Child SA is rekeyed).
    public var splitBrainReplaysAccepted = 0
    /// IKE SAs lost, by reason.
    public var ikeSAsLostByReason: [String: Int] = [:]
    /// Members whose state held more IKE SAs than were ever asked for (unbounded growth).
    public var stateBoundExceeded = 0

    /// Whether every invariant held: no sequence number reused, no replay accepted by either
    /// side, no packet the cluster sent rejected by the peer's own window. (IKE requests the
    /// peer dropped and IKE SAs lost are the peer's view of availability, reported beside.)
    /// With a fault schedule also: every split brain resolved within
    /// ``splitBrainResolutionBoundMs`` once the members heard each other, and no member held
    /// more IKE SAs than the run ever had.
    public var invariantsHeld: Bool {
        sequenceNumbersReused == 0 && replaysAccepted == 0 && legitPacketsRejectedByPeer == 0
            && splitBrainConnectedMsMax <= Self.splitBrainResolutionBoundMs && stateBoundExceeded == 0
    }

    /// The report as one JSON object, keys in a fixed order.
    public var json: String {
        func number(_ value: Double?) -> String { value.map { "\(($0 * 1000).rounded() / 1000)" } ?? "null" }
        let fields: [(String, String)] = [
            ("seed", "\(seed)"), ("ike_sas", "\(ikeSAs)"), ("child_sas", "\(childSAs)"), ("esp_packets_sent", "\(espPacketsSent)"),
            ("esp_packets_from_peer", "\(espPacketsFromPeer)"), ("sequence_numbers_reused", "\(sequenceNumbersReused)"),
            ("legit_packets_rejected_by_peer", "\(legitPacketsRejectedByPeer)"),
            ("legit_packets_rejected_by_cluster", "\(legitPacketsRejectedByCluster)"), ("replays_attempted", "\(replaysAttempted)"),
            ("replays_accepted", "\(replaysAccepted)"), ("ike_requests_dropped_by_peer", "\(ikeRequestsDroppedByPeer)"),
            ("ike_exchanges", "\(ikeExchanges)"), ("ike_exchanges_in_flight_at_crash", "\(ikeExchangesInFlightAtCrash)"),
            ("child_sa_rekeys", "\(childSARekeys)"), ("child_sas_rekeyed_by_takeover", "\(childSAsRekeyedByTakeover)"),
            ("ike_sa_rekeys", "\(ikeSARekeys)"), ("ike_sa_rekeys_undone_by_takeover", "\(ikeSARekeysUndoneByTakeover)"),
            ("ike_sas_survived", "\(ikeSAsSurvived)"), ("ike_sas_lost", "\(ikeSAsLost)"),
            ("ike_sas_resynced_via_rfc6311", "\(ikeSAsResyncedViaRFC6311)"), ("missed_sync_detected", "\(missedSyncDetected)"),
            ("missed_sync_detection_ms_max", number(missedSyncDetectionMsMax)), ("sync_datagrams", "\(syncDatagrams)"),
            ("sync_datagrams_lost", "\(syncDatagramsLost)"), ("checkpoints_sent", "\(checkpointsSent)"), ("takeover_ms", number(takeoverMs)),
            ("standby_ready_at_takeover", standbyReadyAtTakeover.map { "\($0)" } ?? "null"),
            ("ike_sas_established", "\(ikeSAsEstablished)"), ("restarted_member_ready", restartedMemberReady.map { "\($0)" } ?? "null"),
            ("stale_records_refused", "\(staleRecordsRefused)"), ("takeovers", "\(takeovers)"), ("active_crashes", "\(activeCrashes)"),
            ("faults", "{" + faults.sorted { $0.key < $1.key }.map { "\"\($0.key)\": \($0.value)" }.joined(separator: ", ") + "}"),
            ("split_brain_ms", number(splitBrainMs)), ("split_brain_connected_ms_max", number(splitBrainConnectedMsMax)),
            ("split_brain_packets_rejected_by_peer", "\(splitBrainPacketsRejectedByPeer)"),
            ("split_brain_replays_accepted", "\(splitBrainReplaysAccepted)"),
            ("ike_sas_lost_by_reason", "{" + ikeSAsLostByReason.sorted { $0.key < $1.key }.map { "\"\($0.key)\": \($0.value)" }.joined(separator: ", ") + "}"),
            ("state_bound_exceeded", "\(stateBoundExceeded)"),
            ("invariants_held", "\(invariantsHeld)"),
        ]
        return "{" + fields.map { "\"\($0.0)\": \($0.1)" }.joined(separator: ", ") + "}"
    }
}

/// What a picture of the failover needs, for the first few Child SAs (``ClusterSimulation/plot``):
/// the sequence numbers each member sent over time, the peer's window top, the checkpoints,
/// and the takeover's resume point.
public struct FailoverPlot: Sendable {
    /// One Child SA's history, `t` in virtual milliseconds since the run began.
    public struct Series: Sendable {
        /// The Child SA's outbound SPI (the peer's inbound).
        public var spi: UInt32
        /// Sequence numbers sent, by member: (t, member ID, number).
        public var sent: [(t: Double, member: UInt16, number: UInt64)] = []
        /// The peer's window top after each packet: (t, top).
        public var peerTop: [(t: Double, top: UInt64)] = []
        /// Counter checkpoints the active member sent: (t, last sent).
        public var checkpoints: [(t: Double, lastSent: UInt64)] = []
        /// Where the new active member resumed, and the last checkpoint it had: (t, last
        /// checkpoint replicated, resume after).
        public var takeover: (t: Double, replicated: UInt64, resumeAfter: UInt64)?

    }

    /// The Child SAs drawn.
    public var series: [Series] = []
    /// When the active member crashed and when the takeover happened, in milliseconds.
    public var crash: Double?, failover: Double?
}

/// The peer's replay window: a plain set of the numbers seen above the bottom of the window, an
/// implementation independent of the package's, so that a bug in one cannot hide in the other.
struct SetReplayWindow {
    let size: UInt64
    var highest: UInt64 = 0
    var seen: Set<UInt64> = []

    /// `accept`, `replay` (seen), `stale` (below the window, or 0) or `fail` (the
    /// number is not the one the peer infers from the 32 bits on the wire: it authenticates
    /// the packet under another, as an ESN receiver does), recording what it accepts.
    mutating func verdict(_ number: UInt64) -> String {
        guard number > 0 else { return "stale" }
        guard inferred(fromLowBits: UInt32(truncatingIfNeeded: number)) == number else { return "fail" }
        guard number + size > highest else { return "stale" }
        guard seen.insert(number).inserted else { return "replay" }
        if number > highest {
            highest = number
            // What fell below the window can never be accepted again: forget it now and then
            // (a set of twice the window cost a long run a hundred megabytes).
            if seen.count > Int(size) + 64 { seen = seen.filter { $0 + size > highest } }
        }
        return "accept"
    }

    /// The 64-bit sequence number an ESN receiver takes a packet's low 32 bits for (RFC 4303,
    /// Appendix A2.2): in the window's subspace, or the next one when below the window. A
    /// sender that jumps 2^32 less the window or more is taken for an older number; nil when
    /// it would be before the first subspace.
    func inferred(fromLowBits low: UInt32) -> UInt64? {
        let window = UInt32(clamping: max(size, 1))
        let top = UInt32(truncatingIfNeeded: highest), high = highest >> 32
        let bottom = top &- window &+ 1
        if top >= window - 1 { return (low >= bottom ? high : high + 1) << 32 | UInt64(low) }
        // The window reaches back into the previous subspace.
        if low >= bottom { return high == 0 ? nil : (high - 1) << 32 | UInt64(low) }
        return high << 32 | UInt64(low)
    }
}
