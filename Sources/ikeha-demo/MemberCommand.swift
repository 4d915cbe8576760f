import ArgumentParser
import IPsecHACore
import IPsecHASync
import IPsecHATestKit
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
/// resync completed (with `resync_ms`, from its first resync record); when the active member goes silent for three heartbeats it takes over and
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
    @Option(help: "The synch channel's AEAD, the same on both members: chacha20-poly1305 or aes-256-gcm.", transform: parseCipher)
    var cipher = SyncChannelCipher.chacha20Poly1305
    @Option(name: .customLong("datagram-size"), help: "The largest synch datagram, the same on both members: 512 to 65,507 bytes (above the link's MTU, IP fragments them).")
    var datagramSize = 1_400

    /// The inbound SPI of the active member's first Child SA (the others follow it), which the
    /// standby reports on after a takeover (the releases before kept the same numbering).
    static let firstChildSPI: UInt32 = 0x1000

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
        guard SyncChannelConfiguration.supportedDatagramSizes.contains(datagramSize) else { throw ValidationError("--datagram-size must be 512 to 65,507") }
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
        var channel = SyncChannelConfiguration(clusterID: 1, member: member, epoch: epoch, key: try ChannelKey(contentsOfFile: keyFile), peers: [peerID])
        channel.logger.logLevel = .error
        channel.cipher = cipher
        channel.maximumDatagramSize = datagramSize
        var configuration = ClusterMemberConfiguration(channel: channel, activeMember: active ? member : peerID)
        configuration.checkpoints = CounterCheckpointPolicy(packets: 4_096, interval: .milliseconds(20))
        var cluster = try ClusterMember(configuration: configuration)
        let started = Timestamp.monotonicNow()
        if active {
            try runActive(&cluster, &transport, peerID: peerID, started: started)
        } else {
            runStandby(&cluster, &transport, activeID: peerID, started: started)
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
        // The synch protocol spoken with the peer: what a rolling upgrade checks.
        let spoken = channel.configuration.peers.first.map { channel.protocolVersion(with: $0) }
        let version = if case .speaking(let number)? = spoken { "\(number)" } else { "none" }
        return "protocol=\(version) sent=\(statistics.datagramsSent) received=\(statistics.datagramsReceived) retransmitted=\(statistics.retransmissions) "
            + "gaps=\(statistics.gapsDetected) resets=\(statistics.streamResets) refused=\(statistics.authenticationFailures + statistics.replaysRejected + statistics.malformedDropped)"
    }

    private func expired(_ started: Timestamp, now: Timestamp) -> Bool {
        durationMs > 0 && now.nanoseconds - started.nanoseconds >= durationMs * 1_000_000
    }

    private func runActive(_ cluster: inout ClusterMember, _ transport: inout UDPSyncTransport, peerID: ClusterMemberID, started: Timestamp) throws {
        var random = SplitMix64(seed: UInt64(id))
        var slots: [ChildSASlot] = []
        for index in 0..<ikeSAs {
            var ike = try SAFixtures.ikeSA(UInt64(index + 1), &random)
            ike.extensions = IKEExtensions(messageIDSync: true, replayCounterSync: true)
            let children = try (0..<2).map { child in
                try SAFixtures.childSA(Self.firstChildSPI + UInt32(2 * index + child), parent: ike.identifier, window: 1024, &random)
            }
            _ = try cluster.update(now: started) { state, changes throws(GatewayStateError) in
                changes += try state.createIKESA(ike)
                for child in children { changes += try state.createChildSA(child) }
            }
            slots += children.compactMap { cluster.state.slot(forInboundSPI: $0.inboundSPI) }
        }
        // The first Child SA's counter, checkpointed every 20 ms through a token of its own:
        // once the token is released the standby holds at least that counter.
        var pending: [ReplicationToken: UInt64] = [:]
        var acknowledged: UInt64 = 0
        var lastReport = started
        var lastStatus = started
        var owed = 0.0
        var last = started
        var now = started
        while !expired(started, now: now) {
            for case .released(let token) in transport.service(&cluster, now: now) {
                if let lastSent = pending.removeValue(forKey: token) { acknowledged = max(acknowledged, lastSent) }
            }
            // Outbound packets for the time that passed.
            owed += Double(now.nanoseconds - last.nanoseconds) / 1e9 * Double(packetsPerSecond)
            last = now
            while owed >= 1 {
                _ = cluster.packetPath { state in for slot in slots { _ = try? state.nextOutboundSequenceNumber(at: slot, bytes: 1_000) } }
                owed -= 1
            }
            if now.nanoseconds - lastReport.nanoseconds >= 20_000_000, let first = slots.first, let sa = cluster.state[first] {
                lastReport = now
                // Only while the standby is there: a token is released without it otherwise.
                if cluster.channel.isEstablished(with: peerID), let token = try? cluster.update(now: now, { state, changes in changes += state.checkpointCounters(at: first) }) {
                    pending[token] = sa.outboundCounter.lastSent
                }
                Self.emit("acknowledged spi=\(sa.inboundSPI) last_sent=\(acknowledged)")
            }
            status(
                &lastStatus, now: now,
                "active ike_sas=\(cluster.state.ikeSAs.count) child_sas=\(cluster.state.childSACount) "
                    + "lag_ms=\(Int(cluster.channel.replicationLag(to: peerID, now: now) / .milliseconds(1))) "
                    + "standby=\(cluster.status(of: peerID, now: now).map { "\($0)" } ?? "none") " + Self.channelStatus(cluster.channel))
            // Sleeps until the member has work, a datagram comes, or the next millisecond's packets are due.
            transport.wait(until: min(cluster.nextDeadline, Timestamp(nanoseconds: now.nanoseconds + 1_000_000)))
            now = Timestamp.monotonicNow()
        }
    }

    private func runStandby(_ cluster: inout ClusterMember, _ transport: inout UDPSyncTransport, activeID: ClusterMemberID, started: Timestamp) {
        var lastStatus = started
        var now = started
        // The replica's copy of the first Child SA's counter, as it was when the takeover began.
        var replicaLastSent: UInt64 = 0
        var first: ChildSA?
        // When the bulk resync began, for its duration in the ready line.
        var resyncStarted: Timestamp?
        while !expired(started, now: now) {
            let silentFor = cluster.channel.lastHeard(from: activeID).map { (now.nanoseconds - $0.nanoseconds) / 1_000_000 } ?? 0
            if silentFor >= 50 {
                // Looked up by its SPI, not found by a scan: the active member falls silent now
                // and then during a bulk resync too, and copying every Child SA to find the
                // first (53 MB at 100,000 IKE SAs) took half the standby's time there.
                first = cluster.state.childSA(inboundSPI: Self.firstChildSPI)
                replicaLastSent = first?.outboundCounter.lastSent ?? 0
            }
            for action in transport.service(&cluster, now: now) {
                switch action {
                case .becameReady:
                    // A resync that began and ended within this turn began at its start.
                    let resyncMs = (Timestamp.monotonicNow().nanoseconds - (resyncStarted ?? now).nanoseconds) / 1_000_000
                    Self.emit("ready ike_sas=\(cluster.state.ikeSAs.count) child_sas=\(cluster.state.childSACount) resync_ms=\(resyncMs)")
                case .tookOver(let plan, let rekey):
                    let resumed = cluster.state.childSA(inboundSPI: first?.inboundSPI ?? 0)
                    Self.emit(
                        "{\"detected_after_silence_ms\": \(silentFor), \"ike_sas\": \(cluster.state.ikeSAs.count), \"child_sas\": \(cluster.state.childSACount), "
                            + "\"plan_ike_sas\": \(plan.ikeSAs.count), \"plan_child_sas\": \(plan.childSAs.count), \"resumed\": \(plan.childSAs.count - rekey.count), "
                            + "\"rekey\": \(rekey.count), \"spi\": \(first?.inboundSPI ?? 0), \"replica_last_sent\": \(replicaLastSent), "
                            + "\"resume_after\": \(resumed?.outboundCounter.lastSent ?? 0)}")
                    return
                default:
                    break
                }
            }
            if resyncStarted == nil, cluster.isResyncing { resyncStarted = now }
            let lifecycle = cluster.isReady ? "ready" : cluster.isResyncing ? "resyncing" : "joining"
            status(
                &lastStatus, now: now,
                "standby \(lifecycle) ike_sas=\(cluster.state.ikeSAs.count) child_sas=\(cluster.state.childSACount) "
                    + "t_ms=\((now.nanoseconds - started.nanoseconds) / 1_000_000) applied=\(cluster.replicaStatistics?.applied ?? 0) "
                    + "heard_ms_ago=\(cluster.channel.lastHeard(from: activeID).map { String((now.nanoseconds - $0.nanoseconds) / 1_000_000) } ?? "never") "
                    + Self.channelStatus(cluster.channel))
            let nextStatus = Timestamp(nanoseconds: lastStatus.nanoseconds + max(statusIntervalMs, 1) * 1_000_000)
            transport.wait(until: min(cluster.nextDeadline, nextStatus))
            now = Timestamp.monotonicNow()
        }
    }
}
