/// The AEAD that seals the synch channel's datagrams. Every member of a cluster must use the
/// same (``SyncChannelConfiguration/cipher``): each datagram's header says which sealed it
/// (``DatagramHeader/aes256GCMFlag``), and a member drops what another cipher sealed with
/// ``ChannelSecurityError/cipherMismatch(_:)``, without trying to open it. Direction keys are
/// derived per cipher, so one key never serves both. Both take a 32-byte key and the same
/// 12-byte nonce (the sender, the receiver and the packet number: unique per direction key,
/// see `Docs/SyncProtocol.md`), and make a 16-byte tag.
public enum SyncChannelCipher: UInt8, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// ChaCha20-Poly1305 (RFC 8439, IETF nonce): fast in software, on every CPU. The default.
    case chacha20Poly1305 = 1
    /// AES-256-GCM (NIST SP 800-38D): faster where the CPU has AES instructions (AES-NI and
    /// CLMUL on x86-64, the ARMv8 crypto extensions), unavailable elsewhere.
    case aes256GCM = 2

    /// Whether this machine can use the cipher (libsodium tells, from the CPU's features).
    public var isAvailable: Bool {
        switch self {
        case .chacha20Poly1305: true
        case .aes256GCM: SodiumPrimitives.aes256GCMAvailable
        }
    }

    /// AES-256-GCM where this CPU has it, ChaCha20-Poly1305 otherwise. Choose once for the
    /// cluster, on a member like the others: members on CPUs that differ must be configured
    /// with the same cipher explicitly.
    public static var fastestAvailable: SyncChannelCipher { aes256GCM.isAvailable ? .aes256GCM : .chacha20Poly1305 }

    /// The cipher named `name` as ``name`` spells it ("chacha20-poly1305", "aes-256-gcm"), for
    /// command lines and configuration files; nil for anything else.
    public init?(name: String) {
        guard let cipher = Self.allCases.first(where: { $0.name == name }) else { return nil }
        self = cipher
    }

    /// The cipher's name in command lines and configuration files.
    public var name: String {
        switch self {
        case .chacha20Poly1305: "chacha20-poly1305"
        case .aes256GCM: "aes-256-gcm"
        }
    }

    public var description: String {
        switch self {
        case .chacha20Poly1305: "ChaCha20-Poly1305"
        case .aes256GCM: "AES-256-GCM"
        }
    }
}
