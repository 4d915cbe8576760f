/// The whole IPsec state of one gateway: the SPD and its cache, the IKE SAs, and the Child SAs
/// indexed by inbound SPI (the SAD).
///
/// Every mutation that must reach the standbys returns the ``StateChange`` values it made, in
/// order; the state keeps no log of its own, so memory does not grow with history. A standby
/// feeds those changes to ``apply(_:)``. Two contracts hold:
/// - applying all changes of a state, in order, to an empty state gives an equal state;
/// - a replica never applies a record older than one it holds (``GatewayStateError/staleChange(held:received:)``).
///
/// The per-packet paths (lookup by SPI, sequence numbers, replay window, SPD cache) change
/// counters without producing changes; ``checkpointCounters(at:)`` turns their current values
/// into one ``StateChange/countersAdvanced(_:generation:)``. Equality compares the replicated
/// state (SPD, IKE SAs, Child SAs), not the cache nor the counter freshness a standby records.
public struct GatewayState: Sendable, Equatable {
    /// The Security Policy Database.
    public private(set) var spd = SecurityPolicyDatabase()
    /// The IKE SAs by SPI pair.
    public private(set) var ikeSAs = IKESATable()

    @usableFromInline var childSlots: [ChildSA?] = []
    /// Bumped whenever a slot's Child SA is deleted or changed, so cache entries can tell.
    @usableFromInline var incarnations: [UInt32] = []
    /// Per slot, what a standby knows of the Child SA's last counter checkpoint. A side table
    /// rather than a dictionary by SPI: the replica writes it once per checkpoint and the
    /// takeover planner reads it once per Child SA, both in the same pass as the slot.
    var freshness: [ChildSAFreshness?] = []
    var freeSlots: [Int32] = []
    /// The selectors of the Child SA installed last. Child SAs installed one after another
    /// often have equal selectors (a site's subnets, a remote-access gateway's local side): one
    /// that does shares these arrays instead of keeping two allocations of its own, which a
    /// standby filled by a bulk resync would otherwise hold a million times (and touch as
    /// fresh memory). Not part of equality.
    private var recentLocalSelectors: [TrafficSelector] = []
    private var recentRemoteSelectors: [TrafficSelector] = []
    @usableFromInline var spiIndex = SPIIndex()
    /// Inbound SPIs of each PROTECT policy's Child SAs, in the order they were installed.
    var childSAsByPolicy: [SecurityPolicyID: [UInt32]] = [:]
    @usableFromInline var cache: SPDCache
    /// The member this state sends for, in a load-sharing cluster: outbound packets are mapped
    /// only to Child SAs it owns (of a duplicated group, its own one). Nil: any Child SA.
    /// Not replicated, and not part of equality.
    public let localMember: ClusterMemberID?

    /// An empty state whose SPD cache holds at most `spdCacheCapacity` flows, sending for
    /// `localMember` (see ``localMember``). The cache's hash seed comes from the system's
    /// random generator.
    public init(spdCacheCapacity: Int = 65_536, localMember: ClusterMemberID? = nil) {
        cache = SPDCache(capacity: spdCacheCapacity, seed: UInt64.random(in: .min ... .max))
        self.localMember = localMember
    }

    /// The most SAs of each kind ``reserveCapacity(ikeSAs:childSAs:)`` reserves room for,
    /// whatever it is asked: a count that arrived over the network sizes tables only up to this.
    public static let capacityReservationLimit = 1 << 21

