public import IPsecHACore

/// An exchange known to be under way on an IKE SA.
public struct InFlightExchange: Sendable, Hashable {
    /// The IKE SA.
    public var ikeSA: IKESAIdentifier
    /// The exchange's message ID.
    public var messageID: UInt32
    /// Whether the active member initiated it (else the peer did).
    public var initiatedHere: Bool

    /// An exchange from its parts.
    public init(ikeSA: IKESAIdentifier, messageID: UInt32, initiatedHere: Bool) {
        self.ikeSA = ikeSA
        self.messageID = messageID
        self.initiatedHere = initiatedHere
    }
}

/// Counters of a replica.
public struct ReplicaStatistics: Sendable, Hashable {
    /// Records applied.
    public var applied: UInt64 = 0
    /// Records older than what was held, ignored (never applied).
    public var stale: UInt64 = 0
    /// Records that did not fit the state (an SA that does not exist...), ignored.
    public var rejected: UInt64 = 0
    /// Bulk resyncs completed.
    public var resyncsCompleted: UInt64 = 0
    /// Bulk resyncs whose end counts did not match what arrived.
    public var resyncsIncomplete: UInt64 = 0
}

/// The standby's side of replication: applies records to its own gateway state, never an
/// older record over a newer one, and keeps what a takeover needs to know: whether it is a
/// complete copy (``isReady``), which exchanges were in flight, and when each IKE SA was last
/// updated.
public struct Replica {
    /// The replicated state.
    public private(set) var state: GatewayState
    /// True once a bulk resync completed (and until another one starts): the replica holds a
    /// complete copy and may count as a standby.
    public private(set) var isReady = false
    /// Exchanges started and not yet finished.
    public private(set) var inFlight: Set<InFlightExchange> = []
    /// When an IKE SA's record was last applied: the time of the record itself when it came
    /// after the last bulk resync began, the time that resync began otherwise (a resync applies
    /// a hundred thousand records within a second, and a time each is not worth a table entry
    /// each); nil for an IKE SA the replica does not hold.
    public func lastUpdate(of identifier: IKESAIdentifier) -> Timestamp? {
        guard state.ikeSAs.contains(identifier) else { return nil }
        return updatedSinceResync[identifier] ?? resyncBegan
    }
    private var updatedSinceResync: [IKESAIdentifier: Timestamp] = [:]
    private var resyncBegan: Timestamp?
    /// The replica's counters.
    public private(set) var statistics = ReplicaStatistics()
    private var resyncInProgress: UInt32?

    /// Since when the channel knows records from the active member are missing (nil: none).
    /// While a gap is open every SA may have missed an update, since records are delivered in
    /// order and nothing after the gap has been applied.
    public private(set) var missingSince: Timestamp?
    /// The last time records from the active member were applied while no gap was known (its
    /// heartbeats count): until then the replica held everything the active member had sent,
    /// so an SA that sent no checkpoint was idle up to then. A takeover sizes the outbound
    /// advance from it.
    public private(set) var completeAsOf: Timestamp?
    /// This member's clock minus the active member's, in nanoseconds, from the last heartbeat
    /// (its send time against its arrival; the link's delay makes it a little late, which
    /// moves lifetimes later by as much). A takeover moves the replicated lifetimes by it.
    public private(set) var activeClockOffset: Int64?
    /// The active member's latest measure of the synch channel's round trip to this member
    /// (``SyncRecord/synchDelay(roundTrip:)``): a bound on how long a checkpoint took from
    /// its making to its arrival here, from which a takeover sizes its staleness margin
    /// (`TakeoverPolicy.measuredMarginFloor` in IPsecHACore). Nil until one arrived since the
    /// last bulk resync began (the policy's fixed margin applies meanwhile).
    public private(set) var activeSynchDelay: Duration?

