import Benchmark
import IPsecHACore
import IPsecHATestKit
import IPsecHASync

/// Names without spaces: the threshold files are named after them, and this version of the
/// plugin writes them with underscores but reads them back as named.
///
/// The hot paths of DESIGN.md ("no allocation, no existentials, no locks"), with allocation
/// counts. `Thresholds/` holds the counts measured when they were right (0 for every path but
/// the checkpoint encoder's two); `make bench-allocations` fails when a run allocates more, or
/// fewer (then update the thresholds).
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .throughput],
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 1_000,
        thresholds: [.mallocCountTotal: .init(absolute: [.p90: 0])])

    Benchmark("ReplayWindow.checkAndCommit.inOrder.W1024.ESN") { benchmark in
        var window = try ReplayWindow(size: 1024, extendedSequenceNumbers: true)
        var next: UInt64 = 1
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            if case .fresh(let full) = window.check(wire: UInt32(truncatingIfNeeded: next)) { try window.commit(full) }
            next += 1
        }
        blackHole(window.top)
    }

    Benchmark("GatewayState.nextOutboundSequenceNumber.bySlot") { benchmark in
        var (state, slots) = (thousandChildSAs.state, thousandChildSAs.slots)
        // The first change copies the shared state (copy on write): before the measurement.
        _ = try state.nextOutboundSequenceNumber(at: slots[0], bytes: 1_400)
        benchmark.startMeasurement()
        for index in benchmark.scaledIterations {
            blackHole(try state.nextOutboundSequenceNumber(at: slots[index % slots.count], bytes: 1_400))
        }
    }

    Benchmark("SAD.slotByInboundSPI.100kChildSAs") { benchmark in
        let state = hundredThousandChildSAs.state
        benchmark.startMeasurement()
        for index in benchmark.scaledIterations {
            blackHole(state.slot(forInboundSPI: UInt32(0x1000 + (index &* 7_919) % 100_000)))
        }
    }

    Benchmark("SPDCache.outboundDecision.cachedFlow") { benchmark in
        var random = SplitMix64(seed: 4)
        var gateway = try SAFixtures.protectingEverything(spdCacheCapacity: 4_096, window: 1024, &random)
        let flows = (0..<1_024).map { index in
            FiveTuple(
                localAddress: IPAddress(ipv4: 0x0A00_0000 | UInt32(index)), remoteAddress: IPAddress(ipv4: 0xC633_6401),
                ipProtocol: 17, localPort: 4500, remotePort: 4500)
        }
        for flow in flows { _ = gateway.outboundDecision(for: flow) }
        benchmark.startMeasurement()
        for index in benchmark.scaledIterations {
            blackHole(gateway.outboundDecision(for: flows[index % flows.count]))
        }
    }

    Benchmark(
        "CounterCheckpoints.encode.50entries",
        configuration: .init(thresholds: [.mallocCountTotal: .init(absolute: [.p90: 0])])
    ) { benchmark in
        let (state, _) = try sampleState(childSAs: 50)
        var entries: [CounterCheckpointEntry] = []
        state.forEachChildSACounters { counters in
            entries.append(
                CounterCheckpointEntry(
                    checkpoint: ChildSACounterCheckpoint(
                        inboundSPI: counters.inboundSPI, outbound: OutboundCounterCheckpoint(lastSent: 1_000_000 + UInt64(counters.inboundSPI)),
                        inbound: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: 900_000), usage: ChildSAUsage()),
                    generation: 2, packetsPerSecond: 10_000))
        }
        let record = SyncRecord.counterCheckpoints(entries)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            // Two allocations per batch, the writer's buffer and the array returned (the
            // channel itself encodes into the datagram's buffer).
            blackHole(try record.encoded())
        }
    }
}

/// States built once, outside the measurements.
let thousandChildSAs = try! sampleState(childSAs: 1_000)
let hundredThousandChildSAs = try! sampleState(childSAs: 100_000)

/// A state with one IKE SA and `childSAs` Child SAs (inbound SPIs from 0x1000 up), and their slots.
func sampleState(childSAs: Int) throws -> (state: GatewayState, slots: [ChildSASlot]) {
    var random = SplitMix64(seed: 3)
    var state = GatewayState()
    let ike = try SAFixtures.ikeSA(1, &random)
    _ = try state.createIKESA(ike)
    var slots: [ChildSASlot] = []
    for index in 0..<childSAs {
        let spi = UInt32(0x1000 + index)
        _ = try state.createChildSA(SAFixtures.childSA(spi, parent: ike.identifier, window: 1024, &random))
        if let slot = state.slot(forInboundSPI: spi) { slots.append(slot) }
    }
    return (state, slots)
}
