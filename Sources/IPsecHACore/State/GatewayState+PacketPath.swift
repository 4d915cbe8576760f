// What every packet touches: SAD lookups by SPI, sequence numbers, replay windows, the SPD cache.
extension GatewayState {
    // MARK: Per-packet paths

    /// The slot of the Child SA that receives packets with this SPI: the per-packet SAD lookup.
    @inlinable
    public func slot(forInboundSPI spi: UInt32) -> ChildSASlot? {
        spiIndex.slot(of: spi).map { ChildSASlot(index: $0) }
    }

    /// The Child SA in `slot` (nil if it was deleted since). Inlinable: a bulk resync reads
    /// every Child SA through it from another module, and a call returned a copy of each.
    @inlinable
    public subscript(slot: ChildSASlot) -> ChildSA? {
        childSlots.indices.contains(Int(slot.storage)) ? childSlots[Int(slot.storage)] : nil
    }

    /// The slots that hold a Child SA, in slot order: what a bulk resync sends.
    package var occupiedChildSASlots: [ChildSASlot] {
        childSlots.positionsOfPresentValues(count: childSACount) { ChildSASlot(index: Int32(truncatingIfNeeded: $0)) }
    }

    /// Calls `body` with the address of the Child SA in `slot` and returns what it returns
    /// (nil, without calling it, if the slot is empty): how a bulk resync reads every Child SA
    /// it encodes. The pointer is valid only during the call.
    @inlinable
    package func withUnsafeChildSA<Result, Failure: Error>(
        at slot: ChildSASlot, _ body: (UnsafePointer<ChildSA>) throws(Failure) -> Result
    ) throws(Failure) -> Result? {
        try childSlots.withUnsafeWrapped(at: Int(slot.storage), body)
    }

    /// Takes the next outbound sequence number of the Child SA in `slot` for a packet of
    /// `bytes` bytes; nil when the slot is empty.
    public mutating func nextOutboundSequenceNumber(
        at slot: ChildSASlot, bytes: UInt64
    ) throws(SequenceCounterError) -> OutboundSequenceNumber? {
        guard let index = occupiedIndex(slot) else { return nil }
        let sa = childSlots.mutableAddress(of: index)
        let number = try sa.pointee!.outboundCounter.next()
        sa.pointee!.lifetime.usage.outboundBytes &+= bytes
        sa.pointee!.lifetime.usage.outboundPackets &+= 1
        markCountersMoved(index)
        return number
    }

    /// Adopts the counters of a Child SA whose ESP runs in a data plane that keeps them itself
    /// (a kernel's or a NIC's, read from it): the outbound counter, the inbound window's top and
    /// each usage count move forward to what it reports, never back, so that the counter
    /// checkpoints replicate what that data plane did. The window's bitmap is not kept: only for
    /// Child SAs whose packets do not pass ``checkInbound(wire:at:)``. Throws, changing nothing,
    /// for an unknown SPI, or for counters beyond the SA's sequence space (values from outside,
    /// checked as such).
    public mutating func observeCounters(_ observed: ChildSACounterCheckpoint) throws(GatewayStateError) {
        guard let slot = spiIndex.slot(of: observed.inboundSPI) else { throw .unknownChildSA(observed.inboundSPI) }
        let index = Int(slot)
        let held = childSlots[index]!
        let counter: OutboundSequenceCounter
        var window = held.inboundWindow
        do {
            counter =
                observed.outbound.lastSent > held.outboundCounter.lastSent
                ? try OutboundSequenceCounter(
                    extendedSequenceNumbers: held.outboundCounter.extendedSequenceNumbers, lastSent: observed.outbound.lastSent,
                    softLimit: held.outboundCounter.softLimit)
                : held.outboundCounter
            if observed.inbound.highestAuthenticatedSequenceNumber > window.top { try window.adoptPassively(observed.inbound) }
        } catch {
            throw .childSA(.checkpointOutsideSequenceSpace)
        }
        let usage = held.lifetime.usage
        let sa = childSlots.mutableAddress(of: index)
        sa.pointee!.outboundCounter = counter
        sa.pointee!.inboundWindow = window
        sa.pointee!.lifetime.usage = ChildSAUsage(
            inboundBytes: max(usage.inboundBytes, observed.usage.inboundBytes), inboundPackets: max(usage.inboundPackets, observed.usage.inboundPackets),
            outboundBytes: max(usage.outboundBytes, observed.usage.outboundBytes),
            outboundPackets: max(usage.outboundPackets, observed.usage.outboundPackets))
        markCountersMoved(index)
    }

    /// Phase one of the inbound replay check on the Child SA in `slot`.
    public func checkInbound(wire: UInt32, at slot: ChildSASlot) -> ReplayCheckResult? {
        self[slot]?.inboundWindow.check(wire: wire)
    }

