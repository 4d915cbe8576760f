import IPsecHACore
import Testing

/// Runs `(true sequence number, forged, expected verdict word)` steps through a reference driver.
func runSteps(
    _ steps: [(UInt64, Bool, String)],
    window: UInt32,
    esn: Bool,
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    var driver = ReplayReferenceDriver(window: try ReplayWindow(size: window, extendedSequenceNumbers: esn))
    for (index, (number, forged, expected)) in steps.enumerated() {
        let verdict = driver.apply(ReplayReferencePacket(trueSequenceNumber: number, forged: forged))
        #expect(verdict.word == expected, "step \(index): \(number)\(forged ? " forged" : "")", sourceLocation: sourceLocation)
    }
}

@Suite("Replay window: published vectors")
struct ReplayWindowVectorTests {
    /// DPDK test_security_inline_proto.c, test_ipsec_inline_proto_pkt_antireplay (no ESN).
    @Test(arguments: [1024, 2048, 4096] as [UInt64])
    func dpdkInlineAntiReplay(window: UInt64) throws {
        try runSteps(
            [
                (2 * window, false, "accept"), (window + 1, false, "accept"), (window, false, "stale"),
                (window + window / 2, false, "accept"), (window + window / 2, false, "replay"),
            ], window: UInt32(window), esn: false)
    }

    /// DPDK test_ipsec_inline_proto_pkt_esn_antireplay.
    @Test(arguments: [1024, 2048, 4096] as [UInt64])
    func dpdkInlineESNAntiReplay(window: UInt64) throws {
        let twoTo32: UInt64 = 1 << 32
        try runSteps(
            [
                (0xFFFF_FFFF - window, false, "accept"), (twoTo32 + window / 2, false, "accept"),
                (twoTo32 - window / 2 + 1, false, "accept"), (twoTo32 - 1, false, "accept"),
                (twoTo32, false, "accept"), (twoTo32 - 1, false, "replay"), (twoTo32, false, "replay"),
            ], window: UInt32(window), esn: true)
    }

    static let dpdkConfigurations: [(UInt32, Bool)] = [(32, true), (64, true), (128, true), (256, false)]

    /// DPDK test_ipsec.c replay_inside / replay_repeat / replay_inside_burst / replay_outside.
    @Test(arguments: dpdkConfigurations)
    func dpdkReplayCases(window: UInt32, esn: Bool) throws {
        let w = UInt64(window)
        try runSteps([(1, false, "accept"), (w, false, "accept")], window: window, esn: esn)
        try runSteps([(1, false, "accept"), (1, false, "replay")], window: window, esn: esn)
        var burst: [(UInt64, Bool, String)] = [(1, false, "accept")]
        burst += [7, 2, 33, 3, 4, 32, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27,
            28, 29, 30, 31].map { ($0, false, "accept") }
        try runSteps(burst, window: window, esn: esn)

        // replay_outside: W + 2, then 1. Without ESN 1 is below the window; with ESN it is
        // inferred as 2^32 + 1 and only the ICV (NULL in DPDK's test) decides.
        var outside = try ReplayWindow(size: window, extendedSequenceNumbers: esn)
        #expect(outside.check(wire: UInt32(w + 2)) == .fresh(w + 2))
        try outside.commit(w + 2)
        #expect(outside.check(wire: 1) == (esn ? .fresh((1 << 32) + 1) : .stale(1)))
    }

    /// VPP test/template_ipsec.py verify_tra_anti_replay, W = 64.
    @Test(arguments: [false, true])
    func vppTransportAntiReplay(esn: Bool) throws {
        var steps: [(UInt64, Bool, String)] = []
        steps += (1...33).map { ($0, false, "accept") }
        steps += (1...33).map { ($0, false, "replay") }
        steps += [(35, false, "accept")] + Array(repeating: (35, false, "replay"), count: 7)
        steps += [(257, false, "accept")] + Array(repeating: (257, false, "replay"), count: 3)
        steps += [(200, false, "accept")]
        steps += Array(repeating: (350, true, "fail"), count: 17)  // wrong key: window must not move
        steps += [(234, false, "accept")]
        // 17 is below the window: with ESN it is inferred as 2^32 + 17 and fails the ICV.
        steps += [(17, false, esn ? "fail" : "stale")]
        steps += [(258, false, "accept")]
        if esn {
            steps += [
                (279, false, "accept"),
                (0x1_0000_0005, false, "accept"),  // case A, Seql < Bl: Seqh = 1
                (0xFFFF_FFFD, false, "accept"),  // case B, Seql >= Bl: Seqh = 0, inside the window
                (0x2_0000_0999, false, "fail"),  // inferred 0x1_0000_0999: the ICV fails
                (0x1_0000_0555, false, "accept"),
                (0x2_0000_0444, false, "accept"),  // case A, Seql < Bl: Seqh = 2
            ]
        }
        try runSteps(steps, window: 64, esn: esn)
    }

