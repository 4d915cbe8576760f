/// Which member should own each segment, given the members that are up: rendezvous (highest
/// random weight) hashing.
///
/// Each (segment, member) pair gets a keyed pseudo-random weight; a segment goes to the member
/// of highest weight. The rule is deterministic (every member computes the same table from
/// the same member set), balanced in expectation (each of n members gets about 1/n of the
/// segments), and moves as little as possible: when a member leaves only its segments move,
/// spread over the others; when one joins it takes about 1/n from each, and nothing else moves.
public struct SegmentAssignment: Sendable, Hashable {
    /// The segments assigned.
    public let segments: ClusterSegments
    /// The members assigned to, in ascending order.
    public let members: [ClusterMemberID]
    private let owners: [ClusterMemberID]

    /// The assignment of `segments` over `members` (duplicates ignored). Throws
    /// ``LoadSharingError/noMembers`` for an empty set.
    public init(segments: ClusterSegments, members: some Sequence<ClusterMemberID>) throws(LoadSharingError) {
        let sorted = Array(Set(members)).sorted()
        guard !sorted.isEmpty else { throw .noMembers }
        self.segments = segments
        self.members = sorted
        owners = segments.all.map { segment in
            var best = sorted[0]
            var bestWeight = Self.weight(segment, best, seed: segments.seed)
            for member in sorted.dropFirst() {
                let weight = Self.weight(segment, member, seed: segments.seed)
                if weight > bestWeight { (best, bestWeight) = (member, weight) }
            }
            return best
        }
    }

    /// The member that should own `segment` (nil for a segment the cluster does not have).
    public func owner(of segment: Segment) -> ClusterMemberID? {
        Int(segment.rawValue) < owners.count ? owners[Int(segment.rawValue)] : nil
    }

    /// The segments `member` should own, in order.
    public func segments(of member: ClusterMemberID) -> [Segment] {
        owners.indices.filter { owners[$0] == member }.map { Segment(rawValue: UInt16($0)) }
    }

    /// The segments whose owner differs in `other`, with both owners, in segment order.
    public func moves(to other: SegmentAssignment) -> [(segment: Segment, from: ClusterMemberID, to: ClusterMemberID)] {
        zip(owners, other.owners).enumerated().compactMap { index, pair in
            pair.0 == pair.1 ? nil : (Segment(rawValue: UInt16(index)), pair.0, pair.1)
        }
    }

    /// The weight of a member for a segment; ties (a chance of 2^-64) go to the lower member ID.
    static func weight(_ segment: Segment, _ member: ClusterMemberID, seed: UInt64) -> UInt64 {
        ClusterSegments.mix(ClusterSegments.mix(seed ^ 0x5345_474D_454E_5400 ^ UInt64(segment.rawValue)) ^ UInt64(member.rawValue))
    }
}
