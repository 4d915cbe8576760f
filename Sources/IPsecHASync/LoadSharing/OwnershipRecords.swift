public import IPsecHACore

/// Who owns a segment, at which version. A claim with a higher version replaces a lower one;
/// two claims of the same version (only a split brain makes them) resolve to the higher
/// member ID.
public struct SegmentClaim: Sendable, Hashable, CustomStringConvertible {
    /// The segment.
    public var segment: Segment
    /// Its owner; nil before any member took it, or after its owner released it.
    public var owner: ClusterMemberID?
    /// The owner's incarnation (its synch channel epoch) when it got the segment: a member that
    /// restarted does not own what it owned in a previous life.
    public var incarnation: UInt32
    /// Bumped by every change of owner.
    public var version: UInt64

    /// A claim from its parts.
    public init(segment: Segment, owner: ClusterMemberID?, incarnation: UInt32 = 0, version: UInt64) {
        self.segment = segment
        self.owner = owner
        self.incarnation = incarnation
        self.version = version
    }

    /// Whether this claim replaces `held`.
    public func supersedes(_ held: SegmentClaim) -> Bool {
        version > held.version || (version == held.version && (owner?.rawValue ?? 0) > (held.owner?.rawValue ?? 0))
    }

    public var description: String { "\(segment) -> \(owner.map { "\($0) (incarnation \(incarnation))" } ?? "nobody") v\(version)" }
}

/// The periodic message of ``SegmentOwnership`` to one peer: liveness, the lease echo, the
/// sender's view of the cluster, and how far each side got in the other's claims.
public struct OwnershipBeacon: Sendable, Hashable {
    /// The sender's incarnation (its synch channel epoch).
    public var incarnation: UInt32
    /// The recipient's incarnation as the sender knows it (0: none heard yet): the one that
    /// ``echo`` and ``claimsProcessed`` refer to. A recipient that restarted since ignores them.
    public var recipientIncarnation: UInt32
    /// When the sender sent it, on the sender's clock.
    public var sentAt: Timestamp
    /// The latest ``sentAt`` the sender received from the recipient (nil: none yet), echoed so
    /// that the recipient can renew its lease from the time it sent that beacon.
    public var echo: Timestamp?
    /// The members the sender counts as up, itself included, ascending.
    public var up: [ClusterMemberID]
    /// The sequence number of the last claims record the sender sent the recipient.
    public var claimsSent: UInt64
    /// The sequence number of the last claims record the sender processed from the recipient.
    public var claimsProcessed: UInt64
    /// Whether the sender holds complete replicas of every other member and may be handed
    /// segments.
    public var ready: Bool

    /// A beacon from its parts.
    public init(
        incarnation: UInt32, recipientIncarnation: UInt32, sentAt: Timestamp, echo: Timestamp?, up: [ClusterMemberID], claimsSent: UInt64,
        claimsProcessed: UInt64, ready: Bool
    ) {
        self.incarnation = incarnation
        self.recipientIncarnation = recipientIncarnation
        self.sentAt = sentAt
        self.echo = echo
        self.up = up
        self.claimsSent = claimsSent
        self.claimsProcessed = claimsProcessed
        self.ready = ready
    }
}

extension StateEncoding {
    /// The most members a beacon lists (the member-ID space of an SPI layout is far smaller).
    static let beaconMemberLimit = 1024

    static func write(_ beacon: OwnershipBeacon, into w: inout ByteWriter) throws(SyncCodecError) {
        guard beacon.up.count <= beaconMemberLimit else { throw .recordTooLarge(beacon.up.count) }
        w.write(beacon.incarnation)
        w.write(beacon.recipientIncarnation)
        w.write(beacon.sentAt.nanoseconds)
        w.write(beacon.echo?.nanoseconds ?? 0)
        w.write(beacon.claimsSent)
        w.write(beacon.claimsProcessed)
        w.write(beacon.ready)
        w.write(UInt16(beacon.up.count))
        for member in beacon.up { w.write(member.rawValue) }
    }

    static func readBeacon(_ r: inout ByteReader) throws(SyncCodecError) -> OwnershipBeacon {
        let incarnation = try r.readUInt32()
        let recipientIncarnation = try r.readUInt32()
        let sentAt = Timestamp(nanoseconds: try r.readUInt64())
        let echo = try r.readUInt64()
        let claimsSent = try r.readUInt64()
        let claimsProcessed = try r.readUInt64()
        let ready = try r.readBool()
        let count = Int(try r.readUInt16())
        guard count <= beaconMemberLimit, r.remaining == 2 * count else { throw .invalidValue("beacon member count \(count)") }
        var up: [ClusterMemberID] = []
        up.reserveCapacity(count)
        for _ in 0..<count { up.append(ClusterMemberID(rawValue: try r.readUInt16())) }
        return OwnershipBeacon(
            incarnation: incarnation, recipientIncarnation: recipientIncarnation, sentAt: sentAt, echo: echo == 0 ? nil : Timestamp(nanoseconds: echo), up: up, claimsSent: claimsSent,
            claimsProcessed: claimsProcessed, ready: ready)
    }

    /// Bytes of one claim on the wire: segment, owner flag, owner, incarnation, version.
    static let claimSize = 17

    static func write(claims: [SegmentClaim], into w: inout ByteWriter) throws(SyncCodecError) {
        guard claims.count <= ClusterSegments.maximumCount else { throw .recordTooLarge(claims.count) }
        w.write(UInt16(claims.count))
        for claim in claims {
            w.write(claim.segment.rawValue)
            w.write(claim.owner != nil)
            w.write(claim.owner?.rawValue ?? 0)
            w.write(claim.incarnation)
            w.write(claim.version)
        }
    }

    static func readClaims(_ r: inout ByteReader) throws(SyncCodecError) -> [SegmentClaim] {
        let count = Int(try r.readUInt16())
        guard count <= ClusterSegments.maximumCount, r.remaining == count * claimSize else {
            throw .invalidValue("claim count \(count)")
        }
        var claims: [SegmentClaim] = []
        claims.reserveCapacity(count)
        for _ in 0..<count {
            let segment = Segment(rawValue: try r.readUInt16())
            let hasOwner = try r.readBool()
            let owner = ClusterMemberID(rawValue: try r.readUInt16())
            let incarnation = try r.readUInt32()
            claims.append(SegmentClaim(segment: segment, owner: hasOwner ? owner : nil, incarnation: incarnation, version: try r.readUInt64()))
        }
        return claims
    }
}
