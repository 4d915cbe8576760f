/// IKEv2 exchange types (RFC 7296 section 3.1).
public struct IKEExchangeType: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let ikeSAInit = Self(rawValue: 34)
    public static let ikeAuth = Self(rawValue: 35)
    public static let createChildSA = Self(rawValue: 36)
    public static let informational = Self(rawValue: 37)
    public var description: String {
        [34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL"][rawValue] ?? "exchange \(rawValue)"
    }
}

/// IKEv2 payload types (RFC 7296 section 3.2).
public struct IKEPayloadType: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// No next payload.
    public static let none = Self(rawValue: 0)
    public static let securityAssociation = Self(rawValue: 33)
    public static let keyExchange = Self(rawValue: 34)
    public static let identificationInitiator = Self(rawValue: 35)
    public static let identificationResponder = Self(rawValue: 36)
    public static let certificate = Self(rawValue: 37)
    public static let certificateRequest = Self(rawValue: 38)
    public static let authentication = Self(rawValue: 39)
    public static let nonce = Self(rawValue: 40)
    public static let notify = Self(rawValue: 41)
    public static let delete = Self(rawValue: 42)
    public static let vendorID = Self(rawValue: 43)
    public static let trafficSelectorInitiator = Self(rawValue: 44)
    public static let trafficSelectorResponder = Self(rawValue: 45)
    public static let encrypted = Self(rawValue: 46)
    public static let configuration = Self(rawValue: 47)
    public var description: String {
        [
            0: "none", 33: "SA", 34: "KE", 35: "IDi", 36: "IDr", 37: "CERT", 38: "CERTREQ", 39: "AUTH", 40: "No", 41: "N",
            42: "D", 43: "V", 44: "TSi", 45: "TSr", 46: "SK", 47: "CP",
        ][rawValue] ?? "payload \(rawValue)"
    }
}

/// Notify message types used by this package (RFC 7296 section 3.10.1, RFC 6311 section 12).
public struct NotifyMessageType: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let unsupportedCriticalPayload = Self(rawValue: 1)
    public static let invalidSyntax = Self(rawValue: 7)
    public static let invalidMessageID = Self(rawValue: 9)
    public static let noProposalChosen = Self(rawValue: 14)
    public static let invalidKEPayload = Self(rawValue: 17)
    public static let authenticationFailed = Self(rawValue: 24)
    public static let noAdditionalSAs = Self(rawValue: 35)
    public static let tsUnacceptable = Self(rawValue: 38)
    public static let childSANotFound = Self(rawValue: 44)
    public static let initialContact = Self(rawValue: 16384)
    public static let setWindowSize = Self(rawValue: 16385)
    public static let natDetectionSourceIP = Self(rawValue: 16388)
    public static let natDetectionDestinationIP = Self(rawValue: 16389)
    public static let cookie = Self(rawValue: 16390)
    public static let useTransportMode = Self(rawValue: 16391)
    public static let rekeySA = Self(rawValue: 16393)
    public static let mobikeSupported = Self(rawValue: 16396)
    public static let messageIDSyncSupported = Self(rawValue: 16420)
    public static let replayCounterSyncSupported = Self(rawValue: 16421)
    public static let messageIDSync = Self(rawValue: 16422)
    public static let replayCounterSync = Self(rawValue: 16423)
    /// Types below 16384 report errors; the others are status.
    public var isError: Bool { rawValue < 16384 }
    public var description: String {
        let names: [UInt16: String] = [
            1: "UNSUPPORTED_CRITICAL_PAYLOAD", 7: "INVALID_SYNTAX", 9: "INVALID_MESSAGE_ID", 14: "NO_PROPOSAL_CHOSEN",
            17: "INVALID_KE_PAYLOAD", 24: "AUTHENTICATION_FAILED", 35: "NO_ADDITIONAL_SAS", 38: "TS_UNACCEPTABLE", 44: "CHILD_SA_NOT_FOUND",
            16384: "INITIAL_CONTACT", 16385: "SET_WINDOW_SIZE", 16388: "NAT_DETECTION_SOURCE_IP",
            16389: "NAT_DETECTION_DESTINATION_IP", 16390: "COOKIE", 16391: "USE_TRANSPORT_MODE", 16393: "REKEY_SA", 16396: "MOBIKE_SUPPORTED", 16420: "IKEV2_MESSAGE_ID_SYNC_SUPPORTED",
            16421: "IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED", 16422: "IKEV2_MESSAGE_ID_SYNC", 16423: "IPSEC_REPLAY_COUNTER_SYNC",
        ]
        return names[rawValue] ?? "notify \(rawValue)"
    }
}

