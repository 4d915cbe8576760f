// A standby's side: replicated changes and records applied, with the stale ones refused.
extension GatewayState {
    // MARK: Replication

    /// Applies a change made by another member's state. Throws, changing nothing, when the
    /// change does not fit (an SA that exists or does not, a record not newer than the one held).
    public mutating func apply(_ change: StateChange) throws(GatewayStateError) {
        switch change {
        case .policyInstalled(let policy, let position):
            _ = try installPolicy(policy, at: position)
        case .policyRemoved(let id):
            _ = try removePolicy(id)
        case .ikeSACreated(let sa):
            guard !ikeSAs.contains(sa.identifier) else { throw .ikeSAExists(sa.identifier) }
            try upsertReplicated(sa)
        case .ikeSAUpdated(let sa):
            guard ikeSAs.contains(sa.identifier) else { throw .unknownIKESA(sa.identifier) }
            try upsertReplicated(sa)
        case .messageIDsUpdated(let identifier, let generation, let snapshot):
            guard let held = ikeSAs[identifier] else { throw .unknownIKESA(identifier) }
            guard generation > held.generation else { throw .staleChange(held: held.generation, received: generation) }
            let windows: IKEMessageIDWindows
            do { windows = try IKEMessageIDWindows(restoringFrom: snapshot) } catch { throw .messageIDs(error) }
            withIKESA(identifier) { sa in
                sa.messageIDs = windows
                sa.generation = generation
            }
        case .ikeSADeleted(let identifier):
            _ = try deleteIKESA(identifier)
        case .childSACreated(let sa):
            guard spiIndex.slot(of: sa.inboundSPI) == nil else { throw .spiInUse(sa.inboundSPI) }
            guard ikeSAs.contains(sa.parent) else { throw .unknownParent(sa.parent) }
            if let policy = sa.policy, spd.policy(policy) == nil { throw .unknownPolicy(policy) }
            install(sa)
        case .childSAUpdated(let sa):
            guard let slot = spiIndex.slot(of: sa.inboundSPI), let held = childSlots[Int(slot)] else {
                throw .unknownChildSA(sa.inboundSPI)
            }
            guard sa.generation > held.generation else { throw .staleChange(held: held.generation, received: sa.generation) }
            guard ikeSAs.contains(sa.parent) else { throw .unknownParent(sa.parent) }
            replace(slot: slot, with: sa)
        case .childSADeleted(let spi):
            _ = try deleteChildSA(inboundSPI: spi)
        case .countersAdvanced(let checkpoint, let generation):
            try applyCounterCheckpoint(checkpoint, generation: generation)
        }
    }

    /// Applies a replicated IKE SA record (a standby's path for an upsert): installs the IKE SA
    /// when it is absent, replaces the one held when the record's generation is newer, keeping
    /// the list of Child SAs the state maintains. Throws ``GatewayStateError/staleChange(held:received:)``,
    /// changing nothing, for a record not newer than the IKE SA held.
    /// Consuming, so that a standby's resync moves each IKE SA into its table rather than copy it.
    public mutating func upsertReplicated(_ sa: consuming IKESA) throws(GatewayStateError) {
        let (slot, inserted) = ikeSAs.slot(insertingIfAbsent: sa.identifier)
        guard !inserted else {
            ikeSAs.slots[slot] = consume sa
            ikeSAs.slots[slot]!.childSAs = []
            return
        }
        let held = ikeSAs.slots[slot]!.generation
        guard sa.generation > held else { throw .staleChange(held: held, received: sa.generation) }
        let children = ikeSAs.slots[slot]!.childSAs
        ikeSAs.slots[slot] = consume sa
        ikeSAs.slots[slot]!.childSAs = children
    }

