/// An open-addressing hash index from a 32-bit SPI to a slot number: the per-packet SAD lookup.
///
/// Linear probing over a power-of-two table kept at most half full, with Fibonacci hashing of
/// the SPI. Each bucket packs the SPI (high 32 bits) and the slot (low 32 bits) into one word,
/// so a lookup touches one cache line; SPI 0 (reserved by RFC 4303) marks an empty bucket.
/// Removal shifts later entries back instead of leaving tombstones, so lookups never slow down
/// with churn. Inbound SPIs are chosen by this gateway, so an attacker cannot pick colliding keys.
@usableFromInline
struct SPIIndex: Sendable {
    @usableFromInline var buckets: [UInt64]
    @usableFromInline var shift: UInt32
    @usableFromInline var count: Int = 0
    /// What ``GatewayState/touchSPIIndex(for:)`` last loaded, folded: stored so that the loads
    /// are not optimised away. Means nothing.
    var touched: UInt64 = 0

    init(minimumCapacity: Int = 16) {
        var size = 16
        while size < minimumCapacity * 2 { size <<= 1 }
        buckets = Array(repeating: 0, count: size)
        shift = UInt32(32 - size.trailingZeroBitCount)
    }

    @inlinable @inline(__always)
    func home(_ spi: UInt32) -> Int {
        Int(truncatingIfNeeded: (spi &* 0x9E37_79B1) &>> shift)
    }

    /// The slot of `spi`, or nil.
    @inlinable
    func slot(of spi: UInt32) -> Int32? {
        buckets.withUnsafeBufferPointer { buckets in
            let mask = buckets.count &- 1
            var index = home(spi)
            while true {
                let bucket = buckets[index]
                let key = UInt32(truncatingIfNeeded: bucket &>> 32)
                // Empty first: an empty bucket's key reads as SPI 0, which is never stored (RFC
                // 4303 reserves it), so a lookup of 0 found slot 0 (another Child SA, or past the
                // end of an empty table: a crash on a packet or a name the peer chose).
                if key == 0 { return nil }
                if key == spi { return Int32(truncatingIfNeeded: bucket) }
                index = (index &+ 1) & mask
            }
        }
    }

    /// Grows the table now so that `capacity` SPIs fit without growing again.
    mutating func reserveCapacity(_ capacity: Int) {
        guard capacity * 2 > buckets.count else { return }
        rehash(minimumCapacity: capacity)
    }

    /// Adds `spi` at `slot`; the caller has checked that `spi` is absent and not 0.
    mutating func insert(_ spi: UInt32, slot: Int32) {
        if (count + 1) * 2 > buckets.count { grow() }
        let mask = buckets.count - 1
        var index = home(spi)
        while buckets[index] != 0 { index = (index + 1) & mask }
        buckets[index] = UInt64(spi) << 32 | UInt64(UInt32(bitPattern: slot))
        count += 1
    }

    /// Removes `spi` if present.
    mutating func remove(_ spi: UInt32) {
        let mask = buckets.count - 1
        var index = home(spi)
        while UInt32(truncatingIfNeeded: buckets[index] >> 32) != spi {
            if buckets[index] == 0 { return }
            index = (index + 1) & mask
        }
        // Backward-shift deletion: move up every later entry whose home bucket lies at or
        // before the hole (cyclically), so no probe sequence is broken.
        var hole = index
        var next = (hole + 1) & mask
        while buckets[next] != 0 {
            let home = home(UInt32(truncatingIfNeeded: buckets[next] >> 32))
            if backwardShiftFills(hole: hole, next: next, home: home) {
                buckets[hole] = buckets[next]
                hole = next
            }
            next = (next + 1) & mask
        }
        buckets[hole] = 0
        count -= 1
    }

    private mutating func grow() { rehash(minimumCapacity: buckets.count) }

    private mutating func rehash(minimumCapacity: Int) {
        let old = buckets
        self = SPIIndex(minimumCapacity: minimumCapacity)
        for bucket in old where bucket != 0 {
            insert(UInt32(truncatingIfNeeded: bucket >> 32), slot: Int32(truncatingIfNeeded: bucket))
        }
    }
}
