/// The fields of a packet that select its policy (RFC 4301 section 4.4.1.1), as seen from this
/// gateway: local and remote address, the next-layer protocol, and local and remote port
/// (for ICMP, type and code packed into the port as RFC 7296 section 3.13.1 does: type in the
/// high byte).
public struct FiveTuple: Sendable, Hashable, CustomStringConvertible {
    /// This side's address.
    public var localAddress: IPAddress
    /// The other side's address.
    public var remoteAddress: IPAddress
    /// The IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6...).
    public var ipProtocol: UInt8
    /// This side's port.
    public var localPort: UInt16
    /// The other side's port.
    public var remotePort: UInt16

    /// A five-tuple from its parts.
    public init(localAddress: IPAddress, remoteAddress: IPAddress, ipProtocol: UInt8, localPort: UInt16, remotePort: UInt16) {
        self.localAddress = localAddress
        self.remoteAddress = remoteAddress
        self.ipProtocol = ipProtocol
        self.localPort = localPort
        self.remotePort = remotePort
    }

    /// A 64-bit mix of all fields, cheap enough for the per-packet cache lookup (not keyed:
    /// the cache bounds its probe lengths instead of trusting the hash).
    @inlinable
    public var mixedHash: UInt64 {
        var h: UInt64 = 0x9E37_79B9_7F4A_7C15 &* (UInt64(localAddress.family.rawValue) << 8 | UInt64(ipProtocol))
        h = (h ^ localAddress.high) &* 0xBF58_476D_1CE4_E5B9
        h = (h ^ localAddress.low) &* 0x94D0_49BB_1331_11EB
        h = (h ^ remoteAddress.high) &* 0xBF58_476D_1CE4_E5B9
        h = (h ^ remoteAddress.low) &* 0x94D0_49BB_1331_11EB
        h = (h ^ (UInt64(localPort) << 16 | UInt64(remotePort))) &* 0xBF58_476D_1CE4_E5B9
        return h ^ (h &>> 31)
    }

    public var description: String {
        "\(localAddress):\(localPort) <-> \(remoteAddress):\(remotePort) proto \(ipProtocol)"
    }
}
