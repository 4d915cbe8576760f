import ArgumentParser
import IPsecHACore
import IPsecHASimulation
import IPsecHASync
import IPsecHASyncNIO
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// `ikeha-demo member`: one cluster member as its own process, over real UDP sockets.
///
/// The active member (`--active`) holds `--ike-sas` IKE SAs with two Child SAs each, sends
/// simulated ESP on them (counters only), checkpoints the counters, and replicates to its peer;
/// every 20 ms it prints the highest outbound counter of its first Child SA that the standby has
/// acknowledged: `acknowledged spi=N last_sent=N`. The standby prints `ready` once its bulk
/// resync completed; when the active member goes silent for three heartbeats it takes over and
/// prints one JSON line, its report, then exits.
///
/// Both print a status line on standard error every second (`--status-interval-ms`; 0: none),
/// rewritten in place when standard error is a terminal: the role, the SAs held, the synch
/// channel's traffic and, on the active member, the replication lag and what waits for the
/// standby; on the standby, whether it is ready and how long ago it last heard the active.
struct MemberCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "member",
        abstract: "Run one cluster member over UDP (with --active, the active one)."
    )

    @Option(help: "This member's ID (1 to 15).") var id: UInt16
    @Option(help: "Local UDP address, host:port.") var listen: String
    @Option(help: "The peer member, id=host:port.") var peer: String
    @Option(name: .customLong("key-file"), help: "The cluster key: a file of 32 bytes, mode 600, owned by this user.") var keyFile: String
    @Flag(help: "Start as the active member.") var active = false
    @Option(name: .customLong("ike-sas"), help: "IKE SAs the active member holds.") var ikeSAs = 200
    @Option(name: .customLong("packets-per-second"), help: "Outbound packets a second per Child SA.") var packetsPerSecond = 1_000
    @Option(name: .customLong("duration-ms"), help: "Stop after this long (0: run until killed or taken over).") var durationMs: UInt64 = 0
    @Option(name: .customLong("status-interval-ms"), help: "A status line on standard error this often (0: none).") var statusIntervalMs: UInt64 = 1_000
    @Option(help: "The role epoch (default: from the monotonic clock; a low one plays a member whose machine rebooted).") var epoch: UInt32?

    static func address(_ text: String) throws -> (String, Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]) else {
            throw ValidationError("expected host:port, got \(text)")
        }
        return (String(text[..<colon]), port)
    }

    /// Writes a line to standard output at once (a test reads it while the process runs).
    static func emit(_ line: String) { writeUnbuffered(line + "\n", to: 1) }

    func run() throws {
        let member = ClusterMemberID(rawValue: id)
        let parts = peer.split(separator: "=", maxSplits: 1)
        guard parts.count == 2, let peerRaw = UInt16(parts[0]) else { throw ValidationError("--peer expects id=host:port") }
        let peerID = ClusterMemberID(rawValue: peerRaw)
        let (peerHost, peerPort) = try Self.address(String(parts[1]))
        let (host, port) = try Self.address(listen)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let peerAddress = try SocketAddress(ipAddress: peerHost, port: peerPort)
        var transport = try group.next().makeFutureWithTask {
            try await UDPSyncTransport.bind(member: member, host: host, port: port, peers: [peerID: peerAddress], group: group)
        }.wait()
        // The role epoch, from the clock: it only orders members that are active at once (split
        // brain). The synch channel does not rely on it: a restart with a lower or equal one is fine.
        let epoch = self.epoch ?? UInt32(truncatingIfNeeded: Timestamp.monotonicNow().nanoseconds / 1_000_000) | 1
        var configuration = SyncChannelConfiguration(clusterID: 1, member: member, epoch: epoch, key: try ChannelKey(contentsOfFile: keyFile), peers: [peerID])
        configuration.logger.logLevel = .error
        var channel = try SyncChannel(configuration: configuration)
        let started = Timestamp.monotonicNow()
        if active {
            try runActive(&channel, &transport, peerID: peerID, started: started)
        } else {
            try runStandby(&channel, &transport, activeID: peerID, started: started)
        }
    }

    /// Prints `fields` as the status line when the interval has passed since `last`.
    private func status(_ last: inout Timestamp, now: Timestamp, _ fields: @autoclosure () -> String) {
        guard statusIntervalMs > 0, now.nanoseconds - last.nanoseconds >= statusIntervalMs * 1_000_000 else { return }
        last = now
        let line = "member \(id) " + fields()
        StandardError.write(isatty(2) != 0 ? "\r\u{1B}[K" + line : line + "\n")
    }

    /// The channel's part of the status line.
    private static func channelStatus(_ channel: SyncChannel) -> String {
        let statistics = channel.statistics
        return "sent=\(statistics.datagramsSent) received=\(statistics.datagramsReceived) retransmitted=\(statistics.retransmissions) "
            + "gaps=\(statistics.gapsDetected) resets=\(statistics.streamResets) refused=\(statistics.authenticationFailures + statistics.replaysRejected + statistics.malformedDropped)"
    }

    private func expired(_ started: Timestamp) -> Bool {
        durationMs > 0 && Timestamp.monotonicNow().nanoseconds - started.nanoseconds >= durationMs * 1_000_000
    }

    private func runActive(_ channel: inout SyncChannel, _ transport: inout UDPSyncTransport, peerID: ClusterMemberID, started: Timestamp) throws {
        var random = SplitMix64(seed: UInt64(id))
        var state = GatewayState()
        var slots: [ChildSASlot] = []
        for index in 0..<ikeSAs {
            var ike = try SimulationFixtures.ikeSA(UInt64(index + 1), &random)
            ike.extensions = IKEExtensions(messageIDSync: true, replayCounterSync: true)
            _ = try state.createIKESA(ike)
            for child in 0..<2 {
                let spi = UInt32(0x1000 + 2 * index + child)
                _ = try state.createChildSA(SimulationFixtures.childSA(spi, parent: ike.identifier, window: 1024, &random))
                if let slot = state.slot(forInboundSPI: spi) { slots.append(slot) }
            }
        }
        var replicator = Replicator(standbys: [peerID])
        var scheduler = CounterCheckpointScheduler(policy: CounterCheckpointPolicy(packets: 4_096, interval: 20_000_000))
        var pending: [(ticket: SyncTicket, lastSent: UInt64)] = []
        var acknowledged: UInt64 = 0
        var lastReport = started
        var lastStatus = started
        var owed = 0.0
        var last = started
        func perform(_ actions: [SyncChannelAction], now: Timestamp) {
            for action in actions {
                switch action {
                case .transmit(let to, let datagram): try? transport.send(datagram, to: to, now: now)
                case .deliver, .resyncNeeded: perform(replicator.handle(action, state: state, channel: &channel, now: now), now: now)
                case .peerRestarted, .dropped: break
                }
            }
        }
        while !expired(started) {
            let now = Timestamp.monotonicNow()
            for datagram in transport.receive(now: now) { perform(channel.receive(datagram, now: now), now: now) }
            perform(channel.tick(now: now), now: now)
            perform(replicator.pump(channel: &channel, now: now), now: now)
            // Outbound packets for the time that passed.
            owed += Double(now.nanoseconds - last.nanoseconds) / 1e9 * Double(packetsPerSecond)
            last = now
            while owed >= 1 {
                for slot in slots { _ = try? state.nextOutboundSequenceNumber(at: slot, bytes: 1_000) }
                owed -= 1
            }
            let due = scheduler.takeDueCheckpoints(from: &state, now: now)
            if !due.isEmpty {
                let result = replicator.replicate(checkpoints: due, state: state, channel: &channel, now: now)
                perform(result.actions, now: now)
                if let ticket = result.tickets.first, let first = slots.first, let sa = state[first], due.contains(where: { $0.checkpoint.inboundSPI == sa.inboundSPI }) {
                    pending.append((ticket, sa.outboundCounter.lastSent))
                }
            }
            while let oldest = pending.first, channel.isAcknowledged(oldest.ticket) {
                acknowledged = max(acknowledged, oldest.lastSent)
                pending.removeFirst()
            }
            pending.removeAll { channel.wasDropped($0.ticket) }
            if now.nanoseconds - lastReport.nanoseconds >= 20_000_000, let first = slots.first, let sa = state[first] {
                lastReport = now
                Self.emit("acknowledged spi=\(sa.inboundSPI) last_sent=\(acknowledged)")
            }
            status(
                &lastStatus, now: now,
                "active ike_sas=\(state.ikeSAs.count) child_sas=\(state.childSACount) "
                    + "lag_ms=\(channel.replicationLag(to: peerID, now: now) / 1_000_000) "
                    + "standby=\(replicator.status(of: peerID, channel: channel, now: now)) "
                    + "waiting_records=\(replicator.waitingRecords(for: peerID)) resyncs=\(replicator.resyncsStarted) " + Self.channelStatus(channel))
            usleep(500)
        }
    }

    private func runStandby(_ channel: inout SyncChannel, _ transport: inout UDPSyncTransport, activeID: ClusterMemberID, started: Timestamp) throws {
        var replica = Replica()
        var role = ClusterRole(member: ClusterMemberID(rawValue: id), epoch: channel.configuration.epoch, isActive: false, activeMember: activeID)
        var lastHello: Timestamp?
        var announcedReady = false
        var lastStatus = started
        while !expired(started) {
            let now = Timestamp.monotonicNow()
            for case .deliver(_, let records) in transport.service(&channel, now: now) { replica.apply(records, now: now) }
            replica.observe(missingSince: channel.missingSince(from: activeID))
            if !replica.isReady, !replica.isResyncing, lastHello.map({ now.nanoseconds - $0.nanoseconds >= 200_000_000 }) ?? true {
                lastHello = now
                if let sent = try? channel.send([replica.hello(epoch: channel.configuration.epoch)], to: activeID, now: now) {
                    for case .transmit(let to, let datagram) in sent.actions { try? transport.send(datagram, to: to, now: now) }
                }
            }
            if replica.isReady, !announcedReady {
                announcedReady = true
                Self.emit("ready ike_sas=\(replica.state.ikeSAs.count) child_sas=\(replica.state.childSACount)")
            }
            status(
                &lastStatus, now: now,
                "standby \(replica.isReady ? "ready" : replica.isResyncing ? "resyncing" : "joining") "
                    + "ike_sas=\(replica.state.ikeSAs.count) child_sas=\(replica.state.childSACount) "
                    + "heard_ms_ago=\(channel.lastHeard(from: activeID).map { String((now.nanoseconds - $0.nanoseconds) / 1_000_000) } ?? "never") "
                    + Self.channelStatus(channel))
            if announcedReady, role.tick(now: now, lastHeard: channel.lastHeard(from: activeID)).contains(.activeMemberFailed(activeID)) {
                let silentFor = channel.lastHeard(from: activeID).map { (now.nanoseconds - $0.nanoseconds) / 1_000_000 } ?? 0
                _ = try role.promote(.activeMemberSilent(activeID), newEpoch: channel.configuration.epoch + 1)
                replica.applyHeldCheckpoints(channel.recordsHeldBehindGap(from: activeID), now: now)
                let plan = replica.takeoverPlan(now: now)
                var state = replica.state
                let outcome = state.applyTakeover(plan)
                let first = state.childSAs.min { $0.inboundSPI < $1.inboundSPI }
                let copy = first.flatMap { replica.state.childSA(inboundSPI: $0.inboundSPI) }
                Self.emit(
                    "{\"detected_after_silence_ms\": \(silentFor), \"ike_sas\": \(replica.state.ikeSAs.count), \"child_sas\": \(replica.state.childSACount), "
                        + "\"plan_ike_sas\": \(plan.ikeSAs.count), \"plan_child_sas\": \(plan.childSAs.count), \"resumed\": \(outcome.resumed), "
                        + "\"rekey\": \(outcome.rekey.count), \"spi\": \(first?.inboundSPI ?? 0), \"replica_last_sent\": \(copy?.outboundCounter.lastSent ?? 0), "
                        + "\"resume_after\": \(first?.outboundCounter.lastSent ?? 0)}")
                return
            }
            usleep(500)
        }
    }
}
