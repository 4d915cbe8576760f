/// Why bytes from a netlink socket (the kernel's XFRM answers and events) were refused. A
/// struct over a private reason, so that reasons can be added without breaking a caller's
/// `switch`; a decoder that throws it has changed nothing.
public struct XFRMCodecError: Error, Sendable, Hashable, CustomStringConvertible {
    private enum Reason: Sendable, Hashable {
        case truncated(what: String, need: Int, have: Int)
        case invalidLength(what: String, length: Int)
        case unexpectedType(UInt16)
        case invalidValue(what: String, value: UInt64)
        case kernelRefused(errno: Int32)
    }
    private let reason: Reason

    /// Fewer bytes than `what` needs.
    public static func truncated(_ what: String, need: Int, have: Int) -> XFRMCodecError { .init(reason: .truncated(what: what, need: need, have: have)) }
    /// A length field that contradicts the bytes around it.
    public static func invalidLength(_ what: String, length: Int) -> XFRMCodecError { .init(reason: .invalidLength(what: what, length: length)) }
    /// A netlink message of a type the decoder was not asked for.
    public static func unexpectedType(_ type: UInt16) -> XFRMCodecError { .init(reason: .unexpectedType(type)) }
    /// A field outside what the kernel can send.
    public static func invalidValue(_ what: String, _ value: UInt64) -> XFRMCodecError { .init(reason: .invalidValue(what: what, value: value)) }
    /// The kernel answered a request with an error (`NLMSG_ERROR`, a positive errno).
    public static func kernelRefused(errno: Int32) -> XFRMCodecError { .init(reason: .kernelRefused(errno: errno)) }

    /// The errno of a refusal by the kernel, nil for a decoding error.
    public var kernelErrno: Int32? { if case .kernelRefused(let errno) = reason { errno } else { nil } }

    public var description: String {
        switch reason {
        case .truncated(let what, let need, let have): "\(what): \(need) bytes needed, \(have) there"
        case .invalidLength(let what, let length): "\(what): length \(length) does not fit"
        case .unexpectedType(let type): "unexpected netlink message type \(type)"
        case .invalidValue(let what, let value): "\(what): \(value) is out of range"
        case .kernelRefused(let errno): "the kernel refused the request: errno \(errno)"
        }
    }
}

/// A netlink message type: XFRM's (`linux/xfrm.h`) and netlink's own control messages.
public struct NetlinkMessageType: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// `NLMSG_ERROR`: an error, or with errno 0 an acknowledgement.
    public static let error = NetlinkMessageType(rawValue: 2)
    /// `NLMSG_DONE`: the end of a dump.
    public static let done = NetlinkMessageType(rawValue: 3)
    /// `XFRM_MSG_NEWSA`.
    public static let newSA = NetlinkMessageType(rawValue: 0x10)
    /// `XFRM_MSG_DELSA`.
    public static let deleteSA = NetlinkMessageType(rawValue: 0x11)
    /// `XFRM_MSG_GETSA`.
    public static let getSA = NetlinkMessageType(rawValue: 0x12)
    /// `XFRM_MSG_NEWPOLICY`.
    public static let newPolicy = NetlinkMessageType(rawValue: 0x13)
    /// `XFRM_MSG_DELPOLICY`.
    public static let deletePolicy = NetlinkMessageType(rawValue: 0x14)
    /// `XFRM_MSG_UPDPOLICY`: adds a policy or replaces the one with the same selector and
    /// direction.
    public static let updatePolicy = NetlinkMessageType(rawValue: 0x19)
    /// `XFRM_MSG_UPDSA`.
    public static let updateSA = NetlinkMessageType(rawValue: 0x1A)
    /// `XFRM_MSG_NEWAE`: an SA's counters, set by a request (with `NLM_F_REPLACE`) or reported by
    /// the kernel (a GETAE answer, an `XFRMNLGRP_AEVENTS` event).
    public static let newAsyncEvent = NetlinkMessageType(rawValue: 0x1E)
    /// `XFRM_MSG_GETAE`: asks for an SA's counters.
    public static let getAsyncEvent = NetlinkMessageType(rawValue: 0x1F)

    public var description: String { "netlink type \(rawValue)" }
}

