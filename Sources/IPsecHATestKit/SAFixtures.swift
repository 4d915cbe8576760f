public import IPsecHACore

/// Realistic SAs for simulations and benchmarks: AES-GCM-256 keys from a seeded generator
/// (never for real traffic), one traffic selector each side.
public enum SAFixtures {
    /// The owner the fixtures name unless told otherwise.
    public static let member = ClusterMemberID(rawValue: 1)

    /// An established IKE SA with initiator SPI `spi`, a peer at `remote` (a random IPv4
    /// address when nil), owned by `owner`.
    public static func ikeSA(
        _ spi: UInt64, remote: IPAddress? = nil, owner: ClusterMemberID = member, _ random: inout SplitMix64
    ) throws -> IKESA {
        func key(_ count: Int) -> KeyMaterial { KeyMaterial(randomCount: count, using: &random) }
        return try IKESA(
            identifier: IKESAIdentifier(initiatorSPI: spi, responderSPI: random.next() | 1),
            isOriginalInitiator: false,
            local: Endpoint(address: IPAddress(ipv4: 0xC000_0201), port: 4500, udpEncapsulation: true),
            remote: Endpoint(
                address: remote ?? IPAddress(ipv4: UInt32(truncatingIfNeeded: random.next())), port: 4500, udpEncapsulation: true),
            transforms: IKETransforms(encryption: .aesGCM16, encryptionKeyLength: 256, prf: .hmacSHA2_256, integrity: .none, keyExchange: .curve25519),
            keys: IKEKeys(d: key(32), ai: key(0), ar: key(0), ei: key(36), er: key(36), pi: key(32), pr: key(32)),
            lifetime: IKESALifetime(rekeyAt: .seconds(14_400), reauthenticateAt: .seconds(86_400)),
            extensions: IKEExtensions(messageIDSync: true, replayCounterSync: true),
            owner: owner)
    }

    /// A gateway state with one policy that protects all IPv4 traffic, one IKE SA and one Child
    /// SA (inbound SPI 0x1000) under it: every outbound flow maps to that Child SA, for SPD
    /// cache measurements.
    public static func protectingEverything(
        spdCacheCapacity: Int, window: UInt32, _ random: inout SplitMix64
    ) throws -> GatewayState {
        var gateway = GatewayState(spdCacheCapacity: spdCacheCapacity)
        let policy = SecurityPolicy(
            id: SecurityPolicyID(rawValue: 1), localSelectors: [.any(.ipv4)], remoteSelectors: [.any(.ipv4)],
            action: .protect(ProtectionSettings()))
        _ = try gateway.installPolicy(policy)
        let ike = try ikeSA(1, &random)
        _ = try gateway.createIKESA(ike)
        _ = try gateway.createChildSA(childSA(0x1000, parent: ike.identifier, policy: policy.id, window: window, &random))
        return gateway
    }

    /// A Child SA of `parent` with inbound SPI `spi`, a random outbound SPI and an active
    /// replay window of `window` packets, owned by `owner`, with Extended Sequence Numbers
    /// unless `extendedSequenceNumbers` is false.
    public static func childSA(
        _ spi: UInt32, parent: IKESAIdentifier, policy: SecurityPolicyID? = nil, window: UInt32, owner: ClusterMemberID = member,
        extendedSequenceNumbers: Bool = true, _ random: inout SplitMix64
    ) throws -> ChildSA {
        try ChildSA(
            inboundSPI: spi, outboundSPI: UInt32(truncatingIfNeeded: random.next()) | 0x100,
            localSelectors: [try TrafficSelector(prefix: IPAddress(ipv4: 0x0A00_0000), length: 16)],
            remoteSelectors: [.any(.ipv4)],
            transforms: ChildSATransforms(encryption: .aesGCM16, encryptionKeyLength: 256, integrity: .none),
            inboundKeys: ChildSAKeys(encryption: KeyMaterial(randomCount: 36, using: &random)),
            outboundKeys: ChildSAKeys(encryption: KeyMaterial(randomCount: 36, using: &random)),
            outboundCounter: OutboundSequenceCounter(extendedSequenceNumbers: extendedSequenceNumbers),
            inboundWindow: ReplayWindow(size: window, extendedSequenceNumbers: extendedSequenceNumbers),
            lifetime: ChildSALifetime(
                soft: LifetimeLimits(seconds: 3_300, bytes: 1 << 40), hard: LifetimeLimits(seconds: 3_600, bytes: 1 << 41),
                installedAt: .seconds(0)),
            requestID: spi & 0xFFFF, policy: policy, parent: parent, owner: owner)
    }
}
