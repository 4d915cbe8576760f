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
    // built and in `deinit`. They sit right after the object header: one allocation per key.
    final class Storage: ManagedBuffer<Int, UInt8> {
        static func make(count: Int) -> Storage {
            let buffer = Storage.create(minimumCapacity: Swift.max(count, 1)) { _ in count }
            let storage = unsafeDowncast(buffer, to: Storage.self)
            storage.withUnsafeMutablePointerToElements { $0.initialize(repeating: 0, count: Swift.max(count, 1)) }
            return storage
        }

        var bytes: UnsafeMutableRawBufferPointer {
            withUnsafeMutablePointerToElements { UnsafeMutableRawBufferPointer(start: $0, count: header) }
        }

        deinit {
            withUnsafeMutablePointers { count, elements in
                UnsafeMutableRawBufferPointer(start: elements, count: count.pointee).initializeMemory(as: UInt8.self, repeating: 0)
                keepZeroingStores(UnsafeMutableRawPointer(elements))
            }
        }
    }

    private let storage: Storage
    /// The number of key bytes.
    public let count: Int

    /// Key material holding a copy of `bytes`.
    public init(copying bytes: some Sequence<UInt8>) {
        let array = Array(bytes)
        storage = Storage.make(count: array.count)
        count = array.count
        array.withUnsafeBytes { storage.bytes.copyMemory(from: $0) }
    }

    /// Key material of `count` bytes written by `body`, so that secrets need not pass through an
    /// intermediate array (for instance a key derived straight into place).
    public init<Failure: Error>(
        count: Int,
        initializingWith body: (UnsafeMutableRawBufferPointer) throws(Failure) -> Void
    ) throws(Failure) {
        storage = Storage.make(count: count)
        self.count = count
        try body(UnsafeMutableRawBufferPointer(rebasing: storage.bytes[0..<count]))
    }

    /// `count` bytes from `generator` (use a cryptographically secure one for real keys).
    public init(randomCount count: Int, using generator: inout some RandomNumberGenerator) {
        storage = Storage.make(count: count)
        self.count = count
        for index in 0..<count { storage.bytes[index] = UInt8.random(in: .min ... .max, using: &generator) }
    }

    /// Calls `body` with the key bytes; do not let them escape.
    public func withUnsafeBytes<Result, Failure: Error>(
        _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try body(UnsafeRawBufferPointer(rebasing: storage.bytes[0..<count]))
    }

    /// A slice of this key material as key material of its own (for instance SK_ei out of the
    /// whole KEYMAT). Out-of-range slices are clamped to the bytes there are.
    public func extracting(_ range: Range<Int>) -> KeyMaterial {
        let lower = Swift.min(Swift.max(range.lowerBound, 0), count)
        let upper = Swift.min(Swift.max(range.upperBound, lower), count)
        return KeyMaterial(count: upper - lower) { destination in
            destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: storage.bytes[lower..<upper]))
        }
    }

    /// Equal length and equal bytes, compared in time that depends on the length only.
    public static func == (lhs: KeyMaterial, rhs: KeyMaterial) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var difference: UInt8 = 0
        for index in 0..<lhs.count { difference |= lhs.storage.bytes[index] ^ rhs.storage.bytes[index] }
        return difference == 0
    }

    public var description: String { "KeyMaterial(\(count) bytes, redacted)" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["count": count], displayStyle: .struct) }
}

/// An opaque use of the zeroed bytes, so that the optimiser cannot drop the zeroing stores as
/// dead before the memory is freed.
@inline(never)
@_optimize(none)
func keepZeroingStores(_ pointer: UnsafeMutableRawPointer) {
    _ = pointer.load(as: UInt8.self)
}
