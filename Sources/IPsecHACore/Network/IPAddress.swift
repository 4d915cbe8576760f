/// The address family of an ``IPAddress`` or a traffic selector.
public enum IPAddressFamily: UInt8, Sendable, Hashable, Codable, CaseIterable {
    /// IPv4: 32-bit addresses.
    case ipv4 = 4
    /// IPv6: 128-bit addresses.
    case ipv6 = 6

    /// The address length in bytes: 4 or 16.
    public var byteCount: Int { self == .ipv4 ? 4 : 16 }
}

/// An IPv4 or IPv6 address, as a 128-bit number (IPv4 in the low 32 bits) and its family.
///
/// Addresses order by family, then numerically, which is what address ranges need. Parsing and
/// printing use the usual text forms (`192.0.2.1`, `2001:db8::1`, RFC 5952 for printing).
public struct IPAddress: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    /// The high 64 bits (0 for IPv4).
    public let high: UInt64
    /// The low 64 bits (the address itself for IPv4).
    public let low: UInt64
    /// IPv4 or IPv6.
    public let family: IPAddressFamily

    /// An IPv4 address from its 32-bit value (`0xC0000201` is 192.0.2.1).
    public init(ipv4 value: UInt32) {
        high = 0
        low = UInt64(value)
        family = .ipv4
    }

    /// An IPv6 address from its two 64-bit halves.
    public init(ipv6High high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
        family = .ipv6
    }

    /// Parses `a.b.c.d` or an IPv6 text form (with `::` and an optional trailing dotted IPv4).
    /// Throws ``IPAddressParseError`` for anything else.
    public init(_ text: String) throws(IPAddressParseError) {
        if text.contains(":") {
            let (high, low) = try Self.parseIPv6(Substring(text))
            self.init(ipv6High: high, low: low)
        } else {
            self.init(ipv4: try Self.parseIPv4(Substring(text)))
        }
    }

    /// The address as big-endian bytes (4 or 16).
    public var bytes: [UInt8] {
        switch family {
        case .ipv4: (0..<4).map { UInt8(truncatingIfNeeded: low >> (24 - 8 * UInt64($0))) }
        case .ipv6:
            (0..<8).map { UInt8(truncatingIfNeeded: high >> (56 - 8 * UInt64($0))) }
                + (0..<8).map { UInt8(truncatingIfNeeded: low >> (56 - 8 * UInt64($0))) }
        }
    }

    /// An address from 4 or 16 big-endian bytes.
    public init(bytes: some Collection<UInt8>) throws(IPAddressParseError) {
        var value: (high: UInt64, low: UInt64) = (0, 0)
        for byte in bytes {
            value = (value.high << 8 | value.low >> 56, value.low << 8 | UInt64(byte))
        }
        switch bytes.count {
        case 4: self.init(ipv4: UInt32(value.low))
        case 16: self.init(ipv6High: value.high, low: value.low)
        default: throw .invalidLength(bytes.count)
        }
    }

    /// The lowest and the highest address of a family.
    public static func lowest(_ family: IPAddressFamily) -> IPAddress {
        family == .ipv4 ? IPAddress(ipv4: 0) : IPAddress(ipv6High: 0, low: 0)
    }

    /// The highest address of a family.
    public static func highest(_ family: IPAddressFamily) -> IPAddress {
        family == .ipv4 ? IPAddress(ipv4: .max) : IPAddress(ipv6High: .max, low: .max)
    }

    public static func < (lhs: IPAddress, rhs: IPAddress) -> Bool {
        (lhs.family.rawValue, lhs.high, lhs.low) < (rhs.family.rawValue, rhs.high, rhs.low)
    }

    public var description: String {
        switch family {
        case .ipv4:
            return (0..<4).map { String(UInt8(truncatingIfNeeded: low >> (24 - 8 * UInt64($0)))) }.joined(separator: ".")
        case .ipv6:
            let groups = (0..<8).map { index -> UInt16 in
                let half = index < 4 ? high : low
                return UInt16(truncatingIfNeeded: half >> (48 - 16 * UInt64(index % 4)))
            }
            // RFC 5952: the longest run of two or more zero groups (the first if tied) becomes "::".
            var best: Range<Int>? = nil
            var start: Int? = nil
            for index in 0...8 {
                if index < 8, groups[index] == 0 {
                    if start == nil { start = index }
                } else if let runStart = start {
                    if index - runStart >= 2, index - runStart > (best?.count ?? 0) { best = runStart..<index }
                    start = nil
                }
            }
            let hex = groups.map { String($0, radix: 16) }
            guard let run = best else { return hex.joined(separator: ":") }
            return hex[..<run.lowerBound].joined(separator: ":") + "::" + hex[run.upperBound...].joined(separator: ":")
        }
    }

    private static func parseIPv4(_ text: Substring) throws(IPAddressParseError) -> UInt32 {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { throw .malformed(String(text)) }
        var value: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.utf8.allSatisfy({ (48...57).contains($0) }),
                let octet = UInt8(part), part.count == 1 || part.first != "0"
            else { throw .malformed(String(text)) }
            value = value << 8 | UInt32(octet)
        }
        return value
    }

    private static func parseIPv6(_ text: Substring) throws(IPAddressParseError) -> (UInt64, UInt64) {
        var groups: [UInt16] = []
        var trailing: [UInt16] = []
        let halves = text.split(separator: "::", maxSplits: 2, omittingEmptySubsequences: false)
        guard halves.count <= 2 else { throw .malformed(String(text)) }
        func parseGroups(_ part: Substring, allowIPv4Tail: Bool) throws(IPAddressParseError) -> [UInt16] {
            if part.isEmpty { return [] }
            var result: [UInt16] = []
            let fields = part.split(separator: ":", omittingEmptySubsequences: false)
            for (index, field) in fields.enumerated() {
                if allowIPv4Tail, index == fields.count - 1, field.contains(".") {
                    let v4 = try parseIPv4(field)
                    result += [UInt16(v4 >> 16), UInt16(truncatingIfNeeded: v4)]
                } else {
                    guard (1...4).contains(field.count), let group = UInt16(field, radix: 16),
                        field.utf8.allSatisfy({ (48...57).contains($0) || (65...70).contains($0) || (97...102).contains($0) })
                    else { throw .malformed(String(text)) }
                    result.append(group)
                }
            }
            return result
        }
        if halves.count == 2 {
            groups = try parseGroups(halves[0], allowIPv4Tail: false)
            trailing = try parseGroups(halves[1], allowIPv4Tail: true)
            guard groups.count + trailing.count <= 7 else { throw .malformed(String(text)) }
            groups += Array(repeating: 0, count: 8 - groups.count - trailing.count) + trailing
        } else {
            groups = try parseGroups(halves[0], allowIPv4Tail: true)
            guard groups.count == 8 else { throw .malformed(String(text)) }
        }
        let high = groups[0..<4].reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        let low = groups[4..<8].reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        return (high, low)
    }
}

/// Why text or bytes are not an ``IPAddress``.
public enum IPAddressParseError: Error, Sendable, Hashable {
    /// Not a dotted-quad IPv4 or an IPv6 text form.
    case malformed(String)
    /// Neither 4 nor 16 bytes.
    case invalidLength(Int)
}

/// Where an IKE SA's messages go: an address, a UDP port, and whether ESP travels in UDP
/// (RFC 3948, after NAT detection or on port 4500).
public struct Endpoint: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The IP address.
    public var address: IPAddress
    /// The UDP port (500 or 4500 usually).
    public var port: UInt16
    /// Whether ESP is encapsulated in UDP on this path.
    public var udpEncapsulation: Bool

    /// An endpoint from its parts.
    public init(address: IPAddress, port: UInt16, udpEncapsulation: Bool = false) {
        self.address = address
        self.port = port
        self.udpEncapsulation = udpEncapsulation
    }

    public var description: String {
        let host = address.family == .ipv6 ? "[\(address)]" : "\(address)"
        return "\(host):\(port)\(udpEncapsulation ? " (UDP-encapsulated)" : "")"
    }
}
