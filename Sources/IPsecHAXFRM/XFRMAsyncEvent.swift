/// An address as XFRM carries it (`xfrm_address_t`): 16 bytes, an IPv4 address in the first 4.
public struct XFRMAddress: Sendable, Hashable, CustomStringConvertible {
    /// `AF_INET` and `AF_INET6`, as XFRM's family fields say them.
    public static let ipv4Family: UInt16 = 2, ipv6Family: UInt16 = 10

    /// The 16 bytes, network order.
    public let bytes: [UInt8]

    /// An IPv4 address (`a.b.c.d` is `0xaabbccdd`).
    public init(ipv4: UInt32) {
        bytes = [UInt8(ipv4 >> 24), UInt8(ipv4 >> 16 & 0xFF), UInt8(ipv4 >> 8 & 0xFF), UInt8(ipv4 & 0xFF)] + Array(repeating: 0, count: 12)
    }

    /// An address from its 16 bytes; nil unless there are 16.
    public init?(bytes: [UInt8]) {
        guard bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    public var description: String { bytes.prefix(4).map(String.init).joined(separator: ".") + (bytes.dropFirst(4).allSatisfy { $0 == 0 } ? "" : "+v6") }
}

/// Which SA an XFRM message is about (`struct xfrm_usersa_id`, 24 bytes): destination, SPI,
/// family and protocol.
public struct XFRMSAIdentifier: Sendable, Hashable {
    public var destination: XFRMAddress
    /// The SPI (network order on the wire).
    public var spi: UInt32
    public var family: UInt16
    /// The IPsec protocol: 50 for ESP.
    public var ipsecProtocol: UInt8

    public init(destination: XFRMAddress, spi: UInt32, family: UInt16 = XFRMAddress.ipv4Family, ipsecProtocol: UInt8 = 50) {
        self.destination = destination
        self.spi = spi
        self.family = family
        self.ipsecProtocol = ipsecProtocol
    }
}

/// An SA's sequence numbers and replay window as the kernel keeps them.
public enum XFRMReplayState: Sendable, Hashable {
    /// `XFRMA_REPLAY_VAL` (`struct xfrm_replay_state`): windows of 32 packets or fewer without
    /// ESN. `bitmap` bit 0 is `inboundTop`.
    case legacy(outboundLastSent: UInt32, inboundTop: UInt32, bitmap: UInt32)
    /// `XFRMA_REPLAY_ESN_VAL` (`struct xfrm_replay_state_esn`): ESN, or windows above 32.
    case extended(XFRMExtendedReplayState)

    /// The last outbound sequence number used, all 64 bits.
    public var outboundLastSent: UInt64 {
        switch self {
        case .legacy(let outbound, _, _): UInt64(outbound)
        case .extended(let state): UInt64(state.outboundHigh) << 32 | UInt64(state.outbound)
        }
    }

    /// The highest inbound sequence number accepted, all 64 bits.
    public var inboundTop: UInt64 {
        switch self {
        case .legacy(_, let top, _): UInt64(top)
        case .extended(let state): UInt64(state.inboundHigh) << 32 | UInt64(state.inbound)
        }
    }
}

/// `struct xfrm_replay_state_esn`: 32-bit halves of both counters, the window's size in packets
/// and its bitmap in 32-bit words.
public struct XFRMExtendedReplayState: Sendable, Hashable {
    /// The largest bitmap the decoder accepts: 128 words, a 4,096-packet window (the kernel's
    /// largest is below this).
    public static let maximumBitmapWords = 128

    public var outbound: UInt32
    public var inbound: UInt32
    public var outboundHigh: UInt32
    public var inboundHigh: UInt32
    /// The window's size in packets.
    public var replayWindow: UInt32
    /// The window's bitmap, `bmp_len` words.
    public var bitmap: [UInt32]

    public init(outbound: UInt32, inbound: UInt32, outboundHigh: UInt32, inboundHigh: UInt32, replayWindow: UInt32, bitmap: [UInt32]) {
        self.outbound = outbound
        self.inbound = inbound
        self.outboundHigh = outboundHigh
        self.inboundHigh = inboundHigh
        self.replayWindow = replayWindow
        self.bitmap = bitmap
    }

