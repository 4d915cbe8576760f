/// The responder's answer to the traffic selectors an initiator proposed (RFC 7296 section 2.9).
public struct NarrowedSelectors: Sendable, Hashable {
    /// The SPD entry the Child SA will belong to.
    public var policy: SecurityPolicyID
    /// TSi to send back: the initiator's side (remote, from the responder's view).
    public var initiatorSelectors: [TrafficSelector]
    /// TSr to send back: the responder's side (local).
    public var responderSelectors: [TrafficSelector]
    /// Whether the answer is narrower than the proposal.
    public var isNarrowed: Bool
    /// Whether another policy would also have accepted part of the proposal, in a separate SA:
    /// the responder MAY send ADDITIONAL_TS_POSSIBLE.
    public var additionalSelectorsPossible: Bool
}

extension SecurityPolicyDatabase {
    /// Narrows an initiator's proposal against this SPD, as a responder does:
    ///
    /// - when the first selectors of TSi and TSr (the initiator's packet-specific choice) are
    ///   wholly inside one policy, the first such policy in SPD order decides, and the answer
    ///   includes them (the RFC's MUST); if that policy is not PROTECT, nothing is acceptable;
    /// - otherwise the first PROTECT policy that shares traffic with both TSi and TSr decides;
    /// - the answer is every non-empty intersection of a proposed selector with the policy's
    ///   selectors of the same side, so it is the whole proposal when the policy allows it all.
    ///
    /// Throws ``TrafficSelectorError/unacceptable`` (TS_UNACCEPTABLE) when no policy accepts any
    /// part. The narrowing respects the chosen entry only: with overlapping entries of different
    /// actions, decorrelate the SPD first (RFC 7296 section 2.9.1).
    public func narrow(
        initiatorSelectors tsi: [TrafficSelector],
        responderSelectors tsr: [TrafficSelector]
    ) throws(TrafficSelectorError) -> NarrowedSelectors {
        func intersect(_ proposed: [TrafficSelector], _ allowed: [TrafficSelector]) -> [TrafficSelector] {
            var result: [TrafficSelector] = []
            for selector in proposed {
                for limit in allowed {
                    if let common = selector.intersection(with: limit), !result.contains(common) {
                        result.append(common)
                    }
                }
            }
            return result
        }
        func covers(_ policy: SecurityPolicy, _ first: (TrafficSelector, TrafficSelector)) -> Bool {
            policy.remoteSelectors.contains { first.0.isSubset(of: $0) }
                && policy.localSelectors.contains { first.1.isSubset(of: $0) }
        }

        let protecting = policies.filter { if case .protect = $0.action { return true } else { return false } }
        let chosen: SecurityPolicy
        if let firstTSi = tsi.first, let firstTSr = tsr.first,
            let policy = policies.first(where: { covers($0, (firstTSi, firstTSr)) })
        {
            guard case .protect = policy.action else { throw .unacceptable }
            chosen = policy
        } else if let policy = protecting.first(where: {
            !intersect(tsi, $0.remoteSelectors).isEmpty && !intersect(tsr, $0.localSelectors).isEmpty
        }) {
            chosen = policy
        } else {
            throw .unacceptable
        }
        let initiator = intersect(tsi, chosen.remoteSelectors)
        let responder = intersect(tsr, chosen.localSelectors)
        guard !initiator.isEmpty, !responder.isEmpty else { throw .unacceptable }
        let others = protecting.contains {
            $0.id != chosen.id && !intersect(tsi, $0.remoteSelectors).isEmpty
                && !intersect(tsr, $0.localSelectors).isEmpty
        }
        return NarrowedSelectors(
            policy: chosen.id,
            initiatorSelectors: initiator,
            responderSelectors: responder,
            isNarrowed: Set(initiator) != Set(tsi) || Set(responder) != Set(tsr),
            additionalSelectorsPossible: others)
    }
}
