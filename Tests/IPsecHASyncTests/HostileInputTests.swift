import IPsecHACore
@testable import IPsecHASync
import IPsecHATestKit
import Testing

/// What an attacker on the synch network, or a member gone wrong, can send; each is refused or
/// rate-limited with a typed reason and a counter, changes nothing it should not, and costs a
/// bounded amount of work (Docs/Hardening.md).
@Suite("Hostile input on the synch channel")
struct HostileInputTests {
    static let active = ClusterMemberID(rawValue: 1)
    static let standby = ClusterMemberID(rawValue: 2)
    static let clusterID: UInt32 = 9

    static let activeIncarnation = ChannelIncarnation(high: 0xA, low: 1)!
    static let standbyIncarnation = ChannelIncarnation(high: 0xB, low: 2)!

    /// The standby's channel after a handshake with the active member's (incarnation
    /// ``activeIncarnation``), whose packet numbers to the standby stay below 100.
    func standbyChannel(_ key: ChannelKey) throws -> SyncChannel {
        var standby = SyncChannelConfiguration(clusterID: Self.clusterID, member: Self.standby, epoch: 4, key: key, peers: [Self.active])
        standby.incarnation = Self.standbyIncarnation
        var active = SyncChannelConfiguration(clusterID: Self.clusterID, member: Self.active, epoch: 3, key: key, peers: [Self.standby])
        active.incarnation = Self.activeIncarnation
        var standbyChannel = try SyncChannel(configuration: standby)
        var activeChannel = try SyncChannel(configuration: active)
        _ = establish(&activeChannel, &standbyChannel)
        return standbyChannel
    }

    /// A datagram from the active member to the standby sealed under `key`, carrying `payload`
    /// (packet numbers from 100 on, above what the handshake used).
    func sealed(
        _ payload: [UInt8], key: ChannelKey, epoch: UInt32 = 3, packetNumber: UInt64 = 1, reliableSequence: UInt64 = 1,
        incarnation: ChannelIncarnation = Self.activeIncarnation
    ) throws -> [UInt8] {
        var sealer = DatagramSealer(key: key)
        let header = DatagramHeader(
            flags: 0, clusterID: Self.clusterID, sender: Self.active, receiver: Self.standby, epoch: epoch,
            senderIncarnation: incarnation, packetNumber: packetNumber &+ 99, reliableSequence: reliableSequence)
        return try sealer.seal(header, payload: payload, receiverIncarnation: Self.standbyIncarnation)
    }

    func delivers(_ actions: [SyncChannelAction]) -> Bool { actions.contains { if case .deliver = $0 { true } else { false } } }

    @Test func aFloodOfForgeriesWithFutureEpochsIsCountedAndChangesNothing() throws {
        let key = try ChannelKey.generate()
        var channel = try standbyChannel(key)
        var random = SplitMix64(seed: 80)
        let hello = try SyncRecord.hello(epoch: 3, capabilities: 0, needsResync: false).encoded()
        let forgeries = 5_000
        for _ in 0..<forgeries {
            // Right cluster and members, any epoch up to the largest, any packet number: sealed
            // under a key the attacker made up.
            let epoch = 3 + UInt32(truncatingIfNeeded: random.next() % UInt64(UInt32.max - 3))
            let forged = try sealed(hello, key: try ChannelKey.generate(), epoch: epoch, packetNumber: random.next() | 1)
            #expect(channel.receive(forged, now: Timestamp(nanoseconds: 10)) == [.dropped(.security(.authenticationFailed))])
        }
        #expect(channel.statistics.authenticationFailures == UInt64(forgeries))
        let received = channel.statistics.datagramsReceived
        let heard = channel.lastHeard(from: Self.active)
        // The genuine active member's next datagram is taken: no forgery moved the replay window.
        let genuine = try sealed(hello, key: key, epoch: 3, packetNumber: 1, reliableSequence: 0)
        let actions = channel.receive(genuine, now: Timestamp(nanoseconds: 20_000_000_000))
        #expect(delivers(actions) && !actions.contains { if case .dropped = $0 { true } else { false } })
        #expect(channel.statistics.datagramsReceived == received + 1)
        #expect(heard != nil && channel.lastHeard(from: Self.active) != heard)
    }

