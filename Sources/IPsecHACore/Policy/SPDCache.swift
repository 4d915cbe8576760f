/// Names the place of a Child SA in a ``GatewayState``; valid until that Child SA is deleted.
public struct ChildSASlot: Sendable, Hashable {
    @usableFromInline let storage: Int32
    @inlinable init(index: Int32) { storage = index }

    /// The slot's position, from 0 up to the number of Child SAs ever installed at once: an
    /// embedder may index its own per-SA tables (data-plane contexts, statistics) by it.
    @inlinable public var index: Int { Int(storage) }
}

/// What the SPD (through its cache) says to do with an outbound packet.
public enum SPDCacheDecision: Sendable, Hashable {
    /// Protect it with the Child SA in this slot.
    case protect(ChildSASlot)
    /// Send it in the clear (this BYPASS policy).
    case bypass(SecurityPolicyID)
    /// Drop it (this DISCARD policy, or nil when no policy matched: the implicit catch-all).
    case discard(SecurityPolicyID?)
    /// Protect it under this policy, but no Child SA exists yet: negotiate one (an ACQUIRE).
    /// Not cached, so the packet after the new SA is installed finds it.
    case acquire(SecurityPolicyID)
}

/// Counters of an SPD cache.
public struct SPDCacheStatistics: Sendable, Hashable, Codable {
    /// Lookups answered from the cache.
    public var hits: UInt64 = 0
    /// Lookups that walked the SPD.
    public var misses: UInt64 = 0
    /// Entries dropped to make room (the cache was full).
    public var evictions: UInt64 = 0
    /// Entries found stale (their SA was deleted, rekeyed or changed, or the SPD changed).
    public var invalidations: UInt64 = 0
}

/// The outbound SPD cache (RFC 4301 section 4.4.1.2 and 5): decisions per flow, so that a
/// packet's five-tuple finds its Child SA, BYPASS or DISCARD without walking the SPD.
///
/// Entries are single five-tuples, the finest decorrelation there is, so a cached decision is
/// always the one an ordered SPD walk would give. The owner empties the cache whenever the SPD
/// changes; for PROTECT, each entry records the incarnation of its Child SA's slot, so an entry
/// whose SA was deleted, rekeyed or updated is dropped when next looked up. The cache holds at
/// most `capacity` entries and evicts with the CLOCK algorithm (second chance) when full.
///
/// The entries live in the open-addressing table itself (linear probing, at most 4/5 full), so
/// a lookup usually touches one or two cache lines, and removal shifts later entries back
/// instead of leaving tombstones. Memory is 48 bytes a bucket: 60 to 120 bytes a flow of
/// capacity.
@usableFromInline
struct SPDCache: Sendable {
    /// One cached flow in 48 bytes: the five-tuple's fields, the decision and the incarnation of
    /// its Child SA's slot. Small entries keep a large cache within the reach of the TLB.
    @usableFromInline
    struct Entry: Sendable {
        @usableFromInline var localHigh: UInt64
        @usableFromInline var localLow: UInt64
        @usableFromInline var remoteHigh: UInt64
        @usableFromInline var remoteLow: UInt64
        /// Local port in the high half, remote port in the low half.
        @usableFromInline var ports: UInt32
        /// The slot (PROTECT) or the policy ID (BYPASS, DISCARD).
        @usableFromInline var payload: UInt32
        @usableFromInline var incarnation: UInt32
        @usableFromInline var ipProtocol: UInt8
        @usableFromInline var family: UInt8
        /// 0 protect, 1 bypass, 2 discard with a policy, 3 discard without one.
        @usableFromInline var kind: UInt8
        /// 0 empty, 1 occupied, 2 occupied and referenced since the clock hand last passed.
        @usableFromInline var state: UInt8

        @usableFromInline static let empty = Entry(
            localHigh: 0, localLow: 0, remoteHigh: 0, remoteLow: 0, ports: 0, payload: 0, incarnation: 0,
            ipProtocol: 0, family: 0, kind: 0, state: 0)

        @usableFromInline
        init(
            localHigh: UInt64, localLow: UInt64, remoteHigh: UInt64, remoteLow: UInt64, ports: UInt32, payload: UInt32,
            incarnation: UInt32, ipProtocol: UInt8, family: UInt8, kind: UInt8, state: UInt8
        ) {
            (self.localHigh, self.localLow, self.remoteHigh, self.remoteLow) = (localHigh, localLow, remoteHigh, remoteLow)
            (self.ports, self.payload, self.incarnation) = (ports, payload, incarnation)
            (self.ipProtocol, self.family, self.kind, self.state) = (ipProtocol, family, kind, state)
        }

        init(key: FiveTuple, decision: SPDCacheDecision, incarnation: UInt32) {
            let (kind, payload): (UInt8, UInt32) =
                switch decision {
                case .protect(let slot): (0, UInt32(bitPattern: slot.storage))
                case .bypass(let policy): (1, policy.rawValue)
                case .discard(let policy?): (2, policy.rawValue)
                case .discard(nil), .acquire: (3, 0)
                }
            self.init(
                localHigh: key.localAddress.high, localLow: key.localAddress.low, remoteHigh: key.remoteAddress.high,
                remoteLow: key.remoteAddress.low, ports: UInt32(key.localPort) << 16 | UInt32(key.remotePort),
                payload: payload, incarnation: incarnation, ipProtocol: key.ipProtocol,
                family: key.localAddress.family.rawValue, kind: kind, state: 1)
        }