/// Netlink message flags (`NLM_F_*`).
public struct NetlinkFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// `NLM_F_REQUEST`.
    public static let request = NetlinkFlags(rawValue: 0x1)
    /// `NLM_F_MULTI`: part of a multipart answer.
    public static let multipart = NetlinkFlags(rawValue: 0x2)
    /// `NLM_F_ACK`: answer with an acknowledgement.
    public static let acknowledge = NetlinkFlags(rawValue: 0x4)
    /// `NLM_F_REPLACE`: NEWAE needs it to change a live SA's counters.
    public static let replace = NetlinkFlags(rawValue: 0x100)
    /// `NLM_F_EXCL`.
    public static let exclusive = NetlinkFlags(rawValue: 0x200)
    /// `NLM_F_CREATE`.
    public static let create = NetlinkFlags(rawValue: 0x400)
}

/// The 16-byte header of every netlink message (`struct nlmsghdr`, host byte order).
public struct NetlinkHeader: Sendable, Hashable {
    /// The header's size.
    public static let size = 16
    /// The message's length, header included.
    public var length: UInt32
    public var type: NetlinkMessageType
    public var flags: NetlinkFlags
    /// The request's sequence number, echoed in the answer.
    public var sequence: UInt32
    /// The sender's port (0: the kernel).
    public var portID: UInt32

    public init(length: UInt32, type: NetlinkMessageType, flags: NetlinkFlags, sequence: UInt32, portID: UInt32 = 0) {
        self.length = length
        self.type = type
        self.flags = flags
        self.sequence = sequence
        self.portID = portID
    }
}

/// One netlink attribute (`struct nlattr`): a type and its payload, padded to 4 bytes on the wire.
public struct NetlinkAttribute: Sendable, Hashable {
    /// The attribute's type, without the nested and byte-order flag bits.
    public var type: UInt16
    public var payload: [UInt8]

    public init(type: UInt16, payload: [UInt8]) {
        self.type = type
        self.payload = payload
    }
}

/// Host-order (little-endian on the machines this runs on) reads and writes of the fixed
/// structures, bounds-checked: nothing here traps on input from the kernel.
struct NetlinkWriter {
    private(set) var bytes: [UInt8] = []

    mutating func u8(_ value: UInt8) { bytes.append(value) }
    mutating func u16(_ value: UInt16) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
    mutating func u32(_ value: UInt32) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
    mutating func u64(_ value: UInt64) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
    mutating func bigEndian32(_ value: UInt32) { withUnsafeBytes(of: value.bigEndian) { bytes += $0 } }
    mutating func bytes16BigEndian(_ value: UInt16) { withUnsafeBytes(of: value.bigEndian) { bytes += $0 } }
    mutating func raw(_ value: [UInt8]) { bytes += value }
    mutating func zeros(_ count: Int) { bytes += repeatElement(0, count: count) }
    /// Pads to the next multiple of 4 (`NLMSG_ALIGN`, `NLA_ALIGN`).
    mutating func align() { zeros((4 - bytes.count % 4) % 4) }

    /// Appends `attribute` with its header and padding.
    mutating func attribute(_ attribute: NetlinkAttribute) {
        u16(UInt16(clamping: 4 + attribute.payload.count))
        u16(attribute.type)
        raw(attribute.payload)
        align()
    }
}

struct NetlinkReader {
    let bytes: ArraySlice<UInt8>
    private(set) var offset: Int
    let what: String

    init(_ bytes: ArraySlice<UInt8>, what: String) {
        self.bytes = bytes
        offset = bytes.startIndex
        self.what = what
    }

    var remaining: Int { bytes.endIndex - offset }

    mutating func take(_ count: Int) throws(XFRMCodecError) -> ArraySlice<UInt8> {
        guard count >= 0, remaining >= count else { throw .truncated(what, need: count, have: max(remaining, 0)) }
        defer { offset += count }
        return bytes[offset..<offset + count]
    }

    mutating func u8() throws(XFRMCodecError) -> UInt8 { try take(1).first! }
    mutating func u16() throws(XFRMCodecError) -> UInt16 { UInt16(try littleEndian(2)) }
    mutating func u32() throws(XFRMCodecError) -> UInt32 { UInt32(try littleEndian(4)) }
    mutating func u64() throws(XFRMCodecError) -> UInt64 { try littleEndian(8) }
    mutating func bigEndian32() throws(XFRMCodecError) -> UInt32 { try take(4).reduce(0) { $0 << 8 | UInt32($1) } }
    mutating func bigEndian16() throws(XFRMCodecError) -> UInt16 { try take(2).reduce(0) { $0 << 8 | UInt16($1) } }

