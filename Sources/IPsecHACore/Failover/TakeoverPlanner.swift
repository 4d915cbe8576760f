/// Computes the takeover plan of a standby from its replicated state (design, "Failover"):
/// classification of every IKE SA, the outbound counter jump and inbound window policy of every
/// Child SA, and what to do with each IKE SA's message IDs, each with its reason.
public enum TakeoverPlanner {
    /// The plan at time `now`.
    ///
    /// - Parameters:
    ///   - state: the standby's replicated gateway state.
    ///   - inFlight: IKE SAs with an exchange under way, and whether this side initiated it.
    ///   - suspect: IKE SAs whose updates may have been missed (all of them while the replica is
    ///     not a complete copy or a gap in the synch stream is open).
    ///   - freshness: per Child SA (inbound SPI), when its last checkpoint arrived and the rate.
    public static func plan(
        state: GatewayState, inFlight: [IKESAIdentifier: Bool], suspect: Set<IKESAIdentifier>,
        freshness: [UInt32: ChildSAFreshness], policy: TakeoverPolicy = TakeoverPolicy(), now: Timestamp
    ) -> TakeoverPlan {
        var ikePlans: [IKESATakeover] = []
        ikePlans.reserveCapacity(state.ikeSAs.count)
        var childPlans: [ChildSATakeover] = []
        childPlans.reserveCapacity(state.childSACount)
        var maximumAdvance: [IKESAIdentifier: UInt64] = [:]
        var replayCounterSyncSAs = Set<IKESAIdentifier>()
        if policy.inbound == .replayCounterSyncWhereNegotiated {
            for (identifier, sa) in state.ikeSAs where sa.extensions.replayCounterSync { replayCounterSyncSAs.insert(identifier) }
        }

        state.forEachChildSACounters { sa in
            let suspectSA = !suspect.isEmpty && suspect.contains(sa.parent)
            let known = freshness[sa.inboundSPI]
            let advance: UInt64
            var reason = ChildSATakeoverReason(
                checkpointAge: nil, packetsPerSecond: nil, suspect: suspectSA, outboundLimitReached: false, inboundLimitReached: false)
            if let known, let rate = known.packetsPerSecond {
                let stale = now.nanoseconds > known.lastCheckpoint.nanoseconds ? now.nanoseconds - known.lastCheckpoint.nanoseconds : 0
                let window = stale.addingReportingOverflow(policy.stalenessMargin)
                let expected = multiplyDivide(rate, window.overflow ? .max : window.partialValue, 1_000_000_000)
                let base = max(policy.minimumAdvance, expected)
                advance = suspectSA ? saturatingMultiply(base, policy.suspectFactor) : base
                reason.checkpointAge = stale
                reason.packetsPerSecond = rate
            } else {
                advance = policy.unknownAdvance
            }
            let hardLimit = sa.hardLimit
            let lastSent = sa.lastSent
            let outbound: OutboundTakeover
            if lastSent > hardLimit - min(advance, hardLimit) {
                outbound = .rekey
                reason.outboundLimitReached = true
            } else {
                outbound = .resume(lastSent: lastSent + advance)
            }
            let top = sa.inboundTop
            let inboundLimit = sa.extendedSequenceNumbers ? UInt64.max : UInt64(UInt32.max)
            let inbound: InboundTakeover
            if top > inboundLimit - min(advance, inboundLimit) {
                inbound = .rekey
                reason.inboundLimitReached = true
            } else {
                switch policy.inbound {
                case .permissiveUnsafe:
                    inbound = .restore(.permissiveUnsafe)
                case .replayCounterSyncWhereNegotiated where replayCounterSyncSAs.contains(sa.parent):
                    inbound = .restore(.replayCounterSync(delta: advance))
                case .conservative, .replayCounterSyncWhereNegotiated:
                    inbound = .restore(.conservative(advance: advance))
                }
            }
            // Only a replay-counter delta in a message-ID sync needs the IKE SA's largest advance.
            if !replayCounterSyncSAs.isEmpty, advance > maximumAdvance[sa.parent, default: 0] { maximumAdvance[sa.parent] = advance }
            childPlans.append(
                ChildSATakeover(inboundSPI: sa.inboundSPI, parent: sa.parent, outbound: outbound, inbound: inbound, advance: advance, reason: reason))
        }

        for (identifier, sa) in state.ikeSAs {
            let windows = sa.messageIDs
            let classification: IKESAClassification =
                !suspect.isEmpty && suspect.contains(identifier)
                ? .suspect : !inFlight.isEmpty && inFlight[identifier] != nil ? .inFlight : .certain
            let next = windows.requests.nextMessageID
            let expected = windows.responses.nextExpectedMessageID
            let plan: MessageIDTakeover
            let reason: IKESATakeoverReason
            if classification == .certain {
                plan = .exact(nextRequestID: next, nextExpectedRequestID: expected)
                reason = .nothingInFlightNothingMissed
            } else if sa.extensions.messageIDSync {
                // M1 above anything the failed member may have used: by at least the peer's
                // window (RFC 6311 section 5.1); P1 the next request expected from the peer.
                let send = next + UInt64(max(windows.requests.peerWindowSize, 1))
                if send <= UInt64(UInt32.max), expected <= UInt64(UInt32.max) {
                    let delta =
                        sa.extensions.replayCounterSync && policy.inbound == .replayCounterSyncWhereNegotiated
                        ? maximumAdvance[identifier] : nil
                    plan = .messageIDSync(send: UInt32(send), receive: UInt32(expected), replayCounterDelta: delta)
                    reason = classification == .inFlight ? .exchangeInFlightSync : .missedSynchSync
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
            ikePlans.append(IKESATakeover(identifier: identifier, classification: classification, messageIDs: plan, reason: reason))
        }
        return TakeoverPlan(ikeSAs: ikePlans, childSAs: childPlans)
    }

    /// `value * numerator / denominator`, saturating, without overflow in between.
    static func multiplyDivide(_ value: UInt64, _ numerator: UInt64, _ denominator: UInt64) -> UInt64 {
        let product = value.multipliedFullWidth(by: numerator)
        guard product.high < denominator else { return .max }
        return denominator.dividingFullWidth((product.high, product.low)).quotient
    }

    static func saturatingMultiply(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let (result, overflow) = a.multipliedReportingOverflow(by: b)
        return overflow ? .max : result
    }
}
