import IPsecHACore
import Testing

@Suite("Counter checkpoints on a standby: batches and freshness")
struct CounterCheckpointTests {
    struct Standby {
        var state = GatewayState()
        var parent: IKESAIdentifier
        var spis: [UInt32]
    }

    func standby(childSAs: Int, seed: UInt64 = 1) throws -> Standby {
        var random = SplitMix64(seed: seed)
        var state = GatewayState()
        let ike = Fixtures.ikeSA(1, &random)
        _ = try state.createIKESA(ike)
        var spis: [UInt32] = []
        for index in 0..<childSAs {
            let spi = UInt32(0x4000 + index)
            _ = try state.createChildSA(Fixtures.childSA(inboundSPI: spi, parent: ike.identifier, window: 128, esn: false, &random))
            spis.append(spi)
        }
        return Standby(state: state, parent: ike.identifier, spis: spis)
    }

    func entry(_ spi: UInt32, generation: UInt64, lastSent: UInt64, top: UInt64, rate: UInt32) -> CounterCheckpointEntry {
        CounterCheckpointEntry(
            checkpoint: ChildSACounterCheckpoint(
                inboundSPI: spi, outbound: OutboundCounterCheckpoint(lastSent: lastSent),
                inbound: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: top),
                usage: ChildSAUsage(inboundPackets: top, outboundPackets: lastSent)),
            generation: generation, packetsPerSecond: rate)
    }

    @Test(arguments: [1, 2, 3] as [UInt64])
    func aBatchAppliesExactlyWhatOneByOneApplies(seed: UInt64) throws {
        var batched = try standby(childSAs: 40, seed: seed)
        var single = batched
        var random = SplitMix64(seed: seed)
        let arrival = Timestamp.seconds(7)
        var entries: [CounterCheckpointEntry] = []
        for _ in 0..<200 {
            // Known and unknown SPIs, fresh and stale generations, one top beyond 32 bits.
            let spi = random.next() % 8 == 0 ? UInt32(0x9000) : batched.spis[Int(random.next() % 40)]
            let top = random.next() % 50 == 0 ? UInt64(1) << 33 : random.next() % 100_000
            entries.append(entry(spi, generation: 1 + random.next() % 20, lastSent: random.next() % 100_000, top: top, rate: UInt32(random.next() % 3)))
        }
        let outcome = batched.state.applyCounterCheckpoints(entries, arrivedAt: arrival)
        var expected = CounterCheckpointOutcome()
        for entry in entries {
            let freshness = ChildSAFreshness(
                lastCheckpoint: arrival, packetsPerSecond: entry.packetsPerSecond == 0 ? nil : UInt64(entry.packetsPerSecond))
            do {
                try single.state.applyCounterCheckpoint(entry.checkpoint, generation: entry.generation, freshness: freshness)
                expected.applied += 1
            } catch .staleChange {
                expected.stale += 1
            } catch {
                expected.rejected += 1
            }
        }
        #expect(outcome == expected)
        #expect(outcome.applied > 0 && outcome.stale > 0 && outcome.rejected > 0)
        #expect(batched.state == single.state)
        for spi in batched.spis {
            #expect(batched.state.counterFreshness(inboundSPI: spi) == single.state.counterFreshness(inboundSPI: spi))
            #expect(batched.state.childSA(inboundSPI: spi)?.generation == single.state.childSA(inboundSPI: spi)?.generation)
        }
    }

    /// Entries in slot order, as the active member's scan sends them, are found by the slot
    /// after the previous entry's; where that slot is empty, holds another SA, or lies past
    /// the table, the SPI index still finds the right one, and an unknown SPI is refused.
    @Test func entriesInSlotOrderApplyAsOneByOne() throws {
        var batched = try standby(childSAs: 12)
        // Slots 3 and 7 emptied, slot 3 refilled by a new SPI: slot order is no longer SPI order.
        var random = SplitMix64(seed: 9)
        _ = try batched.state.deleteChildSA(inboundSPI: batched.spis[3])
        _ = try batched.state.deleteChildSA(inboundSPI: batched.spis[7])
        _ = try batched.state.createChildSA(Fixtures.childSA(inboundSPI: 0x5000, parent: batched.parent, window: 128, esn: false, &random))
        var single = batched
        var order: [UInt32] = []
        batched.state.forEachChildSACounters { order.append($0.inboundSPI) }
        #expect(order.count == 11 && order.contains(0x5000))
        // Two passes in slot order (the second from the middle, wrapping), an unknown SPI and a
        // deleted one among them.
        let spis = order + [0x9000] + order[5...] + [batched.spis[7]] + order[..<5]
        let entries = spis.enumerated().map { entry($1, generation: UInt64(2 + $0 / 12), lastSent: UInt64($0), top: UInt64($0), rate: 10) }
        let outcome = batched.state.applyCounterCheckpoints(entries, arrivedAt: .seconds(4))
        for entry in entries {
            _ = try? single.state.applyCounterCheckpoint(
                entry.checkpoint, generation: entry.generation, freshness: ChildSAFreshness(lastCheckpoint: .seconds(4), packetsPerSecond: 10))
        }
        #expect(outcome.applied == 22 && outcome.rejected == 2)
        #expect(batched.state == single.state)
        for spi in order { #expect(batched.state.childSA(inboundSPI: spi)?.outboundCounter.lastSent == single.state.childSA(inboundSPI: spi)?.outboundCounter.lastSent) }
    }

    @Test func freshnessFollowsTheSlotAndIsNotReplicatedState() throws {
        var s = try standby(childSAs: 2)
        let copy = s.state
        let outcome = s.state.applyCounterCheckpoints(
            [entry(s.spis[0], generation: 2, lastSent: 10, top: 9, rate: 500)], arrivedAt: .seconds(3))
        #expect(outcome.applied == 1)
        #expect(s.state.counterFreshness(inboundSPI: s.spis[0]) == ChildSAFreshness(lastCheckpoint: .seconds(3), packetsPerSecond: 500))
        #expect(s.state.counterFreshness(inboundSPI: s.spis[1]) == nil)
        #expect(copy.counterFreshness(inboundSPI: s.spis[0]) == nil, "a copy made before is not written through")

        // A deleted Child SA's slot is reused without its freshness.
        _ = try s.state.deleteChildSA(inboundSPI: s.spis[0])
        #expect(s.state.counterFreshness(inboundSPI: s.spis[0]) == nil)
        var random = SplitMix64(seed: 9)
        _ = try s.state.createChildSA(Fixtures.childSA(inboundSPI: 0x7777, parent: s.parent, &random))
        #expect(s.state.counterFreshness(inboundSPI: 0x7777) == nil)
        #expect(throws: GatewayStateError.unknownChildSA(0x8888)) {
            try s.state.recordCounterFreshness(ChildSAFreshness(lastCheckpoint: .seconds(1), packetsPerSecond: nil), inboundSPI: 0x8888)
        }

        // Equality compares the replicated state only.
        var other = try standby(childSAs: 2)
        try other.state.recordCounterFreshness(ChildSAFreshness(lastCheckpoint: .seconds(5), packetsPerSecond: 1), inboundSPI: other.spis[1])
        #expect(other.state == (try standby(childSAs: 2)).state)
    }

    /// A checkpoint a state change made (through `update`, or a reassertion) carries no rate:
    /// the standby forgot the rate it had measured, and a takeover then moved that busy SA's
    /// counter by the unknown advance (2^30) instead of by what its rate says.
    @Test func aCheckpointWithoutARateKeepsTheRateMeasuredBefore() throws {
        var s = try standby(childSAs: 1)
        let spi = s.spis[0]
        _ = s.state.applyCounterCheckpoints([entry(spi, generation: 2, lastSent: 1_000, top: 9, rate: 1_000)], arrivedAt: .seconds(3))
        _ = s.state.applyCounterCheckpoints([entry(spi, generation: 3, lastSent: 1_500, top: 9, rate: 0)], arrivedAt: .seconds(4))
        #expect(s.state.counterFreshness(inboundSPI: spi) == ChildSAFreshness(lastCheckpoint: .seconds(4), packetsPerSecond: 1_000))
        let plan = TakeoverPlanner.plan(state: s.state, inFlight: [:], suspect: .none, policy: TakeoverPolicy(), now: .seconds(4))
        let advance = try #require(plan.childSAs.first?.advance)
        #expect(advance < TakeoverPolicy().unknownAdvance, "advance \(advance)")
    }

    @Test func capacityReservationIsBoundedAndChangesNothing() throws {
        var s = try standby(childSAs: 3)
        let before = s.state
        s.state.reserveCapacity(ikeSAs: Int.max, childSAs: 10_000)
        s.state.reserveCapacity(ikeSAs: -1, childSAs: -5)
        #expect(s.state == before)
        for spi in s.spis { #expect(s.state.slot(forInboundSPI: spi) != nil) }
        var random = SplitMix64(seed: 4)
        for index in 0..<2_000 {
            _ = try s.state.createChildSA(Fixtures.childSA(inboundSPI: UInt32(0x10_0000 + index), parent: s.parent, &random))
        }
        #expect(s.state.childSACount == 2_003)
        #expect(s.state.childSA(inboundSPI: 0x10_0000 + 1_999) != nil)
    }
}

