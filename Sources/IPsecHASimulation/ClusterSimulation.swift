public import IPsecHACore
import IPsecHASync
import IPsecHATestKit
public import Logging

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
    }
}

/// A configuration that cannot run.
public enum SimulationError: Error, Sendable, Hashable {
    /// Which value is out of range.
    case invalid(String)
    /// The standbys did not become ready before the run (the synch link lost too much).
    case standbysNotReady
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
    /// the active member failed takes over what it has: the rest is lost).
    public var standbyReadyAtTakeover: Bool?

    /// Whether every invariant held: no sequence number reused, no replay accepted by either
    /// side, no packet the cluster sent rejected by the peer's own window. (IKE requests the
    /// peer dropped and IKE SAs lost are the peer's view of availability, reported beside.)
    public var invariantsHeld: Bool { sequenceNumbersReused == 0 && replaysAccepted == 0 && legitPacketsRejectedByPeer == 0 }

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
            ("stale_records_refused", "\(staleRecordsRefused)"),
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

    /// `accept`, `replay` (seen) or `stale` (below the window, or 0), recording what it accepts.
    mutating func verdict(_ number: UInt64) -> String {
        guard number > 0, number + size > highest else { return "stale" }
        guard seen.insert(number).inserted else { return "replay" }
        if number > highest {
            highest = number
            // What fell below the window can never be accepted again: forget it now and then
            // (a set of twice the window cost a long run a hundred megabytes).
            if seen.count > Int(size) + 64 { seen = seen.filter { $0 + size > highest } }
        }
        return "accept"
    }
}

/// A deterministic cluster (one active member, standbys) serving a remote IKEv2/IPsec peer,
/// attacked by a replaying attacker, on a virtual clock and one seeded random source: the same
/// configuration gives the same run, byte for byte.
///
/// Every member runs the package's stack: gateway state, sealed synch channel on an
/// `InMemorySyncNetwork` (with the configured synch loss), replicator, replica, failure
/// detection (`ClusterRole`), takeover plan. The peer keeps its own message-ID windows per
/// IKE SA (RFC 7296 rules, the peer side of RFC 6311) and its own replay windows
/// (`SetReplayWindow`, not the package's). Traffic: ESP both ways on every Child SA, IKE
/// exchanges both ways (liveness checks, Child SA rekeys), captured and replayed packets; the
/// active member may crash in the middle of it all.
public struct ClusterSimulation {
    /// What runs.
    public let configuration: SimulationConfiguration
    /// Where `--trace` lines go (one JSON object a call, no newline), in the order the receivers
    /// processed the events; nil: no trace. `t` is virtual microseconds since the run began.
    public var trace: ((String) -> Void)?
    /// Where `--pcap` packets go: each packet of the outside link as an IPv4 datagram
    /// (``OutsideLinkCapture``) with its time in virtual microseconds, in the trace's order;
    /// nil: no capture.
    public var capture: ((UInt64, [UInt8]) -> Void)?
    private var declared: Set<String> = []
    private var runStart: UInt64 = 0
    /// With ``recordsPlot``, the data of a picture of the failover (the last Child SA of each
    /// of the first three IKE SAs).
    public private(set) var plot = FailoverPlot()
    /// Whether to collect ``plot``.
    public var recordsPlot = false
    private var plotIndex: [UInt32: Int] = [:]

    private var milliseconds: Double { Double(now.nanoseconds - min(now.nanoseconds, runStart)) / 1e6 }
    /// What was observed so far.
    public private(set) var report = SimulationReport()
    /// The virtual clock.
    public private(set) var now = Timestamp(nanoseconds: 1_000_000_000)

    struct Member {
        let id: ClusterMemberID
        var channel: SyncChannel
        var transport: InMemorySyncTransport
        var alive = true
        var role: ClusterRole
        /// The active member's own state and replicator.
        var state: GatewayState?
        var replicator: Replicator?
        var scheduler: CounterCheckpointScheduler
        /// A standby's copy.
        var replica = Replica()
        var lastHello: Timestamp?
    }

    /// What the peer asks for: a liveness check, a Child SA rekey, or an IKE SA rekey whose new
    /// IKE SA gets this initiator SPI.
    enum ExchangeKind: Equatable { case liveness, rekey(old: UInt32), ikeRekey(newInitiatorSPI: UInt64) }

    struct PeerChildSA {
        /// The cluster's inbound SPI (the peer sends on it) and outbound SPI (the peer receives on it).
        var clusterInbound: UInt32
        var clusterOutbound: UInt32
        var sendNext: UInt64 = 1
        var received: SetReplayWindow
    }

    struct PeerIKESA {
        /// Changes when the peer rekeys the IKE SA.
        var identifier: IKESAIdentifier
        /// The peer's own windows: `requests` for the requests it sends, `responses` for the
        /// cluster's requests.
        var windows: IKEMessageIDWindows
        var outstanding: (messageID: UInt32, kind: ExchangeKind, sentAt: Timestamp, attempts: Int)?
        var nextExchangeAt: Timestamp
        var exchangesStarted = 0
        var dead = false
        var children: [PeerChildSA]
        var syncPeer = MessageIDSyncPeer()
    }

    /// An IKE message on the outside link.
    enum IKEMessage {
        /// IKE_SA_INIT and IKE_AUTH of a new IKE SA, as one exchange, and its answer.
        case establish(UInt64)
        case established(IKESAIdentifier, children: [(inbound: UInt32, outbound: UInt32)])
        case peerRequest(IKESAIdentifier, UInt32, ExchangeKind)
        case clusterResponse(IKESAIdentifier, UInt32, newChild: (inbound: UInt32, outbound: UInt32)?, newIKESA: IKESAIdentifier? = nil)
        /// The peer deletes an IKE SA it rekeyed away from (INFORMATIONAL with a Delete; its
        /// answer is not modelled: the peer says it again when the cluster talks on that SA).
        case peerDeleteIKESA(IKESAIdentifier)
        case clusterRequest(IKESAIdentifier, UInt32)
        case peerResponse(IKESAIdentifier, UInt32)
    }

