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

    /// A 64-bit hash of all fields under `seed`, cheap enough for the per-packet cache lookup:
    /// two independent multiplications and a final one. With a secret random seed, a sender
    /// cannot aim packets at one bucket without seeing the table's behaviour.
    @inlinable @inline(__always)
    public func hash(seed: UInt64) -> UInt64 {
        let a = seed ^ localAddress.low ^ (remoteAddress.low &<< 32 | remoteAddress.low &>> 32)
        let b =
            localAddress.high ^ (remoteAddress.high &<< 17 | remoteAddress.high &>> 47)
            ^ (UInt64(localPort) &<< 40 | UInt64(remotePort) &<< 24 | UInt64(ipProtocol) &<< 8
                | UInt64(localAddress.family.rawValue))
        var h = (a &* 0x9E37_79B9_7F4A_7C15) ^ (b &* 0xBF58_476D_1CE4_E5B9)
        h ^= h &>> 32
        return h &* 0x94D0_49BB_1331_11EB
    }

    public var description: String {
        "\(localAddress):\(localPort) <-> \(remoteAddress):\(remotePort) proto \(ipProtocol)"
    }
}
