// The agreement of the state's side tables, checked on demand (the tests run it after their
// histories, as swift-collections checks its invariants under a flag).
extension GatewayState {
    /// Every broken invariant among the state's tables, described; empty when they agree. The
    /// SAD slots, the SPI index, the free list, the per-slot side tables, the IKE SAs' lists of
    /// Child SAs and the SPD's lists of Child SAs must all say the same thing. O(n): for tests
    /// and for debugging a deployment, not for a packet path.
    public func invariantViolations() -> [String] {
        var violations: [String] = []
        if incarnations.count != childSlots.count || freshness.count != childSlots.count {
            violations.append("side tables of \(incarnations.count) and \(freshness.count) entries for \(childSlots.count) slots")
        }
        var occupied = 0
        for (index, slot) in childSlots.enumerated() {
            guard let sa = slot else { continue }
            occupied += 1
            if spiIndex.slot(of: sa.inboundSPI).map(Int.init) != index {
                violations.append("SPI \(sa.inboundSPI) in slot \(index) is indexed at \(spiIndex.slot(of: sa.inboundSPI).map(String.init) ?? "nothing")")
            }
            if let parent = ikeSAs[sa.parent] {
                if parent.childSAs.sortedPosition(of: sa.inboundSPI) == parent.childSAs.count
                    || parent.childSAs[parent.childSAs.sortedPosition(of: sa.inboundSPI)] != sa.inboundSPI
                {
                    violations.append("Child SA \(sa.inboundSPI) missing from its IKE SA's list")
                }
            } else {
                violations.append("Child SA \(sa.inboundSPI) has no IKE SA \(sa.parent)")
            }
            if sa.localSelectors.count + sa.remoteSelectors.count > ChildSA.maximumSelectors {
                violations.append("Child SA \(sa.inboundSPI) has \(sa.localSelectors.count + sa.remoteSelectors.count) selectors")
            }
            if let policy = sa.policy, !(childSAsByPolicy[policy] ?? []).contains(sa.inboundSPI) {
                violations.append("Child SA \(sa.inboundSPI) missing from policy \(policy.rawValue)'s list")
            }
        }
        if slotSPIs.count != childSlots.count || childSlots.indices.contains(where: { slotSPIs[$0] != (childSlots[$0]?.inboundSPI ?? 0) }) {
            violations.append("the per-slot SPIs do not name each slot's Child SA")
        }
        if spiIndex.count != occupied {
            violations.append("the SPI index counts \(spiIndex.count) Child SAs, the slots \(occupied)")
        }
        let free = Set(freeSlots)
        if free.count != freeSlots.count || occupied + free.count != childSlots.count
            || free.contains(where: { !childSlots.indices.contains(Int($0)) || childSlots.hasValue(at: Int($0)) })
        {
            violations.append("the free list (\(freeSlots.count) slots) does not name exactly the \(childSlots.count - occupied) empty slots")
        }
        for ike in ikeSAs.values {
            if ike.childSAs != ike.childSAs.sorted() { violations.append("IKE SA \(ike.identifier)'s Child SAs are not in order") }
            for spi in ike.childSAs where childSA(inboundSPI: spi)?.parent != ike.identifier {
                violations.append("IKE SA \(ike.identifier) lists Child SA \(spi), which is not its own")
            }
        }
        for (policy, spis) in childSAsByPolicy {
            for spi in spis where childSA(inboundSPI: spi)?.policy != policy {
                violations.append("policy \(policy.rawValue) lists Child SA \(spi), which is not under it")
            }
        }
        return violations
    }
}
