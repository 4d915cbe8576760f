internal import CSodium
internal import IPsecHACore

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
        withUnsafeMutableBytes(of: &value) { SodiumPrimitives.randomBytes($0) }
        return value
    }

    /// Fills `buffer` with random bytes.
    public mutating func fill(_ buffer: UnsafeMutableRawBufferPointer) { SodiumPrimitives.randomBytes(buffer) }
}

/// The package's one wrapper of libsodium: every call into it, the synch channel's and the
/// reference gateway's (package access), goes through here, on raw buffers so that the callers
/// choose where secrets live and nothing is allocated behind them. Each initialises libsodium
/// first (once per process).
package enum SodiumPrimitives {
    /// ChaCha20-Poly1305's key, nonce (IETF, RFC 8439) and tag lengths.
    package static let aeadKeyLength = 32, aeadNonceLength = 12, aeadTagLength = 16
    /// HMAC-SHA-256's output length.
    package static let hmacSHA256Length = 32
    /// X25519's scalar, point and shared secret length.
    package static let x25519Length = 32

    /// Fills `buffer` from libsodium's random source.
    package static func randomBytes(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress else { return }
        _ = try? Sodium.initialize()
        randombytes_buf(base, buffer.count)
    }

    /// Zeroes `buffer` in a way the optimiser keeps.
    package static func wipe(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress else { return }
        sodium_memzero(base, buffer.count)
    }

    /// `count` bytes of guarded memory (`sodium_malloc`: guard pages, locked in RAM where
    /// allowed), or nil; give it back with ``guardedFree(_:)``, which wipes it.
    package static func guardedAllocate(_ count: Int) -> UnsafeMutableRawPointer? {
        guard (try? Sodium.initialize()) != nil else { return nil }
        return sodium_malloc(max(count, 1))
    }

    /// Wipes and frees memory from ``guardedAllocate(_:)``.
    package static func guardedFree(_ pointer: UnsafeMutableRawPointer) { sodium_free(pointer) }

    /// Key material of `count` bytes written by `body`, in `sodium_malloc` memory. Throws
    /// ``SodiumError/allocationFailed`` when libsodium cannot allocate guarded memory.
    static func guardedKey(
        count: Int, initializingWith body: (UnsafeMutableRawBufferPointer) -> Void
    ) throws(SodiumError) -> KeyMaterial {
        try Sodium.initialize()
        let allocator = GuardedAllocator(allocate: { sodium_malloc($0) }, release: { sodium_free($0) })
        do {
            return try KeyMaterial.guarded(count: count, allocator: allocator, initializingWith: body)
        } catch {
            throw .allocationFailed
        }
    }

    /// Whether `a` and `b` are equal, in time that depends on their length only.
    package static func constantTimeEqual(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        guard a.count == b.count else { return false }
        guard let left = a.baseAddress, let right = b.baseAddress else { return a.count == 0 }
        return sodium_memcmp(left, right, a.count) == 0
    }

    /// BLAKE2b of `input` keyed with `key`, `output.count` bytes long (16 to 64). False when
    /// libsodium refuses the lengths.
    package static func blake2b(into output: UnsafeMutableRawBufferPointer, input: UnsafeRawBufferPointer, key: UnsafeRawBufferPointer) -> Bool {
        _ = try? Sodium.initialize()
        return crypto_generichash(
            output.baseAddress!.assumingMemoryBound(to: UInt8.self), output.count, input.baseAddress?.assumingMemoryBound(to: UInt8.self),
            UInt64(input.count), key.baseAddress?.assumingMemoryBound(to: UInt8.self), key.count) == 0
    }

    /// Whether this CPU runs libsodium's AES-256-GCM (it needs AES-NI and CLMUL on x86-64, or
    /// the ARMv8 crypto extensions).
    package static var aes256GCMAvailable: Bool {
        _ = try? Sodium.initialize()
        return crypto_aead_aes256gcm_is_available() == 1
    }

    /// Seals with `cipher` (ChaCha20-Poly1305 as RFC 8439, or AES-256-GCM; both take a 32-byte
    /// key and a 12-byte nonce and make a 16-byte tag): writes ciphertext | tag,
    /// `plaintext.count` + ``aeadTagLength`` bytes, at `output`, authenticating `aad` too.
    /// AES-256-GCM only where ``aes256GCMAvailable`` (the channel checks at its start).
    package static func seal(
        into output: UnsafeMutableRawPointer, plaintext: UnsafeRawBufferPointer, aad: UnsafeRawBufferPointer, nonce: UnsafeRawPointer,
        key: UnsafeRawPointer, cipher: SyncChannelCipher = .chacha20Poly1305
    ) {
        _ = try? Sodium.initialize()
        var written: UInt64 = 0
        let seal = cipher == .aes256GCM ? crypto_aead_aes256gcm_encrypt : crypto_aead_chacha20poly1305_ietf_encrypt
        _ = seal(
            output.assumingMemoryBound(to: UInt8.self), &written, plaintext.baseAddress?.assumingMemoryBound(to: UInt8.self),
            UInt64(plaintext.count), aad.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(aad.count), nil,
            nonce.assumingMemoryBound(to: UInt8.self), key.assumingMemoryBound(to: UInt8.self))
    }

    /// Verifies and decrypts ciphertext | tag, sealed with `cipher`, into `output`
    /// (`sealed.count` - ``aeadTagLength`` bytes); false, with nothing to use in `output`, when
    /// the tag does not verify or `sealed` is shorter than a tag.
    package static func open(
        into output: UnsafeMutableRawPointer?, sealed: UnsafeRawBufferPointer, aad: UnsafeRawBufferPointer, nonce: UnsafeRawPointer,
        key: UnsafeRawPointer, cipher: SyncChannelCipher = .chacha20Poly1305
    ) -> Bool {
        guard sealed.count >= aeadTagLength, let sealedBase = sealed.baseAddress else { return false }
        _ = try? Sodium.initialize()
        var written: UInt64 = 0
        let open = cipher == .aes256GCM ? crypto_aead_aes256gcm_decrypt : crypto_aead_chacha20poly1305_ietf_decrypt
        return open(
            output?.assumingMemoryBound(to: UInt8.self), &written, nil, sealedBase.assumingMemoryBound(to: UInt8.self), UInt64(sealed.count),
            aad.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(aad.count), nonce.assumingMemoryBound(to: UInt8.self),
            key.assumingMemoryBound(to: UInt8.self)) == 0
    }

    /// HMAC-SHA-256 (RFC 2104) under `key` of what `message` feeds to its `update`, into
    /// `output` (``hmacSHA256Length`` bytes). The state, which holds the key's pads, is wiped.
    package static func hmacSHA256(
        key: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer, message: (_ update: (UnsafeRawBufferPointer) -> Void) -> Void
    ) {
        _ = try? Sodium.initialize()
        var state = crypto_auth_hmacsha256_state()
        defer { withUnsafeMutableBytes(of: &state) { wipe($0) } }
        if let base = key.baseAddress {
            _ = crypto_auth_hmacsha256_init(&state, base.assumingMemoryBound(to: UInt8.self), key.count)
        } else {
            var empty: UInt8 = 0
            _ = crypto_auth_hmacsha256_init(&state, &empty, 0)
        }
        message { bytes in
            if let base = bytes.baseAddress { _ = crypto_auth_hmacsha256_update(&state, base.assumingMemoryBound(to: UInt8.self), UInt64(bytes.count)) }
        }
        _ = crypto_auth_hmacsha256_final(&state, output.baseAddress!.assumingMemoryBound(to: UInt8.self))
    }

    /// X25519's public value of `secret` (RFC 7748), into `publicKey`.
    package static func x25519PublicKey(secret: UnsafeRawBufferPointer, into publicKey: UnsafeMutableRawBufferPointer) {
        _ = try? Sodium.initialize()
        _ = crypto_scalarmult_base(publicKey.baseAddress!.assumingMemoryBound(to: UInt8.self), secret.baseAddress!.assumingMemoryBound(to: UInt8.self))
    }

    /// X25519's shared secret of `secret` and `peer`, into `shared`; false for a low-order
    /// point (an all-zero result, RFC 8031 section 2).
    package static func x25519(secret: UnsafeRawBufferPointer, peer: UnsafeRawBufferPointer, into shared: UnsafeMutableRawBufferPointer) -> Bool {
        _ = try? Sodium.initialize()
        return crypto_scalarmult(
            shared.baseAddress!.assumingMemoryBound(to: UInt8.self), secret.baseAddress!.assumingMemoryBound(to: UInt8.self),
            peer.baseAddress!.assumingMemoryBound(to: UInt8.self)) == 0
    }
}