    /// A state with the 64-bit counters given, a window of `replayWindow` packets and an empty
    /// bitmap of the size the kernel expects for it: what a takeover writes with NEWAE.
    public init(outboundLastSent: UInt64, inboundTop: UInt64, replayWindow: UInt32) {
        self.init(
            outbound: UInt32(truncatingIfNeeded: outboundLastSent), inbound: UInt32(truncatingIfNeeded: inboundTop),
            outboundHigh: UInt32(truncatingIfNeeded: outboundLastSent >> 32), inboundHigh: UInt32(truncatingIfNeeded: inboundTop >> 32),
            replayWindow: replayWindow, bitmap: Array(repeating: 0, count: Int((replayWindow + 31) / 32)))
    }
}

/// What kind of XFRM async event it is (`enum xfrm_ae_ftype_t`), as flags.
public struct XFRMAsyncEventFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `XFRM_AE_RTHR`: the replay threshold was crossed.
    public static let replayThreshold = XFRMAsyncEventFlags(rawValue: 1)
    /// `XFRM_AE_RVAL`: the replay values are included.
    public static let replayValues = XFRMAsyncEventFlags(rawValue: 2)
    /// `XFRM_AE_LVAL`: the lifetime values are included.
    public static let lifetimeValues = XFRMAsyncEventFlags(rawValue: 4)
    /// `XFRM_AE_ETHR`: the timer threshold expired.
    public static let timerThreshold = XFRMAsyncEventFlags(rawValue: 8)
    /// `XFRM_AE_CR`: caused by a replay update.
    public static let causedByReplay = XFRMAsyncEventFlags(rawValue: 16)
    /// `XFRM_AE_CE`: caused by the timer.
    public static let causedByTimer = XFRMAsyncEventFlags(rawValue: 32)
    /// `XFRM_AE_CU`: caused by a user (NEWAE) update.
    public static let causedByUser = XFRMAsyncEventFlags(rawValue: 64)
}

/// An SA's current lifetime counters (`struct xfrm_lifetime_cur`).
public struct XFRMLifetimeCurrent: Sendable, Hashable {
    public var bytes: UInt64
    public var packets: UInt64
    /// Seconds since the epoch the SA was added and first used.
    public var addTime: UInt64
    public var useTime: UInt64

    public init(bytes: UInt64, packets: UInt64, addTime: UInt64 = 0, useTime: UInt64 = 0) {
        self.bytes = bytes
        self.packets = packets
        self.addTime = addTime
        self.useTime = useTime
    }
}

/// XFRM's async event message (`XFRM_MSG_NEWAE` / `XFRM_MSG_GETAE`, `struct xfrm_aevent_id`
/// and its attributes): the counters the kernel keeps for one SA, read (GETAE, the
/// `XFRMNLGRP_AEVENTS` multicast group) or written (NEWAE with `NLM_F_REPLACE`).
public struct XFRMAsyncEvent: Sendable, Hashable {
    /// The attribute types this message uses (`enum xfrm_attr_type_t`).
    public enum Attribute {
        public static let lifetimeValue: UInt16 = 9
        public static let replayValue: UInt16 = 10
        public static let replayThreshold: UInt16 = 11
        public static let timerThreshold: UInt16 = 12
        public static let extendedReplayValue: UInt16 = 23
    }

    /// `struct xfrm_aevent_id`'s size.
    public static let fixedSize = 48

    public var sa: XFRMSAIdentifier
    public var source: XFRMAddress
    public var flags: XFRMAsyncEventFlags
    public var requestID: UInt32
    public var replay: XFRMReplayState?
    public var lifetime: XFRMLifetimeCurrent?
    /// Packets between replay events (`XFRMA_REPLAY_THRESH`).
    public var replayThreshold: UInt32?
    /// The timer threshold (`XFRMA_ETIMER_THRESH`): NEWAE takes it in jiffies, GETAE reports it
    /// in 100 ms units (a kernel quirk seen on 6.1).
    public var timerThreshold: UInt32?

