import IPsecHACore
import IPsecHAGateway
import IPsecHASync
import IPsecHASyncNIO
import IPsecHAXFRM
import IPsecHAXFRMDataPlane
import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// The member's loop: one `ClusterMember` (synch channel, replication, failure detection,
/// checkpoints, keepalived's decisions) fed with the synch datagrams, the time and
/// keepalived's notify FIFO, and the IKE stack and userspace ESP around it, which change the
/// state through it and hold each IKE reply until its token is released.
struct ReferenceGateway {
    let options: GatewayCommand
    let member: ClusterMemberID
    /// The other members, as `--sync-peer` lists them.
    let peers: [ClusterMemberID]
    let clusterAddress: IPAddress
    let innerAddress: IPAddress
    var logger = Logger(label: "ikeha-gateway")

    /// The cluster member: the state (every IKE SA and Child SA this member holds, served or
    /// replicated) and everything that keeps it in step with the other member.
    var cluster: ClusterMember
    /// The IKE stack; out of its place (nil) only while it changes the state inside
    /// `cluster.update`, so that it is never copied.
    var responder: IKEv2Responder?
    var transport: UDPSyncTransport
    let group: MultiThreadedEventLoopGroup
    var sockets: [UDPSocket] = []

    /// Replies held until the standby holds the changes behind them (synchronous replication
    /// of IKE state), by the token of those changes. The member releases every token within
    /// its release deadline (2 s: below the peer's first retransmission, strongSwan's 4 s, long
    /// enough for a resync of thousands of SAs), so this stays small.
    var heldReplies: [ReplicationToken: [IKEDatagram]] = [:]
    /// IKE and ESP datagrams read from one socket before the loop turns to the synch channel.
    static let datagramsPerSocketAndTurn = 64
    /// The pre-shared key's length in bytes (the responder authenticates nobody with a shorter
    /// one; a longer file is a mistake, not a key to cut).
    static let preSharedKeyLength = IKEResponderConfiguration.minimumPreSharedKeyLength...1_024
    /// ESP replies sent since this member became active (the first one is an event).
    var repliesSinceTakeover = 0
    /// keepalived's notify FIFO, with `--vrrp-fifo`.
    let fifo: VRRPNotifyFIFO?
    /// SIGTERM and SIGUSR1.
    let signals: OperatorSignals
    /// When SIGTERM came: the member exits once it handed over (or at once as a standby).
    var stoppingSince: Timestamp?
    /// How long a member that handed over waits for the standby's acknowledgement before it
    /// exits (SIGTERM), and at most says it is electable before it is a complete copy again.
    static let switchOverAcknowledgementLimit = Duration.seconds(2)
    /// The member the last switchover went to, and when.
    var switchedOver: (to: ClusterMemberID, at: Timestamp)?
    /// After a switchover, until this member is a complete copy again (its resync, a few
    /// milliseconds) or 2 s passed: keepalived is told it is electable all the same. It holds
    /// exactly what it handed over; a 1 in the track file would put its keepalived in FAULT and
    /// drop the address at once, before the new active member's keepalived took it.
    var electableAfterSwitchoverUntil: Timestamp?
    /// After a switchover, with keepalived: the member the active role went to, to which the
    /// IKE and ESP datagrams that still reach this host are relayed until keepalived moved the
    /// address (nothing is lost meanwhile), and how many were.
    var relayingTo: ClusterMemberID?
    var relayed = 0
    /// keepalived's track file for this member's readiness, with `--vrrp-track-file`.
    var trackFile: VRRPTrackFile?
    /// keepalived's track file for this member's role, with `--vrrp-priority-file`: 1 while
    /// it serves, so that the active member has the higher VRRP priority and the address
    /// follows a switchover by preemption (the new holder adds it before the old one drops it).
    var priorityFile: VRRPTrackFile?
    var readiness: ClusterMemberReadiness?
    /// When the Child SAs' hard lifetimes were last checked (once a second).
    var lastLifetimeSweep = Timestamp(nanoseconds: 0)
    /// ESP packets dropped since the last report, by reason (reported once a second).
    var espDrops: [String: Int] = [:]
    var lastDropReport = Timestamp(nanoseconds: 0)
    /// Replies released at the deadline so far (each batch is a warning).
    var repliesReleasedAtDeadline = 0
    /// The kernel's ESP with `--data-plane xfrm`; nil: userspace ESP.
    var kernel: XFRMDataPlane<XFRMSocket>?
    /// Load sharing with `--steering nftables`: this member's rules.
    let steering: NFTablesSteering?
    /// Load sharing: the segments this member serves, as its steering rules say.
    var servedSegments: Set<Segment> = []
    /// Load sharing: why the steering rules must change, since they last did: they change once
    /// per turn, in one transaction, however many segments moved.
    var steeringChanges: [String] = []
    /// Load sharing: the message-ID syncs of segments just started, sent once the steering
    /// rules take the segments' IKE (the peer's answer must reach this member).
    var pendingMessageIDSyncs: [IKESATakeover] = []
    /// With `--metrics-listen`: what the Prometheus endpoint serves.
    var metrics: GatewayMetrics?