    /// Applies a replicated Child SA record (a standby's path for an upsert): installs the
    /// Child SA when its inbound SPI is free, replaces the one held when the record's generation
    /// is newer; either way records it as checkpointed at `arrival` (keeping the rate measured
    /// before, if any), with one SPI lookup. Throws, changing nothing, for a stale record, a
    /// parent IKE SA or a policy it does not hold.
    /// Consuming, so that a standby's resync moves each Child SA into its slot rather than copy it.
    public mutating func upsertReplicated(_ sa: consuming ChildSA, arrivedAt arrival: Timestamp) throws(GatewayStateError) {
        guard let parent = ikeSAs.slot(of: sa.parent, near: recentParentSlot) else { throw .unknownParent(sa.parent) }
        recentParentSlot = parent
        if let slot = spiIndex.slot(of: sa.inboundSPI) {
            let index = Int(slot)
            let held = childSlots.withUnsafeWrapped(at: index) { $0.pointee.generation }!
            guard sa.generation > held else { throw .staleChange(held: held, received: sa.generation) }
            if let policy = sa.policy, spd.policy(policy) == nil { throw .unknownPolicy(policy) }
            replace(slot: slot, with: sa)
            freshness[index] = ChildSAFreshness(lastCheckpoint: arrival, packetsPerSecond: freshness[index]?.packetsPerSecond)
        } else {
            if let policy = sa.policy, spd.policy(policy) == nil { throw .unknownPolicy(policy) }
            let slot = install(sa, parent: parent)
            freshness[Int(slot)] = ChildSAFreshness(lastCheckpoint: arrival, packetsPerSecond: nil)
        }
    }

    /// Loads the SPI-index bucket where each of `spis` starts its probe, with nothing waiting
    /// on the loads: a standby does it before it applies a datagram's Child SA upserts one by
    /// one, each of which looks its SPI up first. At a million IKE SAs the index is 32 MB, and
    /// each such look-up was a cache and TLB miss waited for alone (0.35 s of the resync);
    /// touched together, the misses of a datagram's Child SAs overlap (0.1 s), and the look-ups
    /// then find the lines cached. A bucket holds its SPI and its slot, so an insertion finds
    /// its line cached too. (The IKE SA table's dictionary keeps keys and values apart from
    /// the buckets a look-up of an absent identifier reads: touching it that way saved nothing.)
    package mutating func touchSPIIndex(for spis: UnsafeBufferPointer<UInt32>) {
        let index = spiIndex
        spiIndex.touched = index.buckets.withUnsafeBufferPointer { buckets in
            spis.reduce(0) { folded, spi in folded ^ buckets[index.home(spi)] }
        }
    }

    /// Applies one replicated counter checkpoint (what ``apply(_:)`` does for
    /// ``StateChange/countersAdvanced(_:generation:)``), in place and without building a change:
    /// the replica's per-checkpoint path. With `freshness`, also records it as
    /// ``recordCounterFreshness(_:inboundSPI:)`` would, keeping the rate held when `freshness`
    /// has none. Throws, changing nothing, for an unknown
    /// Child SA or a generation not above the one held.
    public mutating func applyCounterCheckpoint(
        _ checkpoint: ChildSACounterCheckpoint, generation: UInt64, freshness arrival: ChildSAFreshness? = nil
    ) throws(GatewayStateError) {
        guard let slot = spiIndex.slot(of: checkpoint.inboundSPI) else { throw .unknownChildSA(checkpoint.inboundSPI) }
        try adoptCounterCheckpoint(checkpoint, generation: generation, freshness: arrival, at: Int(slot))
    }

