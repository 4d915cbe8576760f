/// A traffic selector as XFRM carries it (`struct xfrm_selector`, 56 bytes); an SA's selector
/// may be all zero (any).
public struct XFRMSelector: Sendable, Hashable {
    public var destination: XFRMAddress
    public var source: XFRMAddress
    /// Ports and their masks (network order on the wire).
    public var destinationPort: UInt16, destinationPortMask: UInt16, sourcePort: UInt16, sourcePortMask: UInt16
    public var family: UInt16
    public var destinationPrefixLength: UInt8, sourcePrefixLength: UInt8
    /// The upper-layer protocol (0: any).
    public var upperLayerProtocol: UInt8
    public var interfaceIndex: Int32
    public var user: UInt32

    /// A selector that matches everything of `family`.
    public static func any(family: UInt16 = XFRMAddress.ipv4Family) -> XFRMSelector {
        XFRMSelector(
            destination: XFRMAddress(ipv4: 0), source: XFRMAddress(ipv4: 0), destinationPort: 0, destinationPortMask: 0, sourcePort: 0,
            sourcePortMask: 0, family: family, destinationPrefixLength: 0, sourcePrefixLength: 0, upperLayerProtocol: 0, interfaceIndex: 0, user: 0)
    }

    /// `struct xfrm_selector` (56 bytes; ports in network order, the rest in host order).
    func write(into body: inout NetlinkWriter) {
        body.raw(destination.bytes)
        body.raw(source.bytes)
        for port in [destinationPort, destinationPortMask, sourcePort, sourcePortMask] {
            body.bytes16BigEndian(port)
        }
        body.u16(family)
        body.u8(destinationPrefixLength)
        body.u8(sourcePrefixLength)
        body.u8(upperLayerProtocol)
        body.zeros(3)
        body.u32(UInt32(bitPattern: interfaceIndex))
        body.u32(user)
    }

    public init(
        destination: XFRMAddress, source: XFRMAddress, destinationPort: UInt16, destinationPortMask: UInt16, sourcePort: UInt16, sourcePortMask: UInt16,
        family: UInt16, destinationPrefixLength: UInt8, sourcePrefixLength: UInt8, upperLayerProtocol: UInt8, interfaceIndex: Int32, user: UInt32
    ) {
        self.destination = destination
        self.source = source
        self.destinationPort = destinationPort
        self.destinationPortMask = destinationPortMask
        self.sourcePort = sourcePort
        self.sourcePortMask = sourcePortMask
        self.family = family
        self.destinationPrefixLength = destinationPrefixLength
        self.sourcePrefixLength = sourcePrefixLength
        self.upperLayerProtocol = upperLayerProtocol
        self.interfaceIndex = interfaceIndex
        self.user = user
    }
}

/// An SA's lifetime limits (`struct xfrm_lifetime_cfg`); `UInt64.max` is "none" (`XFRM_INF`).
public struct XFRMLifetimeLimits: Sendable, Hashable {
    public var softBytes = UInt64.max, hardBytes = UInt64.max
    public var softPackets = UInt64.max, hardPackets = UInt64.max
    /// Seconds after the SA was added, and after its first use.
    public var softAddSeconds: UInt64 = 0, hardAddSeconds: UInt64 = 0, softUseSeconds: UInt64 = 0, hardUseSeconds: UInt64 = 0

    /// No limit.
    public init() {}

    /// `struct xfrm_lifetime_cfg` (64 bytes).
    func write(into body: inout NetlinkWriter) {
        for limit in [softBytes, hardBytes, softPackets, hardPackets, softAddSeconds, hardAddSeconds, softUseSeconds, hardUseSeconds] {
            body.u64(limit)
        }
    }
}

/// An AEAD transform (`struct xfrm_algo_aead`): the kernel's algorithm name and the key with its
/// salt. The key is a secret: never printed.
public struct XFRMAEADAlgorithm: Sendable, Hashable, CustomStringConvertible {
    /// RFC 7634 ChaCha20-Poly1305 as the kernel names it (32-byte key, 4-byte salt).
    public static let chaCha20Poly1305 = "rfc7539esp(chacha20,poly1305)"
    /// RFC 4106 AES-GCM (16, 24 or 32-byte key, 4-byte salt).
    public static let aesGCM = "rfc4106(gcm(aes))"

