/// Secret key bytes: never printed, zeroed when the last copy is released, compared in constant
/// time.
///
/// `description`, `debugDescription` and the mirror show the length only, so a key cannot leak
/// through logging, `print`, string interpolation or `dump`. The bytes are immutable; copies of
/// a value share them, and the storage is overwritten with zeros before it is freed. Reach the
/// bytes only through ``withUnsafeBytes(_:)``.
public struct KeyMaterial: @unchecked Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable
{
    // @unchecked Sendable (on KeyMaterial): the bytes are written only while the value is
    // built and in `deinit`. They sit right after the object header (one allocation per key),
    // or, for a key made by ``guarded(count:allocator:initializingWith:)``, in memory from that
    // allocator, which the header points to.
    struct Header {
        var count: Int
        var guarded: UnsafeMutableRawPointer?
        var release: GuardedAllocator.Release?
    }

    final class Storage: ManagedBuffer<Header, UInt8> {
        static func make(count: Int) -> Storage {
            let buffer = Storage.create(minimumCapacity: Swift.max(count, 1)) { _ in Header(count: count) }
            let storage = unsafeDowncast(buffer, to: Storage.self)
            storage.withUnsafeMutablePointerToElements { $0.initialize(repeating: 0, count: Swift.max(count, 1)) }
            return storage
        }

        static func make(count: Int, in allocator: GuardedAllocator) -> Storage? {
            guard let memory = allocator.allocate(Swift.max(count, 1)) else { return nil }
            memory.initializeMemory(as: UInt8.self, repeating: 0, count: Swift.max(count, 1))
            let buffer = Storage.create(minimumCapacity: 0) { _ in
                Header(count: count, guarded: memory, release: allocator.release)
            }
            return unsafeDowncast(buffer, to: Storage.self)
        }

        var bytes: UnsafeMutableRawBufferPointer {
            withUnsafeMutablePointers { header, elements in
                UnsafeMutableRawBufferPointer(start: header.pointee.guarded ?? UnsafeMutableRawPointer(elements), count: header.pointee.count)
            }
        }

        deinit {
            withUnsafeMutablePointers { header, elements in
                if let guarded = header.pointee.guarded, let release = header.pointee.release {
                    release(guarded)
                    return
                }
                UnsafeMutableRawBufferPointer(start: elements, count: header.pointee.count).initializeMemory(as: UInt8.self, repeating: 0)
                keepZeroingStores(UnsafeMutableRawPointer(elements))
            }
        }
    }

    private let storage: Storage
    // A value may be a view of part of a storage (``sharingSlice(_:)``, ``IKEKeys``): several
    // keys in one allocation, zeroed when the last of them is released.
    private let offset: UInt32
    private let length: UInt32
    /// The number of key bytes.
    public var count: Int { Int(length) }

    /// Key material holding a copy of `bytes`.
    /// Straight from contiguous bytes (arrays, slices, buffers), so that no intermediate copy of
    /// a secret is left behind; other sequences go through an array first.
    public init(copying bytes: some Sequence<UInt8>) {
        if let made = bytes.withContiguousStorageIfAvailable({ buffer in
            KeyMaterial(count: buffer.count) { $0.copyMemory(from: UnsafeRawBufferPointer(buffer)) }
        }) {
            self = made
        } else {
            let array = Array(bytes)
            self.init(count: array.count) { destination in array.withUnsafeBytes { destination.copyMemory(from: $0) } }
        }
    }

    private init(viewOf storage: Storage, offset: Int, count: Int) {
        self.storage = storage
        self.offset = UInt32(offset)
        self.length = UInt32(count)
    }

