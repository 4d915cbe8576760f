// The SPD, IKE SAs and Child SAs: every change a standby must receive, returned as StateChange values.
extension GatewayState {
    // MARK: SPD

    /// Inserts a policy (at the end by default).
    public mutating func installPolicy(_ policy: SecurityPolicy, at position: Int? = nil) throws(GatewayStateError) -> [StateChange] {
        let index = position ?? spd.policies.count
        do { try spd.insert(policy, at: index) } catch { throw .policy(error) }
        cache.removeAll()
        return [.policyInstalled(policy, position: index)]
    }

    /// Removes a policy. Its Child SAs stay (RFC 4301 leaves their fate to the administrator)
    /// and keep naming it, but the SPD cache no longer leads to them; delete them with
    /// ``deleteChildSA(inboundSPI:)`` if policy says so.
    public mutating func removePolicy(_ id: SecurityPolicyID) throws(GatewayStateError) -> [StateChange] {
        do { try spd.remove(id) } catch { throw .policy(error) }
        childSAsByPolicy[id] = nil
        cache.removeAll()
        return [.policyRemoved(id)]
    }

    // MARK: IKE SAs

    /// Adds an IKE SA (its generation becomes 1).
    public mutating func createIKESA(_ ikeSA: IKESA) throws(GatewayStateError) -> [StateChange] {
        guard !ikeSAs.contains(ikeSA.identifier) else { throw .ikeSAExists(ikeSA.identifier) }
        var sa = ikeSA
        sa.childSAs = []
        sa.generation = 1
        ikeSAs.insert(sa)
        return [.ikeSACreated(sa)]
    }

    /// Changes an IKE SA through `body` and bumps its generation. The identifier and the list of
    /// Child SAs are not the caller's to change.
    public mutating func updateIKESA(
        _ identifier: IKESAIdentifier, _ body: (inout IKESA) -> Void
    ) throws(GatewayStateError) -> [StateChange] {
        guard let slot = ikeSAs.slot(of: identifier) else { throw .unknownIKESA(identifier) }
        var sa = ikeSAs.slots[slot]!
        let children = sa.childSAs
        let generation = sa.generation
        body(&sa)
        guard sa.identifier == identifier else { throw .identifierChanged }
        sa.childSAs = children
        sa.generation = generation + 1
        ikeSAs.slots[slot] = sa
        return [.ikeSAUpdated(sa)]
    }

    /// Changes only the message-ID windows of an IKE SA (after each exchange) and bumps its
    /// generation; the change carries the windows alone, not the keys.
    public mutating func updateMessageIDs(
        of identifier: IKESAIdentifier, _ body: (inout IKEMessageIDWindows) -> Void
    ) throws(GatewayStateError) -> [StateChange] {
        let updated = withIKESA(identifier) { sa in
            body(&sa.messageIDs)
            sa.generation += 1
            return (sa.generation, sa.messageIDs.snapshot)
        }
        guard let (generation, snapshot) = updated else { throw .unknownIKESA(identifier) }
        return [.messageIDsUpdated(identifier, generation: generation, snapshot)]
    }

    /// RFC 6311 section 5.2 on the peer's side: after answering a message-ID sync that carried an
    /// IPSEC_REPLAY_COUNTER_SYNC (``MessageIDSyncPeer``), moves the outbound sequence counter of
    /// every Child SA of the IKE SA on by `delta`, so that the cluster member that took over,
    /// which counted that many numbers as seen, accepts what this gateway sends next. A Child SA
    /// whose counter would pass its hard limit is left as it was and returned: rekey it. Throws
    /// for an unknown IKE SA. Counters move without producing changes, like every per-packet
    /// counter (the next checkpoint carries them).
    ///
    /// With `unseenByPeer` (a jump the peer is not told of, such as a reassertion after a split
    /// brain), a Child SA with extended sequence numbers whose jumps would then add up to more
    /// than the peer can infer the high bits across is left as it was and returned for rekey
    /// too: its earlier jumps (its counter less the packets it sent) count, since the peer may
    /// have seen none of them, as they do for the takeover planner
    /// (``TakeoverPolicy/maximumExtendedSequenceNumberAdvance``).
    public mutating func advanceOutboundCounters(
        ofChildSAsOf identifier: IKESAIdentifier, by delta: UInt64, unseenByPeer: Bool = false
    ) throws(GatewayStateError) -> (advanced: [UInt32], needRekey: [UInt32]) {
        guard let index = ikeSAs.slot(of: identifier) else { throw .unknownIKESA(identifier) }
        var advanced: [UInt32] = []
        var needRekey: [UInt32] = []
        for spi in ikeSAs.slots[index]!.childSAs {
            guard let slot = spiIndex.slot(of: spi) else { continue }
            let sa = childSlots.mutableAddress(of: Int(slot))
            if unseenByPeer,
                !TakeoverPolicy.peerFollows(
                    advance: delta, lastSent: sa.pointee!.outboundCounter.lastSent, packetsSent: sa.pointee!.lifetime.usage.outboundPackets,
                    extendedSequenceNumbers: sa.pointee!.extendedSequenceNumbers)
            {
                needRekey.append(spi)
                continue
            }
            do {
                try sa.pointee!.outboundCounter.advance(by: delta)
                advanced.append(spi)
            } catch {
                needRekey.append(spi)
            }
        }
        return (advanced, needRekey)
    }

