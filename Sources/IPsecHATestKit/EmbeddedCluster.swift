public import IPsecHACore
public import IPsecHASync

/// Why an ``EmbeddedCluster`` stopped.
public struct EmbeddedClusterError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Where the virtual clock stood.
    public let time: Timestamp

    /// The virtual clock did not reach the end within the step budget: a member whose
    /// `nextDeadline` does not move on (a bug the cluster exists to catch).
    public static func noProgress(at time: Timestamp) -> EmbeddedClusterError { EmbeddedClusterError(time: time) }

    public var description: String { "no progress at \(time): a member's next deadline does not move on" }
}

/// N `ClusterMember`s on an ``InMemorySyncNetwork``, on a virtual clock that jumps from one
/// member's deadline or one delivery to the next, as `NIOEmbedded`'s event loop does for
/// channel handlers: the whole cluster runs deterministically in a test, and a member that
/// asks to be woken every millisecond shows in ``ticks``.
///
/// Members are numbered from 0 here; member `i` has ID `i + 1`. A crashed member
/// (``crash(_:)``) takes no input and loses what arrives for it; ``restart(_:epoch:active:)`` brings
/// it back empty as a standby.
public struct EmbeddedCluster {
    /// The network between the members; change its faults at any time.
    public let network: InMemorySyncNetwork
    /// The members, by index (ID `index + 1`).
    public var members: [ClusterMember]
    /// Each member's transport.
    public var transports: [InMemorySyncTransport]
    /// Whether each member runs.
    public private(set) var alive: [Bool]
    /// The virtual clock.
    public private(set) var now = Timestamp.seconds(1)
    /// How many times a member's deadline woke it.
    public private(set) var ticks = 0
    /// Every action each member gave, except transmissions, in order.
    public var events: [[ClusterMemberAction]]
    private let key: ChannelKey
    private let configure: (inout ClusterMemberConfiguration) -> Void

    /// The ID of member `index`.
    public static func id(_ index: Int) -> ClusterMemberID { ClusterMemberID(rawValue: UInt16(index + 1)) }

    /// `count` members with member `active` active at epoch 1, on a network with these faults
    /// and seed; `configure` adjusts each member's configuration.
    public init(
        members count: Int = 2, active: Int = 0, seed: UInt64, faults: NetworkFaults = NetworkFaults(),
        configure: @escaping (inout ClusterMemberConfiguration) -> Void = { _ in }
    ) throws {
        network = InMemorySyncNetwork(faults: faults, seed: seed)
        key = try ChannelKey.generate()
        self.configure = configure
        members = []
        transports = []
        alive = Array(repeating: true, count: count)
        events = Array(repeating: [], count: count)
        for index in 0..<count {
            members.append(try Self.member(index, of: count, active: Self.id(active), epoch: 1, key: key, configure: configure))
            transports.append(network.transport(for: Self.id(index)))
        }
    }

    private static func member(
        _ index: Int, of count: Int, active: ClusterMemberID, epoch: UInt32, key: ChannelKey, configure: (inout ClusterMemberConfiguration) -> Void
    ) throws -> ClusterMember {
        let peers = (0..<count).filter { $0 != index }.map(id)
        var configuration = ClusterMemberConfiguration(
            channel: SyncChannelConfiguration(clusterID: 3, member: id(index), epoch: epoch, key: key, peers: peers), activeMember: active)
        configure(&configuration)
        return try ClusterMember(configuration: configuration)
    }

    /// The indices of the members that run and are active.
    public var activeMembers: [Int] { members.indices.filter { alive[$0] && members[$0].isActive } }

    /// Runs until `end`: each live member takes the datagrams due, ticks at its deadline and
    /// sends what it says. Throws ``EmbeddedClusterError/noProgress(at:)`` after 1,000,000 steps.
    public mutating func run(until end: Timestamp) throws {
        var steps = 0
        while now < end {
            steps += 1
            if steps > 1_000_000 { throw EmbeddedClusterError.noProgress(at: now) }
            var next = end.nanoseconds
            for index in members.indices where alive[index] { next = min(next, members[index].nextDeadline.nanoseconds) }
            if let delivery = network.nextDelivery { next = min(next, delivery.nanoseconds) }
            now = Timestamp(nanoseconds: max(next, now.nanoseconds + 1))
            for index in members.indices where !alive[index] { _ = transports[index].receive(now: now) }
            for index in members.indices where alive[index] {
                for datagram in transports[index].receive(now: now) { members[index].receive(datagram, now: now) }
                if members[index].nextDeadline <= now {
                    members[index].tick(now: now)
                    ticks += 1
                }
                drain(index)
            }
        }
    }

    /// Runs for `duration`.
    public mutating func run(for duration: Duration) throws {
        try run(until: now + duration)
    }

    /// The plan and the Child SAs to rekey of member `index`'s last takeover, if it took over.
    public func takeover(of index: Int) -> (plan: TakeoverPlan, rekey: [UInt32])? {
        for case .tookOver(let plan, let rekey) in events[index].reversed() { return (plan, rekey) }
        return nil
    }

    /// Sends what member `index` has to send now and records its other actions in ``events``.
    public mutating func drain(_ index: Int) {
        while let action = members[index].nextAction() {
            if case .transmit(let to, let datagram) = action {
                try? transports[index].send(datagram, to: to, now: now)
            } else {
                events[index].append(action)
            }
        }
    }

    /// Gives member `index` an external decision now (keepalived's state, an operator's
    /// command) and sends what follows.
    public mutating func signal(_ index: Int, _ signal: ClusterMemberSignal) {
        members[index].signal(signal, now: now)
        drain(index)
    }

    /// Member `index` stops: no input, no output, what it held is gone.
    public mutating func crash(_ index: Int) { alive[index] = false }

    /// Member `index` comes back empty at `epoch`, a standby of member `active`.
    public mutating func restart(_ index: Int, epoch: UInt32, active: Int) throws {
        members[index] = try Self.member(index, of: members.count, active: Self.id(active), epoch: epoch, key: key, configure: configure)
        alive[index] = true
    }
}
