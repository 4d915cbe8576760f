/// Computes the takeover plan of a standby from its replicated state (design, "Failover"):
/// classification of every IKE SA, the outbound counter jump and inbound window policy of every
/// Child SA, and what to do with each IKE SA's message IDs, each with its reason.
public enum TakeoverPlanner {
    /// The plan at time `now`.
    ///
    /// - Parameters:
    ///   - state: the standby's replicated gateway state.
    ///   - inFlight: IKE SAs with an exchange under way, and whether this side initiated it.
    ///   - suspect: IKE SAs whose updates may have been missed (``SuspectIKESAs/all`` while the
    ///     replica is not a complete copy or a gap in the synch stream is open).
    ///   - policy: the minimum advance and the inbound window policy.
    ///   - now: the time of the takeover (checkpoint ages are measured to it).
    ///   - restriction: when given, plan only these IKE SAs and their Child SAs (a load-sharing
    ///     member that takes over one segment of a failed member's SAs); identifiers the state
    ///     does not hold are ignored.
    ///   - completeAsOf: the last time the standby knew it held everything the failed member
    ///     had sent (no gap in the synch stream); nil when unknown.
    ///   - synchDelay: the longest time the failed member measured a checkpoint to take from
    ///     its making to its arrival (the synch channel's round trip); the staleness margin
    ///     is sized from it when the policy says so (``TakeoverPolicy/stalenessMargin(synchDelay:)``).
    ///
    /// Each Child SA's advance is sized from the freshness the state recorded for it
    /// (``GatewayState/recordCounterFreshness(_:inboundSPI:)``): when its last checkpoint
    /// arrived and the rate then measured, times the suspect factor when it is suspect. The
    /// outbound advance is at least ``TakeoverPolicy/maximumPacketsPerSecond`` times the time
    /// since the later of that checkpoint and `completeAsOf` (an idle SA sends no checkpoints,
    /// but while the stream was complete it sent nothing unreported) plus the margin.
    public static func plan(
        state: GatewayState, inFlight: [IKESAIdentifier: Bool], suspect: SuspectIKESAs,
        policy: TakeoverPolicy = TakeoverPolicy(), now: Timestamp, restrictedTo restriction: Set<IKESAIdentifier>? = nil,
        completeAsOf: Timestamp? = nil, synchDelay: Duration? = nil
    ) -> TakeoverPlan {
        // The table's slots, read in place: nil where an IKE SA was removed.
        let ikeSAs = state.ikeSAs.slots
        let slotCount = state.childSlots.count
        // With a restriction, the slots of the Child SAs planned.
        var includedSlots = restriction.map { _ in [Bool](repeating: false, count: slotCount) }
        // What a Child SA needs of its IKE SA, by slot: filled from each IKE SA's list of
        // children, so that no Child SA hashes its parent's identifier.
        var parentIsSuspect = [Bool](repeating: false, count: slotCount)
        var parentSyncsReplayCounters = [Bool](repeating: false, count: slotCount)
        var classifications: [IKESAClassification] = []
        classifications.reserveCapacity(ikeSAs.count)
        let replayCounterSyncPolicy = policy.inbound == .replayCounterSyncWhereNegotiated
        // By index, field by field through the slot's address: binding each value would copy
        // the IKE SA and retain every reference it holds, and each `ikeSAs[index]!` copied it too.
        ikeSAs.forEachValue { _, sa in
            let identifier = sa.pointee.identifier
            if let restriction {
                guard restriction.contains(identifier) else { return }
                for spi in sa.pointee.childSAs {
                    if let slot = state.spiIndex.slot(of: spi) { includedSlots![Int(slot)] = true }
                }
            }
            let isSuspect = suspect.contains(identifier)
            classifications.append(isSuspect ? .suspect : !inFlight.isEmpty && inFlight[identifier] != nil ? .inFlight : .certain)
            let syncsReplayCounters = replayCounterSyncPolicy && sa.pointee.extensions.replayCounterSync
            guard isSuspect || syncsReplayCounters else { return }
            for spi in sa.pointee.childSAs {
                guard let slot = state.spiIndex.slot(of: spi) else { continue }
                parentIsSuspect[Int(slot)] = isSuspect
                parentSyncsReplayCounters[Int(slot)] = syncsReplayCounters
            }
        }

        var childPlans: [ChildSATakeover] = []
        childPlans.reserveCapacity(state.childSACount)
        // Only a replay-counter delta in a message-ID sync needs an IKE SA's largest advance.
        var advanceBySlot = [UInt64](repeating: 0, count: replayCounterSyncPolicy ? slotCount : 0)
        let margin = policy.stalenessMargin(synchDelay: synchDelay)
        let stalenessMargin = margin.nonNegativeNanoseconds
        state.forEachChildSACounters { sa in
            let slot = sa.slot.index
            if let includedSlots, !includedSlots[slot] { return }
            let suspectSA = parentIsSuspect[slot]
            // The measured advance (what the SA was doing) and the outbound one (what it could
            // have done since the standby last knew).
            let measured: UInt64
            var advance: UInt64
            var reason = ChildSATakeoverReason(
                checkpointAge: nil, packetsPerSecond: nil, suspect: suspectSA, outboundLimitReached: false, inboundLimitReached: false)
            if let known = sa.freshness, let rate = known.packetsPerSecond {
                let stale = elapsed(since: known.lastCheckpoint, until: now)
                let expected = multiplyDivide(rate, saturatingAdd(stale, stalenessMargin), 1_000_000_000)
                let base = max(policy.minimumAdvance, expected)
                measured = suspectSA ? saturatingMultiply(base, policy.suspectFactor) : base
                advance = measured
                if let maximum = policy.maximumPacketsPerSecond {
                    let known = completeAsOf.map { max($0, known.lastCheckpoint) } ?? known.lastCheckpoint
                    let unaccounted = saturatingAdd(elapsed(since: known, until: now), stalenessMargin)
                    advance = max(advance, multiplyDivide(maximum, unaccounted, 1_000_000_000))
                }
                reason.checkpointAge = .nanoseconds(Int64(clamping: stale))
                reason.packetsPerSecond = rate
            } else {
                measured = policy.unknownAdvance
                advance = policy.unknownAdvance
            }
            let hardLimit = sa.hardLimit
            let lastSent = sa.lastSent
            let outboundAdvance = saturatingAdd(advance, policy.outboundOffset)
            let outbound: OutboundTakeover
            // Counted from the lowest number the peer may last have seen: earlier takeovers'
            // jumps may not have reached it yet (torture seed 6291: two blind takeovers in turn,
            // the first dying before it sent, 2^32 in all). Which jumps it saw is not known, so
            // every jump counts (`lastSent` less the packets sent): a Child SA that jumped far
            // over its life is rekeyed sooner, never one the peer would fail.
            let inferable = TakeoverPolicy.peerFollows(
                advance: outboundAdvance, lastSent: lastSent, packetsSent: sa.outboundPackets, extendedSequenceNumbers: sa.extendedSequenceNumbers)
            if lastSent > hardLimit - min(outboundAdvance, hardLimit) || !inferable {
                outbound = .rekey
                reason.outboundLimitReached = true
            } else {
                outbound = .resume(lastSent: lastSent + outboundAdvance)
            }
            let top = sa.inboundTop
            let inboundLimit = sa.extendedSequenceNumbers ? UInt64.max : UInt64(UInt32.max)
            // The peer jumps by the outbound advance when asked (RFC 6311), the member's offset
            // included: two members that took over in turn from the same copy, the second not
            // told of the first (a synch delay longer than keepalived's election), would
            // otherwise both move their windows to the same top, and the second would accept
            // replays of what the first accepted above it (torture seed 471). The jump costs
            // nothing. A conservative window moves by the measured advance only, since its
            // advance drops the peer's packets.
            let syncsWithPeer = policy.inbound == .replayCounterSyncWhereNegotiated && parentSyncsReplayCounters[slot]
            let inboundAdvance = syncsWithPeer ? outboundAdvance : measured
            let inbound: InboundTakeover
            if top > inboundLimit - min(inboundAdvance, inboundLimit) {
                inbound = .rekey
                reason.inboundLimitReached = true
            } else if policy.inbound == .permissiveUnsafe {
                inbound = .restore(.permissiveUnsafe)
            } else {
                inbound = .restore(syncsWithPeer ? .replayCounterSync(delta: outboundAdvance) : .conservative(advance: measured))
            }
            if replayCounterSyncPolicy { advanceBySlot[slot] = outboundAdvance }
            childPlans.append(
                ChildSATakeover(inboundSPI: sa.inboundSPI, parent: sa.parent, outbound: outbound, inbound: inbound, advance: outboundAdvance, reason: reason))
        }

        var ikePlans: [IKESATakeover] = []
        ikePlans.reserveCapacity(ikeSAs.count)
        // Plans of IKE SAs rekeyed from one still held, and that one.
        var rekeys: [(plan: Int, predecessor: IKESAIdentifier)] = []
        var position = 0
        ikeSAs.forEachValue { _, sa in
            let identifier = sa.pointee.identifier
            if let restriction, !restriction.contains(identifier) { return }
            let classification = classifications[position]
            position += 1
            let next = sa.pointee.messageIDs.requests.nextMessageID
            let expected = sa.pointee.messageIDs.responses.nextExpectedMessageID
            let extensions = sa.pointee.extensions
            let plan: MessageIDTakeover
            let reason: IKESATakeoverReason
            // The Child SAs' windows expect the peer to jump its counters (RFC 6311 section 5.2):
            // even an exact IKE SA needs the exchange that tells it.
            let carriesReplayCounterSync = replayCounterSyncPolicy && extensions.replayCounterSync && extensions.messageIDSync
            if classification == .certain, !carriesReplayCounterSync {
                plan = .exact(nextRequestID: next, nextExpectedRequestID: expected)
                reason = .nothingInFlightNothingMissed
            } else if extensions.messageIDSync {
                // M1 above anything the failed member may have used: by at least the peer's
                // window (RFC 6311 section 5.1); P1 the next request expected from the peer.
                let send = next + UInt64(max(sa.pointee.messageIDs.requests.peerWindowSize, 1))
                if send <= UInt64(UInt32.max), expected <= UInt64(UInt32.max) {
                    var delta: UInt64?
                    if extensions.replayCounterSync && replayCounterSyncPolicy {
                        for spi in sa.pointee.childSAs {
                            guard let slot = state.spiIndex.slot(of: spi) else { continue }
                            delta = max(delta ?? 0, advanceBySlot[Int(slot)])
                        }
                    }
                    plan = .messageIDSync(send: UInt32(send), receive: UInt32(expected), replayCounterDelta: delta)
                    reason =
                        switch classification {
                        case .inFlight: .exchangeInFlightSync
                        case .suspect: .missedSynchSync
                        case .certain: .replayCounterSyncOnly
                        }
                } else {
                    plan = .deleteAndReestablish
                    reason = .messageIDsExhausted
                }
            } else if classification == .inFlight, inFlight[identifier] == false {
                plan = .awaitPeerRetransmission(nextRequestID: next, nextExpectedRequestID: expected)
                reason = .peerRequestInFlight
            } else {
                plan = .deleteAndReestablish
                reason = classification == .inFlight ? .ownRequestInFlight : .missedSynchWithoutSync
            }
            // A rekey the peer may not have seen: its predecessor is still there and the peer has
            // not used this IKE SA yet (nothing asked of it, nothing it answered).
            var unconfirmedRekey: IKESAIdentifier?
            if let old = sa.pointee.rekeyedFrom, state.ikeSAs.contains(old) {
                rekeys.append((ikePlans.count, old))
                if expected == 0, next == 0, sa.pointee.messageIDs.requests.outstanding.isEmpty { unconfirmedRekey = old }
            }
            ikePlans.append(
                IKESATakeover(
                    identifier: identifier, classification: classification, messageIDs: plan, reason: reason,
                    unconfirmedRekey: unconfirmedRekey))
        }
        if !rekeys.isEmpty { shareReplayCounterDeltas(rekeys, across: &ikePlans) }
        return TakeoverPlan(ikeSAs: ikePlans, childSAs: childPlans, stalenessMargin: margin)
    }

