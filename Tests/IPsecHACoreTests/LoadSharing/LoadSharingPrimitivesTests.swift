import IPsecHACore
import Testing

@Suite("Load sharing: segments, rendezvous assignment, steered SPIs")
struct LoadSharingPrimitivesTests {
    static func members(_ count: Int) -> [ClusterMemberID] { (1...count).map { ClusterMemberID(rawValue: UInt16($0)) } }

    @Test func segmentCountsOutsideTheRangeAreTypedErrors() {
        #expect(throws: LoadSharingError.segmentCountOutOfRange(0)) { try ClusterSegments(count: 0, seed: 1) }
        #expect(throws: LoadSharingError.segmentCountOutOfRange(4097)) { try ClusterSegments(count: 4097, seed: 1) }
        #expect(throws: LoadSharingError.noMembers) { try SegmentAssignment(segments: ClusterSegments(count: 4, seed: 1), members: []) }
    }

    @Test func segmentsDependOnTheKeyAndTheSeedOnly() throws {
        let byPeer = try ClusterSegments(count: 64, key: .peerAddress, seed: 7)
        let bySPI = try ClusterSegments(count: 64, key: .initiatorSPI, seed: 7)
        let peer = IPAddress(ipv4: 0xC000_0205)
        // Every IKE SA of a peer shares its segment when hashing addresses, not when hashing SPIs.
        let peerSegments = Set((1...200).map { byPeer.segment(peer: peer, initiatorSPI: UInt64($0)) })
        let spiSegments = Set((1...200).map { bySPI.segment(peer: peer, initiatorSPI: UInt64($0)) })
        #expect(peerSegments.count == 1)
        #expect(spiSegments.count > 50)
        // A fixed value: every member must compute the same segment, in every process.
        #expect(byPeer.segment(peer: peer, initiatorSPI: 1) == (try ClusterSegments(count: 64, key: .peerAddress, seed: 7)).segment(peer: peer, initiatorSPI: 9))
        let reseeded = try ClusterSegments(count: 64, key: .peerAddress, seed: 8)
        let moved = (0..<256).filter { index in
            let address = IPAddress(ipv4: 0x0A00_0000 + UInt32(index))
            return byPeer.segment(peer: address, initiatorSPI: 1) != reseeded.segment(peer: address, initiatorSPI: 1)
        }
        #expect(moved.count > 200, "another seed gives another spread")
    }

    @Test func theIKESAsOfASegmentPartitionTheState() throws {
        let segments = try ClusterSegments(count: 8, key: .initiatorSPI, seed: 5)
        var random = SplitMix64(seed: 3)
        var state = GatewayState()
        for spi in 1...64 as ClosedRange<UInt64> { _ = try state.createIKESA(Fixtures.ikeSA(spi, &random)) }
        var seen: [IKESAIdentifier] = []
        for segment in segments.all {
            let identifiers = segments.ikeSAIdentifiers(in: segment, of: state)
            #expect(identifiers == identifiers.sorted())
            #expect(identifiers.allSatisfy { segments.segment(of: state.ikeSAs[$0]!) == segment })
            seen += identifiers
        }
        #expect(Set(seen) == Set(state.ikeSAs.keys) && seen.count == state.ikeSAs.count)
    }

