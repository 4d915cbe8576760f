import IPsecHACore
import IPsecHAGateway
import IPsecHASync
import IPsecHASyncNIO
import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// The member's loop: the embedding guide's hooks, in the order a gateway calls them.
struct ReferenceGateway {
    let options: GatewayCommand
    let member: ClusterMemberID
    let peer: ClusterMemberID
    let clusterAddress: IPAddress
    let innerAddress: IPAddress
    var logger = Logger(label: "ikeha-gateway")

    /// Every IKE SA and Child SA this member holds: the IKE stack's state, replicated.
    var state = GatewayState()
    var responder: IKEv2Responder
    var channel: SyncChannel
    var transport: UDPSyncTransport
    let group: MultiThreadedEventLoopGroup
    var replicator: Replicator
    var scheduler: CounterCheckpointScheduler
    var sockets: [UDPSocket] = []

    /// Replies held until the standby holds the changes behind them (synchronous replication
    /// of IKE state): their tickets acknowledged, and a standby that was catching up caught up.
    var held = HeldReplies<IKEDatagram>()
    /// How long a reply may wait for the standby: then it goes anyway, with a warning. Below
    /// the peer's first retransmission (strongSwan: 4 s), long enough for a resync of
    /// thousands of SAs.
    static let holdLimit: UInt64 = 2_000_000_000
    /// IKE and ESP datagrams read from one socket before the loop turns to the synch channel.
    static let datagramsPerSocketAndTurn = 64
    /// The pre-shared key's length in bytes (the responder authenticates nobody with a shorter
    /// one; a longer file is a mistake, not a key to cut).
    static let preSharedKeyLength = IKEResponderConfiguration.minimumPreSharedKeyLength...1_024
    /// ESP replies sent since this member became active (the first one is an event).
    var repliesSinceTakeover = 0
    /// Active or standby, and at which epoch.
    var role: ClusterRole
    /// keepalived's notify FIFO and what it last said, with `--vrrp-fifo`.
    let fifo: VRRPNotifyFIFO?
    var vrrp = VRRPFollower()
    /// The newest epoch another member announced; a promotion goes above it.
    var highestEpochHeard: UInt32 = 0
    /// When this member last stepped down because another announced a newer epoch.
    var steppedDownAt: Timestamp?
    /// This member was active and is not a ready standby since.
    var hasBeenActive = false
    /// A member that had stepped down said hello (see `reassertAfterSplitBrain`).
    var splitBrainHealed = false
    /// When the Child SAs' hard lifetimes were last checked (once a second).
    var lastLifetimeSweep = Timestamp(nanoseconds: 0)
    /// ESP packets dropped since the last report, by reason (reported once a second).
    var espDrops: [String: Int] = [:]
    var lastDropReport = Timestamp(nanoseconds: 0)

    init(options: GatewayCommand) throws {
        self.options = options
        member = ClusterMemberID(rawValue: options.member)
        do {
            clusterAddress = try IPAddress(options.clusterAddress)
            innerAddress = try IPAddress(options.innerAddress)
        } catch { throw GatewayError.configuration("addresses: \(error)") }
        let parts = options.syncPeer.split(separator: "=", maxSplits: 1)
        guard parts.count == 2, let peerRaw = UInt16(parts[0]) else { throw GatewayError.configuration("--sync-peer expects id=host:port") }
        peer = ClusterMemberID(rawValue: peerRaw)
        let (peerHost, peerPort) = try Self.hostAndPort(String(parts[1]))
        let (host, port) = try Self.hostAndPort(options.syncListen)
        let psk = try SecretFile.read(options.pskFile, length: Self.preSharedKeyLength, dropTrailingNewline: true) { bytes in
            KeyMaterial(count: bytes.count) { $0.copyMemory(from: bytes) }
        }
        let configuration = IKEResponderConfiguration(
            localIdentity: IKEIdentity(options.localID), remoteIdentity: IKEIdentity(options.remoteID),
            preSharedKey: psk, member: member)
        responder = IKEv2Responder(configuration: configuration, logger: Logger(label: "ike"))
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.group = group
        let peerAddress = try SocketAddress(ipAddress: peerHost, port: peerPort)
        let member = self.member
        let peer = self.peer
        transport = try group.next().makeFutureWithTask {
            try await UDPSyncTransport.bind(member: member, host: host, port: port, peers: [peer: peerAddress], group: group)
        }.wait()
        // The role epoch, from the clock: it only orders members that are active at once (split
        // brain). The synch channel does not rely on it: a restart with a lower or equal one is fine.
        let epoch = UInt32(truncatingIfNeeded: Timestamp.monotonicNow().nanoseconds / 1_000_000) | 1
        var channelConfiguration = SyncChannelConfiguration(
            clusterID: 1, member: member, epoch: epoch, key: try ChannelKey(contentsOfFile: options.syncKeyFile), peers: [peer])
        channelConfiguration.logger = Logger(label: "sync")
        channelConfiguration.logger.logLevel = .warning
        channel = try SyncChannel(configuration: channelConfiguration)
        replicator = Replicator(standbys: [peer])
        role = ClusterRole(member: member, epoch: epoch, isActive: options.active, activeMember: options.active ? nil : peer)
        fifo = options.vrrpFIFO.map { VRRPNotifyFIFO(path: $0, instance: options.vrrpInstance) }
        scheduler = CounterCheckpointScheduler(
            policy: CounterCheckpointPolicy(packets: options.checkpointPackets, interval: options.checkpointMs * 1_000_000))
    }