    private mutating func littleEndian(_ count: Int) throws(XFRMCodecError) -> UInt64 {
        try take(count).reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }
}

extension NetlinkHeader {
    /// Reads a header and checks its length against the bytes there.
    static func read(_ reader: inout NetlinkReader) throws(XFRMCodecError) -> NetlinkHeader {
        let available = reader.remaining
        let length = try reader.u32()
        let header = NetlinkHeader(
            length: length, type: NetlinkMessageType(rawValue: try reader.u16()), flags: NetlinkFlags(rawValue: try reader.u16()),
            sequence: try reader.u32(), portID: try reader.u32())
        guard Int(length) >= size, Int(length) <= available else { throw .invalidLength("netlink message", length: Int(length)) }
        return header
    }

    func write(into writer: inout NetlinkWriter) {
        writer.u32(length)
        writer.u16(type.rawValue)
        writer.u16(flags.rawValue)
        writer.u32(sequence)
        writer.u32(portID)
    }
}

/// The netlink layer: messages cut from a datagram, attributes cut from a message.
public enum Netlink {
    /// A whole message: the header (its length counted) and `body`.
    static func message(type: NetlinkMessageType, flags: NetlinkFlags, sequence: UInt32, body: [UInt8]) -> [UInt8] {
        var message = NetlinkWriter()
        NetlinkHeader(length: UInt32(NetlinkHeader.size + body.count), type: type, flags: flags, sequence: sequence).write(into: &message)
        message.raw(body)
        return message.bytes
    }

    /// The messages in one datagram from a netlink socket, each as its header and its payload
    /// (header excluded), in order. Throws, returning nothing, when any length is wrong.
    public static func messages(in datagram: [UInt8]) throws(XFRMCodecError) -> [(header: NetlinkHeader, payload: ArraySlice<UInt8>)] {
        var messages: [(NetlinkHeader, ArraySlice<UInt8>)] = []
        var start = datagram.startIndex
        while datagram.endIndex - start >= NetlinkHeader.size {
            var reader = NetlinkReader(datagram[start...], what: "netlink header")
            let header = try NetlinkHeader.read(&reader)
            messages.append((header, datagram[start + NetlinkHeader.size..<start + Int(header.length)]))
            // Messages are 4-byte aligned; the last one may end without its padding.
            start += min((Int(header.length) + 3) & ~3, datagram.endIndex - start)
        }
        guard start == datagram.endIndex else { throw .truncated("netlink header", need: NetlinkHeader.size, have: datagram.endIndex - start) }
        return messages
    }

    /// The attributes of `bytes`, in order. Throws for an attribute that runs past the end or
    /// is shorter than its header.
    public static func attributes(in bytes: ArraySlice<UInt8>) throws(XFRMCodecError) -> [NetlinkAttribute] {
        var attributes: [NetlinkAttribute] = []
        var reader = NetlinkReader(bytes, what: "netlink attribute")
        while reader.remaining >= 4 {
            let length = Int(try reader.u16())
            let type = try reader.u16() & 0x3FFF
            guard length >= 4 else { throw .invalidLength("netlink attribute \(type)", length: length) }
            attributes.append(NetlinkAttribute(type: type, payload: Array(try reader.take(length - 4))))
            // The padding of the last attribute may be missing.
            _ = try reader.take(min((4 - length % 4) % 4, reader.remaining))
        }
        guard reader.remaining == 0 else { throw .truncated("netlink attribute", need: 4, have: reader.remaining) }
        return attributes
    }

    /// The errno of an `NLMSG_ERROR` payload: 0 for an acknowledgement, else positive.
    public static func errorCode(in payload: ArraySlice<UInt8>) throws(XFRMCodecError) -> Int32 {
        var reader = NetlinkReader(payload, what: "netlink error")
        let raw = Int32(bitPattern: try reader.u32())
        // The kernel sends -errno; -Int32.min does not exist.
        guard raw != .min else { throw .invalidValue("netlink error code", UInt64(UInt32(bitPattern: raw))) }
        return -raw
    }
}
