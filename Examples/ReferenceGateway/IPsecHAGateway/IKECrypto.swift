public import IPsecHACore
internal import IPsecHASync

/// The cryptography of the reference gateway's one proposal set: X25519 (group 31),
/// PRF_HMAC_SHA2_256, ChaCha20-Poly1305 (RFC 7634) for both the SK payload and ESP. All of it
/// is libsodium's, except SHA-1, which only NAT detection needs (RFC 7296 section 2.23) and
/// libsodium does not have.
public enum IKECrypto {
    /// Bytes from libsodium's random source: SPIs, nonces, X25519 secrets.
    public static func randomBytes(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        bytes.withUnsafeMutableBytes { SodiumPrimitives.randomBytes($0) }
        return bytes
    }

    /// A random value, for SPIs and RFC 6311 nonces.
    public static func random<T: FixedWidthInteger>(_ type: T.Type) -> T {
        randomBytes(MemoryLayout<T>.size).reduce(T.zero) { $0 << 8 | T($1) }
    }

    /// libsodium's random numbers as a generator, for the SPI layout's draws.
    struct Random: RandomNumberGenerator {
        mutating func next() -> UInt64 { IKECrypto.random(UInt64.self) }
    }

    /// HMAC-SHA-256 (RFC 2104, RFC 4868): the PRF. The key may have any length.
    public static func prf(key: KeyMaterial, _ data: [UInt8]...) -> [UInt8] {
        key.withUnsafeBytes { prf(rawKey: $0, data) }
    }

    /// The PRF keyed with public bytes (Ni | Nr for SKEYSEED).
    public static func prf(key: [UInt8], _ data: [UInt8]...) -> [UInt8] {
        key.withUnsafeBytes { prf(rawKey: $0, data) }
    }

    /// SKEYSEED = prf(Ni | Nr, g^ir) (section 2.14): a secret input, a secret output.
    /// Neither g^ir nor the result passes through an array: both are read and written in place.
    public static func prf(key: [UInt8], secret: KeyMaterial) -> KeyMaterial {
        KeyMaterial(count: SodiumPrimitives.hmacSHA256Length) { output in
            key.withUnsafeBytes { key in
                SodiumPrimitives.hmacSHA256(key: key, into: output) { update in secret.withUnsafeBytes { update($0) } }
            }
        }
    }

