/// Optional values by slot number, stored in chunks of 16,384 slots that are each copied on
/// write: the storage of the state's Child SAs and IKE SAs.
///
/// A bulk resync reads a copy of the active member's state while the member goes on changing
/// it, copy-on-write. With the slots in one array, the member's first change after the copy
/// copied every slot, each reference in them retained: 364 ms for the two million Child SAs of
/// a million IKE SAs (37.6 ms at 100,000), longer than the default failure detection, and the
/// member did nothing else meanwhile. In chunks, a change copies the chunk it falls in (4.3
/// MB of Child SAs, about 2 ms) and the list of chunks; the other chunks stay shared until they
/// change too.
///
/// Slots are only appended and overwritten (an emptied slot holds nil), never removed; every
/// chunk but the last is full. A chunk's elements never move, so their addresses hold for the
/// chunk's life: ``withUnsafeSlots(_:)`` reads them in place.
@usableFromInline
struct SlotChunks<Wrapped>: RandomAccessCollection, MutableCollection {
    @usableFromInline typealias Element = Wrapped?
    @usableFromInline typealias Index = Int
    @usableFromInline typealias Indices = Range<Int>

    /// Slots per full chunk: 1 << 14 (4.3 MB of Child SAs, copied in about 2 ms). Chunks of
    /// 1,024 slots made the walks over every slot slower (the takeover plan by a tenth, the
    /// checkpoint scan by half, at 100,000 IKE SAs); of 16,384 they are as fast as one array.
    @usableFromInline static var chunkShift: Int { 14 }
    @usableFromInline static var chunkMask: Int { (1 &<< chunkShift) &- 1 }

    /// How many slots a chunk has initialised and has room for.
    @usableFromInline
    struct ChunkHeader {
        @usableFromInline var initialized: Int
        @usableFromInline var capacity: Int
    }

    /// One chunk: room for up to a full chunk's slots. The last chunk of a table grows as an
    /// array does (a state of a few SAs does not hold a full chunk); the others are full.
    @usableFromInline
    final class Chunk: ManagedBuffer<ChunkHeader, Wrapped?> {
        /// The first slot's address, fixed for the chunk's life.
        @inlinable var elements: UnsafeMutablePointer<Wrapped?> { withUnsafeMutablePointerToElements { $0 } }
        /// How many slots, from the first, hold a value or nil.
        @inlinable var initialized: Int {
            get { withUnsafeMutablePointerToHeader { $0.pointee.initialized } }
            set { withUnsafeMutablePointerToHeader { $0.pointee.initialized = newValue } }
        }
        /// How many slots it has room for.
        @inlinable var slotCapacity: Int { withUnsafeMutablePointerToHeader { $0.pointee.capacity } }

        /// An empty chunk with room for `capacity` slots.
        @usableFromInline
        static func make(capacity: Int) -> Chunk {
            let chunk = Chunk.create(minimumCapacity: capacity) { _ in ChunkHeader(initialized: 0, capacity: capacity) }
            return unsafeDowncast(chunk, to: Chunk.self)
        }

        /// A chunk of its own with the same slots (each value copied), with room for `capacity`.
        @usableFromInline
        func copy(capacity: Int) -> Chunk {
            let copy = Chunk.make(capacity: capacity)
            copy.elements.initialize(from: elements, count: initialized)
            copy.initialized = initialized
            return copy
        }

        /// A chunk with room for `capacity` slots that takes this one's slots over (moved, not
        /// copied); this one is left empty.
        @usableFromInline
        func moved(capacity: Int) -> Chunk {
            let moved = Chunk.make(capacity: capacity)
            moved.elements.moveInitialize(from: elements, count: initialized)
            moved.initialized = initialized
            initialized = 0
            return moved
        }

        deinit {
            _ = withUnsafeMutablePointers { header, elements in elements.deinitialize(count: header.pointee.initialized) }
        }
    }

    @usableFromInline var chunks: ContiguousArray<Chunk> = []
    /// The number of slots.
    @usableFromInline var slotCount = 0
    /// The slots ``reserveCapacity(_:)`` made room for: chunks up to there are made full at once.
    var reservedSlots = 0

    /// No slots.
    @inlinable init() {}

    @inlinable var startIndex: Int { 0 }
    @inlinable var endIndex: Int { slotCount }
    @inlinable var count: Int { slotCount }
    @inlinable var indices: Range<Int> { 0..<slotCount }

