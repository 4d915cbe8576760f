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
        "\(initiatorSPI.paddedHexDigits)_i \(responderSPI.paddedHexDigits)_r"
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
/// The seven keys are views of one zeroed-on-release allocation, held in one shared, immutable
/// box: copying an IKE SA (as a takeover plan or a replication record does, a hundred thousand
/// times) costs one reference, and a standby that receives a hundred thousand IKE SAs makes two
/// allocations for each one's keys, not nine. Changing a key repacks them into a new box.
public struct IKEKeys: Sendable, Equatable {
    // @unchecked: the box is never mutated after creation; setters replace it.
    final class Box: @unchecked Sendable {
        // Seven stored keys, not a tuple: reading one element of a tuple property copies the
        // whole tuple, with a retain per key.
        let d, ai, ar, ei, er, pi, pr: KeyMaterial
        /// All seven, one after the other: what the keys are views of.
        let packed: KeyMaterial
        init(
            d: KeyMaterial, ai: KeyMaterial, ar: KeyMaterial, ei: KeyMaterial, er: KeyMaterial, pi: KeyMaterial, pr: KeyMaterial,
            packed: KeyMaterial
        ) {
            (self.d, self.ai, self.ar, self.ei, self.er, self.pi, self.pr) = (d, ai, ar, ei, er, pi, pr)
            self.packed = packed
        }
        /// The seven keys copied into one allocation.
        static func packing(_ keys: [KeyMaterial]) -> Box {
            keys.map(\.count).withUnsafeBufferPointer { splitting(KeyMaterial.concatenating(keys), lengths: $0) }
        }
        /// Views of `material`, `lengths` bytes each; the caller has checked that the seven
        /// lengths add up to the material.
        static func splitting(_ material: KeyMaterial, lengths: UnsafeBufferPointer<Int>) -> Box {
            var offset = 0
            func next(_ index: Int) -> KeyMaterial {
                defer { offset += lengths[index] }
                return material.view(offset, lengths[index])
            }
            return Box(d: next(0), ai: next(1), ar: next(2), ei: next(3), er: next(4), pi: next(5), pr: next(6), packed: material)
        }
        var all: [KeyMaterial] { [d, ai, ar, ei, er, pi, pr] }
    }

    private var box: Box

    /// SK_d: derives Child SA keys.
    public var d: KeyMaterial { get { box.d } set { replace(0, newValue) } }
    /// SK_ai: integrity of the original initiator's messages.
    public var ai: KeyMaterial { get { box.ai } set { replace(1, newValue) } }
    /// SK_ar: integrity of the original responder's messages.
    public var ar: KeyMaterial { get { box.ar } set { replace(2, newValue) } }
    /// SK_ei: encryption of the original initiator's messages.
    public var ei: KeyMaterial { get { box.ei } set { replace(3, newValue) } }
    /// SK_er: encryption of the original responder's messages.
    public var er: KeyMaterial { get { box.er } set { replace(4, newValue) } }
    /// SK_pi: the original initiator's AUTH payload.
    public var pi: KeyMaterial { get { box.pi } set { replace(5, newValue) } }
    /// SK_pr: the original responder's AUTH payload.
    public var pr: KeyMaterial { get { box.pr } set { replace(6, newValue) } }

    /// Keys from their parts (copied into one allocation).
    public init(
        d: KeyMaterial, ai: KeyMaterial, ar: KeyMaterial, ei: KeyMaterial, er: KeyMaterial, pi: KeyMaterial,
        pr: KeyMaterial
    ) {
        box = Box.packing([d, ai, ar, ei, er, pi, pr])
    }

    /// Keys from `material` that holds SK_d, SK_ai, SK_ar, SK_ei, SK_er, SK_pi and SK_pr one
    /// after the other, `lengths` bytes each (as they come off KEYMAT, or off the wire): the
    /// keys are views of `material`, not copies. Throws ``IKESAError/invalidKeyLayout`` unless
    /// there are seven lengths, none negative, adding up to the material's length.
    public init(packed material: KeyMaterial, lengths: [Int]) throws(IKESAError) {
        self = try lengths.withUnsafeBufferPointer { lengths throws(IKESAError) in try IKEKeys(packed: material, lengths: lengths) }
    }

