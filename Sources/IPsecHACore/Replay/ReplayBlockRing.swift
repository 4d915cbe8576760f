/// The words of a replay window's RFC 6479 ring, and the only code that reaches them through
/// pointers.
///
/// The ring is a power-of-two number of 64-bit blocks; bit `s % 64` of block `(s / 64) % M`
/// stands for sequence number `s`, whatever the window's position. Copy-on-write keeps the
/// owning ``ReplayWindow`` a value type: the storage is shared between copies until one of
/// them commits.
@usableFromInline
struct ReplayBlockRing: @unchecked Sendable {
    // @unchecked: the class is only written through `makeUnique()`-guarded mutating methods,
    // so a shared buffer is never written while another value can see it.
    @usableFromInline
    final class Storage {
        @usableFromInline let words: UnsafeMutablePointer<UInt64>
        @usableFromInline let count: Int

        @usableFromInline
        init(count: Int) {
            self.count = count
            words = .allocate(capacity: count)
            words.initialize(repeating: 0, count: count)
        }

        @usableFromInline
        init(copying other: Storage) {
            count = other.count
            words = .allocate(capacity: count)
            words.initialize(from: other.words, count: count)
        }

        deinit {
            words.deinitialize(count: count)
            words.deallocate()
        }
    }

    @usableFromInline var storage: Storage
    /// `M - 1`: the block index of a sequence number is `(s >> 6) & indexMask`.
    @usableFromInline let indexMask: UInt64

    /// A ring of `blockCount` zeroed blocks; `blockCount` must be a power of two.
    @usableFromInline
    init(blockCount: Int) {
        storage = Storage(count: blockCount)
        indexMask = UInt64(blockCount - 1)
    }

    @inlinable
    var blockCount: Int { storage.count }

    /// True when the bit of `sequenceNumber` is set.
    @inlinable
    func contains(_ sequenceNumber: UInt64) -> Bool {
        let word = storage.words[Int(truncatingIfNeeded: (sequenceNumber &>> 6) & indexMask)]
        return word & (1 &<< (sequenceNumber & 63)) != 0
    }

    /// Sets the bit of `sequenceNumber`; returns false, changing nothing, when it was set already.
    @inlinable
    mutating func insert(_ sequenceNumber: UInt64) -> Bool {
        makeUnique()
        let word = storage.words + Int(truncatingIfNeeded: (sequenceNumber &>> 6) & indexMask)
        let bit: UInt64 = 1 &<< (sequenceNumber & 63)
        if word.pointee & bit != 0 { return false }
        word.pointee |= bit
        return true
    }

    /// Zeroes the blocks that follow `fromBlock` (a block number, `s >> 6`), up to and including
    /// `toBlock`; at most the whole ring, however far apart they are.
    @inlinable
    mutating func clearBlocks(after fromBlock: UInt64, through toBlock: UInt64) {
        makeUnique()
        let distance = toBlock &- fromBlock
        let blocks = distance > indexMask ? indexMask &+ 1 : distance
        var block = fromBlock
        var cleared: UInt64 = 0
        while cleared < blocks {
            block &+= 1
            storage.words[Int(truncatingIfNeeded: block & indexMask)] = 0
            cleared &+= 1
        }
    }

    /// Marks every sequence number at or below `top` that the ring can hold as seen, and every
    /// number above it as unseen (the latter is what lets `top + 1` be accepted next).
    @usableFromInline
    mutating func markAllSeen(upTo top: UInt64) {
        makeUnique()
        storage.words.update(repeating: .max, count: storage.count)
        let topBit = top & 63
        let topWord: UInt64 = topBit == 63 ? .max : (1 &<< (topBit &+ 1)) &- 1
        storage.words[Int(truncatingIfNeeded: (top &>> 6) & indexMask)] = topWord
    }

    /// Number of set bits, for tests and invariant checks.
    @usableFromInline
    var populationCount: Int {
        var total = 0
        for index in 0..<storage.count { total += storage.words[index].nonzeroBitCount }
        return total
    }

    @inlinable
    mutating func makeUnique() {
        if !isKnownUniquelyReferenced(&storage) {
            storage = Storage(copying: storage)
        }
    }
}
