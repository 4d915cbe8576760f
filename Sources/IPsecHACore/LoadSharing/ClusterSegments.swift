/// One of the hash buckets a load-sharing cluster divides its IKE SAs into. Segments, not
/// IKE SAs, are what members own, hand over and take over.
public struct Segment: RawRepresentable, Sendable, Hashable, Comparable, CustomStringConvertible {
    /// The segment number, from 0 to the cluster's segment count minus 1.
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { "segment \(rawValue)" }
}

/// What an IKE SA's segment is computed from.
public enum SegmentKey: Sendable, Hashable {
    /// The peer's IP address: every IKE SA and Child SA of a peer lands in one segment, so a
    /// load balancer that hashes the outer source address of IKE and ESP packets steers both
    /// (strongSwan's HA plugin does this). Many peers behind one NAT share a segment.
    case peerAddress
    /// The original initiator's IKE SPI: spreads the IKE SAs of one address (a NAT, a big
    /// peer) over the cluster. Inbound ESP is then steered by the SPI (``SPILayout``), IKE
    /// messages by their IKE header.
    case initiatorSPI
}

/// How a segment's hash is computed from its key.
public enum SegmentHash: Sendable, Hashable {
    /// A 64-bit keyed mix of the seed and the key (SplitMix64's finaliser): for a steering
    /// engine of the embedder's own, or none.
    case keyedMix
    /// The Linux kernel's jhash with the seed's low 32 bits, scaled to the segment count as
    /// nftables' `jhash ... mod N` scales it (``LinuxJHash``): over the peer address's 4 or 16
    /// bytes, or the initiator SPI's 8 bytes in network order. What a rule such as
    /// `jhash ip saddr mod 64 seed 0x5eed` computes in the kernel, so that nftables steers each
    /// packet to its segment's member with no process in the path (Docs/LoadSharing.md).
    case nftablesJHash
}

/// How a cluster divides IKE SAs into segments: the number of segments, what is hashed, how,
/// and the cluster-wide hash seed. Every member must use the same values.
///
/// The hash is keyed (not cryptographic): with a seed kept secret, like the cluster key, a peer
/// cannot pick addresses or SPIs that crowd one segment. It must not be Swift's `Hasher`, whose
/// seed differs from process to process.
public struct ClusterSegments: Sendable, Hashable {
    /// The most segments a cluster may have: 2^12, so that the segment fits in the top bits of
    /// an SPI beside the member bits (``SPILayout``).
    public static let maximumCount = 4096

    /// How many segments (1 to ``maximumCount``).
    public let count: Int
    /// What is hashed.
    public let key: SegmentKey
    /// The cluster-wide hash seed (its low 32 bits only with ``SegmentHash/nftablesJHash``).
    public let seed: UInt64
    /// How the key is hashed.
    public let hash: SegmentHash

    /// Segments from their count, key, seed and hash. Throws
    /// ``LoadSharingError/segmentCountOutOfRange(_:)``.
    public init(count: Int, key: SegmentKey = .peerAddress, seed: UInt64, hash: SegmentHash = .keyedMix) throws(LoadSharingError) {
        guard count >= 1, count <= Self.maximumCount else { throw .segmentCountOutOfRange(count) }
        self.count = count
        self.key = key
        self.seed = seed
        self.hash = hash
    }

    /// Every segment, in order.
    public var all: [Segment] { (0..<count).map { Segment(rawValue: UInt16($0)) } }

    /// The segment of an IKE SA with this peer and initiator SPI.
    public func segment(peer: IPAddress, initiatorSPI: UInt64) -> Segment {
        switch (hash, key) {
        case (.keyedMix, .peerAddress): segment(ofHash: Self.mix(Self.mix(seed ^ peer.high) ^ peer.low ^ UInt64(peer.family.rawValue)))
        case (.keyedMix, .initiatorSPI): segment(ofHash: Self.mix(seed ^ initiatorSPI))
        case (.nftablesJHash, .peerAddress): segment(ofJHashOver: peer.bytes)
        case (.nftablesJHash, .initiatorSPI): segment(ofJHashOver: (0..<8).map { UInt8(truncatingIfNeeded: initiatorSPI >> (56 - 8 * $0)) })
        }
    }

    private func segment(ofJHashOver bytes: [UInt8]) -> Segment {
        let hash = LinuxJHash.hash(bytes, seed: UInt32(truncatingIfNeeded: seed))
        return Segment(rawValue: UInt16(LinuxJHash.scale(hash, to: UInt32(count))))
    }

    /// The segment of an IKE SA.
    public func segment(of sa: IKESA) -> Segment {
        segment(peer: sa.remote.address, initiatorSPI: sa.identifier.initiatorSPI)
    }

    /// The identifiers of the IKE SAs of `state` that fall in `segment`, in order.
    public func ikeSAIdentifiers(in segment: Segment, of state: GatewayState) -> [IKESAIdentifier] {
        state.ikeSAs.values.filter { self.segment(of: $0) == segment }.map(\.identifier).sorted()
    }

    /// Scales a 64-bit hash to a segment by multiplication (no modulo bias, no division),
    /// as Linux's ClusterIP scales its hash to node numbers.
    private func segment(ofHash hash: UInt64) -> Segment {
        Segment(rawValue: UInt16(truncatingIfNeeded: hash.multipliedFullWidth(by: UInt64(count)).high))
    }

    /// A 64-bit finaliser (SplitMix64's): every input bit reaches every output bit.
    static func mix(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z &>> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z &>> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z &>> 31)
    }
}

/// Errors of the load-sharing primitives.
public enum LoadSharingError: Error, Sendable, Hashable {
    /// A segment count outside 1 to ``ClusterSegments/maximumCount``.
    case segmentCountOutOfRange(Int)
    /// An SPI layout whose bits do not fit: the segment and member bits leave fewer than
    /// ``SPILayout/minimumRandomBits`` random bits.
    case spiLayoutTooNarrow(segmentBits: Int, memberBits: Int)
    /// A member whose ID does not fit the layout's member bits.
    case memberOutsideLayout(ClusterMemberID, memberBits: Int)
    /// A segment the cluster does not have.
    case unknownSegment(Segment)
    /// No free SPI was found in the segment and member's part of the SPI space.
    case spiSpaceExhausted(Segment, ClusterMemberID)
    /// A cluster without members.
    case noMembers
}
