public import IPsecHACore

// The payloads of IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA and INFORMATIONAL (RFC 7296 section 3)
// that the reference gateway reads and writes. Every parser takes a payload body as received
// and throws `IKEWireError` for anything malformed, before returning anything.

/// One transform of a proposal (RFC 7296 section 3.3.2).
public struct IKETransform: Sendable, Hashable {
    /// Transform types (section 3.3.2): encryption, PRF, integrity, key exchange, ESN.
    public enum Kind: UInt8, Sendable, Hashable {
        case encryption = 1
        case pseudorandomFunction = 2
        case integrity = 3
        case keyExchange = 4
        case extendedSequenceNumbers = 5
    }

    /// The transform type; nil for a type this gateway does not know (the proposal is then
    /// not acceptable).
    public var kind: Kind?
    /// The raw transform type, as received.
    public var rawKind: UInt8
    /// The transform ID within its type.
    public var id: UInt16
    /// The Key Length attribute (type 14), when present.
    public var keyLength: UInt16?

    /// A transform from its parts.
    public init(_ kind: Kind, id: UInt16, keyLength: UInt16? = nil) {
        self.kind = kind
        self.rawKind = kind.rawValue
        self.id = id
        self.keyLength = keyLength
    }
}

/// One proposal of an SA payload (section 3.3.1).
public struct IKEProposal: Sendable, Hashable {
    /// Protocol IDs (section 3.3.1).
    /// Protocol ID of an IKE SA proposal.
    public static let ike: UInt8 = 1
    /// Protocol ID of an ESP proposal.
    public static let esp: UInt8 = 3

    /// The proposal number; the answer repeats the chosen one's.
    public var number: UInt8
    /// ``ike`` or ``esp``.
    public var protocolID: UInt8
    /// Empty for the first IKE SA, 8 bytes for a rekeyed one, 4 for ESP.
    public var spi: [UInt8]
    /// The transforms offered (or, in an answer, chosen).
    public var transforms: [IKETransform]

    /// A proposal from its parts.
    public init(number: UInt8, protocolID: UInt8, spi: [UInt8], transforms: [IKETransform]) {
        self.number = number
        self.protocolID = protocolID
        self.spi = spi
        self.transforms = transforms
    }

    /// The transforms of one type, in order of preference.
    public func transforms(_ kind: IKETransform.Kind) -> [IKETransform] { transforms.filter { $0.kind == kind } }

    /// The SPI as a 32-bit value (ESP); nil unless it has 4 bytes.
    public var espSPI: UInt32? { spi.count == 4 ? spi.reduce(0) { $0 << 8 | UInt32($1) } : nil }
}

/// The SA payload: proposals in order of preference.
public struct SecurityAssociationPayload: Sendable, Hashable {
    /// In order of preference; an answer holds exactly one.
    public var proposals: [IKEProposal]

    /// An SA payload from its proposals.
    public init(proposals: [IKEProposal]) { self.proposals = proposals }

    /// The body bytes.
    public var body: [UInt8] {
        var bytes: [UInt8] = []
        for (index, proposal) in proposals.enumerated() {
            var transforms: [UInt8] = []
            for (transformIndex, transform) in proposal.transforms.enumerated() {
                var attributes: [UInt8] = []
                if let keyLength = transform.keyLength {
                    attributes.appendBigEndian(UInt16(0x800E))
                    attributes.appendBigEndian(keyLength)
                }
                transforms.append(transformIndex + 1 < proposal.transforms.count ? 3 : 0)
                transforms.append(0)
                transforms.appendBigEndian(UInt16(8 + attributes.count))
                transforms.append(transform.rawKind)
                transforms.append(0)
                transforms.appendBigEndian(transform.id)
                transforms += attributes
            }
            bytes.append(index + 1 < proposals.count ? 2 : 0)
            bytes.append(0)
            bytes.appendBigEndian(UInt16(8 + proposal.spi.count + transforms.count))
            bytes += [proposal.number, proposal.protocolID, UInt8(proposal.spi.count), UInt8(proposal.transforms.count)]
            bytes += proposal.spi + transforms
        }
        return bytes
    }

    /// As a payload of the chain.
    public var payload: IKEPayload { IKEPayload(type: .securityAssociation, body: body) }

