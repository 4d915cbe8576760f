import IPsecHACore

/// Builders of valid state for tests; all randomness from a seeded generator.
enum Fixtures {
    static let member = ClusterMemberID(rawValue: 1)

    static func address(_ text: String) -> IPAddress { try! IPAddress(text) }

    static func keys(_ generator: inout SplitMix64) -> IKEKeys {
        func key() -> KeyMaterial { KeyMaterial(randomCount: 32, using: &generator) }
        return IKEKeys(d: key(), ai: key(), ar: key(), ei: key(), er: key(), pi: key(), pr: key())
    }

    static func ikeSA(_ spi: UInt64, _ generator: inout SplitMix64) -> IKESA {
        try! IKESA(
            identifier: IKESAIdentifier(initiatorSPI: spi, responderSPI: spi ^ 0xFFFF),
            isOriginalInitiator: spi % 2 == 0,
            local: Endpoint(address: address("192.0.2.1"), port: 500),
            remote: Endpoint(address: IPAddress(ipv4: 0xC633_6400 | UInt32(spi % 250)), port: 4500, udpEncapsulation: true),
            transforms: IKETransforms(
                encryption: .aesGCM16, encryptionKeyLength: 256, prf: .hmacSHA2_256, integrity: .none, keyExchange: .curve25519),
            keys: keys(&generator),
            lifetime: IKESALifetime(rekeyAt: .seconds(3600), reauthenticateAt: .seconds(36000)),
            extensions: IKEExtensions(messageIDSync: true, replayCounterSync: true),
            owner: member)
    }

    static func childSA(
        inboundSPI: UInt32, parent: IKESAIdentifier, policy: SecurityPolicyID? = nil,
        local: [TrafficSelector] = [.any(.ipv4)], remote: [TrafficSelector] = [.any(.ipv4)],
        window: UInt32 = 64, esn: Bool = true, _ generator: inout SplitMix64
    ) -> ChildSA {
        try! ChildSA(
            inboundSPI: inboundSPI, outboundSPI: inboundSPI ^ 0x5555_0000 | 0x1000,
            localSelectors: local, remoteSelectors: remote,
            transforms: ChildSATransforms(encryption: .aesGCM16, encryptionKeyLength: 256, integrity: .none),
            inboundKeys: ChildSAKeys(encryption: KeyMaterial(randomCount: 36, using: &generator)),
            outboundKeys: ChildSAKeys(encryption: KeyMaterial(randomCount: 36, using: &generator)),
            outboundCounter: OutboundSequenceCounter(extendedSequenceNumbers: esn),
            inboundWindow: ReplayWindow(size: window, extendedSequenceNumbers: esn),
            lifetime: ChildSALifetime(
                soft: LifetimeLimits(seconds: 3000, bytes: 1 << 30), hard: LifetimeLimits(seconds: 3600, bytes: 1 << 31),
                installedAt: .seconds(0)),
            requestID: inboundSPI & 0xFFFF, policy: policy, parent: parent, owner: member)
    }
}