    /// An IKE SA rekeyed while its predecessor is still held: the Child SAs sit under the new
    /// one here, but the peer holds them under whichever IKE SA it believes current (the old
    /// one if the rekey's answer never reached it), and applies an RFC 6311 replay-counter
    /// delta to the Child SAs of the IKE SA the sync arrived on. Both syncs carry the larger
    /// delta, so that the jump reaches the Child SAs either way (on the other IKE SA the peer
    /// holds none of them).
    private static func shareReplayCounterDeltas(
        _ rekeys: [(plan: Int, predecessor: IKESAIdentifier)], across plans: inout [IKESATakeover]
    ) {
        // Only the predecessors' positions: a table of every plan would cost a takeover of
        // 100,000 IKE SAs milliseconds for the few rekeys under way.
        var position = [IKESAIdentifier: Int](rekeys.map { ($0.predecessor, -1) }, uniquingKeysWith: { first, _ in first })
        for (at, plan) in plans.enumerated() where position[plan.identifier] != nil { position[plan.identifier] = at }
        for (index, old) in rekeys {
            guard let predecessor = position[old], predecessor >= 0,
                case .messageIDSync(let send, let receive, let delta) = plans[index].messageIDs,
                case .messageIDSync(let oldSend, let oldReceive, let oldDelta) = plans[predecessor].messageIDs
            else { continue }
            let shared: UInt64? = (delta == nil && oldDelta == nil) ? nil : max(delta ?? 0, oldDelta ?? 0)
            plans[index].messageIDs = .messageIDSync(send: send, receive: receive, replayCounterDelta: shared)
            plans[predecessor].messageIDs = .messageIDSync(send: oldSend, receive: oldReceive, replayCounterDelta: shared)
        }
    }