    /// The bytes of this value within its storage.
    @usableFromInline var bytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: storage.bytes[Int(offset)..<Int(offset) + Int(length)])
    }

    /// Key material of `count` bytes written by `body`, so that secrets need not pass through an
    /// intermediate array (for instance a key derived straight into place).
    public init<Failure: Error>(
        count: Int,
        initializingWith body: (UnsafeMutableRawBufferPointer) throws(Failure) -> Void
    ) throws(Failure) {
        precondition(count >= 0 && count <= Int(UInt32.max), "key material of \(count) bytes")
        storage = Storage.make(count: count)
        offset = 0
        length = UInt32(count)
        try body(UnsafeMutableRawBufferPointer(rebasing: storage.bytes[0..<count]))
    }

    /// Key material of `count` bytes written by `body`, in memory from `allocator` instead of
    /// the ordinary heap: for the few long-lived keys worth guard pages and memory locked in
    /// RAM (IPsecHASync keeps the cluster key and the synch channel's direction keys so, in
    /// libsodium's `sodium_malloc` memory). Throws ``GuardedAllocationError`` when the allocator
    /// returns no memory (for instance over the `RLIMIT_MEMLOCK` limit).
    public static func guarded(
        count: Int, allocator: GuardedAllocator,
        initializingWith body: (UnsafeMutableRawBufferPointer) -> Void
    ) throws(GuardedAllocationError) -> KeyMaterial {
        guard count >= 0, count <= Int(UInt32.max), let storage = Storage.make(count: count, in: allocator) else {
            throw GuardedAllocationError(count: count)
        }
        let key = KeyMaterial(viewOf: storage, offset: 0, count: count)
        body(key.bytes)
        return key
    }

    /// One allocation holding the bytes of `parts`, one after the other.
    static func concatenating(_ parts: [KeyMaterial]) -> KeyMaterial {
        KeyMaterial(count: parts.reduce(0) { $0 + $1.count }) { destination in
            var position = 0
            for part in parts {
                part.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: destination[position..<position + $0.count]).copyMemory(from: $0) }
                position += part.count
            }
        }
    }

    /// `count` bytes from `generator` (use a cryptographically secure one for real keys).
    public init(randomCount count: Int, using generator: inout some RandomNumberGenerator) {
        self.init(count: count) { bytes in
            // Eight bytes a draw: a generic `UInt8.random(in:using:)` per byte looked its
            // metadata up each time, and made a simulation's set-up slower than its run.
            var index = 0
            while index < count {
                var word = generator.next()
                for _ in 0..<min(8, count - index) {
                    bytes[index] = UInt8(truncatingIfNeeded: word)
                    word >>= 8
                    index += 1
                }
            }
        }
    }

    /// Calls `body` with the key bytes; do not let them escape.
    /// Inlinable, so that callers in other modules (sealing with a direction key, encoding SA
    /// keys) specialise it instead of calling a generic through its witnesses.
    @inlinable public func withUnsafeBytes<Result, Failure: Error>(
        _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try body(UnsafeRawBufferPointer(bytes))
    }

    /// The `count` bytes from `offset` on, as a view; the caller has checked the range.
    func view(_ offset: Int, _ count: Int) -> KeyMaterial {
        KeyMaterial(viewOf: storage, offset: Int(self.offset) + offset, count: count)
    }

    /// A slice of this key material as key material of its own (for instance SK_ei out of the
    /// whole KEYMAT): a copy, so that the rest can be released and zeroed without waiting for
    /// it. Out-of-range slices are clamped to the bytes there are.
    public func extracting(_ range: Range<Int>) -> KeyMaterial {
        let (lower, upper) = clamped(range)
        return KeyMaterial(count: upper - lower) { destination in
            destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[lower..<upper]))
        }
    }

    /// A slice of this key material that shares its storage: no copy, but the whole storage
    /// stays allocated, and is zeroed, only once every value sharing it is released. For keys
    /// that live and die together (both directions of a Child SA, the seven keys of an IKE SA).
    /// Out-of-range slices are clamped to the bytes there are.
    public func sharingSlice(_ range: Range<Int>) -> KeyMaterial {
        let (lower, upper) = clamped(range)
        return view(lower, upper - lower)
    }

    private func clamped(_ range: Range<Int>) -> (Int, Int) {
        let lower = Swift.min(Swift.max(range.lowerBound, 0), count)
        return (lower, Swift.min(Swift.max(range.upperBound, lower), count))
    }

    /// Equal length and equal bytes, compared in time that depends on the length only.
    public static func == (lhs: KeyMaterial, rhs: KeyMaterial) -> Bool {
        guard lhs.count == rhs.count else { return false }
        let left = lhs.bytes
        let right = rhs.bytes
        var difference: UInt8 = 0
        for index in 0..<lhs.count { difference |= left[index] ^ right[index] }
        return difference == 0
    }

    public var description: String { "KeyMaterial(\(count) bytes, redacted)" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["count": count], displayStyle: .struct) }
}

/// An allocator of memory for secrets, handed to ``KeyMaterial/guarded(count:allocator:initializingWith:)``:
/// two C functions, so that IPsecHACore stays free of dependencies while another module
/// brings libsodium's `sodium_malloc` and `sodium_free` (guard pages around the bytes, locked
/// in RAM where the limits allow, wiped on release).
public struct GuardedAllocator: Sendable {
    /// Returns `count` bytes of memory, or nil.
    public typealias Allocate = @convention(c) (Int) -> UnsafeMutableRawPointer?
    /// Wipes and frees memory that `Allocate` returned.
    public typealias Release = @convention(c) (UnsafeMutableRawPointer?) -> Void

    let allocate: Allocate
    let release: Release

    /// An allocator from its two functions; `release` must wipe the memory before it frees it.
    public init(allocate: Allocate, release: Release) {
        self.allocate = allocate
        self.release = release
    }
}

/// A ``GuardedAllocator`` returned no memory for a key of `count` bytes.
public struct GuardedAllocationError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The number of key bytes asked for.
    public var count: Int
    /// The error for a key of `count` bytes.
    public init(count: Int) { self.count = count }
    public var description: String { "no guarded memory for a key of \(count) bytes" }
}

/// An opaque use of the zeroed bytes, so that the optimiser cannot drop the zeroing stores as
/// dead before the memory is freed.
@inline(never)
@_optimize(none)
func keepZeroingStores(_ pointer: UnsafeMutableRawPointer) {
    _ = pointer.load(as: UInt8.self)
}
