internal import CSodium

/// libsodium, the cryptographic library behind the synch channel.
public enum Sodium {
    /// Initialises libsodium once per process; later calls return at once.
    /// Throws ``SodiumError/initializationFailed`` if the library cannot start (for instance
    /// when no entropy source is available).
    public static func initialize() throws(SodiumError) {
        if !initialized { throw .initializationFailed }
    }

    /// The version of the libsodium the process runs with, such as "1.0.18".
    public static var version: String { String(cString: sodium_version_string()) }

    // sodium_init() is thread-safe and idempotent; a static let runs it exactly once.
    private static let initialized: Bool = sodium_init() >= 0
}

/// Errors from libsodium.
public enum SodiumError: Error, Sendable, Hashable {
    /// `sodium_init()` failed.
    case initializationFailed
    /// `sodium_malloc` returned no memory.
    case allocationFailed
}

/// A cryptographically secure random number generator backed by libsodium's `randombytes`.
///
/// Use it for anything an attacker must not predict: SPIs, nonces, channel keys.
public struct SodiumRandomNumberGenerator: RandomNumberGenerator, Sendable {
    /// A generator; fails only if libsodium cannot be initialised.
    public init() throws(SodiumError) {
        try Sodium.initialize()
    }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        var value: UInt64 = 0
        withUnsafeMutableBytes(of: &value) { randombytes_buf($0.baseAddress!, $0.count) }
        return value
    }

    /// Fills `buffer` with random bytes.
    public mutating func fill(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress else { return }
        randombytes_buf(base, buffer.count)
    }
}