    /// The takeover plan if this replica's member took over at `now` (see `TakeoverPlanner` in
    /// IPsecHACore): exchanges in flight from the replicated records, every IKE SA suspect while
    /// the replica may have missed updates.
    /// With `restrictedTo`, the plan covers only those IKE SAs and their Child SAs.
    public func takeoverPlan(
        policy: TakeoverPolicy = TakeoverPolicy(), now: Timestamp, restrictedTo restriction: Set<IKESAIdentifier>? = nil
    ) -> TakeoverPlan {
        var inFlightSAs: [IKESAIdentifier: Bool] = [:]
        for exchange in inFlight { inFlightSAs[exchange.ikeSA] = (inFlightSAs[exchange.ikeSA] ?? false) || exchange.initiatedHere }
        let suspect: SuspectIKESAs = mayHaveMissedAnyUpdates ? .all : .none
        var plan = TakeoverPlanner.plan(
            state: state, inFlight: inFlightSAs, suspect: suspect, policy: policy, now: now, restrictedTo: restriction,
            completeAsOf: completeAsOf, synchDelay: activeSynchDelay)
        plan.clockOffset = activeClockOffset
        return plan
    }

    /// Applies the counter checkpoints among `records`, the records the channel holds behind a
    /// gap (``SyncChannel/recordsHeldBehindGap(from:)``), and nothing else: at takeover they
    /// are the freshest counters there are, and applying them out of order is safe (each is
    /// refused unless newer than the SA's generation, and counters only move forward). Other
    /// records need the ones missing before them. Call it just before ``takeoverPlan(policy:now:restrictedTo:)``.
    public mutating func applyHeldCheckpoints(_ records: [SyncRecord], now: Timestamp) {
        let arrival = missingSince.map { min($0, now) } ?? now
        for case .counterCheckpoints(let entries) in records { applyCheckpoints(entries, arrivedAt: arrival) }
    }

    /// IKE SAs that records referred to but the replica does not hold: a sign of updates it
    /// missed. ``takeResyncRequest()`` turns them into a request to the active member.
    public private(set) var missingIKESAs: Set<IKESAIdentifier> = []

    /// At most this many missing IKE SAs are remembered; one more asks for everything instead.
    public static let missingIKESALimit = 4_096
    private var missedTooMany = false

    private mutating func noteMissing(_ identifier: IKESAIdentifier) {
        guard missingIKESAs.count < Self.missingIKESALimit else {
            missedTooMany = true
            return
        }
        missingIKESAs.insert(identifier)
    }

    /// A request for the IKE SAs the replica found missing (at most 256 at a time), for
    /// everything when it lost track of more than ``missingIKESALimit``, or nil.
    public mutating func takeResyncRequest() -> SyncRecord? {
        if missedTooMany {
            missedTooMany = false
            missingIKESAs = []
            return .resyncRequest(.everything)
        }
        guard !missingIKESAs.isEmpty else { return nil }
        let named = Array(missingIKESAs.sorted().prefix(256))
        missingIKESAs.subtract(named)
        return .resyncRequest(.ikeSAs(named))
    }

    /// Whether a bulk resync has begun and not yet ended.
    public var isResyncing: Bool { resyncInProgress != nil }

    /// Takes the channel's view of missing records (``SyncChannel/missingSince(from:)``).
    public mutating func observe(missingSince: Timestamp?) { self.missingSince = missingSince }

    /// Whether updates of this IKE SA (or its Child SAs) may have been missed: the replica is not
    /// a complete copy, or records are known to be missing. A takeover classifies such SAs as
    /// suspect.
    public func mayHaveMissedUpdates(of identifier: IKESAIdentifier) -> Bool {
        mayHaveMissedAnyUpdates
    }

    /// Whether updates of any SA may have been missed: the replica is not a complete copy, or
    /// records are known to be missing (since records are applied in order, nothing after a gap
    /// has been, so every SA is concerned).
    public var mayHaveMissedAnyUpdates: Bool { !isReady || missingSince != nil }

    /// An empty, not yet ready replica.
    public init(spdCacheCapacity: Int = 65_536) {
        state = GatewayState(spdCacheCapacity: spdCacheCapacity)
    }