    @Test(arguments: [2, 3, 5])
    func rendezvousIsBalancedAndMovesOnlyWhatItMust(memberCount: Int) throws {
        let segments = try ClusterSegments(count: 1024, seed: 11)
        let all = try SegmentAssignment(segments: segments, members: Self.members(memberCount))
        let mean = 1024 / memberCount
        for member in Self.members(memberCount) {
            let share = all.segments(of: member).count
            #expect(share > mean * 3 / 4 && share < mean * 5 / 4, "\(member) owns \(share) of 1024 (mean \(mean))")
        }
        // A member leaves: exactly its segments move, spread over the others.
        let leaving = ClusterMemberID(rawValue: 1)
        let without = try SegmentAssignment(segments: segments, members: Self.members(memberCount).filter { $0 != leaving })
        let moves = all.moves(to: without)
        #expect(moves.map(\.segment) == all.segments(of: leaving))
        #expect(moves.allSatisfy { $0.from == leaving && $0.to != leaving })
        if memberCount > 2 { #expect(Set(moves.map(\.to)).count == memberCount - 1) }
        // It joins again: exactly those segments come back.
        let back = without.moves(to: all)
        #expect(back.map(\.segment) == all.segments(of: leaving) && back.allSatisfy { $0.to == leaving })
        // Order and duplicates in the member list do not matter.
        #expect(try SegmentAssignment(segments: segments, members: Self.members(memberCount).reversed() + [leaving]) == all)
    }

    @Test func steeredSPIsNameTheirSegmentAndMemberAndNeverCollideAcrossMembers() throws {
        let segments = try ClusterSegments(count: 48, seed: 3)
        let layout = try SPILayout(segments: segments, memberBits: 3)
        #expect(layout.segmentBits == 6 && layout.randomBits == 23)
        let assignment = try SegmentAssignment(segments: segments, members: Self.members(5))
        var random = SplitMix64(seed: 5)
        var taken: Set<UInt32> = []
        for segment in segments.all {
            for member in Self.members(5) {
                for _ in 0..<20 {
                    let spi = try layout.allocate(segment: segment, member: member, using: &random) { taken.contains($0) }
                    #expect(spi > 255)
                    #expect(layout.segment(ofSPI: spi) == segment)
                    #expect(layout.allocatingMember(ofSPI: spi) == member)
                    #expect(assignment.owner(ofInboundSPI: spi, layout: layout) == assignment.owner(of: segment))
                    #expect(taken.insert(spi).inserted)
                }
            }
        }
        // SPIs whose top bits name no segment (60 of 48) belong to nobody; all ones marks a
        // duplicated Child SA, steered by its member bits.
        #expect(layout.segment(ofSPI: 0xF000_0000) == nil && layout.steering(ofSPI: 0xF000_0000) == nil)
        #expect(assignment.owner(ofInboundSPI: 0xF000_0000, layout: layout) == nil)
        #expect(layout.steering(ofSPI: 0xFFFF_FFFF) == .member(ClusterMemberID(rawValue: 7)))
    }

    @Test func layoutsAndAllocationsThatCannotWorkAreTypedErrors() throws {
        let segments = try ClusterSegments(count: 4096, seed: 3)
        #expect(throws: LoadSharingError.spiLayoutTooNarrow(segmentBits: 13, memberBits: 8)) { try SPILayout(segments: segments, memberBits: 8) }
        let layout = try SPILayout(segments: segments, memberBits: 4)
        var random = SplitMix64(seed: 1)
        #expect(throws: LoadSharingError.memberOutsideLayout(ClusterMemberID(rawValue: 16), memberBits: 4)) {
            try layout.allocate(segment: Segment(rawValue: 0), member: ClusterMemberID(rawValue: 16), using: &random) { _ in false }
        }
        #expect(throws: LoadSharingError.unknownSegment(Segment(rawValue: 4096))) {
            try layout.allocate(segment: Segment(rawValue: 4096), member: ClusterMemberID(rawValue: 1), using: &random) { _ in false }
        }
        #expect(throws: LoadSharingError.spiSpaceExhausted(Segment(rawValue: 2), ClusterMemberID(rawValue: 1))) {
            try layout.allocate(segment: Segment(rawValue: 2), member: ClusterMemberID(rawValue: 1), using: &random) { _ in true }
        }
        // Segment 0, member 0: the reserved SPIs 1 to 255 are in its space and never come out.
        let one = try SPILayout(segments: ClusterSegments(count: 1, seed: 1), memberBits: 19)
        for _ in 0..<2_000 {
            #expect(try one.allocate(segment: Segment(rawValue: 0), member: ClusterMemberID(rawValue: 0), using: &random) { _ in false } > 255)
        }
    }
}
