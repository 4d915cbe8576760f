/// The IKE SAs of a ``GatewayState`` by SPI pair: read it like a dictionary from
/// ``IKESAIdentifier`` to ``IKESA`` (``subscript(_:)``, ``keys``, ``values``, ``count``).
///
/// The IKE SAs sit in slots, found through a dictionary of small values, rather than in a
/// dictionary of IKE SAs: a dictionary keeps at most three quarters of its buckets full and,
/// for 100,000 IKE SAs, had 262,144 buckets of 216 bytes (56 MB, touched at random, page by
/// page, by a standby filled by a bulk resync), where the slots take 22 MB and the dictionary
/// 5 MB. The slots are kept in chunks that a copy of the table shares until it changes one.
/// Iteration follows the slots: the same history of changes gives the same order, whatever
/// the process's hash seed. Equality compares contents, not slots.
public struct IKESATable: Sendable, Equatable {
    /// The slot of each IKE SA.
    var positions: [IKESAIdentifier: Int32] = [:]
    /// The IKE SAs; nil where one was removed (the slot is reused by the next insertion).
    @usableFromInline var slots = SlotChunks<IKESA>()
    var freeSlots: [Int32] = []

    /// An empty table.
    public init() {}

    /// How many IKE SAs the table holds.
    public var count: Int { positions.count }
    /// Whether the table holds no IKE SA.
    public var isEmpty: Bool { positions.isEmpty }

    /// The IKE SA with this identifier, if any.
    public subscript(identifier: IKESAIdentifier) -> IKESA? {
        guard let slot = positions[identifier] else { return nil }
        return slots[Int(slot)]
    }

    /// Whether the table holds an IKE SA with this identifier.
    public func contains(_ identifier: IKESAIdentifier) -> Bool { positions[identifier] != nil }

    /// The identifiers, in no particular order.
    public var keys: some Collection<IKESAIdentifier> & Sendable { positions.keys }

    /// The slots that hold an IKE SA (positions of ``values``), in order: what a bulk resync
    /// sends.
    package var occupiedSlots: [Int] { slots.positionsOfPresentValues(count: count) { $0 } }

    /// Calls `body` with the address of the IKE SA in `slot` (a position of ``values``) and
    /// returns what it returns (nil, without calling it, if the slot is empty): how a bulk
    /// resync reads every IKE SA it encodes, without a copy. Valid only during the call.
    @inlinable
    package func withUnsafeIKESA<Result, Failure: Error>(
        inSlot slot: Int, _ body: (UnsafePointer<IKESA>) throws(Failure) -> Result
    ) throws(Failure) -> Result? {
        try slots.withUnsafeWrapped(at: slot, body)
    }

    /// The IKE SAs, in slot order.
    public var values: Values { Values(slots: slots) }

    /// The IKE SAs of a table, in slot order (``IKESATable/values``).
    public struct Values: Collection, Sendable {
        let slots: SlotChunks<IKESA>

        /// The position of the first IKE SA (the slot number).
        public var startIndex: Int { nextOccupied(from: 0) }
        /// Past the last slot.
        public var endIndex: Int { slots.count }
        /// The IKE SA at `position`, a slot number this collection gave out.
        public subscript(position: Int) -> IKESA { slots[position]! }
        /// The next slot after `position` that holds an IKE SA.
        public func index(after position: Int) -> Int { nextOccupied(from: position + 1) }

        private func nextOccupied(from start: Int) -> Int {
            var position = start
            while position < slots.count, !slots.hasValue(at: position) { position += 1 }
            return position
        }
    }

    public static func == (lhs: IKESATable, rhs: IKESATable) -> Bool {
        guard lhs.count == rhs.count else { return false }
        return lhs.positions.allSatisfy { identifier, slot in
            guard let other = rhs.positions[identifier] else { return false }
            return lhs.slots[Int(slot)] == rhs.slots[Int(other)]
        }
    }

    // MARK: For the gateway state

    mutating func reserveCapacity(_ count: Int) {
        positions.reserveCapacity(count)
        slots.reserveCapacity(count)
    }

    /// The slot of the IKE SA with this identifier.
    func slot(of identifier: IKESAIdentifier) -> Int? { positions[identifier].map(Int.init) }

    /// ``slot(of:)``, trying `hint` and the slot after it first: found there, the identifier
    /// is not hashed (hashing it was 270 instructions of each Child SA a standby installs).
    func slot(of identifier: IKESAIdentifier, near hint: Int) -> Int? {
        for candidate in hint...hint &+ 1 where slots.withUnsafeWrapped(at: candidate, { $0.pointee.identifier == identifier }) == true {
            return candidate
        }
        return slot(of: identifier)
    }

    /// Stores `sa`, whose identifier the table must not hold yet; returns its slot.
    @discardableResult
    mutating func insert(_ sa: consuming IKESA) -> Int {
        let slot = slot(insertingIfAbsent: sa.identifier).slot
        slots[slot] = consume sa
        return slot
    }

    /// The slot of the IKE SA with this identifier, and false; or, when the table does not
    /// hold it, a free slot now named by it, and true: the caller stores the IKE SA there at
    /// once. One hash either way, where a look-up and then an insertion took two (a standby
    /// installs every IKE SA of a resync this way).
    mutating func slot(insertingIfAbsent identifier: IKESAIdentifier) -> (slot: Int, inserted: Bool) {
        func read(_ slot: inout Int32) -> Int32 { slot }
        let held = positions.count
        let slot = Int(read(&positions[identifier, default: freeSlots.last ?? Int32(slots.count)]))
        guard positions.count != held else { return (slot, false) }
        if slot == slots.count { slots.append(nil) } else { freeSlots.removeLast() }
        return (slot, true)
    }

    /// Removes the IKE SA with this identifier, if there is one.
    mutating func remove(_ identifier: IKESAIdentifier) {
        guard let slot = positions.removeValue(forKey: identifier) else { return }
        slots[Int(slot)] = nil
        freeSlots.append(slot)
    }
}
