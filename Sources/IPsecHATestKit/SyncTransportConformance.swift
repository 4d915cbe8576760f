public import IPsecHACore
public import IPsecHASync

/// The conformance check for a `SyncTransport` backend: two `ClusterMember`s, an active one
/// and its standby, run over it, and the standby must end with the active member's state.
///
/// What it exercises is what the channel needs of a transport (the contract in
/// `SyncTransport`'s documentation): whole datagrams both ways, up to the channel's datagram
/// size, with loss, duplication and reordering allowed. The standby joins by bulk resync; the
/// active member then creates IKE SAs and Child SAs, moves message IDs and counters, and
/// deletes some, replicating each change; the check waits until the standby holds everything.
/// The package runs it over `InMemorySyncNetwork` (with faults) and over `UDPSyncTransport`
/// on loopback; a new backend is checked the same way.
public enum SyncTransportConformance {
    /// What the run saw.
    public struct Outcome: Sendable {
        /// Whether the standby's state equals the active member's at the end.
        public var converged: Bool
        /// IKE SAs the active member held at the end.
        public var ikeSAs: Int
        /// Datagrams both channels sent.
        public var datagramsSent: UInt64
        /// Datagrams the channels sent again (the transport lost some).
        public var retransmissions: UInt64
    }

    /// Runs an active member (ID 1) over `active` and a standby (ID 2) over `standby`. `clock`
    /// gives the time (virtual or real); `pause` is called between loop steps (advance a virtual
    /// clock, or sleep a millisecond). Gives up after `limit` nanoseconds of `clock` time.
    public static func run<Active: SyncTransport, Standby: SyncTransport>(
        active: inout Active, standby: inout Standby, ikeSAs: Int = 30,
        limit: UInt64 = 20_000_000_000, clock: () -> Timestamp, pause: () -> Void
    ) throws -> Outcome {
        let activeID = ClusterMemberID(rawValue: 1)
        let standbyID = ClusterMemberID(rawValue: 2)
        let key = try ChannelKey.generate()
        var activeMember = try ClusterMember(
            configuration: ClusterMemberConfiguration(
                channel: SyncChannelConfiguration(clusterID: 77, member: activeID, epoch: 1, key: key, peers: [standbyID]), activeMember: activeID))
        var standbyMember = try ClusterMember(
            configuration: ClusterMemberConfiguration(
                channel: SyncChannelConfiguration(clusterID: 77, member: standbyID, epoch: 1, key: key, peers: [activeID]), activeMember: activeID))
        let start = clock()

        func step() {
            let now = clock()
            _ = active.service(&activeMember, now: now)
            _ = standby.service(&standbyMember, now: now)
            pause()
        }
        func timedOut() -> Bool { clock().nanoseconds - start.nanoseconds >= limit }

        while !standbyMember.isReady, !timedOut() { step() }
        // Changes, each replicated as an IKE stack would: SAs made, message IDs and counters
        // moved, some SAs deleted.
        var random = SplitMix64(seed: 17)
        var identifiers: [IKESAIdentifier] = []
        for index in 0..<ikeSAs {
            let ike = try SAFixtures.ikeSA(UInt64(index + 1), &random)
            let child = try SAFixtures.childSA(UInt32(0x3000 + index), parent: ike.identifier, window: 256, &random)
            identifiers.append(ike.identifier)
            let retired = index % 5 == 4 ? identifiers[index - 2] : nil
            _ = try activeMember.update(now: clock()) { state, changes throws(GatewayStateError) in
                changes += try state.createIKESA(ike)
                changes += try state.createChildSA(child)
                changes += try state.updateMessageIDs(of: ike.identifier) { try? $0.responses.recordProcessed(0) }
            }
            _ = activeMember.packetPath { state in
                guard let slot = state.slot(forInboundSPI: child.inboundSPI) else { return }
                for _ in 0..<100 { _ = try? state.nextOutboundSequenceNumber(at: slot, bytes: 1_000) }
            }
            _ = try activeMember.update(now: clock()) { state, changes throws(GatewayStateError) in
                if let slot = state.slot(forInboundSPI: child.inboundSPI) { changes += state.checkpointCounters(at: slot) }
                if let retired { changes += try state.deleteIKESA(retired) }
            }
            step()
        }
        while !timedOut() {
            step()
            if standbyMember.isReady, activeMember.status(of: standbyID, now: clock()) == .current,
                activeMember.channel.replicationLag(to: standbyID, now: clock()) == .zero, standbyMember.state == activeMember.state
            {
                break
            }
        }
        return Outcome(
            converged: standbyMember.state == activeMember.state, ikeSAs: activeMember.state.ikeSAs.count,
            datagramsSent: activeMember.channel.statistics.datagramsSent + standbyMember.channel.statistics.datagramsSent,
            retransmissions: activeMember.channel.statistics.retransmissions + standbyMember.channel.statistics.retransmissions)
    }
}
