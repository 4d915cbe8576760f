/// Names the place of a Child SA in a ``GatewayState``; valid until that Child SA is deleted.
public struct ChildSASlot: Sendable, Hashable {
    @usableFromInline let index: Int32
    @inlinable init(index: Int32) { self.index = index }
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
/// always the one an ordered SPD walk would give. Each entry records the SPD version and, for
/// PROTECT, the incarnation of its Child SA's slot; an entry whose SPD changed or whose SA was
/// deleted, rekeyed or updated is dropped when next looked up. The cache holds at most
/// `capacity` entries and evicts with the CLOCK algorithm (second chance) when full.
@usableFromInline
struct SPDCache: Sendable {
    @usableFromInline
    struct Entry: Sendable {
        @usableFromInline var key: FiveTuple
        @usableFromInline var hash: UInt64
        @usableFromInline var decision: SPDCacheDecision
        @usableFromInline var spdVersion: UInt64
        @usableFromInline var incarnation: UInt32
        @usableFromInline var referenced: Bool
    }

    let capacity: Int
    @usableFromInline var entries: [Entry] = []
    /// Open-addressing index of entry numbers (-1 empty), at least twice the capacity.
    @usableFromInline var buckets: [Int32]
    @usableFromInline let bucketMask: Int
    var hand = 0
    @usableFromInline var statistics = SPDCacheStatistics()

    init(capacity: Int) {
        self.capacity = max(capacity, 1)
        var count = 16
        while count < self.capacity * 2 { count <<= 1 }
        buckets = Array(repeating: -1, count: count)
        bucketMask = count - 1
        entries.reserveCapacity(self.capacity)
    }

    /// The entry number holding `key`, or nil.
    @inlinable
    func find(_ key: FiveTuple, hash: UInt64) -> Int? {
        buckets.withUnsafeBufferPointer { buckets in
            entries.withUnsafeBufferPointer { entries in
                var bucket = Int(truncatingIfNeeded: hash) & bucketMask
                while true {
                    let entry = Int(buckets[bucket])
                    if entry < 0 { return nil }
                    if entries[entry].hash == hash && entries[entry].key == key { return entry }
                    bucket = (bucket &+ 1) & bucketMask
                }
            }
        }
    }

    /// Stores a decision for `key` (absent from the cache), evicting one entry if full.
    mutating func insert(_ key: FiveTuple, hash: UInt64, decision: SPDCacheDecision, spdVersion: UInt64, incarnation: UInt32) {
        let entry = Entry(key: key, hash: hash, decision: decision, spdVersion: spdVersion, incarnation: incarnation, referenced: false)
        let number: Int
        if entries.count < capacity {
            entries.append(entry)
            number = entries.count - 1
        } else {
            // CLOCK: pass over referenced entries once, clearing their bit.
            while entries[hand].referenced {
                entries[hand].referenced = false
                hand = (hand + 1) % entries.count
            }
            number = hand
            hand = (hand + 1) % entries.count
            unlink(number)
            entries[number] = entry
            statistics.evictions += 1
        }
        var bucket = Int(truncatingIfNeeded: hash) & bucketMask
        while buckets[bucket] >= 0 { bucket = (bucket + 1) & bucketMask }
        buckets[bucket] = Int32(number)
    }

    /// Drops entry `number` (found stale), moving the last entry into its place.
    mutating func remove(_ number: Int) {
        unlink(number)
        let last = entries.count - 1
        if number != last {
            unlink(last)
            entries[number] = entries[last]
            var bucket = Int(truncatingIfNeeded: entries[number].hash) & bucketMask
            while buckets[bucket] >= 0 { bucket = (bucket + 1) & bucketMask }
            buckets[bucket] = Int32(number)
        }
        entries.removeLast()
        if hand >= entries.count { hand = 0 }
        statistics.invalidations += 1
    }

    /// Drops every entry (cheaper than letting a changed SPD invalidate them one by one).
    mutating func removeAll() {
        statistics.invalidations += UInt64(entries.count)
        entries.removeAll(keepingCapacity: true)
        for index in buckets.indices { buckets[index] = -1 }
        hand = 0
    }

    /// Takes entry `number` out of the index (backward-shift deletion, no tombstones).
    private mutating func unlink(_ number: Int) {
        var hole = Int(truncatingIfNeeded: entries[number].hash) & bucketMask
        while buckets[hole] != Int32(number) { hole = (hole + 1) & bucketMask }
        var next = (hole + 1) & bucketMask
        while buckets[next] >= 0 {
            let home = Int(truncatingIfNeeded: entries[Int(buckets[next])].hash) & bucketMask
            if (next > hole && (home <= hole || home > next)) || (next < hole && home <= hole && home > next) {
                buckets[hole] = buckets[next]
                hole = next
            }
            next = (next + 1) & bucketMask
        }
        buckets[hole] = -1
    }
}
