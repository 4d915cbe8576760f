/// One traffic selector (RFC 7296 section 3.13.1): an address range of one family, an IP
/// protocol (0 for any), and a port range.
///
/// Ports follow the wire form: `0...65535` is ANY (which includes OPAQUE), start 65535 with end
/// 0 is OPAQUE alone (traffic whose ports are not available, such as non-first fragments). For
/// ICMP and ICMPv6 the "port" is the type in the high byte and the code in the low byte; for
/// Mobility Header, the MH type in the high byte.
public struct TrafficSelector: Sendable, Hashable, CustomStringConvertible {
    /// TS_IPV4_ADDR_RANGE (7) or TS_IPV6_ADDR_RANGE (8).
    public let family: IPAddressFamily
    /// The IP protocol number; 0 means any protocol.
    public let ipProtocol: UInt8
    /// The first port; 65535 with ``endPort`` 0 means OPAQUE.
    public let startPort: UInt16
    /// The last port.
    public let endPort: UInt16
    // The addresses of both ends as 64-bit halves, so that a selector stays 40 bytes.
    private let startHigh: UInt64, startLow: UInt64, endHigh: UInt64, endLow: UInt64

    /// The TS type on the wire: 7 for IPv4, 8 for IPv6.
    public var tsType: UInt8 { family == .ipv4 ? 7 : 8 }
    /// The first address of the range.
    public var startAddress: IPAddress { Self.address(family, startHigh, startLow) }
    /// The last address of the range.
    public var endAddress: IPAddress { Self.address(family, endHigh, endLow) }
    /// True for the OPAQUE port selector (start 65535, end 0).
    public var isOpaquePorts: Bool { startPort == 65535 && endPort == 0 }
    /// True for ANY port (0...65535).
    public var isAnyPort: Bool { startPort == 0 && endPort == 65535 }

    /// A validated selector. Throws when the addresses are of different families, the start
    /// address is above the end address, or the start port is above the end port (other than
    /// OPAQUE).
    public init(
        startAddress: IPAddress, endAddress: IPAddress, ipProtocol: UInt8 = 0,
        startPort: UInt16 = 0, endPort: UInt16 = 65535
    ) throws(TrafficSelectorError) {
        guard startAddress.family == endAddress.family else { throw .mixedAddressFamilies }
        guard startAddress <= endAddress else { throw .startAddressAfterEnd(startAddress, endAddress) }
        guard startPort <= endPort || (startPort == 65535 && endPort == 0) else {
            throw .startPortAfterEnd(startPort, endPort)
        }
        family = startAddress.family
        self.ipProtocol = ipProtocol
        self.startPort = startPort
        self.endPort = endPort
        (startHigh, startLow, endHigh, endLow) = (startAddress.high, startAddress.low, endAddress.high, endAddress.low)
    }

    /// A selector for one address, any port, any protocol unless given.
    public init(address: IPAddress, ipProtocol: UInt8 = 0, port: UInt16? = nil) {
        // A single address and a single or any port always validate.
        family = address.family
        self.ipProtocol = ipProtocol
        startPort = port ?? 0
        endPort = port ?? 65535
        (startHigh, startLow, endHigh, endLow) = (address.high, address.low, address.high, address.low)
    }

    /// A selector for a CIDR prefix such as 192.0.2.0/24, any port, any protocol unless given.
    public init(prefix address: IPAddress, length: Int, ipProtocol: UInt8 = 0) throws(TrafficSelectorError) {
        let bits = address.family == .ipv4 ? 32 : 128
        guard (0...bits).contains(length) else { throw .invalidPrefixLength(length) }
        let hostBits = bits - length
        // Host mask as 128 bits split in halves; IPv4 lives in the low half.
        let lowMask: UInt64 = hostBits >= 64 ? .max : (hostBits == 0 ? 0 : (1 << UInt64(hostBits)) - 1)
        let highMask: UInt64 = hostBits <= 64 ? 0 : (hostBits >= 128 ? .max : (1 << UInt64(hostBits - 64)) - 1)
        let start = Self.address(address.family, address.high & ~highMask, address.low & ~lowMask)
        let end = Self.address(address.family, address.high | highMask, address.low | lowMask)
        try self.init(startAddress: start, endAddress: end, ipProtocol: ipProtocol)
    }