    /// The per-slot part of applying a checkpoint; `index` must hold a Child SA (the SPI index
    /// names only occupied slots).
    @inline(__always)
    private mutating func adoptCounterCheckpoint(
        _ checkpoint: ChildSACounterCheckpoint, generation: UInt64, freshness arrival: ChildSAFreshness?, at index: Int
    ) throws(GatewayStateError) {
        // In place throughout: a copy of the Child SA would retain its references and share,
        // then copy, its replay ring.
        let adopted: Bool
        do { adopted = try childSlots.mutableAddress(of: index).pointee!.adopt(checkpoint, ifNewerThanHeld: generation) } catch { throw .childSA(error) }
        guard adopted else {
            throw .staleChange(held: childSlots.withUnsafeWrapped(at: index) { $0.pointee.generation }!, received: generation)
        }
        // A checkpoint without a rate (one made by a state change, not by the scheduler) keeps
        // the rate measured before: forgetting it would make a takeover treat a busy SA as one
        // never measured and move its counter by the unknown advance.
        if let arrival {
            freshness[index] = ChildSAFreshness(
                lastCheckpoint: arrival.lastCheckpoint, packetsPerSecond: arrival.packetsPerSecond ?? freshness[index]?.packetsPerSecond)
        }
    }

    /// The slot of the Child SA with inbound SPI `spi`: `hint` when that slot holds it (in a
    /// list in slot order, each entry's is right after the previous one's), else through the
    /// SPI index, whose random buckets of a large state miss the cache.
    @inline(__always)
    func slot(ofInboundSPI spi: UInt32, hint: Int) -> Int32? {
        if hint >= 0, hint < slotSPIs.count, slotSPIs[hint] == spi, spi != 0 { return Int32(truncatingIfNeeded: hint) }
        return spiIndex.slot(of: spi)
    }

    /// Applies a batch of replicated counter checkpoints as
    /// ``applyCounterCheckpoint(_:generation:freshness:)`` would one by one, recording each
    /// applied one as arrived at `arrival` with its measured rate (the one held when the rate
    /// is 0: a checkpoint a state change made, which measured nothing), and
    /// counts the outcomes. Entries that do not apply change nothing.
    ///
    /// A standby's per-batch path: it first finds every entry's slot, trying the slot after the
    /// previous entry's before the SPI index, then applies.
    public mutating func applyCounterCheckpoints(
        _ entries: [CounterCheckpointEntry], arrivedAt arrival: Timestamp
    ) -> CounterCheckpointOutcome {
        var outcome = CounterCheckpointOutcome()
        withUnsafeTemporaryAllocation(of: Int32.self, capacity: entries.count) { slots in
            // The active member's scan checkpoints its Child SAs in slot order, and a resync
            // installs them here in that order: the slot after the previous entry's is where
            // the next entry usually is (63 ns an entry at a million IKE SAs through the SPI
            // index alone, 22 at 10,000).
            var previous = -1
            for index in entries.indices {
                if let slot = slot(ofInboundSPI: entries[index].checkpoint.inboundSPI, hint: previous &+ 1) {
                    slots[index] = slot
                    previous = Int(slot)
                } else {
                    slots[index] = -1
                }
            }
            for index in entries.indices {
                let entry = entries[index]
                guard slots[index] >= 0 else {
                    outcome.rejected += 1
                    continue
                }
                do throws(GatewayStateError) {
                    try adoptCounterCheckpoint(
                        entry.checkpoint, generation: entry.generation,
                        freshness: ChildSAFreshness(
                            lastCheckpoint: arrival, packetsPerSecond: entry.packetsPerSecond == 0 ? nil : UInt64(entry.packetsPerSecond)),
                        at: Int(slots[index]))
                    outcome.applied += 1
                } catch .staleChange {
                    outcome.stale += 1
                } catch {
                    outcome.rejected += 1
                }
            }
        }
        return outcome
    }

    public static func == (lhs: GatewayState, rhs: GatewayState) -> Bool {
        guard lhs.spd.policies == rhs.spd.policies, lhs.ikeSAs == rhs.ikeSAs, lhs.childSACount == rhs.childSACount else {
            return false
        }
        return lhs.childSlots.allSatisfy { sa in sa.map { rhs.childSA(inboundSPI: $0.inboundSPI) == $0 } ?? true }
    }
}
