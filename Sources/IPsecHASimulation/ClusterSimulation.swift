public import IPsecHACore
import IPsecHASync
import IPsecHATestKit
public import Logging

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
    var declared: Set<String> = []
    var runStart: UInt64 = 0
    /// With ``recordsPlot``, the data of a picture of the failover (the last Child SA of each
    /// of the first three IKE SAs).
    public internal(set) var plot = FailoverPlot()
    /// Whether to collect ``plot``.
    public var recordsPlot = false
    var plotIndex: [UInt32: Int] = [:]

    var milliseconds: Double { Double(now.nanoseconds - min(now.nanoseconds, runStart)) / 1e6 }
    /// What was observed so far.
    public internal(set) var report = SimulationReport()
    /// The virtual clock.
    public internal(set) var now = Timestamp(nanoseconds: 1_000_000_000)

    /// One member: a `ClusterMember` (the package's whole member) on its port of the network.
    struct Member {
        let id: ClusterMemberID
        var cluster: ClusterMember
        var transport: InMemorySyncTransport
        var alive = true
        /// Subtracted from the run's clock to give the member's own (monotonic) clock: a reboot
        /// starts it again near zero.
        var clockOffset: UInt64 = 0
        /// Whether it held a complete copy just before its last step (for the takeover report).
        var wasReady = false
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
        /// Why the IKE SA died, when it did.
        var lostReason: String?
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

    var members: [Member] = []
    var active: Int? = 0
    let network: InMemorySyncNetwork
    var random: SplitMix64
    /// The peer's IKE SAs, in the order they were established, and their positions.
    var peers: [PeerIKESA] = []
    var peerIndex: [IKESAIdentifier: Int] = [:]
    var outside: [(at: UInt64, message: IKEMessage)] = []
    /// Messages the active member holds until the standbys hold what they depend on, by the
    /// token of that change (released by the member within its release deadline).
    var held: [ReplicationToken: [IKEMessage]] = [:]
    /// The burst before the crash is on (``SimulationConfiguration/burstPacketsPerMs``).
    var bursting = false
    /// Cluster requests awaiting a response: IKE SA -> message ID.
    var clusterOutstanding: [IKESAIdentifier: (UInt32, Timestamp)] = [:]
    /// The numbers the cluster sent, per outbound SPI (whichever member sent them).
    var sent = SentNumbers()
    var acceptedByCluster: [UInt32: Set<UInt64>] = [:]
    /// Per inbound SPI: below this nothing may be accepted (``acceptedByCluster`` forgot it).
    var acceptedFloor: [UInt32: UInt64] = [:]
    /// Child SAs the peer rekeyed away from (inbound, outbound SPI): their bookkeeping goes once
    /// no member holds them any more (a takeover could bring back one whose delete was not
    /// replicated, and a later Child SA may draw the same SPI). Without this a long run grew by
    /// a few kilobytes per rekey.
    var retiredChildSAs: [(inbound: UInt32, outbound: UInt32)] = []
    /// IKE SAs the peer rekeyed away from, while a member still holds them.
    var retiredIKESAs: Set<IKESAIdentifier> = []
    /// The peer's SPIs in use or still tracked (``claimPeerSPI(_:)``).
    var peerSPIs: Set<UInt32> = []
    var capturedToCluster: [(UInt32, UInt64)] = []
    var capturedToPeer: [(Int, UInt32, UInt64)] = []
    var crashedAt: Timestamp?
    /// When synch datagrams from the active member to a standby were lost, not yet detected.
    var pendingLosses: [ClusterMemberID: [Timestamp]] = [:]
    var detecting: Set<ClusterMemberID> = []
    var baseline = (sent: 0, lost: 0)
    var step = 0
    /// Members down, in the order they crashed, and the one that crashed last.
    var down: [Int] = []
    var lastCrashed: Int?
    /// Restarted members not yet complete standbys again.
    var awaitingReady: Set<Int> = []
    /// Since when no member holds the address after the active member crashed (until the first
    /// packet of the next).
    var awaitingTakeoverSince: Timestamp?
    /// The next fault of the schedule.
    var nextFault = 0
    /// The member the arbiter gives the address to, and since when it is down.
    var vrrpMaster: Int?
    var vrrpMasterDownSince: Timestamp?
    /// Child SAs (by the cluster's inbound SPI) two members sent on during a split brain: the
    /// peer may have seen far higher numbers from one side than any copy of the other's holds,
    /// and one side never saw what the other accepted. What their windows refuse or accept
    /// later is the damage a split brain does, counted apart from the invariants.
    var splitBrainChildSAs: Set<UInt32> = []
    /// Milliseconds of the current split brain with the synch link up between the actives.
    var connectedSplitBrainMs = 0.0
    /// The synch link's delay without faults.
    var defaultSyncDelay: Duration = .zero
    let channelKey: ChannelKey
    let channelLogger: Logger?
    var nextIKESPI: UInt64 = 1 << 40
    /// From this time on the peer starts no exchange (``run(progress:)``).
    var quietFrom = UInt64.max
    var establishing: [UInt64: Timestamp] = [:]
    /// New IKE SAs the peer asked for during the run.
    var establishRequested = 0
    /// Message-ID syncs of the takeover for IKE SAs the peer did not know yet, by IKE SA.
    var pendingSyncs: [IKESAIdentifier: UInt64?] = [:]

    /// A cluster with the configured members and SAs, the standbys ready. Every member's synch
    /// channel logs to `channelLogger` when given (at its level); by default to the process's
    /// logging system at `error` level only.
    public init(configuration: SimulationConfiguration, channelLogger: Logger? = nil) throws {
        try configuration.validate()
        self.configuration = configuration
        random = SplitMix64(seed: configuration.seed)
        var faults = NetworkFaults()
        faults.loss = configuration.syncLoss
        faults.jitter = .milliseconds(1)
        network = InMemorySyncNetwork(faults: faults, seed: configuration.seed ^ 0x5EED)
        defaultSyncDelay = faults.delay
        channelKey = try ChannelKey.generate()
        self.channelLogger = channelLogger
        let ids = (1...configuration.members).map { ClusterMemberID(rawValue: UInt16($0)) }
        for id in ids {
            members.append(Member(id: id, cluster: try makeMember(id, epoch: 1, active: ids[0]), transport: network.transport(for: id)))
        }
        report.seed = configuration.seed
        try establish()
        // The standbys join by bulk resync before the run starts, on a clean synch link.
        network.faults.loss = 0
        var waited: UInt64 = 0
        while !members.dropFirst().allSatisfy(\.cluster.isReady) {
            try advance()
            waited += 1
            if waited > 20_000 { throw SimulationError.standbysNotReady }
        }
        network.faults.loss = configuration.syncLoss
        baseline = (network.sent, network.lost)
        pendingLosses = [:]
        if configuration.arbiter {
            // keepalived on every host: the address on member 1, the others BACKUP.
            vrrpMaster = 0
            for index in members.indices { try signal(index, index == 0 ? .master : .backup) }
        }
    }

    /// The IKE SAs and Child SAs, on the active member and at the peer.
    mutating func establish() throws {
        var spi: UInt32 = 0x1000
        for index in 0..<configuration.ikeSAs {
            var ike = try SAFixtures.ikeSA(UInt64(index + 1), owner: members[0].id, &random)
            ike.extensions = IKEExtensions(messageIDSync: true, replayCounterSync: true)
            var childSAs: [ChildSA] = []
            var children: [PeerChildSA] = []
            for _ in 0..<configuration.childSAsPerIKESA {
                spi += 1
                var child = try SAFixtures.childSA(spi, parent: ike.identifier, window: configuration.replayWindow, owner: members[0].id, &random)
                child.outboundSPI = claimPeerSPI(child.outboundSPI)
                childSAs.append(child)
                children.append(PeerChildSA(clusterInbound: spi, clusterOutbound: child.outboundSPI, received: SetReplayWindow(size: UInt64(configuration.replayWindow))))
            }
            _ = try members[0].cluster.update(now: clock(0)) { state, changes throws(GatewayStateError) in
                changes += try state.createIKESA(ike)
                for child in childSAs { changes += try state.createChildSA(child) }
            }
            let phase = random.next() % configuration.ikeExchangeIntervalMs
            peerIndex[ike.identifier] = peers.count
            peers.append(
                PeerIKESA(
                    identifier: ike.identifier,
                    windows: IKEMessageIDWindows(),
                    nextExchangeAt: Timestamp(nanoseconds: now.nanoseconds + (phase + 1) * 1_000_000), children: children))
        }
        report.ikeSAs = configuration.ikeSAs
        report.childSAs = configuration.ikeSAs * configuration.childSAsPerIKESA
    }

    /// The gateway state of every member that runs: the active member's own, the standbys'
    /// replicas.
    public var liveStates: [GatewayState] { members.filter(\.alive).map(\.cluster.state) }

    /// The active member's gateway state; nil while no member is active.
    public var activeState: GatewayState? { active.map { members[$0].cluster.state } }

    /// A member as the simulation configures it, at `epoch`, with `active` active.
    func makeMember(_ id: ClusterMemberID, epoch: UInt32, active: ClusterMemberID) throws -> ClusterMember {
        let ids = (1...configuration.members).map { ClusterMemberID(rawValue: UInt16($0)) }
        var channel = SyncChannelConfiguration(clusterID: 1, member: id, epoch: epoch, key: channelKey, peers: ids.filter { $0 != id })
        // The report says what happened; routine channel warnings (a resync follows) would
        // drown it.
        channel.logger.logLevel = .error
        if let channelLogger { channel.logger = channelLogger }
        var member = ClusterMemberConfiguration(channel: channel, activeMember: active)
        member.followsVRRP = configuration.arbiter
        member.checkpoints = CounterCheckpointPolicy(packets: configuration.checkpointPackets, interval: .milliseconds(Int64(clamping: configuration.checkpointMs)))
        member.takeover = TakeoverPolicy(
            minimumAdvance: configuration.checkpointPackets, maximumPacketsPerSecond: configuration.maximumPacketsPerSecond,
            inbound: configuration.inboundPolicy)
        return try ClusterMember(configuration: member)
    }

    /// Runs the configured duration; `progress` gets the fraction done every simulated 100 ms.
    /// The peer starts no exchange in the last tenth of the run (100 ms at most): with IKE
    /// replies held until the standbys hold their state, the run then ends with every
    /// exchange settled, and the final state says what the exchanges did, not where they were.
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
        quietFrom = end - min(100_000_000, configuration.durationMs * 100_000)
        while now.nanoseconds < end {
            if let schedule = configuration.faults {
                while nextFault < schedule.faults.count, now.nanoseconds >= start + schedule.faults[nextFault].atMs * 1_000_000 {
                    try apply(schedule.faults[nextFault].fault)
                    nextFault += 1
                }
            } else if let crashAt = configuration.crashAtMs, crashedAt == nil {
                if now.nanoseconds >= start + crashAt * 1_000_000, let index = active {
                    crash(index)
                    network.faults.loss = configuration.syncLoss
                } else if configuration.outageBeforeCrashMs > 0, now.nanoseconds >= start + (crashAt - configuration.outageBeforeCrashMs) * 1_000_000 {
                    network.faults.loss = 1
                    bursting = true
                }
            }
            if configuration.faults == nil, let restartAfter = configuration.restartAfterMs, let index = down.last, let crashedAt,
                now.nanoseconds >= crashedAt.nanoseconds + restartAfter * 1_000_000
            {
                try restart(index)
            }
            try arbiterTick()
            try advance()
            try traffic()
            try ike()
            observeSplitBrain()
            step += 1
            if step % 100 == 0 { progress(Double(now.nanoseconds - start) / Double(end - start)) }
        }
        finish()
        return report
    }
}
