import IPsecHACore
import Testing

@Suite("ESN inference (RFC 4303 Appendix A2.2)")
struct ExtendedSequenceNumberTests {
    struct Vector: Sendable, CustomTestStringConvertible {
        var top: UInt64
        var wire: UInt32
        var expected: UInt64
        var testDescription: String { "T=\(top) Seql=\(wire) -> \(expected)" }
    }

    /// The worked table of spec-digest section 8.2 (W = 64), re-derived from A2.2.
    static let worked: [Vector] = [
        // Case A, T = 100: Bl = 37.
        Vector(top: 100, wire: 90, expected: 90),
        Vector(top: 100, wire: 37, expected: 37),
        Vector(top: 100, wire: 36, expected: (1 << 32) + 36),
        Vector(top: 100, wire: 150, expected: 150),
        // Case B, T = 2^32 + 10: Bl = 0xFFFFFFCB.
        Vector(top: (1 << 32) + 10, wire: 0xFFFF_FFCB, expected: 0xFFFF_FFCB),
        Vector(top: (1 << 32) + 10, wire: 0xFFFF_FFFF, expected: 0xFFFF_FFFF),
        Vector(top: (1 << 32) + 10, wire: 5, expected: (1 << 32) + 5),
        Vector(top: (1 << 32) + 10, wire: 11, expected: (1 << 32) + 11),
        // Case B with Th = 0: Seqh stays 0 instead of -1 (the stated rule, as DPDK).
        Vector(top: 62, wire: 0xFFFF_FFFF, expected: 0xFFFF_FFFF),
        Vector(top: 0, wire: 0xFFFF_FFF0, expected: 0xFFFF_FFF0),
        // Case A at the boundary Tl = W - 1: Bl = 0.
        Vector(top: 63, wire: 0, expected: 0),
        // Th + 1 in case A, several subspaces up.
        Vector(top: (3 << 32) + 1000, wire: 10, expected: (4 << 32) + 10),
        // Case A with Th = 2^32 - 1: no subspace above, Seqh stays Th.
        Vector(top: UInt64.max - 1000, wire: 5, expected: (UInt64(UInt32.max) << 32) + 5),
    ]

    @Test(arguments: worked)
    func workedTable(_ vector: Vector) {
        #expect(ExtendedSequenceNumber.infer(wire: vector.wire, top: vector.top, windowSize: 64) == vector.expected)
    }

    /// RFC 4303 Appendix A2.2 transcribed case by case, with the two stated corner rules; the
    /// implementation computes the same thing another way.
    static func modelInference(wire seql: UInt32, top: UInt64, windowSize w: UInt32) -> UInt64 {
        let tl = UInt32(truncatingIfNeeded: top)
        let th = UInt32(truncatingIfNeeded: top >> 32)
        let bl = tl &- w &+ 1
        let seqh: UInt32
        if tl >= w - 1 {  // Case A
            seqh = seql >= bl ? th : (th == .max ? th : th + 1)
        } else {  // Case B
            seqh = seql >= bl ? (th == 0 ? 0 : th - 1) : th
        }
        return UInt64(seqh) << 32 | UInt64(seql)
    }

    @Test("agrees with a case-by-case transcription of A2.2", arguments: [32, 64, 100, 1024, 65_536] as [UInt32])
    func agreesWithRangeModel(windowSize: UInt32) {
        var random = SplitMix64(seed: UInt64(windowSize))
        for _ in 0..<20_000 {
            let top: UInt64
            switch random.next() % 3 {
            case 0: top = random.next() % 200_000
            case 1: top = (random.next() % 8) << 32 &+ random.next() % UInt64(windowSize * 2)
            default: top = random.next() % (UInt64(UInt32.max) << 30)
            }
            let wire = UInt32(truncatingIfNeeded: random.next())
            let inferred = ExtendedSequenceNumber.infer(wire: wire, top: top, windowSize: windowSize)
            #expect(inferred == Self.modelInference(wire: wire, top: top, windowSize: windowSize))
        }
    }
}