    private var members: [Member] = []
    private var active: Int? = 0
    private let network: InMemorySyncNetwork
    private var random: SplitMix64
    /// The peer's IKE SAs, in the order they were established, and their positions.
    private var peers: [PeerIKESA] = []
    private var peerIndex: [IKESAIdentifier: Int] = [:]
    private var outside: [(at: UInt64, message: IKEMessage)] = []
    /// Messages the active member holds until the standbys acknowledged what they depend on:
    /// the tickets, and the standbys that were catching up (no ticket: they must catch up).
    private var held = HeldReplies<IKEMessage>()
    /// The burst before the crash is on (``SimulationConfiguration/burstPacketsPerMs``).
    private var bursting = false
    /// Cluster requests awaiting a response: IKE SA -> message ID.
    private var clusterOutstanding: [IKESAIdentifier: (UInt32, Timestamp)] = [:]
    private var highestSent: [UInt32: UInt64] = [:]
    private var acceptedByCluster: [UInt32: Set<UInt64>] = [:]
    /// Per inbound SPI: below this nothing may be accepted (``acceptedByCluster`` forgot it).
    private var acceptedFloor: [UInt32: UInt64] = [:]
    /// Child SAs the peer rekeyed away from (inbound, outbound SPI): their bookkeeping goes once
    /// no member holds them any more (a takeover could bring back one whose delete was not
    /// replicated, and a later Child SA may draw the same SPI). Without this a long run grew by
    /// a few kilobytes per rekey.
    private var retiredChildSAs: [(inbound: UInt32, outbound: UInt32)] = []
    /// IKE SAs the peer rekeyed away from, while a member still holds them.
    private var retiredIKESAs: Set<IKESAIdentifier> = []
    /// The peer's SPIs in use or still tracked (``claimPeerSPI(_:)``).
    private var peerSPIs: Set<UInt32> = []
    private var capturedToCluster: [(UInt32, UInt64)] = []
    private var capturedToPeer: [(Int, UInt32, UInt64)] = []
    private var crashedAt: Timestamp?
    /// When synch datagrams from the active member to a standby were lost, not yet detected.
    private var pendingLosses: [ClusterMemberID: [Timestamp]] = [:]
    private var detecting: Set<ClusterMemberID> = []
    private var baseline = (sent: 0, lost: 0)
    private var step = 0
    /// The crashed member, and the initiator SPIs of new IKE SAs the peer asked for.
    private var crashed: Int?
    private var restarted: Int?
    /// Members that (re)joined and are not standbys yet, as the active member sees them: true
    /// once their bulk resync began. Synchronous replication does not wait for them (a joining
    /// member counts as a standby only once resynced); it leaves this set when the resync's
    /// end is acknowledged.
    private var joining: [ClusterMemberID: Bool] = [:]
    private var nextIKESPI: UInt64 = 1 << 40
    private var establishing: [UInt64: Timestamp] = [:]
    /// Message-ID syncs of the takeover for IKE SAs the peer did not know yet, by IKE SA.
    private var pendingSyncs: [IKESAIdentifier: UInt64?] = [:]

    /// A cluster with the configured members and SAs, the standbys ready. Every member's synch
    /// channel logs to `channelLogger` when given (at its level); by default to the process's
    /// logging system at `error` level only.
    public init(configuration: SimulationConfiguration, channelLogger: Logger? = nil) throws {
        try configuration.validate()
        self.configuration = configuration
        random = SplitMix64(seed: configuration.seed)
        var faults = NetworkFaults()
        faults.loss = configuration.syncLoss
        faults.jitter = 1_000_000
        network = InMemorySyncNetwork(faults: faults, seed: configuration.seed ^ 0x5EED)
        let key = try ChannelKey.generate()
        let ids = (1...configuration.members).map { ClusterMemberID(rawValue: UInt16($0)) }
        for id in ids {
            var channelConfiguration = SyncChannelConfiguration(clusterID: 1, member: id, epoch: 1, key: key, peers: ids.filter { $0 != id })
            // The report says what happened; routine channel warnings (a resync follows) would
            // drown it.
            channelConfiguration.logger.logLevel = .error
            if let channelLogger { channelConfiguration.logger = channelLogger }
            var member = Member(
                id: id, channel: try SyncChannel(configuration: channelConfiguration), transport: network.transport(for: id),
                role: ClusterRole(member: id, epoch: 1, isActive: id == ids[0], activeMember: ids[0]),
                scheduler: CounterCheckpointScheduler(
                    policy: CounterCheckpointPolicy(packets: configuration.checkpointPackets, interval: configuration.checkpointMs * 1_000_000)))
            if id == ids[0] {
                member.state = GatewayState()
                member.replicator = Replicator(standbys: ids.filter { $0 != id })
            }
            members.append(member)
        }
        report.seed = configuration.seed
        try establish()
        // The standbys join by bulk resync before the run starts, on a clean synch link.
        network.faults.loss = 0
        var waited: UInt64 = 0
        while !members.dropFirst().allSatisfy(\.replica.isReady) {
            try advance()
            waited += 1
            if waited > 20_000 { throw SimulationError.standbysNotReady }
        }
        network.faults.loss = configuration.syncLoss
        baseline = (network.sent, network.lost)
        pendingLosses = [:]
    }

    /// The IKE SAs and Child SAs, on the active member and at the peer.
    private mutating func establish() throws {
        var state = members[0].state!
        var spi: UInt32 = 0x1000
        for index in 0..<configuration.ikeSAs {
            var ike = try SAFixtures.ikeSA(UInt64(index + 1), owner: members[0].id, &random)
            ike.extensions = IKEExtensions(messageIDSync: true, replayCounterSync: true)
            _ = try state.createIKESA(ike)
            var children: [PeerChildSA] = []
            for _ in 0..<configuration.childSAsPerIKESA {
                spi += 1
                var child = try SAFixtures.childSA(spi, parent: ike.identifier, window: configuration.replayWindow, owner: members[0].id, &random)
                child.outboundSPI = claimPeerSPI(child.outboundSPI)
                _ = try state.createChildSA(child)
                children.append(PeerChildSA(clusterInbound: spi, clusterOutbound: child.outboundSPI, received: SetReplayWindow(size: UInt64(configuration.replayWindow))))
            }
            let phase = random.next() % configuration.ikeExchangeIntervalMs
            peerIndex[ike.identifier] = peers.count
            peers.append(
                PeerIKESA(
                    identifier: ike.identifier,
                    windows: IKEMessageIDWindows(),
                    nextExchangeAt: Timestamp(nanoseconds: now.nanoseconds + (phase + 1) * 1_000_000), children: children))
        }
        members[0].state = state
        report.ikeSAs = configuration.ikeSAs
        report.childSAs = configuration.ikeSAs * configuration.childSAsPerIKESA
    }

    /// The gateway state of every member that runs: the active member's own, the standbys'
    /// replicas.
    public var liveStates: [GatewayState] { members.filter(\.alive).map { $0.state ?? $0.replica.state } }

    /// The active member's gateway state; nil while no member is active.
    public var activeState: GatewayState? { active.flatMap { members[$0].state } }

    /// Runs the configured duration; `progress` gets the fraction done every simulated 100 ms.
    public mutating func run(progress: (Double) -> Void = { _ in }) throws -> SimulationReport {
        let start = now.nanoseconds
        runStart = start
        if recordsPlot {
            // Each IKE SA's last Child SA: the peer rekeys only the first, so with two or more
            // per IKE SA each series is one Child SA from start to end, whenever the rekeys fall.
            for child in peers.prefix(3).compactMap(\.children.last) {
                plotIndex[child.clusterOutbound] = plot.series.count
                plot.series.append(FailoverPlot.Series(spi: child.clusterOutbound))
            }
        }
        let end = start + configuration.durationMs * 1_000_000
        while now.nanoseconds < end {
            if let crashAt = configuration.crashAtMs, crashedAt == nil {
                if now.nanoseconds >= start + crashAt * 1_000_000, let index = active {
                    crash(index)
                    network.faults.loss = configuration.syncLoss
                } else if configuration.outageBeforeCrashMs > 0, now.nanoseconds >= start + (crashAt - configuration.outageBeforeCrashMs) * 1_000_000 {
                    network.faults.loss = 1
                    bursting = true
                }
            }
            if let restartAfter = configuration.restartAfterMs, let index = crashed, let crashedAt,
                now.nanoseconds >= crashedAt.nanoseconds + restartAfter * 1_000_000
            {
                try restart(index)
            }
            try advance()
            try traffic()
            try ike()
            step += 1
            if step % 100 == 0 { progress(Double(now.nanoseconds - start) / Double(end - start)) }
        }
        finish()
        return report
    }

