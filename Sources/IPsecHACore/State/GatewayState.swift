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
    public internal(set) var spd = SecurityPolicyDatabase()
    /// The IKE SAs by SPI pair.
    public internal(set) var ikeSAs = IKESATable()

    @usableFromInline var childSlots = SlotChunks<ChildSA>()
    /// Bumped whenever a slot's Child SA is deleted or changed, so cache entries can tell.
    @usableFromInline var incarnations: [UInt32] = []
    /// Per slot, what a standby knows of the Child SA's last counter checkpoint. A side table
    /// rather than a dictionary by SPI: the replica writes it once per checkpoint and the
    /// takeover planner reads it once per Child SA, both in the same pass as the slot.
    var freshness: [ChildSAFreshness?] = []
    /// Per slot, the inbound SPI of its Child SA (0, which RFC 4303 reserves, for an empty
    /// slot): a standby finds where a checkpoint goes by comparing 4 dense bytes, not by
    /// reading the Child SA (``applyCounterCheckpoints(_:arrivedAt:)``).
    var slotSPIs: [UInt32] = []
    /// Per slot, one bit: the Child SA's counters may have moved since its last checkpoint (a
    /// packet, an observation, an installation or a change). The active member's checkpoint
    /// scan visits only these (``visitChildSACountersMoved(_:)``): most Child SAs of a large
    /// state are idle, and visiting each five times per checkpoint interval took 27 ms for
    /// 2,000,000 of them, every 10 ms. Not part of equality.
    var countersMoved: [UInt64] = []
    var freeSlots: [Int32] = []
    /// The selectors of the Child SA installed last. Child SAs installed one after another
    /// often have equal selectors (a site's subnets, a remote-access gateway's local side): one
    /// that does shares these arrays instead of keeping two allocations of its own, which a
    /// standby filled by a bulk resync would otherwise hold a million times (and touch as
    /// fresh memory). Not part of equality.
    private var recentLocalSelectors: [TrafficSelector] = []
    private var recentRemoteSelectors: [TrafficSelector] = []
    @usableFromInline var spiIndex = SPIIndex()
    /// The parent's slot of the Child SA replicated last. A bulk resync sends Child SAs in slot
    /// order, which is mostly the order they were made in, IKE SA after IKE SA: the next one's
    /// parent is mostly this one or the next (``upsertReplicated(_:arrivedAt:)``). Not part of
    /// equality.
    var recentParentSlot = 0
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
        slotSPIs.reserveCapacity(childCount)
        countersMoved.reserveCapacity((childCount + 63) / 64)
        spiIndex.reserveCapacity(childCount)
    }

    // MARK: Internals

    /// The array index of `slot` when it holds a Child SA.
    @inlinable
    func occupiedIndex(_ slot: ChildSASlot) -> Int? {
        let index = Int(slot.storage)
        return childSlots.indices.contains(index) && childSlots.hasValue(at: index) ? index : nil
    }

    /// How many chunks of Child SA slots and of IKE SA slots (16,384 each) this state still
    /// shares with `other`, a copy of it such as a bulk resync's snapshot: a change copies only
    /// the chunk it falls in.
    package func slotChunksShared(with other: GatewayState) -> (childSAs: Int, ikeSAs: Int) {
        (childSlots.chunksShared(with: other.childSlots), ikeSAs.slots.chunksShared(with: other.ikeSAs.slots))
    }

    /// Installs `sa` in a free slot; `parent`, when known, is its parent's slot in `ikeSAs`
    /// (saving a second lookup).
    @discardableResult
    /// Consuming, and stored as its last use: a standby installs every Child SA of a resync
    /// this way, and storing a borrowed one copied it (retaining each reference it holds).
    mutating func install(_ sa: consuming ChildSA, parent: Int? = nil) -> Int32 {
        let spi = sa.inboundSPI
        let parentIdentifier = sa.parent
        let policy = sa.policy
        // Before it is stored: through the stored optional, each share cost a copy of the
        // Child SA (callgrind, resync: 58 instructions a Child SA).
        Self.share(&sa.localSelectors, with: &recentLocalSelectors)
        Self.share(&sa.remoteSelectors, with: &recentRemoteSelectors)
        let slot: Int32
        if let free = freeSlots.popLast() {
            slot = free
            childSlots[Int(slot)] = consume sa
            freshness[Int(slot)] = nil
            slotSPIs[Int(slot)] = spi
        } else {
            slot = Int32(childSlots.count)
            childSlots.append(consume sa)
            incarnations.append(0)
            freshness.append(nil)
            slotSPIs.append(spi)
            if Int(slot) &>> 6 >= countersMoved.count { countersMoved.append(0) }
        }
        markCountersMoved(Int(slot))
        spiIndex.insert(spi, slot: slot)
        if let parent {
            Self.insertSorted(spi, into: &ikeSAs.slots[parent]!.childSAs)
        } else {
            withIKESA(parentIdentifier) { Self.insertSorted(spi, into: &$0.childSAs) }
        }
        if let policy { childSAsByPolicy[policy, default: []].append(spi) }
        return slot
    }

    /// Makes `selectors` share the arrays of `recent` when they are equal; otherwise they
    /// become the recent ones (``recentLocalSelectors``).
    static func share(_ selectors: inout [TrafficSelector], with recent: inout [TrafficSelector]) {
        if selectors == recent { selectors = recent } else { recent = selectors }
    }

    mutating func replace(slot: Int32, with sa: ChildSA) {
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
        markCountersMoved(Int(slot))
    }

    /// Notes that the counters of the Child SA at `index` may have moved since its last
    /// checkpoint (the slot exists: its word was added with it).
    @inline(__always)
    mutating func markCountersMoved(_ index: Int) {
        let word = index &>> 6, bit: UInt64 = 1 &<< UInt64(index & 63)
        // Read first: mostly marked already (every packet after the first since a checkpoint),
        // and a read skips the write's uniqueness check (Benchmarks, nextOutboundSequenceNumber:
        // 37 ns without marks, 40 with a write each time, 39 like this).
        if countersMoved[word] & bit == 0 { countersMoved[word] |= bit }
    }

    /// Notes that the Child SA at `index` has no counters moved since its last checkpoint.
    @inline(__always)
    mutating func clearCountersMoved(_ index: Int) {
        countersMoved[index &>> 6] &= ~(1 &<< UInt64(index & 63))
    }

    mutating func uninstall(slot: Int32) {
        let sa = childSlots[Int(slot)]!
        spiIndex.remove(sa.inboundSPI)
        withIKESA(sa.parent) { Self.removeSorted(sa.inboundSPI, from: &$0.childSAs) }
        if let policy = sa.policy { childSAsByPolicy[policy]?.removeAll { $0 == sa.inboundSPI } }
        childSlots[Int(slot)] = nil
        freshness[Int(slot)] = nil
        slotSPIs[Int(slot)] = 0
        incarnations[Int(slot)] &+= 1
        clearCountersMoved(Int(slot))
        freeSlots.append(slot)
    }

    /// Runs `body` on the IKE SA in place (nothing when it does not exist).
    @discardableResult
    mutating func withIKESA<Result>(_ identifier: IKESAIdentifier, _ body: (inout IKESA) -> Result) -> Result? {
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

    static func insertSorted(_ spi: UInt32, into list: inout [UInt32]) {
        let position = list.sortedPosition(of: spi)
        // Array.insert goes through the generic replaceSubrange, about 70 instructions more.
        if position == list.endIndex { list.append(spi) } else { list.insert(spi, at: position) }
    }

    static func removeSorted(_ spi: UInt32, from list: inout [UInt32]) {
        let position = list.sortedPosition(of: spi)
        if position < list.count, list[position] == spi { list.remove(at: position) }
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
