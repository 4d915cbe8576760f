/// Names an IKE SA: the initiator's and the responder's SPI (RFC 7296 section 3.1).
public struct IKESAIdentifier: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    /// The original initiator's SPI; never 0.
    public var initiatorSPI: UInt64
    /// The responder's SPI; 0 only until the IKE_SA_INIT response.
    public var responderSPI: UInt64

    /// An identifier from both SPIs.
    public init(initiatorSPI: UInt64, responderSPI: UInt64) {
        self.initiatorSPI = initiatorSPI
        self.responderSPI = responderSPI
    }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        (lhs.initiatorSPI, lhs.responderSPI) < (rhs.initiatorSPI, rhs.responderSPI)
    }

    public var description: String {
        func hex(_ value: UInt64) -> String {
            let digits = String(value, radix: 16)
            return String(repeating: "0", count: 16 - digits.count) + digits
        }
        return "\(hex(initiatorSPI))_i \(hex(responderSPI))_r"
    }
}

/// Where an IKE SA is in its life.
public enum IKESAState: UInt8, Sendable, Hashable, Codable {
    /// IKE_SA_INIT / IKE_AUTH under way.
    case negotiating
    /// Usable.
    case established
    /// Being replaced by a new IKE SA.
    case rekeying
    /// A Delete was sent or received.
    case deleting
    /// A standby's copy: it processes nothing until a takeover makes it established.
    case passive
}

/// The keys of an IKE SA (RFC 7296 section 2.14).
///
/// The seven keys live in one shared, immutable box, so that copying an IKE SA (as a takeover
/// plan or a replication record does, a hundred thousand times) costs one reference, not seven;
/// changing a key copies the box.
public struct IKEKeys: Sendable, Equatable {
    // @unchecked: the box is never mutated after creation; setters replace it.
    final class Box: @unchecked Sendable {
        let keys: [KeyMaterial]
        init(_ keys: [KeyMaterial]) { self.keys = keys }
    }

    private var box: Box

    /// SK_d: derives Child SA keys.
    public var d: KeyMaterial { get { box.keys[0] } set { replace(0, newValue) } }
    /// SK_ai: integrity of the original initiator's messages.
    public var ai: KeyMaterial { get { box.keys[1] } set { replace(1, newValue) } }
    /// SK_ar: integrity of the original responder's messages.
    public var ar: KeyMaterial { get { box.keys[2] } set { replace(2, newValue) } }
    /// SK_ei: encryption of the original initiator's messages.
    public var ei: KeyMaterial { get { box.keys[3] } set { replace(3, newValue) } }
    /// SK_er: encryption of the original responder's messages.
    public var er: KeyMaterial { get { box.keys[4] } set { replace(4, newValue) } }
    /// SK_pi: the original initiator's AUTH payload.
    public var pi: KeyMaterial { get { box.keys[5] } set { replace(5, newValue) } }
    /// SK_pr: the original responder's AUTH payload.
    public var pr: KeyMaterial { get { box.keys[6] } set { replace(6, newValue) } }

    /// Keys from their parts.
    public init(
        d: KeyMaterial, ai: KeyMaterial, ar: KeyMaterial, ei: KeyMaterial, er: KeyMaterial, pi: KeyMaterial,
        pr: KeyMaterial
    ) {
        box = Box([d, ai, ar, ei, er, pi, pr])
    }

    private mutating func replace(_ index: Int, _ key: KeyMaterial) {
        var keys = box.keys
        keys[index] = key
        box = Box(keys)
    }

    public static func == (lhs: IKEKeys, rhs: IKEKeys) -> Bool {
        lhs.box === rhs.box || lhs.box.keys == rhs.box.keys
    }
}

/// When an IKE SA must be rekeyed or reauthenticated.
public struct IKESALifetime: Sendable, Hashable, Codable {
    /// When to start rekeying (nil: never).
    public var rekeyAt: Timestamp?
    /// When to reauthenticate (nil: never).
    public var reauthenticateAt: Timestamp?

    /// Deadlines from their parts.
    public init(rekeyAt: Timestamp? = nil, reauthenticateAt: Timestamp? = nil) {
        self.rekeyAt = rekeyAt
        self.reauthenticateAt = reauthenticateAt
    }