    /// Phase two: commits a verified inbound packet of `bytes` bytes to the Child SA in `slot`.
    public mutating func commitInbound(
        _ sequenceNumber: UInt64, bytes: UInt64, at slot: ChildSASlot
    ) throws(ReplayWindowRejection) {
        guard let index = occupiedIndex(slot) else { throw .stale }
        let sa = childSlots.mutableAddress(of: index)
        try sa.pointee!.inboundWindow.commit(sequenceNumber)
        sa.pointee!.lifetime.usage.inboundBytes &+= bytes
        sa.pointee!.lifetime.usage.inboundPackets &+= 1
        markCountersMoved(index)
    }

    /// Turns the current counters of the Child SA in `slot` into a replicated change.
    public mutating func checkpointCounters(at slot: ChildSASlot) -> [StateChange] {
        guard let index = occupiedIndex(slot) else { return [] }
        clearCountersMoved(index)
        childSlots[index]!.generation += 1
        let sa = childSlots[index]!
        return [.countersAdvanced(sa.counterCheckpoint, generation: sa.generation)]
    }

    /// The decision for an outbound packet: from the SPD cache when it holds a valid entry,
    /// otherwise by walking the SPD in order (and, for PROTECT, the policy's Child SAs in the
    /// order they were installed), caching the answer.
    @inlinable
    public mutating func outboundDecision(for packet: FiveTuple) -> SPDCacheDecision {
        outboundDecision(for: packet, hash: cache.hash(packet))
    }

    @inlinable @inline(__always)
    mutating func outboundDecision(for packet: FiveTuple, hash: UInt64) -> SPDCacheDecision {
        if let position = cache.find(packet, hash: hash) {
            let decision = cache.table[position].decision
            if isCurrent(decision, incarnation: cache.table[position].incarnation) {
                cache.markReferenced(position)
                cache.statistics.hits &+= 1
                return decision
            }
            cache.remove(at: position)
        }
        return decideAndCache(packet, hash: hash)
    }

    /// The decisions for a burst of outbound packets, as ``outboundDecision(for:)`` gives them
    /// one by one, written to `decisions` (which must be as long as `packets`; extra packets are
    /// left undecided). Groups of 32 packets first load their cache buckets together, so the
    /// memory latency of a large cache is paid once per group rather than once per packet.
    @inlinable
    public mutating func outboundDecisions(
        for packets: UnsafeBufferPointer<FiveTuple>, into decisions: UnsafeMutableBufferPointer<SPDCacheDecision>
    ) {
        let total = min(packets.count, decisions.count)
        withUnsafeTemporaryAllocation(of: UInt64.self, capacity: 32) { hashes in
            var start = 0
            while start < total {
                let end = min(start &+ 32, total)
                var touched: UInt8 = 0
                for index in start..<end {
                    let hash = cache.hash(packets[index])
                    hashes[index &- start] = hash
                    touched ^= cache.touch(hash)
                }
                cache.touched = touched
                for index in start..<end {
                    decisions[index] = outboundDecision(for: packets[index], hash: hashes[index &- start])
                }
                start = end
            }
        }
    }

    /// The cache-miss path of ``outboundDecision(for:)``: walk, then cache.
    @usableFromInline
    mutating func decideAndCache(_ packet: FiveTuple, hash: UInt64) -> SPDCacheDecision {
        cache.statistics.misses += 1
        let decision = walk(packet)
        switch decision {
        case .protect(let slot):
            cache.insert(packet, hash: hash, decision: decision, incarnation: incarnations[Int(slot.storage)])
        case .bypass, .discard:
            cache.insert(packet, hash: hash, decision: decision, incarnation: 0)
        case .acquire:
            break
        }
        return decision
    }

    /// The SPD cache's counters.
    public var spdCacheStatistics: SPDCacheStatistics { cache.statistics }
    /// How many flows the SPD cache holds.
    public var spdCacheCount: Int { cache.count }
    /// How many flows the SPD cache holds at most.
    public var spdCacheCapacity: Int { cache.capacity }

    @inlinable
    func isCurrent(_ decision: SPDCacheDecision, incarnation: UInt32) -> Bool {
        guard case .protect(let slot) = decision else { return true }
        // Deleting, replacing or changing a slot's Child SA bumps its incarnation.
        return incarnations[Int(slot.storage)] == incarnation
    }

    private func walk(_ packet: FiveTuple) -> SPDCacheDecision {
        guard let policy = spd.firstMatch(for: packet) else { return .discard(nil) }
        switch policy.action {
        case .bypass: return .bypass(policy.id)
        case .discard: return .discard(policy.id)
        case .protect:
            for spi in childSAsByPolicy[policy.id] ?? [] {
                if let slot = spiIndex.slot(of: spi), let sa = childSlots[Int(slot)], localMember.map({ sa.owner == $0 }) ?? true,
                    sa.selectorsCover(packet)
                {
                    return .protect(ChildSASlot(index: slot))
                }
            }
            return .acquire(policy.id)
        }
    }
}
