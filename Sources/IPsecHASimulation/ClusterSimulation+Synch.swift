import IPsecHACore
import IPsecHASync
import IPsecHATestKit

// The members' side: synch channels, replication, detection, takeover, RFC 6311 with the peer.
extension ClusterSimulation {
    mutating func crash(_ index: Int) {
        if recordsPlot { plot.crash = milliseconds }
        trace?("{\"kind\":\"crash\",\"t\":\(micros),\"member\":\"\(name(index))\"}")
        members[index].alive = false
        crashed = index
        crashedAt = now
        report.ikeExchangesInFlightAtCrash = peers.filter { $0.outstanding != nil }.count + clusterOutstanding.count + held.count
        held.removeAll()
        clusterOutstanding = [:]
        pendingLosses = [:]
        active = nil
    }

    /// The crashed member comes back empty, at a new epoch, as a standby of the current active
    /// member; it says hello until a bulk resync makes it ready.
    mutating func restart(_ index: Int) throws {
        crashed = nil
        restarted = index
        joining[members[index].id] = false
        let old = members[index]
        pendingLosses[old.id] = nil
        // What reached it while it was down is gone with its memory.
        _ = members[index].transport.receive(now: now)
        var channelConfiguration = old.channel.configuration
        channelConfiguration.epoch = old.channel.configuration.epoch + 1
        let activeID = active.map { members[$0].id }
        members[index] = Member(
            id: old.id, channel: try SyncChannel(configuration: channelConfiguration), transport: old.transport,
            role: ClusterRole(member: old.id, epoch: channelConfiguration.epoch, isActive: false, activeMember: activeID),
            scheduler: old.scheduler)
        report.restartedMemberReady = false
    }

    /// One millisecond of the synch side: datagrams, ticks, replication, detection, takeover.
    mutating func advance() throws {
        now = Timestamp(nanoseconds: now.nanoseconds + 1_000_000)
        for index in members.indices where members[index].alive {
            for datagram in members[index].transport.receive(now: now) {
                try perform(members[index].channel.receive(datagram, now: now), at: index)
            }
            try perform(members[index].channel.tick(now: now), at: index)
            // The scheduler scans every Child SA: every fifth of the checkpoint interval is
            // often enough (a checkpoint is at most a fifth of it late).
            if index == active, step % max(1, Int(configuration.checkpointMs / 5)) == 0 {
                var state = members[index].state.take()!
                let due = members[index].scheduler.takeDueCheckpoints(from: &state, now: now)
                members[index].state = state
                report.checkpointsSent += due.count
                if !plotIndex.isEmpty {
                    for entry in due {
                        guard let sa = state.childSA(inboundSPI: entry.checkpoint.inboundSPI), let series = plotIndex[sa.outboundSPI] else { continue }
                        plot.series[series].checkpoints.append((milliseconds, entry.checkpoint.outbound.lastSent))
                    }
                }
                if !due.isEmpty {
                    try perform(withReplicator(index) { $0.replicate(checkpoints: due, state: state, channel: &$1, now: $2).actions }, at: index)
                }
            }
            if index == active {
                try perform(withReplicator(index) { $0.pump(channel: &$1, now: $2) }, at: index)
            } else {
                try standbyDuties(index)
            }
        }
        report.syncDatagrams = network.sent - baseline.sent
        report.syncDatagramsLost = network.lost - baseline.lost
        // A loss not detected within 200 ms was of a datagram nobody had to miss (an
        // acknowledgement, a heartbeat) or was repaired first.
        for member in pendingLosses.keys { pendingLosses[member]!.removeAll { now.nanoseconds - $0.nanoseconds > 200_000_000 } }
        if let index = active, let replicator = members[index].replicator {
            for (member, resyncBegan) in joining {
                if replicator.isResyncing(member) {
                    joining[member] = true
                } else if resyncBegan, replicator.hasCaughtUp(member, channel: members[index].channel) {
                    joining[member] = nil
                }
            }
        }
        // Held IKE responses go out once the standbys acknowledged their state.
        if let index = active, let replicator = members[index].replicator {
            let alive = Set(members.filter(\.alive).map(\.id))
            for message in held.release(channel: members[index].channel, replicator: replicator, now: now, gone: { !alive.contains($0) }) {
                if case .clusterRequest(let identifier, let messageID) = message, clusterOutstanding[identifier]?.0 != messageID { continue }
                sendOutside(message)
            }
        }
    }

