import IPsecHACore
import Testing

@Suite("IP addresses")
struct IPAddressTests {
    @Test(arguments: [
        ("192.0.2.1", "192.0.2.1"), ("0.0.0.0", "0.0.0.0"), ("255.255.255.255", "255.255.255.255"),
        ("2001:db8::1", "2001:db8::1"), ("2001:DB8:0:0:1:0:0:1", "2001:db8::1:0:0:1"), ("::", "::"), ("::1", "::1"),
        ("fe80::", "fe80::"), ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"), ("::ffff:192.0.2.1", "::ffff:c000:201"),
    ])
    func parsesAndPrintsCanonically(text: String, canonical: String) throws {
        let address = try IPAddress(text)
        #expect(address.description == canonical)
        #expect(try IPAddress(canonical) == address)
        #expect(try IPAddress(bytes: address.bytes) == address)
    }

    @Test(arguments: ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.1.1.1", "1.2.3.-4", "2001:db8::1::2", "12345::", "g::1",
        "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7", ":::", "1.2.3.4 "])
    func rejectsMalformedText(text: String) {
        #expect(throws: IPAddressParseError.self) { try IPAddress(text) }
    }
}

@Suite("Traffic selectors (RFC 7296 3.13.1)")
struct TrafficSelectorTests {
    let a = Fixtures.address

    @Test func validation() {
        #expect(throws: TrafficSelectorError.mixedAddressFamilies) {
            try TrafficSelector(startAddress: a("192.0.2.1"), endAddress: a("2001:db8::1"))
        }
        #expect(throws: TrafficSelectorError.startAddressAfterEnd(a("192.0.2.9"), a("192.0.2.1"))) {
            try TrafficSelector(startAddress: a("192.0.2.9"), endAddress: a("192.0.2.1"))
        }
        #expect(throws: TrafficSelectorError.startPortAfterEnd(80, 79)) {
            try TrafficSelector(startAddress: a("192.0.2.1"), endAddress: a("192.0.2.1"), startPort: 80, endPort: 79)
        }
        #expect(throws: TrafficSelectorError.invalidPrefixLength(33)) { try TrafficSelector(prefix: a("192.0.2.0"), length: 33) }
        let opaque = try? TrafficSelector(startAddress: a("192.0.2.1"), endAddress: a("192.0.2.1"), startPort: 65535, endPort: 0)
        #expect(opaque?.isOpaquePorts == true)
    }

    @Test func prefixes() throws {
        let v4 = try TrafficSelector(prefix: a("198.51.100.77"), length: 24)
        #expect(v4.startAddress == a("198.51.100.0"))
        #expect(v4.endAddress == a("198.51.100.255"))
        let v6 = try TrafficSelector(prefix: a("2001:db8:1:2::5"), length: 48)
        #expect(v6.startAddress == a("2001:db8:1::"))
        #expect(v6.endAddress == a("2001:db8:1:ffff:ffff:ffff:ffff:ffff"))
        #expect(try TrafficSelector(prefix: a("10.1.2.3"), length: 0) == .any(.ipv4))
        #expect(try TrafficSelector(prefix: a("2001:db8::"), length: 0) == .any(.ipv6))
        #expect(try TrafficSelector(prefix: a("2001:db8::7"), length: 128) == TrafficSelector(address: a("2001:db8::7")))
    }

    @Test func intersection() throws {
        let net24 = try TrafficSelector(prefix: a("198.51.100.0"), length: 24)
        let tcp = try TrafficSelector(
            startAddress: a("198.51.100.128"), endAddress: a("198.51.101.3"), ipProtocol: 6, startPort: 1000, endPort: 2000)
        let common = try #require(net24.intersection(with: tcp))
        #expect(common.startAddress == a("198.51.100.128"))
        #expect(common.endAddress == a("198.51.100.255"))
        #expect(common.ipProtocol == 6)
        #expect((common.startPort, common.endPort) == (1000, 2000))
        #expect(common.isSubset(of: net24) && common.isSubset(of: tcp))
        // Different protocols, families, disjoint ports: nothing in common.
        let udp = try TrafficSelector(startAddress: a("198.51.100.1"), endAddress: a("198.51.100.1"), ipProtocol: 17)
        #expect(tcp.intersection(with: udp) == nil)
        #expect(net24.intersection(with: .any(.ipv6)) == nil)
        let lowPorts = try TrafficSelector(prefix: a("198.51.100.0"), length: 24).intersection(
            with: try TrafficSelector(startAddress: a("0.0.0.0"), endAddress: a("255.255.255.255"), startPort: 1, endPort: 999))
        #expect(lowPorts.flatMap { $0.intersection(with: tcp) } == nil)
        // ANY includes OPAQUE; OPAQUE and a specific range do not meet.
        let opaque = try TrafficSelector(startAddress: a("0.0.0.0"), endAddress: a("255.255.255.255"), startPort: 65535, endPort: 0)
        #expect(opaque.intersection(with: .any(.ipv4)) == opaque)
        #expect(opaque.intersection(with: tcp) == nil)
        #expect(opaque.isSubset(of: .any(.ipv4)))
    }

    @Test func matchingPackets() throws {
        let web = try TrafficSelector(
            startAddress: a("192.0.2.0"), endAddress: a("192.0.2.255"), ipProtocol: 6, startPort: 443, endPort: 443)
        #expect(web.contains(address: a("192.0.2.10"), ipProtocol: 6, port: 443))
        #expect(!web.contains(address: a("192.0.2.10"), ipProtocol: 17, port: 443))
        #expect(!web.contains(address: a("192.0.3.10"), ipProtocol: 6, port: 443))
        #expect(!web.contains(address: a("192.0.2.10"), ipProtocol: 6, port: 444))
        #expect(!web.contains(address: a("2001:db8::1"), ipProtocol: 6, port: 443))
    }
}

