import Foundation
import IPsecHACore
@testable import IPsecHASync
import Testing

enum DocExamples {
    static func key(_ byte: UInt8, _ count: Int = 2) -> KeyMaterial { KeyMaterial(copying: Array(repeating: byte, count: count)) }
    static let identifier = IKESAIdentifier(initiatorSPI: 0x1122334455667788, responderSPI: 0x99AABBCCDDEEFF00)
    static var ikeSA: IKESA {
        var sa = try! IKESA(
            identifier: identifier, isOriginalInitiator: false, state: .established,
            local: Endpoint(address: try! IPAddress("192.0.2.1"), port: 4500, udpEncapsulation: true),
            remote: Endpoint(address: try! IPAddress("198.51.100.7"), port: 4500, udpEncapsulation: true),
            transforms: IKETransforms(encryption: .aesGCM16, encryptionKeyLength: 256, prf: .hmacSHA2_256, integrity: .none, keyExchange: .curve25519),
            keys: IKEKeys(d: key(0xD0), ai: key(0, 0), ar: key(0, 0), ei: key(0xE1), er: key(0xE2), pi: key(0xF1), pr: key(0xF2)),
            lifetime: IKESALifetime(rekeyAt: Timestamp(nanoseconds: 0x100), reauthenticateAt: nil),
            extensions: IKEExtensions(messageIDSync: true, replayCounterSync: true, childSAsUseExtendedSequenceNumbers: true),
            owner: ClusterMemberID(rawValue: 1))
        sa.generation = 5
        return sa
    }
    static var childSA: ChildSA {
        var sa = try! ChildSA(
            inboundSPI: 0xC0000001, outboundSPI: 0xD0000002, localSelectors: [try! TrafficSelector(prefix: try! IPAddress("10.0.0.0"), length: 24)],
            remoteSelectors: [.any(.ipv4)], transforms: ChildSATransforms(encryption: .aesGCM16, encryptionKeyLength: 256, integrity: .none),
            inboundKeys: ChildSAKeys(encryption: key(0xA1)), outboundKeys: ChildSAKeys(encryption: key(0xA2)),
            outboundCounter: try! OutboundSequenceCounter(extendedSequenceNumbers: true, lastSent: 1000, softLimit: 1 << 40),
            inboundWindow: try! ReplayWindow(size: 1024, extendedSequenceNumbers: true, restoringFrom: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: 900), policy: .permissiveUnsafe),
            lifetime: try! ChildSALifetime(soft: LifetimeLimits(seconds: 3300), hard: LifetimeLimits(seconds: 3600), installedAt: Timestamp(nanoseconds: 0x200)),
            requestID: 7, policy: SecurityPolicyID(rawValue: 1), parent: identifier, owner: ClusterMemberID(rawValue: 1))
        sa.generation = 2
        return sa
    }
    static var records: [(String, SyncRecord)] {
        [
            ("hello", .hello(epoch: 3, capabilities: 0, needsResync: true)),
            ("heartbeat", .heartbeat(highestSequence: 42, sentAt: Timestamp(nanoseconds: 1_000_000))),
            ("acknowledgement", .acknowledgement(cumulative: 40, selective: [SequenceRange(42, 43)])),
            ("negativeAcknowledgement", .negativeAcknowledgement([SequenceRange(41, 41)])),
            ("ikeSAUpsert", .ikeSAUpsert(ikeSA)),
            ("ikeSADelete", .ikeSADelete(identifier)),
            ("childSAUpsert", .childSAUpsert(childSA)),
            ("childSADelete", .childSADelete(inboundSPI: 0xC0000001)),
            ("messageIDUpdate", .messageIDUpdate(identifier, generation: 6, IKEMessageIDWindows().snapshot)),
            ("exchangeStarted", .exchangeStarted(identifier, messageID: 2, initiatedHere: true)),
            ("exchangeFinished", .exchangeFinished(identifier, messageID: 2, initiatedHere: true)),
            ("policyUpsert", .policyUpsert(SecurityPolicy(id: SecurityPolicyID(rawValue: 1), localSelectors: [try! TrafficSelector(prefix: try! IPAddress("10.0.0.0"), length: 24)], remoteSelectors: [.any(.ipv4)], action: .protect(ProtectionSettings())), position: 0)),
            ("policyDelete", .policyDelete(SecurityPolicyID(rawValue: 1))),
            ("counterCheckpoints", .counterCheckpoints([CounterCheckpointEntry(checkpoint: ChildSACounterCheckpoint(inboundSPI: 0xC0000001, outbound: OutboundCounterCheckpoint(lastSent: 2000), inbound: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: 1900), usage: ChildSAUsage(inboundBytes: 0x10000, inboundPackets: 0x100, outboundBytes: 0x20000, outboundPackets: 0x200)), generation: 3, packetsPerSecond: 5000)])),
            ("resyncRequest", .resyncRequest(.ikeSAs([identifier]))),
            ("resyncBegin", .resyncBegin(id: 1, scope: .everything, ikeSAs: 1, childSAs: 2, policies: 1)),
            ("resyncEnd", .resyncEnd(id: 1, ikeSAs: 1, childSAs: 1, policies: 1)),
            ("ownershipChange", .ownershipChange(identifier, owner: ClusterMemberID(rawValue: 2), generation: 7)),
            ("segmentClaims", .segmentClaims(incarnation: 3, sequence: 4, [
                SegmentClaim(segment: Segment(rawValue: 5), owner: ClusterMemberID(rawValue: 2), incarnation: 3, version: 9),
                SegmentClaim(segment: Segment(rawValue: 6), owner: nil, version: 2),
            ])),
            ("ownershipBeacon", .ownershipBeacon(OwnershipBeacon(
                incarnation: 3, recipientIncarnation: 2, sentAt: Timestamp(nanoseconds: 2_000_000), echo: Timestamp(nanoseconds: 1_000_000),
                up: [ClusterMemberID(rawValue: 1), ClusterMemberID(rawValue: 2)], claimsSent: 4, claimsProcessed: 7, ready: true))),
            ("protocolVersions", .protocolVersions(oldest: 2, newest: 3)),
            ("relayedDatagram", .relayedDatagram(RelayedDatagram(
                remote: Endpoint(address: IPAddress(ipv4: 0xC000_0207), port: 4500, udpEncapsulation: true), localPort: 4500,
                bytes: [0xde, 0xad, 0xbe, 0xef]))),
            ("synchDelay", .synchDelay(roundTrip: .microseconds(2_500))),
        ]
    }
}