    /// Parses an SA payload body; throws for lengths that disagree, counts that do not match,
    /// an SPI size other than 0, 4 or 8, or attributes other than fixed-length ones.
    public init(body: [UInt8]) throws(IKEWireError) {
        var reader = WireReader(body)
        var proposals: [IKEProposal] = []
        var more = true
        while more {
            guard proposals.count < 64 else { throw .tooManyPayloads }
            let last = try reader.uint8()
            guard last == 0 || last == 2 else { throw .unexpectedMessage("proposal substructure marker \(last)") }
            more = last == 2
            _ = try reader.uint8()
            let length = Int(try reader.uint16())
            guard length >= 8 else { throw .payloadTooShort(length) }
            var proposalReader = WireReader(try reader.bytes(length - 4))
            let number = try proposalReader.uint8()
            let protocolID = try proposalReader.uint8()
            let spiSize = Int(try proposalReader.uint8())
            guard [0, 4, 8].contains(spiSize) else { throw .invalidSPISize(spiSize) }
            let count = Int(try proposalReader.uint8())
            let spi = Array(try proposalReader.bytes(spiSize))
            var transforms: [IKETransform] = []
            for index in 0..<count {
                let marker = try proposalReader.uint8()
                guard marker == (index + 1 < count ? 3 : 0) else { throw .unexpectedMessage("transform substructure marker \(marker)") }
                _ = try proposalReader.uint8()
                let transformLength = Int(try proposalReader.uint16())
                guard transformLength >= 8 else { throw .payloadTooShort(transformLength) }
                var transformReader = WireReader(try proposalReader.bytes(transformLength - 4))
                let rawKind = try transformReader.uint8()
                _ = try transformReader.uint8()
                var transform = IKETransform(.encryption, id: try transformReader.uint16())
                transform.kind = IKETransform.Kind(rawValue: rawKind)
                transform.rawKind = rawKind
                while !transformReader.isAtEnd {
                    let type = try transformReader.uint16()
                    guard type & 0x8000 != 0 else { throw .unexpectedMessage("variable-length transform attribute \(type)") }
                    let value = try transformReader.uint16()
                    if type & 0x7FFF == 14 { transform.keyLength = value }
                }
                transforms.append(transform)
            }
            guard proposalReader.isAtEnd else { throw .trailingBytes(proposalReader.remaining) }
            proposals.append(IKEProposal(number: number, protocolID: protocolID, spi: spi, transforms: transforms))
        }
        guard reader.isAtEnd else { throw .trailingBytes(reader.remaining) }
        self.proposals = proposals
    }
}

/// The KE payload (section 3.4).
public struct KeyExchangePayload: Sendable, Hashable {
    /// The Diffie-Hellman group (31: X25519).
    public var group: KeyExchangeMethod
    /// The public value.
    public var data: [UInt8]

    /// A KE payload from its parts.
    public init(group: KeyExchangeMethod, data: [UInt8]) {
        self.group = group
        self.data = data
    }

    /// As a payload of the chain.
    public var payload: IKEPayload {
        var body: [UInt8] = []
        body.appendBigEndian(group.rawValue)
        body += [0, 0] + data
        return IKEPayload(type: .keyExchange, body: body)
    }

    /// Parses a KE payload body.
    public init(body: [UInt8]) throws(IKEWireError) {
        var reader = WireReader(body)
        group = KeyExchangeMethod(rawValue: try reader.uint16())
        _ = try reader.uint16()
        data = Array(try reader.bytes(reader.remaining))
    }
}

/// An identity as IDi / IDr carry it (section 3.5).
public struct IKEIdentity: Sendable, Hashable, CustomStringConvertible {
    /// ID types used here: ID_IPV4_ADDR, ID_FQDN, ID_RFC822_ADDR.
    /// ID_IPV4_ADDR.
    public static let ipv4Address: UInt8 = 1
    /// ID_FQDN.
    public static let fqdn: UInt8 = 2
    /// ID_RFC822_ADDR.
    public static let rfc822Address: UInt8 = 3

    /// The ID type.
    public var type: UInt8
    /// The identification data.
    public var data: [UInt8]

    /// An identity from its parts.
    public init(type: UInt8, data: [UInt8]) {
        self.type = type
        self.data = data
    }

    /// An identity written as strongSwan reads one: `user@domain` is an RFC 822 address,
    /// `@name` or any other name an FQDN (without the `@`).
    public init(_ text: String) {
        if text.hasPrefix("@") {
            self.init(type: Self.fqdn, data: Array(text.utf8.dropFirst()))
        } else if text.contains("@") {
            self.init(type: Self.rfc822Address, data: Array(text.utf8))
        } else {
            self.init(type: Self.fqdn, data: Array(text.utf8))
        }
    }

    /// The payload body: type, three reserved bytes, data ("RestOfIDPayload", section 2.15).
    public var body: [UInt8] { [type, 0, 0, 0] + data }

    /// Parses an ID payload body.
    public init(body: [UInt8]) throws(IKEWireError) {
        guard body.count >= 5 else { throw .truncated }
        self.init(type: body[0], data: Array(body[4...]))
    }

    /// The data as text (names and addresses as strongSwan writes them), for logs: printable
    /// ASCII as it is, every other byte as `\xNN`, and at most 128 bytes. An initiator chooses
    /// these bytes before it authenticates, so newlines and terminal escapes must not reach a
    /// log line as they came (review L2).
    public var description: String {
        var text = ""
        for byte in data.prefix(128) {
            if (0x20..<0x7F).contains(byte), byte != UInt8(ascii: "\\") {
                text.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                text += "\\x" + String(byte >> 4, radix: 16) + String(byte & 0xF, radix: 16)
            }
        }
        return data.count > 128 ? text + "..." : text
    }
}