    // MARK: Trace

    private var micros: UInt64 { (now.nanoseconds - min(now.nanoseconds, runStart)) / 1_000 }

    private func name(_ index: Int?) -> String { index.map { "member-\(members[$0].id.rawValue)" } ?? "cluster" }

    /// One ESP line, after the `child_sa` line of its receiving direction the first time.
    private mutating func traceESP(src: String, dst: String, spi: UInt32, seq: UInt64, forged: Bool, verdict: String, receiver: String) {
        capture?(micros, OutsideLinkCapture.esp(spi: spi, sequenceNumber: seq, fromPeer: receiver == "cluster"))
        guard let trace else { return }
        if declared.insert("\(receiver):\(spi)").inserted {
            trace("{\"kind\":\"child_sa\",\"spi\":\(spi),\"receiver\":\"\(receiver)\",\"window\":\(configuration.replayWindow),\"esn\":true}")
        }
        trace("{\"kind\":\"esp\",\"t\":\(micros),\"src\":\"\(src)\",\"dst\":\"\(dst)\",\"spi\":\(spi),\"seq\":\(seq),\"forged\":\(forged),\"verdict\":\"\(verdict)\"}")
    }

    /// An IKE message's trace line and capture.
    private func traceIKE(_ line: IKELine, verdict: String) {
        traceIKE(src: line.src, dst: line.dst, line.ikeSA, mid: line.mid, exchange: line.exchange, response: line.response, verdict: verdict)
        guard let capture else { return }
        let fromPeer = line.src == "peer"
        var messages: [IPsecHACore.IKEMessage] = []
        switch line.exchange {
        case "IKE_AUTH" where !line.response:
            // The simulation makes an IKE SA in one step: its request is IKE_SA_INIT's, its
            // answer IKE_SA_INIT's response and the IKE_AUTH exchange.
            messages = [OutsideLinkCapture.ikeSAInit(line.ikeSA, isResponse: false)]
        case "IKE_AUTH":
            messages = [
                OutsideLinkCapture.ikeSAInit(line.ikeSA, isResponse: true),
                OutsideLinkCapture.encryptedIKEMessage(line.ikeSA, exchange: .ikeAuth, messageID: 1, fromOriginalInitiator: true, isResponse: false),
                OutsideLinkCapture.encryptedIKEMessage(line.ikeSA, exchange: .ikeAuth, messageID: 1, fromOriginalInitiator: false, isResponse: true),
            ]
        default:
            // The peer initiated every IKE SA: its messages carry the I flag.
            messages = [
                OutsideLinkCapture.encryptedIKEMessage(
                    line.ikeSA, exchange: line.exchange == "CREATE_CHILD_SA" ? .createChildSA : .informational, messageID: line.mid,
                    fromOriginalInitiator: fromPeer, isResponse: line.response)
            ]
        }
        for (index, message) in messages.enumerated() {
            // IKE_AUTH's request comes from the peer, between the cluster's two responses.
            let peerSends = messages.count == 3 ? index == 1 : fromPeer
            if let packet = try? OutsideLinkCapture.ike(message, fromPeer: peerSends) { capture(micros, packet) }
        }
    }

    private func traceIKE(src: String, dst: String, _ identifier: IKESAIdentifier, mid: UInt32, exchange: String, response: Bool, verdict: String) {
        trace?(
            "{\"kind\":\"ike\",\"t\":\(micros),\"src\":\"\(src)\",\"dst\":\"\(dst)\",\"ispi\":\"\(identifier.initiatorSPI.paddedHexDigits)\",\"rspi\":\"\(identifier.responderSPI.paddedHexDigits)\",\"mid\":\(mid),\"exchange\":\"\(exchange)\",\"response\":\(response),\"verdict\":\"\(verdict)\"}")
    }

    /// The IKE line of a message: who sent it to whom, and what it is.
    private typealias IKELine = (src: String, dst: String, ikeSA: IKESAIdentifier, mid: UInt32, exchange: String, response: Bool)

    private func describe(_ message: IKEMessage) -> IKELine {
        let cluster = name(active)
        switch message {
        case .establish(let spi): return ("peer", cluster, IKESAIdentifier(initiatorSPI: spi, responderSPI: 0), 1, "IKE_AUTH", false)
        case .established(let identifier, _): return (cluster, "peer", identifier, 1, "IKE_AUTH", true)
        case .peerRequest(let identifier, let mid, let kind): return ("peer", cluster, identifier, mid, kind == .liveness ? "INFORMATIONAL" : "CREATE_CHILD_SA", false)
        case .clusterResponse(let identifier, let mid, let child, let ike):
            return (cluster, "peer", identifier, mid, child == nil && ike == nil ? "INFORMATIONAL" : "CREATE_CHILD_SA", true)
        case .peerDeleteIKESA(let identifier): return ("peer", cluster, identifier, 0, "INFORMATIONAL", false)
        case .clusterRequest(let identifier, let mid): return (cluster, "peer", identifier, mid, "INFORMATIONAL", false)
        case .peerResponse(let identifier, let mid): return ("peer", cluster, identifier, mid, "INFORMATIONAL", true)
        }
    }

    private func traceIKE(_ message: IKEMessage, verdict: String) {
        guard trace != nil || capture != nil else { return }
        traceIKE(describe(message), verdict: verdict)
    }

    // MARK: Synch side

    private mutating func crash(_ index: Int) {
        if recordsPlot { plot.crash = milliseconds }
        trace?("{\"kind\":\"crash\",\"t\":\(micros),\"member\":\"\(name(index))\"}")
        members[index].alive = false
        crashed = index
        crashedAt = now
        report.ikeExchangesInFlightAtCrash = peers.filter { $0.outstanding != nil }.count + clusterOutstanding.count + held.count
        held.removeAll()
        clusterOutstanding = [:]
        pendingLosses = [:]
        active = nil
    }

    /// The crashed member comes back empty, at a new epoch, as a standby of the current active
    /// member; it says hello until a bulk resync makes it ready.
    private mutating func restart(_ index: Int) throws {
        crashed = nil
        restarted = index
        joining[members[index].id] = false
        let old = members[index]
        pendingLosses[old.id] = nil
        // What reached it while it was down is gone with its memory.
        _ = members[index].transport.receive(now: now)
        var channelConfiguration = old.channel.configuration
        channelConfiguration.epoch = old.channel.configuration.epoch + 1
        let activeID = active.map { members[$0].id }
        members[index] = Member(
            id: old.id, channel: try SyncChannel(configuration: channelConfiguration), transport: old.transport,
            role: ClusterRole(member: old.id, epoch: channelConfiguration.epoch, isActive: false, activeMember: activeID),
            scheduler: old.scheduler)
        report.restartedMemberReady = false
    }

