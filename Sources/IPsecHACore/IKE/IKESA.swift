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
/// The seven keys live one after the other in one zeroed-on-release allocation, and each key
/// is read as a view of it: copying an IKE SA (as a takeover plan or a replication record does,
/// a hundred thousand times) costs one reference, and a standby that receives a hundred
/// thousand IKE SAs makes one allocation for each one's keys, not eight. (A box holding the
/// seven views was a second allocation of 160 bytes an IKE SA.) Changing a key repacks them.
public struct IKEKeys: Sendable, Equatable {
    /// Where each key but the last ends in ``packed``, in bytes from its start (SK_pr ends
    /// with it).
    @usableFromInline struct Ends: Sendable, Equatable {
        @usableFromInline var d, ai, ar, ei, er, pi: UInt32
    }

    /// SK_d to SK_pr, one after the other.
    @usableFromInline private(set) var packed: KeyMaterial
    @usableFromInline private(set) var ends: Ends

    /// SK_d: derives Child SA keys.
    public var d: KeyMaterial { get { key(from: 0, to: ends.d) } set { replace(0, newValue) } }
    /// SK_ai: integrity of the original initiator's messages.
    public var ai: KeyMaterial { get { key(from: ends.d, to: ends.ai) } set { replace(1, newValue) } }
    /// SK_ar: integrity of the original responder's messages.
    public var ar: KeyMaterial { get { key(from: ends.ai, to: ends.ar) } set { replace(2, newValue) } }
    /// SK_ei: encryption of the original initiator's messages.
    public var ei: KeyMaterial { get { key(from: ends.ar, to: ends.ei) } set { replace(3, newValue) } }
    /// SK_er: encryption of the original responder's messages.
    public var er: KeyMaterial { get { key(from: ends.ei, to: ends.er) } set { replace(4, newValue) } }
    /// SK_pi: the original initiator's AUTH payload.
    public var pi: KeyMaterial { get { key(from: ends.er, to: ends.pi) } set { replace(5, newValue) } }
    /// SK_pr: the original responder's AUTH payload.
    public var pr: KeyMaterial { get { key(from: ends.pi, to: UInt32(packed.count)) } set { replace(6, newValue) } }

    /// Keys from their parts (copied into one allocation).
    public init(
        d: KeyMaterial, ai: KeyMaterial, ar: KeyMaterial, ei: KeyMaterial, er: KeyMaterial, pi: KeyMaterial,
        pr: KeyMaterial
    ) {
        (packed, ends) = Self.packing([d, ai, ar, ei, er, pi, pr])
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
        // Checked as they are summed, so that no sum can overflow (the material's length fits
        // 32 bits, so every end does); a standby does this per IKE SA it receives, so without
        // closures over arrays or intermediate arrays.
        var total = 0
        for length in lengths {
            guard length >= 0, length <= material.count - total else { throw .invalidKeyLayout }
            total += length
        }
        guard total == material.count else { throw .invalidKeyLayout }
        packed = material
        ends = Self.ends(lengths)
    }

    /// Calls `body` with the seven keys' bytes, SK_d to SK_pr one after the other, and the
    /// length of each: how a bulk resync writes an IKE SA's keys in one pass (reading each key
    /// on its own cost a reference and a closure call a key, 900 instructions an IKE SA).
    /// Inlinable, so that the encoder specialises it: called across the module boundary, the
    /// generic instantiated `Result`'s metadata at run time, 420 instructions an IKE SA.
    @inlinable package func withPackedBytes<Result, Failure: Error>(
        _ body: (UnsafeRawBufferPointer, UnsafeBufferPointer<Int>) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        let ends = ends
        return try withUnsafeTemporaryAllocation(of: Int.self, capacity: 7) { (lengths) throws(Failure) in
            lengths.initializeElement(at: 0, to: Int(ends.d))
            lengths.initializeElement(at: 1, to: Int(ends.ai - ends.d))
            lengths.initializeElement(at: 2, to: Int(ends.ar - ends.ai))
            lengths.initializeElement(at: 3, to: Int(ends.ei - ends.ar))
            lengths.initializeElement(at: 4, to: Int(ends.er - ends.ei))
            lengths.initializeElement(at: 5, to: Int(ends.pi - ends.er))
            lengths.initializeElement(at: 6, to: packed.count - Int(ends.pi))
            return try packed.withUnsafeBytes { (bytes) throws(Failure) in try body(bytes, UnsafeBufferPointer(lengths)) }
        }
    }

    private func key(from start: UInt32, to end: UInt32) -> KeyMaterial {
        packed.view(Int(start), Int(end - start))
    }

    private var all: [KeyMaterial] { [d, ai, ar, ei, er, pi, pr] }

    private mutating func replace(_ index: Int, _ key: KeyMaterial) {
        var keys = all
        keys[index] = key
        (packed, ends) = Self.packing(keys)
    }

    /// The seven keys copied into one allocation, and where each ends.
    private static func packing(_ keys: [KeyMaterial]) -> (KeyMaterial, Ends) {
        keys.map(\.count).withUnsafeBufferPointer { (KeyMaterial.concatenating(keys), ends($0)) }
    }

    /// The ends of the first six of seven keys of these lengths, which add up to at most
    /// `UInt32.max`.
    private static func ends(_ lengths: UnsafeBufferPointer<Int>) -> Ends {
        var end: UInt32 = 0
        func next(_ index: Int) -> UInt32 {
            end += UInt32(lengths[index])
            return end
        }
        return Ends(d: next(0), ai: next(1), ar: next(2), ei: next(3), er: next(4), pi: next(5))
    }

    public static func == (lhs: IKEKeys, rhs: IKEKeys) -> Bool {
        // Same lengths (the last is what the packed bytes' count leaves), then every byte
        // compared, whatever the first differences: the time depends on the lengths only.
        lhs.ends == rhs.ends && lhs.packed == rhs.packed
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
    // Swift lays stored properties out in declaration order. First, within the first 120 bytes,
    // what the takeover plan reads of every IKE SA (twice): at a million IKE SAs it is bound by
    // the memory it streams through (as for ``ChildSA``).
    /// The SPI pair naming the SA.
    public let identifier: IKESAIdentifier
    /// RFC 6311 support and ESN for the children.
    public var extensions: IKEExtensions
    /// Whether this gateway was the original initiator (sets the I flag, picks SK_ei vs SK_er).
    public var isOriginalInitiator: Bool
    /// Lifecycle state.
    public var state: IKESAState
    /// The cluster member that runs the IKE SA.
    public var owner: ClusterMemberID
    /// Message-ID windows of both directions.
    public var messageIDs: IKEMessageIDWindows
    /// The IKE SA this one replaced by a rekey (RFC 7296 section 2.18), set by
    /// ``GatewayState/rekeyIKESA(_:to:)``. While that one still exists and the peer has not
    /// used this one, the peer may never have seen the rekey's answer: a member that takes
    /// over probes this IKE SA (``IKESATakeover/unconfirmedRekey``) and, without an answer,
    /// moves the Child SAs back (``GatewayState/undoIKESARekey(_:)``).
    public var rekeyedFrom: IKESAIdentifier?
    /// Inbound SPIs of the Child SAs this IKE SA governs, ascending. Kept by ``GatewayState``.
    public internal(set) var childSAs: [UInt32]
    /// Bumped on every replicated change; a replica never applies an older one. ``GatewayState``
    /// sets it on every change it makes; decoders of replicated records set it from the wire.
    public var generation: UInt64
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