@Suite("Traffic selector narrowing (RFC 7296 2.9)")
struct NarrowingTests {
    let a = Fixtures.address

    /// The RFC's example: the initiator tunnels 198.51.100.0/24 (its side) to 192.0.2.0/24, and
    /// was triggered by a packet from 198.51.100.43.
    func proposal() throws -> (tsi: [TrafficSelector], tsr: [TrafficSelector]) {
        let tsi = [
            TrafficSelector(address: a("198.51.100.43"), ipProtocol: 6, port: 31337),
            try TrafficSelector(prefix: a("198.51.100.0"), length: 24),
        ]
        let tsr = [
            TrafficSelector(address: a("192.0.2.10"), ipProtocol: 6, port: 80),
            try TrafficSelector(prefix: a("192.0.2.0"), length: 24),
        ]
        return (tsi, tsr)
    }

    func spd(_ policies: [(Int, [TrafficSelector], [TrafficSelector], SecurityPolicyAction)]) throws -> SecurityPolicyDatabase {
        var spd = SecurityPolicyDatabase()
        for (id, local, remote, action) in policies {
            try spd.insert(SecurityPolicy(id: SecurityPolicyID(rawValue: UInt32(id)), localSelectors: local, remoteSelectors: remote, action: action))
        }
        return spd
    }

    @Test func wholeProposalAllowedIsEchoed() throws {
        let (tsi, tsr) = try proposal()
        let db = try spd([(1, [try TrafficSelector(prefix: a("192.0.2.0"), length: 24)], [try TrafficSelector(prefix: a("198.51.100.0"), length: 24)], .protect(ProtectionSettings()))])
        let result = try db.narrow(initiatorSelectors: tsi, responderSelectors: tsr)
        #expect(result.initiatorSelectors == tsi)
        #expect(result.responderSelectors == tsr)
        #expect(!result.isNarrowed)
        #expect(result.policy == SecurityPolicyID(rawValue: 1))
    }

    @Test func narrowingKeepsTheInitiatorsFirstChoice() throws {
        let (tsi, tsr) = try proposal()
        // The responder only tunnels the lower quarter of the initiator's subnet.
        let db = try spd([(
            1, [try TrafficSelector(prefix: a("192.0.2.0"), length: 24)],
            [try TrafficSelector(prefix: a("198.51.100.0"), length: 26)], .protect(ProtectionSettings())
        )])
        let result = try db.narrow(initiatorSelectors: tsi, responderSelectors: tsr)
        #expect(result.isNarrowed)
        #expect(result.initiatorSelectors.first == tsi[0])
        #expect(result.initiatorSelectors.contains(try TrafficSelector(prefix: a("198.51.100.0"), length: 26)))
        #expect(!result.initiatorSelectors.contains(tsi[1]))
        #expect(result.responderSelectors == tsr)
    }