    /// The value in `slot`, which must exist.
    @inlinable
    subscript(slot: Int) -> Wrapped? {
        get { address(of: slot).pointee }
        _modify { yield &mutableAddress(of: slot).pointee }
    }

    /// The address of `slot`, which must exist, in a chunk this value owns alone (copied first
    /// if shared), to change the slot in place until the next change to these slots. The
    /// packet and checkpoint paths change a Child SA this way: the list of chunks and the chunk
    /// are checked for sharing once for all the fields a packet moves, where the subscript
    /// checks both for each.
    @inlinable @inline(__always)
    mutating func mutableAddress(of slot: Int) -> UnsafeMutablePointer<Wrapped?> {
        precondition(slot >= 0 && slot < slotCount, "slot \(slot) of \(slotCount)")
        let chunk = slot &>> Self.chunkShift
        if !isKnownUniquelyReferenced(&chunks[chunk]) { chunks[chunk] = chunks[chunk].copy(capacity: chunks[chunk].slotCapacity) }
        return chunks[chunk].elements + (slot & Self.chunkMask)
    }

    /// The address of `slot`, which must exist; to read only (the chunk may be shared).
    @inlinable @inline(__always)
    func address(of slot: Int) -> UnsafeMutablePointer<Wrapped?> {
        precondition(slot >= 0 && slot < slotCount, "slot \(slot) of \(slotCount)")
        return chunks[slot &>> Self.chunkShift].elements + (slot & Self.chunkMask)
    }

    /// Adds a slot after the last.
    @inlinable @inline(__always)
    mutating func append(_ value: consuming Wrapped?) {
        let offset = slotCount & Self.chunkMask
        if offset == 0 {
            chunks.append(Chunk.make(capacity: newChunkCapacity()))
        } else {
            let last = chunks.count &- 1
            let capacity = chunks[last].slotCapacity
            let grown = offset == capacity ? Swift.min(capacity &* 2, 1 &<< Self.chunkShift) : capacity
            if !isKnownUniquelyReferenced(&chunks[last]) {
                chunks[last] = chunks[last].copy(capacity: grown)
            } else if grown != capacity {
                chunks[last] = chunks[last].moved(capacity: grown)
            }
        }
        let chunk = chunks[chunks.count &- 1]
        (chunk.elements + offset).initialize(to: value)
        chunk.initialized = offset &+ 1
        slotCount &+= 1
    }

    /// Room for a chunk made at `slotCount`: full up to the reserved slots, else 16 to start
    /// with.
    @usableFromInline
    func newChunkCapacity() -> Int {
        Swift.min(Swift.max(16, reservedSlots &- slotCount), 1 &<< Self.chunkShift)
    }

    /// Makes room for `count` slots: chunks made for them are made full at once (a standby
    /// filled by a bulk resync reserves its tables), and the list of chunks holds them all.
    mutating func reserveCapacity(_ count: Int) {
        reservedSlots = Swift.max(reservedSlots, count)
        chunks.reserveCapacity((count &+ Self.chunkMask) &>> Self.chunkShift)
    }

    /// Whether `slot`, which must exist, holds a value, tested where it lies. Reading the
    /// value first (`slots[slot]`, then a property of it) copied the whole SA, 264 bytes; and
    /// `!= nil` on an `Equatable` wrapped type picks the `Equatable` operator, which copies both
    /// operands, with a retain per reference they hold.
    @inlinable
    func hasValue(at slot: Int) -> Bool {
        if case .some = address(of: slot).pointee { return true }
        return false
    }

    /// Calls `body` with the address of the value in `slot` and returns what it returns; nil,
    /// without calling it, when `slot` is out of range or empty. The pointer is valid only
    /// during the call.
    ///
    /// How a bulk resync reads each SA it encodes where the snapshot holds it: unwrapping the
    /// optional (`slots[slot]!`, or `case .some(let sa)`) copied it, every reference in it
    /// retained and released, and a value read from the address would be a copy too.
    @inlinable
    func withUnsafeWrapped<Result, Failure: Error>(
        at slot: Int, _ body: (UnsafePointer<Wrapped>) throws(Failure) -> Result
    ) throws(Failure) -> Result? {
        guard slot >= 0, slot < slotCount else { return nil }
        let address = address(of: slot)
        guard case .some = address.pointee else { return nil }
        return try withExtendedLifetime(chunks) { () throws(Failure) in
            try body(UnsafeRawPointer(address).assumingMemoryBound(to: Wrapped.self))
        }
    }

