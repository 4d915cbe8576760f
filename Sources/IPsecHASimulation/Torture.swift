import IPsecHACore
import IPsecHASync
import IPsecHATestKit

/// Many short runs, each under a fault schedule drawn from its seed: the active/standby
/// ``ClusterSimulation`` (two to four members, sometimes with an external arbiter) and, one run in
/// five, the load-sharing ``LoadSharingCluster`` (three to five members, majority quorum).
/// `ikeha-demo torture` and `make torture` run a few thousand and print the summary.
public enum Torture {
    /// What one schedule gave.
    public struct Outcome: Sendable {
        /// The schedule's seed (`ikeha-demo torture --first-seed S --schedules 1` runs it alone).
        public var seed: UInt64
        /// Whether it was a load-sharing run.
        public var loadSharing: Bool
        /// The faults carried out, by kind.
        public var faults: [String: Int] = [:]
        /// The invariants it broke (empty when every one held), each with what was seen.
        public var violations: [String] = []
        /// Active/standby: the report.
        public var report: SimulationReport?
        /// Load sharing: the report.
        public var loadSharingReport: LoadSharingReport?
        /// Load sharing: the segments no member served at the end, after every member restarted
        /// and the network healed (liveness, not safety).
        public var segmentsUnservedAtEnd = 0
        /// How to run it again alone.
        public var reproduce: String
    }

    /// The active/standby run of a seed: its configuration, fault schedule included.
    public static func activeStandbyConfiguration(seed: UInt64) -> SimulationConfiguration {
        var random = SplitMix64(seed: seed ^ 0x7027)
        let members = [2, 2, 3, 3, 4][Int(random.next() % 5)]
        let syncLoss = [0, 0.05, 0.1, 0.3][Int(random.next() % 4)]
        let outsideLoss = random.next() % 4 == 0 ? 0.05 : 0
        let ikeSARekeyEvery = random.next() % 3 == 0 ? 5 : 0
        let arbiter = random.next() % 4 == 0
        let faults = FaultSchedule.random(seed: seed, members: members, durationMs: 4_000, count: 2 + Int(random.next() % 5), arbiter: arbiter)
        return configuration(
            seed: seed, members: members, syncLoss: syncLoss, outsideLoss: outsideLoss, ikeSARekeyEvery: ikeSARekeyEvery, arbiter: arbiter, faults: faults)
    }

    /// An active/standby run as the torture run makes them (12 IKE SAs of two Child SAs, 5 new
    /// ones a second, 4 s) under `faults`: what a schedule it found is run again with.
    public static func configuration(
        seed: UInt64, members: Int, syncLoss: Double, outsideLoss: Double = 0, ikeSARekeyEvery: Int = 0, arbiter: Bool = false, faults: FaultSchedule
    ) -> SimulationConfiguration {
        var configuration = SimulationConfiguration()
        configuration.seed = seed
        configuration.members = members
        configuration.ikeSAs = 12
        configuration.childSAsPerIKESA = 2
        configuration.durationMs = 4_000
        configuration.newIKESAsPerSecond = 5
        configuration.syncLoss = syncLoss
        configuration.outsideLoss = outsideLoss
        configuration.ikeSARekeyEvery = ikeSARekeyEvery
        configuration.arbiter = arbiter || faults.hasArbiter
        configuration.faults = faults
        configuration.crashAtMs = nil
        return configuration
    }

    /// Runs schedule `seed`: active/standby, or load sharing when `seed` is a multiple of five.
    public static func run(seed: UInt64) throws -> Outcome {
        seed % 5 == 0 ? try runLoadSharing(seed: seed) : try runActiveStandby(seed: seed)
    }

    static func runActiveStandby(seed: UInt64) throws -> Outcome {
        let configuration = activeStandbyConfiguration(seed: seed)
        var simulation = try ClusterSimulation(configuration: configuration)
        let report = try simulation.run()
        var outcome = Outcome(
            seed: seed, loadSharing: false, faults: report.faults, report: report,
            reproduce: "SWIFT_DETERMINISTIC_HASHING=1 ikeha-demo simulate --seed \(seed) --members \(configuration.members) --ike-sas \(configuration.ikeSAs) "
                + "--duration-ms \(configuration.durationMs) --new-ike-sas-per-second \(configuration.newIKESAsPerSecond) "
                + "--sync-loss \(configuration.syncLoss) --outside-loss \(configuration.outsideLoss) "
                + "--ike-sa-rekey-every \(configuration.ikeSARekeyEvery)\(configuration.arbiter ? " --arbiter" : "") "
                + "--faults '\(configuration.faults!)'")
        if report.sequenceNumbersReused > 0 { outcome.violations.append("sequence numbers reused: \(report.sequenceNumbersReused)") }
        if report.replaysAccepted > 0 { outcome.violations.append("replays accepted: \(report.replaysAccepted)") }
        if report.legitPacketsRejectedByPeer > 0 { outcome.violations.append("cluster packets the peer rejected: \(report.legitPacketsRejectedByPeer)") }
        if report.splitBrainConnectedMsMax > SimulationReport.splitBrainResolutionBoundMs {
            outcome.violations.append("split brain unresolved for \(report.splitBrainConnectedMsMax) ms with the link up")
        }
        if report.stateBoundExceeded > 0 { outcome.violations.append("members holding more IKE SAs than the run had: \(report.stateBoundExceeded)") }
        if report.ikeSAsLost != report.ikeSAsLostByReason.values.reduce(0, +) { outcome.violations.append("IKE SAs lost without a reason") }
        return outcome
    }

