public import IPsecHACore
public import IPsecHASync

/// An active member and a standby joined by an `InMemorySyncNetwork`, driven on a virtual
/// clock: the smallest deterministic cluster, for tests, benchmarks and the demo.
///
/// The active member owns ``state`` and a `Replicator`; the standby a `Replica`, which says
/// hello until a bulk resync has made it ready. Every datagram goes through the real channel
/// (sealed with a fresh cluster key, replay-checked, reliable); the network's faults apply.
public struct ReplicationPair {
    /// The active member's ID (1).
    public static let activeID = ClusterMemberID(rawValue: 1)
    /// The standby's ID (2).
    public static let standbyID = ClusterMemberID(rawValue: 2)

    /// The network between them; change its faults at any time.
    public let network: InMemorySyncNetwork
    /// The active member's channel.
    public var activeChannel: SyncChannel
    /// The standby's channel.
    public var standbyChannel: SyncChannel
    private var activeTransport: InMemorySyncTransport
    private var standbyTransport: InMemorySyncTransport
    /// The active member's gateway state: change it, then ``replicate(_:)`` the changes.
    public var state: GatewayState
    /// The active member's replicator.
    public var replicator: Replicator
    /// The standby's replica.
    public private(set) var replica: Replica
    /// The virtual clock.
    public private(set) var now: Timestamp
    private var lastHello: Timestamp?
    /// Minimum time between two hellos of a standby that is not ready (200 ms).
    public var helloInterval: Duration = .milliseconds(200)

    /// A monotonic clock in nanoseconds: when set, ``run(for:step:)`` charges the real time of
    /// each member's work to ``workTime`` (the simulation's own clock stays virtual).
    public var workClock: (@Sendable () -> UInt64)?
    /// With ``workClock``: the time spent so far in the active member's work (its channel,
    /// replicator and sends) and in the standby's (its channel and replica), in nanoseconds.
    /// In a cluster each member has a machine of its own, so work that the two share, such as
    /// a bulk resync, takes about the larger of the two, not their sum.
    public private(set) var workTime: (active: UInt64, standby: UInt64) = (0, 0)

    /// A pair on a new network with these faults and seed, both members at epoch 1.
    public init(
        seed: UInt64, faults: NetworkFaults = NetworkFaults(), key: ChannelKey? = nil,
        configure: (inout SyncChannelConfiguration) -> Void = { _ in }
    ) throws {
        network = InMemorySyncNetwork(faults: faults, seed: seed)
        let clusterKey = try key ?? ChannelKey.generate()
        var activeConfiguration = SyncChannelConfiguration(
            clusterID: 7, member: Self.activeID, epoch: 1, key: clusterKey, peers: [Self.standbyID])
        var standbyConfiguration = SyncChannelConfiguration(
            clusterID: 7, member: Self.standbyID, epoch: 1, key: clusterKey, peers: [Self.activeID])
        configure(&activeConfiguration)
        configure(&standbyConfiguration)
        activeChannel = try SyncChannel(configuration: activeConfiguration)
        standbyChannel = try SyncChannel(configuration: standbyConfiguration)
        activeTransport = network.transport(for: Self.activeID)
        standbyTransport = network.transport(for: Self.standbyID)
        state = GatewayState()
        replicator = Replicator(standbys: [Self.standbyID])
        replica = Replica()
        now = Timestamp(nanoseconds: 1_000_000_000)
    }

    /// Replicates changes made to ``state``; returns the tickets.
    public mutating func replicate(_ changes: [StateChange]) throws -> [SyncTicket] {
        let result = replicator.replicate(changes, state: state, channel: &activeChannel, now: now)
        try perform(result.actions, onActive: true)
        return result.tickets
    }

    /// Replicates counter checkpoints; returns the tickets.
    public mutating func replicate(checkpoints: [CounterCheckpointEntry]) throws -> [SyncTicket] {
        let result = replicator.replicate(checkpoints: checkpoints, state: state, channel: &activeChannel, now: now)
        try perform(result.actions, onActive: true)
        return result.tickets
    }

    /// Moves the active member to a new epoch (and key, if given) and resyncs the standby, which
    /// may have missed what the old streams had not delivered.
    public mutating func rotateActive(toEpoch epoch: UInt32, key: ChannelKey? = nil) throws {
        try activeChannel.rotate(toEpoch: epoch, key: key)
        try perform(replicator.startResync(of: Self.standbyID, from: state, channel: &activeChannel, now: now), onActive: true)
    }