    public init(
        sa: XFRMSAIdentifier, source: XFRMAddress, flags: XFRMAsyncEventFlags = [], requestID: UInt32 = 0, replay: XFRMReplayState? = nil,
        lifetime: XFRMLifetimeCurrent? = nil, replayThreshold: UInt32? = nil, timerThreshold: UInt32? = nil
    ) {
        self.sa = sa
        self.source = source
        self.flags = flags
        self.requestID = requestID
        self.replay = replay
        self.lifetime = lifetime
        self.replayThreshold = replayThreshold
        self.timerThreshold = timerThreshold
    }

    /// The whole netlink message: a NEWAE that sets the counters (flags `.request, .replace`), or
    /// a GETAE that asks for them (`.request`; only the SA, source and flags matter).
    public func encode(type: NetlinkMessageType, flags: NetlinkFlags, sequence: UInt32) -> [UInt8] {
        var body = NetlinkWriter()
        body.raw(sa.destination.bytes)
        body.bigEndian32(sa.spi)
        body.u16(sa.family)
        body.u8(sa.ipsecProtocol)
        body.zeros(1)
        body.raw(source.bytes)
        body.u32(self.flags.rawValue)
        body.u32(requestID)
        switch replay {
        case .legacy(let outbound, let top, let bitmap)?:
            var value = NetlinkWriter()
            value.u32(outbound)
            value.u32(top)
            value.u32(bitmap)
            body.attribute(NetlinkAttribute(type: Attribute.replayValue, payload: value.bytes))
        case .extended(let state)?:
            body.attribute(NetlinkAttribute(type: Attribute.extendedReplayValue, payload: state.encoded))
        case nil:
            break
        }
        if let lifetime {
            var value = NetlinkWriter()
            value.u64(lifetime.bytes)
            value.u64(lifetime.packets)
            value.u64(lifetime.addTime)
            value.u64(lifetime.useTime)
            body.attribute(NetlinkAttribute(type: Attribute.lifetimeValue, payload: value.bytes))
        }
        if let replayThreshold {
            var value = NetlinkWriter()
            value.u32(replayThreshold)
            body.attribute(NetlinkAttribute(type: Attribute.replayThreshold, payload: value.bytes))
        }
        if let timerThreshold {
            var value = NetlinkWriter()
            value.u32(timerThreshold)
            body.attribute(NetlinkAttribute(type: Attribute.timerThreshold, payload: value.bytes))
        }
        return Netlink.message(type: type, flags: flags, sequence: sequence, body: body.bytes)
    }

    /// The replay state of an `XFRMA_REPLAY_VAL` or `XFRMA_REPLAY_ESN_VAL` attribute.
    static func replayState(_ attribute: NetlinkAttribute) throws(XFRMCodecError) -> XFRMReplayState {
        guard attribute.type == Attribute.replayValue else { return .extended(try XFRMExtendedReplayState(attribute: attribute.payload)) }
        guard attribute.payload.count == 12 else { throw .invalidLength("XFRMA_REPLAY_VAL", length: attribute.payload.count) }
        var value = NetlinkReader(attribute.payload[...], what: "XFRMA_REPLAY_VAL")
        return .legacy(outboundLastSent: try value.u32(), inboundTop: try value.u32(), bitmap: try value.u32())
    }