/// The IKEv2 header (RFC 7296 section 3.1): 28 bytes, big-endian.
public struct IKEHeader: Sendable, Hashable {
    /// Header length in bytes.
    public static let size = 28
    /// Flag: the message comes from the original initiator of the IKE SA.
    public static let initiatorFlag: UInt8 = 0x08
    /// Flag: higher version supported (must be 0 when sent).
    public static let versionFlag: UInt8 = 0x10
    /// Flag: the message is a response.
    public static let responseFlag: UInt8 = 0x20

    public var initiatorSPI: UInt64
    public var responderSPI: UInt64
    public var nextPayload: IKEPayloadType
    /// Major version in the high nibble, minor in the low: 0x20 for IKEv2.
    public var version: UInt8
    public var exchangeType: IKEExchangeType
    public var flags: UInt8
    public var messageID: UInt32
    /// Length of the whole message, header included.
    public var length: UInt32

    /// A header from its parts (version 2.0).
    public init(
        initiatorSPI: UInt64, responderSPI: UInt64, nextPayload: IKEPayloadType, exchangeType: IKEExchangeType,
        flags: UInt8, messageID: UInt32, length: UInt32
    ) {
        self.initiatorSPI = initiatorSPI
        self.responderSPI = responderSPI
        self.nextPayload = nextPayload
        self.version = 0x20
        self.exchangeType = exchangeType
        self.flags = flags
        self.messageID = messageID
        self.length = length
    }

    /// The 28 header bytes, with the fields as they are (``IKEMessage/encoded()`` fills in the
    /// next payload and the length first).
    public var encoded: [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Self.size)
        bytes.appendBigEndian(initiatorSPI)
        bytes.appendBigEndian(responderSPI)
        bytes.append(nextPayload.rawValue)
        bytes.append(version)
        bytes.append(exchangeType.rawValue)
        bytes.append(flags)
        bytes.appendBigEndian(messageID)
        bytes.appendBigEndian(length)
        return bytes
    }

    /// Parses the header at the start of `bytes` and checks its length field against them.
    /// Throws on truncation, a version other than 2, or a length that disagrees.
    public init(decoding bytes: ArraySlice<UInt8>) throws(IKEWireError) {
        guard bytes.count >= Self.size else { throw .truncated }
        var reader = WireReader(bytes)
        initiatorSPI = try reader.uint64()
        responderSPI = try reader.uint64()
        nextPayload = IKEPayloadType(rawValue: try reader.uint8())
        version = try reader.uint8()
        guard version >> 4 == 2 else { throw .unsupportedVersion(version) }
        exchangeType = IKEExchangeType(rawValue: try reader.uint8())
        flags = try reader.uint8()
        messageID = try reader.uint32()
        length = try reader.uint32()
        guard Int(length) == bytes.count else { throw .lengthMismatch(declared: Int(length), actual: bytes.count) }
    }

    /// Whether the R flag is set.
    public var isResponse: Bool { flags & Self.responseFlag != 0 }
    /// Whether the I flag is set.
    public var isFromOriginalInitiator: Bool { flags & Self.initiatorFlag != 0 }
}

/// One payload of an IKEv2 payload chain: its type, the critical bit, and its body (after the
/// 4-byte generic payload header).
public struct IKEPayload: Sendable, Hashable {
    public var type: IKEPayloadType
    public var critical: Bool
    public var body: [UInt8]

    /// A payload from its parts.
    public init(type: IKEPayloadType, critical: Bool = false, body: [UInt8]) {
        self.type = type
        self.critical = critical
        self.body = body
    }
}

/// An IKEv2 message in clear: the header and the payload chain. Encrypting the chain into an
/// SK payload (and decrypting it) belongs to the embedding IKE stack; this type produces and
/// consumes the plaintext form the stack encrypts or has decrypted.
public struct IKEMessage: Sendable, Hashable {
    public var header: IKEHeader
    public var payloads: [IKEPayload]
    /// When the chain ends in an SK payload: the type of the first payload inside it, which
    /// the SK payload's next-payload field carries (RFC 7296 section 3.14).
    public var firstPayloadInsideEncrypted: IKEPayloadType

