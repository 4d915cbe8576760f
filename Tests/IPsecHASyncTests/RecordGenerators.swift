import IPsecHACore
import IPsecHASync
import IPsecHATestKit
@testable import IPsecHASync

/// Random but valid state and records for property tests.
struct RecordGenerator {
    var random: SplitMix64

    init(seed: UInt64) { random = SplitMix64(seed: seed) }

    mutating func next(_ bound: UInt64) -> UInt64 { random.next() % bound }

    mutating func address(_ family: IPAddressFamily) -> IPAddress {
        family == .ipv4 ? IPAddress(ipv4: UInt32(truncatingIfNeeded: random.next())) : IPAddress(ipv6High: random.next(), low: random.next())
    }

    mutating func selector(_ family: IPAddressFamily) -> TrafficSelector {
        let a = address(family)
        let b = address(family)
        let ports: (UInt16, UInt16) = next(4) == 0 ? (65535, 0) : (UInt16(next(1000)), UInt16(1000 + next(64000)))
        return try! TrafficSelector(
            startAddress: min(a, b), endAddress: max(a, b), ipProtocol: UInt8(next(3) * 6), startPort: ports.0, endPort: ports.1)
    }

    mutating func key(_ count: Int) -> KeyMaterial { KeyMaterial(randomCount: count, using: &random) }

    mutating func identifier() -> IKESAIdentifier {
        IKESAIdentifier(initiatorSPI: random.next() | 1, responderSPI: random.next())
    }

    mutating func ikeSA() -> IKESA {
        let family: IPAddressFamily = next(2) == 0 ? .ipv4 : .ipv6
        var windows = IKEMessageIDWindows()
        try! windows.requests.updatePeerWindowSize(UInt32(1 + next(4)))
        try! windows.responses.announceWindowSize(UInt32(1 + next(4)))
        for _ in 0..<next(4) { _ = try? windows.requests.nextRequestID() }
        for id in 0..<UInt32(next(3)) { try? windows.responses.recordProcessed(id) }
        var sa = try! IKESA(
            identifier: identifier(), isOriginalInitiator: next(2) == 0,
            state: [.negotiating, .established, .rekeying, .deleting, .passive][Int(next(5))],
            local: Endpoint(address: address(family), port: 500, udpEncapsulation: false),
            remote: Endpoint(address: address(family), port: UInt16(next(65536)), udpEncapsulation: next(2) == 0),
            transforms: IKETransforms(
                encryption: EncryptionAlgorithm(rawValue: UInt16(next(40))), encryptionKeyLength: next(2) == 0 ? nil : 256,
                prf: .hmacSHA2_256, integrity: .none, keyExchange: KeyExchangeMethod(rawValue: UInt16(next(40)))),
            keys: IKEKeys(d: key(32), ai: key(Int(next(2)) * 32), ar: key(32), ei: key(36), er: key(36), pi: key(32), pr: key(32)),
            lifetime: IKESALifetime(rekeyAt: next(2) == 0 ? nil : .seconds(next(100_000)), reauthenticateAt: .seconds(next(1_000_000))),
            messageIDs: windows,
            extensions: IKEExtensions(messageIDSync: next(2) == 0, replayCounterSync: next(2) == 0, childSAsUseExtendedSequenceNumbers: next(2) == 0),
            owner: ClusterMemberID(rawValue: UInt16(next(8))))
        sa.generation = next(1000)
        if next(3) == 0 { sa.rekeyedFrom = identifier() }
        return sa
    }