    /// Rekeys an IKE SA (RFC 7296 section 2.18): adds `new`, the IKE SA the CREATE_CHILD_SA
    /// exchange made (its generation becomes 1), and moves every Child SA of `old` to it, each
    /// a Child SA update. The old IKE SA stays, without Child SAs, until it is deleted: the
    /// rekey's initiator deletes it with the last request it sends on it, and a responder must
    /// still answer that request. Throws for an unknown `old` or a `new` identifier in use;
    /// nothing changes then.
    public mutating func rekeyIKESA(_ old: IKESAIdentifier, to new: IKESA) throws(GatewayStateError) -> [StateChange] {
        guard let children = ikeSAs[old]?.childSAs else { throw .unknownIKESA(old) }
        var successor = new
        successor.rekeyedFrom = old
        return try createIKESA(successor) + moveChildSAs(children, to: new.identifier)
    }

    /// Takes back a rekey the peer never saw (its answer died with a failed member, and an
    /// RFC 6311 sync told the peer to stop waiting for it): moves every Child SA of
    /// `identifier` back to the IKE SA it was rekeyed from, then deletes `identifier`. Throws
    /// when `identifier` is unknown, was not made by ``rekeyIKESA(_:to:)``, or its predecessor
    /// is gone (the peer deleted it: it did see the rekey); nothing changes then.
    public mutating func undoIKESARekey(_ identifier: IKESAIdentifier) throws(GatewayStateError) -> [StateChange] {
        guard let sa = ikeSAs[identifier] else { throw .unknownIKESA(identifier) }
        guard let old = sa.rekeyedFrom, ikeSAs.contains(old) else { throw .unknownParent(sa.rekeyedFrom ?? identifier) }
        return try moveChildSAs(sa.childSAs, to: old) + deleteIKESA(identifier)
    }

    /// Gives the Child SAs with these inbound SPIs a new parent, an update each.
    private mutating func moveChildSAs(_ spis: [UInt32], to parent: IKESAIdentifier) throws(GatewayStateError) -> [StateChange] {
        var changes: [StateChange] = []
        for spi in spis { changes += try updateChildSA(inboundSPI: spi) { $0.parent = parent } }
        return changes
    }

    /// Deletes an IKE SA and, first, each of its Child SAs.
    public mutating func deleteIKESA(_ identifier: IKESAIdentifier) throws(GatewayStateError) -> [StateChange] {
        guard let sa = ikeSAs[identifier] else { throw .unknownIKESA(identifier) }
        var changes: [StateChange] = []
        for spi in sa.childSAs { changes += try deleteChildSA(inboundSPI: spi) }
        ikeSAs.remove(identifier)
        changes.append(.ikeSADeleted(identifier))
        return changes
    }

    // MARK: Child SAs

