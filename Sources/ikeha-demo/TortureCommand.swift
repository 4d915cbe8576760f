import ArgumentParser
import Dispatch
import IPsecHASimulation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `ikeha-demo torture` (`make torture`): a few thousand short runs, each under a fault
/// schedule drawn from its seed (`Torture`), on every core, and one table: schedules, faults of
/// each kind, invariant violations (which must be none), IKE SAs lost and why.
struct TortureCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "torture",
        abstract: "Run many seeded fault schedules (crashes, reboots, partitions, loss, delays, an arbiter) and check every invariant."
    )

    @Option(help: "Schedules to run.") var schedules = 2_000
    @Option(name: .customLong("first-seed"), help: "The first schedule's seed; the others follow.") var firstSeed: UInt64 = 1
    @Option(help: "Runs at once (default: one per core).") var jobs: Int?
    @Flag(help: "Also print one line per schedule: its seed, what it lost and why, and how to run it alone.") var list = false

    func validate() throws {
        guard (1...1_000_000).contains(schedules) else { throw ValidationError("--schedules must be 1 to 1,000,000") }
        if let jobs, !(1...256).contains(jobs) { throw ValidationError("--jobs must be 1 to 256") }
    }

    func run() throws {
        if getenv("SWIFT_DETERMINISTIC_HASHING") == nil {
            // Sets and dictionaries iterate in a per-process order otherwise, and some tie-breaks
            // follow it: a schedule can hold in one process and break in the next.
            StandardError.write("ikeha-demo torture: SWIFT_DETERMINISTIC_HASHING is not set (make torture sets it): schedules are reproducible only with it\n")
        }
        let outcomes = Mutex<[Torture.Outcome]>([])
        let failures = Mutex<[String]>([])
        let jobs = self.jobs ?? max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        let total = schedules, first = firstSeed
        let showProgress = isatty(2) != 0
        let clock = ContinuousClock()
        let started = clock.now
        DispatchQueue.concurrentPerform(iterations: jobs) { job in
            for index in stride(from: job, to: total, by: jobs) {
                let seed = first + UInt64(index)
                do {
                    let outcome = try Torture.run(seed: seed)
                    let done = outcomes.withLock { list in
                        list.append(outcome)
                        return list.count
                    }
                    if showProgress, done % 20 == 0 { StandardError.write("torture: \(done) of \(total)   \r") }
                } catch {
                    failures.withLock { $0.append("seed \(seed): \(error)") }
                }
            }
        }
        if showProgress { StandardError.write(String(repeating: " ", count: 40) + "\r") }
        let seconds = Double((clock.now - started).components.seconds) + Double((clock.now - started).components.attoseconds) / 1e18
        let results = outcomes.withLock { $0 }.sorted { $0.seed < $1.seed }
        let errors = failures.withLock { $0 }
        if list {
            for outcome in results {
                let lost = outcome.report?.ikeSAsLostByReason.map { "\($0.value) \($0.key)" }.joined(separator: ", ") ?? ""
                print("seed \(outcome.seed): \(outcome.violations.isEmpty ? "held" : outcome.violations.joined(separator: "; "))\(lost.isEmpty ? "" : "; lost \(lost)"): \(outcome.reproduce)")
            }
        }
        print(Self.table(results, errors: errors, first: first, seconds: seconds, jobs: jobs))
        if !errors.isEmpty || results.contains(where: { !$0.violations.isEmpty }) { throw ExitCode.failure }
    }

    static func table(_ results: [Torture.Outcome], errors: [String], first: UInt64, seconds: Double, jobs: Int) -> String {
        func row(_ name: String, _ value: String) -> String { name.padding(to: 50) + value }
        func sum(_ values: [Int]) -> Int { values.reduce(0, +) }
        let standby = results.filter { !$0.loadSharing }
        let sharing = results.filter(\.loadSharing)
        let reports = standby.compactMap(\.report)
        var faults: [String: Int] = [:]
        for outcome in results { faults.merge(outcome.faults, uniquingKeysWith: +) }
        var lost: [String: Int] = [:]
        for report in reports { lost.merge(report.ikeSAsLostByReason, uniquingKeysWith: +) }
        let violating = results.filter { !$0.violations.isEmpty }
        let shared = sharing.compactMap(\.loadSharingReport)
        let splitBrains = reports.filter { $0.splitBrainMs > 0 }
        var lines = [
            "ikeha-demo torture: \(results.count) schedules (seeds \(first) to \(first + UInt64(max(results.count, 1)) - 1)) in \(Int(seconds.rounded())) s on \(jobs) cores",
            "",
            "schedules",
            row("  active/standby (2-4 members)", "\(standby.count) (\(reports.filter { $0.faults["arbiter decision"] != nil || $0.takeovers > 0 }.count) with a takeover or an arbiter decision)"),
            row("  load sharing (3-5 members)", "\(sharing.count)"),
            "faults",
        ]
        lines += faults.sorted { $0.key < $1.key }.map { row("  \($0.key)", "\($0.value)") }
        lines += [
            "invariant violations",
            row("  sequence numbers reused", "\(sum(reports.map(\.sequenceNumbersReused)) + sum(shared.map(\.sequenceNumbersReused)))"),
            row("  replays accepted", "\(sum(reports.map(\.replaysAccepted)) + sum(shared.map(\.replaysAccepted))) of \(sum(reports.map(\.replaysAttempted))) attempted"),
            row("  cluster packets the peer's window rejected", "\(sum(reports.map(\.legitPacketsRejectedByPeer)))"),
            row("  split brains unresolved within \(Int(SimulationReport.splitBrainResolutionBoundMs)) ms", "\(reports.filter { $0.splitBrainConnectedMsMax > SimulationReport.splitBrainResolutionBoundMs }.count)"),
            row("  segments served by two members (steps)", "\(sum(shared.map(\.duplicateOwnershipSteps)))"),
            row("  members beyond the state bound", "\(sum(reports.map(\.stateBoundExceeded)))"),
            row("  schedules with a violation", "\(violating.count)"),
            "split brains (active/standby, without an arbiter's say)",
            row("  schedules with one", "\(splitBrains.count)"),
            row("  longest: in all / once they heard each other", "\((reports.map(\.splitBrainMs).max() ?? 0)) ms / \(reports.map(\.splitBrainConnectedMsMax).max() ?? 0) ms"),
            row("  packets the peer's window refused", "\(sum(reports.map(\.splitBrainPacketsRejectedByPeer)))"),
            row("  replays accepted by a member of one", "\(sum(reports.map(\.splitBrainReplaysAccepted)))"),
            "takeovers",
            row("  crashes of the active member / takeovers", "\(sum(reports.map(\.activeCrashes))) / \(sum(reports.map(\.takeovers)))"),
            row("  longest time without an active member", "\(reports.compactMap(\.takeoverMs).max() ?? 0) ms"),
            row("  load sharing: segments taken over / handed over", "\(sum(shared.map(\.segmentsTakenOver))) / \(sum(shared.map(\.segmentsHandedOver)))"),
            row("  load sharing: segments unserved at the end", "\(sum(sharing.map(\.segmentsUnservedAtEnd)))"),
            "IKE SAs (active/standby)",
            row("  survived / lost", "\(sum(reports.map(\.ikeSAsSurvived))) / \(sum(reports.map(\.ikeSAsLost)))"),
        ]
        lines += lost.sorted { $0.key < $1.key }.map { row("    \($0.key)", "\($0.value)") }
        for outcome in violating.prefix(10) {
            lines += ["", "VIOLATION, seed \(outcome.seed): " + outcome.violations.joined(separator: "; "), "  " + outcome.reproduce]
        }
        lines += errors.prefix(10).map { "ERROR \($0)" }
        lines += ["", violating.isEmpty && errors.isEmpty ? "every invariant held in every schedule" : "INVARIANT VIOLATED"]
        return lines.joined(separator: "\n")
    }
}

extension String {
    /// The string, padded with spaces to `width` characters.
    fileprivate func padding(to width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}
