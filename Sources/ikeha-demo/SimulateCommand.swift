import ArgumentParser
import IPsecHACore
import IPsecHASimulation

#if canImport(Glibc)
import Glibc
#endif

/// `ikeha-demo simulate` (the default): a whole cluster serving a peer through a crash of the
/// active member, deterministic from `--seed`, with the invariants checked at the end.
struct SimulateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Run a deterministic cluster through a crash of its active member (the default demo)."
    )

    @Option(help: "The seed: the same seed gives the same run.") var seed: UInt64 = 1
    @Option(help: "Members: one active, the others standbys (2 to 8).") var members = 2
    @Option(name: .customLong("ike-sas"), help: "IKE SAs.") var ikeSAs = 1_000
    @Option(name: .customLong("child-sas-per-ike"), help: "Child SAs per IKE SA.") var childSAsPerIKE = 2
    @Option(name: .customLong("packets-per-second"), help: "ESP packets a second per Child SA, each way (1 to 1,000).") var packetsPerSecond = 50
    @Option(name: .customLong("duration-ms"), help: "Simulated milliseconds.") var durationMs: UInt64 = 2_000
    @Option(name: .customLong("crash-at-ms"), help: "When the active member crashes (default: half-way; negative: never).") var crashAtMs: Int64?
    @Flag(name: .customLong("random-crash"), help: "Crash at a time drawn from the seed, between 20% and 80% of the run.") var randomCrash = false
    @Option(name: .customLong("restart-after-ms"), help: "The crashed member restarts this long after the crash and rejoins as a standby (negative: never).") var restartAfterMs: Int64 = 400
    @Option(name: .customLong("new-ike-sas-per-second"), help: "New IKE SAs the peer establishes a second.") var newIKESAsPerSecond = 20
    @Option(name: .customLong("ike-sa-rekey-every"), help: "Every this many exchanges on an IKE SA, the peer rekeys the IKE SA (0: never).") var ikeSARekeyEvery = 0
    @Option(name: .customLong("sync-loss"), help: "Loss on the synch link, 0 to 0.9.") var syncLoss = 0.1
    @Option(name: .customLong("outside-loss"), help: "Loss between the cluster and the peer, 0 to 0.9.") var outsideLoss = 0.0
    @Option(name: .customLong("outside-delay-ms"), help: "Delay between the cluster and the peer.") var outsideDelayMs: UInt64 = 1
    @Option(name: .customLong("outside-jitter-ms"), help: "Extra random delay between the cluster and the peer (reorders).") var outsideJitterMs: UInt64 = 0
    @Option(name: .customLong("checkpoint-packets"), help: "Counter checkpoint every this many packets...") var checkpointPackets: UInt64 = 4_096
    @Option(name: .customLong("checkpoint-ms"), help: "...or this many milliseconds.") var checkpointMs: UInt64 = 50
    @Option(name: .customLong("inbound-policy"), help: "Inbound windows after the takeover: rfc6311 (the peer jumps its counters), conservative or permissive.") var inboundPolicy = "rfc6311"
    @Option(help: "IKE replication: sync (responses wait for the standbys) or async.") var replication = "sync"
    @Option(name: .customLong("outage-before-crash-ms"), help: "The synch link loses everything this long before the crash...") var outageBeforeCrashMs: UInt64 = 0
    @Option(name: .customLong("burst-packets-per-ms"), help: "...while one Child SA sends this many more packets a millisecond.") var burstPacketsPerMs = 0
    @Option(help: "A fault schedule instead of the one crash: TIME:FAULT items separated by commas, e.g. 300:crash=active,500:restart=last,900:partition=1/2,1300:heal (Docs/Reliability.md).") var faults: String?
    @Option(name: .customLong("random-faults"), help: "A fault schedule of about this many faults drawn from the seed.") var randomFaults: Int?
    @Flag(help: "An external arbiter (keepalived-like VRRP) decides who is active; the members follow it.") var arbiter = false
    @Flag(help: "Print one JSON object instead of the table.") var json = false
    @Option(help: "Write every event on the outside link to this file as JSON Lines.") var trace: String?
    @Option(help: "Write the outside link to this file as a pcap capture (IKE on UDP 500/4500, ESP in UDP 4500).") var pcap: String?
    @Option(help: "Draw the failover as an SVG picture in this file.") var plot: String?
    @Flag(help: "Print the resident memory on standard error at every tenth of the run (for make soak).") var soak = false

    func makeConfiguration() throws -> SimulationConfiguration {
        var configuration = SimulationConfiguration()
        configuration.seed = seed
        configuration.members = members
        configuration.ikeSAs = ikeSAs
        configuration.childSAsPerIKESA = childSAsPerIKE
        configuration.packetsPerSecond = packetsPerSecond
        configuration.durationMs = durationMs
        configuration.crashAtMs = crashAtMs.map { $0 < 0 ? nil : UInt64($0) } ?? durationMs / 2
        if randomCrash {
            var random = SplitMix64(seed: seed ^ 0xC7A5)
            configuration.crashAtMs = durationMs / 5 + random.next() % max(1, durationMs * 3 / 5)
        }
        configuration.restartAfterMs = restartAfterMs < 0 ? nil : UInt64(restartAfterMs)
        configuration.newIKESAsPerSecond = newIKESAsPerSecond
        configuration.ikeSARekeyEvery = ikeSARekeyEvery
        configuration.outsideDelayMs = outsideDelayMs
        configuration.outsideJitterMs = outsideJitterMs
        configuration.syncLoss = syncLoss
        configuration.outsideLoss = outsideLoss
        configuration.checkpointPackets = checkpointPackets
        configuration.checkpointMs = checkpointMs
        configuration.outageBeforeCrashMs = outageBeforeCrashMs
        configuration.burstPacketsPerMs = burstPacketsPerMs
        switch inboundPolicy {
        case "conservative": configuration.inboundPolicy = .conservative
        case "rfc6311": configuration.inboundPolicy = .replayCounterSyncWhereNegotiated
        case "permissive": configuration.inboundPolicy = .permissiveUnsafe
        default: throw ValidationError("--inbound-policy must be conservative, rfc6311 or permissive")
        }
        switch replication {
        case "sync": configuration.synchronousReplication = true
        case "async": configuration.synchronousReplication = false
        default: throw ValidationError("--replication must be sync or async")
        }
        if faults != nil, randomFaults != nil { throw ValidationError("--faults or --random-faults, not both") }
        do {
            if let faults { configuration.faults = try FaultSchedule(parsing: faults) }
            if let randomFaults {
                guard (1...100).contains(randomFaults) else { throw ValidationError("--random-faults must be 1 to 100") }
                configuration.faults = FaultSchedule.random(seed: seed, members: members, durationMs: durationMs, count: randomFaults, arbiter: arbiter)
            }
            configuration.arbiter = arbiter || configuration.faults?.hasArbiter == true
            if configuration.faults != nil { configuration.crashAtMs = nil }
            try configuration.validate()
        } catch let error as SimulationError { throw ValidationError("\(error)") }
        return configuration
    }

    func validate() throws { _ = try makeConfiguration() }

    func run() throws {
        let configuration = try makeConfiguration()
        let showProgress = !json && isatty(2) != 0
        if showProgress { StandardError.write("setting up \(configuration.ikeSAs) IKE SAs and the standbys...\r") }
        var simulation = try ClusterSimulation(configuration: configuration)
        var traceFile: UnsafeMutablePointer<FILE>?
        if let trace {
            guard let file = fopen(trace, "w") else { throw ValidationError("cannot write \(trace)") }
            traceFile = file
            simulation.trace = { line in
                fputs(line, file)
                fputs("\n", file)
            }
        }
        defer { if let traceFile { fclose(traceFile) } }
        var pcapFile: UnsafeMutablePointer<FILE>?
        if let pcap {
            guard let file = fopen(pcap, "w") else { throw ValidationError("cannot write \(pcap)") }
            pcapFile = file
            let header = OutsideLinkCapture.fileHeader()
            fwrite(header, 1, header.count, file)
            simulation.capture = { microseconds, packet in
                let record = OutsideLinkCapture.record(packet, atMicroseconds: microseconds)
                fwrite(record, 1, record.count, file)
            }
        }
        defer { if let pcapFile { fclose(pcapFile) } }
        simulation.recordsPlot = plot != nil
        var nextSample = 0.0
        let report = try simulation.run { fraction in
            if showProgress { StandardError.write("simulating: \(Int(fraction * 100))%   \r") }
            if soak, fraction >= nextSample {
                nextSample += 0.1
                StandardError.write("soak: \(Int(fraction * 100))% resident_bytes=\(residentMemoryBytes() ?? 0)\n")
            }
        }
        if showProgress { StandardError.write(String(repeating: " ", count: 60) + "\r") }
        if let plot {
            guard let file = fopen(plot, "w") else { throw ValidationError("cannot write \(plot)") }
            fputs(FailoverPlotSVG.render(simulation.plot, durationMs: Double(configuration.durationMs)), file)
            fclose(file)
        }
        if json {
            print(report.json)
        } else {
            print(Self.table(report, configuration))
        }
        if !report.invariantsHeld { throw ExitCode.failure }
    }

    static func table(_ r: SimulationReport, _ c: SimulationConfiguration) -> String {
        func row(_ name: String, _ value: String) -> String { name.padding(to: 46) + value }
        let policy: String =
            switch c.inboundPolicy {
            case .conservative: "conservative"
            case .replayCounterSyncWhereNegotiated: "RFC 6311 replay-counter sync"
            case .permissiveUnsafe: "permissive (unsafe)"
            }
        var lines = [
            "ikeha-demo simulate: seed \(r.seed), \(c.members) members, \(r.ikeSAs) IKE SAs, \(r.childSAs) Child SAs, "
                + "\(c.packetsPerSecond) packets/s each way per Child SA, \(c.durationMs) ms, \(Int(c.syncLoss * 100))% synch loss",
            "",
            "synchronised",
            row("  synch datagrams (lost)", "\(r.syncDatagrams) (\(r.syncDatagramsLost))"),
            row("  counter checkpoints", "\(r.checkpointsSent)"),
            row("  IKE exchanges completed", "\(r.ikeExchanges) (\(r.childSARekeys) Child SA rekeys, \(r.ikeSARekeys) IKE SA rekeys, \(r.ikeSAsEstablished) new IKE SAs)"),
            row("  records refused as older than held", "\(r.staleRecordsRefused)"),
            row("  missed synch messages detected", "\(r.missedSyncDetected) times, within \(r.missedSyncDetectionMsMax) ms at most"),
            "takeover",
        ]
        if let schedule = c.faults {
            lines += [
                row("  fault schedule", schedule.description),
                row("  faults carried out", r.faults.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")),
                row("  crashes of the active member / takeovers", "\(r.activeCrashes) / \(r.takeovers)"),
                row("  longest time without an active member", r.takeoverMs.map { "\($0) ms" } ?? "-"),
                row("  every member that took over was complete", r.standbyReadyAtTakeover.map { $0 ? "yes" : "no" } ?? "-"),
                row("  IKE SAs resynced by RFC 6311", "\(r.ikeSAsResyncedViaRFC6311)"),
                row("  split brain (two members active)", "\(r.splitBrainMs) ms, \(r.splitBrainConnectedMsMax) ms at most once they heard each other"),
                row("  split-brain packets the peer refused", "\(r.splitBrainPacketsRejectedByPeer)"),
                row("  restarted members", r.restartedMemberReady.map { $0 ? "all complete standbys again" : "not all resynced" } ?? "none"),
            ]
        } else if let takeover = r.takeoverMs {
            lines += [
                row("  active crashed at", "\(c.crashAtMs ?? 0) ms, \(r.ikeExchangesInFlightAtCrash) IKE exchanges in flight"),
                row("  first ESP packet from the new active", "\(takeover) ms after the crash"),
                row("  the standby was a complete copy", r.standbyReadyAtTakeover == true ? "yes" : "no: it was still resyncing"),
                row("  IKE SAs resynced by RFC 6311", "\(r.ikeSAsResyncedViaRFC6311)"),
                row("  inbound windows", policy),
                row("  Child SAs the plan rekeyed", "\(r.childSAsRekeyedByTakeover)"),
                row("  the crashed member", r.restartedMemberReady.map { $0 ? "restarted and resynced: a standby again" : "restarted, still resyncing" } ?? "did not restart"),
            ]
        } else {
            lines.append(row("  ", c.crashAtMs == nil ? "no crash in this run" : "the new active member never sent: FAILED"))
        }
        lines += [
            "lost",
            row("  IKE SAs survived / lost", "\(r.ikeSAsSurvived) / \(r.ikeSAsLost)"),
        ]
        lines += r.ikeSAsLostByReason.sorted { $0.key < $1.key }.map { row("    \($0.key)", "\($0.value)") }
        lines += [
            row("  peer packets dropped by the cluster", "\(r.legitPacketsRejectedByCluster) of \(r.espPacketsFromPeer) (inside the advance)"),
            "invariants",
            row("  sequence numbers reused", "\(r.sequenceNumbersReused)"),
            row("  replays accepted", "\(r.replaysAccepted) of \(r.replaysAttempted) attempted"),
            row("  cluster packets the peer rejected", "\(r.legitPacketsRejectedByPeer) of \(r.espPacketsSent)"),
            "peer's view",
            row("  cluster IKE requests the peer dropped", "\(r.ikeRequestsDroppedByPeer)"),
            "",
            r.invariantsHeld ? "every invariant held" : "INVARIANT VIOLATED",
        ]
        return lines.joined(separator: "\n")
    }
}

extension String {
    /// The string, padded with spaces to `width` characters.
    fileprivate func padding(to width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}