    mutating func standbyDuties(_ index: Int) throws {
        guard let activeID = members[index].role.activeMember else { return }
        if index == restarted, members[index].replica.isReady {
            report.restartedMemberReady = true
            restarted = nil
        }
        let missing = members[index].channel.missingSince(from: activeID)
        members[index].replica.observe(missingSince: missing)
        if let missing, !detecting.contains(members[index].id) {
            detecting.insert(members[index].id)
            report.missedSyncDetected += 1
            let id = members[index].id
            if let lost = pendingLosses[id]?.first(where: { $0.nanoseconds <= missing.nanoseconds }) {
                report.missedSyncDetectionMsMax = max(report.missedSyncDetectionMsMax, Double(missing.nanoseconds - lost.nanoseconds) / 1e6)
                pendingLosses[id]!.removeAll { $0.nanoseconds <= missing.nanoseconds }
            }
        } else if missing == nil {
            detecting.remove(members[index].id)
        }
        if !members[index].replica.isReady, !members[index].replica.isResyncing,
            members[index].lastHello.map({ now.nanoseconds - $0.nanoseconds >= 200_000_000 }) ?? true
        {
            members[index].lastHello = now
            let hello = try members[index].channel.send(
                [members[index].replica.hello(epoch: members[index].channel.configuration.epoch)], to: activeID, now: now)
            try perform(hello.actions, at: index)
        }
        try detectFailure(index)
    }

    /// A standby that has not heard the active member for three heartbeats promotes itself if
    /// it is the lowest live standby.
    mutating func detectFailure(_ index: Int) throws {
        guard let activeID = members[index].role.activeMember, let activeIndex = members.firstIndex(where: { $0.id == activeID }) else { return }
        let events = members[index].role.tick(now: now, lastHeard: members[index].channel.lastHeard(from: activeID))
        guard events.contains(.activeMemberFailed(activeID)) else { return }
        let lowest = members.indices.first { $0 != activeIndex && members[$0].alive && members[$0].state == nil }
        guard lowest == index else { return }
        try promote(index, replacing: activeID)
    }

    mutating func perform(_ actions: [SyncChannelAction], at index: Int) throws {
        for action in actions {
            switch action {
            case .transmit(let to, let datagram):
                let lost = network.lost
                try members[index].transport.send(datagram, to: to, now: now)
                if index == active, network.lost > lost, isAlive(to) {
                    pendingLosses[to, default: []].append(now)
                }
            case .deliver(let from, let records):
                if index == active {
                    let state = members[index].state!
                    try perform(withReplicator(index) { $0.handle(action, state: state, channel: &$1, now: $2) }, at: index)
                } else if from == members[index].role.activeMember {
                    members[index].replica.apply(records, now: now)
                }
            case .resyncNeeded:
                if index == active {
                    let state = members[index].state!
                    try perform(withReplicator(index) { $0.handle(action, state: state, channel: &$1, now: $2) }, at: index)
                }
            case .peerRestarted, .dropped:
                break
            }
        }
    }

    /// Runs `body` on the active member's replicator and channel, moved out of the member so
    /// that neither is copied (a copy would duplicate a resync's snapshot on its next change).
    mutating func withReplicator<Result>(_ index: Int, _ body: (inout Replicator, inout SyncChannel, Timestamp) -> Result) -> Result {
        var replicator = members[index].replicator.take()!
        defer { members[index].replicator = replicator }
        return body(&replicator, &members[index].channel, now)
    }

    mutating func replicate(_ changes: [StateChange]) throws -> [SyncTicket] {
        guard let index = active, !changes.isEmpty else { return [] }
        let state = members[index].state!
        let result = withReplicator(index) { $0.replicate(changes, state: state, channel: &$1, now: $2) }
        try perform(result.actions, at: index)
        return awaited(result.tickets, at: index)
    }

