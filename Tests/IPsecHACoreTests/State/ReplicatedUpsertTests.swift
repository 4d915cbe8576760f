import IPsecHACore
import Testing

@Suite("Replicated upserts on a standby")
struct ReplicatedUpsertTests {
    @Test func upsertsInstallThenReplaceOnlyWithNewerRecords() throws {
        var random = SplitMix64(seed: 31)
        var standby = GatewayState()
        var ike = Fixtures.ikeSA(1, &random)
        ike.generation = 3
        try standby.upsertReplicated(ike)
        var child = Fixtures.childSA(inboundSPI: 0x5000, parent: ike.identifier, &random)
        child.generation = 2
        try standby.upsertReplicated(child, arrivedAt: .seconds(1))
        #expect(standby.childSA(inboundSPI: 0x5000) == child)
        #expect(standby.counterFreshness(inboundSPI: 0x5000) == ChildSAFreshness(lastCheckpoint: .seconds(1), packetsPerSecond: nil))

        // A newer IKE SA record keeps the Child SA list the state maintains.
        var newer = ike
        newer.generation = 4
        newer.state = .rekeying
        try standby.upsertReplicated(newer)
        #expect(standby.ikeSAs[ike.identifier]?.state == .rekeying)
        #expect(standby.ikeSAs[ike.identifier]?.childSAs == [0x5000])
        #expect(throws: GatewayStateError.staleChange(held: 4, received: 4)) { try standby.upsertReplicated(newer) }

        // A newer Child SA record keeps the measured rate and moves the arrival time.
        _ = standby.applyCounterCheckpoints(
            [CounterCheckpointEntry(checkpoint: child.counterCheckpoint, generation: 3, packetsPerSecond: 700)], arrivedAt: .seconds(2))
        var changed = try #require(standby.childSA(inboundSPI: 0x5000))
        changed.generation = 4
        changed.requestID = 99
        try standby.upsertReplicated(changed, arrivedAt: .seconds(5))
        #expect(standby.childSA(inboundSPI: 0x5000)?.requestID == 99)
        #expect(standby.counterFreshness(inboundSPI: 0x5000) == ChildSAFreshness(lastCheckpoint: .seconds(5), packetsPerSecond: 700))
        #expect(throws: GatewayStateError.staleChange(held: 4, received: 4)) { try standby.upsertReplicated(changed, arrivedAt: .seconds(6)) }
        #expect(standby.counterFreshness(inboundSPI: 0x5000)?.lastCheckpoint == .seconds(5), "a refused record changes nothing")

        let orphan = Fixtures.childSA(inboundSPI: 0x6000, parent: IKESAIdentifier(initiatorSPI: 9, responderSPI: 9), &random)
        #expect(throws: GatewayStateError.unknownParent(orphan.parent)) { try standby.upsertReplicated(orphan, arrivedAt: .seconds(7)) }
        let unknownPolicy = Fixtures.childSA(inboundSPI: 0x6001, parent: ike.identifier, policy: SecurityPolicyID(rawValue: 8), &random)
        #expect(throws: GatewayStateError.unknownPolicy(SecurityPolicyID(rawValue: 8))) {
            try standby.upsertReplicated(unknownPolicy, arrivedAt: .seconds(7))
        }
        #expect(standby.childSACount == 1)
    }

    /// A standby first looks for a Child SA's parent in the slot of the previous one's and the
    /// next: the parent found must be the right one in any order, after the slot looked at was
    /// emptied or reused, and when the slot is past the table.
    @Test func childSAsFindTheirParentInAnyOrder() throws {
        var random = SplitMix64(seed: 32)
        var standby = GatewayState()
        let ikes = (0..<4).map { Fixtures.ikeSA(UInt64($0) + 1, &random) }
        for ike in ikes { try standby.upsertReplicated(ike) }
        var spi: UInt32 = 0x7000
        func install(under parent: Int) throws {
            spi += 1
            try standby.upsertReplicated(Fixtures.childSA(inboundSPI: spi, parent: ikes[parent].identifier, &random), arrivedAt: .seconds(1))
            #expect(standby.childSA(inboundSPI: spi)?.parent == ikes[parent].identifier)
            #expect(standby.ikeSAs[ikes[parent].identifier]?.childSAs.contains(spi) == true)
        }
        for parent in [0, 0, 1, 3, 2, 2, 0, 3, 3, 1] { try install(under: parent) }
        // The last parent's slot (3) emptied, then a Child SA whose parent is elsewhere; then
        // the slot reused by another IKE SA, and a Child SA of the one it held before.
        _ = try standby.deleteIKESA(ikes[3].identifier)
        try install(under: 2)
        try install(under: 0)
        let replacement = Fixtures.ikeSA(9, &random)
        try standby.upsertReplicated(replacement)
        #expect(standby.ikeSAs.occupiedSlots == [0, 1, 2, 3], "the freed slot is reused")
        #expect(standby.ikeSAs.count == 4 && standby.ikeSAs.values.map(\.identifier).last == replacement.identifier)
        let orphan = Fixtures.childSA(inboundSPI: 0x7FFF, parent: ikes[3].identifier, &random)
        #expect(throws: GatewayStateError.unknownParent(ikes[3].identifier)) { try standby.upsertReplicated(orphan, arrivedAt: .seconds(2)) }
        try standby.upsertReplicated(Fixtures.childSA(inboundSPI: 0x7FFE, parent: replacement.identifier, &random), arrivedAt: .seconds(2))
        #expect(standby.ikeSAs[replacement.identifier]?.childSAs == [0x7FFE])
        #expect(standby.childSACount == 10 - 3 + 2 + 1)
    }
}