    init(options: GatewayCommand, signals: OperatorSignals) throws {
        self.options = options
        self.signals = signals
        member = ClusterMemberID(rawValue: options.member)
        clusterAddress = try Self.option("cluster-address") { try IPAddress(options.clusterAddress) }
        innerAddress = try Self.option("inner-address") { try IPAddress(options.innerAddress) }
        var peerAddresses: [ClusterMemberID: SocketAddress] = [:]
        for text in options.syncPeer {
            let parts = text.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, let peerRaw = UInt16(parts[0]) else { throw GatewayError.configuration("--sync-peer expects id=host:port") }
            peerAddresses[ClusterMemberID(rawValue: peerRaw)] = try Self.option("sync-peer") {
                let (peerHost, peerPort) = try Self.hostAndPort(String(parts[1]))
                return try SocketAddress(ipAddress: peerHost, port: peerPort)
            }
        }
        peers = peerAddresses.keys.sorted()
        guard peers.count == options.syncPeer.count, !peers.isEmpty, !peers.contains(member) else {
            throw GatewayError.configuration("--sync-peer: one per other member, each ID once")
        }
        guard options.loadSharingSegments != nil || peers.count == 1 else {
            throw GatewayError.configuration("more than one --sync-peer needs load sharing (--load-sharing-segments)")
        }
        let (host, port) = try Self.option("sync-listen") { try Self.hostAndPort(options.syncListen) }
        let psk = try Self.option("psk-file") {
            try SecretFile.read(options.pskFile, length: Self.preSharedKeyLength, dropTrailingNewline: true) { bytes in
                KeyMaterial(count: bytes.count) { $0.copyMemory(from: bytes) }
            }
        }
        var configuration = IKEResponderConfiguration(
            localIdentity: IKEIdentity(options.localID), remoteIdentity: IKEIdentity(options.remoteID),
            preSharedKey: psk, member: member)
        guard options.maxIKESAsPerPeerAddress >= 1 else { throw GatewayError.configuration("--max-ike-sas-per-peer-address must be at least 1") }
        configuration.maximumIKESAsPerPeerAddress = options.maxIKESAsPerPeerAddress
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.group = group
        let member = self.member
        let addresses = peerAddresses
        transport = try group.next().makeFutureWithTask {
            try await UDPSyncTransport.bind(member: member, host: host, port: port, peers: addresses, group: group)
        }.wait()
        let synchTransport = transport
        // Linux reports twice what it reserved; below the asked size a resync's bursts overflow it.
        if let granted = try? group.next().makeFutureWithTask({ try await synchTransport.grantedReceiveBufferBytes() }).wait(),
            granted < Int(UDPSyncTransport.receiveBufferBytes)
        {
            logger.warning(
                "synch socket's receive buffer below what the transport asks: raise net.core.rmem_max (Docs/Operations.md, Tuning)",
                metadata: ["granted_bytes": "\(granted)", "asked_bytes": "\(UDPSyncTransport.receiveBufferBytes)"])
        }
        // The role epoch, from the clock: it only orders members that are active at once (split
        // brain). The synch channel does not rely on it: a restart with a lower or equal one is fine.
        let epoch = UInt32(truncatingIfNeeded: Timestamp.monotonicNow().nanoseconds / 1_000_000) | 1
        var channelConfiguration = SyncChannelConfiguration(
            clusterID: 1, member: member, epoch: epoch, key: try Self.option("sync-key-file") { try ChannelKey(contentsOfFile: options.syncKeyFile) }, peers: peers)
        guard let cipher = SyncChannelCipher(name: options.syncCipher) else {
            throw GatewayError.configuration("--sync-cipher must be chacha20-poly1305 or aes-256-gcm")
        }
        channelConfiguration.cipher = cipher
        guard SyncChannelConfiguration.supportedDatagramSizes.contains(options.syncDatagramSize) else {
            throw GatewayError.configuration("--sync-datagram-size must be 512 to 65,507")
        }
        channelConfiguration.maximumDatagramSize = options.syncDatagramSize
        channelConfiguration.logger = Logger(label: "sync")
        channelConfiguration.logger.logLevel = .warning
        var memberConfiguration = ClusterMemberConfiguration(channel: channelConfiguration, activeMember: options.active ? member : peers[0])
        guard options.missCount >= 2 else { throw GatewayError.configuration("--miss-count must be at least 2") }
        memberConfiguration.missCount = options.missCount
        memberConfiguration.checkpoints = CounterCheckpointPolicy(packets: options.checkpointPackets, interval: .milliseconds(Int64(clamping: options.checkpointMs)))
        // The advance is at least the checkpoint's packet count: that many may have gone out
        // after the last checkpoint. Outbound it is also at least the policy's maximum rate for
        // the time unaccounted for (a burst while checkpoints were lost). The inbound window
        // takes the measured advance (strongSwan has no RFC 6311 replay-counter sync), so that
        // many of the peer's next packets are dropped: hence the checkpoint count, not 4,096.
        memberConfiguration.takeover = TakeoverPolicy(
            minimumAdvance: options.takeoverMinimumAdvance ?? options.checkpointPackets, stalenessMargin: .milliseconds(Int64(clamping: options.stalenessMarginMs)),
            measuredMarginFloor: options.fixedStalenessMargin ? nil : .milliseconds(Int64(clamping: options.measuredMarginFloorMs)))
        fifo = options.vrrpFIFO.map { VRRPNotifyFIFO(path: $0, instance: options.vrrpInstance) }
        trackFile = options.vrrpTrackFile.map { VRRPTrackFile(path: $0) }
        priorityFile = options.vrrpPriorityFile.map { VRRPTrackFile(path: $0) }
        memberConfiguration.followsVRRP = fifo != nil
        if let count = options.loadSharingSegments {
            guard fifo == nil, options.dataPlane == "userspace" else {
                throw GatewayError.configuration("load sharing runs without keepalived and with the userspace data plane")
            }
            let key: SegmentKey
            switch options.segmentKey {
            case "peer-address": key = .peerAddress
            case "initiator-spi": key = .initiatorSPI
            default: throw GatewayError.configuration("--segment-key is peer-address or initiator-spi, not \(options.segmentKey)")
            }
            do {
                let segments = try ClusterSegments(count: count, key: key, seed: UInt64(options.segmentSeed), hash: .nftablesJHash)
                let layout = try SPILayout(segments: segments)
                configuration.spiLayout = layout
                memberConfiguration.loadSharing = try SegmentOwnershipConfiguration(member: member, incarnation: epoch, members: [member] + peers, segments: segments)
                switch options.steering {
                case "nftables": steering = NFTablesSteering(clusterAddress: clusterAddress, layout: layout, member: member)
                case "none": steering = nil
                default: throw GatewayError.configuration("--steering is nftables or none, not \(options.steering)")
                }
            } catch let error as GatewayError {
                throw error
            } catch {
                throw GatewayError.configuration("load sharing: \(error)")
            }
        } else {
            steering = nil
        }
        responder = IKEv2Responder(configuration: configuration, logger: Logger(label: "ike"))
        cluster = try ClusterMember(configuration: memberConfiguration)
        switch options.dataPlane {
        case "userspace": kernel = nil
        case "xfrm":
            var configuration = XFRMDataPlaneConfiguration()
            configuration.installsChildSAs = true
            configuration.replayThreshold = UInt32(clamping: options.checkpointPackets)
            configuration.timerThreshold = .milliseconds(Int64(clamping: options.checkpointMs))
            do {
                let dataPlane = XFRMDataPlane(kernel: try XFRMSocket(subscribeToAsyncEvents: true), configuration: configuration)
                cluster.counterReportInterval = dataPlane.counterReportInterval
                kernel = dataPlane
            } catch {
                throw GatewayError.configuration("--data-plane xfrm: cannot open the XFRM netlink socket: \(error)")
            }
        default: throw GatewayError.configuration("--data-plane is userspace or xfrm, not \(options.dataPlane)")
        }
        if let listen = options.metricsListen {
            let (metricsHost, metricsPort) = try Self.option("metrics-listen") { try Self.hostAndPort(listen) }
            let metrics = GatewayMetrics(peers: peers)
            do {
                let bound = try MetricsEndpoint.start(host: metricsHost, port: metricsPort, registry: metrics.registry, group: group)
                emit("metrics_listening", ["address": "\(bound)"])
            } catch {
                throw GatewayError.configuration("--metrics-listen \(listen): \(error)")
            }
            self.metrics = metrics
        }
    }

