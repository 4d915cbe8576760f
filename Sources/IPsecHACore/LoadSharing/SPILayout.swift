/// How a load-sharing cluster lays out its inbound SPIs so that the SPI alone tells which
/// segment (and so which member) owns a Child SA: `[segment | member | random]`, from the top bit.
///
/// - The segment field is the segment of the Child SA's IKE SA: a load balancer, or a member
///   that received a packet it does not own, maps the SPI to the segment's current owner with
///   one shift and a table of ``ClusterSegments/count`` entries, and the mapping follows the
///   segment when it moves.
/// - The member field is the member that allocated the SPI. Two members never draw from the
///   same part of the space, so their SPIs cannot collide, even when one of them allocated an
///   SPI the other never heard of (a synch message lost before a crash); each member checks
///   its draws only against the SPIs it knows of.
/// - A segment field of all ones marks the Child SA of a duplicated group (RFC 7296 section 2.8,
///   ``DuplicatedChildSAGroup``): each member has its own Child SA with the same selectors, and
///   inbound ESP on it goes to the member its member field names, wherever the IKE SA lives.
/// - The random bits come from the caller's generator: `SodiumRandomNumberGenerator` (libsodium's
///   `randombytes`) in production, so that SPIs are not predictable.
///
/// SPIs 0 to 255 are reserved (RFC 4303 section 2.1) and never allocated.
public struct SPILayout: Sendable, Hashable {
    /// The fewest random bits a layout may leave (4,096 SPIs per segment and member).
    public static let minimumRandomBits = 12
    /// Draws before ``allocate(segment:member:using:isTaken:)`` gives up on a crowded space.
    public static let allocationAttempts = 64

    /// The cluster's segments.
    public let segments: ClusterSegments
    /// Bits of the segment field: enough for ``ClusterSegments/count`` segments and the
    /// all-ones marker of duplicated Child SAs.
    public let segmentBits: Int
    /// Bits of the member field: member IDs must be below 2^memberBits.
    public let memberBits: Int
    /// The remaining, random, bits.
    public var randomBits: Int { 32 - segmentBits - memberBits }

    /// A layout for `segments` and members with IDs below 2^`memberBits`. Throws
    /// ``LoadSharingError/spiLayoutTooNarrow(segmentBits:memberBits:)`` when fewer than
    /// ``minimumRandomBits`` random bits remain.
    public init(segments: ClusterSegments, memberBits: Int = 4) throws(LoadSharingError) {
        let segmentBits = Int.bitWidth - segments.count.leadingZeroBitCount
        guard memberBits >= 0, 32 - segmentBits - memberBits >= Self.minimumRandomBits else {
            throw .spiLayoutTooNarrow(segmentBits: segmentBits, memberBits: memberBits)
        }
        self.segments = segments
        self.segmentBits = segmentBits
        self.memberBits = memberBits
    }

    /// The segment an SPI was allocated in; nil for an SPI outside the cluster's segments
    /// (a duplicated Child SA's, or one not allocated by this layout).
    public func segment(ofSPI spi: UInt32) -> Segment? {
        let value = Int(spi >> UInt32(32 - segmentBits))
        return value < segments.count ? Segment(rawValue: UInt16(value)) : nil
    }

    /// Where inbound ESP with this SPI goes: the member serving its segment, or, for a
    /// duplicated Child SA, the member that allocated it; nil for an SPI this layout did not make.
    public func steering(ofSPI spi: UInt32) -> SPISteering? {
        if let segment = segment(ofSPI: spi) { return .segment(segment) }
        return Int(spi >> UInt32(32 - segmentBits)) == duplicatedMarker ? .member(allocatingMember(ofSPI: spi)) : nil
    }

    /// The segment field value that marks a duplicated Child SA.
    private var duplicatedMarker: Int { (1 << segmentBits) - 1 }

    /// The member that allocated an SPI.
    public func allocatingMember(ofSPI spi: UInt32) -> ClusterMemberID {
        ClusterMemberID(rawValue: UInt16(truncatingIfNeeded: (UInt64(spi) >> UInt64(randomBits)) & ((1 << UInt64(memberBits)) - 1)))
    }

    /// A new inbound SPI in `segment` for `member`: random bits from `generator`, redrawn while
    /// `isTaken` says the SPI is in use (pass the member's SAD: ``GatewayState/childSA(inboundSPI:)``)
    /// or it is reserved. Throws for a segment or member that does not fit, or, after
    /// ``allocationAttempts`` draws, ``LoadSharingError/spiSpaceExhausted(_:_:)``.
    public func allocate(
        segment: Segment, member: ClusterMemberID, using generator: inout some RandomNumberGenerator,
        isTaken: (UInt32) -> Bool
    ) throws(LoadSharingError) -> UInt32 {
        guard Int(segment.rawValue) < segments.count else { throw .unknownSegment(segment) }
        return try allocate(field: Int(segment.rawValue), member: member, using: &generator, isTaken: isTaken, segment: segment)
    }

    /// A new inbound SPI for `member`'s Child SA of a duplicated group: steered to that member
    /// whoever owns the IKE SA. Throws as ``allocate(segment:member:using:isTaken:)``.
    public func allocateDuplicated(
        member: ClusterMemberID, using generator: inout some RandomNumberGenerator, isTaken: (UInt32) -> Bool
    ) throws(LoadSharingError) -> UInt32 {
        try allocate(field: duplicatedMarker, member: member, using: &generator, isTaken: isTaken, segment: Segment(rawValue: UInt16(duplicatedMarker)))
    }

    private func allocate(
        field: Int, member: ClusterMemberID, using generator: inout some RandomNumberGenerator, isTaken: (UInt32) -> Bool,
        segment: Segment
    ) throws(LoadSharingError) -> UInt32 {
        guard UInt64(member.rawValue) < (1 << UInt64(memberBits)) else { throw .memberOutsideLayout(member, memberBits: memberBits) }
        let prefix = (UInt64(field) << UInt64(32 - segmentBits)) | (UInt64(member.rawValue) << UInt64(randomBits))
        let randomMask: UInt64 = (1 << UInt64(randomBits)) - 1
        for _ in 0..<Self.allocationAttempts {
            let spi = UInt32(truncatingIfNeeded: prefix | (generator.next() & randomMask))
            if spi > 255, !isTaken(spi) { return spi }
        }
        throw .spiSpaceExhausted(segment, member)
    }
}

/// Where inbound ESP goes, from its SPI alone (``SPILayout/steering(ofSPI:)``).
public enum SPISteering: Sendable, Hashable {
    /// To the member that serves this segment.
    case segment(Segment)
    /// To this member (its Child SA of a duplicated group).
    case member(ClusterMemberID)
}

extension SegmentAssignment {
    /// The member that should own the Child SA with this inbound SPI (nil for an SPI outside
    /// the layout's segments): stateless steering of inbound ESP.
    public func owner(ofInboundSPI spi: UInt32, layout: SPILayout) -> ClusterMemberID? {
        switch layout.steering(ofSPI: spi) {
        case .segment(let segment): owner(of: segment)
        case .member(let member): member
        case nil: nil
        }
    }
}