    /// A message; ``encoded()`` fills in the next-payload fields and the length.
    public init(header: IKEHeader, payloads: [IKEPayload], firstPayloadInsideEncrypted: IKEPayloadType = .none) {
        self.header = header
        self.payloads = payloads
        self.firstPayloadInsideEncrypted = firstPayloadInsideEncrypted
    }

    /// The message's bytes: header, then each payload with its generic header.
    public func encoded() throws(IKEWireError) -> [UInt8] {
        let chain = try IKEPayload.encodeChain(payloads, lastNextPayload: firstPayloadInsideEncrypted)
        var header = self.header
        header.nextPayload = payloads.first?.type ?? .none
        header.length = UInt32(IKEHeader.size + chain.count)
        return header.encoded + chain
    }

    /// Parses a message in clear. Throws a typed error, for any malformed input, before
    /// returning anything: truncation, a length field that disagrees with the bytes, a version
    /// other than 2, a payload length below 4 or past the end, reserved bits set.
    public init(decoding bytes: [UInt8]) throws(IKEWireError) {
        let header = try IKEHeader(decoding: bytes[...])
        let chain = try IKEPayload.decodeChainReportingEncrypted(bytes[IKEHeader.size...], first: header.nextPayload)
        self.payloads = chain.payloads
        self.firstPayloadInsideEncrypted = chain.firstInner ?? .none
        self.header = header
    }
}

extension IKEPayload {
    /// A payload chain's bytes: each payload behind its generic header, whose next-payload
    /// field names the payload after it (0 after the last). The first payload's type goes
    /// wherever the chain hangs from: the IKE header, or an SK payload (RFC 7296 section 3.14).
    /// `lastNextPayload` goes in the last payload's next-payload field: 0 (none), except for a
    /// closing SK payload, whose field names the first payload inside it.
    public static func encodeChain(
        _ payloads: [IKEPayload], lastNextPayload: IKEPayloadType = .none
    ) throws(IKEWireError) -> [UInt8] {
        var bytes: [UInt8] = []
        for (index, payload) in payloads.enumerated() {
            guard payload.body.count + 4 <= Int(UInt16.max) else { throw .payloadTooLong(payload.body.count) }
            bytes.append(index + 1 < payloads.count ? payloads[index + 1].type.rawValue : lastNextPayload.rawValue)
            bytes.append(payload.critical ? 0x80 : 0)
            bytes.appendBigEndian(UInt16(payload.body.count + 4))
            bytes.append(contentsOf: payload.body)
        }
        return bytes
    }

    /// Parses a payload chain that starts with a payload of type `first` and fills `bytes`
    /// exactly. An SK payload ends the chain: its next-payload field names the first payload
    /// inside it, and it must be the last payload (RFC 7296 section 3.14); its body is kept
    /// whole and the inner chain's first type is returned beside the payloads.
    public static func decodeChain(
        _ bytes: ArraySlice<UInt8>, first: IKEPayloadType
    ) throws(IKEWireError) -> [IKEPayload] {
        try decodeChainReportingEncrypted(bytes, first: first).payloads
    }

    /// ``decodeChain(_:first:)``, with the type of the first payload inside a closing SK
    /// payload (nil when the chain has none).
    public static func decodeChainReportingEncrypted(
        _ bytes: ArraySlice<UInt8>, first: IKEPayloadType
    ) throws(IKEWireError) -> (payloads: [IKEPayload], firstInner: IKEPayloadType?) {
        var reader = WireReader(bytes)
        var payloads: [IKEPayload] = []
        var next = first
        while next != .none {
            guard payloads.count < 64 else { throw .tooManyPayloads }
            let following = IKEPayloadType(rawValue: try reader.uint8())
            let flags = try reader.uint8()
            guard flags & 0x7F == 0 else { throw .reservedBitsSet }
            let length = Int(try reader.uint16())
            guard length >= 4 else { throw .payloadTooShort(length) }
            payloads.append(IKEPayload(type: next, critical: flags & 0x80 != 0, body: Array(try reader.bytes(length - 4))))
            if next == .encrypted {
                guard reader.isAtEnd else { throw .trailingBytes(reader.remaining) }
                return (payloads, following)
            }
            next = following
        }
        guard reader.isAtEnd else { throw .trailingBytes(reader.remaining) }
        return (payloads, nil)
    }
}

