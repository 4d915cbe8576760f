import IPsecHACore
import IPsecHASync
import IPsecHASimulation
import Testing

@Suite("Synch channel: hostile datagrams")
struct ChannelSecurityTests {
    static let active = ClusterMemberID(rawValue: 1)
    static let standby = ClusterMemberID(rawValue: 2)

    func channels(key: ChannelKey) throws -> (SyncChannel, SyncChannel) {
        (
            try SyncChannel(configuration: SyncChannelConfiguration(clusterID: 9, member: Self.active, epoch: 3, key: key, peers: [Self.standby])),
            try SyncChannel(configuration: SyncChannelConfiguration(clusterID: 9, member: Self.standby, epoch: 4, key: key, peers: [Self.active]))
        )
    }

    /// A reliable datagram from the active member carrying one IKE SA.
    func datagram(_ sender: inout SyncChannel) throws -> [UInt8] {
        var generator = RecordGenerator(seed: 1)
        let sent = try sender.send([.ikeSAUpsert(generator.ikeSA())], to: Self.standby, now: Timestamp(nanoseconds: 1))
        guard case .transmit(_, let bytes) = sent.actions[0] else { throw SyncChannelError.tooShort(0) }
        return bytes
    }

    func delivers(_ actions: [SyncChannelAction]) -> Bool {
        actions.contains { if case .deliver = $0 { true } else { false } }
    }

    @Test func genuineDatagramIsDeliveredOnceAndItsReplayRefused() throws {
        var (active, standby) = try channels(key: try ChannelKey.generate())
        let bytes = try datagram(&active)
        #expect(delivers(standby.receive(bytes, now: Timestamp(nanoseconds: 2))))
        let replayed = standby.receive(bytes, now: Timestamp(nanoseconds: 3))
        #expect(replayed == [.dropped(.security(.replayed(1)))])
        #expect(standby.statistics.replaysRejected == 1)
        #expect(active.statistics.recordsSent == 1)
        #expect(standby.statistics.recordsReceived == 1, "the replay's record is not counted")
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
        for length in [0, 1, 31, 32, 47, bytes.count - 1] {
            #expect(!delivers(standby.receive(Array(bytes.prefix(length)), now: Timestamp(nanoseconds: 2))))
        }
        let oversized = standby.receive(bytes + [UInt8](repeating: 0, count: 1_400), now: Timestamp(nanoseconds: 2))
        #expect(oversized == [.dropped(.tooLong(bytes.count + 1_400))])
        // Sealed under another cluster key: authentic-looking but not ours.
        var (stranger, _) = try channels(key: try ChannelKey.generate())
        #expect(standby.receive(try datagram(&stranger), now: Timestamp(nanoseconds: 2)) == [.dropped(.security(.authenticationFailed))])
        #expect(standby.statistics.datagramsReceived == before.datagramsReceived)
        #expect(standby.statistics.authenticationFailures > 0)
        #expect(standby.statistics.malformedDropped > 0)
        // The genuine datagram still gets through: nothing above moved the replay window.
        #expect(delivers(standby.receive(bytes, now: Timestamp(nanoseconds: 3))))
    }

    @Test func otherClustersMembersAndOlderEpochsAreRefused() throws {
        let key = try ChannelKey.generate()
        var (active, standby) = try channels(key: key)
        let genuine = try datagram(&active)
        var wrongCluster = genuine
        wrongCluster[7] ^= 1
        #expect(standby.receive(wrongCluster, now: Timestamp(nanoseconds: 2)) == [.dropped(.wrongCluster(8))])
        var stranger = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 9, member: ClusterMemberID(rawValue: 5), epoch: 1, key: key, peers: [Self.standby]))
        #expect(standby.receive(try datagram(&stranger), now: Timestamp(nanoseconds: 2)) == [.dropped(.unknownMember(ClusterMemberID(rawValue: 5)))])
        #expect(delivers(standby.receive(genuine, now: Timestamp(nanoseconds: 2))))
        var older = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 9, member: Self.active, epoch: 2, key: key, peers: [Self.standby]))
        #expect(standby.receive(try datagram(&older), now: Timestamp(nanoseconds: 3)) == [.dropped(.security(.replayed(1)))])
        // A restarted active member (higher epoch) is taken, and reported.
        var restarted = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 9, member: Self.active, epoch: 4, key: key, peers: [Self.standby]))
        #expect(standby.receive(try datagram(&restarted), now: Timestamp(nanoseconds: 4)).contains(.peerRestarted(Self.active, epoch: 4)))
    }

    @Test func noKeyMeansNoChannelUnlessInsecureIsNamed() throws {
        #expect(throws: SyncChannelError.security(.noKey)) {
            try SyncChannel(configuration: SyncChannelConfiguration(clusterID: 1, member: Self.active, epoch: 1, key: nil, peers: [Self.standby]))
        }
        var insecure = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 9, member: Self.active, epoch: 1, key: nil, peers: [Self.standby], allowInsecure: true))
        var (_, sealed) = try channels(key: try ChannelKey.generate())
        // A keyed member refuses clear datagrams.
        #expect(sealed.receive(try datagram(&insecure), now: Timestamp(nanoseconds: 2)) == [.dropped(.security(.authenticationFailed))])
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
        let records = Array(repeating: SyncRecord.childSADelete(inboundSPI: 300), count: 3)
        _ = try channel.send(records, to: ClusterMemberID(rawValue: 2), now: Timestamp(nanoseconds: 1))
        _ = try channel.send(records, to: ClusterMemberID(rawValue: 2), now: Timestamp(nanoseconds: 1))
        #expect(channel.reliableCapacity(to: ClusterMemberID(rawValue: 2)) == 0)
        #expect(throws: SyncChannelError.sendQueueFull) { try channel.send(records, to: ClusterMemberID(rawValue: 2), now: Timestamp(nanoseconds: 1)) }
        #expect(channel.statistics.datagramsSent == 2)
        #expect(channel.statistics.recordsSent == 6, "the refused send counts nothing")
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