    // MARK: The loop

    mutating func run() throws {
        let now = Timestamp.monotonicNow()
        if cluster.isActive {
            // With keepalived, bound as the standbys bind: a member that gets the role back by a
            // switchover sends from the address before keepalived brought it back.
            try bindIKESockets(freeBind: fifo != nil)
            let remote = try Self.selector(options.remoteSubnet)
            let policy = SecurityPolicy(
                id: SecurityPolicyID(rawValue: 1), localSelectors: [TrafficSelector(address: innerAddress)], remoteSelectors: [remote],
                action: .protect(ProtectionSettings(extendedSequenceNumbers: false)))
            _ = try cluster.update(now: now) { state, changes throws(GatewayStateError) in changes += try state.installPolicy(policy) }
            emit("active", ["policy": "\(options.innerAddress) <-> \(options.remoteSubnet)"])
            // Load sharing: nothing served until the ownership gives this member segments.
            if let steering { applySteering(steering.ruleset(serving: []), why: "start") }
        } else if fifo != nil {
            // Bound before the address is here: the socket receives the moment keepalived adds it.
            try bindIKESockets(freeBind: true)
        }
        while true {
            let now = Timestamp.monotonicNow()
            for signal in signals.read() { operatorSignal(signal, now: now) }
            if let since = stoppingSince, mayExit(stoppingSince: since, now: now) {
                // keepalived on this host must not elect a host whose member is gone.
                if var file = trackFile { _ = file.update(1) }
                if var file = priorityFile { _ = file.update(0) }
                emit("exit", ["why": "SIGTERM"])
                return
            }
            if cluster.isActive {
                serveIKEAndESP(now: now)
                followKernel(now: now)
            } else if let peer = relayingTo {
                relayInbound(to: peer, now: now)
            }
            if let fifo {
                for state in fifo.read() {
                    if state != .master { stopRelaying(why: "keepalived: \(state)") }
                    emit("vrrp", ["state": "\(state)"])
                    cluster.signal(.vrrp(state), now: now)
                }
            }
            for action in transport.service(&cluster, now: now) { try handle(action, now: now) }
            reportReadiness(now: now)
            metrics?.report(cluster, now: now)
            if let steering, !steeringChanges.isEmpty {
                applySteering(steering.update(serving: servedSegments.sorted()), why: steeringChanges.joined(separator: ", "))
                steeringChanges = []
            }
            if !pendingMessageIDSyncs.isEmpty {
                syncMessageIDs(pendingMessageIDSyncs)
                pendingMessageIDSyncs = []
            }
            if cluster.isActive { housekeeping(now: now) }
            // Until the member's next deadline, a synch datagram or (active) an IKE or ESP
            // datagram, at most a millisecond: the sockets are read without NIO, and keepalived's
            // FIFO is read each turn.
            let wake = min(cluster.nextDeadline, Timestamp(nanoseconds: now.nanoseconds + 1_000_000))
            if cluster.isActive {
                let milliseconds = wake > now ? Int32(clamping: (wake.nanoseconds - now.nanoseconds + 999_999) / 1_000_000) : 0
                waitForInput(sockets.map { $0.descriptor }, milliseconds: milliseconds)
            } else {
                transport.wait(until: wake)
            }
        }
    }