    /// Makes room for this many IKE SAs and Child SAs at once (each capped at
    /// ``capacityReservationLimit``), so that a standby filled by a bulk resync does not grow
    /// and rehash its tables step by step.
    public mutating func reserveCapacity(ikeSAs ikeSACount: Int, childSAs childSACount: Int) {
        let ikeCount = min(max(ikeSACount, 0), Self.capacityReservationLimit)
        let childCount = min(max(childSACount, 0), Self.capacityReservationLimit)
        ikeSAs.reserveCapacity(ikeCount)
        childSlots.reserveCapacity(childCount)
        incarnations.reserveCapacity(childCount)
        freshness.reserveCapacity(childCount)
        spiIndex.reserveCapacity(childCount)
    }

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
    public mutating func advanceOutboundCounters(
        ofChildSAsOf identifier: IKESAIdentifier, by delta: UInt64
    ) throws(GatewayStateError) -> (advanced: [UInt32], needRekey: [UInt32]) {
        guard let index = ikeSAs.slot(of: identifier) else { throw .unknownIKESA(identifier) }
        var advanced: [UInt32] = []
        var needRekey: [UInt32] = []
        for spi in ikeSAs.slots[index]!.childSAs {
            guard let slot = spiIndex.slot(of: spi) else { continue }
            do {
                try childSlots[Int(slot)]!.outboundCounter.advance(by: delta)
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
        /// Packets counted for the lifetime, both directions.
        public var packets: UInt64
        /// What a standby knows of the last checkpoint (nil on the member that sends the
        /// checkpoints, and on a standby before the first one).
        public var freshness: ChildSAFreshness?
    }

    /// Calls `body` with the counters of every Child SA, in no particular order.
    public func forEachChildSACounters(_ body: (ChildSACounters) throws -> Void) rethrows {
        try childSlots.withUnsafeBufferPointer { slots in
            try freshness.withUnsafeBufferPointer { freshness in
                // Through the buffer, field by field: binding `slots[index]` to a constant would
                // copy the Child SA and retain each of its references.
                for index in slots.indices where slots[index].isPresent {
                    try body(
                        ChildSACounters(
                            slot: ChildSASlot(index: Int32(truncatingIfNeeded: index)), inboundSPI: slots[index]!.inboundSPI, parent: slots[index]!.parent,
                            lastSent: slots[index]!.outboundCounter.lastSent,
                            hardLimit: slots[index]!.outboundCounter.hardLimit, inboundTop: slots[index]!.inboundWindow.top,
                            extendedSequenceNumbers: slots[index]!.outboundCounter.extendedSequenceNumbers,
                            packets: slots[index]!.lifetime.usage.inboundPackets &+ slots[index]!.lifetime.usage.outboundPackets,
                            freshness: freshness[index]))
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

    // MARK: Per-packet paths

    /// The slot of the Child SA that receives packets with this SPI: the per-packet SAD lookup.
    @inlinable
    public func slot(forInboundSPI spi: UInt32) -> ChildSASlot? {
        spiIndex.slot(of: spi).map { ChildSASlot(index: $0) }
    }

    /// The Child SA in `slot` (nil if it was deleted since).
    public subscript(slot: ChildSASlot) -> ChildSA? {
        childSlots.indices.contains(Int(slot.storage)) ? childSlots[Int(slot.storage)] : nil
    }

    /// Takes the next outbound sequence number of the Child SA in `slot` for a packet of
    /// `bytes` bytes; nil when the slot is empty.
    public mutating func nextOutboundSequenceNumber(
        at slot: ChildSASlot, bytes: UInt64
    ) throws(SequenceCounterError) -> OutboundSequenceNumber? {
        guard let index = occupiedIndex(slot) else { return nil }
        let number = try childSlots[index]!.outboundCounter.next()
        childSlots[index]!.lifetime.usage.outboundBytes &+= bytes
        childSlots[index]!.lifetime.usage.outboundPackets &+= 1
        return number
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
        try childSlots[index]!.inboundWindow.commit(sequenceNumber)
        childSlots[index]!.lifetime.usage.inboundBytes &+= bytes
        childSlots[index]!.lifetime.usage.inboundPackets &+= 1
    }

    /// Turns the current counters of the Child SA in `slot` into a replicated change.
    public mutating func checkpointCounters(at slot: ChildSASlot) -> [StateChange] {
        guard let index = occupiedIndex(slot) else { return [] }
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
        if let offset = plan.clockOffset {
            for decision in plan.ikeSAs {
                guard let slot = ikeSAs.slot(of: decision.identifier) else { continue }
                ikeSAs.slots[slot]!.lifetime.rekeyAt = ikeSAs.slots[slot]!.lifetime.rekeyAt?.shifted(by: offset)
                ikeSAs.slots[slot]!.lifetime.reauthenticateAt = ikeSAs.slots[slot]!.lifetime.reauthenticateAt?.shifted(by: offset)
            }
        }
        for decision in plan.childSAs {
            guard let slot = spiIndex.slot(of: decision.inboundSPI) else { continue }
            let index = Int(slot)
            if let offset = plan.clockOffset { childSlots[index]!.lifetime = childSlots[index]!.lifetime.shifted(by: offset) }
            guard case .resume(let lastSent) = decision.outbound, case .restore(let policy) = decision.inbound else {
                retireForRekey(at: index)
                rekey.append(decision.inboundSPI)
                continue
            }
            let held = childSlots.withUnsafeBufferPointer { slots in
                (slots[index]!.outboundCounter, slots[index]!.inboundWindow.size, slots[index]!.inboundWindow.checkpoint)
            }
            do {
                let counter = try OutboundSequenceCounter(
                    extendedSequenceNumbers: held.0.extendedSequenceNumbers, lastSent: lastSent, softLimit: held.0.softLimit)
                let window = try ReplayWindow(
                    size: held.1, extendedSequenceNumbers: held.0.extendedSequenceNumbers, restoringFrom: held.2, policy: policy)
                childSlots[index]!.outboundCounter = counter
                childSlots[index]!.inboundWindow = window
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

    /// Applies a replicated IKE SA record (a standby's path for an upsert): installs the IKE SA
    /// when it is absent, replaces the one held when the record's generation is newer, keeping
    /// the list of Child SAs the state maintains. Throws ``GatewayStateError/staleChange(held:received:)``,
    /// changing nothing, for a record not newer than the IKE SA held.
    public mutating func upsertReplicated(_ sa: IKESA) throws(GatewayStateError) {
        guard let slot = ikeSAs.slot(of: sa.identifier) else {
            let slot = ikeSAs.insert(sa)
            ikeSAs.slots[slot]!.childSAs = []
            return
        }
        let held = ikeSAs.slots[slot]!.generation
        guard sa.generation > held else { throw .staleChange(held: held, received: sa.generation) }
        let children = ikeSAs.slots[slot]!.childSAs
        ikeSAs.slots[slot] = sa
        ikeSAs.slots[slot]!.childSAs = children
    }

    /// Applies a replicated Child SA record (a standby's path for an upsert): installs the
    /// Child SA when its inbound SPI is free, replaces the one held when the record's generation
    /// is newer; either way records it as checkpointed at `arrival` (keeping the rate measured
    /// before, if any), with one SPI lookup. Throws, changing nothing, for a stale record, a
    /// parent IKE SA or a policy it does not hold.
    public mutating func upsertReplicated(_ sa: ChildSA, arrivedAt arrival: Timestamp) throws(GatewayStateError) {
        guard let parent = ikeSAs.slot(of: sa.parent) else { throw .unknownParent(sa.parent) }
        if let slot = spiIndex.slot(of: sa.inboundSPI) {
            let index = Int(slot)
            let held = childSlots.withUnsafeBufferPointer { $0[index]!.generation }
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

    /// Applies one replicated counter checkpoint (what ``apply(_:)`` does for
    /// ``StateChange/countersAdvanced(_:generation:)``), in place and without building a change:
    /// the replica's per-checkpoint path. With `freshness`, also records it as
    /// ``recordCounterFreshness(_:inboundSPI:)`` would. Throws, changing nothing, for an unknown
    /// Child SA or a generation not above the one held.
    public mutating func applyCounterCheckpoint(
        _ checkpoint: ChildSACounterCheckpoint, generation: UInt64, freshness arrival: ChildSAFreshness? = nil
    ) throws(GatewayStateError) {
        guard let slot = spiIndex.slot(of: checkpoint.inboundSPI) else { throw .unknownChildSA(checkpoint.inboundSPI) }
        try adoptCounterCheckpoint(checkpoint, generation: generation, freshness: arrival, at: Int(slot))
    }

    /// The per-slot part of applying a checkpoint; `index` must hold a Child SA (the SPI index
    /// names only occupied slots).
    private mutating func adoptCounterCheckpoint(
        _ checkpoint: ChildSACounterCheckpoint, generation: UInt64, freshness arrival: ChildSAFreshness?, at index: Int
    ) throws(GatewayStateError) {
        // In place throughout: a copy of the Child SA would retain its references and share,
        // then copy, its replay ring.
        let adopted: Bool
        do { adopted = try childSlots[index]!.adopt(checkpoint, ifNewerThanHeld: generation) } catch { throw .childSA(error) }
        guard adopted else {
            throw .staleChange(held: childSlots.withUnsafeBufferPointer { $0[index]!.generation }, received: generation)
        }
        if let arrival { freshness[index] = arrival }
    }

    /// Applies a batch of replicated counter checkpoints as
    /// ``applyCounterCheckpoint(_:generation:freshness:)`` would one by one, recording each
    /// applied one as arrived at `arrival` with its measured rate (none when the rate is 0), and
    /// counts the outcomes. Entries that do not apply change nothing.
    ///
    /// A standby's per-batch path: it first finds every entry's slot, then touches every Child
    /// SA, then applies, so that the processor overlaps the cache misses of a batch that spans
    /// thousands of SAs instead of taking them one after another.
    public mutating func applyCounterCheckpoints(
        _ entries: [CounterCheckpointEntry], arrivedAt arrival: Timestamp
    ) -> CounterCheckpointOutcome {
        var outcome = CounterCheckpointOutcome()
        withUnsafeTemporaryAllocation(of: Int32.self, capacity: entries.count) { slots in
            for index in entries.indices {
                slots[index] = spiIndex.slot(of: entries[index].checkpoint.inboundSPI) ?? -1
            }
            childSlots.withUnsafeBufferPointer { childSlots in
                var touched: UInt64 = 0
                for slot in slots where slot >= 0 {
                    // The first and the last of the fields a checkpoint writes: between them,
                    // every cache line the update needs.
                    touched &+= childSlots[Int(slot)]!.generation &+ childSlots[Int(slot)]!.lifetime.usage.outboundPackets
                }
                // Keeps the loads from being optimised away.
                if touched == 1 { outcome.rejected &+= 0 }
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

    // MARK: Internals

    /// The array index of `slot` when it holds a Child SA.
    private func occupiedIndex(_ slot: ChildSASlot) -> Int? {
        let index = Int(slot.storage)
        return childSlots.indices.contains(index) && childSlots[index].isPresent ? index : nil
    }

    /// Installs `sa` in a free slot; `parent`, when known, is its parent's slot in `ikeSAs`
    /// (saving a second lookup).
    @discardableResult
    private mutating func install(_ sa: ChildSA, parent: Int? = nil) -> Int32 {
        let slot: Int32
        if let free = freeSlots.popLast() {
            slot = free
            childSlots[Int(slot)] = sa
            freshness[Int(slot)] = nil
        } else {
            slot = Int32(childSlots.count)
            childSlots.append(sa)
            incarnations.append(0)
            freshness.append(nil)
        }
        // In place once stored: a changed copy of the Child SA would be copied again to store it.
        Self.share(&childSlots[Int(slot)]!.localSelectors, with: &recentLocalSelectors)
        Self.share(&childSlots[Int(slot)]!.remoteSelectors, with: &recentRemoteSelectors)
        spiIndex.insert(sa.inboundSPI, slot: slot)
        if let parent {
            Self.insertSorted(sa.inboundSPI, into: &ikeSAs.slots[parent]!.childSAs)
        } else {
            withIKESA(sa.parent) { Self.insertSorted(sa.inboundSPI, into: &$0.childSAs) }
        }
        if let policy = sa.policy { childSAsByPolicy[policy, default: []].append(sa.inboundSPI) }
        return slot
    }

    /// Makes `selectors` share the arrays of `recent` when they are equal; otherwise they
    /// become the recent ones (``recentLocalSelectors``).
    private static func share(_ selectors: inout [TrafficSelector], with recent: inout [TrafficSelector]) {
        if selectors == recent { selectors = recent } else { recent = selectors }
    }

    private mutating func replace(slot: Int32, with sa: ChildSA) {
        let held = childSlots[Int(slot)]!
        if held.parent != sa.parent {
            withIKESA(held.parent) { Self.removeSorted(sa.inboundSPI, from: &$0.childSAs) }
            withIKESA(sa.parent) { Self.insertSorted(sa.inboundSPI, into: &$0.childSAs) }
        }
        if held.policy != sa.policy {
            if let old = held.policy { childSAsByPolicy[old]?.removeAll { $0 == sa.inboundSPI } }
            if let new = sa.policy { childSAsByPolicy[new, default: []].append(sa.inboundSPI) }
        }
        childSlots[Int(slot)] = sa
        incarnations[Int(slot)] &+= 1
    }

    private mutating func uninstall(slot: Int32) {
        let sa = childSlots[Int(slot)]!
        spiIndex.remove(sa.inboundSPI)
        withIKESA(sa.parent) { Self.removeSorted(sa.inboundSPI, from: &$0.childSAs) }
        if let policy = sa.policy { childSAsByPolicy[policy]?.removeAll { $0 == sa.inboundSPI } }
        childSlots[Int(slot)] = nil
        freshness[Int(slot)] = nil
        incarnations[Int(slot)] &+= 1
        freeSlots.append(slot)
    }

    /// Runs `body` on the IKE SA in place (nothing when it does not exist).
    @discardableResult
    private mutating func withIKESA<Result>(_ identifier: IKESAIdentifier, _ body: (inout IKESA) -> Result) -> Result? {
        guard let slot = ikeSAs.slot(of: identifier) else { return nil }
        return body(&ikeSAs.slots[slot]!)
    }

    /// The duplicated group (RFC 7296 section 2.8) the Child SA with this inbound SPI belongs to:
    /// the Child SAs of the same IKE SA with the same policy and selectors, when at least two
    /// members own one. Where a member owns several (a rekey in progress), the group names the
    /// one installed last. Nil for an unknown SPI or a Child SA without duplicates.
    public func duplicatedGroup(ofInboundSPI spi: UInt32) -> DuplicatedChildSAGroup? {
        guard let sa = childSA(inboundSPI: spi), let parent = ikeSAs[sa.parent] else { return nil }
        var members: [ClusterMemberID: (spi: UInt32, installedAt: Timestamp)] = [:]
        for sibling in parent.childSAs.compactMap(childSA(inboundSPI:))
        where sibling.policy == sa.policy && sibling.localSelectors == sa.localSelectors && sibling.remoteSelectors == sa.remoteSelectors {
            if let held = members[sibling.owner], held.installedAt.nanoseconds > sibling.lifetime.installedAt.nanoseconds { continue }
            members[sibling.owner] = (sibling.inboundSPI, sibling.lifetime.installedAt)
        }
        guard members.count >= 2 else { return nil }
        return DuplicatedChildSAGroup(
            parent: sa.parent, localSelectors: sa.localSelectors, remoteSelectors: sa.remoteSelectors,
            inboundSPIs: members.mapValues(\.spi))
    }

    private static func insertSorted(_ spi: UInt32, into list: inout [UInt32]) {
        list.insert(spi, at: list.sortedPosition(of: spi))
    }

    private static func removeSorted(_ spi: UInt32, from list: inout [UInt32]) {
        let position = list.sortedPosition(of: spi)
        if position < list.count, list[position] == spi { list.remove(at: position) }
    }

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

extension Optional {
    /// Whether a value is present, tested without copying it: `!= nil` on an `Equatable`
    /// wrapped type picks the `Equatable` operator, which copies both operands (a Child SA or
    /// an IKE SA, with a retain per reference it holds).
    var isPresent: Bool {
        if case .some = self { return true }
        return false
    }
}

/// How a batch of counter checkpoints fared (``GatewayState/applyCounterCheckpoints(_:arrivedAt:)``).
public struct CounterCheckpointOutcome: Sendable, Hashable {
    /// Applied.
    public var applied = 0
    /// Not newer than the generation held; ignored.
    public var stale = 0
    /// For an unknown Child SA, or outside its sequence space; ignored.
    public var rejected = 0

    /// No outcome yet.
    public init() {}
}

/// Child SAs of one IKE SA with identical traffic selectors, one per active member of a
/// load-sharing cluster (RFC 7296 section 2.8 lets a peer hold several): each member sends on
/// its own, with its own outbound counter and replay window, so that no counter needs to be
/// synchronised between members; the peer may send on any of them. Returned by
/// ``GatewayState/duplicatedGroup(ofInboundSPI:)``; see `Docs/LoadSharing.md` for when to prefer
/// it to sticky ownership.
public struct DuplicatedChildSAGroup: Sendable, Hashable {
    /// The IKE SA they were negotiated under.
    public let parent: IKESAIdentifier
    /// The selectors they share.
    public let localSelectors: [TrafficSelector]
    /// The selectors they share.
    public let remoteSelectors: [TrafficSelector]
    /// Each member's Child SA, by inbound SPI.
    public let inboundSPIs: [ClusterMemberID: UInt32]

    /// The members with a Child SA in the group, ascending.
    public var members: [ClusterMemberID] { inboundSPIs.keys.sorted() }
}
