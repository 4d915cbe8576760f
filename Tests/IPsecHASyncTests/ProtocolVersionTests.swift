import IPsecHACore
import IPsecHATestKit
import Testing

@testable import IPsecHASync

/// Rolling upgrades: members of the previous release (synch protocol 2, no protocol-versions
/// record) and of this one (2...3) in one cluster, through replication, resync, a switchover
/// and a failover; the version each pair speaks; a member two releases apart refused loudly.
@Suite("Synch protocol versions")
struct ProtocolVersionTests {
    /// Which versions each member speaks, changed between restarts (an upgrade).
    final class Releases: @unchecked Sendable {
        var versions: [ClusterMemberID: ClosedRange<UInt8>] = [:]
    }

    @Test func theRecordRoundTripsAndLaterFieldsAreSkipped() throws {
        let record = SyncRecord.protocolVersions(oldest: 2, newest: 3)
        #expect(try record.encoded() == [0x00, 0x20, 0x00, 0x02, 0x02, 0x03])
        #expect(!record.isReliable)
        #expect(try SyncRecord.decodeAll(try record.encoded()[...]) == [record])
        // A later release may append fields: the versions are still read.
        #expect(try SyncRecord.decodeAll([0x00, 0x20, 0x00, 0x04, 0x02, 0x05, 0xAA, 0xBB][...]) == [.protocolVersions(oldest: 2, newest: 5)])
        for bad: [UInt8] in [[0x00, 0x20, 0x00, 0x02, 0x00, 0x03], [0x00, 0x20, 0x00, 0x02, 0x04, 0x03], [0x00, 0x20, 0x00, 0x01, 0x02]] {
            #expect(throws: SyncCodecError.self) { try SyncRecord.decodeAll(bad[...]) }
        }
    }

    /// The runbook's upgrade, in process: both members on the previous release; the standby
    /// upgraded and resynced; a switchover to it; the other upgraded; a failover back.
    @Test func aMixedClusterReplicatesResyncsAndTakesOverBothWays() throws {
        let releases = Releases()
        let previous = SyncProtocolVersion.previousRelease...SyncProtocolVersion.previousRelease
        releases.versions = [EmbeddedCluster.id(0): previous, EmbeddedCluster.id(1): previous]
        var cluster = try EmbeddedCluster(seed: 70) { configuration in
            configuration.channel.protocolVersions = releases.versions[configuration.channel.member]!
        }
        try cluster.run(for: .milliseconds(300))
        _ = try cluster.createSAs(ikeSPI: 201, childSPI: 0x7800, seed: 71)
        try cluster.run(for: .milliseconds(100))
        #expect(cluster.members[0].channel.protocolVersion(with: EmbeddedCluster.id(1)) == .speaking(2))

        // The standby first: it restarts on this release, is resynced by the previous one.
        releases.versions[EmbeddedCluster.id(1)] = SyncProtocolVersion.supported
        try cluster.restart(1, epoch: 5, active: 0)
        try cluster.run(for: .seconds(1))
        #expect(cluster.members[1].readiness == .completeCopy, "resynced by a member of the previous release")
        #expect(cluster.members[1].channel.protocolVersion(with: EmbeddedCluster.id(0)) == .speaking(2), "the peer announced nothing")
        #expect(cluster.members[0].channel.protocolVersion(with: EmbeddedCluster.id(1)) == .speaking(2))
        cluster.send(0, spi: 0x7800, count: 300)
        try cluster.run(for: .milliseconds(100))
        let served = try #require(cluster.members[0].state.childSA(inboundSPI: 0x7800)).outboundCounter.lastSent

        // The active role moves to the upgraded member with exact state.
        _ = try cluster.members[0].switchOver(now: cluster.now)
        cluster.drain(0)
        try cluster.run(for: .milliseconds(50))
        #expect(cluster.activeMembers == [1])
        #expect(cluster.members[1].promotionReason == .switchOver(from: EmbeddedCluster.id(0)))
        #expect(try #require(cluster.members[1].state.childSA(inboundSPI: 0x7800)).outboundCounter.lastSent == served)

        // Then the other; once both run this release they speak version 3.
        releases.versions[EmbeddedCluster.id(0)] = SyncProtocolVersion.supported
        try cluster.restart(0, epoch: 9, active: 1)
        try cluster.run(for: .seconds(1))
        #expect(cluster.members[0].readiness == .completeCopy)
        #expect(cluster.members[0].channel.protocolVersion(with: EmbeddedCluster.id(1)) == .speaking(SyncProtocolVersion.current))
        #expect(cluster.members[1].channel.protocolVersion(with: EmbeddedCluster.id(0)) == .speaking(SyncProtocolVersion.current))
        cluster.send(1, spi: 0x7800, count: 200)
        try cluster.run(for: .milliseconds(200))
        let beforeFailure = try #require(cluster.members[1].state.childSA(inboundSPI: 0x7800)).outboundCounter.lastSent

        // A failure now: the upgraded standby takes over beyond everything sent.
        cluster.crash(1)
        try cluster.run(for: .milliseconds(400))
        #expect(cluster.activeMembers == [0])
        #expect(try #require(cluster.members[0].state.childSA(inboundSPI: 0x7800)).outboundCounter.lastSent > beforeFailure)
    }