    /// Load sharing: every member started and settled, IKE SAs established, then faults drawn
    /// from the seed for three seconds (crashes and restarts of any member, partitions that cut
    /// one member off or split the cluster, loss one way, long delays), then everything healed
    /// and restarted and two seconds to settle.
    static func runLoadSharing(seed: UInt64) throws -> Outcome {
        var random = SplitMix64(seed: seed ^ 0x15AD)
        let count = 3 + Int(random.next() % 3)
        var faults = NetworkFaults()
        faults.loss = [0, 0.05, 0.1][Int(random.next() % 3)]
        faults.jitter = .milliseconds(1)
        var cluster = try LoadSharingCluster(seed: seed, memberCount: count, segmentCount: 16, faults: faults)
        let ids = (1...count).map { ClusterMemberID(rawValue: UInt16($0)) }
        for id in ids { try cluster.start(id) }
        try cluster.run(for: 1_500_000_000, step: 2_000_000)
        var peer: UInt32 = 0xC633_6400 ^ UInt32(truncatingIfNeeded: seed)
        for _ in 0..<12 {
            peer &+= 0x0101_0737
            _ = try cluster.establishIKESA(peer: IPAddress(ipv4: peer))
        }
        var outcome = Outcome(seed: seed, loadSharing: true, reproduce: "SWIFT_DETERMINISTIC_HASHING=1 ikeha-demo torture --first-seed \(seed) --schedules 1")
        let defaultDelay = cluster.network.faults.delay
        for _ in 0..<(3 + Int(random.next() % 6)) {
            try cluster.run(for: (50 + random.next() % 500) * 1_000_000, step: 2_000_000)
            let member = ids[Int(random.next() % UInt64(count))]
            let kind: String
            switch random.next() % 6 {
            case 0:
                cluster.crash(member)
                kind = "crash"
            case 1:
                guard let down = ids.first(where: { cluster.members[$0]?.isRunning == false }) else { continue }
                try cluster.start(down)
                kind = "restart"
            case 2:
                cluster.network.faults.partitions = Set(ids.filter { $0 != member }.map { [member.rawValue, $0.rawValue] })
                kind = "partition"
            case 3:
                // Two groups: the lower half and the upper half of the IDs.
                let split = 1 + Int(random.next() % UInt64(count - 1))
                var cut: Set<[UInt16]> = []
                for a in ids.prefix(split) { for b in ids.dropFirst(split) { cut.insert([a.rawValue, b.rawValue]) } }
                cluster.network.faults.partitions = cut
                kind = "partition"
            case 4:
                let other = ids[(Int(member.rawValue) % count)]
                cluster.network.faults.directedLoss[[member.rawValue, other.rawValue]] = [0.5, 1.0][Int(random.next() % 2)]
                kind = "asymmetric loss"
            default:
                cluster.network.faults.delay = .milliseconds([20, 80][Int(random.next() % 2)])
                kind = "long delay"
            }
            outcome.faults[kind, default: 0] += 1
            if random.next() % 3 == 0 {
                try cluster.run(for: (20 + random.next() % 400) * 1_000_000, step: 2_000_000)
                cluster.network.faults.heal(delay: defaultDelay)
                outcome.faults["heal", default: 0] += 1
            }
        }
        cluster.network.faults.heal(delay: defaultDelay)
        outcome.faults["heal", default: 0] += 1
        for id in ids where cluster.members[id]?.isRunning == false {
            try cluster.start(id)
            outcome.faults["restart", default: 0] += 1
        }
        try cluster.run(for: 3_000_000_000, step: 2_000_000)
        let report = cluster.report
        outcome.loadSharingReport = report
        outcome.segmentsUnservedAtEnd = cluster.segments.all.filter { cluster.servers(of: $0).isEmpty }.count
        if report.duplicateOwnershipSteps > 0 { outcome.violations.append("steps with a segment served twice: \(report.duplicateOwnershipSteps)") }
        if report.sequenceNumbersReused > 0 { outcome.violations.append("sequence numbers reused: \(report.sequenceNumbersReused)") }
        if report.replaysAccepted > 0 { outcome.violations.append("replays accepted: \(report.replaysAccepted)") }
        return outcome
    }
}