    /// Whether a rekey is due at `now`.
    public func isRekeyDue(at now: Timestamp) -> Bool { rekeyAt.map { now >= $0 } ?? false }
    /// Whether reauthentication is due at `now`.
    public func isReauthenticationDue(at now: Timestamp) -> Bool { reauthenticateAt.map { now >= $0 } ?? false }
}

/// What an IKE SA negotiated beyond its transforms.
public struct IKEExtensions: Sendable, Hashable, Codable {
    /// Both sides sent IKEV2_MESSAGE_ID_SYNC_SUPPORTED (RFC 6311).
    public var messageIDSync: Bool
    /// Both sides sent IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED (RFC 6311).
    public var replayCounterSync: Bool
    /// The Child SAs of this IKE SA use Extended Sequence Numbers; RFC 6311's replay-counter
    /// sync needs all of them to agree.
    public var childSAsUseExtendedSequenceNumbers: Bool

    /// Extensions from their parts; none by default.
    public init(messageIDSync: Bool = false, replayCounterSync: Bool = false, childSAsUseExtendedSequenceNumbers: Bool = true) {
        self.messageIDSync = messageIDSync
        self.replayCounterSync = replayCounterSync
        self.childSAsUseExtendedSequenceNumbers = childSAsUseExtendedSequenceNumbers
    }
}

/// An IKE SA (RFC 7296): who talks to whom, with which keys, at which message IDs, and which
/// Child SAs it governs. The window sizes of both directions are in ``messageIDs``.
public struct IKESA: Sendable, Equatable {
    /// The SPI pair naming the SA.
    public let identifier: IKESAIdentifier
    /// Whether this gateway was the original initiator (sets the I flag, picks SK_ei vs SK_er).
    public var isOriginalInitiator: Bool
    /// Lifecycle state.
    public var state: IKESAState
    /// This gateway's endpoint.
    public var local: Endpoint
    /// The peer's endpoint.
    public var remote: Endpoint
    /// Negotiated algorithms.
    public var transforms: IKETransforms
    /// SK_d, SK_ai/ar, SK_ei/er, SK_pi/pr.
    public var keys: IKEKeys
    /// Rekey and reauthentication deadlines.
    public var lifetime: IKESALifetime
    /// Message-ID windows of both directions.
    public var messageIDs: IKEMessageIDWindows
    /// RFC 6311 support and ESN for the children.
    public var extensions: IKEExtensions
    /// Inbound SPIs of the Child SAs this IKE SA governs, ascending. Kept by ``GatewayState``.
    public internal(set) var childSAs: [UInt32]
    /// The cluster member that runs the IKE SA.
    public var owner: ClusterMemberID
    /// Bumped on every replicated change; a replica never applies an older one. ``GatewayState``
    /// sets it on every change it makes; decoders of replicated records set it from the wire.
    public var generation: UInt64

    /// An IKE SA. Throws when the initiator SPI is 0.
    public init(
        identifier: IKESAIdentifier, isOriginalInitiator: Bool, state: IKESAState = .established,
        local: Endpoint, remote: Endpoint, transforms: IKETransforms, keys: IKEKeys,
        lifetime: IKESALifetime = IKESALifetime(), messageIDs: IKEMessageIDWindows = IKEMessageIDWindows(),
        extensions: IKEExtensions = IKEExtensions(), owner: ClusterMemberID
    ) throws(IKESAError) {
        guard identifier.initiatorSPI != 0 else { throw .zeroInitiatorSPI }
        guard local.address.family == remote.address.family else { throw .mixedAddressFamilies }
        self.identifier = identifier
        self.isOriginalInitiator = isOriginalInitiator
        self.state = state
        self.local = local
        self.remote = remote
        self.transforms = transforms
        self.keys = keys
        self.lifetime = lifetime
        self.messageIDs = messageIDs
        self.extensions = extensions
        self.childSAs = []
        self.owner = owner
        self.generation = 0
    }
}

/// Errors building an IKE SA.
public enum IKESAError: Error, Sendable, Hashable {
    /// The initiator's SPI must not be 0 (RFC 7296 section 3.1).
    case zeroInitiatorSPI
    /// Local and remote endpoints of different address families.
    case mixedAddressFamilies
}
