import IPsecHACore
import IPsecHASync
import IPsecHATestKit

// The fault schedule, the external arbiter, and the split-brain measure.
extension ClusterSimulation {
    /// Carries out one fault of the schedule; a fault whose target does not exist now (a crash
    /// of a standby when none runs, a restart when nobody is down) does nothing.
    mutating func apply(_ fault: SimulationFault) throws {
        var done: SimulationFault?
        switch fault {
        case .crash(let target):
            guard let index = resolve(target, down: false) else { break }
            crash(index)
            done = .crash(.member(members[index].id.rawValue))
        case .restart(let target, let clockReset):
            guard let index = resolve(target, down: true) else { break }
            try restart(index, clockReset: clockReset)
            done = .restart(.member(members[index].id.rawValue), clockReset: clockReset)
        case .partition(let groups):
            var cut: Set<[UInt16]> = []
            let ids = members.map(\.id.rawValue)
            for a in ids {
                for b in ids where a < b && !groups.contains(where: { $0.contains(a) && $0.contains(b) }) { cut.insert([a, b]) }
            }
            network.faults.partitions = cut
            done = fault
        case .heal:
            network.faults.heal(delay: defaultSyncDelay)
            done = fault
        case .linkLoss(let from, let to, let loss):
            network.faults.directedLoss[[from, to]] = loss
            done = fault
        case .syncDelay(let milliseconds):
            network.faults.delay = .milliseconds(Int64(milliseconds))
            done = fault
        case .vrrpMaster(let target):
            // keepalived holds a member whose readiness check fails in FAULT: it cannot be MASTER.
            guard let index = resolve(target, down: false), index != vrrpMaster, members[index].cluster.readiness.isElectable else { break }
            // keepalived moves the address: BACKUP where it was, then MASTER at the new holder.
            if let old = vrrpMaster, members[old].alive { try signal(old, .backup) }
            vrrpMaster = index
            try signal(index, .master)
            done = .vrrpMaster(.member(members[index].id.rawValue))
        }
        guard let done else { return }
        report.faults[done.kind, default: 0] += 1
        trace?("{\"kind\":\"fault\",\"t\":\(micros),\"fault\":\"\(done)\"}")
    }

    /// The member a target names now: among those running (`down` false) or those down.
    mutating func resolve(_ target: FaultTarget, down: Bool) -> Int? {
        let candidate: Int?
        switch target {
        case .member(let id): candidate = members.firstIndex { $0.id.rawValue == id }
        case .active: candidate = active
        case .standby:
            let standbys = members.indices.filter { $0 != active && members[$0].alive }
            candidate = standbys.isEmpty ? nil : standbys[Int(random.next() % UInt64(standbys.count))]
        case .lastCrashed: candidate = down ? self.down.last : lastCrashed
        }
        guard let candidate, members[candidate].alive != down else { return nil }
        return candidate
    }

    /// keepalived's side: 30 ms (three adverts at 0.01 s) after the address holder died, the
    /// running member with the lowest ID among those its readiness check lets keepalived elect
    /// (``ClusterMember/readiness``) gets the address (no preemption). Until one is electable,
    /// nobody holds it.
    mutating func arbiterTick() throws {
        guard configuration.arbiter else { return }
        if let master = vrrpMaster, members[master].alive {
            vrrpMasterDownSince = nil
            return
        }
        let since = vrrpMasterDownSince ?? now
        vrrpMasterDownSince = since
        guard now >= since + .milliseconds(30),
            let next = members.indices.first(where: { members[$0].alive && members[$0].cluster.readiness.isElectable })
        else { return }
        vrrpMaster = next
        vrrpMasterDownSince = nil
        try signal(next, .master)
    }

    /// Tells member `index` its VRRP state, as keepalived's notify FIFO does, and carries out
    /// what it says.
    mutating func signal(_ index: Int, _ state: VRRPState) throws {
        members[index].wasReady = members[index].cluster.isReady
        members[index].cluster.signal(.vrrp(state), now: clock(index))
        try drain(index)
    }

    /// Counts the milliseconds two members or more are active at once, and how long they stay
    /// so while the synch link between them works.
    mutating func observeSplitBrain() {
        let activeIndices = members.indices.filter { members[$0].alive && members[$0].cluster.isActive }
        guard activeIndices.count >= 2 else {
            connectedSplitBrainMs = 0
            return
        }
        let actives = activeIndices.map { members[$0].id.rawValue }
        report.splitBrainMs += 1
        for peer in peers where !peer.dead { splitBrainChildSAs.formUnion(peer.children.map(\.clusterInbound)) }
        let faults = network.faults
        let connected = actives.allSatisfy { a in
            actives.allSatisfy { b in
                a == b
                    || !faults.partitioned(ClusterMemberID(rawValue: a), ClusterMemberID(rawValue: b)) && faults.directedLoss[[a, b], default: 0] < 1
                        && faults.directedLoss[[b, a], default: 0] < 1
            }
        }
        connectedSplitBrainMs = connected ? connectedSplitBrainMs + 1 : 0
        report.splitBrainConnectedMsMax = max(report.splitBrainConnectedMsMax, connectedSplitBrainMs)
    }
}