    /// Every address of a family, any protocol, any port.
    public static func any(_ family: IPAddressFamily) -> TrafficSelector {
        // Always valid: the full range.
        try! TrafficSelector(startAddress: .lowest(family), endAddress: .highest(family))
    }

    /// True when the selector covers `address`, `ipProtocol` and `port` (a packet's values).
    /// OPAQUE-only selectors cover no packet that has ports.
    @inlinable
    public func contains(address: IPAddress, ipProtocol: UInt8, port: UInt16) -> Bool {
        (self.ipProtocol == 0 || self.ipProtocol == ipProtocol)
            && startPort <= port && port <= endPort
            && startAddress <= address && address <= endAddress
    }

    /// True when every packet this selector covers, `other` covers too.
    public func isSubset(of other: TrafficSelector) -> Bool {
        intersection(with: other) == self
    }

    /// The traffic both selectors cover, or nil when there is none (different families,
    /// protocols, disjoint ranges).
    public func intersection(with other: TrafficSelector) -> TrafficSelector? {
        guard family == other.family else { return nil }
        let proto: UInt8
        if ipProtocol == other.ipProtocol || other.ipProtocol == 0 {
            proto = ipProtocol
        } else if ipProtocol == 0 {
            proto = other.ipProtocol
        } else {
            return nil
        }
        guard let ports = Self.intersectPorts((startPort, endPort), (other.startPort, other.endPort)) else { return nil }
        let start = Swift.max(startAddress, other.startAddress)
        let end = Swift.min(endAddress, other.endAddress)
        guard start <= end else { return nil }
        return try? TrafficSelector(startAddress: start, endAddress: end, ipProtocol: proto, startPort: ports.0, endPort: ports.1)
    }

    public var description: String {
        let ports = isOpaquePorts ? "OPAQUE" : isAnyPort ? "any" : startPort == endPort ? "\(startPort)" : "\(startPort)-\(endPort)"
        let addresses = startAddress == endAddress ? "\(startAddress)" : "\(startAddress)-\(endAddress)"
        return "\(addresses) proto \(ipProtocol == 0 ? "any" : String(ipProtocol)) port \(ports)"
    }

    private static func intersectPorts(
        _ a: (UInt16, UInt16), _ b: (UInt16, UInt16)
    ) -> (UInt16, UInt16)? {
        let aOpaque = a == (65535, 0)
        let bOpaque = b == (65535, 0)
        // ANY includes OPAQUE; OPAQUE and a specific range share nothing.
        if aOpaque || bOpaque {
            let other = aOpaque ? b : a
            return other == (65535, 0) || other == (0, 65535) ? (65535, 0) : nil
        }
        let start = Swift.max(a.0, b.0)
        let end = Swift.min(a.1, b.1)
        return start <= end ? (start, end) : nil
    }

    private static func address(_ family: IPAddressFamily, _ high: UInt64, _ low: UInt64) -> IPAddress {
        family == .ipv4 ? IPAddress(ipv4: UInt32(truncatingIfNeeded: low)) : IPAddress(ipv6High: high, low: low)
    }
}

extension FiveTuple {
    /// True when one of `local` covers this packet's local side and one of `remote` its remote
    /// side (IKEv2 semantics: the lists are sets, not pairs). The one rule SPD entries and
    /// negotiated Child SAs share.
    public func isCovered(local: [TrafficSelector], remote: [TrafficSelector]) -> Bool {
        local.contains { $0.contains(address: localAddress, ipProtocol: ipProtocol, port: localPort) }
            && remote.contains { $0.contains(address: remoteAddress, ipProtocol: ipProtocol, port: remotePort) }
    }
}

/// Why a traffic selector is invalid, or why selectors cannot be negotiated.
public enum TrafficSelectorError: Error, Sendable, Hashable {
    /// Start and end address are of different families.
    case mixedAddressFamilies
    /// The start address is above the end address.
    case startAddressAfterEnd(IPAddress, IPAddress)
    /// The start port is above the end port (and the pair is not OPAQUE).
    case startPortAfterEnd(UInt16, UInt16)
    /// A prefix length outside 0...32 (IPv4) or 0...128 (IPv6).
    case invalidPrefixLength(Int)
    /// Nothing the initiator proposed is acceptable: answer TS_UNACCEPTABLE.
    case unacceptable
}
