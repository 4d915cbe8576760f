// IKEv2 transform IDs (RFC 7296 section 3.3.2 and the IANA "IKEv2 Parameters" registry).
// Each is a RawRepresentable struct, not an enum, so that values this package has no name for
// survive decoding and re-encoding unchanged.

/// Transform type 1: encryption algorithm (ENCR).
public struct EncryptionAlgorithm: RawRepresentable, Sendable, Hashable, Codable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let des3 = Self(rawValue: 3)
    public static let null = Self(rawValue: 11)
    public static let aesCBC = Self(rawValue: 12)
    public static let aesCTR = Self(rawValue: 13)
    public static let aesCCM8 = Self(rawValue: 14)
    public static let aesCCM12 = Self(rawValue: 15)
    public static let aesCCM16 = Self(rawValue: 16)
    public static let aesGCM8 = Self(rawValue: 18)
    public static let aesGCM12 = Self(rawValue: 19)
    public static let aesGCM16 = Self(rawValue: 20)
    public static let nullAuthAESGMAC = Self(rawValue: 21)
    public static let chacha20Poly1305 = Self(rawValue: 28)

    /// Whether the algorithm is a combined mode (AEAD), which needs no integrity transform.
    public var isAEAD: Bool { [14, 15, 16, 18, 19, 20, 28].contains(rawValue) }

    /// Whether the algorithm uses a counter-based IV, which must never repeat under one key,
    /// also across a failover (RFC 6311 section 3.4).
    public var usesCounterIV: Bool { [13, 14, 15, 16, 18, 19, 20, 21, 28].contains(rawValue) }

    public var description: String {
        let names: [UInt16: String] = [
            3: "ENCR_3DES", 11: "ENCR_NULL", 12: "ENCR_AES_CBC", 13: "ENCR_AES_CTR", 14: "ENCR_AES_CCM_8",
            15: "ENCR_AES_CCM_12", 16: "ENCR_AES_CCM_16", 18: "ENCR_AES_GCM_8", 19: "ENCR_AES_GCM_12",
            20: "ENCR_AES_GCM_16", 21: "ENCR_NULL_AUTH_AES_GMAC", 28: "ENCR_CHACHA20_POLY1305",
        ]
        return names[rawValue] ?? "ENCR(\(rawValue))"
    }
}

/// Transform type 2: pseudorandom function (PRF).
public struct PseudorandomFunction: RawRepresentable, Sendable, Hashable, Codable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let hmacMD5 = Self(rawValue: 1)
    public static let hmacSHA1 = Self(rawValue: 2)
    public static let aes128XCBC = Self(rawValue: 4)
    public static let hmacSHA2_256 = Self(rawValue: 5)
    public static let hmacSHA2_384 = Self(rawValue: 6)
    public static let hmacSHA2_512 = Self(rawValue: 7)
    public static let aes128CMAC = Self(rawValue: 8)

    public var description: String {
        let names: [UInt16: String] = [
            1: "PRF_HMAC_MD5", 2: "PRF_HMAC_SHA1", 4: "PRF_AES128_XCBC", 5: "PRF_HMAC_SHA2_256",
            6: "PRF_HMAC_SHA2_384", 7: "PRF_HMAC_SHA2_512", 8: "PRF_AES128_CMAC",
        ]
        return names[rawValue] ?? "PRF(\(rawValue))"
    }
}

/// Transform type 3: integrity algorithm (INTEG).
public struct IntegrityAlgorithm: RawRepresentable, Sendable, Hashable, Codable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let none = Self(rawValue: 0)
    public static let hmacMD5_96 = Self(rawValue: 1)
    public static let hmacSHA1_96 = Self(rawValue: 2)
    public static let aesXCBC96 = Self(rawValue: 5)
    public static let hmacSHA2_256_128 = Self(rawValue: 12)
    public static let hmacSHA2_384_192 = Self(rawValue: 13)
    public static let hmacSHA2_512_256 = Self(rawValue: 14)

    public var description: String {
        let names: [UInt16: String] = [
            0: "NONE", 1: "AUTH_HMAC_MD5_96", 2: "AUTH_HMAC_SHA1_96", 5: "AUTH_AES_XCBC_96",
            12: "AUTH_HMAC_SHA2_256_128", 13: "AUTH_HMAC_SHA2_384_192", 14: "AUTH_HMAC_SHA2_512_256",
        ]
        return names[rawValue] ?? "AUTH(\(rawValue))"
    }
}

/// Transform type 4: key exchange method (formerly Diffie-Hellman group).
public struct KeyExchangeMethod: RawRepresentable, Sendable, Hashable, Codable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let none = Self(rawValue: 0)
    public static let modp2048 = Self(rawValue: 14)
    public static let modp3072 = Self(rawValue: 15)
    public static let ecp256 = Self(rawValue: 19)
    public static let ecp384 = Self(rawValue: 20)
    public static let ecp521 = Self(rawValue: 21)
    public static let curve25519 = Self(rawValue: 31)
    public static let curve448 = Self(rawValue: 32)

    public var description: String {
        let names: [UInt16: String] = [
            0: "NONE", 14: "MODP_2048", 15: "MODP_3072", 19: "ECP_256", 20: "ECP_384", 21: "ECP_521",
            31: "CURVE25519", 32: "CURVE448",
        ]
        return names[rawValue] ?? "KE(\(rawValue))"
    }
}

/// The transforms an IKE SA negotiated.
public struct IKETransforms: Sendable, Hashable, Codable {
    /// The encryption algorithm.
    public var encryption: EncryptionAlgorithm
    /// The encryption key length in bits, for algorithms with a variable key length (AES).
    public var encryptionKeyLength: UInt16?
    /// The pseudorandom function.
    public var prf: PseudorandomFunction
    /// The integrity algorithm (``IntegrityAlgorithm/none`` with AEAD encryption).
    public var integrity: IntegrityAlgorithm
    /// The key exchange method.
    public var keyExchange: KeyExchangeMethod

    /// A transform set from its parts.
    public init(
        encryption: EncryptionAlgorithm, encryptionKeyLength: UInt16? = nil, prf: PseudorandomFunction,
        integrity: IntegrityAlgorithm, keyExchange: KeyExchangeMethod
    ) {
        self.encryption = encryption
        self.encryptionKeyLength = encryptionKeyLength
        self.prf = prf
        self.integrity = integrity
        self.keyExchange = keyExchange
    }
}

/// The transforms a Child SA negotiated.
public struct ChildSATransforms: Sendable, Hashable, Codable {
    /// The encryption algorithm (ESP only; ``EncryptionAlgorithm/null`` is not AH).
    public var encryption: EncryptionAlgorithm?
    /// The encryption key length in bits, for algorithms with a variable key length.
    public var encryptionKeyLength: UInt16?
    /// The integrity algorithm (``IntegrityAlgorithm/none`` with AEAD encryption).
    public var integrity: IntegrityAlgorithm
    /// The key exchange method of the CREATE_CHILD_SA, if it had one (PFS).
    public var keyExchange: KeyExchangeMethod

    /// A transform set from its parts.
    public init(
        encryption: EncryptionAlgorithm?, encryptionKeyLength: UInt16? = nil, integrity: IntegrityAlgorithm,
        keyExchange: KeyExchangeMethod = .none
    ) {
        self.encryption = encryption
        self.encryptionKeyLength = encryptionKeyLength
        self.integrity = integrity
        self.keyExchange = keyExchange
    }
}
