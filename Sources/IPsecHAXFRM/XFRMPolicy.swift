/// The direction of a security policy (`XFRM_POLICY_IN`, `_OUT`, `_FWD`).
public struct XFRMPolicyDirection: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Traffic for this host, after decapsulation.
    public static let inbound = XFRMPolicyDirection(rawValue: 0)
    /// Traffic this host sends or forwards out.
    public static let outbound = XFRMPolicyDirection(rawValue: 1)
    /// Traffic forwarded through this host, after decapsulation.
    public static let forward = XFRMPolicyDirection(rawValue: 2)

    public var description: String {
        switch self {
        case .inbound: "in"
        case .outbound: "out"
        case .forward: "fwd"
        default: "direction \(rawValue)"
        }
    }
}

/// The SA a policy asks for (`struct xfrm_user_tmpl`, 64 bytes): the kernel picks the SA with
/// these addresses, protocol, mode and request ID (SPI 0: any).
public struct XFRMTemplate: Sendable, Hashable {
    /// The SA's destination: the far tunnel endpoint outbound, this gateway inbound.
    public var destination: XFRMAddress
    /// The SA's source.
    public var source: XFRMAddress
    /// The family of both addresses.
    public var family: UInt16
    /// 50 for ESP.
    public var ipsecProtocol: UInt8
    /// `XFRMState.tunnelMode` or `.transportMode`.
    public var mode: UInt8
    /// The request ID the SA carries (0: any).
    public var requestID: UInt32

    /// A template for an ESP SA from `source` to `destination`, tunnel mode by default.
    public init(
        destination: XFRMAddress, source: XFRMAddress, requestID: UInt32, family: UInt16 = XFRMAddress.ipv4Family, ipsecProtocol: UInt8 = 50,
        mode: UInt8 = XFRMState.tunnelMode
    ) {
        self.destination = destination
        self.source = source
        self.family = family
        self.ipsecProtocol = ipsecProtocol
        self.mode = mode
        self.requestID = requestID
    }

    /// `struct xfrm_user_tmpl`: `xfrm_id` (address, SPI, protocol, padded to 24), family,
    /// 2 bytes of padding, source, request ID, mode, share, optional, padding, and the three
    /// algorithm masks (all algorithms allowed).
    func write(into body: inout NetlinkWriter) {
        body.raw(destination.bytes)
        body.bigEndian32(0)
        body.u8(ipsecProtocol)
        body.zeros(3)
        body.u16(family)
        body.zeros(2)
        body.raw(source.bytes)
        body.u32(requestID)
        body.u8(mode)
        body.zeros(3)
        for _ in 0..<3 { body.u32(.max) }
    }
}

/// A security policy (SPD entry) as XFRM takes it (`struct xfrm_userpolicy_info` with one
/// `XFRMA_TMPL`): traffic that matches the selector in this direction must go through an SA
/// of the template. The package only writes policies (UPDPOLICY, DELPOLICY); it never reads
/// them back, so there is no decoder.
public struct XFRMPolicy: Sendable, Hashable {
    /// `XFRMA_TMPL`.
    public static let templateAttribute: UInt16 = 5
    /// `struct xfrm_userpolicy_info`'s size.
    public static let fixedSize = 168

    /// The traffic the policy applies to.
    public var selector: XFRMSelector
    /// In, out or forward.
    public var direction: XFRMPolicyDirection
    /// Lower wins among policies whose selectors overlap.
    public var priority: UInt32
    /// The SA the traffic must go through.
    public var template: XFRMTemplate

    /// A policy; the priority is the kernel's (lower wins), charon's default for its own
    /// policies is higher than 0, so the default leaves room.
    public init(selector: XFRMSelector, direction: XFRMPolicyDirection, template: XFRMTemplate, priority: UInt32 = 1_000) {
        self.selector = selector
        self.direction = direction
        self.priority = priority
        self.template = template
    }

    /// UPDPOLICY: adds the policy or replaces the one with the same selector and direction.
    public func encode(sequence: UInt32) -> [UInt8] {
        var body = NetlinkWriter()
        selector.write(into: &body)
        XFRMLifetimeLimits().write(into: &body)
        body.zeros(32)  // struct xfrm_lifetime_cur: the kernel's
        body.u32(priority)
        body.u32(0)  // index: the kernel picks one
        body.u8(direction.rawValue)
        body.u8(0)  // XFRM_POLICY_ALLOW
        body.u8(0)  // flags
        body.u8(0)  // share
        body.zeros(4)  // the struct's padding to 8
        var template = NetlinkWriter()
        self.template.write(into: &template)
        body.attribute(NetlinkAttribute(type: Self.templateAttribute, payload: template.bytes))
        return Netlink.message(type: .updatePolicy, flags: [.request, .acknowledge], sequence: sequence, body: body.bytes)
    }

    /// DELPOLICY of the policy with `selector` and `direction` (`struct xfrm_userpolicy_id`).
    public static func encodeDeletion(selector: XFRMSelector, direction: XFRMPolicyDirection, sequence: UInt32) -> [UInt8] {
        var body = NetlinkWriter()
        selector.write(into: &body)
        body.u32(0)  // index: none, the selector and direction name it
        body.u8(direction.rawValue)
        body.zeros(3)
        return Netlink.message(type: .deletePolicy, flags: [.request, .acknowledge], sequence: sequence, body: body.bytes)
    }
}

extension XFRMSAIdentifier {
    /// DELSA of this SA (`struct xfrm_usersa_id`: address, SPI, family, protocol).
    public func encodeDeletion(sequence: UInt32) -> [UInt8] {
        var body = NetlinkWriter()
        body.raw(destination.bytes)
        body.bigEndian32(spi)
        body.u16(family)
        body.u8(ipsecProtocol)
        body.zeros(1)
        return Netlink.message(type: .deleteSA, flags: [.request, .acknowledge], sequence: sequence, body: body.bytes)
    }
}
