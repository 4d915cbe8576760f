import IPsecHACore
import Testing

/// A deliberately naive anti-replay receiver: a set of every number accepted, and the window
/// rule stated directly. Its ESN inference is the window-range formulation, independent of A2.2.
struct NaiveReplayModel {
    let size: UInt64
    let esn: Bool
    var top: UInt64 = 0
    var seen: Set<UInt64> = []

    func infer(_ wire: UInt32) -> UInt64 {
        esn ? ExtendedSequenceNumberTests.modelInference(wire: wire, top: top, windowSize: UInt32(size)) : UInt64(wire)
    }

    mutating func apply(_ packet: ReplayReferencePacket) -> ReplayReferenceVerdict {
        let number = infer(UInt32(truncatingIfNeeded: packet.trueSequenceNumber))
        if number == 0 || (number <= top && top - number >= size) { return .stale(number) }
        if seen.contains(number) { return .replay(number) }
        guard number == packet.trueSequenceNumber, !packet.forged else { return .fail(number) }
        seen.insert(number)
        top = max(top, number)
        seen = seen.filter { top - $0 < size }  // keep the model small; older numbers are stale anyway
        return .accept(number)
    }
}

@Suite("Replay window against a naive model")
struct ReplayWindowModelTests {
    static let sizes: [UInt32] = [32, 33, 63, 64, 65, 100, 127, 128, 129, 992, 1000, 1024, 4096, 65_535, 65_536, 100_000]

    /// Seeded streams: mostly forward with jitter inside the window, replays of recent numbers,
    /// old numbers, forged packets, and jumps of several windows (and, with ESN, across 2^32).
    @Test(arguments: sizes, [false, true])
    func randomStreamsAgree(size: UInt32, esn: Bool) throws {
        var random = SplitMix64(seed: UInt64(size) << 1 | (esn ? 1 : 0))
        var driver = ReplayReferenceDriver(window: try ReplayWindow(size: size, extendedSequenceNumbers: esn))
        var model = NaiveReplayModel(size: UInt64(size), esn: esn)
        let w = UInt64(size)
        var sender: UInt64 = esn ? 0xFFFF_FFFF - 20_000 : 0
        var history: [UInt64] = []
        let packets = size > 10_000 ? 6_000 : 12_000
        for step in 0..<packets {
            let number: UInt64
            var forged = false
            switch random.next() % 20 {
            case 0..<11:
                sender += 1 + random.next() % 3
                number = sender > w / 2 ? sender - random.next() % (w / 2) : sender
            case 11, 12:
                number = history.isEmpty ? 1 : history[Int(random.next() % UInt64(history.count))]
            case 13:
                number = sender > 2 * w ? sender - w - random.next() % w : 1 + random.next() % (sender + 1)
            case 14:
                number = sender + 1 + random.next() % (2 * w)
                forged = true
            case 15:
                sender += w + random.next() % (3 * w)
                number = sender
            case 16:
                number = sender >= w ? sender - w + 1 + random.next() % 2 : sender + 1
            default:
                sender += 1
                number = sender
            }
            if !esn && number > UInt64(UInt32.max) { break }
            let packet = ReplayReferencePacket(trueSequenceNumber: number, forged: forged)
            let expected = model.apply(packet)
            let actual = driver.apply(packet)
            #expect(actual == expected, "step \(step): \(number)\(forged ? " forged" : "") top \(model.top)")
            if actual != expected { return }
            if case .accept = actual {
                history.append(number)
                if history.count > 64 { history.removeFirst() }
            }
            #expect(driver.window.top == model.top)
        }
        if esn { #expect(driver.window.top > 1 << 32, "the stream crossed the 2^32 boundary") }
    }
}
