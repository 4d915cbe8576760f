/// Names one entry of the Security Policy Database.
public struct SecurityPolicyID: RawRepresentable, Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { "policy \(rawValue)" }
}

/// What the SPD says to do with traffic (RFC 4301 section 4.4.1).
public enum SecurityPolicyAction: Sendable, Hashable {
    /// Send the traffic through a Child SA negotiated with these settings.
    case protect(ProtectionSettings)
    /// Let the traffic pass without IPsec.
    case bypass
    /// Drop the traffic.
    case discard
}

/// How PROTECT traffic is protected.
public struct ProtectionSettings: Sendable, Hashable {
    /// ESP or AH.
    public var ipsecProtocol: IPsecProtocol
    /// Tunnel or transport mode.
    public var mode: IPsecMode
    /// Whether Extended Sequence Numbers are wanted.
    public var extendedSequenceNumbers: Bool

    /// Settings from their parts.
    public init(ipsecProtocol: IPsecProtocol = .esp, mode: IPsecMode = .tunnel, extendedSequenceNumbers: Bool = true) {
        self.ipsecProtocol = ipsecProtocol
        self.mode = mode
        self.extendedSequenceNumbers = extendedSequenceNumbers
    }
}

/// The "populate from packet" (PFP) flags of an SPD entry (RFC 4301 section 4.4.1.2): for each
/// selector whose flag is set, an SA created for a packet takes that value from the packet
/// instead of the policy's range, so that the SA is not shared with other traffic of the range.
public struct PopulateFromPacket: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let localAddress = Self(rawValue: 1 << 0)
    public static let remoteAddress = Self(rawValue: 1 << 1)
    public static let ipProtocol = Self(rawValue: 1 << 2)
    public static let localPort = Self(rawValue: 1 << 3)
    public static let remotePort = Self(rawValue: 1 << 4)
}

/// ESP or AH, with their IKEv2 Protocol IDs (RFC 7296 section 3.3.1).
public enum IPsecProtocol: UInt8, Sendable, Hashable, Codable {
    /// Authentication Header.
    case ah = 2
    /// Encapsulating Security Payload.
    case esp = 3
}

/// Tunnel or transport mode.
public enum IPsecMode: UInt8, Sendable, Hashable, Codable {
    /// Whole IP packets inside ESP/AH between the tunnel endpoints.
    case tunnel
    /// The payload of the IP packet only (USE_TRANSPORT_MODE).
    case transport
}

/// One entry of the Security Policy Database: traffic selectors for each side and an action.
///
/// A packet matches the entry when one of the local selectors covers its local address,
/// protocol and local port, and one of the remote selectors covers its remote address, protocol
/// and remote port (IKEv2 semantics: the two lists are sets, not pairs).
public struct SecurityPolicy: Sendable, Hashable {
    /// The entry's name in the SPD.
    public var id: SecurityPolicyID
    /// Selectors for this side's traffic (TSr when this gateway responds, TSi when it initiates).
    public var localSelectors: [TrafficSelector]
    /// Selectors for the other side's traffic.
    public var remoteSelectors: [TrafficSelector]
    /// What to do with matching traffic.
    public var action: SecurityPolicyAction
    /// Which selectors an SA created for a packet takes from the packet.
    public var populateFromPacket: PopulateFromPacket

    /// A policy from its parts.
    public init(
        id: SecurityPolicyID, localSelectors: [TrafficSelector], remoteSelectors: [TrafficSelector],
        action: SecurityPolicyAction, populateFromPacket: PopulateFromPacket = []
    ) {
        self.id = id
        self.localSelectors = localSelectors
        self.remoteSelectors = remoteSelectors
        self.action = action
        self.populateFromPacket = populateFromPacket
    }

    /// True when `packet` is covered by this entry's selectors.
    public func matches(_ packet: FiveTuple) -> Bool {
        packet.isCovered(local: localSelectors, remote: remoteSelectors)
    }

    /// What an initiator proposes to protect `packet` under this policy (RFC 7296 section 2.9):
    /// first a selector pair for exactly the packet, then the policy's selectors, narrowed to the
    /// packet's values for every populate-from-packet flag.
    public func proposal(for packet: FiveTuple) -> (local: [TrafficSelector], remote: [TrafficSelector]) {
        let pfp = populateFromPacket
        func narrowed(_ selectors: [TrafficSelector], address: IPAddress, port: UInt16, addressFlag: PopulateFromPacket, portFlag: PopulateFromPacket) -> [TrafficSelector] {
            selectors.compactMap { selector in
                guard selector.contains(address: address, ipProtocol: packet.ipProtocol, port: port) else { return nil }
                let start = pfp.contains(addressFlag) ? address : selector.startAddress
                let end = pfp.contains(addressFlag) ? address : selector.endAddress
                let proto = pfp.contains(.ipProtocol) ? packet.ipProtocol : selector.ipProtocol
                let ports = pfp.contains(portFlag) ? (port, port) : (selector.startPort, selector.endPort)
                return try? TrafficSelector(startAddress: start, endAddress: end, ipProtocol: proto, startPort: ports.0, endPort: ports.1)
            }
        }
        let first = (
            TrafficSelector(address: packet.localAddress, ipProtocol: packet.ipProtocol, port: packet.localPort),
            TrafficSelector(address: packet.remoteAddress, ipProtocol: packet.ipProtocol, port: packet.remotePort)
        )
        let local = narrowed(localSelectors, address: packet.localAddress, port: packet.localPort, addressFlag: .localAddress, portFlag: .localPort)
        let remote = narrowed(remoteSelectors, address: packet.remoteAddress, port: packet.remotePort, addressFlag: .remoteAddress, portFlag: .remotePort)
        return ([first.0] + local.filter { $0 != first.0 }, [first.1] + remote.filter { $0 != first.1 })
    }
}
