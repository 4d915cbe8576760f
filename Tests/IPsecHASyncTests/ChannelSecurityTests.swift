import IPsecHACore
import IPsecHASync
import IPsecHATestKit
import Testing

@Suite("Synch channel: hostile datagrams")
struct ChannelSecurityTests {
    static let active = ClusterMemberID(rawValue: 1)
    static let standby = ClusterMemberID(rawValue: 2)

    /// An active member's channel and a standby's, with the handshake between them done.
    func channels(key: ChannelKey, activeEpoch: UInt32 = 3, standbyEpoch: UInt32 = 4) throws -> (SyncChannel, SyncChannel) {
        var active = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 9, member: Self.active, epoch: activeEpoch, key: key, peers: [Self.standby]))
        var standby = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 9, member: Self.standby, epoch: standbyEpoch, key: key, peers: [Self.active]))
        _ = establish(&active, &standby)
        return (active, standby)
    }

    /// A reliable datagram from the active member carrying one IKE SA.
    func datagram(_ sender: inout SyncChannel) throws -> [UInt8] {
        var generator = RecordGenerator(seed: 1)
        let sent = try sender.send([.ikeSAUpsert(generator.ikeSA())], to: Self.standby, now: Timestamp(nanoseconds: 1))
        guard case .transmit(_, let bytes)? = sent.actions.first else { throw SyncChannelError.tooShort(0) }
        return bytes
    }

    /// An unreliable datagram (a hello record) from the active member.
    func hello(_ sender: inout SyncChannel) throws -> [UInt8] {
        let sent = try sender.send([.hello(epoch: 1, capabilities: 0, needsResync: false)], to: Self.standby, now: Timestamp(nanoseconds: 1))
        guard case .transmit(_, let bytes)? = sent.actions.first else { throw SyncChannelError.tooShort(0) }
        return bytes
    }

    func isReplay(_ actions: [SyncChannelAction]) -> Bool {
        if case .dropped(.security(.replayed))? = actions.first, actions.count == 1 { true } else { false }
    }

    func delivers(_ actions: [SyncChannelAction]) -> Bool {
        actions.contains { if case .deliver = $0 { true } else { false } }
    }

    @Test func genuineDatagramIsDeliveredOnceAndItsReplayRefused() throws {
        var (active, standby) = try channels(key: try ChannelKey.generate())
        let (sent, received) = (active.statistics.recordsSent, standby.statistics.recordsReceived)
        let bytes = try datagram(&active)
        #expect(delivers(standby.receive(bytes, now: Timestamp(nanoseconds: 2))))
        #expect(isReplay(standby.receive(bytes, now: Timestamp(nanoseconds: 3))))
        #expect(standby.statistics.replaysRejected == 1)
        #expect(active.statistics.recordsSent == sent + 1)
        #expect(standby.statistics.recordsReceived == received + 1, "the replay's record is not counted")
    }

    @Test func forgedCorruptedTruncatedAndOversizedDatagramsChangeNothing() throws {
        let key = try ChannelKey.generate()
        var (active, standby) = try channels(key: key)
        let bytes = try datagram(&active)
        let before = standby.statistics

        // Every single-bit flip, in the header or the payload, is refused.
        for index in stride(from: 0, to: bytes.count, by: 7) {
            var flipped = bytes
            flipped[index] ^= 0x10
            #expect(!delivers(standby.receive(flipped, now: Timestamp(nanoseconds: 2))))
        }
        for length in [0, 1, 31, 32, 47, 48, 63, bytes.count - 1] {
            #expect(!delivers(standby.receive(Array(bytes.prefix(length)), now: Timestamp(nanoseconds: 2))))
        }
        let oversized = standby.receive(bytes + [UInt8](repeating: 0, count: 1_400), now: Timestamp(nanoseconds: 2))
        #expect(oversized == [.dropped(.tooLong(bytes.count + 1_400))])
        // Sealed under another cluster key: authentic-looking but not ours.
        var (stranger, _) = try channels(key: try ChannelKey.generate())
        #expect(standby.receive(try datagram(&stranger), now: Timestamp(nanoseconds: 2)) == [.dropped(.security(.unknownIncarnation))])
        #expect(standby.statistics.datagramsReceived == before.datagramsReceived)
        #expect(standby.statistics.authenticationFailures > 0)
        #expect(standby.statistics.malformedDropped > 0)
        // The genuine datagram still gets through: nothing above moved the replay window.
        #expect(delivers(standby.receive(bytes, now: Timestamp(nanoseconds: 3))))
    }

    @Test func otherClustersAndMembersAreRefused() throws {
        let key = try ChannelKey.generate()
        var (active, standby) = try channels(key: key)
        let genuine = try datagram(&active)
        var wrongCluster = genuine
        wrongCluster[7] ^= 1
        #expect(standby.receive(wrongCluster, now: Timestamp(nanoseconds: 2)) == [.dropped(.wrongCluster(8))])
        var stranger = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 9, member: ClusterMemberID(rawValue: 5), epoch: 1, key: key, peers: [Self.standby]))
        #expect(stranger.tick(now: Timestamp(nanoseconds: 1)).contains { if case .transmit = $0 { true } else { false } })
        for case .transmit(_, let handshake) in stranger.tick(now: Timestamp(nanoseconds: 100_000_000)) {
            #expect(standby.receive(handshake, now: Timestamp(nanoseconds: 2)) == [.dropped(.unknownMember(ClusterMemberID(rawValue: 5)))])
        }
        #expect(delivers(standby.receive(genuine, now: Timestamp(nanoseconds: 2))))
    }

    /// Review H1: a member restarted with a lower or an equal epoch (a reboot, a clock reset)
    /// rejoins at once, and its peer restarts the stream to it; the data of its earlier run is
    /// refused unopened.
    @Test(arguments: [UInt32(1), 4, 4_000_000_000])
    func aRestartedMemberRejoinsWhateverItsEpoch(restartEpoch: UInt32) throws {
        let key = try ChannelKey.generate()
        var (active, standby) = try channels(key: key, activeEpoch: 5, standbyEpoch: 4)
        let before = try datagram(&active)
        #expect(delivers(standby.receive(before, now: Timestamp(nanoseconds: 2))))
        var restarted = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 9, member: Self.standby, epoch: restartEpoch, key: key, peers: [Self.active]))
        #expect(restarted.configuration.incarnation != standby.configuration.incarnation)
        var resyncNeeded = 0
        var now = Timestamp(nanoseconds: 10_000_000)
        // The handshake, watching the active member's actions for the restart.
        for _ in 0..<20 where !(active.isEstablished(with: Self.standby) && restarted.isEstablished(with: Self.active)) {
            var toActive = restarted.tick(now: now).compactMap { if case .transmit(_, let d) = $0 { d } else { nil } }
            var toStandby = active.tick(now: now).compactMap { if case .transmit(_, let d) = $0 { d } else { nil } }
            while !toActive.isEmpty || !toStandby.isEmpty {
                let (a, b) = (toActive, toStandby)
                (toActive, toStandby) = ([], [])
                for datagram in a {
                    for action in active.receive(datagram, now: now) {
                        if case .transmit(_, let d) = action { toStandby.append(d) }
                        if case .resyncNeeded(Self.standby) = action { resyncNeeded += 1 }
                    }
                }
                for datagram in b { toActive += restarted.receive(datagram, now: now).compactMap { if case .transmit(_, let d) = $0 { d } else { nil } } }
            }
            now = Timestamp(nanoseconds: now.nanoseconds + 10_000_000)
        }
        #expect(active.isEstablished(with: Self.standby) && restarted.isEstablished(with: Self.active))
        #expect(resyncNeeded == 1, "the active member resyncs the restarted standby once")
        #expect(now.nanoseconds < 200_000_000, "rejoined within a few heartbeats")
        #expect(delivers(restarted.receive(try datagram(&active), now: now)))
        // The earlier run's datagram is for another incarnation: refused.
        #expect(!delivers(restarted.receive(before, now: now)))
    }

    /// A peer's epoch rising while it runs is a takeover or a reassertion: the channel keeps
    /// the highest it moved to, so that a standby that missed the hellos still knows the peer
    /// served (torture seed 104771). A restart's epoch, however high, is no move.
    @Test func aPeersEpochMovedWhileRunningIsKeptAndARestartsIsNot() throws {
        let key = try ChannelKey.generate()
        var (active, standby) = try channels(key: key, activeEpoch: 3, standbyEpoch: 4)
        #expect(delivers(standby.receive(try datagram(&active), now: Timestamp(nanoseconds: 2))))
        #expect(standby.epoch(of: Self.active) == 3)
        #expect(standby.highestEpochMovedTo(by: Self.active) == nil)
        try active.rotate(toEpoch: 70)
        #expect(delivers(standby.receive(try datagram(&active), now: Timestamp(nanoseconds: 3))))
        #expect(standby.epoch(of: Self.active) == 70)
        #expect(standby.highestEpochMovedTo(by: Self.active) == 70)
        var restarted = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 9, member: Self.active, epoch: 200, key: key, peers: [Self.standby]))
        let now = establish(&restarted, &standby, now: Timestamp(nanoseconds: 10_000_000))
        #expect(delivers(standby.receive(try datagram(&restarted), now: now)))
        #expect(standby.epoch(of: Self.active) == 200)
        #expect(standby.highestEpochMovedTo(by: Self.active) == 70, "the restart's epoch is where it started, not a move")
        try restarted.rotate(toEpoch: 260)
        #expect(delivers(standby.receive(try datagram(&restarted), now: now)))
        #expect(standby.highestEpochMovedTo(by: Self.active) == 260)
    }

    /// A peer whose handshake never completes (this member's answers lost) still says in each
    /// handshake which epoch it is at: a move shows without any data (torture seed 114116).
    @Test func aPeersMoveShowsInHandshakesThatNeverComplete() throws {
        let key = try ChannelKey.generate()
        var a = try SyncChannel(configuration: SyncChannelConfiguration(clusterID: 9, member: Self.active, epoch: 2, key: key, peers: [Self.standby]))
        var b = try SyncChannel(configuration: SyncChannelConfiguration(clusterID: 9, member: Self.standby, epoch: 4, key: key, peers: [Self.active]))
        func handshakesFromA(at milliseconds: Int64) -> Int {
            let now = Timestamp(nanoseconds: UInt64(milliseconds) * 1_000_000)
            var delivered = 0
            for case .transmit(_, let datagram) in a.tick(now: now) {
                // What b answers is lost: a never completes its side.
                _ = b.receive(datagram, now: now)
                delivered += 1
            }
            return delivered
        }
        var sent = 0
        for milliseconds in stride(from: Int64(1), through: 2_000, by: 10) where sent == 0 { sent += handshakesFromA(at: milliseconds) }
        #expect(sent > 0 && !a.isEstablished(with: Self.standby))
        #expect(b.highestEpochMovedTo(by: Self.active) == nil)
        try a.rotate(toEpoch: 64)
        sent = 0
        for milliseconds in stride(from: Int64(2_001), through: 6_000, by: 10) where sent == 0 { sent += handshakesFromA(at: milliseconds) }
        #expect(sent > 0)
        #expect(b.highestEpochMovedTo(by: Self.active) == 64)
        #expect(b.epoch(of: Self.active) == nil, "no data came")
    }

    /// A standby's first hello goes out before any handshake: it waits in the channel and is
    /// sent once the handshake completes (embedders send it once and wait for the resync).
    @Test func unreliableRecordsSentBeforeTheHandshakeGoOutAfterIt() throws {
        let key = try ChannelKey.generate()
        var active = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 9, member: Self.active, epoch: 3, key: key, peers: [Self.standby]))
        var standby = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 9, member: Self.standby, epoch: 4, key: key, peers: [Self.active]))
        let hello = SyncRecord.hello(epoch: 4, capabilities: 0, needsResync: true)
        #expect(try standby.send([hello], to: Self.active, now: Timestamp(nanoseconds: 1)).actions.isEmpty, "no key for the peer yet")
        var atActive: [SyncRecord] = []
        _ = establish(&active, &standby) { receiver, records in if receiver == Self.active { atActive += records } }
        #expect(atActive.filter { $0 == hello }.count == 1)
    }

    /// Review H1 and L5: two runs of one member (same ID, same epoch, same key), or two members
    /// misconfigured with one ID, never seal under the same key: the same plaintext at the same
    /// packet number gives unrelated ciphertexts.
    @Test func twoRunsWithOneEpochNeverShareAKeystream() throws {
        let key = try ChannelKey.generate()
        var ciphertexts: [[UInt8]] = []
        for _ in 0..<2 {
            var (active, _) = try channels(key: key, activeEpoch: 8123, standbyEpoch: 8123)
            ciphertexts.append(Array(try datagram(&active).dropFirst(DatagramHeader.size)))
        }
        #expect(ciphertexts[0].count == ciphertexts[1].count)
        #expect(zip(ciphertexts[0], ciphertexts[1]).filter { $0 == $1 }.count < ciphertexts[0].count / 8)
    }

    /// Review H3: a recording of the active member's datagrams replayed to a restarted standby
    /// delivers nothing: every key was bound to the standby's previous incarnation.
    @Test func aRecordingReplayedToARestartedMemberIsRefused() throws {
        let key = try ChannelKey.generate()
        var (active, standby) = try channels(key: key)
        var recording: [[UInt8]] = []
        var generator = RecordGenerator(seed: 7)
        for index in 0..<20 {
            let sent = try active.send([.ikeSAUpsert(generator.ikeSA())], to: Self.standby, now: Timestamp(nanoseconds: UInt64(index + 1)))
            for case .transmit(_, let bytes) in sent.actions { recording.append(bytes) }
        }
        recording += active.tick(now: Timestamp(nanoseconds: 1_000_000_000)).compactMap { if case .transmit(_, let d) = $0 { d } else { nil } }
        for bytes in recording { _ = standby.receive(bytes, now: Timestamp(nanoseconds: 30)) }
        var restarted = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 9, member: Self.standby, epoch: 4, key: key, peers: [Self.active]))
        for bytes in recording {
            let actions = restarted.receive(bytes, now: Timestamp(nanoseconds: 40))
            #expect(!delivers(actions))
            #expect(!actions.contains { if case .peerRestarted = $0 { true } else { false } })
        }
        #expect(restarted.statistics.datagramsReceived == 0)
        #expect(restarted.incarnation(of: Self.active) == nil)
    }

    /// Review M1: after a rotation, datagrams under the old key open only until every peer was
    /// heard under the new one; then the old key is gone.
    @Test func thePreviousKeyIsRetiredOnceEveryPeerUsesTheNewOne() throws {
        let oldKey = try ChannelKey.generate()
        let newKey = try ChannelKey.generate()
        var (active, standby) = try channels(key: oldKey)
        let underOldKey = try hello(&active)
        let alsoUnderOldKey = try hello(&active)
        try standby.rotate(toEpoch: 5, key: newKey)
        #expect(standby.acceptsPreviousKey)
        #expect(delivers(standby.receive(underOldKey, now: Timestamp(nanoseconds: 2))), "the peer has not rotated yet")
        try active.rotate(toEpoch: 6, key: newKey)
        #expect(delivers(standby.receive(try hello(&active), now: Timestamp(nanoseconds: 3))))
        #expect(!standby.acceptsPreviousKey, "every peer was heard under the new key")
        #expect(standby.receive(alsoUnderOldKey, now: Timestamp(nanoseconds: 4)) == [.dropped(.security(.authenticationFailed))])
    }

    @Test func thePreviousKeyIsRetiredAfterTheGraceWhenAPeerNeverRotates() throws {
        let oldKey = try ChannelKey.generate()
        var (active, standby) = try channels(key: oldKey)
        let lateDatagram = try datagram(&active)
        try standby.rotate(toEpoch: 5, key: try ChannelKey.generate())
        _ = standby.tick(now: Timestamp(nanoseconds: 1_000_000_000))
        #expect(standby.acceptsPreviousKey)
        _ = standby.tick(now: Timestamp(nanoseconds: 1_000_000_000) + standby.configuration.previousKeyGrace)
        #expect(!standby.acceptsPreviousKey)
        #expect(standby.receive(lateDatagram, now: Timestamp(nanoseconds: 40_000_000_000)) == [.dropped(.security(.authenticationFailed))])
    }

    @Test func noKeyMeansNoChannelUnlessInsecureIsNamed() throws {
        #expect(throws: SyncChannelError.security(.noKey)) {
            try SyncChannel(configuration: SyncChannelConfiguration(clusterID: 1, member: Self.active, epoch: 1, key: nil, peers: [Self.standby]))
        }
        var insecure = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 9, member: Self.active, epoch: 1, key: nil, peers: [Self.standby], allowInsecure: true))
        var (_, sealed) = try channels(key: try ChannelKey.generate())
        // A keyed member refuses clear datagrams.
        for case .transmit(_, let clear) in insecure.tick(now: Timestamp(nanoseconds: 1)) {
            #expect(sealed.receive(clear, now: Timestamp(nanoseconds: 2)) == [.dropped(.security(.authenticationFailed))])
        }
        #expect(throws: ChannelSecurityError.invalidKeyLength(16)) { try ChannelKey(bytes: [UInt8](repeating: 1, count: 16)) }
        #expect(String(describing: try ChannelKey.generate()) == "ChannelKey(32 bytes, redacted)")
    }

    @Test func randomJunkNeverCrashesOrDelivers() throws {
        var (_, standby) = try channels(key: try ChannelKey.generate())
        var random = SplitMix64(seed: 5)
        for _ in 0..<5_000 {
            let junk = (0..<Int(random.next() % 200)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            #expect(!delivers(standby.receive(junk, now: Timestamp(nanoseconds: 2))))
        }
    }
}

