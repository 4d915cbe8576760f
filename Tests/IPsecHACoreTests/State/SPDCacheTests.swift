import IPsecHACore
import Testing

/// The reference the cache must agree with: walk the policies in order, then the PROTECT
/// policy's Child SAs in the order they were installed.
struct NaiveSPD {
    enum Decision: Equatable { case protect(UInt32), bypass(UInt32), discard(UInt32?), acquire(UInt32) }

    var policies: [SecurityPolicy] = []
    var children: [(spi: UInt32, policy: SecurityPolicyID, local: [TrafficSelector], remote: [TrafficSelector])] = []

    func decide(_ packet: FiveTuple) -> Decision {
        for policy in policies where policy.matches(packet) {
            switch policy.action {
            case .bypass: return .bypass(policy.id.rawValue)
            case .discard: return .discard(policy.id.rawValue)
            case .protect:
                for child in children where child.policy == policy.id {
                    let local = child.local.contains { $0.contains(address: packet.localAddress, ipProtocol: packet.ipProtocol, port: packet.localPort) }
                    let remote = child.remote.contains { $0.contains(address: packet.remoteAddress, ipProtocol: packet.ipProtocol, port: packet.remotePort) }
                    if local && remote { return .protect(child.spi) }
                }
                return .acquire(policy.id.rawValue)
            }
        }
        return .discard(nil)
    }
}

@Suite("SPD cache against an ordered SPD walk")
struct SPDCacheTests {
    static func randomSelector(_ random: inout SplitMix64, base: UInt32) -> TrafficSelector {
        let low = base + UInt32(random.next() % 16)
        let high = low + UInt32(random.next() % 8)
        let proto: UInt8 = [0, 0, 6, 17][Int(random.next() % 4)]
        let portLow = UInt16(random.next() % 12)
        let portHigh = random.next() % 3 == 0 ? 65535 : portLow + UInt16(random.next() % 6)
        return try! TrafficSelector(
            startAddress: IPAddress(ipv4: low), endAddress: IPAddress(ipv4: high), ipProtocol: proto,
            startPort: portLow, endPort: portHigh)
    }

    static let localBase: UInt32 = 0x0A00_0000
    static let remoteBase: UInt32 = 0x0A01_0000

    static func randomPacket(_ random: inout SplitMix64) -> FiveTuple {
        FiveTuple(
            localAddress: IPAddress(ipv4: localBase + UInt32(random.next() % 26)),
            remoteAddress: IPAddress(ipv4: remoteBase + UInt32(random.next() % 26)),
            ipProtocol: [6, 17, 1][Int(random.next() % 3)],
            localPort: UInt16(random.next() % 20), remotePort: UInt16(random.next() % 20))
    }