    /// SIGUSR1: hand the active role over (a planned switchover). SIGTERM: the same, then exit.
    /// SIGHUP: seal the synch channel under the key now in `--sync-key-file` (standbys first).
    mutating func operatorSignal(_ signal: Int32, now: Timestamp) {
        emit("signal", ["signal": signal == SIGTERM ? "SIGTERM" : signal == SIGHUP ? "SIGHUP" : "SIGUSR1"])
        if signal == SIGHUP {
            rotateKey(now: now)
            return
        }
        if signal == SIGTERM { stoppingSince = now }
        guard cluster.isActive, options.loadSharingSegments == nil else { return }
        do {
            let target: ClusterMemberID
            if var kernel, !options.switchoverLeavesKernelRunning {
                // The kernel stops first (its SAs deleted, their last counters read from the
                // deletion notices), or it would go on numbering packets after the handover.
                defer { self.kernel = kernel }
                target = try cluster.switchOver(dataPlane: &kernel, now: now)
            } else {
                target = try cluster.switchOver(now: now)
            }
            switchedOver = (target, now)
            electableAfterSwitchoverUntil = now + Self.switchOverAcknowledgementLimit
            if fifo != nil { relayingTo = target }
            // The step-down and the datagrams go out with this turn's transport.service.
            emit("switchover", ["to": "\(target.rawValue)"])
            metrics?.switchedOver()
        } catch {
            emit("switchover_refused", ["why": "\(error)"])
            logger.warning("planned switchover refused", metadata: ["why": "\(error)"])
        }
    }

    /// Re-reads the cluster key and rotates to it; a refusal (an unreadable file, the active
    /// member while its standby still seals under the current key) changes nothing and says why.
    mutating func rotateKey(now: Timestamp) {
        do {
            let key = try Self.option("sync-key-file") { try ChannelKey(contentsOfFile: options.syncKeyFile) }
            try cluster.rotateKey(key, now: now)
            emit("key_rotated", ["active": "\(cluster.isActive)"])
            metrics?.rotatedKey()
        } catch {
            emit("key_rotation_refused", ["why": "\(error)"])
            logger.warning("cluster key not rotated", metadata: ["why": "\(error)"])
        }
    }

    /// After SIGTERM: a standby exits at once; a member that handed over once the standby
    /// acknowledged everything (its final state and the switchover), at most 2 s after.
    func mayExit(stoppingSince since: Timestamp, now: Timestamp) -> Bool {
        if cluster.isActive { return now >= since + Self.switchOverAcknowledgementLimit }
        guard let handedOver = switchedOver, handedOver.at >= since else { return true }
        return !cluster.channel.awaitsAcknowledgement(from: handedOver.to) || now >= since + Self.switchOverAcknowledgementLimit
    }

    /// Says when this member's readiness changes, and keeps keepalived's track files with it:
    /// the readiness (0 while electable) and the role (1 while active).
    mutating func reportReadiness(now: Timestamp) {
        let current = cluster.readiness
        if current != readiness {
            readiness = current
            emit("readiness", ["state": "\(current)", "electable": "\(current.isElectable)"])
        }
        if let until = electableAfterSwitchoverUntil, now >= until || (!cluster.isActive && current == .completeCopy) {
            electableAfterSwitchoverUntil = nil
        }
        if var file = trackFile {
            keep(current.isElectable || electableAfterSwitchoverUntil != nil ? 0 : 1, in: &file)
            trackFile = file
        }
        if var file = priorityFile {
            keep(cluster.isActive ? 1 : 0, in: &file)
            priorityFile = file
        }
    }

    /// A track file's new value; a failed write is logged once and tried again each turn.
    func keep(_ value: Int, in file: inout VRRPTrackFile) {
        guard file.value != value else { return }
        if file.update(value) {
            file.failing = false
        } else if !file.failing {
            file.failing = true
            logger.error("cannot write the keepalived track file", metadata: ["path": "\(file.path)", "error": "\(String(cString: strerror(errno)))"])
        }
    }

