import IPsecHACore
import IPsecHASync

/// An active and a standby member joined by an in-memory network, driven in 1 ms steps.
struct ClusterHarness {
    static let activeID = ClusterMemberID(rawValue: 1)
    static let standbyID = ClusterMemberID(rawValue: 2)

    let network: InMemorySyncNetwork
    var activeChannel: SyncChannel
    var standbyChannel: SyncChannel
    var activeTransport: InMemorySyncTransport
    var standbyTransport: InMemorySyncTransport
    var state = GatewayState()
    var replicator = Replicator(standbys: [standbyID])
    var replica = Replica()
    var now = Timestamp(nanoseconds: 1_000_000_000)
    var lastHello: Timestamp?
    var standbyEpoch: UInt32 = 1
    var delivered: [SyncRecord] = []

    init(seed: UInt64, faults: NetworkFaults = NetworkFaults(), key: ChannelKey? = nil) throws {
        network = InMemorySyncNetwork(faults: faults, seed: seed)
        let clusterKey = try key ?? ChannelKey.generate()
        activeChannel = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 7, member: Self.activeID, epoch: 1, key: clusterKey, peers: [Self.standbyID]))
        standbyChannel = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 7, member: Self.standbyID, epoch: 1, key: clusterKey, peers: [Self.activeID]))
        activeTransport = network.transport(for: Self.activeID)
        standbyTransport = network.transport(for: Self.standbyID)
    }

    /// Replicates changes made to the active state.
    mutating func replicate(_ changes: [StateChange]) throws -> [SyncTicket] {
        let result = replicator.replicate(changes, state: state, channel: &activeChannel, now: now)
        try perform(result.actions, onActive: true)
        return result.tickets
    }

    /// Advances time by `duration` nanoseconds in steps of `step`.
    mutating func run(for duration: UInt64, step: UInt64 = 1_000_000) throws {
        let end = now.nanoseconds + duration
        while now.nanoseconds < end {
            now = Timestamp(nanoseconds: now.nanoseconds + step)
            for datagram in activeTransport.receive(now: now) {
                try perform(activeChannel.receive(datagram, now: now), onActive: true)
            }
            for datagram in standbyTransport.receive(now: now) {
                try perform(standbyChannel.receive(datagram, now: now), onActive: false)
            }
            try perform(activeChannel.tick(now: now), onActive: true)
            try perform(replicator.pump(channel: &activeChannel, now: now), onActive: true)
            try perform(standbyChannel.tick(now: now), onActive: false)
            if !replica.isReady, lastHello.map({ now.nanoseconds - $0.nanoseconds >= 200_000_000 }) ?? true {
                lastHello = now
                let hello = try standbyChannel.send([replica.hello(epoch: standbyEpoch)], to: Self.activeID, now: now)
                try perform(hello.actions, onActive: false)
            }
        }
    }

    mutating func perform(_ actions: [SyncChannelAction], onActive: Bool) throws {
        for action in actions {
            switch action {
            case .transmit(let to, let datagram):
                if onActive {
                    try activeTransport.send(datagram, to: to, now: now)
                } else {
                    try standbyTransport.send(datagram, to: to, now: now)
                }
            case .deliver(_, let records):
                if onActive {
                    try perform(replicator.handle(action, state: state, channel: &activeChannel, now: now), onActive: true)
                } else {
                    delivered += records
                    replica.apply(records, now: now)
                }
            case .resyncNeeded:
                if onActive { try perform(replicator.handle(action, state: state, channel: &activeChannel, now: now), onActive: true) }
            case .peerRestarted, .dropped:
                break
            }
        }
    }

    /// Checkpoints every Child SA's counters and replicates them.
    mutating func checkpointAll() throws {
        var changes: [StateChange] = []
        for spi in state.childSAs.map(\.inboundSPI) {
            changes += state.checkpointCounters(at: state.slot(forInboundSPI: spi)!)
        }
        _ = try replicate(changes)
    }
}

/// Random gateway histories for replication tests.
struct HistoryGenerator {
    var records: RecordGenerator
    var ikeSAs: [IKESAIdentifier] = []

    init(seed: UInt64) { records = RecordGenerator(seed: seed) }

    /// One random mutation of `state`, returning its changes.
    mutating func step(_ state: inout GatewayState) throws -> [StateChange] {
        let children = state.childSAs.map(\.inboundSPI)
        switch records.next(10) {
        case 0, 1:
            let sa = records.ikeSA()
            ikeSAs.append(sa.identifier)
            return try state.createIKESA(sa)
        case 2:
            guard let id = ikeSAs.randomElement(using: &records.random), state.ikeSAs[id] != nil else { return [] }
            return try state.updateIKESA(id) { sa in
                sa.state = .established
                _ = try? sa.messageIDs.requests.nextRequestID()
            }
        case 3:
            guard records.next(4) == 0, let index = ikeSAs.indices.randomElement(using: &records.random) else { return [] }
            let id = ikeSAs.remove(at: index)
            return state.ikeSAs[id] == nil ? [] : try state.deleteIKESA(id)
        case 4, 5, 6:
            guard let parent = ikeSAs.randomElement(using: &records.random) else { return [] }
            var sa = records.childSA(parent: parent)
            sa.policy = nil
            guard state.childSA(inboundSPI: sa.inboundSPI) == nil else { return [] }
            return try state.createChildSA(sa)
        case 7:
            guard let spi = children.randomElement(using: &records.random) else { return [] }
            return try state.deleteChildSA(inboundSPI: spi)
        default:
            guard let spi = children.randomElement(using: &records.random), let slot = state.slot(forInboundSPI: spi) else { return [] }
            for _ in 0..<records.next(50) { _ = try? state.nextOutboundSequenceNumber(at: slot, bytes: 1_000) }
            return state.checkpointCounters(at: slot)
        }
    }
}