    @Test func authenticRecordsClaimingHugeLengthsAreRefusedUntouched() throws {
        let key = try ChannelKey.generate()
        var channel = try standbyChannel(key)
        let received = channel.statistics.datagramsReceived
        let heard = channel.lastHeard(from: Self.active)
        // A record whose length says 65,535 bytes in a datagram of a few; a checkpoint batch that
        // claims 65,535 entries; an unknown record type that runs past the end.
        let payloads: [[UInt8]] = [
            [0x00, 0x05, 0xFF, 0xFF, 0x01, 0x02],
            [0x80, 0x19, 0x00, 0x02, 0xFF, 0xFF],
            [0x7F, 0xF0, 0x10, 0x00, 0x00],
        ]
        for (index, payload) in payloads.enumerated() {
            let actions = channel.receive(try sealed(payload, key: key, packetNumber: UInt64(index + 1)), now: Timestamp(nanoseconds: 10))
            guard case .dropped(.codec)? = actions.first, actions.count == 1 else {
                Issue.record("payload \(payload) gave \(actions)")
                continue
            }
        }
        #expect(channel.statistics.malformedDropped == UInt64(payloads.count))
        #expect(channel.statistics.datagramsReceived == received, "authentic but malformed: nothing taken")
        #expect(channel.lastHeard(from: Self.active) == heard)
    }

    @Test func fullResyncRequestsInALoopAreRateLimited() throws {
        var pair = try ReplicationPair(seed: 81)
        var records = RecordGenerator(seed: 82)
        for _ in 0..<50 { _ = try pair.state.createIKESA(records.ikeSA()) }
        #expect(try pair.settle())
        #expect(pair.replicator.resyncsStarted == 1)
        // A standby (compromised, or broken) asks for everything every 5 ms for a second and a half.
        for _ in 0..<300 {
            try pair.sendFromStandby([.resyncRequest(.everything)])
            try pair.run(for: 5_000_000)
        }
        // At most one resync a second: the one that made it ready, and one more.
        #expect(pair.replicator.resyncsStarted == 2)
        #expect(pair.replicator.resyncRequestsRefused >= 290)
        #expect(try pair.settle())
        #expect(pair.replica.state == pair.state)
    }

    @Test func namedResyncRequestsBeyondTheBudgetBecomeOneRateLimitedFullResync() throws {
        var pair = try ReplicationPair(seed: 83)
        var records = RecordGenerator(seed: 84)
        var identifiers: [IKESAIdentifier] = []
        for _ in 0..<20 {
            let sa = records.ikeSA()
            identifiers.append(sa.identifier)
            _ = try pair.state.createIKESA(sa)
        }
        #expect(try pair.settle())
        try pair.run(for: 1_100_000_000)
        // 100 requests for named IKE SAs within a tenth of a second.
        for _ in 0..<100 {
            try pair.sendFromStandby([.resyncRequest(.ikeSAs(identifiers))])
            try pair.run(for: 1_000_000)
        }
        #expect(pair.replicator.resyncsStarted == 2, "the 17th request became a full resync; later ones were refused")
        #expect(pair.replicator.resyncRequestsRefused >= 80)
        #expect(try pair.settle())
        #expect(pair.replica.state == pair.state)
    }

    /// An authenticated active member gone wrong cannot grow the standby's bookkeeping: records
    /// naming IKE SAs it never sent, or exchanges without end.
    @Test func recordsAboutUnknownSAsAndEndlessExchangesStayBounded() throws {
        var pair = try ReplicationPair(seed: 85)
        #expect(try pair.settle())
        var random = SplitMix64(seed: 86)
        for _ in 0..<6_000 {
            let unknown = IKESAIdentifier(initiatorSPI: random.next(), responderSPI: random.next())
            pair.deliverToStandby([.ikeSADelete(unknown), .exchangeStarted(unknown, messageID: 1, initiatedHere: true)])
            pair.deliverToStandby([.messageIDUpdate(unknown, generation: 9, try IKEMessageIDWindows(resumingAt: 0, expecting: 0, peerWindowSize: 1, localWindowSize: 1).snapshot)])
        }
        #expect(pair.replica.missingIKESAs.count == Replica.missingIKESALimit)
        #expect(pair.replica.inFlight.count <= 1_024)
        // Having lost track of that many, it asks for everything (rate-limited at the active member).
        var replica = pair.replica
        #expect(replica.takeResyncRequest() == .resyncRequest(.everything))
        #expect(replica.missingIKESAs.isEmpty)
    }
}