    /// Moves the standby to a new epoch (and key, if given); the active member resyncs it when
    /// it sees the new epoch.
    public mutating func rotateStandby(toEpoch epoch: UInt32, key: ChannelKey? = nil) throws {
        try standbyChannel.rotate(toEpoch: epoch, key: key)
    }

    /// Checkpoints every Child SA's counters and replicates them.
    public mutating func checkpointAll() throws {
        var changes: [StateChange] = []
        for spi in state.childSAs.map(\.inboundSPI) {
            if let slot = state.slot(forInboundSPI: spi) { changes += state.checkpointCounters(at: slot) }
        }
        _ = try replicate(changes)
    }

    /// Advances the clock by `duration` nanoseconds in steps of `step`, delivering datagrams
    /// and ticking both channels at each step.
    public mutating func run(for duration: UInt64, step: UInt64 = 1_000_000) throws {
        let end = now.nanoseconds + duration
        var started = workClock?()
        while now.nanoseconds < end {
            now = Timestamp(nanoseconds: min(now.nanoseconds + step, end))
            for datagram in activeTransport.receive(now: now) {
                try perform(activeChannel.receive(datagram, now: now), onActive: true)
            }
            started = charge(active: true, since: started)
            for datagram in standbyTransport.receive(now: now) {
                try perform(standbyChannel.receive(datagram, now: now), onActive: false)
            }
            started = charge(active: false, since: started)
            try perform(activeChannel.tick(now: now), onActive: true)
            try perform(replicator.pump(state: state, channel: &activeChannel, now: now), onActive: true)
            started = charge(active: true, since: started)
            defer { started = charge(active: false, since: started) }
            try perform(standbyChannel.tick(now: now), onActive: false)
            replica.observe(missingSince: standbyChannel.missingSince(from: Self.activeID))
            if replica.isReady, let request = replica.takeResyncRequest() { try sendFromStandby([request]) }
            if !replica.isReady, !replica.isResyncing,
                lastHello.map({ now >= $0 + helloInterval }) ?? true
            {
                lastHello = now
                let hello = try standbyChannel.send(
                    [replica.hello(epoch: standbyChannel.configuration.epoch)], to: Self.activeID, now: now)
                try perform(hello.actions, onActive: false)
            }
        }
    }

    /// Runs until the standby is ready, holds everything the active member sent (all of it
    /// acknowledged) and the network is empty, at most `limit` nanoseconds; returns whether it
    /// got there.
    public mutating func settle(limit: UInt64 = 10_000_000_000, step: UInt64 = 1_000_000) throws -> Bool {
        let end = now.nanoseconds + limit
        while now.nanoseconds < end {
            try run(for: step, step: step)
            if replica.isReady, network.pending == 0, !replicator.isCatchingUp(Self.standbyID),
                activeChannel.replicationLag(to: Self.standbyID, now: now) == .zero
            {
                return true
            }
        }
        return false
    }

    /// Adds the time since `start` to one member's ``workTime``; returns the new start.
    private mutating func charge(active: Bool, since start: UInt64?) -> UInt64? {
        guard let start, let clock = workClock else { return nil }
        let now = clock()
        if active { workTime.active += now - start } else { workTime.standby += now - start }
        return now
    }

    /// Sends records from the standby to the active member through the channel.
    public mutating func sendFromStandby(_ records: [SyncRecord]) throws {
        try perform(try standbyChannel.send(records, to: Self.activeID, now: now).actions, onActive: false)
    }

    /// Hands records to the replica as if they had arrived from the active member (tests use it
    /// to put the standby in states that faults alone rarely reach).
    public mutating func deliverToStandby(_ records: [SyncRecord]) {
        replica.apply(records, now: now)
    }

    private mutating func perform(_ actions: [SyncChannelAction], onActive: Bool) throws {
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
                    replica.apply(records, now: now)
                }
            case .resyncNeeded:
                if onActive { try perform(replicator.handle(action, state: state, channel: &activeChannel, now: now), onActive: true) }
            case .peerRestarted, .dropped:
                break
            }
        }
    }
}