/// The hex examples of `Docs/SyncProtocol.md` are what the code encodes, and decode back.
@Suite("Documented examples")
struct DocumentedExamplesTests {
    static func documentedExamples() throws -> [String: [UInt8]] {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Docs/SyncProtocol.md")
        let text = try String(contentsOf: path, encoding: .utf8)
        var examples: [String: [UInt8]] = [:]
        guard let examplesPart = text.components(separatedBy: "\n## Examples\n").last else { return [:] }
        let sections = examplesPart.components(separatedBy: "\n### ").dropFirst()
        for section in sections {
            let name = String(section.prefix { $0 != "\n" })
            let parts = section.components(separatedBy: "```")
            guard parts.count >= 2 else { continue }
            let block = parts[1]
            examples[name] = block.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { UInt8($0, radix: 16) }
        }
        return examples
    }

    /// Bytes as the examples show them: two hex digits each, 16 to a line.
    static func hex(_ bytes: [UInt8]) -> String {
        stride(from: 0, to: bytes.count, by: 16).map { start in
            bytes[start..<min(start + 16, bytes.count)].map { String(format: "%02x", $0) }.joined(separator: " ")
        }.joined(separator: "\n")
    }

    @Test func everyRecordTypeHasAnExampleThatMatchesTheCode() throws {
        let documented = try Self.documentedExamples()
        #expect(documented.count == DocExamples.records.count)
        for (name, record) in DocExamples.records {
            let encoded = try record.encoded()
            let bytes = try #require(documented[name], "no example for \(name); the code encodes:\n\(Self.hex(encoded))")
            #expect(encoded == bytes, "\(name); the code encodes:\n\(Self.hex(encoded))")
            #expect(try SyncRecord.decodeAll(bytes[...]) == [record], "\(name)")
        }
    }
}
