import ArgumentParser
import IPsecHACore

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Time the package's hot paths (build with -c release for meaningful numbers).",
        subcommands: [ReplayBenchCommand.self, StateBenchCommand.self, SyncBenchCommand.self, ScaleBenchCommand.self, FailoverBenchCommand.self, DeleteBenchCommand.self]
    )
}

/// `ikeha-demo bench replay`: times the check-and-commit loop of an anti-replay window over a
/// prepared list of wire sequence numbers.
struct ReplayBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Time ReplayWindow check and commit; prints 'accepted=<n> ns_per_op=<x>'."
    )

    @Option(name: .long, help: "Window size in packets (32 to 1048576).")
    var window: UInt32

    @Flag(name: .long, help: "Extended Sequence Numbers; the sequence starts at 0xFFFF0000.")
    var esn = false

    @Option(name: .long, help: "inorder, jitter or replay.")
    var pattern: ReplayBenchPattern

    @Option(name: .long, help: "Number of packets.")
    var count: Int

    func validate() throws {
        guard (ReplayWindow.minimumSize...ReplayWindow.maximumSize).contains(window) else {
            throw ValidationError("--window must be between \(ReplayWindow.minimumSize) and \(ReplayWindow.maximumSize)")
        }
        guard count > 0, count <= 1 << 30 else { throw ValidationError("--count must be between 1 and 2^30") }
    }

    func run() throws {
        let wires = pattern.wireSequenceNumbers(count: count, windowSize: window, extendedSequenceNumbers: esn)
        var replayWindow = try ReplayWindow(size: window, extendedSequenceNumbers: esn)
        let clock = ContinuousClock()
        let start = clock.now
        let accepted = wires.withUnsafeBufferPointer { checkAndCommit($0, into: &replayWindow) }
        let elapsed = start.duration(to: clock.now)
        let nanoseconds = elapsed.inSeconds * 1e9
        let perOperation = nanoseconds / Double(count)
        print("accepted=\(accepted) ns_per_op=\(perOperation.formatted(decimals: 3))")
    }
}

/// The measured loop: check, and commit what passes, as a receiver does per packet.
@inline(never)
func checkAndCommit(_ wires: UnsafeBufferPointer<UInt32>, into window: inout ReplayWindow) -> Int {
    window.withExclusiveAccess { access in
        var accepted = 0
        for wire in wires {
            if case .fresh(let sequenceNumber) = access.check(wire: wire) {
                do {
                    try access.commit(sequenceNumber)
                    accepted &+= 1
                } catch {}
            }
        }
        return accepted
    }
}

/// The packet orders of `ikeha-demo bench replay`, with `base = 0xFFFF0000` under ESN and 0
/// otherwise, for i in 0..<N: `inorder` sends base + 1 + i; `jitter` sends
/// base + 1 + i + (r_i mod (W / 2)) with r_i the i-th SplitMix64 output seeded with 42;
/// `replay` sends base + 1 + i / 2 (every number twice).
enum ReplayBenchPattern: String, ExpressibleByArgument, CaseIterable {
    case inorder, jitter, replay

    func wireSequenceNumbers(count: Int, windowSize: UInt32, extendedSequenceNumbers: Bool) -> [UInt32] {
        let base: UInt64 = extendedSequenceNumbers ? 0xFFFF_0000 : 0
        var random = SplitMix64(seed: 42)
        let halfWindow = UInt64(windowSize / 2)
        return (0..<UInt64(count)).map { i in
            let sequenceNumber: UInt64
            switch self {
            case .inorder: sequenceNumber = base + 1 + i
            case .jitter: sequenceNumber = base + 1 + i + random.next() % halfWindow
            case .replay: sequenceNumber = base + 1 + i / 2
            }
            return UInt32(truncatingIfNeeded: sequenceNumber)
        }
    }
}

extension Double {
    /// Fixed-point text with `decimals` digits after the point (none, and no point, for 0).
    func formatted(decimals: Int) -> String {
        guard isFinite else { return "\(self)" }
        var scale = 1.0
        for _ in 0..<max(decimals, 0) { scale *= 10 }
        let scaled = (abs(self) * scale).rounded()
        let whole = Int(scaled / scale)
        let sign = self < 0 && scaled > 0 ? "-" : ""
        guard decimals > 0 else { return "\(sign)\(whole)" }
        let fractionText = String(Int(scaled) - whole * Int(scale))
        return "\(sign)\(whole).\(String(repeating: "0", count: max(decimals - fractionText.count, 0)))\(fractionText)"
    }
}
