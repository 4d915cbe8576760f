public import IPsecHACore

/// Why an IKE message was refused. Nothing changes for any of them.
public enum IKEProtocolError: Error, Sendable, Hashable {
    /// The bytes are not a well-formed IKEv2 message or payload.
    case malformed(IKEWireError)
    /// The SK payload did not authenticate under the key of its IKE SA.
    case integrityCheckFailed
    /// The SK payload is missing, or not where RFC 7296 section 3.14 puts it.
    case notEncrypted
    /// A payload the exchange requires is absent.
    case missingPayload(IKEPayloadType)
    /// The peer's key exchange value cannot be used.
    case invalidKeyExchange(String)
    /// No IKE SA (or half-open exchange) with these SPIs.
    case unknownIKESA(IKESAIdentifier)
    /// The AUTH payload, or the identity, is not what the pre-shared key gives.
    case authenticationFailed(String)
    /// The peer already answered an RFC 6311 message-ID sync on this IKE SA; a second one
    /// would cost it (see `IKEExtensions.messageIDSyncAnswered`).
    case messageIDSyncAlreadyAnswered(IKESAIdentifier)
}

/// An IKEv2 message protected by an SK payload with an AEAD (RFC 7296 section 3.14, RFC 5282,
/// RFC 7634 for ChaCha20-Poly1305): the IKE header, the SK payload's generic header, an 8-byte
/// IV, the encrypted inner payload chain with a pad-length byte, and the 16-byte tag. The AAD
/// is everything before the IV.
public enum EncryptedMessage {
    /// Seals `payloads` under `keyAndSalt` (SK_ei or SK_er) with a random IV.
    ///
    /// The IV is random rather than a counter: a member that takes over after a crash has no
    /// record of the IVs the failed member used under the same key, and a random 64-bit value
    /// collides with one of them with probability about 2^-64 per pair, whereas a counter
    /// would restart at what the last replication said.
    public static func seal(header: IKEHeader, payloads: [IKEPayload], keyAndSalt: KeyMaterial) throws(IKEProtocolError) -> [UInt8] {
        let inner: [UInt8]
        do { inner = try IKEPayload.encodeChain(payloads) } catch { throw .malformed(error) }
        let plaintext = inner + [0]  // no padding; pad length 0
        let skLength = 4 + IKECrypto.ivLength + plaintext.count + IKECrypto.tagLength
        var header = header
        header.nextPayload = .encrypted
        header.length = UInt32(IKEHeader.size + skLength)
        var aad = header.encoded
        aad.append(payloads.first?.type.rawValue ?? 0)
        aad.append(0)
        aad.appendBigEndian(UInt16(skLength))
        let iv = IKECrypto.random(UInt64.self)
        var message = aad
        message.appendBigEndian(iv)
        message += IKECrypto.seal(plaintext, aad: aad, iv: iv, keyAndSalt: keyAndSalt)
        return message
    }

    /// The header of a received message, without decrypting it (to find its IKE SA).
    public static func header(of bytes: [UInt8]) throws(IKEProtocolError) -> IKEHeader {
        do { return try IKEHeader(decoding: bytes[...]) } catch { throw .malformed(error) }
    }

    /// Verifies and decrypts a message whose only payload is SK (as every message after
    /// IKE_SA_INIT is, without fragmentation), returning the header and the inner chain.
    public static func open(_ bytes: [UInt8], keyAndSalt: KeyMaterial) throws(IKEProtocolError) -> IKEMessage {
        let header = try Self.header(of: bytes)
        guard header.nextPayload == .encrypted else { throw .notEncrypted }
        let skStart = IKEHeader.size
        let ivStart = skStart + 4
        let sealedStart = ivStart + IKECrypto.ivLength
        guard bytes.count >= sealedStart + IKECrypto.tagLength + 1 else { throw .malformed(.truncated) }
        guard bytes[skStart + 1] & 0x7F == 0 else { throw .malformed(.reservedBitsSet) }
        let skLength = Int(bytes[skStart + 2]) << 8 | Int(bytes[skStart + 3])
        guard skLength == bytes.count - skStart else { throw .malformed(.lengthMismatch(declared: skLength, actual: bytes.count - skStart)) }
        let firstInner = IKEPayloadType(rawValue: bytes[skStart])
        let iv = bytes[ivStart..<sealedStart].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard let plaintext = IKECrypto.open(bytes[sealedStart...], aad: Array(bytes[..<ivStart]), iv: iv, keyAndSalt: keyAndSalt) else {
            throw .integrityCheckFailed
        }
        let padLength = Int(plaintext[plaintext.count - 1])
        guard padLength < plaintext.count else { throw .malformed(.truncated) }
        do {
            let payloads = try IKEPayload.decodeChain(plaintext[..<(plaintext.count - 1 - padLength)], first: firstInner)
            return IKEMessage(header: header, payloads: payloads)
        } catch {
            throw .malformed(error)
        }
    }
}

extension IKEMessage {
    /// The first payload of `type`, if any.
    public func first(_ type: IKEPayloadType) -> IKEPayload? { payloads.first { $0.type == type } }

    /// The first payload of `type`; throws when there is none.
    public func required(_ type: IKEPayloadType) throws(IKEProtocolError) -> IKEPayload {
        guard let payload = first(type) else { throw .missingPayload(type) }
        return payload
    }

    /// The first payload of `type`, parsed by `parse`; throws when there is none or it is
    /// malformed.
    public func decode<T>(_ type: IKEPayloadType, _ parse: ([UInt8]) throws(IKEWireError) -> T) throws(IKEProtocolError) -> T {
        let payload = try required(type)
        do { return try parse(payload.body) } catch { throw .malformed(error) }
    }

    /// The notifications, skipping malformed ones (a malformed status notify is ignored, as
    /// RFC 7296 section 3.10.1 lets a receiver ignore unknown ones).
    public var notifies: [NotifyPayload] {
        payloads.compactMap { $0.type == .notify ? try? NotifyPayload(body: $0.body) : nil }
    }

    /// Whether a notification of `type` is present.
    public func hasNotify(_ type: NotifyMessageType) -> Bool { notifies.contains { $0.type == type } }
}