@Suite("Reliable stream")
struct ReliableStreamTests {
    @Test func sendQueueFullIsTypedAndSendsNothing() throws {
        var configuration = SyncChannelConfiguration(
            clusterID: 1, member: ClusterMemberID(rawValue: 1), epoch: 1, key: try ChannelKey.generate(), peers: [ClusterMemberID(rawValue: 2)])
        configuration.retransmitBufferLimit = 2
        var channel = try SyncChannel(configuration: configuration)
        var peer = try SyncChannel(
            configuration: SyncChannelConfiguration(
                clusterID: 1, member: ClusterMemberID(rawValue: 2), epoch: 1, key: configuration.key, peers: [ClusterMemberID(rawValue: 1)]))
        _ = establish(&channel, &peer)
        let (datagramsBefore, recordsBefore) = (channel.statistics.datagramsSent, channel.statistics.recordsSent)
        let records = Array(repeating: SyncRecord.childSADelete(inboundSPI: 300), count: 3)
        _ = try channel.send(records, to: ClusterMemberID(rawValue: 2), now: Timestamp(nanoseconds: 1))
        _ = try channel.send(records, to: ClusterMemberID(rawValue: 2), now: Timestamp(nanoseconds: 1))
        #expect(channel.reliableCapacity(to: ClusterMemberID(rawValue: 2)) == 0)
        #expect(throws: SyncChannelError.sendQueueFull) { try channel.send(records, to: ClusterMemberID(rawValue: 2), now: Timestamp(nanoseconds: 1)) }
        #expect(channel.statistics.datagramsSent == datagramsBefore + 2)
        #expect(channel.statistics.recordsSent == recordsBefore + 6, "the refused send counts nothing")
    }

    @Test func ticketsAreAcknowledgedOnlyOnceTheStandbyHasEverything() throws {
        var cluster = try ReplicationPair(seed: 30)
        try cluster.run(for: 300_000_000)
        var history = HistoryGenerator(seed: 31)
        cluster.network.faults.partitions = [[1, 2]]
        let tickets = try cluster.replicate(try history.step(&cluster.state) + history.step(&cluster.state))
        let ticket = try #require(tickets.first)
        try cluster.run(for: 50_000_000)
        #expect(!cluster.activeChannel.isAcknowledged(ticket))
        cluster.network.faults.partitions = []
        try cluster.run(for: 300_000_000)
        #expect(cluster.activeChannel.isAcknowledged(ticket))
    }
}