    /// What the member asks for, besides datagrams to the other member.
    mutating func handle(_ action: ClusterMemberAction, now: Timestamp) throws {
        switch action {
        case .transmit:
            break
        case .relayed(let datagram):
            // Arrived at the member that had the role, for this one: taken as if received here.
            metrics?.relayedDatagram(sent: false)
            handleUDP(
                datagram.bytes, from: datagram.remote,
                on: Endpoint(address: clusterAddress, port: datagram.localPort, udpEncapsulation: datagram.localPort == 4500), now: now)
        case .segmentStarted(let segment, let previous, let handedOver, let plan, let rekey):
            retireChildSAs(rekey, why: Self.cannotMoveOn, now: now)
            if options.noCounterAdvance { rewindCounters(plan, now: now) }
            if options.noSteeringOnTakeover, previous != nil, !handedOver {
                // The negative control: the kernel goes on dropping the segment's packets.
                logger.warning("NEGATIVE CONTROL: \(segment) taken over, steering left as it was")
            } else {
                servedSegments.insert(segment)
                steeringChanges.append("\(segment) started")
            }
            emit("segment_started", [
                "segment": "\(segment.rawValue)", "previous_owner": previous.map { "\($0.rawValue)" } ?? "none", "handed_over": "\(handedOver)",
                "ike_sas": "\(plan.ikeSAs.count)", "child_sas": "\(plan.childSAs.count)", "rekey": "\(rekey.count)",
            ])
            announce(plan.ikeSAs)
            // The plan's decisions, not a sync on every IKE SA: after a handover nothing is
            // missing, and strongSwan can answer only one sync per IKE SA.
            pendingMessageIDSyncs += plan.ikeSAs.filter { if case .messageIDSync = $0.messageIDs { true } else { false } }
        case .segmentStopped(let segment):
            servedSegments.remove(segment)
            steeringChanges.append("\(segment) stopped")
            emit("segment_stopped", ["segment": "\(segment.rawValue)"])
        case .released(let token):
            heldReplies.removeValue(forKey: token)?.forEach { transmit($0) }
            if cluster.tokensReleasedAtDeadline > repliesReleasedAtDeadline {
                logger.warning("the standby did not acknowledge in time: replies sent anyway")
                repliesReleasedAtDeadline = cluster.tokensReleasedAtDeadline
            }
        case .becameReady:
            emit("standby_ready", ["ike_sas": "\(cluster.state.ikeSAs.count)", "child_sas": "\(cluster.state.childSACount)"])
        case .countersCheckpointed(let due):
            if options.announceCheckpoints {
                emit("checkpoint", ["child_sas": "\(due.count)", "last_sent": due.map { "\($0.checkpoint.outbound.lastSent)" }.joined(separator: ",")])
            }
        case .tookOver(let plan, let rekey):
            try tookOver(plan, rekey: rekey, now: now)
            return
        case .steppedDown(let reason):
            let why =
                switch reason {
                case .newerActive(let newer, let epoch): "member \(newer) is active with epoch \(epoch), newer than ours"
                case .activeWithCompleteCopy(let other): "member \(other) is active with a complete copy, this member had none"
                case .external(let why): why
                }
            heldReplies = [:]
            emit("stepped_down", ["why": why])
            logger.warning("no longer the active member", metadata: ["why": "\(why)"])
            // After a switchover the sockets stay: what still reaches this host is relayed.
            if relayingTo == nil {
                sockets = []
                if fifo != nil { try bindIKESockets(freeBind: true) }
            }
        case .heldBack(let why):
            logger.warning("\(why)")
            emit("hold_back", ["reason": why])
        case .reasserted(let jump, let rekey):
            // Message IDs are not synced again: the other member may have synced them already,
            // and strongSwan cannot answer a second sync on an IKE SA (its responses to message
            // ID 0 would reuse an IV). The inbound windows stay as they are (what the other
            // member accepted meanwhile could be replayed to this one once: the price of a split
            // brain without an arbiter).
            responder?.forgetMessageIDSyncs()
            for spi in rekey { emit("child_sa_retired", ["inbound_spi": spi.paddedHexDigits, "why": Self.cannotMoveOn]) }
            emit("reasserted", ["ike_sas": "\(cluster.state.ikeSAs.count)", "counter_jump": "\(jump)", "need_rekey": "\(rekey.count)"])
            logger.warning("another member was active meanwhile (a healed split brain): counters moved on by \(jump)")
        }
        driveKernel(for: action)
    }

    /// The kernel's part of `action` (`--data-plane xfrm`): after a takeover, every Child SA
    /// installed or rewritten with the state's counters. Returns how long that took.
    @discardableResult
    mutating func driveKernel(for action: ClusterMemberAction) -> Duration {
        guard var kernel else { return .zero }
        let started = ContinuousClock.now
        do {
            try cluster.drive(&kernel, for: action)
        } catch {
            logger.error("the kernel refused the takeover's SAs", metadata: ["error": "\(error)"])
            emit("kernel_error", ["during": "takeover", "error": "\(error)"])
        }
        self.kernel = kernel
        return ContinuousClock.now - started
    }

    /// With `--data-plane xfrm`, once a turn on the active member: the counters the kernel
    /// reported adopted (the checkpoints carry them), and the kernel made to hold the Child
    /// SAs the IKE exchanges created and deleted.
    mutating func followKernel(now: Timestamp) {
        guard var kernel else { return }
        do {
            _ = try cluster.observeCounters(kernel.observedCounters(of: cluster.state, now: now))
            try kernel.reconcile(cluster.state)
        } catch {
            logger.error("kernel data plane", metadata: ["error": "\(error)"])
            emit("kernel_error", ["error": "\(error)"])
        }
        self.kernel = kernel
    }

    /// After a switchover, until keepalived moved the address: every IKE and ESP datagram that
    /// still reaches this host goes to the member now active, over the synch channel.
    mutating func relayInbound(to peer: ClusterMemberID, now: Timestamp) {
        readSockets { gateway, bytes, from, local in
            if gateway.cluster.relay(RelayedDatagram(remote: from, localPort: local.port, bytes: bytes), to: peer, now: now) {
                gateway.relayed += 1
                gateway.metrics?.relayedDatagram(sent: true)
            } else {
                gateway.metrics?.relayedDatagramRefused()
                gateway.logger.debug("datagram not relayed", metadata: ["to": "\(peer)", "bytes": "\(bytes.count)"])
            }
        }
    }

    mutating func stopRelaying(why: String) {
        guard relayingTo != nil else { return }
        relayingTo = nil
        emit("relay_stopped", ["relayed": "\(relayed)", "why": why])
        relayed = 0
    }

