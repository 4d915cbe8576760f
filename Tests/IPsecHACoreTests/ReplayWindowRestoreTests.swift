import IPsecHACore
import Testing

@Suite("Replay window: checkpoint and restore")
struct ReplayWindowRestoreTests {
    @Test(arguments: [ReplayWindowRestorePolicy.conservative(advance: 5_000), .replayCounterSync(delta: 5_000)])
    func safePoliciesCountEverythingUpToTheAdvanceAsSeen(policy: ReplayWindowRestorePolicy) throws {
        var active = try ReplayWindow(size: 8192, extendedSequenceNumbers: true)
        for number in 1...10_000 as ClosedRange<UInt64> { try active.commit(number) }
        let checkpoint = active.checkpoint
        #expect(checkpoint.highestAuthenticatedSequenceNumber == 10_000)
        // The failed member went on accepting after its checkpoint.
        for number in 10_001...12_000 as ClosedRange<UInt64> { try active.commit(number) }

        var restored = try ReplayWindow(
            size: 8192, extendedSequenceNumbers: true, restoringFrom: checkpoint, policy: policy)
        #expect(restored.top == 15_000)
        for number in [10_000, 10_001, 12_000, 14_000, 14_999, 15_000] as [UInt64] {
            #expect(restored.check(wire: UInt32(number)) == .replayed(number))
        }
        #expect(restored.check(wire: 15_001) == .fresh(15_001))
        try restored.commit(15_001)
        #expect(restored.check(wire: 15_002) == .fresh(15_002))
        #expect(restored.check(wire: 14_100) == .replayed(14_100))
    }

    @Test func permissivePolicyAcceptsWhatItCannotKnow() throws {
        let checkpoint = ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: 500)
        var restored = try ReplayWindow(
            size: 64, extendedSequenceNumbers: false, restoringFrom: checkpoint, policy: .permissiveUnsafe)
        #expect(restored.top == 500)
        // 480 was surely accepted before the crash; this policy cannot tell, and takes it once.
        #expect(restored.check(wire: 480) == .fresh(480))
        try restored.commit(480)
        #expect(restored.check(wire: 480) == .replayed(480))
        #expect(restored.check(wire: 436) == .stale(436))
    }

    @Test func restoringBeyondTheSequenceSpaceAsksForARekey() throws {
        let checkpoint = ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: 0xFFFF_0000)
        #expect(
            throws: ReplayWindowError.restoredTopBeyondSequenceSpace(checkpoint: 0xFFFF_0000, advance: 0x10000)
        ) {
            try ReplayWindow(
                size: 64, extendedSequenceNumbers: false, restoringFrom: checkpoint,
                policy: .conservative(advance: 0x10000))
        }
        let restored = try ReplayWindow(
            size: 64, extendedSequenceNumbers: true, restoringFrom: checkpoint, policy: .conservative(advance: 0x10000))
        #expect(restored.top == 1 << 32)
        #expect(restored.check(wire: 0) == .replayed(1 << 32))
        #expect(restored.check(wire: 1) == .fresh((1 << 32) + 1))
    }

    @Test("top at every bit position of a block", arguments: [63, 64, 65, 127, 128, 1000] as [UInt64])
    func markAllSeenLeavesTheNumbersAboveTheTopFree(top: UInt64) throws {
        let restored = try ReplayWindow(
            size: 100, extendedSequenceNumbers: false,
            restoringFrom: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: top - 1),
            policy: .conservative(advance: 1))
        #expect(restored.check(wire: UInt32(top)) == .replayed(top))
        #expect(restored.check(wire: UInt32(top + 1)) == .fresh(top + 1))
        #expect(restored.check(wire: UInt32(top + 2)) == .fresh(top + 2))
    }

    @Test func passiveCopyAdoptsCheckpointsInPlace() throws {
        var window = try ReplayWindow(size: 128, extendedSequenceNumbers: false)
        for number in 1...100 as ClosedRange<UInt64> { try window.commit(number) }
        let shared = window
        try window.adoptPassively(ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: 500))
        #expect(window.top == 500)
        #expect(window.checkpoint == ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: 500))
        #expect(window.check(wire: 500) == .replayed(500), "the top itself needs no bitmap")
        #expect(window.check(wire: 501) == .fresh(501))
        #expect(shared.top == 100 && shared.rememberedCount == 100, "a copy is not written through")
        try window.adoptPassively(ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: 300))
        #expect(window.top == 300, "a passive copy follows the checkpoints it is given")
        // A takeover rebuilds the window from the passive copy's checkpoint: whatever its ring
        // held, the rebuilt window is the conservative one.
        let rebuilt = try ReplayWindow(
            size: 128, extendedSequenceNumbers: false, restoringFrom: window.checkpoint, policy: .conservative(advance: 50))
        #expect(rebuilt.top == 350)
        for number in 223...350 as ClosedRange<UInt64> { #expect(rebuilt.check(wire: UInt32(number)) == .replayed(number)) }
        #expect(rebuilt.check(wire: 351) == .fresh(351))
        #expect(throws: ReplayWindowError.restoredTopBeyondSequenceSpace(checkpoint: 1 << 32, advance: 0)) {
            try window.adoptPassively(ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: 1 << 32))
        }
        #expect(window.top == 300, "a refused checkpoint changes nothing")
    }

    @Test(arguments: [64, 1024, 8000, 1 << 20] as [UInt32])
    func passiveCopiesShareNothingThatAWriteCanReach(size: UInt32) throws {
        let checkpoint = ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: 5_000)
        var first = try ReplayWindow(passiveCopyAt: checkpoint, size: size, extendedSequenceNumbers: true)
        let second = try ReplayWindow(passiveCopyAt: checkpoint, size: size, extendedSequenceNumbers: true)
        #expect(first.top == 5_000 && first.size == size && first.extendedSequenceNumbers)
        #expect(first.check(wire: 5_000) == .replayed(5_000))
        try first.commit(4_990)
        try first.commit(5_001)
        #expect(first.check(wire: 4_990) == .replayed(4_990))
        #expect(second.check(wire: 4_990) == .fresh(4_990), "the other copy's ring was not written")
        #expect(second.rememberedCount == 0 && second.top == 5_000)
        let third = try ReplayWindow(passiveCopyAt: checkpoint, size: size, extendedSequenceNumbers: true)
        #expect(third.rememberedCount == 0, "nor the shared one")
    }

    @Test func passiveCopiesRefuseWhatAWindowRefuses() {
        #expect(throws: ReplayWindowError.windowSizeOutOfRange(16)) {
            try ReplayWindow(passiveCopyAt: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: 1), size: 16, extendedSequenceNumbers: true)
        }
        #expect(throws: ReplayWindowError.restoredTopBeyondSequenceSpace(checkpoint: 1 << 32, advance: 0)) {
            try ReplayWindow(
                passiveCopyAt: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: 1 << 32), size: 64, extendedSequenceNumbers: false)
        }
    }
}
