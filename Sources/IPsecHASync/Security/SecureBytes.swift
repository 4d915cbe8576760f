/// Secret bytes in libsodium's guarded memory (`sodium_malloc`: guard pages, locked in RAM
/// where allowed, wiped by `sodium_free`). Never printed.
final class SecureBytes: @unchecked Sendable {
    // @unchecked: the bytes are written only in the initialiser; afterwards they are read only.
    let count: Int
    private let pointer: UnsafeMutableRawPointer

    /// `count` bytes written by `body`. Throws ``SodiumError/allocationFailed`` when libsodium
    /// cannot allocate guarded memory.
    init(count: Int, initializingWith body: (UnsafeMutableRawBufferPointer) -> Void) throws(SodiumError) {
        try Sodium.initialize()
        guard let memory = SodiumPrimitives.guardedAllocate(count) else { throw .allocationFailed }
        self.count = count
        pointer = memory
        body(UnsafeMutableRawBufferPointer(start: memory, count: count))
    }

    func withUnsafeBytes<Result>(_ body: (UnsafeRawBufferPointer) throws -> Result) rethrows -> Result {
        try body(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    deinit { SodiumPrimitives.guardedFree(pointer) }
}