    /// Whether the member with this ID runs.
    func isAlive(_ id: ClusterMemberID) -> Bool { members.contains { $0.id == id && $0.alive } }

    /// Whether a held message matches.
    func isHeld(_ matches: (IKEMessage) -> Bool) -> Bool { held.contains(where: matches) }

    /// Holds an IKE message until its tickets are acknowledged and, with synchronous
    /// replication, every live standby that was catching up has caught up.
    mutating func hold(_ tickets: [SyncTicket], _ message: IKEMessage) {
        guard let index = active, let replicator = members[index].replicator else { return }
        let standbys =
            configuration.synchronousReplication
            ? members.filter { $0.alive && $0.id != members[index].id && joining[$0.id] == nil }.map(\.id) : []
        if let free = held.hold(message, tickets: tickets, standbys: standbys, replicator: replicator) { sendOutside(free) }
    }

    /// The tickets synchronous replication waits for: those of standbys that are up and not
    /// being resynced (a failed standby would hold every exchange until it came back; a
    /// catching-up one until its resync or backlog was sent). An embedder decides the same from
    /// its failure detector and ``Replicator/isCatchingUp(_:)``.
    func awaited(_ tickets: [SyncTicket], at index: Int) -> [SyncTicket] {
        guard configuration.synchronousReplication, let replicator = members[index].replicator else { return [] }
        return tickets.filter { ticket in
            isAlive(ticket.peer) && joining[ticket.peer] == nil && !replicator.isCatchingUp(ticket.peer)
        }
    }

    mutating func replicateExchange(_ identifier: IKESAIdentifier, _ messageID: UInt32, initiatedHere: Bool, finished: Bool) throws -> [SyncTicket] {
        guard let index = active else { return [] }
        let state = members[index].state!
        let result = withReplicator(index) {
            $0.replicateExchange(of: identifier, messageID: messageID, initiatedHere: initiatedHere, finished: finished, state: state, channel: &$1, now: $2)
        }
        try perform(result.actions, at: index)
        return awaited(result.tickets, at: index)
    }

    /// The standby takes over: the plan from its replica, counters and windows applied, every
    /// IKE SA continued as the plan says (RFC 6311 with the peer where it says so).
    mutating func promote(_ index: Int, replacing failed: ClusterMemberID) throws {
        let epoch = members[index].channel.configuration.epoch + 1
        _ = try members[index].role.promote(.activeMemberSilent(failed), newEpoch: epoch)
        try members[index].channel.rotate(toEpoch: epoch)
        members[index].replica.applyHeldCheckpoints(members[index].channel.recordsHeldBehindGap(from: failed), now: now)
        let replica = members[index].replica
        report.standbyReadyAtTakeover = replica.isReady
        let plan = replica.takeoverPlan(
            policy: TakeoverPolicy(
                minimumAdvance: configuration.checkpointPackets, maximumPacketsPerSecond: configuration.maximumPacketsPerSecond,
                inbound: configuration.inboundPolicy),
            now: now)
        var state = replica.state
        if !plotIndex.isEmpty {
            for sa in replica.state.childSAs {
                guard let series = plotIndex[sa.outboundSPI], let decision = plan.childSAs.first(where: { $0.inboundSPI == sa.inboundSPI }),
                    case .resume(let resumeAfter) = decision.outbound
                else { continue }
                plot.series[series].takeover = (milliseconds, sa.outboundCounter.lastSent, resumeAfter)
            }
        }
        let rekey = state.applyTakeover(plan).rekey
        for spi in rekey { _ = try? state.deleteChildSA(inboundSPI: spi) }
        report.childSAsRekeyedByTakeover += rekey.count
        var syncs: [(IKESAIdentifier, UInt64?)] = []
        for ikePlan in plan.ikeSAs {
            let identifier = ikePlan.identifier
            // A rekey whose answer may have died with the failed member: the probe (a liveness
            // check, answered at once here) finds whether the peer knows the new IKE SA.
            if let old = ikePlan.unconfirmedRekey {
                if peerIndex[identifier] == nil {
                    _ = try state.undoIKESARekey(identifier)
                    report.ikeSARekeysUndoneByTakeover += 1
                    continue
                }
                // Answered: the peer had the rekey's answer, so it is done with the old IKE SA
                // (its Delete may have died with the failed member).
                _ = try? state.deleteIKESA(old)
            }
            switch ikePlan.messageIDs {
            case .exact, .awaitPeerRetransmission:
                break
            case .messageIDSync(_, _, let delta):
                syncs.append((identifier, delta))
            case .deleteAndReestablish:
                _ = try? state.deleteIKESA(identifier)
                if let i = peerIndex[identifier] { peers[i].dead = true }
            }
        }
        members[index].state = state
        // Every other member, the failed one too: it is replicated to again once it restarts.
        let others = members.indices.filter { $0 != index }.map { members[$0].id }
        members[index].replicator = Replicator(standbys: others)
        for other in members.indices where other != index {
            members[other].role = ClusterRole(member: members[other].id, epoch: members[other].role.epoch, isActive: false, activeMember: members[index].id)
            members[other].replica = Replica()
            if members[other].alive { joining[members[other].id] = false }
        }
        pendingLosses = [:]
        active = index
        trace?("{\"kind\":\"failover\",\"t\":\(micros),\"to\":\"\(name(index))\"}")
        if recordsPlot { plot.failover = milliseconds }
        for (identifier, delta) in syncs {
            if peerIndex[identifier] == nil {
                // The peer has not had the IKE_AUTH answer yet: the sync follows its retransmission.
                pendingSyncs[identifier] = delta
            } else {
                messageIDSync(identifier, delta: delta)
            }
        }
    }