    /// The algorithm's name, at most 63 bytes.
    public var name: String
    /// Key and salt.
    public var key: [UInt8]
    /// The ICV's length in bits (128 for both above).
    public var icvBits: UInt32

    public init(name: String, key: [UInt8], icvBits: UInt32 = 128) {
        self.name = name
        self.key = key
        self.icvBits = icvBits
    }

    public var description: String { "\(name) (\(key.count)-byte key, redacted)" }
}

/// ESP in UDP (`struct xfrm_encap_tmpl`, type `UDP_ENCAP_ESPINUDP`).
public struct XFRMEncapsulation: Sendable, Hashable {
    /// `UDP_ENCAP_ESPINUDP`.
    public static let espInUDP: UInt16 = 2

    public var type: UInt16
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    /// The original address (for NAT-T checksum fixes; zero otherwise).
    public var originalAddress: XFRMAddress

    public init(type: UInt16 = espInUDP, sourcePort: UInt16, destinationPort: UInt16, originalAddress: XFRMAddress = XFRMAddress(ipv4: 0)) {
        self.type = type
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.originalAddress = originalAddress
    }
}

/// One SA as XFRM's NEWSA, UPDSA and GETSA messages carry it (`struct xfrm_usersa_info`, 224
/// bytes, and its attributes): what an IKE stack installs, and what a dump reads back.
public struct XFRMState: Sendable, Hashable {
    /// The attribute types this message uses.
    public enum Attribute {
        public static let encapsulation: UInt16 = 4
        public static let aead: UInt16 = 18
        public static let extendedReplayValue: UInt16 = XFRMAsyncEvent.Attribute.extendedReplayValue
    }

    /// `struct xfrm_usersa_info`'s size.
    public static let fixedSize = 224
    /// `XFRM_MODE_TRANSPORT` and `XFRM_MODE_TUNNEL`.
    public static let transportMode: UInt8 = 0, tunnelMode: UInt8 = 1
    /// `XFRM_STATE_ESN`.
    public static let extendedSequenceNumbersFlag: UInt8 = 128

    public var selector: XFRMSelector
    public var sa: XFRMSAIdentifier
    public var source: XFRMAddress
    public var limits: XFRMLifetimeLimits
    public var current: XFRMLifetimeCurrent
    public var requestID: UInt32
    public var mode: UInt8
    /// The legacy window (32 at most); 0 with an extended replay state.
    public var replayWindow: UInt8
    public var flags: UInt8
    public var aead: XFRMAEADAlgorithm?
    public var encapsulation: XFRMEncapsulation?
    /// With ESN or a window above 32: the counters and window the SA starts with (a takeover
    /// can install an SA with the plan's counters at once).
    public var replay: XFRMExtendedReplayState?
    /// Packets between the SA's async events (`XFRMA_REPLAY_THRESH`; nil: the kernel's
    /// `xfrm_aevent_rseqth`, 2).
    public var replayThreshold: UInt32?
    /// The SA's async event timer in jiffies (`XFRMA_ETIMER_THRESH`, as NEWAE takes it; nil: the
    /// kernel's `xfrm_aevent_etime`, 1 s).
    public var timerThreshold: UInt32?

    public init(
        selector: XFRMSelector = .any(), sa: XFRMSAIdentifier, source: XFRMAddress, limits: XFRMLifetimeLimits = XFRMLifetimeLimits(),
        current: XFRMLifetimeCurrent = XFRMLifetimeCurrent(bytes: 0, packets: 0), requestID: UInt32 = 0, mode: UInt8 = XFRMState.tunnelMode,
        replayWindow: UInt8 = 0, flags: UInt8 = 0, aead: XFRMAEADAlgorithm? = nil, encapsulation: XFRMEncapsulation? = nil,
        replay: XFRMExtendedReplayState? = nil
    ) {
        self.selector = selector
        self.sa = sa
        self.source = source
        self.limits = limits
        self.current = current
        self.requestID = requestID
        self.mode = mode
        self.replayWindow = replayWindow
        self.flags = flags
        self.aead = aead
        self.encapsulation = encapsulation
        self.replay = replay
    }