    /// Installs a Child SA (its generation becomes 1). Throws when its inbound SPI is taken,
    /// its parent IKE SA does not exist, it names an unknown policy, or it has more than
    /// ``ChildSA/maximumSelectors`` selectors.
    public mutating func createChildSA(_ childSA: ChildSA) throws(GatewayStateError) -> [StateChange] {
        guard spiIndex.slot(of: childSA.inboundSPI) == nil else { throw .spiInUse(childSA.inboundSPI) }
        guard ikeSAs.contains(childSA.parent) else { throw .unknownParent(childSA.parent) }
        if let policy = childSA.policy, spd.policy(policy) == nil { throw .unknownPolicy(policy) }
        let selectors = childSA.localSelectors.count + childSA.remoteSelectors.count
        guard selectors <= ChildSA.maximumSelectors else { throw .childSA(.tooManySelectors(selectors)) }
        var sa = childSA
        sa.generation = 1
        install(sa)
        return [.childSACreated(sa)]
    }

    /// Changes a Child SA through `body` and bumps its generation. Its inbound SPI cannot
    /// change; a new parent (after an IKE SA rekey) or policy must exist.
    public mutating func updateChildSA(
        inboundSPI: UInt32, _ body: (inout ChildSA) -> Void
    ) throws(GatewayStateError) -> [StateChange] {
        guard let slot = spiIndex.slot(of: inboundSPI), var sa = childSlots[Int(slot)] else {
            throw .unknownChildSA(inboundSPI)
        }
        let generation = sa.generation
        body(&sa)
        guard sa.inboundSPI == inboundSPI else { throw .identifierChanged }
        guard ikeSAs.contains(sa.parent) else { throw .unknownParent(sa.parent) }
        let selectors = sa.localSelectors.count + sa.remoteSelectors.count
        guard selectors <= ChildSA.maximumSelectors else { throw .childSA(.tooManySelectors(selectors)) }
        if sa.policy != childSlots[Int(slot)]!.policy, let policy = sa.policy, spd.policy(policy) == nil {
            throw .unknownPolicy(policy)
        }
        sa.generation = generation + 1
        replace(slot: slot, with: sa)
        return [.childSAUpdated(sa)]
    }

    /// Deletes a Child SA.
    public mutating func deleteChildSA(inboundSPI: UInt32) throws(GatewayStateError) -> [StateChange] {
        guard let slot = spiIndex.slot(of: inboundSPI) else { throw .unknownChildSA(inboundSPI) }
        uninstall(slot: slot)
        return [.childSADeleted(inboundSPI: inboundSPI)]
    }

    /// The Child SA with this inbound SPI.
    public func childSA(inboundSPI: UInt32) -> ChildSA? {
        spiIndex.slot(of: inboundSPI).flatMap { childSlots[Int($0)] }
    }

    /// The Child SA of IKE SA `parent` whose outbound SPI (the peer's) is `outboundSPI`: the
    /// one a Delete or a REKEY_SA notify names. Looks only at that IKE SA's Child SAs.
    public func childSA(of parent: IKESAIdentifier, outboundSPI: UInt32) -> ChildSA? {
        guard let children = ikeSAs[parent]?.childSAs else { return nil }
        for inboundSPI in children {
            if let child = childSA(inboundSPI: inboundSPI), child.outboundSPI == outboundSPI { return child }
        }
        return nil
    }

    /// Inbound SPIs of the Child SAs past a hard lifetime at `now` (RFC 4301: they must go).
    /// O(n): for a sweep every second or so, not a packet path.
    public func expiredChildSAs(at now: Timestamp) -> [UInt32] {
        childSlots.compactMap { slot in
            guard let sa = slot, sa.lifetime.state(at: now) == .expired else { return nil }
            return sa.inboundSPI
        }
    }

    /// Every Child SA, in no particular order: a copy of each, O(n). Not for a per-exchange
    /// path (use ``childSA(inboundSPI:)`` or ``childSA(of:outboundSPI:)``).
    public var childSAs: [ChildSA] { childSlots.compactMap { $0 } }

    /// What a takeover or a checkpoint scheduler needs of a Child SA, read without building an
    /// array of whole Child SAs.
    public struct ChildSACounters: Sendable {
        /// The slot the Child SA occupies.
        public var slot: ChildSASlot
        /// The inbound SPI.
        public var inboundSPI: UInt32
        /// The parent IKE SA.
        public var parent: IKESAIdentifier
        /// The outbound counter's last sent number.
        public var lastSent: UInt64
        /// The outbound counter's hard limit.
        public var hardLimit: UInt64
        /// The inbound window's top.
        public var inboundTop: UInt64
        /// Whether the SA uses Extended Sequence Numbers.
        public var extendedSequenceNumbers: Bool
        /// Outbound packets counted for the lifetime: `lastSent` less these is how far the
        /// counter has jumped in all (takeovers, reassertions), unseen by the peer or not.
        public var outboundPackets: UInt64
        /// Inbound packets counted for the lifetime (received and verified).
        public var inboundPackets: UInt64
        /// Packets counted for the lifetime, both directions.
        public var packets: UInt64 { inboundPackets &+ outboundPackets }
        /// What a standby knows of the last checkpoint (nil on the member that sends the
        /// checkpoints, and on a standby before the first one).
        public var freshness: ChildSAFreshness?
    }