    // MARK: Roles

    mutating func run() throws {
        var isActive = options.active
        if isActive {
            try bindIKESockets()
            let remote = try Self.selector(options.remoteSubnet)
            let policy = SecurityPolicy(
                id: SecurityPolicyID(rawValue: 1), localSelectors: [TrafficSelector(address: innerAddress)], remoteSelectors: [remote],
                action: .protect(ProtectionSettings(extendedSequenceNumbers: false)))
            let changes = try state.installPolicy(policy)
            perform(replicator.replicate(changes, state: state, channel: &channel, now: Timestamp.monotonicNow()).actions, now: Timestamp.monotonicNow())
            emit("active", ["policy": "\(options.innerAddress) <-> \(options.remoteSubnet)"])
        }
        while true {
            if isActive {
                try runActive()
            } else {
                try runStandby()
            }
            isActive.toggle()
        }
    }

    /// Reads keepalived's notify FIFO, when there is one, and returns the decision of the last
    /// state it reported.
    mutating func followVRRP() -> VRRPFollower.Decision {
        guard let fifo else { return .stay }
        var decision = VRRPFollower.Decision.stay
        for state in fifo.read() {
            decision = vrrp.heard(state, isActive: role.isActive)
            emit("vrrp", ["state": "\(state)"])
        }
        return decision
    }

    /// The standby: apply what the active member replicates until it falls silent (or, behind
    /// keepalived, until keepalived says MASTER), then take over.
    mutating func runStandby() throws {
        var replica = Replica()
        if fifo != nil, sockets.isEmpty {
            // Bound before the address is here: the socket receives the moment keepalived adds it.
            try bindIKESockets(freeBind: true)
        }
        var lastHello: Timestamp?
        var ready = false
        while true {
            let now = Timestamp.monotonicNow()
            for case .deliver(_, let records) in transport.service(&channel, now: now) {
                replica.apply(records, now: now)
                vrrp.activeMemberHeard()
                for case .hello(let epoch, _, _) in records { highestEpochHeard = max(highestEpochHeard, epoch) }
            }
            replica.observe(missingSince: channel.missingSince(from: peer))
            if let request = replica.takeResyncRequest() { send([request], now: now) }
            if !replica.isReady, !replica.isResyncing, lastHello.map({ now.nanoseconds - $0.nanoseconds >= 200_000_000 }) ?? true {
                lastHello = now
                // After stepping down, say so until resynced: this member may have sent on SAs
                // the active member holds.
                let capabilities = hasBeenActive ? ClusterRole.steppedDownCapability : 0
                send([.hello(epoch: channel.configuration.epoch, capabilities: capabilities, needsResync: true)], now: now)
            }
            if replica.isReady, !ready {
                ready = true
                hasBeenActive = false
                steppedDownAt = nil
                emit("standby_ready", ["ike_sas": "\(replica.state.ikeSAs.count)", "child_sas": "\(replica.state.childSACount)"])
            }
            var decision = followVRRP()
            if ready, role.tick(now: now, lastHeard: channel.lastHeard(from: peer)).contains(.activeMemberFailed(peer)) {
                decision = fifo == nil ? .takeOver(.activeMemberSilent(peer)) : vrrp.activeMemberSilent(peer)
            }
            if case .stay = decision, vrrp.state == .master, steppedDownAt.map({ now.nanoseconds - $0.nanoseconds >= 1_000_000_000 }) ?? true {
                // keepalived gave this host the address while another member said it was active
                // with a newer epoch (a healed split brain): after a hello interval for the
                // other side to settle, the address decides.
                decision = .takeOver(.external("keepalived: MASTER, the address is here"))
            }
            switch decision {
            case .takeOver(let reason):
                try takeOver(from: replica, reason: reason, now: now)
                return
            case .holdBack(let why):
                logger.warning("\(why)")
                emit("hold_back", ["reason": why])
            case .stay, .stepDown:
                break
            }
            usleep(500)
        }
    }