    /// ``init(packed:lengths:)`` with the lengths in place: a standby reads them off the wire
    /// for every IKE SA of a resync, and an array each was a heap allocation each.
    package init(packed material: KeyMaterial, lengths: UnsafeBufferPointer<Int>) throws(IKESAError) {
        guard lengths.count == 7 else { throw .invalidKeyLayout }
        // Checked as they are summed, so that no sum can overflow; a standby does this per IKE
        // SA it receives, so without closures over arrays or intermediate arrays.
        var total = 0
        for length in lengths {
            guard length >= 0, length <= material.count - total else { throw .invalidKeyLayout }
            total += length
        }
        guard total == material.count else { throw .invalidKeyLayout }
        box = Box.splitting(material, lengths: lengths)
    }

    /// Calls `body` with the seven keys' bytes, SK_d to SK_pr one after the other, and the
    /// length of each: how a bulk resync writes an IKE SA's keys in one pass (reading each key
    /// on its own cost a reference and a closure call a key, 900 instructions an IKE SA).
    package func withPackedBytes<Result, Failure: Error>(
        _ body: (UnsafeRawBufferPointer, UnsafeBufferPointer<Int>) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        let box = box
        return try withUnsafeTemporaryAllocation(of: Int.self, capacity: 7) { (lengths) throws(Failure) in
            // One by one: an array of the keys would be an allocation.
            lengths.initializeElement(at: 0, to: box.d.count)
            lengths.initializeElement(at: 1, to: box.ai.count)
            lengths.initializeElement(at: 2, to: box.ar.count)
            lengths.initializeElement(at: 3, to: box.ei.count)
            lengths.initializeElement(at: 4, to: box.er.count)
            lengths.initializeElement(at: 5, to: box.pi.count)
            lengths.initializeElement(at: 6, to: box.pr.count)
            return try box.packed.withUnsafeBytes { (bytes) throws(Failure) in try body(bytes, UnsafeBufferPointer(lengths)) }
        }
    }

    private mutating func replace(_ index: Int, _ key: KeyMaterial) {
        var keys = box.all
        keys[index] = key
        box = Box.packing(keys)
    }

    public static func == (lhs: IKEKeys, rhs: IKEKeys) -> Bool {
        if lhs.box === rhs.box { return true }
        let (l, r) = (lhs.box, rhs.box)
        // Every key compared, whatever the first differences: the time depends on the lengths only.
        func differs(_ a: KeyMaterial, _ b: KeyMaterial) -> Int { a == b ? 0 : 1 }
        let differences = differs(l.d, r.d) | differs(l.ai, r.ai) | differs(l.ar, r.ar) | differs(l.ei, r.ei)
        return differences | differs(l.er, r.er) | differs(l.pi, r.pi) | differs(l.pr, r.pr) == 0
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
    /// The peer has answered an RFC 6311 message-ID sync on this IKE SA. Both the request and
    /// the response carry message ID 0, and a peer whose AEAD IVs come from the message ID
    /// (strongSwan's sequential IV generator) cannot encrypt a second response to ID 0 under
    /// the same key: it fails and the IKE SA is lost. So a later takeover must not sync this
    /// IKE SA again; replicated, so that every member knows.
    public var messageIDSyncAnswered: Bool

    /// Extensions from their parts; none by default.
    public init(
        messageIDSync: Bool = false, replayCounterSync: Bool = false, childSAsUseExtendedSequenceNumbers: Bool = true,
        messageIDSyncAnswered: Bool = false
    ) {
        self.messageIDSync = messageIDSync
        self.replayCounterSync = replayCounterSync
        self.childSAsUseExtendedSequenceNumbers = childSAsUseExtendedSequenceNumbers
        self.messageIDSyncAnswered = messageIDSyncAnswered
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
    /// The IKE SA this one replaced by a rekey (RFC 7296 section 2.18), set by
    /// ``GatewayState/rekeyIKESA(_:to:)``. While that one still exists and the peer has not
    /// used this one, the peer may never have seen the rekey's answer: a member that takes
    /// over probes this IKE SA (``IKESATakeover/unconfirmedRekey``) and, without an answer,
    /// moves the Child SAs back (``GatewayState/undoIKESARekey(_:)``).
    public var rekeyedFrom: IKESAIdentifier?
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
        self.rekeyedFrom = nil
        self.generation = 0
    }
}

/// Errors building an IKE SA.
public enum IKESAError: Error, Sendable, Hashable {
    /// The initiator's SPI must not be 0 (RFC 7296 section 3.1).
    case zeroInitiatorSPI
    /// Local and remote endpoints of different address families.
    case mixedAddressFamilies
    /// Packed keys whose lengths do not describe their material (``IKEKeys/init(packed:lengths:)``).
    case invalidKeyLayout
}