    /// Calls `body` with the counters of every Child SA, in no particular order.
    public func forEachChildSACounters(_ body: (ChildSACounters) throws -> Void) rethrows {
        try freshness.withUnsafeBufferPointer { freshness in
            // Field by field through the slot's address: binding `slots[index]` to a constant
            // would copy the Child SA and retain each of its references, and each
            // `slots[index]!` checked the optional again.
            try childSlots.forEachValue { index, sa in try body(Self.counters(of: sa, at: index, freshness: freshness[index])) }
        }
    }

    /// The counters of the Child SA at `sa`, in slot `index`, read field by field.
    @inline(__always)
    static func counters(of sa: UnsafePointer<ChildSA>, at index: Int, freshness: ChildSAFreshness?) -> ChildSACounters {
        ChildSACounters(
            slot: ChildSASlot(index: Int32(truncatingIfNeeded: index)), inboundSPI: sa.pointee.inboundSPI, parent: sa.pointee.parent,
            lastSent: sa.pointee.outboundCounter.lastSent,
            hardLimit: sa.pointee.outboundCounter.hardLimit, inboundTop: sa.pointee.inboundWindow.top,
            extendedSequenceNumbers: sa.pointee.outboundCounter.extendedSequenceNumbers,
            outboundPackets: sa.pointee.lifetime.usage.outboundPackets,
            inboundPackets: sa.pointee.lifetime.usage.inboundPackets, freshness: freshness)
    }

    /// Calls `body` with the counters of every Child SA whose counters may have moved since its
    /// last checkpoint (a packet, an observation, an installation or a change since), in slot
    /// order; `body` returns whether to keep visiting it (false: nothing new since its last
    /// checkpoint, until the next packet). ``checkpointCounters(at:)`` also ends the visits.
    /// The active member's checkpoint scan: it costs the Child SAs with traffic, not all of
    /// them.
    public mutating func visitChildSACountersMoved(_ body: (ChildSACounters) throws -> Bool) rethrows {
        let words = countersMoved.count
        try childSlots.withUnsafeSlots { slots in
            try freshness.withUnsafeBufferPointer { freshness in
                for word in 0..<words {
                    var bits = countersMoved[word]
                    while bits != 0 {
                        let bit = bits.trailingZeroBitCount
                        bits &= bits &- 1
                        let index = word &<< 6 | bit
                        // A bit of an empty slot (the Child SA went) is simply cleared.
                        let keep =
                            index < slots.count && slots.hasValue(at: index)
                            ? try body(Self.counters(of: slots.addressOfValue(at: index), at: index, freshness: freshness[index])) : false
                        if !keep { countersMoved[word] &= ~(1 &<< UInt64(bit)) }
                    }
                }
            }
        }
    }

    /// What this state knows of the last counter checkpoint of a Child SA (nil for an unknown
    /// SA, or before any checkpoint was recorded).
    public func counterFreshness(inboundSPI: UInt32) -> ChildSAFreshness? {
        spiIndex.slot(of: inboundSPI).flatMap { freshness[Int($0)] }
    }

    /// Records when a Child SA's counters were last replicated here and the rate then
    /// measured (a replica does this on every checkpoint and every upsert). Throws
    /// ``GatewayStateError/unknownChildSA(_:)`` for an SPI it does not hold.
    public mutating func recordCounterFreshness(_ value: ChildSAFreshness?, inboundSPI: UInt32) throws(GatewayStateError) {
        guard let slot = spiIndex.slot(of: inboundSPI) else { throw .unknownChildSA(inboundSPI) }
        freshness[Int(slot)] = value
    }

    /// How many Child SAs are installed.
    public var childSACount: Int { spiIndex.count }
}