    /// The hello a joining or restarted standby sends until it is ready.
    public func hello(epoch: UInt32) -> SyncRecord {
        .hello(epoch: epoch, capabilities: 0, needsResync: !isReady)
    }

    /// Applies records delivered by the channel, in order. While a gap is known
    /// (``observe(missingSince:)``), what arrives counts as of the gap's start: it may be a
    /// retransmission, or wait behind one, and a checkpoint's age must include that delay.
    public mutating func apply(_ records: [SyncRecord], now: Timestamp) {
        for record in records {
            switch record {
            case .heartbeat(_, let sentAt): activeClockOffset = Int64(truncatingIfNeeded: now.nanoseconds &- sentAt.nanoseconds)
            case .synchDelay(let roundTrip): activeSynchDelay = roundTrip
            // A resync copies from whoever is active now, perhaps another member over a slower
            // link: the former one's measure says nothing of it. In order, so that a measure
            // sent with the resync counts.
            case .resyncBegin: activeSynchDelay = nil
            default: continue
            }
        }
        touchSPIIndex(for: records)
        guard let gap = missingSince, gap < now else {
            completeAsOf = now
            for record in records { apply(record, now: now) }
            return
        }
        for record in records { apply(record, now: gap) }
    }

    /// Warms the SPI index for the Child SA upserts among `records` (``GatewayState/touchSPIIndex(for:)``).
    private mutating func touchSPIIndex(for records: [SyncRecord]) {
        guard records.count > 1 else { return }
        withUnsafeTemporaryAllocation(of: UInt32.self, capacity: records.count) { spis in
            var count = 0
            for case .childSAUpsert(let sa) in records {
                spis[count] = sa.inboundSPI
                count += 1
            }
            if count > 1 { state.touchSPIIndex(for: UnsafeBufferPointer(rebasing: spis[..<count])) }
        }
    }

    private mutating func apply(_ record: SyncRecord, now: Timestamp) {
        switch record {
        case .hello, .heartbeat, .acknowledgement, .negativeAcknowledgement, .resyncRequest, .ownershipBeacon, .segmentClaims, .protocolVersions, .relayedDatagram, .synchDelay, .unknown:
            return
        case .resyncBegin(let id, _, let ikeSAs, let childSAs, _):
            state = GatewayState(spdCacheCapacity: state.spdCacheCapacity, localMember: state.localMember)
            state.reserveCapacity(ikeSAs: Int(ikeSAs), childSAs: Int(childSAs))
            missingIKESAs = []
            missedTooMany = false
            inFlight = []
            updatedSinceResync = [:]
            resyncBegan = now
            isReady = false
            resyncInProgress = id
        case .resyncEnd(let id, let ikeSAs, let childSAs, let policies):
            guard resyncInProgress == id else { return }
            resyncInProgress = nil
            if state.ikeSAs.count == Int(ikeSAs), state.childSACount == Int(childSAs), state.spd.policies.count == Int(policies) {
                isReady = true
                statistics.resyncsCompleted += 1
            } else {
                statistics.resyncsIncomplete += 1
            }
        case .policyUpsert(let policy, let position):
            if state.spd.policy(policy.id) != nil { _ = try? state.removePolicy(policy.id) }
            count(.policyInstalled(policy, position: min(Int(position), state.spd.policies.count)))
        case .policyDelete(let id):
            count(.policyRemoved(id))
        case .ikeSAUpsert(let sa):
            // Called directly, not through count(_:): a closure over the SA made a copy of it.
            // Consumed, the one copy out of the record moves into the state (used after the
            // call, it was copied once more: callgrind, resync, 12,145 -> 11,809 a Child SA
            // for the same change below).
            let identifier = sa.identifier
            do {
                try state.upsertReplicated(consume sa)
                statistics.applied += 1
                noteUpdate(of: identifier, now: now)
                if !missingIKESAs.isEmpty { missingIKESAs.remove(identifier) }
            } catch {
                countFailure(error)
            }
        case .ikeSADelete(let identifier):
            if count(.ikeSADeleted(identifier)) {
                updatedSinceResync[identifier] = nil
                inFlight = inFlight.filter { $0.ikeSA != identifier }
            }
        case .childSAUpsert(let sa):
            let parent = sa.parent
            do {
                try state.upsertReplicated(consume sa, arrivedAt: now)
                statistics.applied += 1
            } catch {
                countFailure(error)
                if !state.ikeSAs.contains(parent) { noteMissing(parent) }
            }
        case .childSADelete(let spi):
            count(.childSADeleted(inboundSPI: spi))
        case .counterCheckpoints(let entries):
            applyCheckpoints(entries, arrivedAt: now)
        case .messageIDUpdate(let identifier, let generation, let snapshot):
            guard state.ikeSAs.contains(identifier) else {
                statistics.rejected += 1
                noteMissing(identifier)
                return
            }
            if count(.messageIDsUpdated(identifier, generation: generation, snapshot)) { noteUpdate(of: identifier, now: now) }
        case .ownershipChange(let identifier, let owner, let generation):
            updateIKESA(identifier, generation: generation, now: now) { $0.owner = owner }
        case .exchangeStarted(let identifier, let messageID, let initiatedHere):
            // Bounded by what an honest active member can have under way (a window per IKE SA
            // each way, with room); beyond, a member gone wrong is ignored and counted.
            guard inFlight.count < 4 * state.ikeSAs.count + 1_024 else {
                statistics.rejected += 1
                return
            }
            inFlight.insert(InFlightExchange(ikeSA: identifier, messageID: messageID, initiatedHere: initiatedHere))
        case .exchangeFinished(let identifier, let messageID, let initiatedHere):
            inFlight.remove(InFlightExchange(ikeSA: identifier, messageID: messageID, initiatedHere: initiatedHere))
        }
    }