    /// RFC 6027's hard part, in order: promote, new epoch, plan, counters, ports, message IDs.
    mutating func takeOver(from standbyReplica: Replica, reason: PromotionReason, now: Timestamp) throws {
        var replica = standbyReplica
        replica.applyHeldCheckpoints(channel.recordsHeldBehindGap(from: peer), now: now)
        let silence = channel.lastHeard(from: peer).map { (now.nanoseconds - $0.nanoseconds) / 1_000_000 } ?? 0
        let epoch = nextEpoch
        _ = try role.promote(reason, newEpoch: epoch)
        try channel.rotate(toEpoch: epoch)
        // The advance is at least the checkpoint's packet count: that many may have gone out
        // after the last checkpoint. Outbound it is also at least the policy's maximum rate for
        // the time unaccounted for (a burst while checkpoints were lost). The inbound window
        // takes the measured advance (strongSwan has no RFC 6311 replay-counter sync), so that
        // many of the peer's next packets are dropped: hence the checkpoint count, not 4,096.
        let policy = TakeoverPolicy(
            minimumAdvance: options.takeoverMinimumAdvance ?? options.checkpointPackets, stalenessMargin: options.stalenessMarginMs * 1_000_000)
        let plan: TakeoverPlan
        if replica.isReady || state.ikeSAs.isEmpty {
            plan = replica.takeoverPlan(policy: policy, now: now)
            state = replica.state
        } else {
            // No complete copy from the other member (it stepped down before resyncing this one,
            // after a split brain): continue from this member's own state, every IKE SA
            // suspect, and counters with no fresh checkpoint jump by the unknown advance (2^30):
            // the other side may have sent on them meanwhile.
            logger.warning("taking over from this member's own state: no complete copy from the other member")
            plan = TakeoverPlanner.plan(state: state, inFlight: [:], suspect: .all, policy: policy, now: now)
        }
        let outcome = state.applyTakeover(plan)
        retireChildSAs(outcome.rekey, why: Self.cannotMoveOn, now: now)
        if options.noCounterAdvance {
            // The negative control: what a cluster without counter checkpoints' advance does.
            for sa in replica.state.childSAs {
                _ = try? state.updateChildSA(inboundSPI: sa.inboundSPI) { $0.outboundCounter = sa.outboundCounter }
            }
        }
        if sockets.isEmpty { try bindIKESockets() }
        responder.forgetMessageIDSyncs()
        for decision in plan.childSAs {
            let resumedAt = state.childSA(inboundSPI: decision.inboundSPI)?.outboundCounter.lastSent ?? 0
            let checkpoint = replica.state.childSA(inboundSPI: decision.inboundSPI)?.outboundCounter.lastSent ?? 0
            emit("child_sa_takeover", [
                "inbound_spi": decision.inboundSPI.paddedHexDigits, "checkpoint_last_sent": "\(checkpoint)", "resume_after": "\(resumedAt)",
                "advance": "\(resumedAt &- checkpoint)", "reason": "\(decision.reason)",
            ])
        }
        emit("takeover", [
            "silence_ms": "\(silence)", "epoch": "\(epoch)", "ike_sas": "\(state.ikeSAs.count)", "child_sas": "\(state.childSACount)",
            "resumed": "\(outcome.resumed)", "rekey": "\(outcome.rekey.count)",
            "counter_advance": options.noCounterAdvance ? "disabled" : "planned", "why": "\(reason)",
        ])
        for decision in plan.ikeSAs {
            emit("ike_sa_takeover", ["ike_sa": "\(decision.identifier)", "classification": "\(decision.classification)", "plan": "\(decision.messageIDs)"])
            guard !options.noMessageIDSync, state.ikeSAs[decision.identifier]?.extensions.messageIDSync == true else { continue }
            do {
                let datagram = try responder.startMessageIDSync(of: decision.identifier, state: state)
                transmit(datagram)
                emit("mid_sync_sent", ["ike_sa": "\(decision.identifier)"])
            } catch .messageIDSyncAlreadyAnswered {
                // An earlier takeover synced it; the replicated message IDs carry on from there.
                logger.notice("message-ID sync not sent again", metadata: ["ike_sa": "\(decision.identifier)"])
                emit("mid_sync_skipped", ["ike_sa": "\(decision.identifier)", "why": "already answered once on this IKE SA"])
            } catch {
                logger.error("message-ID sync not sent", metadata: ["ike_sa": "\(decision.identifier)", "reason": "\(error)"])
            }
        }
        // The old active member may come back: it will resync from this one.
        replicator = Replicator(standbys: [peer])
        repliesSinceTakeover = 0
        held.removeAll()
    }