    @Test("sequence number 0 is stale, with and without ESN", arguments: [false, true])
    func zeroIsStale(esn: Bool) throws {
        let window = try ReplayWindow(size: 64, extendedSequenceNumbers: esn)
        #expect(window.check(wire: 0) == .stale(0))
        var copy = window
        #expect(throws: ReplayWindowRejection.stale) { try copy.commit(0) }
    }

    @Test func esnBoundaryAt2To32() throws {
        var steps: [(UInt64, Bool, String)] = []
        steps += (0xFFFF_FFF0...0xFFFF_FFFF).map { ($0, false, "accept") }
        steps += [(1 << 32, false, "accept"), ((1 << 32) + 1, false, "accept")]
        steps += [(0xFFFF_FFFF, false, "replay"), (0xFFFF_FFC2, false, "accept"), (0xFFFF_FFC1, false, "fail")]  // below the window: inferred 2^32 + 0xFFFFFFC1
        try runSteps(steps, window: 64, esn: true)
        // Without ESN the space ends at 2^32 - 1: nothing can follow it.
        var plain = try ReplayWindow(size: 64, extendedSequenceNumbers: false)
        try plain.commit(0xFFFF_FFFF)
        #expect(throws: ReplayWindowRejection.beyondSequenceSpace) { try plain.commit(1 << 32) }
        #expect(plain.check(wire: 0) == .stale(0))
    }

    @Test func commitRefusesWhatCheckWouldRefuse() throws {
        var window = try ReplayWindow(size: 64, extendedSequenceNumbers: false)
        try window.commit(1000)
        #expect(throws: ReplayWindowRejection.replayed) { try window.commit(1000) }
        #expect(throws: ReplayWindowRejection.stale) { try window.commit(1000 - 64) }
        try window.commit(1000 - 63)
        #expect(window.top == 1000)
        #expect(window.rememberedCount == 2)
    }

    @Test func copiesDoNotShareCommits() throws {
        var original = try ReplayWindow(size: 128, extendedSequenceNumbers: true)
        try original.commit(10)
        var copy = original
        try copy.commit(11)
        try copy.commit(5)
        #expect(original.check(wire: 5) == .fresh(5))
        #expect(original.top == 10)
        #expect(copy.check(wire: 5) == .replayed(5))
        #expect(copy.top == 11)
    }

    @Test(arguments: [0, 1, 31, ReplayWindow.maximumSize + 1, UInt32.max] as [UInt32])
    func windowSizesOutsideTheRangeAreRefused(size: UInt32) {
        #expect(throws: ReplayWindowError.windowSizeOutOfRange(size)) {
            try ReplayWindow(size: size, extendedSequenceNumbers: false)
        }
    }
}

@Suite("Replay window: exclusive access for bursts")
struct ReplayWindowExclusiveAccessTests {
    @Test(arguments: [false, true])
    func burstAccessMatchesPerPacketCommits(esn: Bool) throws {
        var random = SplitMix64(seed: 7)
        let base: UInt64 = esn ? 0xFFFF_F000 : 0
        let wires = (0..<20_000).map { i in UInt32(truncatingIfNeeded: base + 1 + UInt64(i) + random.next() % 200) }
        var perPacket = try ReplayWindow(size: 256, extendedSequenceNumbers: esn)
        var perPacketVerdicts: [ReplayCheckResult] = []
        for wire in wires {
            let verdict = perPacket.check(wire: wire)
            perPacketVerdicts.append(verdict)
            if case .fresh(let number) = verdict { try perPacket.commit(number) }
        }
        var burst = try ReplayWindow(size: 256, extendedSequenceNumbers: esn)
        let snapshotBefore = burst
        let burstVerdicts = try burst.withExclusiveAccess { access throws(ReplayWindowRejection) in
            var verdicts: [ReplayCheckResult] = []
            for wire in wires {
                let verdict = access.check(wire: wire)
                verdicts.append(verdict)
                if case .fresh(let number) = verdict { try access.commit(number) }
            }
            return verdicts
        }
        #expect(burstVerdicts == perPacketVerdicts)
        #expect(burst.top == perPacket.top)
        #expect(burst.rememberedCount == perPacket.rememberedCount)
        #expect(snapshotBefore.top == 0, "a copy taken before the burst is not written through")
        #expect(snapshotBefore.rememberedCount == 0)
    }

    @Test func errorsInsideABurstLeaveTheCommittedPrefix() throws {
        var window = try ReplayWindow(size: 64, extendedSequenceNumbers: false)
        #expect(throws: ReplayWindowRejection.replayed) {
            try window.withExclusiveAccess { access throws(ReplayWindowRejection) in
                try access.commit(10)
                try access.commit(11)
                try access.commit(10)
            }
        }
        #expect(window.top == 11)
        #expect(window.check(wire: 10) == .replayed(10))
    }
}