    /// `position(slot)` for every slot that holds a value, in order; `count` is how many do.
    /// Tested in place: a bulk resync lists every SA it will send this way (building each
    /// Child SA's counters for the list cost 290 instructions a Child SA).
    func positionsOfPresentValues<Position>(count: Int, _ position: (Int) -> Position) -> [Position] {
        var positions: [Position] = []
        positions.reserveCapacity(count)
        forEachValue { slot, _ in positions.append(position(slot)) }
        return positions
    }

    /// Calls `body` with each slot that holds a value and the value's address, in slot order,
    /// chunk by chunk: a walk over every SA without copying one or touching a reference count
    /// (binding each value would copy it and retain every reference it holds). The address is
    /// valid only during the call.
    @inlinable
    func forEachValue(_ body: (Int, UnsafePointer<Wrapped>) throws -> Void) rethrows {
        try withExtendedLifetime(chunks) {
            for chunk in chunks.indices {
                let elements = chunks[chunk].elements
                let base = chunk &<< Self.chunkShift
                for offset in 0..<chunks[chunk].initialized {
                    guard case .some = elements[offset] else { continue }
                    try body(base &+ offset, UnsafeRawPointer(elements + offset).assumingMemoryBound(to: Wrapped.self))
                }
            }
        }
    }

    /// Calls `body` with a view of every slot in place, to read slots in any order without
    /// copying a value or touching a reference count (``forEachValue(_:)`` walks them in order).
    /// The view is valid only during the call.
    @inlinable
    func withUnsafeSlots<Result>(_ body: (View) throws -> Result) rethrows -> Result {
        try withUnsafeTemporaryAllocation(of: UnsafeMutablePointer<Wrapped?>.self, capacity: chunks.count) { bases in
            for index in chunks.indices { bases.initializeElement(at: index, to: chunks[index].elements) }
            return try withExtendedLifetime(chunks) { try body(View(bases: UnsafeBufferPointer(bases), count: slotCount)) }
        }
    }

    /// Every slot, in place (``withUnsafeSlots(_:)``): a present value's fields are read
    /// through ``addressOfValue(at:)`` without a copy of the whole value.
    @usableFromInline
    struct View {
        @usableFromInline let bases: UnsafeBufferPointer<UnsafeMutablePointer<Wrapped?>>
        @usableFromInline let count: Int

        @inlinable init(bases: UnsafeBufferPointer<UnsafeMutablePointer<Wrapped?>>, count: Int) {
            self.bases = bases
            self.count = count
        }

        @inlinable var indices: Range<Int> { 0..<count }

        /// The address of `slot`, which must be below ``count`` (checked in debug builds only:
        /// the view serves the per-slot loops of the state, which stay below it).
        @inlinable
        func address(of slot: Int) -> UnsafeMutablePointer<Wrapped?> {
            assert(slot >= 0 && slot < count, "slot \(slot) of \(count)")
            return bases[slot &>> SlotChunks.chunkShift] + (slot & SlotChunks.chunkMask)
        }

        /// Whether `slot` holds a value.
        @inlinable
        func hasValue(at slot: Int) -> Bool {
            if case .some = address(of: slot).pointee { return true }
            return false
        }

        /// The address of the value in `slot`, which holds one (``hasValue(at:)``): the Swift
        /// ABI stores a single-payload enum's payload at offset 0 (the case is in spare bits or
        /// a tag byte after it), so a present optional is a `Wrapped` at its own address. Its
        /// fields read through it are not copies of the whole value.
        @inlinable
        func addressOfValue(at slot: Int) -> UnsafePointer<Wrapped> {
            UnsafeRawPointer(address(of: slot)).assumingMemoryBound(to: Wrapped.self)
        }
    }

    /// How many chunks this value still shares with `other`, a copy of it (a copy shares all
    /// of them until one of the two changes a slot in one).
    func chunksShared(with other: SlotChunks) -> Int {
        zip(chunks, other.chunks).reduce(0) { shared, pair in shared + (pair.0 === pair.1 ? 1 : 0) }
    }
}

// Each chunk is written only after `isKnownUniquelyReferenced` found this value its only owner,
// as `Array` does with its buffer.
extension SlotChunks: @unchecked Sendable where Wrapped: Sendable {}