    mutating func childSA(parent: IKESAIdentifier? = nil) -> ChildSA {
        let family: IPAddressFamily = next(2) == 0 ? .ipv4 : .ipv6
        let esn = next(2) == 0
        let lastSent = esn ? random.next() >> 1 : next(1 << 32)
        var sa = try! ChildSA(
            inboundSPI: UInt32(truncatingIfNeeded: random.next()) | 0x100,
            outboundSPI: UInt32(truncatingIfNeeded: random.next()) | 0x100,
            ipsecProtocol: next(4) == 0 ? .ah : .esp, mode: next(2) == 0 ? .tunnel : .transport,
            localSelectors: (0...next(3)).map { _ in selector(family) },
            remoteSelectors: (0...next(3)).map { _ in selector(family) },
            transforms: ChildSATransforms(
                encryption: next(5) == 0 ? nil : .aesCBC, encryptionKeyLength: 128, integrity: .hmacSHA2_256_128),
            inboundKeys: ChildSAKeys(encryption: key(16), integrity: next(2) == 0 ? nil : key(32)),
            outboundKeys: ChildSAKeys(encryption: key(16), integrity: key(32)),
            outboundCounter: try OutboundSequenceCounter(extendedSequenceNumbers: esn, lastSent: lastSent),
            inboundWindow: try ReplayWindow(
                size: UInt32(32 + next(5000)), extendedSequenceNumbers: esn,
                restoringFrom: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: esn ? random.next() >> 1 : next(1 << 32)),
                policy: .permissiveUnsafe),
            lifetime: try ChildSALifetime(
                soft: LifetimeLimits(seconds: 3000, bytes: next(2) == 0 ? nil : 1 << 30), hard: LifetimeLimits(seconds: 3600),
                installedAt: .seconds(next(100_000)),
                usage: ChildSAUsage(inboundBytes: random.next(), inboundPackets: random.next(), outboundBytes: 7, outboundPackets: 1)),
            requestID: UInt32(next(1000)), policy: next(2) == 0 ? nil : SecurityPolicyID(rawValue: UInt32(next(100))),
            parent: parent ?? identifier(), owner: ClusterMemberID(rawValue: UInt16(next(8))))
        sa.generation = next(1000)
        return sa
    }

    mutating func policy() -> SecurityPolicy {
        let family: IPAddressFamily = next(2) == 0 ? .ipv4 : .ipv6
        let actions: [SecurityPolicyAction] = [
            .bypass, .discard, .protect(ProtectionSettings(ipsecProtocol: .ah, mode: .transport, extendedSequenceNumbers: false)),
            .protect(ProtectionSettings()),
        ]
        return SecurityPolicy(
            id: SecurityPolicyID(rawValue: UInt32(truncatingIfNeeded: random.next())),
            localSelectors: (0..<next(3)).map { _ in selector(family) }, remoteSelectors: (0...next(2)).map { _ in selector(family) },
            action: actions[Int(next(4))], populateFromPacket: PopulateFromPacket(rawValue: UInt8(next(32))))
    }

    mutating func ranges() -> [SequenceRange] {
        (0..<next(5)).map { _ in
            let lower = 1 + next(1 << 40)
            return SequenceRange(lower, lower + next(100))
        }
    }

    mutating func record() -> SyncRecord {
        switch next(24) {
        case 0: return .hello(epoch: UInt32(next(1 << 32)), capabilities: UInt32(next(16)), needsResync: next(2) == 0)
        case 1: return .heartbeat(highestSequence: random.next(), sentAt: Timestamp(nanoseconds: random.next()))
        case 2: return .acknowledgement(cumulative: random.next(), selective: ranges())
        case 3: return .negativeAcknowledgement(ranges())
        case 4: return .ikeSAUpsert(ikeSA())
        case 5: return .ikeSADelete(identifier())
        case 6: return .childSAUpsert(childSA())
        case 7: return .childSADelete(inboundSPI: UInt32(truncatingIfNeeded: random.next()))
        case 8: return .messageIDUpdate(identifier(), generation: next(1000), ikeSA().messageIDs.snapshot)
        case 9: return .exchangeStarted(identifier(), messageID: UInt32(next(100)), initiatedHere: next(2) == 0)
        case 10: return .exchangeFinished(identifier(), messageID: UInt32(next(100)), initiatedHere: next(2) == 0)
        case 11: return .policyUpsert(policy(), position: UInt32(next(10)))
        case 12: return .policyDelete(SecurityPolicyID(rawValue: UInt32(next(100))))
        case 13:
            return .counterCheckpoints(
                (0..<next(20)).map { _ in
                    CounterCheckpointEntry(
                        checkpoint: ChildSACounterCheckpoint(
                            inboundSPI: UInt32(truncatingIfNeeded: random.next()), outbound: OutboundCounterCheckpoint(lastSent: random.next()),
                            inbound: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: random.next()),
                            usage: ChildSAUsage(inboundBytes: random.next(), inboundPackets: 2, outboundBytes: 3, outboundPackets: 4)),
                        generation: next(1000), packetsPerSecond: UInt32(next(1 << 32)))
                })
        case 14: return .resyncRequest(next(2) == 0 ? .everything : .ikeSAs((0..<next(4)).map { _ in identifier() }))
        case 15:
            return .resyncBegin(
                id: UInt32(next(1000)), scope: .everything, ikeSAs: UInt32(next(1000)), childSAs: UInt32(next(1000)),
                policies: UInt32(next(10)))
        case 16: return .resyncEnd(id: UInt32(next(1000)), ikeSAs: 1, childSAs: 2, policies: 3)
        case 17: return .ownershipChange(identifier(), owner: ClusterMemberID(rawValue: UInt16(next(8))), generation: next(1000))
        case 18:
            return .segmentClaims(
                incarnation: UInt32(next(9)), sequence: next(1000),
                (0..<next(70)).map { _ in
                    SegmentClaim(
                        segment: Segment(rawValue: UInt16(next(4096))), owner: next(3) == 0 ? nil : ClusterMemberID(rawValue: UInt16(next(16))),
                        incarnation: UInt32(next(5)), version: next(1 << 40))
                })
        case 19:
            return .ownershipBeacon(
                OwnershipBeacon(
                    incarnation: UInt32(next(9)), recipientIncarnation: UInt32(next(9)), sentAt: Timestamp(nanoseconds: next(1 << 50)),
                    echo: next(4) == 0 ? nil : Timestamp(nanoseconds: 1 + next(1 << 50)),
                    up: (1...UInt16(1 + next(6))).map { ClusterMemberID(rawValue: $0) }, claimsSent: next(100), claimsProcessed: next(100),
                    ready: next(2) == 0))
        case 20:
            let oldest = UInt8(1 + next(4))
            return .protocolVersions(oldest: oldest, newest: oldest + UInt8(next(4)))
        case 21:
            return .relayedDatagram(
                RelayedDatagram(
                    remote: Endpoint(address: IPAddress(ipv4: UInt32(next(1 << 32))), port: UInt16(next(65_536)), udpEncapsulation: next(2) == 0),
                    localPort: next(2) == 0 ? 500 : 4500, bytes: (0...next(40)).map { _ in UInt8(next(256)) }))
        case 22:
            return .synchDelay(roundTrip: .nanoseconds(Int64(next(1 << 40))))
        default: return .unknown(type: UInt16(0x0100 + next(0x1000)), value: (0..<next(20)).map { _ in UInt8(next(256)) })
        }
    }
}

extension NetworkFaults {
    /// What the tests call a hostile link: 30% loss, 10% duplication, 2% corruption, and up to
    /// 5 ms of jitter, which reorders.
    static var hostile: NetworkFaults {
        var faults = NetworkFaults()
        faults.loss = 0.3
        faults.duplication = 0.1
        faults.corruption = 0.02
        faults.jitter = .milliseconds(5)
        return faults
    }
}
