@testable import IPsecHACore
import Testing

@Suite("Gateway state: its tables agree")
struct InvariantTests {
    /// A state made through every kind of mutation: creations, a rekey and its undo, updates,
    /// deletions that free slots, and slots used again.
    func busyState() throws -> GatewayState {
        var random = SplitMix64(seed: 21)
        var state = GatewayState()
        let policy = SecurityPolicy(
            id: SecurityPolicyID(rawValue: 1), localSelectors: [.any(.ipv4)], remoteSelectors: [.any(.ipv4)], action: .protect(ProtectionSettings()))
        _ = try state.installPolicy(policy)
        var identifiers: [IKESAIdentifier] = []
        for index in 0..<8 {
            let ike = Fixtures.ikeSA(UInt64(100 + index), &random)
            _ = try state.createIKESA(ike)
            identifiers.append(ike.identifier)
            for child in 0..<4 {
                let spi = UInt32(0x1000 + index * 16 + child)
                _ = try state.createChildSA(Fixtures.childSA(inboundSPI: spi, parent: ike.identifier, policy: child == 0 ? policy.id : nil, &random))
            }
        }
        let new = Fixtures.ikeSA(500, &random)
        _ = try state.rekeyIKESA(identifiers[0], to: new)
        _ = try state.undoIKESARekey(new.identifier)
        _ = try state.deleteIKESA(identifiers[1])
        _ = try state.deleteChildSA(inboundSPI: 0x1000 + 2 * 16 + 1)
        _ = try state.updateChildSA(inboundSPI: 0x1000 + 3 * 16) { $0.requestID += 1 }
        _ = try state.createChildSA(Fixtures.childSA(inboundSPI: 0x9000, parent: identifiers[2], &random))
        return state
    }

    @Test func everyMutationKeepsTheTablesInAgreement() throws {
        let state = try busyState()
        #expect(state.invariantViolations().isEmpty, "\(state.invariantViolations())")
        #expect(state.childSACount == 32 - 4 - 1 + 1, "8 IKE SAs of 4, one deleted, one Child SA deleted, one made")
    }

    /// The check can fail: each table, put out of step by hand, is named.
    @Test func aTableOutOfStepIsNamed() throws {
        var lostIndex = try busyState()
        let spi = try #require(lostIndex.childSAs.first).inboundSPI
        lostIndex.spiIndex.remove(spi)
        #expect(lostIndex.invariantViolations().contains { $0.contains("SPI \(spi)") })

        var doubleFree = try busyState()
        doubleFree.freeSlots.append(0)
        #expect(doubleFree.invariantViolations().contains { $0.contains("free list") })

        var orphan = try busyState()
        let parent = try #require(orphan.ikeSAs.keys.first)
        orphan.ikeSAs.slots[orphan.ikeSAs.slot(of: parent)!]!.childSAs = []
        #expect(orphan.invariantViolations().contains { $0.contains("missing from its IKE SA") })

        var staleSPI = try busyState()
        let freed = try #require(staleSPI.freeSlots.first)
        staleSPI.slotSPIs[Int(freed)] = 0x1000
        #expect(staleSPI.invariantViolations().contains { $0.contains("per-slot SPIs") })
    }
}
