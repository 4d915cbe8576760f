public import IPsecHACore
public import IPsecHASync

/// Faults an ``InMemorySyncNetwork`` injects, each drawn from its seeded generator.
public struct NetworkFaults: Sendable, Hashable {
    /// Probability that a datagram is lost.
    public var loss: Double = 0
    /// Probability that a datagram is delivered twice.
    public var duplication: Double = 0
    /// Probability that one byte of a datagram is flipped.
    public var corruption: Double = 0
    /// Fixed delay.
    public var delay: Duration = .microseconds(100)
    /// Extra random delay, up to this long, which reorders datagrams.
    public var jitter: Duration = .zero
    /// Members cut off from each other (both directions): pairs `(a, b)`.
    public var partitions: Set<[UInt16]> = []
    /// Loss in one direction only, on top of ``loss``: `[from, to]` to a probability.
    public var directedLoss: [[UInt16]: Double] = [:]

    /// No faults, 0.1 ms delay.
    public init() {}

    /// Ends every partition and one-way loss, and sets the delay back to `delay`.
    public mutating func heal(delay: Duration) {
        partitions = []
        directedLoss = [:]
        self.delay = delay
    }

    /// Whether `a` and `b` are partitioned.
    public func partitioned(_ a: ClusterMemberID, _ b: ClusterMemberID) -> Bool {
        partitions.contains([a.rawValue, b.rawValue]) || partitions.contains([b.rawValue, a.rawValue])
    }
}

/// A deterministic in-memory network between members, for tests, benchmarks and simulations:
/// time is whatever the caller says it is, and every fault comes from one seeded generator, so
/// the same seed and the same calls give the same deliveries.
///
/// A reference type on purpose: every member's ``InMemorySyncTransport`` shares it. Use it from
/// one thread (it is not `Sendable`).
public final class InMemorySyncNetwork {
    struct InFlight {
        let deliverAt: UInt64
        let order: UInt64
        let to: ClusterMemberID
        let datagram: [UInt8]
    }

    /// The faults in force; change them at any time.
    public var faults: NetworkFaults
    /// The largest datagram carried.
    public let maximumDatagramSize: Int
    private var random: SplitMix64
    private var inFlight: [InFlight] = []
    private var order: UInt64 = 0
    /// Datagrams sent, lost and delivered so far, and bytes sent.
    public private(set) var sent = 0, lost = 0, delivered = 0, bytesSent = 0

    /// A network with the given faults and seed.
    public init(faults: NetworkFaults = NetworkFaults(), seed: UInt64, maximumDatagramSize: Int = 65_535) {
        self.faults = faults
        self.maximumDatagramSize = maximumDatagramSize
        random = SplitMix64(seed: seed)
    }

    /// A transport for `member` on this network.
    public func transport(for member: ClusterMemberID) -> InMemorySyncTransport {
        InMemorySyncTransport(member: member, network: self)
    }

    /// Datagrams not yet delivered.
    public var pending: Int { inFlight.count }

    func send(_ datagram: [UInt8], from: ClusterMemberID, to: ClusterMemberID, now: Timestamp) throws(SyncTransportError) {
        guard datagram.count <= maximumDatagramSize else { throw .tooLarge(datagram.count) }
        sent += 1
        bytesSent += datagram.count
        if faults.partitioned(from, to) || chance(faults.loss) || chance(faults.directedLoss[[from.rawValue, to.rawValue]] ?? 0) {
            lost += 1
            return
        }
        let copies = chance(faults.duplication) ? 2 : 1
        for _ in 0..<copies {
            var bytes = datagram
            if chance(faults.corruption), !bytes.isEmpty {
                bytes[Int(random.next() % UInt64(bytes.count))] ^= UInt8(1 + random.next() % 255)
            }
            let spread = faults.jitter.nonNegativeNanoseconds
            let jitter = spread == 0 ? 0 : random.next() % spread
            order += 1
            inFlight.append(InFlight(deliverAt: now.nanoseconds &+ faults.delay.nonNegativeNanoseconds &+ jitter, order: order, to: to, datagram: bytes))
        }
    }

    func receive(for member: ClusterMemberID, now: Timestamp) -> [[UInt8]] {
        var due: [InFlight] = []
        inFlight.removeAll { item in
            guard item.to == member, item.deliverAt <= now.nanoseconds else { return false }
            due.append(item)
            return true
        }
        due.sort { ($0.deliverAt, $0.order) < ($1.deliverAt, $1.order) }
        delivered += due.count
        return due.map(\.datagram)
    }

    /// When the next datagram becomes deliverable, if any is in flight.
    public var nextDelivery: Timestamp? { inFlight.map(\.deliverAt).min().map { Timestamp(nanoseconds: $0) } }

    private func chance(_ probability: Double) -> Bool {
        probability > 0 && Double(random.next() >> 11) / Double(1 << 53) < probability
    }
}

/// One member's port on an ``InMemorySyncNetwork``.
public struct InMemorySyncTransport: SyncTransport {
    /// The member.
    public let member: ClusterMemberID
    let network: InMemorySyncNetwork

    public mutating func send(_ datagram: [UInt8], to member: ClusterMemberID, now: Timestamp) throws(SyncTransportError) {
        try network.send(datagram, from: self.member, to: member, now: now)
    }

    public mutating func receive(now: Timestamp) -> [[UInt8]] {
        network.receive(for: member, now: now)
    }
}