    /// A member that speaks only versions this one does not (two releases apart) is told apart,
    /// and the operator is told once why.
    @Test func membersTwoReleasesApartAreIncompatible() throws {
        var cluster = try EmbeddedCluster(seed: 72) { configuration in
            if configuration.channel.member == EmbeddedCluster.id(1) { configuration.channel.protocolVersions = 5...6 }
        }
        try cluster.run(for: .milliseconds(500))
        #expect(cluster.members[0].channel.protocolVersion(with: EmbeddedCluster.id(1)) == .incompatible(peer: 5...6))
        // And the other way round: member 1 announced 2...4, all below member 2's oldest.
        #expect(cluster.members[1].channel.protocolVersion(with: EmbeddedCluster.id(0)) == .incompatible(peer: 2...4))
    }

    /// During a switchover the member that handed over relays what still reaches it; only the
    /// active member takes relayed datagrams, and a member of the previous release (version 2,
    /// which would skip the record) is never sent one.
    @Test func relayedDatagramsReachOnlyAnActiveMemberOfThisRelease() throws {
        var cluster = try EmbeddedCluster(seed: 73)
        try cluster.run(for: .milliseconds(300))
        let datagram = RelayedDatagram(remote: Endpoint(address: try IPAddress("192.0.2.7"), port: 4500, udpEncapsulation: true), localPort: 4500, bytes: [1, 2, 3])
        #expect(try SyncRecord.decodeAll(try SyncRecord.relayedDatagram(datagram).encoded()[...]) == [.relayedDatagram(datagram)])
        #expect(throws: SyncCodecError.self, "an empty datagram") {
            try SyncRecord.decodeAll(try SyncRecord.relayedDatagram(RelayedDatagram(remote: datagram.remote, localPort: 500, bytes: [])).encoded()[...])
        }
        func relayedTo(_ index: Int) -> Int { cluster.events[index].filter { $0 == .relayed(datagram) }.count }
        // To a standby: sent, and dropped there.
        let toStandby = cluster.members[0].relay(datagram, to: EmbeddedCluster.id(1), now: cluster.now)
        #expect(toStandby)
        try cluster.run(for: .milliseconds(20))
        #expect(relayedTo(1) == 0)
        // After a switchover, from the member that handed over to the new active member.
        _ = try cluster.members[0].switchOver(now: cluster.now)
        cluster.drain(0)
        try cluster.run(for: .milliseconds(20))
        #expect(cluster.activeMembers == [1])
        let toActive = cluster.members[0].relay(datagram, to: EmbeddedCluster.id(1), now: cluster.now)
        #expect(toActive)
        try cluster.run(for: .milliseconds(20))
        #expect(relayedTo(1) == 1)

        var mixed = try EmbeddedCluster(seed: 74) { configuration in
            if configuration.channel.member == EmbeddedCluster.id(1) { configuration.channel.protocolVersions = 2...2 }
        }
        try mixed.run(for: .milliseconds(300))
        let toPrevious = mixed.members[0].relay(datagram, to: EmbeddedCluster.id(1), now: mixed.now)
        #expect(!toPrevious, "the previous release does not know the record")
    }
}
