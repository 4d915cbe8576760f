/// The words of a replay window's RFC 6479 ring, and the only code that reaches them through
/// pointers.
///
/// The ring is a power-of-two number of 64-bit blocks; bit `s % 64` of block `(s / 64) % M`
/// stands for sequence number `s`, whatever the window's position. Copy-on-write keeps the
/// owning ``ReplayWindow`` a value type: the storage is shared between copies until one of
/// them is about to write, and ``makeUnique()`` runs before every write.
@usableFromInline
struct ReplayBlockRing: @unchecked Sendable {
    // @unchecked: words are written only through `ReplayRingWords` obtained after
    // `makeUnique()`, so a buffer is never written while another value can see it.
    /// The ring's words sit right after the object header (one allocation per window); the
    /// header holds their count. Both are reached through pointers, never through the
    /// `header` property, which would cost a dynamic exclusivity check per access.
    @usableFromInline
    final class Storage: ManagedBuffer<Int, UInt64> {
        @inlinable var count: Int { withUnsafeMutablePointerToHeader { $0.pointee } }
        /// The words' address, fixed for the object's life.
        @inlinable var words: UnsafeMutablePointer<UInt64> { withUnsafeMutablePointerToElements { $0 } }

        /// A buffer of `count` words, all zero, or copied from `source`.
        @usableFromInline
        static func make(count: Int, copying source: UnsafePointer<UInt64>? = nil) -> Storage {
            let storage = unsafeDowncast(Storage.create(minimumCapacity: count) { _ in count }, to: Storage.self)
            if let source {
                storage.words.initialize(from: source, count: count)
            } else {
                storage.words.initialize(repeating: 0, count: count)
            }
            return storage
        }

        deinit {
            _ = withUnsafeMutablePointers { count, words in words.deinitialize(count: count.pointee) }
        }
    }

    @usableFromInline var storage: Storage

    /// A ring of `blockCount` zeroed blocks; `blockCount` must be a power of two.
    @usableFromInline
    init(blockCount: Int) {
        storage = Storage.make(count: blockCount)
    }

    /// A ring of `blockCount` zeroed blocks that shares one storage with every other such ring
    /// (up to 128 blocks, an 8,128-packet window; larger ones get their own): what a standby's
    /// passive windows hold, so that a bulk resync of a million Child SAs allocates no ring.
    /// Copy-on-write keeps it correct: the first write through ``makeUnique()`` copies it.
    init(sharingZeroBlocks blockCount: Int) {
        let index = blockCount.trailingZeroBitCount
        storage = index < Self.sharedZeroRings.count ? Self.sharedZeroRings[index] : Storage.make(count: blockCount)
    }

    // nonisolated(unsafe): these buffers are never written. Every write goes through
    // `makeUnique()`, which finds them referenced from here, never unique, and copies.
    nonisolated(unsafe) private static let sharedZeroRings: [Storage] = (0...7).map { Storage.make(count: 1 << $0) }

    /// The words, to read; or to write, once ``makeUnique()`` has run and while this ring
    /// stays alive and unshared.
    @inlinable
    var words: ReplayRingWords {
        ReplayRingWords(base: storage.words, indexMask: UInt64(storage.count &- 1))
    }

    /// Gives this value its own copy of the words if another value shares them.
    @inlinable
    mutating func makeUnique() {
        if !isKnownUniquelyReferenced(&storage) {
            storage = Storage.make(count: storage.count, copying: storage.words)
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
        words.base[Int(truncatingIfNeeded: (top &>> 6) & words.indexMask)] = topWord
    }

    /// Clears every bit (after making the storage unique).
    @usableFromInline
    mutating func clearAll() {
        makeUnique()
        storage.words.update(repeating: 0, count: storage.count)
    }

    /// Number of set bits, for tests and diagnostics.
    @usableFromInline
    var populationCount: Int {
        (0..<storage.count).reduce(0) { $0 + storage.words[$1].nonzeroBitCount }
    }
}

/// A plain view of a ring's words: a pointer and the block-index mask. Trivially copyable, so
/// that the per-packet paths touch no reference count.
@usableFromInline
struct ReplayRingWords {
    @usableFromInline let base: UnsafeMutablePointer<UInt64>
    /// `M - 1`: the block index of a sequence number is `(s >> 6) & indexMask`.
    @usableFromInline let indexMask: UInt64

    @inlinable
    init(base: UnsafeMutablePointer<UInt64>, indexMask: UInt64) {
        self.base = base
        self.indexMask = indexMask
    }

    /// True when the bit of `sequenceNumber` is set.
    @inlinable @inline(__always)
    func contains(_ sequenceNumber: UInt64) -> Bool {
        let word = base[Int(truncatingIfNeeded: (sequenceNumber &>> 6) & indexMask)]
        return word & (1 &<< (sequenceNumber & 63)) != 0
    }

    /// Sets the bit of `sequenceNumber`; returns false, changing nothing, when it was set already.
    @inlinable @inline(__always)
    func insert(_ sequenceNumber: UInt64) -> Bool {
        let word = base + Int(truncatingIfNeeded: (sequenceNumber &>> 6) & indexMask)
        let bit: UInt64 = 1 &<< (sequenceNumber & 63)
        if word.pointee & bit != 0 { return false }
        word.pointee |= bit
        return true
    }

    /// Sets the bit of `sequenceNumber`, known to be clear (a number above the old top, whose
    /// block was just cleared or held only numbers below it).
    @inlinable @inline(__always)
    func insertAboveTop(_ sequenceNumber: UInt64) {
        base[Int(truncatingIfNeeded: (sequenceNumber &>> 6) & indexMask)] |= 1 &<< (sequenceNumber & 63)
    }

    /// Zeroes the blocks that follow block number `fromBlock` (`s >> 6`) up to and including
    /// `toBlock`; at most the whole ring, however far apart they are.
    @inlinable @inline(__always)
    func clearBlocks(after fromBlock: UInt64, through toBlock: UInt64) {
        let distance = toBlock &- fromBlock
        let blocks = distance > indexMask ? indexMask &+ 1 : distance
        var block = fromBlock
        var cleared: UInt64 = 0
        while cleared < blocks {
            block &+= 1
            base[Int(truncatingIfNeeded: block & indexMask)] = 0
            cleared &+= 1
        }
    }
}