    /// RFC 6311 between the active member and the peer for one IKE SA: the member proposes,
    /// the peer adopts the agreed message IDs and jumps its outbound counters by `delta`
    /// (section 5.2), the member adopts the answer.
    mutating func messageIDSync(_ identifier: IKESAIdentifier, delta: UInt64?) {
        guard let index = active, let i = peerIndex[identifier], !peers[i].dead, let windows = members[index].state!.ikeSAs[identifier]?.messageIDs else { return }
        var initiator = MessageIDSyncInitiator()
        guard let request = try? initiator.start(windows: windows, nonce: UInt32(truncatingIfNeeded: random.next())) else { return }
        let replayCounter = delta.flatMap { try? ReplayCounterSyncNotification(delta: $0, extendedSequenceNumbers: true) }
        captureMessageIDSync(identifier, request, replayCounter: replayCounter, fromPeer: false)
        switch peers[i].syncPeer.process(request, replayCounter: replayCounter, windows: peers[i].windows) {
        case .respond(let response, let adopted, let replayDelta):
            captureMessageIDSync(identifier, response, replayCounter: nil, fromPeer: true)
            peers[i].windows = adopted
            // An exchange the peer had under way restarts later under the new IDs.
            peers[i].outstanding = nil
            if let replayDelta { for child in peers[i].children.indices { peers[i].children[child].sendNext += replayDelta } }
            if let agreed = try? initiator.receive(response, windows: windows) {
                _ = try? members[index].state!.updateMessageIDs(of: identifier) { $0 = agreed }
                report.ikeSAsResyncedViaRFC6311 += 1
            }
        case .drop:
            report.ikeRequestsDroppedByPeer += 1
        }
    }

    /// RFC 6311's INFORMATIONAL with Message ID 0, in clear as the package's codec writes it.
    func captureMessageIDSync(
        _ identifier: IKESAIdentifier, _ sync: MessageIDSyncNotification, replayCounter: ReplayCounterSyncNotification?, fromPeer: Bool
    ) {
        guard let capture else { return }
        let message = IPsecHACore.IKEMessage.messageIDSync(
            ikeSA: identifier, isOriginalInitiator: fromPeer, isResponse: fromPeer, sync: sync, replayCounter: replayCounter)
        if let packet = try? OutsideLinkCapture.ike(message, fromPeer: fromPeer) { capture(micros, packet) }
    }
}