    /// RFC 6027's hard part, after the member promoted itself and applied the plan: the Child
    /// SAs it cannot move on deleted, the ports bound, the message IDs synced with the peers.
    mutating func tookOver(_ plan: TakeoverPlan, rekey: [UInt32], now: Timestamp) throws {
        stopRelaying(why: "this member took over")
        let silence = peers.compactMap { cluster.channel.lastHeard(from: $0) }.max().map { (now.nanoseconds - $0.nanoseconds) / 1_000_000 } ?? 0
        retireChildSAs(rekey, why: Self.cannotMoveOn, now: now)
        if options.noCounterAdvance { rewindCounters(plan, now: now) }
        // The kernel holds the plan's counters before this member says it took over (and so
        // before the harness or keepalived moves the address to it).
        let kernelBatch = driveKernel(for: .tookOver(plan, rekey: rekey))
        let commandTime = options.takeoverCommand.map { runTakeoverCommand($0) } ?? .zero
        if sockets.isEmpty { try bindIKESockets(freeBind: kernel != nil) }
        responder?.forgetMessageIDSyncs()
        let state = cluster.state
        for decision in plan.childSAs {
            let resumedAt = state.childSA(inboundSPI: decision.inboundSPI)?.outboundCounter.lastSent ?? 0
            let checkpoint: UInt64 = if case .resume(let resumeAfter) = decision.outbound { resumeAfter - decision.advance } else { resumedAt }
            emit("child_sa_takeover", [
                "inbound_spi": decision.inboundSPI.paddedHexDigits, "checkpoint_last_sent": "\(checkpoint)", "resume_after": "\(resumedAt)",
                "advance": "\(resumedAt &- checkpoint)", "reason": "\(decision.reason)",
            ])
        }
        emit("takeover", [
            "silence_ms": "\(silence)", "epoch": "\(cluster.channel.configuration.epoch)", "ike_sas": "\(state.ikeSAs.count)",
            "child_sas": "\(state.childSACount)", "resumed": "\(plan.childSAs.count - rekey.count)", "rekey": "\(rekey.count)",
            "counter_advance": options.noCounterAdvance ? "disabled" : "planned", "kernel_us": "\(Int(kernelBatch / .microseconds(1)))",
            "command_us": "\(Int(commandTime / .microseconds(1)))", "staleness_margin_us": "\(Int(plan.stalenessMargin / .microseconds(1)))",
            "why": "\(cluster.promotionReason.map { "\($0)" } ?? "")",
        ])
        announce(plan.ikeSAs)
        syncMessageIDs(plan.ikeSAs)
        repliesSinceTakeover = 0
        heldReplies = [:]
    }

    /// The negative control `--no-counter-advance`: what a cluster without the counter
    /// checkpoints' advance does, every outbound counter of the plan put back at its checkpoint.
    mutating func rewindCounters(_ plan: TakeoverPlan, now: Timestamp) {
        _ = try? cluster.update(now: now) { state, changes throws(GatewayStateError) in
            for decision in plan.childSAs {
                guard case .resume(let resumeAfter) = decision.outbound, let sa = state.childSA(inboundSPI: decision.inboundSPI),
                    let checkpoint = try? OutboundSequenceCounter(
                        extendedSequenceNumbers: sa.outboundCounter.extendedSequenceNumbers, lastSent: resumeAfter - decision.advance)
                else { continue }
                changes += try state.updateChildSA(inboundSPI: decision.inboundSPI) { $0.outboundCounter = checkpoint }
            }
        }
    }

    /// An event for each IKE SA a takeover (of the whole state, or of a segment) gave this member.
    func announce(_ decisions: [IKESATakeover]) {
        for decision in decisions {
            emit("ike_sa_takeover", ["ike_sa": "\(decision.identifier)", "classification": "\(decision.classification)", "plan": "\(decision.messageIDs)"])
        }
    }

    /// The message-ID part of a takeover: an RFC 6311 message-ID sync on each of these IKE SAs
    /// that negotiated it.
    mutating func syncMessageIDs(_ decisions: [IKESATakeover]) {
        let state = cluster.state
        for decision in decisions {
            guard !options.noMessageIDSync, state.ikeSAs[decision.identifier]?.extensions.messageIDSync == true else { continue }
            // After a planned switchover the replicated message IDs are exact where nothing
            // was in flight: the peer needs no sync (after a failure the gateway syncs every
            // IKE SA, since a request may have died with the failed member unreplicated).
            if case .switchOver = cluster.promotionReason, case .exact = decision.messageIDs { continue }
            do {
                guard let datagram = try responder?.startMessageIDSync(of: decision.identifier, state: state) else { continue }
                transmit(datagram)
                emit("mid_sync_sent", ["ike_sa": "\(decision.identifier)"])
                metrics?.sentMessageIDSync()
            } catch .messageIDSyncAlreadyAnswered {
                // An earlier takeover synced it; the replicated message IDs carry on from there.
                logger.notice("message-ID sync not sent again", metadata: ["ike_sa": "\(decision.identifier)"])
                emit("mid_sync_skipped", ["ike_sa": "\(decision.identifier)", "why": "already answered once on this IKE SA"])
            } catch {
                logger.error("message-ID sync not sent", metadata: ["ike_sa": "\(decision.identifier)", "reason": "\(error)"])
            }
        }
    }

    /// Runs an nftables transaction of this member's steering (`nft -f -`), logged with what it
    /// did and how long the kernel took.
    func applySteering(_ script: String, why: String) {
        let (status, duration) = Self.spawn(["/usr/sbin/nft", "-f", "-"], input: script)
        logger.info("nft -f - (\(why))", metadata: ["script": "\(script)", "status": "\(status)"])
        emit("steering", [
            "why": why, "segments": servedSegments.sorted().map { "\($0.rawValue)" }.joined(separator: ","),
            "nft_us": "\(Int(duration / .microseconds(1)))", "status": "\(status)",
        ])
        if status != 0 { logger.error("nft refused the steering rules", metadata: ["status": "\(status)", "why": "\(why)"]) }
    }

    /// Deletes Child SAs this member must not use any more, and replicates that: those whose
    /// counters cannot move past what the other member may have used (within the advance of
    /// 2^32, without ESN: they would reuse sequence numbers, and their windows cannot tell
    /// replays; review L4), and those past a hard lifetime (RFC 4301). This responder cannot
    /// start a rekey; the peer makes a new Child SA once its packets on the old one go
    /// unanswered.
    mutating func retireChildSAs(_ spis: [UInt32], why: String, now: Timestamp) {
        for spi in spis {
            let lastSent = cluster.state.childSA(inboundSPI: spi)?.outboundCounter.lastSent ?? 0
            guard (try? cluster.update(now: now, { state, changes throws(GatewayStateError) in changes += try state.deleteChildSA(inboundSPI: spi) })) != nil
            else { continue }
            logger.warning("Child SA deleted: \(why)", metadata: ["inbound_spi": "\(spi.paddedHexDigits)", "last_sent": "\(lastSent)"])
            emit("child_sa_retired", ["inbound_spi": spi.paddedHexDigits, "last_sent": "\(lastSent)", "why": why])
        }
    }