    /// The whole netlink message (NEWSA with `.request, .create, .exclusive`, or UPDSA). It holds
    /// the key: wipe it once sent.
    public func encode(type: NetlinkMessageType = .newSA, flags: NetlinkFlags = [.request, .acknowledge, .create, .exclusive], sequence: UInt32) -> [UInt8] {
        var body = NetlinkWriter()
        selector.write(into: &body)
        body.raw(sa.destination.bytes)
        body.bigEndian32(sa.spi)
        body.u8(sa.ipsecProtocol)
        body.zeros(3)
        body.raw(source.bytes)
        limits.write(into: &body)
        for value in [current.bytes, current.packets, current.addTime, current.useTime] { body.u64(value) }
        body.zeros(12)  // struct xfrm_stats: the kernel's
        body.zeros(4)  // seq
        body.u32(requestID)
        body.u16(sa.family)
        body.u8(mode)
        body.u8(replayWindow)
        body.u8(self.flags)
        body.zeros(7)
        if let aead {
            var value = NetlinkWriter()
            var name = Array(aead.name.utf8.prefix(63))
            name += Array(repeating: 0, count: 64 - name.count)
            value.raw(name)
            value.u32(UInt32(clamping: aead.key.count * 8))
            value.u32(aead.icvBits)
            value.raw(aead.key)
            body.attribute(NetlinkAttribute(type: Attribute.aead, payload: value.bytes))
        }
        if let encapsulation {
            var value = NetlinkWriter()
            value.u16(encapsulation.type)
            value.bytes16BigEndian(encapsulation.sourcePort)
            value.bytes16BigEndian(encapsulation.destinationPort)
            value.zeros(2)
            value.raw(encapsulation.originalAddress.bytes)
            body.attribute(NetlinkAttribute(type: Attribute.encapsulation, payload: value.bytes))
        }
        if let replay {
            body.attribute(NetlinkAttribute(type: Attribute.extendedReplayValue, payload: replay.encoded))
        }
        for (type, threshold) in [(XFRMAsyncEvent.Attribute.replayThreshold, replayThreshold), (XFRMAsyncEvent.Attribute.timerThreshold, timerThreshold)] {
            guard let threshold else { continue }
            var value = NetlinkWriter()
            value.u32(threshold)
            body.attribute(NetlinkAttribute(type: type, payload: value.bytes))
        }
        return Netlink.message(type: type, flags: flags, sequence: sequence, body: body.bytes)
    }