    @Test func firstChoiceOutsidePolicyNarrowsToAnAcceptableSubset() throws {
        let (tsi, tsr) = try proposal()
        // .43 is outside 198.51.100.128/25, so the first choice cannot be kept.
        let db = try spd([
            (1, [try TrafficSelector(prefix: a("192.0.2.0"), length: 24)], [try TrafficSelector(prefix: a("198.51.100.128"), length: 25)], .protect(ProtectionSettings())),
            (2, [try TrafficSelector(prefix: a("192.0.2.0"), length: 25)], [try TrafficSelector(prefix: a("198.51.100.0"), length: 26)], .protect(ProtectionSettings())),
        ])
        let result = try db.narrow(initiatorSelectors: tsi, responderSelectors: tsr)
        // Policy 2 contains the first choice: it decides, and the answer includes that choice.
        #expect(result.policy == SecurityPolicyID(rawValue: 2))
        #expect(result.initiatorSelectors.first == tsi[0])
        #expect(result.additionalSelectorsPossible)

        let only1 = try spd([(1, [try TrafficSelector(prefix: a("192.0.2.0"), length: 24)], [try TrafficSelector(prefix: a("198.51.100.128"), length: 25)], .protect(ProtectionSettings()))])
        let narrowed = try only1.narrow(initiatorSelectors: tsi, responderSelectors: tsr)
        #expect(narrowed.initiatorSelectors == [try TrafficSelector(prefix: a("198.51.100.128"), length: 25)])
        #expect(!narrowed.additionalSelectorsPossible)
    }

    @Test func nothingAcceptableIsTSUnacceptable() throws {
        let (tsi, tsr) = try proposal()
        let elsewhere = try spd([(1, [try TrafficSelector(prefix: a("203.0.113.0"), length: 24)], [.any(.ipv4)], .protect(ProtectionSettings()))])
        #expect(throws: TrafficSelectorError.unacceptable) { try elsewhere.narrow(initiatorSelectors: tsi, responderSelectors: tsr) }
        let bypassFirst = try spd([
            (1, [.any(.ipv4)], [.any(.ipv4)], .bypass),
            (2, [.any(.ipv4)], [.any(.ipv4)], .protect(ProtectionSettings())),
        ])
        // The first choice falls under a BYPASS entry first in order: no SA for it.
        #expect(throws: TrafficSelectorError.unacceptable) { try bypassFirst.narrow(initiatorSelectors: tsi, responderSelectors: tsr) }
        #expect(throws: TrafficSelectorError.unacceptable) { try SecurityPolicyDatabase().narrow(initiatorSelectors: tsi, responderSelectors: tsr) }
    }

    @Test func initiatorProposalFollowsPopulateFromPacket() throws {
        let policy = SecurityPolicy(
            id: SecurityPolicyID(rawValue: 9), localSelectors: [try TrafficSelector(prefix: a("198.51.100.0"), length: 24)],
            remoteSelectors: [try TrafficSelector(prefix: a("192.0.2.0"), length: 24)], action: .protect(ProtectionSettings()),
            populateFromPacket: [.remoteAddress])
        let packet = FiveTuple(localAddress: a("198.51.100.43"), remoteAddress: a("192.0.2.10"), ipProtocol: 6, localPort: 31337, remotePort: 80)
        let (local, remote) = policy.proposal(for: packet)
        #expect(local == [TrafficSelector(address: a("198.51.100.43"), ipProtocol: 6, port: 31337), try TrafficSelector(prefix: a("198.51.100.0"), length: 24)])
        #expect(remote == [TrafficSelector(address: a("192.0.2.10"), ipProtocol: 6, port: 80), TrafficSelector(address: a("192.0.2.10"))])
    }
}