        @inlinable @inline(__always)
        func holds(_ key: FiveTuple) -> Bool {
            localLow == key.localAddress.low && remoteLow == key.remoteAddress.low
                && ports == (UInt32(key.localPort) << 16 | UInt32(key.remotePort))
                && ipProtocol == key.ipProtocol && localHigh == key.localAddress.high
                && remoteHigh == key.remoteAddress.high && family == key.localAddress.family.rawValue
        }

        @inlinable
        var decision: SPDCacheDecision {
            switch kind {
            case 0: .protect(ChildSASlot(index: Int32(bitPattern: payload)))
            case 1: .bypass(SecurityPolicyID(rawValue: payload))
            case 2: .discard(SecurityPolicyID(rawValue: payload))
            default: .discard(nil)
            }
        }

        /// The key's hash, recomputed (only removal needs it).
        func hash(seed: UInt64) -> UInt64 {
            let family: IPAddressFamily = self.family == IPAddressFamily.ipv6.rawValue ? .ipv6 : .ipv4
            func address(_ high: UInt64, _ low: UInt64) -> IPAddress {
                family == .ipv4 ? IPAddress(ipv4: UInt32(truncatingIfNeeded: low)) : IPAddress(ipv6High: high, low: low)
            }
            return FiveTuple(
                localAddress: address(localHigh, localLow), remoteAddress: address(remoteHigh, remoteLow),
                ipProtocol: ipProtocol, localPort: UInt16(ports >> 16), remotePort: UInt16(truncatingIfNeeded: ports)
            ).hash(seed: seed)
        }
    }

    let capacity: Int
    /// The secret seed of the key hash.
    @usableFromInline let seed: UInt64
    @usableFromInline var table: [Entry]
    @usableFromInline let mask: Int
    @usableFromInline private(set) var count = 0
    var hand = 0
    @usableFromInline var statistics = SPDCacheStatistics()
    /// Where ``touch(_:)`` results go, so that the optimiser keeps those loads.
    @usableFromInline var touched: UInt8 = 0

    init(capacity: Int, seed: UInt64) {
        self.capacity = max(capacity, 1)
        self.seed = seed
        var size = 16
        while size * 4 < self.capacity * 5 { size <<= 1 }
        table = Array(repeating: .empty, count: size)
        mask = size - 1
    }

    @inlinable @inline(__always)
    func hash(_ key: FiveTuple) -> UInt64 { key.hash(seed: seed) }

    @inlinable @inline(__always)
    func home(_ hash: UInt64) -> Int { Int(truncatingIfNeeded: hash &>> 32) & mask }

    /// The table position holding `key`, or nil.
    @inlinable
    func find(_ key: FiveTuple, hash: UInt64) -> Int? {
        table.withUnsafeBufferPointer { table in
            var position = home(hash)
            while true {
                let entry = table.baseAddress.unsafelyUnwrapped + position
                if entry.pointee.state == 0 { return nil }
                if entry.pointee.holds(key) { return position }
                position = (position &+ 1) & mask
            }
        }
    }

    /// Reads the home bucket of `hash` and returns a byte of it: issuing these loads for a burst
    /// of packets before looking any of them up lets their cache misses overlap.
    @inlinable @inline(__always)
    func touch(_ hash: UInt64) -> UInt8 {
        table.withUnsafeBufferPointer { table in
            let entry = table.baseAddress.unsafelyUnwrapped + home(hash)
            // An entry may span two cache lines: read from both ends.
            return entry.pointee.state ^ UInt8(truncatingIfNeeded: entry.pointee.localHigh)
        }
    }

    /// Stores a decision for `key` (absent from the cache), evicting one entry if full.
    mutating func insert(_ key: FiveTuple, hash: UInt64, decision: SPDCacheDecision, incarnation: UInt32) {
        if count >= capacity {
            // CLOCK: pass over referenced entries once, clearing their bit; evict the first
            // entry not referenced since the hand last came by.
            while table[hand].state != 1 {
                if table[hand].state == 2 { table[hand].state = 1 }
                hand = (hand + 1) & mask
            }
            remove(at: hand, counting: false)
            statistics.evictions += 1
        }
        var position = home(hash)
        while table[position].state != 0 { position = (position + 1) & mask }
        table[position] = Entry(key: key, decision: decision, incarnation: incarnation)
        count += 1
    }

    /// Marks the entry at `position` as used, for the CLOCK eviction.
    @inlinable
    mutating func markReferenced(_ position: Int) {
        if table[position].state == 1 { table[position].state = 2 }
    }

    /// Drops the entry at `position` (found stale, or evicted).
    @usableFromInline
    mutating func remove(at position: Int, counting: Bool = true) {
        // Backward-shift deletion: move up every later entry whose home lies at or before the
        // hole (cyclically), so no probe sequence is broken.
        var hole = position
        var next = (hole + 1) & mask
        while table[next].state != 0 {
            let home = home(table[next].hash(seed: seed))
            if backwardShiftFills(hole: hole, next: next, home: home) {
                table[hole] = table[next]
                hole = next
            }
            next = (next + 1) & mask
        }
        table[hole] = .empty
        count -= 1
        if counting { statistics.invalidations += 1 }
    }

    /// Drops every entry.
    mutating func removeAll() {
        statistics.invalidations += UInt64(count)
        if count > 0 {
            for index in table.indices where table[index].state != 0 { table[index] = .empty }
        }
        count = 0
        hand = 0
    }
}