    /// Runs `--takeover-command` with `/bin/sh -c` and waits for it: the message-ID syncs and
    /// IKE replies that follow must leave from an address this member holds. A failure is
    /// logged; the takeover goes on.
    func runTakeoverCommand(_ command: String) -> Duration {
        let (status, duration) = Self.spawn(["/bin/sh", "-c", command], input: nil)
        if status != 0 { logger.error("--takeover-command failed", metadata: ["status": "\(status)", "command": "\(command)"]) }
        return duration
    }

    /// Runs `arguments` (the first a path), with `input` on its standard input, and waits for
    /// it: its wait status (-1 when it could not start) and how long it took.
    static func spawn(_ arguments: [String], input: String?) -> (status: Int32, duration: Duration) {
        let started = ContinuousClock.now
        var pipe: [Int32] = [-1, -1]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if input != nil {
            guard Glibc.pipe(&pipe) == 0 else { return (-1, ContinuousClock.now - started) }
            posix_spawn_file_actions_adddup2(&actions, pipe[0], STDIN_FILENO)
            posix_spawn_file_actions_addclose(&actions, pipe[1])
        }
        var pid: pid_t = 0
        var pointers = arguments.map { strdup($0) } + [nil]
        defer { for pointer in pointers { free(pointer) } }
        let spawned = posix_spawn(&pid, arguments[0], &actions, nil, &pointers, environ)
        if let input {
            close(pipe[0])
            if spawned == 0 { _ = input.withCString { write(pipe[1], $0, strlen($0)) } }
            close(pipe[1])
        }
        guard spawned == 0 else { return (-1, ContinuousClock.now - started) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status, ContinuousClock.now - started)
    }

    /// The counters that cannot move on, in `retireChildSAs`'s words.
    static let cannotMoveOn = "its counter cannot move past what the other member may have used"

    // MARK: The active member

    /// A bounded number of datagrams per socket and turn: under an IKE flood the queue never
    /// empties, and the synch channel (heartbeats above all) must still run every turn, or the
    /// standby declares this member dead (review H2).
    mutating func serveIKEAndESP(now: Timestamp) {
        readSockets { gateway, bytes, from, local in gateway.handleUDP(bytes, from: from, on: local, now: now) }
    }

    /// Up to ``datagramsPerSocketAndTurn`` datagrams from each IKE socket, each handed to `body`
    /// with its source and the socket's endpoint (`body` may close the sockets: a step-down).
    mutating func readSockets(_ body: (inout ReferenceGateway, [UInt8], Endpoint, Endpoint) -> Void) {
        for index in sockets.indices {
            for _ in 0..<Self.datagramsPerSocketAndTurn {
                guard index < sockets.count, let (bytes, from) = sockets[index].receive() else { break }
                body(&self, bytes, from, sockets[index].local)
            }
        }
    }