    /// A member that had stepped down from the active role says hello: it was active while this
    /// one was too (a split brain, now healed), and may have sent on every SA this member holds.
    /// Nothing says how far, so the outbound counters jump by RFC 6311's "very large number"
    /// (2^30, section 5.2). Message IDs are not synced again: the other member may have synced
    /// them already, and strongSwan cannot answer a second sync on an IKE SA (its responses
    /// to message ID 0 would reuse an IV). The inbound windows stay as they are (what the other
    /// member accepted meanwhile could be replayed to this one once: the price of a split
    /// brain without an arbiter).
    mutating func reassertAfterSplitBrain() {
        let epoch = nextEpoch
        do { try role.reassert(newEpoch: epoch) } catch { logger.error("epoch not moved on", metadata: ["reason": "\(error)"]) }
        try? channel.rotate(toEpoch: epoch)
        responder.forgetMessageIDSyncs()
        var needRekey: [UInt32] = []
        for identifier in state.ikeSAs.keys.sorted() {
            do { needRekey += try state.advanceOutboundCounters(ofChildSAsOf: identifier, by: 1 << 30).needRekey } catch {
                logger.error("counters not moved", metadata: ["ike_sa": "\(identifier)", "reason": "\(error)"])
            }
        }
        retireChildSAs(needRekey, why: Self.cannotMoveOn, now: Timestamp.monotonicNow())
        emit("reasserted", ["epoch": "\(epoch)", "ike_sas": "\(state.ikeSAs.count)", "counter_jump": "\(1 << 30)", "need_rekey": "\(needRekey.count)"])
        logger.warning("another member was active meanwhile (a healed split brain): counters moved on by 2^30, message IDs synced again")
    }

    /// Deletes Child SAs this member must not use any more, and replicates that: those whose
    /// counters cannot move past what the other member may have used (within the advance of
    /// 2^32, without ESN: they would reuse sequence numbers, and their windows cannot tell
    /// replays; review L4), and those past a hard lifetime (RFC 4301). This responder cannot
    /// start a rekey; the peer makes a new Child SA once its packets on the old one go
    /// unanswered.
    mutating func retireChildSAs(_ spis: [UInt32], why: String, now: Timestamp) {
        for spi in spis {
            let lastSent = state.childSA(inboundSPI: spi)?.outboundCounter.lastSent ?? 0
            guard let changes = try? state.deleteChildSA(inboundSPI: spi) else { continue }
            perform(replicator.replicate(changes, state: state, channel: &channel, now: now).actions, now: now)
            logger.warning("Child SA deleted: \(why)", metadata: ["inbound_spi": "\(spi.paddedHexDigits)", "last_sent": "\(lastSent)"])
            emit("child_sa_retired", ["inbound_spi": spi.paddedHexDigits, "last_sent": "\(lastSent)", "why": why])
        }
    }

    /// The counters that cannot move on, in `retireChildSAs`'s words.
    static let cannotMoveOn = "its counter cannot move past what the other member may have used"

    /// Above every epoch this member has been at or heard of: a split brain resolves in favour
    /// of the newest active member.
    /// Saturates at the largest epoch (a hello from a key holder can claim it: adding one
    /// trapped); a promotion at the largest then fails with a logged error instead.
    var nextEpoch: UInt32 {
        let highest = max(channel.configuration.epoch, role.epoch, highestEpochHeard)
        return highest == .max ? .max : highest + 1
    }

