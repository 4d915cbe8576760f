import ArgumentParser
import IPsecHACore
import IPsecHASync
import IPsecHATestKit

/// `ikeha-demo bench scale`: how the standby's work grows with the state, from 10,000 to a
/// million IKE SAs (two Child SAs each): the bulk resync, the takeover plan, the standby's
/// memory and the apply of counter checkpoints, each per SA at each size; the takeover
/// itself (the plan applied to the state: every Child SA's counters and a replay window of
/// its own); the active member's scan for due checkpoints, which it runs five times per
/// checkpoint interval over every Child SA with traffic (here all of them); and the active
/// member's first change to its state while a resync's copy-on-write snapshot shares it.
struct ScaleBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scale",
        abstract: "Time the resync, the takeover plan, checkpoint apply and standby memory at growing sizes; the last line is name=value pairs."
    )

    @Option(parsing: .upToNextOption, help: "IKE SAs at each size (two Child SAs each).")
    var sizes = [10_000, 100_000, 1_000_000]

    @Option(help: "Counter checkpoints applied at each size.")
    var checkpoints = 1_000_000

    @Option(help: "The synch channel's AEAD: chacha20-poly1305 or aes-256-gcm (default: AES-256-GCM where the CPU has it).", transform: parseCipher)
    var cipher = SyncChannelCipher.fastestAvailable

    func validate() throws {
        guard cipher.isAvailable else { throw ValidationError("\(cipher) does not run on this CPU") }
        guard !sizes.isEmpty, sizes.allSatisfy({ $0 > 0 && $0 < 0x3000_0000 }), checkpoints > 0 else {
            throw ValidationError("sizes and checkpoints must be positive (and sizes below 805,306,368)")
        }
    }

    /// One size's figures.
    struct Row {
        var ikeSAs: Int
        var resyncSeconds: Double
        /// Of the resync, the seconds the kernel spent for the process (mostly giving it fresh,
        /// zeroed pages).
        var resyncKernelSeconds: Double
        var planSeconds: Double
        var standbyBytes: Int
        var applySeconds: Double
        var checkpoints: Int
        /// One scan for due checkpoints with every Child SA carrying traffic, none due.
        var scanSeconds: Double
        /// The plan applied to the state (``GatewayState/applyTakeover(_:)``), after the scan.
        var takeoverSeconds: Double
        /// The first change to a Child SA's counters while a copy of the state (a resync's
        /// snapshot) shares its storage: the change copies the Child SA table.
        var firstChangeSeconds: Double
        var sas: Int { ikeSAs * 3 }
        var resyncNanosecondsPerSA: Double { resyncSeconds * 1e9 / Double(sas) }
        var planNanosecondsPerSA: Double { planSeconds * 1e9 / Double(sas) }
        var bytesPerSA: Double { Double(standbyBytes) / Double(sas) }
        var applyNanoseconds: Double { applySeconds * 1e9 / Double(checkpoints) }
        var scanNanosecondsPerChildSA: Double { scanSeconds * 1e9 / Double(ikeSAs * 2) }
    }

    func run() throws {
        print("synch channel cipher: \(cipher); each size: IKE SAs and twice as many Child SAs")
        print("IKE SAs     resync s (kernel)   ns/SA   plan ms   ns/SA   standby B/SA   checkpoint apply ns   scan ms   ns/Child SA   takeover ms   first change ms")
        var rows: [Row] = []
        for size in sizes {
            let row = try measure(ikeSAs: size)
            rows.append(row)
            print(
                "\(String(size).padded(9)) \(row.resyncSeconds.formatted(decimals: 3).padded(10)) \(("(" + row.resyncKernelSeconds.formatted(decimals: 2) + ")").padded(8)) \(row.resyncNanosecondsPerSA.formatted(decimals: 0).padded(7)) "
                    + "\((row.planSeconds * 1e3).formatted(decimals: 1).padded(9)) \(row.planNanosecondsPerSA.formatted(decimals: 0).padded(7)) "
                    + "\(row.bytesPerSA.formatted(decimals: 0).padded(14)) \(row.applyNanoseconds.formatted(decimals: 0).padded(21)) "
                    + "\((row.scanSeconds * 1e3).formatted(decimals: 1).padded(9)) \(row.scanNanosecondsPerChildSA.formatted(decimals: 0).padded(13)) "
                    + "\((row.takeoverSeconds * 1e3).formatted(decimals: 1).padded(13)) \((row.firstChangeSeconds * 1e3).formatted(decimals: 1).padded(17))")
        }
        guard let first = rows.first, let last = rows.last else { return }
        let resyncGrowth = last.resyncNanosecondsPerSA / first.resyncNanosecondsPerSA
        let planGrowth = last.planNanosecondsPerSA / first.planNanosecondsPerSA
        let applyGrowth = last.applyNanoseconds / first.applyNanoseconds
        func verdict(_ met: Bool) -> String { met ? "met" : "MISSED" }
        func growth(_ ratio: Double) -> String { "\(ratio.formatted(decimals: 2)) (\(verdict(ratio <= 1.5)))" }
        print(
            "time per SA at \(last.ikeSAs) IKE SAs against \(first.ikeSAs) (goal: at most 1.5): resync \(growth(resyncGrowth)), "
                + "plan \(growth(planGrowth)), checkpoint apply \(growth(applyGrowth))")
        print(
            "at \(last.ikeSAs) IKE SAs: resync \(last.resyncSeconds.formatted(decimals: 2)) s (goal at a million: under 3 s, \(verdict(last.resyncSeconds < 3))), "
                + "plan \((last.planSeconds * 1e3).formatted(decimals: 1)) ms (under 100 ms, \(verdict(last.planSeconds < 0.1))), "
                + "standby \(last.bytesPerSA.formatted(decimals: 0)) bytes per SA (at most 1,024, \(verdict(last.bytesPerSA <= 1_024))); "
                + "the active member's checkpoint scan \((last.scanSeconds * 1e3).formatted(decimals: 1)) ms with every Child SA carrying traffic "
                + "(idle ones cost nothing), run every \(scanPeriodMilliseconds) ms (a fifth of the default checkpoint interval); "
                + "the takeover (its plan applied to the state) \((last.takeoverSeconds * 1e3).formatted(decimals: 1)) ms; "
                + "the active member's first change while a resync's snapshot shares its state \((last.firstChangeSeconds * 1e3).formatted(decimals: 1)) ms")
        print(
            "scale_sizes=\(sizes.map(String.init).joined(separator: ",")) "
                + rows.map { row in
                    "resync_seconds_\(row.ikeSAs)=\(row.resyncSeconds.formatted(decimals: 3)) resync_kernel_seconds_\(row.ikeSAs)=\(row.resyncKernelSeconds.formatted(decimals: 2)) plan_milliseconds_\(row.ikeSAs)=\((row.planSeconds * 1e3).formatted(decimals: 1)) "
                        + "standby_bytes_per_sa_\(row.ikeSAs)=\(row.bytesPerSA.formatted(decimals: 0)) checkpoint_apply_ns_\(row.ikeSAs)=\(row.applyNanoseconds.formatted(decimals: 0)) "
                        + "checkpoint_scan_milliseconds_\(row.ikeSAs)=\((row.scanSeconds * 1e3).formatted(decimals: 1)) "
                        + "takeover_milliseconds_\(row.ikeSAs)=\((row.takeoverSeconds * 1e3).formatted(decimals: 1)) "
                        + "first_change_milliseconds_\(row.ikeSAs)=\((row.firstChangeSeconds * 1e3).formatted(decimals: 1))"
                }.joined(separator: " ")
                + " resync_per_sa_growth=\(resyncGrowth.formatted(decimals: 2)) plan_per_sa_growth=\(planGrowth.formatted(decimals: 2)) "
                + "checkpoint_apply_growth=\(applyGrowth.formatted(decimals: 2)) largest_resync_seconds=\(last.resyncSeconds.formatted(decimals: 3)) "
                + "largest_plan_milliseconds=\((last.planSeconds * 1e3).formatted(decimals: 1)) largest_standby_bytes_per_sa=\(last.bytesPerSA.formatted(decimals: 0))")
    }

    /// How often an active member scans for due checkpoints by default.
    var scanPeriodMilliseconds: Int { Int(CounterCheckpointPolicy().interval / .milliseconds(1)) / 5 }

    func measure(ikeSAs: Int) throws -> Row {
        var (replica, resyncSeconds, resyncKernelSeconds, standbyBytes) = try resync(ikeSAs: ikeSAs)
        let clock = ContinuousClock()
        let now = Timestamp.seconds(1_000)
        var planSeconds = Double.infinity
        for _ in 0..<3 {
            let started = clock.now
            let plan = replica.takeoverPlan(now: now)
            planSeconds = min(planSeconds, started.duration(to: clock.now).inSeconds)
            guard plan.childSAs.count == 2 * ikeSAs else { throw ValidationError("the plan has \(plan.childSAs.count) Child SAs") }
        }
        // Checkpoints in the order the active member's scan makes them (Child SA after Child SA
        // in slot order, from anywhere), 50 to a record, about what fills a datagram.
        var random = SplitMix64(seed: 13)
        let childSAs = 2 * ikeSAs
        var next = Int(random.next() % UInt64(childSAs))
        var records: [SyncRecord] = []
        // Each pass over the Child SAs is a newer generation.
        var generation: UInt64 = 1_001
        var made = 0
        while made < checkpoints {
            let count = min(50, checkpoints - made)
            records.append(
                .counterCheckpoints(
                    (0..<count).map { _ in
                        next = (next + 1) % childSAs
                        if next == 0 { generation += 1 }
                        let spi = UInt32(0x1000 + next)
                        return CounterCheckpointEntry(
                            checkpoint: ChildSACounterCheckpoint(
                                inboundSPI: spi, outbound: OutboundCounterCheckpoint(lastSent: generation * 1_000),
                                inbound: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: generation * 900),
                                usage: ChildSAUsage(inboundPackets: generation, outboundPackets: generation)),
                            generation: generation, packetsPerSecond: 1_000)
                    }))
            made += count
        }
        let started = clock.now
        for record in records { replica.apply([record], now: now) }
        let applySeconds = started.duration(to: clock.now).inSeconds
        guard replica.statistics.rejected == 0, replica.statistics.stale == 0 else { throw ValidationError("checkpoints were refused: \(replica.statistics)") }
        // The active member's scan for due checkpoints, on the same Child SAs, taken over
        // (not copied: a million IKE SAs' state twice would not fit some machines). The first
        // pass starts tracking them; then every Child SA carries a packet, and the timed
        // passes visit each (an idle one costs nothing) and find none due yet.
        var scanned = replica.state
        replica = Replica()
        var scheduler = CounterCheckpointScheduler()
        _ = scheduler.takeDueCheckpoints(from: &scanned, now: now)
        for slot in scanned.occupiedChildSASlots { _ = try scanned.nextOutboundSequenceNumber(at: slot, bytes: 100) }
        var scanSeconds = Double.infinity
        for pass in 1...3 {
            let started = clock.now
            let due = scheduler.takeDueCheckpoints(from: &scanned, now: Timestamp(nanoseconds: now.nanoseconds + UInt64(pass) * 1_000_000))
            scanSeconds = min(scanSeconds, started.duration(to: clock.now).inSeconds)
            guard due.isEmpty else { throw ValidationError("\(due.count) checkpoints due after one packet") }
        }
        // Then the same state taken over: the plan (timed above) applied, as a standby does
        // when it becomes the active member. Once: it changes the state.
        let plan = TakeoverPlanner.plan(state: scanned, inFlight: [:], suspect: .none, now: now)
        let takeoverStarted = clock.now
        let outcome = scanned.applyTakeover(plan)
        let takeoverSeconds = takeoverStarted.duration(to: clock.now).inSeconds
        guard outcome.resumed == 2 * ikeSAs else { throw ValidationError("\(outcome.resumed) Child SAs resumed, \(outcome.rekey.count) to rekey") }
        // The state now serves as an active member's: a resync begins (its snapshot shares the
        // storage, copy-on-write), and the next packet sent changes a Child SA's counter.
        let slot = scanned.occupiedChildSASlots[0]
        let snapshot = scanned
        let changeStarted = clock.now
        _ = try scanned.nextOutboundSequenceNumber(at: slot, bytes: 100)
        let firstChangeSeconds = changeStarted.duration(to: clock.now).inSeconds
        withExtendedLifetime(snapshot) {}
        return Row(
            ikeSAs: ikeSAs, resyncSeconds: resyncSeconds, resyncKernelSeconds: resyncKernelSeconds, planSeconds: planSeconds, standbyBytes: standbyBytes, applySeconds: applySeconds,
            checkpoints: made, scanSeconds: scanSeconds, takeoverSeconds: takeoverSeconds, firstChangeSeconds: firstChangeSeconds)
    }

    /// A bulk resync of `ikeSAs` IKE SAs and twice as many Child SAs to a fresh standby: the
    /// standby's replica (alone, so that changing it copies nothing), the seconds on one core
    /// and the kernel's share of them, and the resident memory the process gained meanwhile
    /// (the standby's state, with what the allocator keeps of the resync's buffers).
    func resync(ikeSAs: Int) throws -> (Replica, Double, Double, Int) {
        let cipher = self.cipher
        var pair = try ReplicationPair(seed: 5) { $0.cipher = cipher }
        pair.network.faults.partitions = [[1, 2]]
        var random = SplitMix64(seed: 6)
        pair.state.reserveCapacity(ikeSAs: ikeSAs, childSAs: 2 * ikeSAs)
        var identifiers: [IKESAIdentifier] = []
        identifiers.reserveCapacity(ikeSAs)
        for index in 0..<ikeSAs {
            let sa = try SAFixtures.ikeSA(UInt64(index + 1), &random)
            _ = try pair.state.createIKESA(sa)
            identifiers.append(sa.identifier)
        }
        for index in 0..<2 * ikeSAs {
            _ = try pair.state.createChildSA(SAFixtures.childSA(UInt32(0x1000 + index), parent: identifiers[index % ikeSAs], window: 1024, &random))
        }
        identifiers = []
        let residentBefore = residentMemoryBytes() ?? 0
        pair.network.faults.partitions = []
        let clock = ContinuousClock()
        let kernelBefore = processorTimes()?.system ?? 0
        let started = clock.now
        guard try pair.settle(limit: 600_000_000_000, step: 500_000) else { throw ValidationError("resync did not complete") }
        let seconds = started.duration(to: clock.now).inSeconds
        let kernelSeconds = (processorTimes()?.system ?? 0) - kernelBefore
        let standbyBytes = (residentMemoryBytes() ?? 0) - residentBefore
        guard pair.replica.state.ikeSAs.count == ikeSAs, pair.replica.isReady else { throw ValidationError("resync gave a different state") }
        guard pair.replicator.resyncsStarted == 1 else { throw ValidationError("\(pair.replicator.resyncsStarted) resyncs instead of one") }
        return (pair.replica, seconds, kernelSeconds, standbyBytes)
    }
}

extension String {
    /// Right-aligned in `width` columns.
    func padded(_ width: Int) -> String { count >= width ? self : String(repeating: " ", count: width - count) + self }
}