@Suite("Counters moved since the last checkpoint: what the active member's scan visits")
struct CountersMovedTests {
    func visited(_ state: inout GatewayState, keeping: Set<UInt32> = []) -> [UInt32] {
        var spis: [UInt32] = []
        state.visitChildSACountersMoved { counters in
            spis.append(counters.inboundSPI)
            return keeping.contains(counters.inboundSPI)
        }
        return spis
    }

    /// Installed Child SAs are visited once; then only those that sent, received, were
    /// observed or changed; a checkpoint or a visit that says "nothing new" ends the visits;
    /// a deleted Child SA is never visited, and its slot's next one is.
    @Test func packetsObservationsAndChangesMarkCheckpointsAndVisitsClear() throws {
        var random = SplitMix64(seed: 9)
        var state = GatewayState()
        let ike = Fixtures.ikeSA(1, &random)
        _ = try state.createIKESA(ike)
        let spis: [UInt32] = (0..<130).map { UInt32(0x4000 + $0) }
        for spi in spis { _ = try state.createChildSA(Fixtures.childSA(inboundSPI: spi, parent: ike.identifier, window: 128, esn: true, &random)) }
        #expect(visited(&state, keeping: [0x4001]) == spis, "every new Child SA, in slot order, across words")
        #expect(visited(&state) == [0x4001], "only the one kept")
        #expect(visited(&state).isEmpty)
        let slot = { (spi: UInt32) in state.slot(forInboundSPI: spi)! }
        _ = try state.nextOutboundSequenceNumber(at: slot(0x4002), bytes: 10)
        try state.commitInbound(1, bytes: 10, at: slot(0x4070))
        var observed = state.childSA(inboundSPI: 0x4081)!.counterCheckpoint
        observed.outbound.lastSent += 5
        try state.observeCounters(observed)
        _ = try state.updateChildSA(inboundSPI: 0x4003) { $0.requestID = 77 }
        _ = try state.nextOutboundSequenceNumber(at: slot(0x4004), bytes: 10)
        _ = state.checkpointCounters(at: slot(0x4004))
        _ = try state.nextOutboundSequenceNumber(at: slot(0x4005), bytes: 10)
        let freed = slot(0x4005)
        _ = try state.deleteChildSA(inboundSPI: 0x4005)
        #expect(visited(&state) == [0x4002, 0x4003, 0x4070, 0x4081], "0x4004 was checkpointed, 0x4005 deleted")
        let reused = Fixtures.childSA(inboundSPI: 0x5000, parent: ike.identifier, window: 128, esn: true, &random)
        _ = try state.createChildSA(reused)
        #expect(state.slot(forInboundSPI: 0x5000) == freed, "the freed slot is reused")
        var copy = state
        #expect(visited(&state) == [0x5000])
        #expect(copy == state, "marks are no part of equality")
        #expect(visited(&copy) == [0x5000] && visited(&state).isEmpty, "a copy keeps its own marks")
    }
}