    /// One millisecond of the synch side: datagrams, ticks, replication, detection, takeover.
    private mutating func advance() throws {
        now = Timestamp(nanoseconds: now.nanoseconds + 1_000_000)
        for index in members.indices where members[index].alive {
            for datagram in members[index].transport.receive(now: now) {
                try perform(members[index].channel.receive(datagram, now: now), at: index)
            }
            try perform(members[index].channel.tick(now: now), at: index)
            // The scheduler scans every Child SA: every fifth of the checkpoint interval is
            // often enough (a checkpoint is at most a fifth of it late).
            if index == active, step % max(1, Int(configuration.checkpointMs / 5)) == 0 {
                var state = members[index].state.take()!
                let due = members[index].scheduler.takeDueCheckpoints(from: &state, now: now)
                members[index].state = state
                report.checkpointsSent += due.count
                if !plotIndex.isEmpty {
                    for entry in due {
                        guard let sa = state.childSA(inboundSPI: entry.checkpoint.inboundSPI), let series = plotIndex[sa.outboundSPI] else { continue }
                        plot.series[series].checkpoints.append((milliseconds, entry.checkpoint.outbound.lastSent))
                    }
                }
                if !due.isEmpty {
                    try perform(withReplicator(index) { $0.replicate(checkpoints: due, state: state, channel: &$1, now: $2).actions }, at: index)
                }
            }
            if index == active {
                try perform(withReplicator(index) { $0.pump(channel: &$1, now: $2) }, at: index)
            } else {
                try standbyDuties(index)
            }
        }
        report.syncDatagrams = network.sent - baseline.sent
        report.syncDatagramsLost = network.lost - baseline.lost
        // A loss not detected within 200 ms was of a datagram nobody had to miss (an
        // acknowledgement, a heartbeat) or was repaired first.
        for member in pendingLosses.keys { pendingLosses[member]!.removeAll { now.nanoseconds - $0.nanoseconds > 200_000_000 } }
        if let index = active, let replicator = members[index].replicator {
            for (member, resyncBegan) in joining {
                if replicator.isResyncing(member) {
                    joining[member] = true
                } else if resyncBegan, replicator.hasCaughtUp(member, channel: members[index].channel) {
                    joining[member] = nil
                }
            }
        }
        // Held IKE responses go out once the standbys acknowledged their state.
        if let index = active, let replicator = members[index].replicator {
            let alive = Set(members.filter(\.alive).map(\.id))
            for message in held.release(channel: members[index].channel, replicator: replicator, now: now, gone: { !alive.contains($0) }) {
                if case .clusterRequest(let identifier, let messageID) = message, clusterOutstanding[identifier]?.0 != messageID { continue }
                sendOutside(message)
            }
        }
    }

    private mutating func standbyDuties(_ index: Int) throws {
        guard let activeID = members[index].role.activeMember else { return }
        if index == restarted, members[index].replica.isReady {
            report.restartedMemberReady = true
            restarted = nil
        }
        let missing = members[index].channel.missingSince(from: activeID)
        members[index].replica.observe(missingSince: missing)
        if let missing, !detecting.contains(members[index].id) {
            detecting.insert(members[index].id)
            report.missedSyncDetected += 1
            let id = members[index].id
            if let lost = pendingLosses[id]?.first(where: { $0.nanoseconds <= missing.nanoseconds }) {
                report.missedSyncDetectionMsMax = max(report.missedSyncDetectionMsMax, Double(missing.nanoseconds - lost.nanoseconds) / 1e6)
                pendingLosses[id]!.removeAll { $0.nanoseconds <= missing.nanoseconds }
            }
        } else if missing == nil {
            detecting.remove(members[index].id)
        }
        if !members[index].replica.isReady, !members[index].replica.isResyncing,
            members[index].lastHello.map({ now.nanoseconds - $0.nanoseconds >= 200_000_000 }) ?? true
        {
            members[index].lastHello = now
            let hello = try members[index].channel.send(
                [members[index].replica.hello(epoch: members[index].channel.configuration.epoch)], to: activeID, now: now)
            try perform(hello.actions, at: index)
        }
        try detectFailure(index)
    }

    /// A standby that has not heard the active member for three heartbeats promotes itself if
    /// it is the lowest live standby.
    private mutating func detectFailure(_ index: Int) throws {
        guard let activeID = members[index].role.activeMember, let activeIndex = members.firstIndex(where: { $0.id == activeID }) else { return }
        let events = members[index].role.tick(now: now, lastHeard: members[index].channel.lastHeard(from: activeID))
        guard events.contains(.activeMemberFailed(activeID)) else { return }
        let lowest = members.indices.first { $0 != activeIndex && members[$0].alive && members[$0].state == nil }
        guard lowest == index else { return }
        try promote(index, replacing: activeID)
    }

    private mutating func perform(_ actions: [SyncChannelAction], at index: Int) throws {
        for action in actions {
            switch action {
            case .transmit(let to, let datagram):
                let lost = network.lost
                try members[index].transport.send(datagram, to: to, now: now)
                if index == active, network.lost > lost, isAlive(to) {
                    pendingLosses[to, default: []].append(now)
                }
            case .deliver(let from, let records):
                if index == active {
                    let state = members[index].state!
                    try perform(withReplicator(index) { $0.handle(action, state: state, channel: &$1, now: $2) }, at: index)
                } else if from == members[index].role.activeMember {
                    members[index].replica.apply(records, now: now)
                }
            case .resyncNeeded:
                if index == active {
                    let state = members[index].state!
                    try perform(withReplicator(index) { $0.handle(action, state: state, channel: &$1, now: $2) }, at: index)
                }
            case .peerRestarted, .dropped:
                break
            }
        }
    }

    /// Runs `body` on the active member's replicator and channel, moved out of the member so
    /// that neither is copied (a copy would duplicate a resync's snapshot on its next change).
    private mutating func withReplicator<Result>(_ index: Int, _ body: (inout Replicator, inout SyncChannel, Timestamp) -> Result) -> Result {
        var replicator = members[index].replicator.take()!
        defer { members[index].replicator = replicator }
        return body(&replicator, &members[index].channel, now)
    }

    private mutating func replicate(_ changes: [StateChange]) throws -> [SyncTicket] {
        guard let index = active, !changes.isEmpty else { return [] }
        let state = members[index].state!
        let result = withReplicator(index) { $0.replicate(changes, state: state, channel: &$1, now: $2) }
        try perform(result.actions, at: index)
        return awaited(result.tickets, at: index)
    }

    /// Whether the member with this ID runs.
    private func isAlive(_ id: ClusterMemberID) -> Bool { members.contains { $0.id == id && $0.alive } }

    /// Whether a held message matches.
    private func isHeld(_ matches: (IKEMessage) -> Bool) -> Bool { held.contains(where: matches) }

    /// Holds an IKE message until its tickets are acknowledged and, with synchronous
    /// replication, every live standby that was catching up has caught up.
    private mutating func hold(_ tickets: [SyncTicket], _ message: IKEMessage) {
        guard let index = active, let replicator = members[index].replicator else { return }
        let standbys =
            configuration.synchronousReplication
            ? members.filter { $0.alive && $0.id != members[index].id && joining[$0.id] == nil }.map(\.id) : []
        if let free = held.hold(message, tickets: tickets, standbys: standbys, replicator: replicator) { sendOutside(free) }
    }

