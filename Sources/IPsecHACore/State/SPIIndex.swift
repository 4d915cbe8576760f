/// An open-addressing hash index from a 32-bit SPI to a slot number: the per-packet SAD lookup.
///
/// Linear probing over a power-of-two table kept at most half full, with Fibonacci hashing of
/// the SPI; SPI 0 (reserved by RFC 4303) marks an empty bucket. Removal shifts later entries
/// back instead of leaving tombstones, so lookups never slow down with churn. Inbound SPIs are
/// chosen by this gateway, so an attacker cannot pick keys that collide.
@usableFromInline
struct SPIIndex: Sendable {
    @usableFromInline var keys: [UInt32]
    @usableFromInline var slots: [Int32]
    @usableFromInline var shift: UInt32
    @usableFromInline var count: Int = 0

    init(minimumCapacity: Int = 16) {
        var buckets = 16
        while buckets < minimumCapacity * 2 { buckets <<= 1 }
        keys = Array(repeating: 0, count: buckets)
        slots = Array(repeating: -1, count: buckets)
        shift = UInt32(32 - buckets.trailingZeroBitCount)
    }

    @inlinable @inline(__always)
    func bucket(_ spi: UInt32) -> Int {
        Int(truncatingIfNeeded: (spi &* 0x9E37_79B1) &>> shift)
    }

    /// The slot of `spi`, or nil.
    @inlinable
    func slot(of spi: UInt32) -> Int32? {
        let mask = keys.count &- 1
        return keys.withUnsafeBufferPointer { keys in
            var index = bucket(spi)
            while true {
                let key = keys[index]
                if key == spi { return slots[index] }
                if key == 0 { return nil }
                index = (index &+ 1) & mask
            }
        }
    }

    /// Adds `spi` at `slot`; the caller has checked that `spi` is absent and not 0.
    mutating func insert(_ spi: UInt32, slot: Int32) {
        if (count + 1) * 2 > keys.count { grow() }
        let mask = keys.count - 1
        var index = bucket(spi)
        while keys[index] != 0 { index = (index + 1) & mask }
        keys[index] = spi
        slots[index] = slot
        count += 1
    }

    /// Removes `spi` if present.
    mutating func remove(_ spi: UInt32) {
        let mask = keys.count - 1
        var index = bucket(spi)
        while keys[index] != spi {
            if keys[index] == 0 { return }
            index = (index + 1) & mask
        }
        // Backward-shift deletion: move up every later entry whose home bucket lies at or
        // before the hole (cyclically), so no probe sequence is broken.
        var hole = index
        var next = (hole + 1) & mask
        while keys[next] != 0 {
            let home = bucket(keys[next])
            if (next > hole && (home <= hole || home > next)) || (next < hole && home <= hole && home > next) {
                keys[hole] = keys[next]
                slots[hole] = slots[next]
                hole = next
            }
            next = (next + 1) & mask
        }
        keys[hole] = 0
        slots[hole] = -1
        count -= 1
    }

    private mutating func grow() {
        let oldKeys = keys
        let oldSlots = slots
        self = SPIIndex(minimumCapacity: oldKeys.count)
        for (key, slot) in zip(oldKeys, oldSlots) where key != 0 { insert(key, slot: slot) }
    }
}