    /// `value * numerator / denominator`, saturating, without overflow in between.
    static func multiplyDivide(_ value: UInt64, _ numerator: UInt64, _ denominator: UInt64) -> UInt64 {
        let product = value.multipliedFullWidth(by: numerator)
        guard product.high < denominator else { return .max }
        return denominator.dividingFullWidth((product.high, product.low)).quotient
    }

    static func saturatingAdd(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? .max : sum
    }

    /// Nanoseconds from `start` to `end`, 0 when `start` is later.
    static func elapsed(since start: Timestamp, until end: Timestamp) -> UInt64 {
        end.nanoseconds > start.nanoseconds ? end.nanoseconds - start.nanoseconds : 0
    }

    static func saturatingMultiply(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let (result, overflow) = a.multipliedReportingOverflow(by: b)
        return overflow ? .max : result
    }
}

/// The IKE SAs a takeover treats as suspect: those whose synch messages may have been missed.
/// An array literal names them one by one.
public enum SuspectIKESAs: Sendable, Hashable, ExpressibleByArrayLiteral {
    /// Every IKE SA (the replica is not a complete copy, or a gap in the synch stream is open).
    case all
    /// Exactly these.
    case only(Set<IKESAIdentifier>)

    /// None.
    public static let none = SuspectIKESAs.only([])

    public init(arrayLiteral elements: IKESAIdentifier...) { self = .only(Set(elements)) }

    /// Whether `identifier` is suspect.
    public func contains(_ identifier: IKESAIdentifier) -> Bool {
        switch self {
        case .all: true
        case .only(let set): !set.isEmpty && set.contains(identifier)
        }
    }
}