    /// The tickets synchronous replication waits for: those of standbys that are up and not
    /// being resynced (a failed standby would hold every exchange until it came back; a
    /// catching-up one until its resync or backlog was sent). An embedder decides the same from
    /// its failure detector and ``Replicator/isCatchingUp(_:)``.
    private func awaited(_ tickets: [SyncTicket], at index: Int) -> [SyncTicket] {
        guard configuration.synchronousReplication, let replicator = members[index].replicator else { return [] }
        return tickets.filter { ticket in
            isAlive(ticket.peer) && joining[ticket.peer] == nil && !replicator.isCatchingUp(ticket.peer)
        }
    }

    private mutating func replicateExchange(_ identifier: IKESAIdentifier, _ messageID: UInt32, initiatedHere: Bool, finished: Bool) throws -> [SyncTicket] {
        guard let index = active else { return [] }
        let state = members[index].state!
        let result = withReplicator(index) {
            $0.replicateExchange(of: identifier, messageID: messageID, initiatedHere: initiatedHere, finished: finished, state: state, channel: &$1, now: $2)
        }
        try perform(result.actions, at: index)
        return awaited(result.tickets, at: index)
    }

    /// The standby takes over: the plan from its replica, counters and windows applied, every
    /// IKE SA continued as the plan says (RFC 6311 with the peer where it says so).
    private mutating func promote(_ index: Int, replacing failed: ClusterMemberID) throws {
        let epoch = members[index].channel.configuration.epoch + 1
        _ = try members[index].role.promote(.activeMemberSilent(failed), newEpoch: epoch)
        try members[index].channel.rotate(toEpoch: epoch)
        members[index].replica.applyHeldCheckpoints(members[index].channel.recordsHeldBehindGap(from: failed), now: now)
        let replica = members[index].replica
        report.standbyReadyAtTakeover = replica.isReady
        let plan = replica.takeoverPlan(
            policy: TakeoverPolicy(
                minimumAdvance: configuration.checkpointPackets, maximumPacketsPerSecond: configuration.maximumPacketsPerSecond,
                inbound: configuration.inboundPolicy),
            now: now)
        var state = replica.state
        if !plotIndex.isEmpty {
            for sa in replica.state.childSAs {
                guard let series = plotIndex[sa.outboundSPI], let decision = plan.childSAs.first(where: { $0.inboundSPI == sa.inboundSPI }),
                    case .resume(let resumeAfter) = decision.outbound
                else { continue }
                plot.series[series].takeover = (milliseconds, sa.outboundCounter.lastSent, resumeAfter)
            }
        }
        let rekey = state.applyTakeover(plan).rekey
        for spi in rekey { _ = try? state.deleteChildSA(inboundSPI: spi) }
        report.childSAsRekeyedByTakeover += rekey.count
        var syncs: [(IKESAIdentifier, UInt64?)] = []
        for ikePlan in plan.ikeSAs {
            let identifier = ikePlan.identifier
            // A rekey whose answer may have died with the failed member: the probe (a liveness
            // check, answered at once here) finds whether the peer knows the new IKE SA.
            if let old = ikePlan.unconfirmedRekey {
                if peerIndex[identifier] == nil {
                    _ = try state.undoIKESARekey(identifier)
                    report.ikeSARekeysUndoneByTakeover += 1
                    continue
                }
                // Answered: the peer had the rekey's answer, so it is done with the old IKE SA
                // (its Delete may have died with the failed member).
                _ = try? state.deleteIKESA(old)
            }
            switch ikePlan.messageIDs {
            case .exact, .awaitPeerRetransmission:
                break
            case .messageIDSync(_, _, let delta):
                syncs.append((identifier, delta))
            case .deleteAndReestablish:
                _ = try? state.deleteIKESA(identifier)
                if let i = peerIndex[identifier] { peers[i].dead = true }
            }
        }
        members[index].state = state
        // Every other member, the failed one too: it is replicated to again once it restarts.
        let others = members.indices.filter { $0 != index }.map { members[$0].id }
        members[index].replicator = Replicator(standbys: others)
        for other in members.indices where other != index {
            members[other].role = ClusterRole(member: members[other].id, epoch: members[other].role.epoch, isActive: false, activeMember: members[index].id)
            members[other].replica = Replica()
            if members[other].alive { joining[members[other].id] = false }
        }
        pendingLosses = [:]
        active = index
        trace?("{\"kind\":\"failover\",\"t\":\(micros),\"to\":\"\(name(index))\"}")
        if recordsPlot { plot.failover = milliseconds }
        for (identifier, delta) in syncs {
            if peerIndex[identifier] == nil {
                // The peer has not had the IKE_AUTH answer yet: the sync follows its retransmission.
                pendingSyncs[identifier] = delta
            } else {
                messageIDSync(identifier, delta: delta)
            }
        }
    }

    /// RFC 6311 between the active member and the peer for one IKE SA: the member proposes,
    /// the peer adopts the agreed message IDs and jumps its outbound counters by `delta`
    /// (section 5.2), the member adopts the answer.
    private mutating func messageIDSync(_ identifier: IKESAIdentifier, delta: UInt64?) {
        guard let index = active, let i = peerIndex[identifier], !peers[i].dead, let windows = members[index].state!.ikeSAs[identifier]?.messageIDs else { return }
        var initiator = MessageIDSyncInitiator()
        guard let request = try? initiator.start(windows: windows, nonce: UInt32(truncatingIfNeeded: random.next())) else { return }
        let replayCounter = delta.flatMap { try? ReplayCounterSyncNotification(delta: $0, extendedSequenceNumbers: true) }
        captureMessageIDSync(identifier, request, replayCounter: replayCounter, fromPeer: false)
        switch peers[i].syncPeer.process(request, replayCounter: replayCounter, windows: peers[i].windows) {
        case .respond(let response, let adopted, let replayDelta):
            captureMessageIDSync(identifier, response, replayCounter: nil, fromPeer: true)
            peers[i].windows = adopted
            // An exchange the peer had under way restarts later under the new IDs.
            peers[i].outstanding = nil
            if let replayDelta { for child in peers[i].children.indices { peers[i].children[child].sendNext += replayDelta } }
            if let agreed = try? initiator.receive(response, windows: windows) {
                _ = try? members[index].state!.updateMessageIDs(of: identifier) { $0 = agreed }
                report.ikeSAsResyncedViaRFC6311 += 1
            }
        case .drop:
            report.ikeRequestsDroppedByPeer += 1
        }
    }

    /// RFC 6311's INFORMATIONAL with Message ID 0, in clear as the package's codec writes it.
    private func captureMessageIDSync(
        _ identifier: IKESAIdentifier, _ sync: MessageIDSyncNotification, replayCounter: ReplayCounterSyncNotification?, fromPeer: Bool
    ) {
        guard let capture else { return }
        let message = IPsecHACore.IKEMessage.messageIDSync(
            ikeSA: identifier, isOriginalInitiator: fromPeer, isResponse: fromPeer, sync: sync, replayCounter: replayCounter)
        if let packet = try? OutsideLinkCapture.ike(message, fromPeer: fromPeer) { capture(micros, packet) }
    }

    // MARK: Outside side

    private mutating func sendOutside(_ message: IKEMessage) {
        guard random.next() % 1_000_000 >= UInt64(configuration.outsideLoss * 1_000_000) else {
            traceIKE(message, verdict: "lost")
            return
        }
        let jitter = configuration.outsideJitterMs == 0 ? 0 : random.next() % (configuration.outsideJitterMs * 1_000_000)
        outside.append((now.nanoseconds + configuration.outsideDelayMs * 1_000_000 + jitter, message))
    }

