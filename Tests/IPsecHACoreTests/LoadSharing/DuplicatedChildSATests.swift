import IPsecHACore
import Testing

@Suite("Load sharing: duplicated Child SAs")
struct DuplicatedChildSATests {
    static let members = (1...3).map { ClusterMemberID(rawValue: UInt16($0)) }
    static let packet = FiveTuple(
        localAddress: IPAddress(ipv4: 0x0A00_0005), remoteAddress: IPAddress(ipv4: 0xC633_6401), ipProtocol: 6, localPort: 443,
        remotePort: 50_000)

    /// One IKE SA with a Child SA per member, same policy and selectors, SPIs steered to each
    /// member; the state sends for `local`.
    static func state(local: ClusterMemberID?, layout: SPILayout) throws -> (GatewayState, [ClusterMemberID: UInt32]) {
        var random = SplitMix64(seed: 12)
        var state = GatewayState(localMember: local)
        let policy = SecurityPolicy(
            id: SecurityPolicyID(rawValue: 1), localSelectors: [try TrafficSelector(prefix: IPAddress(ipv4: 0x0A00_0000), length: 8)],
            remoteSelectors: [.any(.ipv4)], action: .protect(ProtectionSettings()))
        _ = try state.installPolicy(policy)
        let ike = Fixtures.ikeSA(7, &random)
        _ = try state.createIKESA(ike)
        var spis: [ClusterMemberID: UInt32] = [:]
        for member in members {
            let spi = try layout.allocateDuplicated(member: member, using: &random) { state.childSA(inboundSPI: $0) != nil }
            var child = Fixtures.childSA(
                inboundSPI: spi, parent: ike.identifier, policy: policy.id, local: policy.localSelectors, remote: policy.remoteSelectors, &random)
            child.owner = member
            _ = try state.createChildSA(child)
            spis[member] = spi
        }
        return (state, spis)
    }

    @Test func eachMemberSendsOnItsOwnChildSAOfTheGroup() throws {
        let layout = try SPILayout(segments: ClusterSegments(count: 32, seed: 1))
        for member in Self.members {
            var (state, spis) = try Self.state(local: member, layout: layout)
            guard case .protect(let slot) = state.outboundDecision(for: Self.packet) else {
                Issue.record("no Child SA for the flow")
                continue
            }
            #expect(state[slot]?.inboundSPI == spis[member], "\(member) sends on its own Child SA")
            // Cached: the same answer again, from the SPD cache.
            #expect(state.outboundDecision(for: Self.packet) == .protect(slot))
            #expect(state.spdCacheStatistics.hits == 1)
        }
        // A member without a Child SA in the group has nothing to send on.
        var (outsider, _) = try Self.state(local: ClusterMemberID(rawValue: 9), layout: layout)
        #expect(outsider.outboundDecision(for: Self.packet) == .acquire(SecurityPolicyID(rawValue: 1)))
    }

    @Test func theGroupIsModelledAndItsSPIsSteerToTheirMembers() throws {
        let layout = try SPILayout(segments: ClusterSegments(count: 32, seed: 1))
        let (state, spis) = try Self.state(local: nil, layout: layout)
        let group = try #require(state.duplicatedGroup(ofInboundSPI: spis[Self.members[0]]!))
        #expect(group.members == Self.members)
        #expect(group.inboundSPIs == spis)
        #expect(state.duplicatedGroup(ofInboundSPI: spis[Self.members[2]]!) == group)
        let assignment = try SegmentAssignment(segments: layout.segments, members: Self.members)
        for (member, spi) in spis {
            #expect(layout.steering(ofSPI: spi) == .member(member))
            #expect(layout.segment(ofSPI: spi) == nil)
            #expect(assignment.owner(ofInboundSPI: spi, layout: layout) == member)
        }
        // A lone Child SA is no group.
        var lone = state
        for member in Self.members.dropFirst() { _ = try lone.deleteChildSA(inboundSPI: spis[member]!) }
        #expect(lone.duplicatedGroup(ofInboundSPI: spis[Self.members[0]]!) == nil)
        #expect(state.duplicatedGroup(ofInboundSPI: 0x1234) == nil)
    }
}
