import IPsecHACore
@testable import IPsecHASync
import IPsecHATestKit
import Testing

/// What waits for a standby forgets what was sent, so that a standby that never quite catches
/// up costs bounded memory.
@Suite("Replicator: what waits for a standby")
struct ReplicatorPendingTests {
    static let records = (0..<10).map { SyncRecord.childSADelete(inboundSPI: UInt32(0x100 + $0)) }

    @Test func aBacklogDropsTheRecordsItSent() {
        var pending = Replicator.Pending(backlog: Self.records)
        pending.next = 4
        pending.compact()
        #expect(pending.next == 0)
        #expect(pending.appended == Array(Self.records[4...]))
        #expect(pending.unsentAppended == 6)
    }

    @Test func aResyncWhoseSnapshotWentOutBecomesABacklogOfTheRest() throws {
        var random = SplitMix64(seed: 1)
        var state = GatewayState()
        _ = try state.createIKESA(SAFixtures.ikeSA(1, &random))
        var pending = Replicator.Pending(id: 1, snapshot: state)
        pending.appended = Self.records
        // Begin, one IKE SA, end: three records of snapshot, then the appended ones.
        #expect(pending.snapshotCount == 3)
        pending.next = 2
        pending.compact()
        #expect(pending.snapshot != nil, "the snapshot part is not sent yet: nothing to forget")
        pending.next = 5
        pending.compact()
        #expect(pending.snapshot == nil)
        #expect(pending.appended == Array(Self.records[2...]))
        #expect(pending.next == 0 && pending.count == 8)
    }
}