/// A Notify payload's body (RFC 7296 section 3.10).
public struct NotifyPayload: Sendable, Hashable {
    /// 0 for notifications about the IKE SA; 2 (AH) or 3 (ESP) with an SPI.
    public var protocolID: UInt8
    /// The SPI the notification is about (empty for the IKE SA).
    public var spi: [UInt8]
    public var type: NotifyMessageType
    public var data: [UInt8]

    /// A notification from its parts.
    public init(protocolID: UInt8 = 0, spi: [UInt8] = [], type: NotifyMessageType, data: [UInt8] = []) {
        self.protocolID = protocolID
        self.spi = spi
        self.type = type
        self.data = data
    }

    /// The body bytes: protocol ID, SPI size, type, SPI, data.
    public var body: [UInt8] {
        var bytes: [UInt8] = [protocolID, UInt8(truncatingIfNeeded: spi.count)]
        bytes.appendBigEndian(type.rawValue)
        return bytes + spi + data
    }

    /// Parses a Notify body. Throws on truncation or an SPI size that is not 0, 4 or 8.
    public init(body: [UInt8]) throws(IKEWireError) {
        var reader = WireReader(body[...])
        protocolID = try reader.uint8()
        let spiSize = Int(try reader.uint8())
        guard [0, 4, 8].contains(spiSize) else { throw .invalidSPISize(spiSize) }
        type = NotifyMessageType(rawValue: try reader.uint16())
        spi = Array(try reader.bytes(spiSize))
        data = Array(try reader.bytes(reader.remaining))
    }

    /// This notification as a payload of the chain.
    public var payload: IKEPayload { IKEPayload(type: .notify, body: body) }
}

/// Why IKEv2 bytes could not be decoded.
public enum IKEWireError: Error, Sendable, Hashable {
    case truncated
    case unsupportedVersion(UInt8)
    case lengthMismatch(declared: Int, actual: Int)
    case payloadTooShort(Int)
    case payloadTooLong(Int)
    case reservedBitsSet
    case trailingBytes(Int)
    case tooManyPayloads
    case invalidSPISize(Int)
    /// A notification whose data does not have the length its type requires.
    case invalidNotifyData(NotifyMessageType, length: Int)
    /// A notification with a protocol ID or SPI its type does not allow.
    case invalidNotifyTarget(NotifyMessageType)
    /// The message is not what the operation expects (another exchange, notify missing...).
    case unexpectedMessage(String)
}

/// Bounded big-endian reads over received bytes, for IKEv2 payload parsers: every read past
/// the end throws ``IKEWireError/truncated`` instead of trapping.
public struct WireReader {
    private let bytes: ArraySlice<UInt8>
    private var position: Int

    /// A reader at the start of `bytes`.
    public init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        position = bytes.startIndex
    }

    /// A reader at the start of `bytes`.
    public init(_ bytes: [UInt8]) { self.init(bytes[...]) }

    /// Bytes not read yet.
    public var remaining: Int { bytes.endIndex - position }
    /// Whether every byte was read.
    public var isAtEnd: Bool { position == bytes.endIndex }

    /// The next byte.
    public mutating func uint8() throws(IKEWireError) -> UInt8 {
        guard remaining >= 1 else { throw .truncated }
        defer { position += 1 }
        return bytes[position]
    }

    /// The next two bytes, big-endian.
    public mutating func uint16() throws(IKEWireError) -> UInt16 { UInt16(try uint8()) << 8 | UInt16(try uint8()) }
    /// The next four bytes, big-endian.
    public mutating func uint32() throws(IKEWireError) -> UInt32 { UInt32(try uint16()) << 16 | UInt32(try uint16()) }
    /// The next eight bytes, big-endian.
    public mutating func uint64() throws(IKEWireError) -> UInt64 { UInt64(try uint32()) << 32 | UInt64(try uint32()) }

    /// The next `count` bytes.
    public mutating func bytes(_ count: Int) throws(IKEWireError) -> ArraySlice<UInt8> {
        guard count >= 0, remaining >= count else { throw .truncated }
        defer { position += count }
        return bytes[position..<position + count]
    }
}

extension Array where Element == UInt8 {
    /// Appends `value` big-endian, as every IKEv2 and ESP field is written.
    public mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        var shift = T.bitWidth - 8
        while shift >= 0 {
            append(UInt8(truncatingIfNeeded: value >> shift))
            shift -= 8
        }
    }
}
