import ArgumentParser
import IPsecHACore
import IPsecHASync
import IPsecHATestKit

/// `ikeha-demo bench sync`: counter checkpoints through the whole channel, a bulk resync to a
/// fresh standby, and how fast a lost tail of a burst is noticed.
struct SyncBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync",
        abstract: "Time the synch channel; the last line is name=value pairs."
    )

    @Option(help: "Counter checkpoints to push through the channel.")
    var checkpoints = 2_000_000

    @Option(name: .customLong("checkpoint-sas"), help: "Child SAs the checkpoints cycle over.")
    var checkpointSAs = 10_000

    @Option(name: .customLong("ike-sas"), help: "IKE SAs in the bulk resync.")
    var ikeSAs = 100_000

    @Option(name: .customLong("child-sas"), help: "Child SAs in the bulk resync.")
    var childSAs = 200_000

    @Option(help: "Tail-loss trials.")
    var trials = 20

    @Option(help: "What to run: all, checkpoints or resync (one path alone, as scripts/bench.sh counts its instructions under callgrind).")
    var part = "all"

    @Option(help: "The synch channel's AEAD: chacha20-poly1305 or aes-256-gcm (default: AES-256-GCM where the CPU has it).", transform: parseCipher)
    var cipher = SyncChannelCipher.fastestAvailable

    func validate() throws {
        guard cipher.isAvailable else { throw ValidationError("\(cipher) does not run on this CPU") }
        guard ["all", "checkpoints", "resync"].contains(part) else { throw ValidationError("--part is all, checkpoints or resync") }
        guard checkpoints > 0, ikeSAs > 0, childSAs >= 0, trials > 0, childSAs < 0x7000_0000, checkpointSAs > 0,
            checkpointSAs < 0x7000_0000
        else {
            throw ValidationError("counts must be positive")
        }
    }

    func run() throws {
        switch part {
        case "checkpoints":
            let checkpoints = try measureCheckpoints()
            print("checkpoints=\(checkpoints.sent) datagrams=\(checkpoints.datagrams)")
            return
        case "resync":
            let resync = try measureResync()
            print("ike_sas=\(ikeSAs) child_sas=\(childSAs) datagrams=\(resync.2)")
            return
        default:
            break
        }
        let checkpoints = try measureCheckpoints()
        let checkpointRate = Double(checkpoints.sent) / checkpoints.seconds
        // The floor, in the same run: libsodium alone on the same datagrams. A ratio to it
        // means something on a noisy machine, where the absolute figure moves by 2x.
        let checkpointFloor = aeadFloor(datagrams: checkpoints.datagrams, bytes: checkpoints.bytes)
        let checkpointRatio = checkpointFloor / checkpoints.seconds
        print("synch channel cipher: \(cipher)")
        print(
            "counter checkpoints through seal, open, decode and apply, over \(checkpointSAs) Child SAs: \(Int(checkpointRate)) per second, "
                + "\(checkpointRatio.formatted(decimals: 2)) of the AEAD floor (\(Int(Double(checkpoints.sent) / checkpointFloor)) per second "
                + "for libsodium alone to seal and open the \(checkpoints.datagrams) datagrams, \(checkpoints.bytes) bytes)")
        let (resyncSeconds, resyncBytes, datagrams, activeSeconds, standbySeconds, pageFaults) = try measureResync()
        let resyncFloor = aeadFloor(datagrams: datagrams, bytes: resyncBytes)
        let resyncRatio = resyncSeconds / resyncFloor
        print(
            "bulk resync of \(ikeSAs) IKE SAs and \(childSAs) Child SAs: \(resyncSeconds.formatted(decimals: 3)) s on one core "
                + "(active member \(activeSeconds.formatted(decimals: 3)) s, standby \(standbySeconds.formatted(decimals: 3)) s: "
                + "each on its own machine, about the larger), \(resyncBytes) bytes in \(datagrams) datagrams, "
                + "\(resyncRatio.formatted(decimals: 2)) times the AEAD floor (\(resyncFloor.formatted(decimals: 3)) s to seal and open them), "
                + "\(pageFaults) page faults in the process meanwhile (most of them the standby's first touches of the memory its state fills)")
        let (meanHeartbeats, maximumHeartbeats) = try measureTailLoss()
        print("tail loss noticed after \(meanHeartbeats.formatted(decimals: 2)) heartbeat intervals on average, \(maximumHeartbeats.formatted(decimals: 2)) at most")
        print(
            "cipher=\(cipher.name) checkpoints_per_second=\(Int(checkpointRate)) checkpoints_floor_per_second=\(Int(Double(checkpoints.sent) / checkpointFloor)) "
                + "checkpoints_floor_ratio=\(checkpointRatio.formatted(decimals: 2)) resync_seconds=\(resyncSeconds.formatted(decimals: 3)) "
                + "resync_floor_seconds=\(resyncFloor.formatted(decimals: 3)) resync_floor_ratio=\(resyncRatio.formatted(decimals: 2)) "
                + "resync_active_seconds=\(activeSeconds.formatted(decimals: 3)) resync_standby_seconds=\(standbySeconds.formatted(decimals: 3)) "
                + "resync_bytes=\(resyncBytes) resync_page_faults=\(pageFaults) tail_loss_detection_heartbeats_mean=\(meanHeartbeats.formatted(decimals: 2)) "
                + "tail_loss_detection_heartbeats_max=\(maximumHeartbeats.formatted(decimals: 2))")
    }

    /// Seconds for libsodium alone to seal and open `count` datagrams of `bytes` bytes in all,
    /// each of the average size, its header as additional data, as the channel does (one seal
    /// on the sender, one open on the receiver): what no implementation of the channel can go
    /// below on this machine with this AEAD.
    func aeadFloor(datagrams count: Int, bytes: Int) -> Double {
        let overhead = DatagramHeader.size + SodiumPrimitives.aeadTagLength
        let size = max(bytes / max(count, 1), overhead)
        var datagram = [UInt8](repeating: 0x5A, count: size)
        let plaintext = [UInt8](repeating: 0xA5, count: size - overhead)
        var opened = [UInt8](repeating: 0, count: size - overhead + 1)
        let key = [UInt8](repeating: 7, count: SodiumPrimitives.aeadKeyLength)
        var nonce = [UInt8](repeating: 0, count: SodiumPrimitives.aeadNonceLength)
        let clock = ContinuousClock()
        let started = clock.now
        var failures = 0
        for index in 0..<count {
            withUnsafeBytes(of: UInt64(index).littleEndian) { nonce.replaceSubrange(0..<8, with: $0) }
            datagram.withUnsafeMutableBytes { buffer in
                let aad = UnsafeRawBufferPointer(rebasing: buffer[..<DatagramHeader.size])
                plaintext.withUnsafeBytes { plain in
                    SodiumPrimitives.seal(
                        into: buffer.baseAddress! + DatagramHeader.size, plaintext: plain, aad: aad, nonce: nonce, key: key, cipher: cipher)
                }
                let sealed = UnsafeRawBufferPointer(rebasing: buffer[DatagramHeader.size...])
                if !opened.withUnsafeMutableBytes({
                    SodiumPrimitives.open(into: $0.baseAddress, sealed: sealed, aad: aad, nonce: nonce, key: key, cipher: cipher)
                }) {
                    failures += 1
                }
            }
        }
        let seconds = started.duration(to: clock.now).inSeconds
        precondition(failures == 0, "the AEAD floor's own datagrams did not open")
        return seconds
    }

    /// Two channels wired back to back (no network), a replica holding `--checkpoint-sas` Child SAs, and
    /// batches of checkpoints for them: encode, seal, open, decode, apply, acknowledge. Returns
    /// the checkpoints sent, the seconds they took, and the datagrams (both ways) and their
    /// bytes meanwhile.
    func measureCheckpoints() throws -> (sent: Int, seconds: Double, datagrams: Int, bytes: Int) {
        let key = try ChannelKey.generate()
        let active = ClusterMemberID(rawValue: 1)
        let standby = ClusterMemberID(rawValue: 2)
        var senderConfiguration = SyncChannelConfiguration(clusterID: 1, member: active, epoch: 1, key: key, peers: [standby])
        senderConfiguration.cipher = cipher
        var receiverConfiguration = SyncChannelConfiguration(clusterID: 1, member: standby, epoch: 1, key: key, peers: [active])
        receiverConfiguration.cipher = cipher
        var sender = try SyncChannel(configuration: senderConfiguration)
        var receiver = try SyncChannel(configuration: receiverConfiguration)
        var replica = Replica()
        var random = SplitMix64(seed: 3)
        let ike = try SAFixtures.ikeSA(1, &random)
        var setup: [SyncRecord] = [
            .resyncBegin(id: 1, scope: .everything, ikeSAs: 1, childSAs: UInt32(checkpointSAs), policies: 0), .ikeSAUpsert(ike),
        ]
        let saCount = checkpointSAs
        var spis: [UInt32] = []
        for index in 0..<saCount {
            var sa = try SAFixtures.childSA(UInt32(0x1000 + index), parent: ike.identifier, window: 1024, &random)
            sa.generation = 1
            spis.append(sa.inboundSPI)
            setup.append(.childSAUpsert(sa))
        }
        setup.append(.resyncEnd(id: 1, ikeSAs: 1, childSAs: UInt32(saCount), policies: 0))
        var now = Timestamp(nanoseconds: 1)
        var datagrams = 0, bytes = 0
        func exchange(_ actions: [SyncChannelAction], _ sender: inout SyncChannel, _ receiver: inout SyncChannel, _ replica: inout Replica) {
            for case .transmit(_, let datagram) in actions {
                datagrams += 1
                bytes += datagram.count
                for action in receiver.receive(datagram, now: now) {
                    switch action {
                    case .deliver(_, let records): replica.apply(records, now: now)
                    // The sender's answer (the end of the handshake) goes back at once.
                    case .transmit(_, let reply):
                        datagrams += 1
                        bytes += reply.count
                        exchange(sender.receive(reply, now: now), &sender, &receiver, &replica)
                    default: break
                    }
                }
            }
        }
        for start in stride(from: 0, to: setup.count, by: 256) {
            exchange(try sender.send(Array(setup[start..<min(start + 256, setup.count)]), to: standby, now: now).actions, &sender, &receiver, &replica)
        }
        // The first records wait for the channels' handshake (the channel sends data only to
        // an established peer): both turn until the setup has arrived.
        for _ in 0..<1_000 where !replica.isReady {
            now = Timestamp(nanoseconds: now.nanoseconds + 1_000_000)
            exchange(sender.tick(now: now), &sender, &receiver, &replica)
            for case .transmit(_, let datagram) in receiver.tick(now: now) { exchange(sender.receive(datagram, now: now), &sender, &receiver, &replica) }
        }
        guard replica.isReady else { throw ValidationError("setup did not complete") }

        let perSend = 16 * 16
        var generation: UInt64 = 1
        var sent = 0
        (datagrams, bytes) = (0, 0)
        let clock = ContinuousClock()
        let started = clock.now
        while sent < checkpoints {
            generation += 1
            var entries: [CounterCheckpointEntry] = []
            entries.reserveCapacity(perSend)
            for index in 0..<perSend {
                let spi = spis[(sent + index) % saCount]
                entries.append(
                    CounterCheckpointEntry(
                        checkpoint: ChildSACounterCheckpoint(
                            inboundSPI: spi, outbound: OutboundCounterCheckpoint(lastSent: generation * 1000),
                            inbound: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: generation * 900),
                            usage: ChildSAUsage(inboundPackets: generation, outboundPackets: generation)),
                        generation: generation + UInt64((sent + index) / saCount), packetsPerSecond: 1000))
            }
            now = Timestamp(nanoseconds: now.nanoseconds + 1000)
            exchange(try sender.send(Replicator.batches(entries), to: standby, now: now).actions, &sender, &receiver, &replica)
            sent += perSend
        }
        let elapsed = started.duration(to: clock.now)
        let seconds = elapsed.inSeconds
        guard replica.statistics.rejected == 0, replica.statistics.stale == 0 else {
            throw ValidationError("checkpoints were refused: \(replica.statistics)")
        }
        return (sent, seconds, datagrams, bytes)
    }

    /// Seconds on one core, bytes, datagrams, the seconds of it that each member spent, and the
    /// page faults taken meanwhile.
    func measureResync() throws -> (Double, Int, Int, Double, Double, Int) {
        let cipher = self.cipher
        var pair = try ReplicationPair(seed: 5) { $0.cipher = cipher }
        pair.network.faults.partitions = [[1, 2]]
        var random = SplitMix64(seed: 6)
        var identifiers: [IKESAIdentifier] = []
        for index in 0..<ikeSAs {
            let sa = try SAFixtures.ikeSA(UInt64(index + 1), &random)
            _ = try pair.state.createIKESA(sa)
            identifiers.append(sa.identifier)
        }
        for index in 0..<childSAs {
            _ = try pair.state.createChildSA(
                SAFixtures.childSA(UInt32(0x1000 + index), parent: identifiers[index % ikeSAs], window: 1024, &random))
        }
        let bytesBefore = pair.network.bytesSent
        let datagramsBefore = pair.network.sent
        pair.network.faults.partitions = []
        let clock = ContinuousClock()
        let origin = clock.now
        pair.workClock = { UInt64(origin.duration(to: ContinuousClock().now).inSeconds * 1e9) }
        let faultsBefore = minorPageFaults() ?? 0
        let started = clock.now
        guard try pair.settle(limit: 60_000_000_000, step: 500_000) else { throw ValidationError("resync did not complete") }
        let elapsed = started.duration(to: clock.now)
        let pageFaults = (minorPageFaults() ?? 0) - faultsBefore
        guard pair.replica.state == pair.state else { throw ValidationError("resync gave a different state") }
        // One resync, or the figure would be of something else.
        guard pair.replicator.resyncsStarted == 1 else { throw ValidationError("\(pair.replicator.resyncsStarted) resyncs instead of one") }
        return (
            elapsed.inSeconds,
            pair.network.bytesSent - bytesBefore, pair.network.sent - datagramsBefore,
            Double(pair.workTime.active) / 1e9, Double(pair.workTime.standby) / 1e9, pageFaults
        )
    }

    /// Bursts whose last datagram is lost; the time until the standby knows, in heartbeats.
    func measureTailLoss() throws -> (Double, Double) {
        let cipher = self.cipher
        var pair = try ReplicationPair(seed: 7) { $0.cipher = cipher }
        _ = try pair.settle()
        var random = SplitMix64(seed: 8)
        let heartbeat = Double(pair.standbyChannel.configuration.heartbeatIntervalNanoseconds)
        var delays: [Double] = []
        for trial in 0..<trials {
            // Start each trial at a different phase of the heartbeat cycle.
            try pair.run(for: UInt64(trial) * 7_000_000 % 50_000_000 + 100_000_000, step: 100_000)
            for index in 0..<10 {
                let sa = try SAFixtures.ikeSA(UInt64(trial * 100 + index + 1), &random)
                if index == 9 { pair.network.faults.loss = 1 }
                _ = try pair.replicate(try pair.state.createIKESA(sa))
            }
            pair.network.faults.loss = 0
            let lostAt = pair.now
            var detected: Timestamp?
            for _ in 0..<2_000 where detected == nil {
                try pair.run(for: 100_000, step: 100_000)
                if pair.standbyChannel.missingSince(from: ReplicationPair.activeID) != nil { detected = pair.now }
            }
            guard let detected else { throw ValidationError("tail loss not detected") }
            delays.append(Double(detected.nanoseconds - lostAt.nanoseconds) / heartbeat)
            _ = try pair.settle()
        }
        return (delays.reduce(0, +) / Double(delays.count), delays.max() ?? 0)
    }
}

/// A synch channel cipher named on the command line (`--cipher`).
func parseCipher(_ name: String) throws -> SyncChannelCipher {
    guard let cipher = SyncChannelCipher(name: name) else { throw ValidationError("unknown cipher \(name): chacha20-poly1305 or aes-256-gcm") }
    return cipher
}