    /// Decodes the payload of a NEWAE message (the header cut off by `Netlink.messages(in:)`).
    /// Attributes it does not know are skipped; one it knows with the wrong size, or a bitmap
    /// longer than ``XFRMExtendedReplayState/maximumBitmapWords``, is refused.
    public init(payload: ArraySlice<UInt8>) throws(XFRMCodecError) {
        var reader = NetlinkReader(payload, what: "xfrm_aevent_id")
        guard reader.remaining >= Self.fixedSize else { throw .truncated("xfrm_aevent_id", need: Self.fixedSize, have: reader.remaining) }
        let destination = XFRMAddress(bytes: Array(try reader.take(16)))!
        let spi = try reader.bigEndian32()
        let family = try reader.u16()
        let ipsecProtocol = try reader.u8()
        _ = try reader.take(1)
        let source = XFRMAddress(bytes: Array(try reader.take(16)))!
        let flags = XFRMAsyncEventFlags(rawValue: try reader.u32())
        let requestID = try reader.u32()
        self.init(
            sa: XFRMSAIdentifier(destination: destination, spi: spi, family: family, ipsecProtocol: ipsecProtocol), source: source, flags: flags,
            requestID: requestID)
        for attribute in try Netlink.attributes(in: payload[(payload.startIndex + Self.fixedSize)...]) {
            var value = NetlinkReader(attribute.payload[...], what: "xfrm attribute \(attribute.type)")
            switch attribute.type {
            case Attribute.replayValue, Attribute.extendedReplayValue:
                replay = try Self.replayState(attribute)
            case Attribute.lifetimeValue:
                guard attribute.payload.count == 32 else { throw .invalidLength("XFRMA_LTIME_VAL", length: attribute.payload.count) }
                lifetime = XFRMLifetimeCurrent(bytes: try value.u64(), packets: try value.u64(), addTime: try value.u64(), useTime: try value.u64())
            case Attribute.replayThreshold:
                guard attribute.payload.count == 4 else { throw .invalidLength("XFRMA_REPLAY_THRESH", length: attribute.payload.count) }
                replayThreshold = try value.u32()
            case Attribute.timerThreshold:
                guard attribute.payload.count == 4 else { throw .invalidLength("XFRMA_ETIMER_THRESH", length: attribute.payload.count) }
                timerThreshold = try value.u32()
            default:
                continue
            }
        }
    }
}

extension XFRMAsyncEvent {
    /// `XFRMA_SA`: the SA whole (`struct xfrm_usersa_info`) inside a deletion notice.
    public static let saAttribute: UInt16 = 6
    /// `struct xfrm_usersa_id`'s size: a deletion notice starts with it.
    public static let deletionNoticeHeaderSize = 24

    /// Decodes the kernel's notice that an SA was deleted (`XFRM_MSG_DELSA` on the
    /// `XFRMNLGRP_SA` group: `struct xfrm_usersa_id`, then `XFRMA_SA` with the SA as the
    /// deletion left it, then its replay state among its other attributes) as the counters it
    /// held: its sequence numbers and window, and its lifetime counters. The kernel builds the
    /// notice after the SA stopped numbering packets, so these are its last counters.
    /// Attributes it does not use (the key among them) are skipped; a notice without `XFRMA_SA`,
    /// or whose `XFRMA_SA` names another SA, is refused.
    public init(deletionNotice payload: ArraySlice<UInt8>) throws(XFRMCodecError) {
        var reader = NetlinkReader(payload, what: "xfrm_usersa_id")
        guard reader.remaining >= Self.deletionNoticeHeaderSize else {
            throw .truncated("xfrm_usersa_id", need: Self.deletionNoticeHeaderSize, have: reader.remaining)
        }
        let destination = XFRMAddress(bytes: Array(try reader.take(16)))!
        let spi = try reader.bigEndian32()
        let family = try reader.u16()
        let ipsecProtocol = try reader.u8()
        let sa = XFRMSAIdentifier(destination: destination, spi: spi, family: family, ipsecProtocol: ipsecProtocol)
        var whole: XFRMState?
        var replay: XFRMReplayState?
        var attributes = try Netlink.attributes(in: payload[(payload.startIndex + Self.deletionNoticeHeaderSize)...])
        // Among them the SA's key (XFRMA_ALG_AEAD): no copy of it stays behind.
        defer { for index in attributes.indices { attributes[index].payload.withUnsafeMutableBytes { _ = $0.initializeMemory(as: UInt8.self, repeating: 0) } } }
        for attribute in attributes {
            switch attribute.type {
            case Self.saAttribute:
                guard attribute.payload.count == XFRMState.fixedSize else { throw .invalidLength("XFRMA_SA", length: attribute.payload.count) }
                whole = try XFRMState(payload: attribute.payload[...])
            case Attribute.replayValue, Attribute.extendedReplayValue:
                replay = try Self.replayState(attribute)
            default:
                continue
            }
        }
        guard let whole else { throw .truncated("XFRMA_SA", need: XFRMState.fixedSize, have: 0) }
        guard whole.sa == sa else { throw .invalidValue("XFRMA_SA of another SA than the notice's, SPI", UInt64(whole.sa.spi)) }
        self.init(sa: sa, source: whole.source, flags: [.replayValues, .lifetimeValues], requestID: whole.requestID, replay: replay, lifetime: whole.current)
    }
}