    /// Whether two byte strings are equal, in time that depends on their length only.
    public static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.withUnsafeBytes { a in b.withUnsafeBytes { b in SodiumPrimitives.constantTimeEqual(a, b) } }
    }

    // The key may be SK_d or the PSK: the wrapper wipes the state that holds its pads.
    private static func prf(rawKey key: UnsafeRawBufferPointer, _ data: [[UInt8]]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: SodiumPrimitives.hmacSHA256Length)
        out.withUnsafeMutableBytes { output in
            SodiumPrimitives.hmacSHA256(key: key, into: output) { update in
                for part in data { part.withUnsafeBytes { update($0) } }
            }
        }
        return out
    }

    /// prf+ (RFC 7296 section 2.13): T1 | T2 | ..., Tn = prf(K, Tn-1 | S | n), cut to `count`;
    /// written straight into key material.
    public static func prfPlus(key: KeyMaterial, seed: [UInt8], count: Int) -> KeyMaterial {
        KeyMaterial(count: count) { destination in
            var previous: [UInt8] = []
            var written = 0
            var counter: UInt8 = 1
            while written < count {
                previous = prf(key: key, previous, seed, [counter])
                let take = min(previous.count, count - written)
                UnsafeMutableRawBufferPointer(rebasing: destination[written..<written + take]).copyBytes(from: previous.prefix(take))
                written += take
                counter &+= 1
            }
            previous.withUnsafeMutableBytes { SodiumPrimitives.wipe($0) }
        }
    }

    /// An ephemeral X25519 key pair for one key exchange (RFC 8031).
    public struct X25519KeyPair: Sendable {
        let secret: KeyMaterial
        /// The 32 bytes sent in the KE payload.
        public let publicKey: [UInt8]

        /// A fresh pair.
        public init() { self.init(secret: KeyMaterial(copying: IKECrypto.randomBytes(32))) }

        /// The pair of a given secret (RFC 7748's test vectors).
        init(secret: KeyMaterial) {
            self.secret = secret
            var publicKey = [UInt8](repeating: 0, count: SodiumPrimitives.x25519Length)
            secret.withUnsafeBytes { secret in publicKey.withUnsafeMutableBytes { SodiumPrimitives.x25519PublicKey(secret: secret, into: $0) } }
            self.publicKey = publicKey
        }

        /// g^ir. Throws for a public value of the wrong length or one that gives the all-zero
        /// result (a low-order point, RFC 8031 section 2).
        public func sharedSecret(with peer: [UInt8]) throws(IKEProtocolError) -> KeyMaterial {
            guard peer.count == SodiumPrimitives.x25519Length else { throw .invalidKeyExchange("X25519 public value of \(peer.count) bytes") }
            var shared = [UInt8](repeating: 0, count: SodiumPrimitives.x25519Length)
            defer { shared.withUnsafeMutableBytes { SodiumPrimitives.wipe($0) } }
            let valid = secret.withUnsafeBytes { secret in
                peer.withUnsafeBytes { peer in shared.withUnsafeMutableBytes { SodiumPrimitives.x25519(secret: secret, peer: peer, into: $0) } }
            }
            guard valid else { throw .invalidKeyExchange("X25519 low-order public value") }
            return KeyMaterial(copying: shared)
        }
    }

    /// Length of a ChaCha20-Poly1305 key plus its salt, as KEYMAT and SK_e* carry it (RFC 7634 section 2).
    public static let aeadKeyLength = 36
    /// The explicit IV in each SK payload and ESP packet.
    public static let ivLength = 8
    /// The Poly1305 tag.
    public static let tagLength = 16

    /// Encrypts `plaintext` under `keyAndSalt` (32-byte key, 4-byte salt), nonce salt | iv,
    /// authenticating `aad` too; returns ciphertext | tag.
    public static func seal(
        _ plaintext: [UInt8], aad: [UInt8], iv: UInt64, keyAndSalt: KeyMaterial
    ) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: plaintext.count + tagLength)
        keyAndSalt.withUnsafeBytes { key in
            let nonce = Self.nonce(salt: key, iv: iv)
            output.withUnsafeMutableBytes { output in
                plaintext.withUnsafeBytes { plaintext in
                    aad.withUnsafeBytes { aad in
                        nonce.withUnsafeBytes { nonce in
                            SodiumPrimitives.seal(into: output.baseAddress!, plaintext: plaintext, aad: aad, nonce: nonce.baseAddress!, key: key.baseAddress!)
                        }
                    }
                }
            }
        }
        return output
    }

    /// Decrypts and verifies ciphertext | tag; nil when the tag does not verify.
    public static func open(
        _ sealed: ArraySlice<UInt8>, aad: [UInt8], iv: UInt64, keyAndSalt: KeyMaterial
    ) -> [UInt8]? {
        guard sealed.count >= tagLength else { return nil }
        var output = [UInt8](repeating: 0, count: sealed.count - tagLength)
        let verified = keyAndSalt.withUnsafeBytes { key in
            let nonce = Self.nonce(salt: key, iv: iv)
            return output.withUnsafeMutableBytes { output in
                sealed.withUnsafeBytes { sealed in
                    aad.withUnsafeBytes { aad in
                        nonce.withUnsafeBytes { nonce in
                            SodiumPrimitives.open(into: output.baseAddress, sealed: sealed, aad: aad, nonce: nonce.baseAddress!, key: key.baseAddress!)
                        }
                    }
                }
            }
        }
        return verified ? output : nil
    }

    /// RFC 7634 section 2: the 4-byte salt (the key's last bytes) followed by the 8-byte IV.
    private static func nonce(salt key: UnsafeRawBufferPointer, iv: UInt64) -> [UInt8] {
        var nonce = Array(key[32..<36])
        nonce.appendBigEndian(iv)
        return nonce
    }

    /// SHA-1 (FIPS 180-4): NAT detection hashes only, where collisions do not matter.
    public static func sha1(_ message: [UInt8]) -> [UInt8] {
        var h: (UInt32, UInt32, UInt32, UInt32, UInt32) = (0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0)
        var padded = message + [0x80]
        while padded.count % 64 != 56 { padded.append(0) }
        padded.appendBigEndian(UInt64(message.count) * 8)
        var w = [UInt32](repeating: 0, count: 80)
        for block in stride(from: 0, to: padded.count, by: 64) {
            for t in 0..<16 {
                w[t] = padded[block + 4 * t..<block + 4 * t + 4].reduce(0) { $0 << 8 | UInt32($1) }
            }
            for t in 16..<80 {
                let x = w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16]
                w[t] = x << 1 | x >> 31
            }
            var (a, b, c, d, e) = h
            for t in 0..<80 {
                let (f, k): (UInt32, UInt32) =
                    switch t {
                    case 0..<20: ((b & c) | (~b & d), 0x5A82_7999)
                    case 20..<40: (b ^ c ^ d, 0x6ED9_EBA1)
                    case 40..<60: ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC)
                    default: (b ^ c ^ d, 0xCA62_C1D6)
                    }
                let temp = (a << 5 | a >> 27) &+ f &+ e &+ k &+ w[t]
                (e, d, c, b, a) = (d, c, b << 30 | b >> 2, a, temp)
            }
            h = (h.0 &+ a, h.1 &+ b, h.2 &+ c, h.3 &+ d, h.4 &+ e)
        }
        var digest: [UInt8] = []
        for word in [h.0, h.1, h.2, h.3, h.4] { digest.appendBigEndian(word) }
        return digest
    }

}