    static func randomPolicy(id: UInt32, _ random: inout SplitMix64) -> SecurityPolicy {
        let action: SecurityPolicyAction = [.protect(ProtectionSettings()), .protect(ProtectionSettings()), .bypass, .discard][Int(random.next() % 4)]
        return SecurityPolicy(
            id: SecurityPolicyID(rawValue: id),
            localSelectors: (0...random.next() % 2).map { _ in randomSelector(&random, base: localBase) },
            remoteSelectors: (0...random.next() % 2).map { _ in randomSelector(&random, base: remoteBase) },
            action: action)
    }

    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func cachedDecisionsEqualTheWalk(seed: UInt64) throws {
        var random = SplitMix64(seed: seed)
        var state = GatewayState(spdCacheCapacity: 256)
        var naive = NaiveSPD()
        let ike = Fixtures.ikeSA(1, &random)
        _ = try state.createIKESA(ike)
        var nextPolicy: UInt32 = 1
        var nextSPI: UInt32 = 1000
        for _ in 0..<8 {
            let policy = Self.randomPolicy(id: nextPolicy, &random)
            nextPolicy += 1
            _ = try state.installPolicy(policy)
            naive.policies.append(policy)
        }
        func addChild() throws {
            let protecting = naive.policies.filter { if case .protect = $0.action { true } else { false } }
            guard let policy = protecting.randomElement(using: &random) else { return }
            let local = [Self.randomSelector(&random, base: Self.localBase)]
            let remote = [Self.randomSelector(&random, base: Self.remoteBase)]
            let child = Fixtures.childSA(inboundSPI: nextSPI, parent: ike.identifier, policy: policy.id, local: local, remote: remote, &random)
            _ = try state.createChildSA(child)
            naive.children.append((nextSPI, policy.id, local, remote))
            nextSPI += 1
        }
        for _ in 0..<30 { try addChild() }
        // Most traffic comes from a working set of flows, as on a real gateway, so the cache hits.
        let workingSet = (0..<150).map { _ in Self.randomPacket(&random) }

        for step in 0..<12_000 {
            switch random.next() % 1_000 {
            case 0..<15:
                if let victim = naive.children.indices.randomElement(using: &random) {
                    _ = try state.deleteChildSA(inboundSPI: naive.children[victim].spi)
                    naive.children.remove(at: victim)
                }
            case 15..<30:
                try addChild()
            case 30..<45:
                if let target = naive.children.indices.randomElement(using: &random) {
                    let local = [Self.randomSelector(&random, base: Self.localBase)]
                    _ = try state.updateChildSA(inboundSPI: naive.children[target].spi) { $0.localSelectors = local }
                    naive.children[target].local = local
                }
            case 45:
                let policy = Self.randomPolicy(id: nextPolicy, &random)
                nextPolicy += 1
                let position = Int(random.next() % UInt64(naive.policies.count + 1))
                _ = try state.installPolicy(policy, at: position)
                naive.policies.insert(policy, at: position)
            case 46:
                if naive.policies.count > 2, let victim = naive.policies.indices.randomElement(using: &random) {
                    let id = naive.policies[victim].id
                    _ = try state.removePolicy(id)
                    naive.policies.remove(at: victim)
                    naive.children.removeAll { $0.policy == id }
                    for spi in state.childSAs.filter({ $0.policy == id }).map(\.inboundSPI) {
                        _ = try state.deleteChildSA(inboundSPI: spi)
                    }
                }
            default:
                let packet = random.next() % 10 < 8 ? workingSet.randomElement(using: &random)! : Self.randomPacket(&random)
                let expected = naive.decide(packet)
                let actual: NaiveSPD.Decision
                switch state.outboundDecision(for: packet) {
                case .protect(let slot): actual = .protect(try #require(state[slot]).inboundSPI)
                case .bypass(let id): actual = .bypass(id.rawValue)
                case .discard(let id): actual = .discard(id?.rawValue)
                case .acquire(let id): actual = .acquire(id.rawValue)
                }
                #expect(actual == expected, "step \(step): \(packet)")
                if actual != expected { return }
            }
        }
        let statistics = state.spdCacheStatistics
        #expect(statistics.hits > 1_000)
        #expect(statistics.misses > 1_000)
        #expect(statistics.evictions > 0)
        #expect(statistics.invalidations > 0)
        #expect(state.spdCacheCount <= 256)
    }
}

@Suite("SPD cache: bursts and bounds")
struct SPDCacheBurstTests {
    @Test func burstDecisionsEqualSingleDecisions() throws {
        var random = SplitMix64(seed: 99)
        var single = GatewayState(spdCacheCapacity: 64)
        let ike = Fixtures.ikeSA(1, &random)
        for policy in 1...6 as ClosedRange<UInt32> {
            _ = try single.installPolicy(SPDCacheTests.randomPolicy(id: policy, &random))
        }
        _ = try single.createIKESA(ike)
        for (index, policy) in single.spd.policies.enumerated() {
            if case .protect = policy.action {
                _ = try single.createChildSA(Fixtures.childSA(
                    inboundSPI: 900 + UInt32(index), parent: ike.identifier, policy: policy.id,
                    local: [SPDCacheTests.randomSelector(&random, base: SPDCacheTests.localBase)],
                    remote: [SPDCacheTests.randomSelector(&random, base: SPDCacheTests.remoteBase)], &random))
            }
        }
        var burst = single
        let packets = (0..<1_000).map { _ in SPDCacheTests.randomPacket(&random) }
        let expected = packets.map { single.outboundDecision(for: $0) }
        var actual = [SPDCacheDecision](repeating: .discard(nil), count: packets.count)
        packets.withUnsafeBufferPointer { packets in
            actual.withUnsafeMutableBufferPointer { burst.outboundDecisions(for: packets, into: $0) }
        }
        #expect(actual == expected)
        #expect(burst.spdCacheCount <= 64)
        #expect(burst.spdCacheStatistics.evictions > 0)
        // A shorter output buffer decides only what fits.
        var short = [SPDCacheDecision](repeating: .discard(SecurityPolicyID(rawValue: 77)), count: 3)
        packets.withUnsafeBufferPointer { packets in
            short.withUnsafeMutableBufferPointer { burst.outboundDecisions(for: packets, into: $0) }
        }
        #expect(short == Array(expected.prefix(3)))
    }

    @Test func keyHashDependsOnTheSeed() {
        let packet = FiveTuple(
            localAddress: IPAddress(ipv4: 1), remoteAddress: IPAddress(ipv4: 2), ipProtocol: 6, localPort: 3, remotePort: 4)
        #expect(packet.hash(seed: 1) != packet.hash(seed: 2))
        #expect(packet.hash(seed: 1) == packet.hash(seed: 1))
    }
}