    /// The active member: serve IKE and ESP, replicate, until told to step down (keepalived
    /// moved the address away, or a member with a newer epoch says it is active).
    mutating func runActive() throws {
        var lastHello = Timestamp(nanoseconds: 0)
        while true {
            let now = Timestamp.monotonicNow()
            if now.nanoseconds - lastHello.nanoseconds >= 1_000_000_000 {
                // Says who is active, so that an old active member that comes back (or a split
                // brain) resolves by epoch.
                lastHello = now
                send([.hello(epoch: role.epoch, capabilities: role.capabilities, needsResync: false)], now: now)
            }
            var stepDown: String?
            if case .stepDown(let why) = followVRRP() { stepDown = why }
            if let newer = try activeStep(now: now) {
                stepDown = newer
                steppedDownAt = now
            }
            if let why = stepDown {
                hasBeenActive = true
                sockets = []
                held.removeAll()
                emit("stepped_down", ["why": why])
                logger.warning("no longer the active member", metadata: ["why": "\(why)"])
                if role.isActive {
                    // keepalived's decision: the role machine follows it to the next epoch.
                    role = ClusterRole(member: member, epoch: role.epoch, isActive: false, activeMember: peer)
                }
                replicator = Replicator(standbys: [peer])
                return
            }
        }
    }

    // MARK: The active member's loop