    /// One ESP packet from the active member to the peer on Child SA `child` of the peer's IKE
    /// SA `i`, with the checks: no sequence number twice, every one accepted by the peer.
    private mutating func sendToPeer(_ i: Int, _ child: Int) {
        guard let index = active, let slot = members[index].state!.slot(forInboundSPI: peers[i].children[child].clusterInbound),
            let number = try? members[index].state!.nextOutboundSequenceNumber(at: slot, bytes: 1_000)
        else { return }
        let spi = peers[i].children[child].clusterOutbound
        report.espPacketsSent += 1
        if let crashedAt, report.takeoverMs == nil { report.takeoverMs = Double(now.nanoseconds - crashedAt.nanoseconds) / 1e6 }
        if number.value <= highestSent[spi, default: 0] { report.sequenceNumbersReused += 1 }
        highestSent[spi] = max(highestSent[spi, default: 0], number.value)
        let verdict = peers[i].children[child].received.verdict(number.value)
        if let series = plotIndex[spi] {
            plot.series[series].sent.append((milliseconds, members[index].id.rawValue, number.value))
            plot.series[series].peerTop.append((milliseconds, peers[i].children[child].received.highest))
        }
        if verdict != "accept" { report.legitPacketsRejectedByPeer += 1 }
        traceESP(src: name(index), dst: "peer", spi: spi, seq: number.value, forged: false, verdict: verdict, receiver: "peer")
        if random.next() % 64 == 0 { capturedToPeer.append((i, spi, number.value)) }
    }

    /// ESP both ways on every Child SA, and the attacker's replays.
    private mutating func traffic() throws {
        if bursting, crashedAt == nil, let first = peers.indices.first, !peers[first].dead, !peers[first].children.isEmpty {
            for _ in 0..<configuration.burstPacketsPerMs { sendToPeer(first, 0) }
        }
        let every = max(1, 1_000 / configuration.packetsPerSecond)
        for i in peers.indices where (step + i) % every == 0 && !peers[i].dead {
            for child in peers[i].children.indices {
                sendToPeer(i, child)
                // Peer -> cluster.
                let number = peers[i].children[child].sendNext
                peers[i].children[child].sendNext += 1
                report.espPacketsFromPeer += 1
                let spi = peers[i].children[child].clusterInbound
                if receiveAtCluster(spi, number, from: "peer") == false { report.legitPacketsRejectedByCluster += 1 }
                if random.next() % 64 == 0 { capturedToCluster.append((spi, number)) }
            }
        }
        // The attacker replays one captured packet each way per step.
        if let (spi, number) = capturedToCluster.randomElement(using: &random) {
            report.replaysAttempted += 1
            _ = receiveAtCluster(spi, number, from: "attacker")
            // And a forgery: a number far ahead, with an ICV the attacker cannot compute. Only
            // the check phase runs, which changes nothing: the peer's next packets still pass.
            let forged = number + 1 + random.next() % (1 << 20)
            _ = receiveAtCluster(spi, forged, from: "attacker", forged: true)
        }
        if let (i, spi, number) = capturedToPeer.randomElement(using: &random),
            let child = peers[i].children.firstIndex(where: { $0.clusterOutbound == spi })
        {
            report.replaysAttempted += 1
            let verdict = peers[i].children[child].received.verdict(number)
            if verdict == "accept" { report.replaysAccepted += 1 }
            traceESP(src: "attacker", dst: "peer", spi: spi, seq: number, forged: false, verdict: verdict, receiver: "peer")
        }
        if capturedToCluster.count > 4_096 { capturedToCluster.removeFirst(2_048) }
        if capturedToPeer.count > 256 { capturedToPeer.removeFirst(128) }
        if step % 1_000 == 0 { forgetRetiredSAs() }
    }

    /// The peer's SPI for a new Child SA (the cluster's outbound SPI), from `spi` on: never one
    /// in use or still tracked, as a real peer never hands out an SPI it holds. (Random draws
    /// collided once in a 5-minute soak, and the checks took the second Child SA's numbers for
    /// reused ones.)
    private mutating func claimPeerSPI(_ spi: UInt32) -> UInt32 {
        var spi = spi
        while spi < 256 || !peerSPIs.insert(spi).inserted { spi &+= 1 }
        return spi
    }

    /// Whether the active member may give a new Child SA this inbound SPI: it holds none with it,
    /// and the checks no longer track one that had it.
    private func isFreeInboundSPI(_ spi: UInt32, at index: Int) -> Bool {
        members[index].state!.childSA(inboundSPI: spi) == nil && acceptedByCluster[spi] == nil
    }

    private mutating func forgetRetiredSAs() {
        let states = members.filter(\.alive).map { $0.state ?? $0.replica.state }
        retiredIKESAs = retiredIKESAs.filter { identifier in states.contains { $0.ikeSAs.contains(identifier) } }
        retiredChildSAs.removeAll { retired in
            guard states.allSatisfy({ $0.slot(forInboundSPI: retired.inbound) == nil }) else { return false }
            acceptedByCluster[retired.inbound] = nil
            acceptedFloor[retired.inbound] = nil
            highestSent[retired.outbound] = nil
            peerSPIs.remove(retired.outbound)
            return true
        }
    }

    /// A packet at the active member: nil when nobody receives it (no active member, no SA),
    /// else whether it was accepted. The ICV covers the ESN high bits: a wrong inference fails.
    private mutating func receiveAtCluster(_ spi: UInt32, _ number: UInt64, from source: String, forged: Bool = false) -> Bool? {
        guard let index = active else {
            traceESP(src: source, dst: "cluster", spi: spi, seq: number, forged: forged, verdict: "lost", receiver: "cluster")
            return nil
        }
        guard let slot = members[index].state!.slot(forInboundSPI: spi) else {
            traceESP(src: source, dst: name(index), spi: spi, seq: number, forged: forged, verdict: "fail", receiver: "cluster")
            return nil
        }
        let verdict: String
        switch members[index].state!.checkInbound(wire: UInt32(truncatingIfNeeded: number), at: slot) {
        case .fresh(let full)?:
            // A forgery fails its ICV; so does a packet whose inferred ESN high bits are not the
            // ones it was sent with.
            verdict = forged || full != number || (try? members[index].state!.commitInbound(full, bytes: 1_000, at: slot)) == nil ? "fail" : "accept"
        case .replayed?: verdict = "replay"
        case .stale?, nil: verdict = "stale"
        }
        traceESP(src: source, dst: name(index), spi: spi, seq: number, forged: forged, verdict: verdict, receiver: "cluster")
        guard verdict == "accept" else { return false }
        // Numbers are kept from one window below the highest accepted: the peer sends in order,
        // so a packet further below is one the window must refuse (stale), and accepting it
        // counts as accepting a replay. Bounded memory for long runs.
        let window = UInt64(configuration.replayWindow)
        if number < acceptedFloor[spi, default: 0] || !acceptedByCluster[spi, default: []].insert(number).inserted {
            report.replaysAccepted += 1
        }
        if acceptedByCluster[spi]!.count > Int(window) + 64, let top = acceptedByCluster[spi]!.max(), top > window {
            acceptedFloor[spi] = top - window
            acceptedByCluster[spi] = acceptedByCluster[spi]!.filter { $0 >= top - window }
        }
        return true
    }

