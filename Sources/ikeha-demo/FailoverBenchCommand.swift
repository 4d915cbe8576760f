import ArgumentParser
import IPsecHACore
import IPsecHATestKit

/// `ikeha-demo bench failover`: the takeover plan of a large standby state.
struct FailoverBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "failover",
        abstract: "Time the takeover plan; the last line is name=value pairs."
    )

    @Option(name: .customLong("ike-sas"), help: "IKE SAs in the state.")
    var ikeSAs = 100_000

    @Option(name: .customLong("child-sas"), help: "Child SAs in the state.")
    var childSAs = 200_000

    @Option(help: "How many times to compute the plan (the best time is reported).")
    var repetitions = 5

    func validate() throws {
        guard ikeSAs > 0, childSAs >= 0, childSAs < 0x7000_0000, repetitions > 0 else {
            throw ValidationError("counts must be positive")
        }
    }

    func run() throws {
        var random = SplitMix64(seed: 11)
        var state = GatewayState()
        var identifiers: [IKESAIdentifier] = []
        for index in 0..<ikeSAs {
            let sa = try SAFixtures.ikeSA(UInt64(index + 1), &random)
            _ = try state.createIKESA(sa)
            identifiers.append(sa.identifier)
        }
        let now = Timestamp.seconds(1_000)
        for index in 0..<childSAs {
            let spi = UInt32(0x1000 + index)
            _ = try state.createChildSA(SAFixtures.childSA(spi, parent: identifiers[index % ikeSAs], window: 1024, &random))
            try state.recordCounterFreshness(
                ChildSAFreshness(
                    lastCheckpoint: Timestamp(nanoseconds: now.nanoseconds - random.next() % 50_000_000), packetsPerSecond: random.next() % 200_000),
                inboundSPI: spi)
        }
        let inFlight = Dictionary(uniqueKeysWithValues: identifiers.prefix(ikeSAs / 100).map { ($0, random.next() % 2 == 0) })
        let suspect = SuspectIKESAs.only(Set(identifiers.suffix(ikeSAs / 100)))
        let clock = ContinuousClock()
        var best = Duration.seconds(1_000)
        var plan: TakeoverPlan?
        for _ in 0..<repetitions {
            let started = clock.now
            plan = TakeoverPlanner.plan(state: state, inFlight: inFlight, suspect: suspect, now: now)
            best = min(best, started.duration(to: clock.now))
        }
        guard let plan else { return }
        let milliseconds = best.inSeconds * 1e3
        let rekeys = plan.childSAs.filter { $0.outbound == .rekey }.count
        let syncs = plan.ikeSAs.filter { if case .messageIDSync = $0.messageIDs { true } else { false } }.count
        print("takeover plan for \(plan.ikeSAs.count) IKE SAs and \(plan.childSAs.count) Child SAs: \(milliseconds.formatted(decimals: 1)) ms (best of \(repetitions)); \(syncs) message-ID syncs, \(rekeys) rekeys")
        print("plan_milliseconds=\(milliseconds.formatted(decimals: 1)) ike_sas=\(plan.ikeSAs.count) child_sas=\(plan.childSAs.count)")
    }
}
