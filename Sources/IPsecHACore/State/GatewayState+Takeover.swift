// The standby's copy becoming the active one: the takeover plan's counters applied.
extension GatewayState {
    /// Applies the counter part of a takeover plan (``TakeoverPlanner``) to this state, as the
    /// standby's copy becomes the active one: each Child SA the plan resumes gets its outbound
    /// counter at the planned value and its inbound window rebuilt from its checkpoint with the
    /// planned policy, replacing the passive copy (whose bitmap means nothing). Returns the
    /// Child SAs that must be rekeyed instead: those the plan says so for, and any whose planned
    /// values do not fit. Those are made unusable until the rekey replaces them: their outbound
    /// counter stands at its limit (``nextOutboundSequenceNumber(at:bytes:)`` throws
    /// ``SequenceCounterError/exhausted(lastSent:)``) and their window's top at the end of the
    /// sequence space with everything seen (``checkInbound(wire:at:)`` accepts nothing): from
    /// the unmoved counters they would reuse sequence numbers, and their passive windows cannot
    /// tell replays (review L4). Child SAs the plan does not name, or that are gone, are left
    /// alone. Message IDs are the IKE stack's to apply (``TakeoverPlan/ikeSAs``).
    ///
    /// With the plan's ``TakeoverPlan/clockOffset``, the planned SAs' lifetimes move onto this
    /// member's clock.
    public mutating func applyTakeover(_ plan: TakeoverPlan) -> (resumed: Int, rekey: [UInt32]) {
        var resumed = 0
        var rekey: [UInt32] = []
        // Both lists come in slot order (the planner walks the slots), so each SA is looked for
        // first right after the previous one: hashing a million identifiers and two million SPIs
        // into tables far larger than the cache was most of a takeover's time after the plan.
        if let offset = plan.clockOffset {
            var previous = -1
            for decision in plan.ikeSAs {
                guard let slot = ikeSAs.slot(of: decision.identifier, near: previous &+ 1) else { continue }
                previous = slot
                // In place: reading `ikeSAs.slots[slot]!.lifetime` copied the whole IKE SA
                // (retaining its references) for each of its two fields.
                ikeSAs.slots[slot]!.lifetime.shift(by: offset)
            }
        }
        var previous = -1
        for decision in plan.childSAs {
            guard let slot = slot(ofInboundSPI: decision.inboundSPI, hint: previous &+ 1) else { continue }
            let index = Int(slot)
            previous = index
            markCountersMoved(index)
            if let offset = plan.clockOffset { childSlots[index]!.lifetime = childSlots[index]!.lifetime.shifted(by: offset) }
            guard case .resume(let lastSent) = decision.outbound, case .restore(let policy) = decision.inbound else {
                retireForRekey(at: index)
                rekey.append(decision.inboundSPI)
                continue
            }
            let held = childSlots.withUnsafeWrapped(at: index) { sa in
                (sa.pointee.outboundCounter, sa.pointee.inboundWindow.size, sa.pointee.inboundWindow.checkpoint)
            }!
            do {
                let counter = try OutboundSequenceCounter(
                    extendedSequenceNumbers: held.0.extendedSequenceNumbers, lastSent: lastSent, softLimit: held.0.softLimit)
                let window = try ReplayWindow(
                    size: held.1, extendedSequenceNumbers: held.0.extendedSequenceNumbers, restoringFrom: held.2, policy: policy)
                let sa = childSlots.mutableAddress(of: index)
                sa.pointee!.outboundCounter = counter
                sa.pointee!.inboundWindow = window
                resumed += 1
            } catch {
                retireForRekey(at: index)
                rekey.append(decision.inboundSPI)
            }
        }
        return (resumed, rekey)
    }

    /// Leaves the Child SA at `index` neither sending nor accepting (see ``applyTakeover(_:)``).
    private mutating func retireForRekey(at index: Int) {
        let counter = childSlots[index]!.outboundCounter
        let limit = counter.hardLimit
        let size = childSlots[index]!.inboundWindow.size
        if let exhausted = try? OutboundSequenceCounter(
            extendedSequenceNumbers: counter.extendedSequenceNumbers, lastSent: limit, softLimit: min(counter.softLimit, limit))
        {
            childSlots[index]!.outboundCounter = exhausted
        }
        if let closed = try? ReplayWindow(
            size: size, extendedSequenceNumbers: counter.extendedSequenceNumbers,
            restoringFrom: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: limit), policy: .conservative(advance: 0))
        {
            childSlots[index]!.inboundWindow = closed
        }
    }
}

extension IKESALifetime {
    /// Moves both deadlines by `offset` nanoseconds (onto another member's clock).
    mutating func shift(by offset: Int64) {
        rekeyAt = rekeyAt?.shifted(by: offset)
        reauthenticateAt = reauthenticateAt?.shifted(by: offset)
    }
}