    /// Once a turn on the active member: half-open IKE SAs, hard lifetimes, the drop report.
    mutating func housekeeping(now: Timestamp) {
        responder?.expire(now: now)
        if now.nanoseconds &- lastLifetimeSweep.nanoseconds >= 1_000_000_000 {
            lastLifetimeSweep = now
            retireChildSAs(cluster.state.expiredChildSAs(at: now), why: "past its hard lifetime", now: now)
        }
        if !espDrops.isEmpty, now.nanoseconds - lastDropReport.nanoseconds >= 1_000_000_000 {
            // One line a second at most: a replay flood must not become a log flood.
            logger.info("ESP packets dropped in the last second", metadata: espDrops.mapValues { .stringConvertible($0) })
            emit("esp_dropped", ["counts": espDrops.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ",")])
            espDrops = [:]
            lastDropReport = now
        }
    }

    mutating func handleUDP(_ bytes: [UInt8], from remote: Endpoint, on local: Endpoint, now: Timestamp) {
        if local.port == 500 {
            handleIKE(bytes, from: remote, on: local, now: now)
        } else if bytes.count == 1, bytes[0] == 0xFF {
            return  // NAT-T keepalive (RFC 3948 section 2.3)
        } else if bytes.count >= 4, bytes[0..<4] == [0, 0, 0, 0] {
            handleIKE(Array(bytes[4...]), from: remote, on: local, now: now)
        } else {
            handleESP(bytes, from: remote, now: now)
        }
    }

    mutating func handleIKE(_ bytes: [UInt8], from remote: Endpoint, on local: Endpoint, now: Timestamp) {
        guard var responder = responder.take() else { return }
        defer { self.responder = responder }
        if let (identifier, messageID) = responder.authenticNewRequest(bytes, state: cluster.state) {
            // In flight from now until the exchange finishes: a takeover must know. Only for an
            // authentic request: anybody can send the clear header.
            _ = try? cluster.replicateExchange(of: identifier, messageID: messageID, initiatedHere: false, finished: false, now: now)
            if let crash = options.crashOnExchange, let header = try? EncryptedMessage.header(of: bytes), header.exchangeType.description == crash {
                // Dies in the middle of the exchange: the standby heard it start, not finish.
                for case .transmit(let to, let datagram) in drainActions() { try? transport.send(datagram, to: to, now: now) }
                emit("crash_injected", ["exchange": crash, "message_id": "\(messageID)"])
                usleep(50_000)
                exit(137)
            }
        }
        var received: IKEOutcome?
        guard
            var token = try? cluster.update(now: now, { state, changes in
                let outcome = responder.receive(bytes, from: remote, on: local, state: &state, now: now)
                changes += outcome.changes
                received = outcome
            }),
            let outcome = received
        else { return }
        if let exchange = outcome.exchange,
            let finished = try? cluster.replicateExchange(of: exchange.ikeSA, messageID: exchange.messageID, initiatedHere: false, finished: true, now: now)
        {
            // The reply waits for the later of the two: the exchange's end follows its changes.
            token = finished
            // IKE_AUTH is message ID 1: the IKE SA is up (and, load sharing, in its segment).
            if exchange.messageID == 1, let sa = cluster.state.ikeSAs[exchange.ikeSA] {
                let segment = cluster.configuration.loadSharing.map { "\($0.segments.segment(of: sa).rawValue)" } ?? "none"
                emit("ike_sa_established", ["ike_sa": "\(exchange.ikeSA)", "peer": "\(sa.remote)", "segment": segment])
            }
        }
        if let synced = outcome.messageIDSyncCompleted {
            let windows = cluster.state.ikeSAs[synced]?.messageIDs
            emit("mid_sync_done", [
                "ike_sa": "\(synced)", "next_request_id": "\(windows?.requests.nextMessageID ?? 0)",
                "next_expected_request_id": "\(windows?.responses.nextExpectedMessageID ?? 0)",
            ])
        }
        // Synchronous replication: the replies wait until the standby holds what they depend on
        // (the member releases at once when no standby is there to wait for).
        if !outcome.replies.isEmpty { heldReplies[token, default: []] += outcome.replies }
    }

    /// The member's pending actions, taken out now (before an injected crash).
    mutating func drainActions() -> [ClusterMemberAction] {
        var actions: [ClusterMemberAction] = []
        while let action = cluster.nextAction() { actions.append(action) }
        return actions
    }

    mutating func handleESP(_ bytes: [UInt8], from remote: Endpoint, now: Timestamp) {
        let innerAddress = self.innerAddress
        let result = cluster.packetPath { state -> Result<(packet: [UInt8], spi: UInt32, sequenceNumber: UInt64, remote: Endpoint, port: UInt16)?, ESPPacketError> in
            do throws(ESPPacketError) {
                let (inner, spi, slot) = try ESPDataPlane.decapsulate(bytes[...], state: &state)
                guard let reply = IPv4Packet.echoReply(to: inner, for: innerAddress), let sa = state[slot], let ike = state.ikeSAs[sa.parent]
                else { return .success(nil) }
                let packet = try ESPDataPlane.encapsulate(reply, slot: slot, state: &state)
                return .success((packet, spi, state[slot]?.outboundCounter.lastSent ?? 0, ike.remote, ike.local.port))
            } catch {
                return .failure(error)
            }
        }
        switch result {
        case .success(let reply?)?:
            if let socket = sockets.firstIndex(where: { $0.local.port == reply.port }) { sockets[socket].send(reply.packet, to: reply.remote) }
            repliesSinceTakeover += 1
            metrics?.answeredESP()
            if repliesSinceTakeover == 1 {
                emit("first_esp_reply", ["inbound_spi": reply.spi.paddedHexDigits, "sequence_number": "\(reply.sequenceNumber)"])
            }
        case .failure(let error)?:
            let kind = "\(error)".prefix { $0 != "(" }
            espDrops[String(kind), default: 0] += 1
            metrics?.droppedESP(reason: String(kind))
            logger.debug("ESP packet dropped", metadata: ["reason": "\(error)", "from": "\(remote)"])
        case .success(nil)?, nil:
            break
        }
    }

    // MARK: Plumbing

    mutating func bindIKESockets(freeBind: Bool = false) throws {
        sockets = [
            try UDPSocket(address: clusterAddress, port: 500, freeBind: freeBind),
            try UDPSocket(address: clusterAddress, port: 4500, freeBind: freeBind),
        ]
        emit("listening", ["address": options.clusterAddress, "ports": "500,4500", "early": "\(freeBind)"])
    }

    func transmit(_ datagram: IKEDatagram) {
        guard let socket = sockets.firstIndex(where: { $0.local.port == datagram.localPort }) else { return }
        // On 4500, IKE goes behind the four-byte non-ESP marker (RFC 3948 section 2.2).
        sockets[socket].send(datagram.localPort == 4500 ? [0, 0, 0, 0] + datagram.bytes : datagram.bytes, to: datagram.destination)
    }

    func emit(_ event: String, _ fields: KeyValuePairs<String, String> = [:]) {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        let realtime = UInt64(time.tv_sec) * 1_000 + UInt64(time.tv_nsec) / 1_000_000
        var line = "event=\(event) member=\(member.rawValue) realtime_ms=\(realtime)"
        for (key, value) in fields { line += " \(key)=\(value.contains(" ") ? "\"\(value)\"" : value)" }
        line += "\n"
        _ = line.withCString { write(1, $0, strlen($0)) }
    }

    /// `body`'s error, said as one about `--name` (so that an error from a configuration file
    /// names its line).
    static func option<T>(_ name: String, _ body: () throws -> T) throws -> T {
        do { return try body() } catch { throw GatewayError.configuration("--\(name): \(error)") }
    }

    static func hostAndPort(_ text: String) throws -> (String, Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]) else {
            throw GatewayError.configuration("expected host:port, got \(text)")
        }
        return (String(text[..<colon]), port)
    }

    static func selector(_ text: String) throws -> TrafficSelector {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let length = Int(parts[1]) else { throw GatewayError.configuration("expected address/length, got \(text)") }
        do { return try TrafficSelector(prefix: try IPAddress(String(parts[0])), length: length) } catch {
            throw GatewayError.configuration("\(text): \(error)")
        }
    }

}