/// The AUTH payload (section 3.8).
public struct AuthenticationPayload: Sendable, Hashable {
    /// Shared Key Message Integrity Code.
    public static let sharedKeyMIC: UInt8 = 2

    /// The authentication method.
    public var method: UInt8
    /// The authentication data.
    public var data: [UInt8]

    /// An AUTH payload from its parts.
    public init(method: UInt8, data: [UInt8]) {
        self.method = method
        self.data = data
    }

    /// As a payload of the chain.
    public var payload: IKEPayload { IKEPayload(type: .authentication, body: [method, 0, 0, 0] + data) }

    /// Parses an AUTH payload body.
    public init(body: [UInt8]) throws(IKEWireError) {
        guard body.count >= 5 else { throw .truncated }
        self.init(method: body[0], data: Array(body[4...]))
    }
}

/// A TSi or TSr payload (section 3.13): IPv4 and IPv6 address ranges.
public struct TrafficSelectorPayload: Sendable, Hashable {
    /// The selectors, in the order sent.
    public var selectors: [TrafficSelector]

    /// A payload from its selectors.
    public init(selectors: [TrafficSelector]) { self.selectors = selectors }

    /// The body bytes.
    public var body: [UInt8] {
        // The responder answers at most ChildSA.maximumSelectors; a longer list is cut, never
        // a trap.
        var bytes: [UInt8] = [UInt8(clamping: selectors.count), 0, 0, 0]
        for selector in selectors.prefix(Int(UInt8.max)) {
            let v4 = selector.family == .ipv4
            bytes += [v4 ? 7 : 8, selector.ipProtocol]
            bytes.appendBigEndian(UInt16(v4 ? 16 : 40))
            bytes.appendBigEndian(selector.startPort)
            bytes.appendBigEndian(selector.endPort)
            for address in [selector.startAddress, selector.endAddress] {
                if v4 {
                    bytes.appendBigEndian(UInt32(truncatingIfNeeded: address.low))
                } else {
                    bytes.appendBigEndian(address.high)
                    bytes.appendBigEndian(address.low)
                }
            }
        }
        return bytes
    }

    /// Parses a TS payload body; throws for unknown selector types and invalid ranges.
    public init(body: [UInt8]) throws(IKEWireError) {
        var reader = WireReader(body)
        let count = Int(try reader.uint8())
        _ = try reader.bytes(3)
        var selectors: [TrafficSelector] = []
        for _ in 0..<count {
            let type = try reader.uint8()
            let ipProtocol = try reader.uint8()
            let length = try reader.uint16()
            let startPort = try reader.uint16()
            let endPort = try reader.uint16()
            let start: IPAddress
            let end: IPAddress
            switch (type, length) {
            case (7, 16):
                start = IPAddress(ipv4: try reader.uint32())
                end = IPAddress(ipv4: try reader.uint32())
            case (8, 40):
                start = IPAddress(ipv6High: try reader.uint64(), low: try reader.uint64())
                end = IPAddress(ipv6High: try reader.uint64(), low: try reader.uint64())
            default:
                throw .unexpectedMessage("traffic selector type \(type) of \(length) bytes")
            }
            do {
                selectors.append(try TrafficSelector(startAddress: start, endAddress: end, ipProtocol: ipProtocol, startPort: startPort, endPort: endPort))
            } catch {
                throw .unexpectedMessage("invalid traffic selector: \(error)")
            }
        }
        guard reader.isAtEnd else { throw .trailingBytes(reader.remaining) }
        self.selectors = selectors
    }
}

/// The Delete payload (section 3.11).
public struct DeletePayload: Sendable, Hashable {
    /// 1 for the IKE SA (no SPIs), 3 for ESP.
    public var protocolID: UInt8
    /// 4-byte SPIs for ESP.
    public var spis: [UInt32]

    /// A Delete payload from its parts.
    public init(protocolID: UInt8, spis: [UInt32]) {
        self.protocolID = protocolID
        self.spis = spis
    }

    /// As a payload of the chain.
    public var payload: IKEPayload {
        var body: [UInt8] = [protocolID, protocolID == IKEProposal.ike ? 0 : 4]
        body.appendBigEndian(UInt16(spis.count))
        for spi in spis { body.appendBigEndian(spi) }
        return IKEPayload(type: .delete, body: body)
    }

    /// Parses a Delete payload body (IKE SA, or 4-byte SPIs).
    public init(body: [UInt8]) throws(IKEWireError) {
        var reader = WireReader(body)
        protocolID = try reader.uint8()
        let spiSize = Int(try reader.uint8())
        let count = Int(try reader.uint16())
        guard spiSize == (protocolID == IKEProposal.ike ? 0 : 4) else { throw .invalidSPISize(spiSize) }
        var spis: [UInt32] = []
        if spiSize == 4 { for _ in 0..<count { spis.append(try reader.uint32()) } }
        guard reader.isAtEnd else { throw .trailingBytes(reader.remaining) }
        self.spis = spis
    }
}