    /// One pass of the active member's loop; returns why it must step down, if it must.
    mutating func activeStep(now: Timestamp) throws -> String? {
        // A bounded number of datagrams per socket and turn: under an IKE flood the queue never
        // empties, and the synch channel (heartbeats above all) must still run every turn, or
        // the standby declares this member dead (review H2).
        for index in sockets.indices {
            for _ in 0..<Self.datagramsPerSocketAndTurn {
                guard let (bytes, from) = sockets[index].receive() else { break }
                handleUDP(bytes, from: from, on: sockets[index].local, now: now)
            }
        }
        var steppedDown: String?
        for datagram in transport.receive(now: now) {
            let actions = channel.receive(datagram, now: now)
            for case .deliver(let from, let records) in actions {
                for case .hello(let epoch, let capabilities, _) in records {
                    highestEpochHeard = max(highestEpochHeard, epoch)
                    // Once per epoch of the other member: it repeats its hello until resynced.
                    if role.reassertionDue(afterHelloFrom: from, epoch: epoch, capabilities: capabilities, now: now) { splitBrainHealed = true }
                    for case .steppedDown(let newer, let newerEpoch) in role.heardHello(from: from, epoch: epoch, capabilities: capabilities) {
                        steppedDown = "member \(newer) is active with epoch \(newerEpoch), newer than ours"
                    }
                }
            }
            perform(actions, now: now)
        }
        if splitBrainHealed {
            splitBrainHealed = false
            reassertAfterSplitBrain()
        }
        perform(channel.tick(now: now), now: now)
        perform(replicator.pump(channel: &channel, now: now), now: now)
        let due = scheduler.takeDueCheckpoints(from: &state, now: now)
        if !due.isEmpty {
            perform(replicator.replicate(checkpoints: due, state: state, channel: &channel, now: now).actions, now: now)
            if options.announceCheckpoints {
                emit("checkpoint", ["child_sas": "\(due.count)", "last_sent": due.map { "\($0.checkpoint.outbound.lastSent)" }.joined(separator: ",")])
            }
        }
        releaseHeldReplies(now: now)
        responder.expire(now: now)
        if now.nanoseconds &- lastLifetimeSweep.nanoseconds >= 1_000_000_000 {
            lastLifetimeSweep = now
            retireChildSAs(state.expiredChildSAs(at: now), why: "past its hard lifetime", now: now)
        }
        if !espDrops.isEmpty, now.nanoseconds - lastDropReport.nanoseconds >= 1_000_000_000 {
            // One line a second at most: a replay flood must not become a log flood.
            logger.info("ESP packets dropped in the last second", metadata: espDrops.mapValues { .stringConvertible($0) })
            emit("esp_dropped", ["counts": espDrops.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ",")])
            espDrops = [:]
            lastDropReport = now
        }
        waitForInput(sockets.map { $0.descriptor }, milliseconds: 1)
        return steppedDown
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
        if let (identifier, messageID) = responder.authenticNewRequest(bytes, state: state) {
            // In flight from now until the exchange finishes: a takeover must know. Only for an
            // authentic request: anybody can send the clear header.
            perform(replicator.replicateExchange(
                of: identifier, messageID: messageID, initiatedHere: false, finished: false, state: state, channel: &channel, now: now).actions, now: now)
            if let crash = options.crashOnExchange, let header = try? EncryptedMessage.header(of: bytes), header.exchangeType.description == crash {
                // Dies in the middle of the exchange: the standby heard it start, not finish.
                emit("crash_injected", ["exchange": crash, "message_id": "\(messageID)"])
                usleep(50_000)
                exit(137)
            }
        }
        let outcome = responder.receive(bytes, from: remote, on: local, state: &state, now: now)
        var tickets: [SyncTicket] = []
        if !outcome.changes.isEmpty {
            let sent = replicator.replicate(outcome.changes, state: state, channel: &channel, now: now)
            tickets += sent.tickets
            perform(sent.actions, now: now)
        }
        if let exchange = outcome.exchange {
            let sent = replicator.replicateExchange(
                of: exchange.ikeSA, messageID: exchange.messageID, initiatedHere: false, finished: true, state: state, channel: &channel, now: now)
            tickets += sent.tickets
            perform(sent.actions, now: now)
        }
        if let synced = outcome.messageIDSyncCompleted {
            let windows = state.ikeSAs[synced]?.messageIDs
            emit("mid_sync_done", [
                "ike_sa": "\(synced)", "next_request_id": "\(windows?.requests.nextMessageID ?? 0)",
                "next_expected_request_id": "\(windows?.responses.nextExpectedMessageID ?? 0)",
            ])
        }
        // Synchronous replication: the reply waits for the standby, if there is one to wait for
        // (none before it joined, none after a takeover until the old active comes back), also
        // while it catches up (a resync or a backlog gives no ticket).
        guard standbyListening(now: now) else {
            outcome.replies.forEach { transmit($0) }
            return
        }
        for reply in outcome.replies {
            let deadline = Timestamp(nanoseconds: now.nanoseconds + Self.holdLimit)
            if let free = held.hold(reply, tickets: tickets, standbys: [peer], replicator: replicator, deadline: deadline) { transmit(free) }
        }
    }

    /// Whether the standby was heard within three heartbeats: otherwise nobody is there to wait for.
    func standbyListening(now: Timestamp) -> Bool {
        channel.lastHeard(from: peer).map { now.nanoseconds - $0.nanoseconds < 3 * channel.configuration.heartbeatInterval } ?? false
    }

    mutating func releaseHeldReplies(now: Timestamp) {
        let expiredBefore = held.expired
        let listening = standbyListening(now: now)
        for reply in held.release(channel: channel, replicator: replicator, now: now, gone: { _ in !listening }) { transmit(reply) }
        if held.expired > expiredBefore {
            logger.warning("the standby did not acknowledge in time: replies sent anyway", metadata: ["replies": "\(held.expired - expiredBefore)"])
        }
    }

    mutating func handleESP(_ bytes: [UInt8], from remote: Endpoint, now: Timestamp) {
        do throws(ESPPacketError) {
            let (inner, spi, slot) = try ESPDataPlane.decapsulate(bytes[...], state: &state)
            guard let reply = IPv4Packet.echoReply(to: inner, for: innerAddress), let sa = state[slot], let ike = state.ikeSAs[sa.parent]
            else { return }
            let packet = try ESPDataPlane.encapsulate(reply, slot: slot, state: &state)
            if let socket = sockets.firstIndex(where: { $0.local.port == ike.local.port }) {
                sockets[socket].send(packet, to: ike.remote)
            }
            repliesSinceTakeover += 1
            if repliesSinceTakeover == 1 {
                emit("first_esp_reply", ["inbound_spi": spi.paddedHexDigits, "sequence_number": "\(state[slot]?.outboundCounter.lastSent ?? 0)"])
            }
        } catch {
            let kind = "\(error)".prefix { $0 != "(" }
            espDrops[String(kind), default: 0] += 1
            logger.debug("ESP packet dropped", metadata: ["reason": "\(error)", "from": "\(remote)"])
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

    mutating func send(_ records: [SyncRecord], now: Timestamp) {
        guard let sent = try? channel.send(records, to: peer, now: now) else { return }
        for case .transmit(let to, let datagram) in sent.actions { try? transport.send(datagram, to: to, now: now) }
    }

    mutating func perform(_ actions: [SyncChannelAction], now: Timestamp) {
        for action in actions {
            switch action {
            case .transmit(let to, let datagram): try? transport.send(datagram, to: to, now: now)
            case .deliver, .resyncNeeded: perform(replicator.handle(action, state: state, channel: &channel, now: now), now: now)
            case .peerRestarted, .dropped: break
            }
        }
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