    /// IKE: the peer's requests, retransmissions and the cluster's answers; the cluster's own
    /// liveness checks.
    private mutating func ike() throws {
        let due = outside.filter { $0.at <= now.nanoseconds }
        outside.removeAll { $0.at <= now.nanoseconds }
        for (_, message) in due {
            // Described before delivery: a takeover in between does not rename the receiver.
            let line = trace == nil && capture == nil ? nil : describe(message)
            let verdict = try deliver(message)
            if let line { traceIKE(line, verdict: verdict) }
        }
        for i in peers.indices where !peers[i].dead {
            let identifier = peers[i].identifier
            if var outstanding = peers[i].outstanding {
                // Retransmissions back off, 100 ms doubling (RFC 7296 section 2.1): about 3 s in all.
                if now.nanoseconds - outstanding.sentAt.nanoseconds >= 100_000_000 << UInt64(outstanding.attempts) {
                    guard outstanding.attempts < 5 else {
                        peers[i].dead = true
                        continue
                    }
                    outstanding.attempts += 1
                    outstanding.sentAt = now
                    peers[i].outstanding = outstanding
                    sendOutside(.peerRequest(identifier, outstanding.messageID, outstanding.kind))
                }
            } else if now.nanoseconds >= peers[i].nextExchangeAt.nanoseconds, let messageID = try? peers[i].windows.requests.nextRequestID() {
                peers[i].exchangesStarted += 1
                let kind: ExchangeKind
                if configuration.ikeSARekeyEvery > 0, peers[i].exchangesStarted % configuration.ikeSARekeyEvery == 0 {
                    kind = .ikeRekey(newInitiatorSPI: random.next() | 1)
                } else {
                    kind = peers[i].exchangesStarted % 4 == 0 ? .rekey(old: peers[i].children[0].clusterInbound) : .liveness
                }
                peers[i].outstanding = (messageID, kind, now, 0)
                peers[i].nextExchangeAt = Timestamp(nanoseconds: now.nanoseconds + configuration.ikeExchangeIntervalMs * 1_000_000)
                sendOutside(.peerRequest(identifier, messageID, kind))
            }
        }
        // New IKE SAs, and their retransmissions.
        if configuration.newIKESAsPerSecond > 0, step % max(1, 1_000 / configuration.newIKESAsPerSecond) == 0 {
            nextIKESPI += 1
            establishing[nextIKESPI] = now
            sendOutside(.establish(nextIKESPI))
        }
        for (spi, since) in establishing.sorted(by: { $0.key < $1.key }) where now.nanoseconds - since.nanoseconds >= 100_000_000 {
            if now.nanoseconds - since.nanoseconds >= 500_000_000 {
                establishing[spi] = nil
            } else if (now.nanoseconds - since.nanoseconds) % 100_000_000 < 1_000_000 {
                sendOutside(.establish(spi))
            }
        }
        // The cluster's liveness checks, one IKE SA per step in turn, each at twice the interval.
        if let index = active, !peers.isEmpty {
            let perStep = max(1, peers.count / Int(2 * configuration.ikeExchangeIntervalMs))
            for offset in 0..<perStep {
                let identifier = peers[(step * perStep + offset) % peers.count].identifier
                guard clusterOutstanding[identifier] == nil, members[index].state!.ikeSAs[identifier] != nil else { continue }
                var messageID: UInt32?
                let changes = try members[index].state!.updateMessageIDs(of: identifier) { messageID = try? $0.requests.nextRequestID() }
                guard let messageID else { continue }
                let tickets = try replicate(changes) + replicateExchange(identifier, messageID, initiatedHere: true, finished: false)
                clusterOutstanding[identifier] = (messageID, now)
                hold(tickets, .clusterRequest(identifier, messageID))
            }
            // Retransmit what went out unanswered (a request still held for its tickets has not).
            let waiting = Set(held.replies.compactMap { message -> IKESAIdentifier? in
                if case .clusterRequest(let identifier, _) = message { identifier } else { nil }
            })
            for (identifier, request) in clusterOutstanding where now.nanoseconds - request.1.nanoseconds >= 100_000_000 && !waiting.contains(identifier) {
                clusterOutstanding[identifier] = (request.0, now)
                sendOutside(.clusterRequest(identifier, request.0))
            }
        }
    }

