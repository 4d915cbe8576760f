public import IPsecHACore
public import IPsecHASync

/// The conformance check for a `SyncTransport` backend: a real synch channel, replicator and
/// replica run over it, and the standby must end with the active member's state.
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
        var activeChannel = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 77, member: activeID, epoch: 1, key: key, peers: [standbyID]))
        var standbyChannel = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 77, member: standbyID, epoch: 1, key: key, peers: [activeID]))
        var state = GatewayState()
        var replicator = Replicator(standbys: [standbyID])
        var replica = Replica()
        var lastHello: Timestamp?
        let start = clock()

        func sendActive(_ actions: [SyncChannelAction], now: Timestamp) {
            for case .transmit(let to, let datagram) in actions { try? active.send(datagram, to: to, now: now) }
        }
        func step() {
            let now = clock()
            var actions = active.receive(now: now).flatMap { activeChannel.receive($0, now: now) }
            actions += activeChannel.tick(now: now)
            actions += replicator.pump(channel: &activeChannel, now: now)
            while !actions.isEmpty {
                var next: [SyncChannelAction] = []
                for action in actions {
                    switch action {
                    case .transmit(let to, let datagram): try? active.send(datagram, to: to, now: now)
                    case .deliver, .resyncNeeded: next += replicator.handle(action, state: state, channel: &activeChannel, now: now)
                    default: break
                    }
                }
                actions = next
            }
            var standbyActions = standby.receive(now: now).flatMap { standbyChannel.receive($0, now: now) }
            standbyActions += standbyChannel.tick(now: now)
            if !replica.isReady, !replica.isResyncing, lastHello.map({ now.nanoseconds - $0.nanoseconds >= 200_000_000 }) ?? true {
                lastHello = now
                if let hello = try? standbyChannel.send([replica.hello(epoch: 1)], to: activeID, now: now) { standbyActions += hello.actions }
            }
            if replica.isReady, let request = replica.takeResyncRequest(), let sent = try? standbyChannel.send([request], to: activeID, now: now) {
                standbyActions += sent.actions
            }
            for action in standbyActions {
                switch action {
                case .transmit(let to, let datagram): try? standby.send(datagram, to: to, now: now)
                case .deliver(_, let records): replica.apply(records, now: now)
                default: break
                }
            }
            pause()
        }
        func timedOut() -> Bool { clock().nanoseconds - start.nanoseconds >= limit }

        while !replica.isReady, !timedOut() { step() }
        // Changes, each replicated as an IKE stack would: SAs made, message IDs and counters
        // moved, some SAs deleted.
        var random = SplitMix64(seed: 17)
        var identifiers: [IKESAIdentifier] = []
        for index in 0..<ikeSAs {
            let ike = try SimulationFixtures.ikeSA(UInt64(index + 1), &random)
            identifiers.append(ike.identifier)
            var changes = try state.createIKESA(ike)
            changes += try state.createChildSA(
                SimulationFixtures.childSA(UInt32(0x3000 + index), parent: ike.identifier, window: 256, &random))
            changes += try state.updateMessageIDs(of: ike.identifier) { try? $0.responses.recordProcessed(0) }
            if let slot = state.slot(forInboundSPI: UInt32(0x3000 + index)) {
                for _ in 0..<100 { _ = try state.nextOutboundSequenceNumber(at: slot, bytes: 1_000) }
                changes += state.checkpointCounters(at: slot)
            }
            if index % 5 == 4 { changes += try state.deleteIKESA(identifiers[index - 2]) }
            let now = clock()
            sendActive(replicator.replicate(changes, state: state, channel: &activeChannel, now: now).actions, now: now)
            step()
        }
        while !timedOut() {
            step()
            let now = clock()
            if replica.isReady, activeChannel.replicationLag(to: standbyID, now: now) == 0, !replicator.isCatchingUp(standbyID),
                replica.state == state
            {
                break
            }
        }
        return Outcome(
            converged: replica.state == state, ikeSAs: state.ikeSAs.count,
            datagramsSent: activeChannel.statistics.datagramsSent + standbyChannel.statistics.datagramsSent,
            retransmissions: activeChannel.statistics.retransmissions + standbyChannel.statistics.retransmissions)
    }
}