    /// Applies counter checkpoints and counts how they fared.
    private mutating func applyCheckpoints(_ entries: [CounterCheckpointEntry], arrivedAt arrival: Timestamp) {
        let outcome = state.applyCounterCheckpoints(entries, arrivedAt: arrival)
        statistics.applied += UInt64(outcome.applied)
        statistics.stale += UInt64(outcome.stale)
        statistics.rejected += UInt64(outcome.rejected)
    }

    /// Applies a replicated partial update of an IKE SA as a whole-record update at `generation`.
    private mutating func updateIKESA(
        _ identifier: IKESAIdentifier, generation: UInt64, now: Timestamp, _ body: (inout IKESA) -> Void
    ) {
        guard var sa = state.ikeSAs[identifier] else {
            statistics.rejected += 1
            noteMissing(identifier)
            return
        }
        body(&sa)
        sa.generation = generation
        if count(.ikeSAUpdated(sa)) { noteUpdate(of: identifier, now: now) }
    }

    private mutating func noteUpdate(of identifier: IKESAIdentifier, now: Timestamp) {
        if resyncInProgress == nil { updatedSinceResync[identifier] = now }
    }

    /// Applies one change and counts the outcome; true when it was applied.
    @discardableResult
    private mutating func count(_ change: StateChange) -> Bool {
        count { (state: inout GatewayState) throws(GatewayStateError) in try state.apply(change) }
    }

    /// Runs one mutation of the state and counts the outcome; true when it was applied.
    @discardableResult
    private mutating func count(_ body: (inout GatewayState) throws(GatewayStateError) -> Void) -> Bool {
        do {
            try body(&state)
            statistics.applied += 1
            return true
        } catch {
            countFailure(error)
            return false
        }
    }

    /// Counts a change that did not apply: stale, or rejected.
    private mutating func countFailure(_ error: GatewayStateError) {
        if case .staleChange = error { statistics.stale += 1 } else { statistics.rejected += 1 }
    }
}