    /// Delivers one IKE message; returns its receiver's verdict: `accept`, `retransmit` (a
    /// retransmission, answered again), `drop`, or `lost` (nobody to receive it).
    private mutating func deliver(_ message: IKEMessage) throws -> String {
        switch message {
        case .establish(let spi):
            guard let index = active else { return "lost" }
            if let existing = members[index].state!.ikeSAs.values.first(where: { $0.identifier.initiatorSPI == spi }) {
                // The answer still held for the standbys goes out when they have the state, not
                // before (the trace of a run at 40% synch loss showed one leaving early).
                if isHeld({ if case .established(let held, _) = $0 { held == existing.identifier } else { false } }) { return "retransmit" }
                let state = members[index].state!
                let children = existing.childSAs.compactMap(state.childSA(inboundSPI:)).map { ($0.inboundSPI, $0.outboundSPI) }
                sendOutside(.established(existing.identifier, children: children))
                return "retransmit"
            }
            var ike = try SAFixtures.ikeSA(spi, owner: members[index].id, &random)
            ike.extensions = IKEExtensions(messageIDSync: true, replayCounterSync: true)
            var changes = try members[index].state!.createIKESA(ike)
            var children: [(inbound: UInt32, outbound: UInt32)] = []
            for _ in 0..<configuration.childSAsPerIKESA {
                var inbound = UInt32(truncatingIfNeeded: random.next()) | 0x2000_0000
                while !isFreeInboundSPI(inbound, at: index) { inbound &+= 1 }
                var child = try SAFixtures.childSA(inbound, parent: ike.identifier, window: configuration.replayWindow, owner: members[index].id, &random)
                child.outboundSPI = claimPeerSPI(child.outboundSPI)
                changes += try members[index].state!.createChildSA(child)
                children.append((inbound, child.outboundSPI))
            }
            hold(try replicate(changes), .established(ike.identifier, children: children))
            return "accept"
        case .established(let identifier, let children):
            guard establishing.removeValue(forKey: identifier.initiatorSPI) != nil, peerIndex[identifier] == nil else { return "drop" }
            peerIndex[identifier] = peers.count
            peers.append(
                PeerIKESA(
                    identifier: identifier,
                    windows: IKEMessageIDWindows(),
                    nextExchangeAt: Timestamp(nanoseconds: now.nanoseconds + configuration.ikeExchangeIntervalMs * 1_000_000),
                    children: children.map {
                        PeerChildSA(clusterInbound: $0.inbound, clusterOutbound: $0.outbound, received: SetReplayWindow(size: UInt64(configuration.replayWindow)))
                    }))
            report.ikeSAsEstablished += 1
            report.ikeSAs += 1
            report.childSAs += children.count
            if let delta = pendingSyncs.removeValue(forKey: identifier) { messageIDSync(identifier, delta: delta) }
            return "accept"
        case .peerRequest(let identifier, let messageID, let kind):
            guard let index = active else { return "lost" }
            guard let sa = members[index].state!.ikeSAs[identifier] else { return "drop" }
            switch sa.messageIDs.responses.classify(messageID) {
            case .new:
                var tickets = try replicateExchange(identifier, messageID, initiatedHere: false, finished: false)
                var changes = try members[index].state!.updateMessageIDs(of: identifier) { try? $0.responses.recordProcessed(messageID) }
                // A request on the new IKE SA of a rekey proves the peer has it: the old one,
                // empty since the rekey, goes even if the peer's delete was lost.
                if let old = sa.rekeyedFrom, members[index].state!.ikeSAs[old]?.childSAs.isEmpty == true {
                    clusterOutstanding[old] = nil
                    changes += try members[index].state!.deleteIKESA(old)
                }
                var newChild: (UInt32, UInt32)?
                if case .rekey(let old) = kind, let oldSA = members[index].state!.childSA(inboundSPI: old) {
                    var spi = UInt32(truncatingIfNeeded: random.next()) | 0x1000_0000
                    while !isFreeInboundSPI(spi, at: index) { spi &+= 1 }
                    var fresh = try SAFixtures.childSA(spi, parent: identifier, window: configuration.replayWindow, owner: members[index].id, &random)
                    fresh.outboundSPI = claimPeerSPI(fresh.outboundSPI)
                    fresh.localSelectors = oldSA.localSelectors
                    // The exchange that made it, so that a retransmitted request finds it.
                    fresh.requestID = messageID
                    changes += try members[index].state!.createChildSA(fresh)
                    changes += try members[index].state!.deleteChildSA(inboundSPI: old)
                    newChild = (spi, fresh.outboundSPI)
                }
                var newIKESA: IKESAIdentifier?
                if case .ikeRekey(let initiatorSPI) = kind {
                    // RFC 7296 section 2.18: a new IKE SA (message IDs from 0, as every new one), the
                    // Child SAs moved.
                    var fresh = try SAFixtures.ikeSA(initiatorSPI, remote: sa.remote.address, owner: members[index].id, &random)
                    fresh.extensions = IKEExtensions(messageIDSync: sa.extensions.messageIDSync, replayCounterSync: sa.extensions.replayCounterSync)
                    changes += try members[index].state!.rekeyIKESA(identifier, to: fresh)
                    newIKESA = fresh.identifier
                }
                tickets += try replicate(changes)
                tickets += try replicateExchange(identifier, messageID, initiatedHere: false, finished: true)
                hold(tickets, .clusterResponse(identifier, messageID, newChild: newChild, newIKESA: newIKESA))
                return "accept"
            case .retransmission:
                // The response was lost, or this member took over: answer again, unless the
                // answer is still held for the standbys. A rekey's new Child SA is the one its
                // exchange made.
                if isHeld({ if case .clusterResponse(identifier, messageID, _, _) = $0 { true } else { false } }) { return "retransmit" }
                let state = members[index].state!
                switch kind {
                case .liveness:
                    sendOutside(.clusterResponse(identifier, messageID, newChild: nil))
                case .rekey:
                    let child = sa.childSAs.compactMap(state.childSA(inboundSPI:)).first { $0.requestID == messageID }
                    sendOutside(.clusterResponse(identifier, messageID, newChild: child.map { ($0.inboundSPI, $0.outboundSPI) }))
                case .ikeRekey(let initiatorSPI):
                    // The IKE SA that exchange made, found by the initiator SPI the peer proposed.
                    let made = state.ikeSAs.keys.first { $0.initiatorSPI == initiatorSPI }
                    sendOutside(.clusterResponse(identifier, messageID, newChild: nil, newIKESA: made))
                }
                return "retransmit"
            case .tooOld, .outsideWindow:
                return "drop"
            }
        case .clusterResponse(let identifier, let messageID, let newChild, let newIKESA):
            guard let i = peerIndex[identifier], !peers[i].dead, let outstanding = peers[i].outstanding, outstanding.messageID == messageID
            else { return "drop" }
            try? peers[i].windows.requests.receiveResponse(messageID)
            peers[i].outstanding = nil
            report.ikeExchanges += 1
            if case .ikeRekey = outstanding.kind, let newIKESA, newIKESA != identifier {
                // Continue on the new IKE SA, from message ID 0, and delete the old one on it.
                peerIndex[identifier] = nil
                peerIndex[newIKESA] = i
                peers[i].identifier = newIKESA
                peers[i].windows = IKEMessageIDWindows()
                peers[i].syncPeer = MessageIDSyncPeer()
                retiredIKESAs.insert(identifier)
                report.ikeSARekeys += 1
                sendOutside(.peerDeleteIKESA(identifier))
            }
            if case .rekey(let old) = outstanding.kind, let newChild, let child = peers[i].children.firstIndex(where: { $0.clusterInbound == old }),
                newChild.inbound != old
            {
                retiredChildSAs.append((old, peers[i].children[child].clusterOutbound))
                peers[i].children[child] = PeerChildSA(
                    clusterInbound: newChild.inbound, clusterOutbound: newChild.outbound, received: SetReplayWindow(size: UInt64(configuration.replayWindow)))
                report.childSARekeys += 1
            }
            return "accept"
        case .clusterRequest(let identifier, let messageID):
            if peerIndex[identifier] == nil, retiredIKESAs.contains(identifier) {
                // A request on an IKE SA the peer deleted after rekeying it (the delete was lost,
                // or a takeover brought the IKE SA back): it says so again.
                sendOutside(.peerDeleteIKESA(identifier))
                return "drop"
            }
            guard let i = peerIndex[identifier], !peers[i].dead else { return "drop" }
            switch peers[i].windows.responses.classify(messageID) {
            case .new:
                try? peers[i].windows.responses.recordProcessed(messageID)
                sendOutside(.peerResponse(identifier, messageID))
                return "accept"
            case .retransmission:
                sendOutside(.peerResponse(identifier, messageID))
                return "retransmit"
            case .tooOld, .outsideWindow:
                report.ikeRequestsDroppedByPeer += 1
                return "drop"
            }
        case .peerDeleteIKESA(let identifier):
            guard let index = active else { return "lost" }
            guard members[index].state!.ikeSAs.contains(identifier) else { return "drop" }
            clusterOutstanding[identifier] = nil
            _ = try replicate(try members[index].state!.deleteIKESA(identifier))
            return "accept"
        case .peerResponse(let identifier, let messageID):
            guard let index = active else { return "lost" }
            guard clusterOutstanding[identifier]?.0 == messageID else { return "drop" }
            clusterOutstanding[identifier] = nil
            report.ikeExchanges += 1
            let changes = try members[index].state!.updateMessageIDs(of: identifier) { try? $0.requests.receiveResponse(messageID) }
            _ = try replicate(changes)
            _ = try replicateExchange(identifier, messageID, initiatedHere: true, finished: true)
            return "accept"
        }
    }

    private mutating func finish() {
        report.staleRecordsRefused = members.filter(\.alive).map { Int($0.replica.statistics.stale) }.reduce(0, +)
        let state = activeState
        report.ikeSAsSurvived = peers.filter { !$0.dead && state?.ikeSAs[$0.identifier] != nil }.count
        report.ikeSAsLost = report.ikeSAs - report.ikeSAsSurvived
    }
}