    /// Decodes the payload of a NEWSA message (a GETSA answer or a dump's entry). Attributes it
    /// does not know are skipped; one it knows with the wrong size is refused.
    public init(payload: ArraySlice<UInt8>) throws(XFRMCodecError) {
        var reader = NetlinkReader(payload, what: "xfrm_usersa_info")
        guard reader.remaining >= Self.fixedSize else { throw .truncated("xfrm_usersa_info", need: Self.fixedSize, have: reader.remaining) }
        let selectorDestination = XFRMAddress(bytes: Array(try reader.take(16)))!
        let selectorSource = XFRMAddress(bytes: Array(try reader.take(16)))!
        let ports = [try reader.bigEndian16(), try reader.bigEndian16(), try reader.bigEndian16(), try reader.bigEndian16()]
        let selectorFamily = try reader.u16()
        let prefixes = (try reader.u8(), try reader.u8())
        let upper = try reader.u8()
        _ = try reader.take(3)
        let selector = XFRMSelector(
            destination: selectorDestination, source: selectorSource, destinationPort: ports[0], destinationPortMask: ports[1], sourcePort: ports[2],
            sourcePortMask: ports[3], family: selectorFamily, destinationPrefixLength: prefixes.0, sourcePrefixLength: prefixes.1, upperLayerProtocol: upper,
            interfaceIndex: Int32(bitPattern: try reader.u32()), user: try reader.u32())
        let destination = XFRMAddress(bytes: Array(try reader.take(16)))!
        let spi = try reader.bigEndian32()
        let ipsecProtocol = try reader.u8()
        _ = try reader.take(3)
        let source = XFRMAddress(bytes: Array(try reader.take(16)))!
        var limits = XFRMLifetimeLimits()
        limits.softBytes = try reader.u64()
        limits.hardBytes = try reader.u64()
        limits.softPackets = try reader.u64()
        limits.hardPackets = try reader.u64()
        limits.softAddSeconds = try reader.u64()
        limits.hardAddSeconds = try reader.u64()
        limits.softUseSeconds = try reader.u64()
        limits.hardUseSeconds = try reader.u64()
        let current = XFRMLifetimeCurrent(bytes: try reader.u64(), packets: try reader.u64(), addTime: try reader.u64(), useTime: try reader.u64())
        _ = try reader.take(16)  // stats, seq
        let requestID = try reader.u32()
        let family = try reader.u16()
        let mode = try reader.u8()
        let window = try reader.u8()
        let flags = try reader.u8()
        self.init(
            selector: selector, sa: XFRMSAIdentifier(destination: destination, spi: spi, family: family, ipsecProtocol: ipsecProtocol), source: source,
            limits: limits, current: current, requestID: requestID, mode: mode, replayWindow: window, flags: flags)
        for attribute in try Netlink.attributes(in: payload[(payload.startIndex + Self.fixedSize)...]) {
            var value = NetlinkReader(attribute.payload[...], what: "xfrm attribute \(attribute.type)")
            switch attribute.type {
            case Attribute.aead:
                guard attribute.payload.count >= 72 else { throw .truncated("XFRMA_ALG_AEAD", need: 72, have: attribute.payload.count) }
                let name = try value.take(64)
                let keyBits = Int(try value.u32())
                let icvBits = try value.u32()
                guard keyBits % 8 == 0, attribute.payload.count == 72 + keyBits / 8 else { throw .invalidLength("XFRMA_ALG_AEAD", length: attribute.payload.count) }
                // The kernel's algorithm names are ASCII and NUL-terminated: anything else is not
                // one, and would not survive being read back.
                guard let end = name.firstIndex(of: 0) else { throw .invalidValue("XFRMA_ALG_AEAD name without NUL", 64) }
                if let bad = name[..<end].first(where: { $0 < 0x20 || $0 > 0x7E }) { throw .invalidValue("XFRMA_ALG_AEAD name byte", UInt64(bad)) }
                aead = XFRMAEADAlgorithm(name: String(decoding: name[..<end], as: UTF8.self), key: Array(try value.take(keyBits / 8)), icvBits: icvBits)
            case Attribute.encapsulation:
                guard attribute.payload.count == 24 else { throw .invalidLength("XFRMA_ENCAP", length: attribute.payload.count) }
                let type = try value.u16()
                let sourcePort = try value.bigEndian16()
                let destinationPort = try value.bigEndian16()
                _ = try value.take(2)
                encapsulation = XFRMEncapsulation(
                    type: type, sourcePort: sourcePort, destinationPort: destinationPort, originalAddress: XFRMAddress(bytes: Array(try value.take(16)))!)
            case Attribute.extendedReplayValue:
                replay = try XFRMExtendedReplayState(attribute: attribute.payload)
            default:
                continue
            }
        }
    }
}

extension XFRMExtendedReplayState {
    /// The `XFRMA_REPLAY_ESN_VAL` payload.
    var encoded: [UInt8] {
        var value = NetlinkWriter()
        value.u32(UInt32(bitmap.count))
        value.u32(outbound)
        value.u32(inbound)
        value.u32(outboundHigh)
        value.u32(inboundHigh)
        value.u32(replayWindow)
        for word in bitmap { value.u32(word) }
        return value.bytes
    }

    /// Decodes an `XFRMA_REPLAY_ESN_VAL` payload.
    init(attribute payload: [UInt8]) throws(XFRMCodecError) {
        guard payload.count >= 24 else { throw .truncated("XFRMA_REPLAY_ESN_VAL", need: 24, have: payload.count) }
        var value = NetlinkReader(payload[...], what: "XFRMA_REPLAY_ESN_VAL")
        let words = Int(try value.u32())
        guard words <= Self.maximumBitmapWords else { throw .invalidValue("XFRMA_REPLAY_ESN_VAL bmp_len", UInt64(words)) }
        guard payload.count == 24 + 4 * words else { throw .invalidLength("XFRMA_REPLAY_ESN_VAL", length: payload.count) }
        let outbound = try value.u32(), inbound = try value.u32(), outboundHigh = try value.u32(), inboundHigh = try value.u32()
        let window = try value.u32()
        var bitmap: [UInt32] = []
        for _ in 0..<words { bitmap.append(try value.u32()) }
        self.init(outbound: outbound, inbound: inbound, outboundHigh: outboundHigh, inboundHigh: inboundHigh, replayWindow: window, bitmap: bitmap)
    }
}
