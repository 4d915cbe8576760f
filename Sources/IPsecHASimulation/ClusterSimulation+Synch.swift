import IPsecHACore
import IPsecHASync
import IPsecHATestKit

// The members' side: each a ClusterMember on the in-memory network; what the simulation
// measures of them (missed synch messages, checkpoints), and what a takeover means for the
// peer (probes, RFC 6311).
extension ClusterSimulation {
    /// Member `index` stops at once, its state gone. When it held the address, whatever it had
    /// in flight with the peer dies with it, and nobody answers until another member takes over.
    mutating func crash(_ index: Int) {
        if recordsPlot, plot.crash == nil { plot.crash = milliseconds }
        trace?("{\"kind\":\"crash\",\"t\":\(micros),\"member\":\"\(name(index))\"}")
        members[index].alive = false
        down.append(index)
        lastCrashed = index
        pendingLosses[members[index].id] = nil
        guard index == active else { return }
        crashedAt = now
        report.activeCrashes += 1
        if awaitingTakeoverSince == nil { awaitingTakeoverSince = now }
        report.ikeExchangesInFlightAtCrash = max(
            report.ikeExchangesInFlightAtCrash,
            peers.filter { $0.outstanding != nil }.count + clusterOutstanding.count + held.values.map(\.count).reduce(0, +))
        held = [:]
        clusterOutstanding = [:]
        pendingLosses = [:]
        // A member still active from a split brain answers for the address once the peer's
        // next ARP finds it (no other has it).
        active = members.indices.first { members[$0].alive && members[$0].cluster.isActive }
    }

    /// The crashed member comes back empty, at a new epoch, as a standby of the current active
    /// member; it says hello until a bulk resync makes it ready. With `clockReset` its clock
    /// starts again at one second, as after a reboot.
    mutating func restart(_ index: Int, clockReset: Bool = false) throws {
        down.removeAll { $0 == index }
        awaitingReady.insert(index)
        let old = members[index]
        pendingLosses[old.id] = nil
        // What reached it while it was down is gone with its memory.
        _ = members[index].transport.receive(now: now)
        // A standby of the active member, or of another (a whole-cluster restart comes back
        // by `ClusterMemberConfiguration.lastResortTakeover`, not by configuring one active).
        let activeID = active.map { members[$0].id } ?? members.first { $0.alive && $0.id != old.id }?.id ?? members.first { $0.id != old.id }!.id
        members[index] = Member(
            id: old.id, cluster: try makeMember(old.id, epoch: old.cluster.channel.configuration.epoch + 1, active: activeID),
            transport: old.transport, clockOffset: clockReset ? now.nanoseconds - 1_000_000_000 : old.clockOffset)
        report.restartedMemberReady = false
        // keepalived starts in BACKUP on the restarted host.
        if configuration.arbiter { try signal(index, .backup) }
    }

    /// Member `index`'s own clock.
    func clock(_ index: Int) -> Timestamp { Timestamp(nanoseconds: now.nanoseconds - members[index].clockOffset) }

    /// One millisecond of the synch side: every live member takes its datagrams and the time,
    /// and what it says is carried out.
    mutating func advance() throws {
        now = now + .milliseconds(1)
        for index in members.indices where members[index].alive {
            members[index].wasReady = members[index].cluster.isReady
            let clock = clock(index)
            for datagram in members[index].transport.receive(now: now) { members[index].cluster.receive(datagram, now: clock) }
            members[index].cluster.tick(now: clock)
            try drain(index)
            if index != active { observeMissedSynch(index) }
        }
        report.syncDatagrams = network.sent - baseline.sent
        report.syncDatagramsLost = network.lost - baseline.lost
        // A loss not detected within 200 ms was of a datagram nobody had to miss (an
        // acknowledgement, a heartbeat) or was repaired first.
        for member in pendingLosses.keys { pendingLosses[member]!.removeAll { now.nanoseconds - $0.nanoseconds > 200_000_000 } }
    }

    /// Carries out what member `index` says.
    mutating func drain(_ index: Int) throws {
        while let action = members[index].cluster.nextAction() {
            switch action {
            case .transmit(let to, let datagram):
                let lost = network.lost
                try members[index].transport.send(datagram, to: to, now: now)
                if index == active, network.lost > lost, isAlive(to) { pendingLosses[to, default: []].append(now) }
            case .released(let token):
                // Held IKE messages go out once the standbys hold their state.
                guard index == active else { continue }
                for message in held.removeValue(forKey: token) ?? [] {
                    if case .clusterRequest(let identifier, let messageID) = message, clusterOutstanding[identifier]?.0 != messageID { continue }
                    sendOutside(message)
                }
            case .countersCheckpointed(let due):
                report.checkpointsSent += due.count
                guard !plotIndex.isEmpty else { continue }
                let state = members[index].cluster.state
                for entry in due {
                    guard let sa = state.childSA(inboundSPI: entry.checkpoint.inboundSPI), let series = plotIndex[sa.outboundSPI] else { continue }
                    plot.series[series].checkpoints.append((milliseconds, entry.checkpoint.outbound.lastSent))
                }
            case .becameReady:
                if awaitingReady.remove(index) != nil, awaitingReady.isEmpty { report.restartedMemberReady = true }
            case .tookOver(let plan, let rekey):
                try tookOver(index, plan: plan, rekey: rekey)
            case .steppedDown:
                trace?("{\"kind\":\"stepped_down\",\"t\":\(micros),\"member\":\"\(name(index))\"}")
                guard index == active else { continue }
                // Nobody holds the address until the next takeover.
                active = nil
                held = [:]
                clusterOutstanding = [:]
            case .heldBack, .reasserted, .segmentStarted, .segmentStopped, .relayed:
                break
            }
        }
    }

    /// Whether standby `index` noticed a lost synch message of the active member, and how long
    /// after the loss.
    mutating func observeMissedSynch(_ index: Int) {
        guard let activeIndex = active else { return }
        let id = members[index].id
        // On the run's clock (the member's may have been reset by a reboot).
        let offset = members[index].clockOffset
        let missing = members[index].cluster.channel.missingSince(from: members[activeIndex].id).map { Timestamp(nanoseconds: $0.nanoseconds + offset) }
        if let missing, !detecting.contains(id) {
            detecting.insert(id)
            report.missedSyncDetected += 1
            if let lost = pendingLosses[id]?.first(where: { $0.nanoseconds <= missing.nanoseconds }) {
                report.missedSyncDetectionMsMax = max(report.missedSyncDetectionMsMax, Double(missing.nanoseconds - lost.nanoseconds) / 1e6)
                pendingLosses[id]!.removeAll { $0.nanoseconds <= missing.nanoseconds }
            }
        } else if missing == nil {
            detecting.remove(id)
        }
    }

    /// Changes the active member's state; the token of the change (nil: no member is active).
    mutating func change(_ body: (inout GatewayState, inout [StateChange]) throws(GatewayStateError) -> Void) throws -> ReplicationToken? {
        guard let index = active else { return nil }
        return try members[index].cluster.update(now: clock(index), body)
    }

    mutating func replicateExchange(_ identifier: IKESAIdentifier, _ messageID: UInt32, initiatedHere: Bool, finished: Bool) throws -> ReplicationToken? {
        guard let index = active else { return nil }
        return try members[index].cluster.replicateExchange(of: identifier, messageID: messageID, initiatedHere: initiatedHere, finished: finished, now: clock(index))
    }

    /// Whether the member with this ID runs.
    func isAlive(_ id: ClusterMemberID) -> Bool { members.contains { $0.id == id && $0.alive } }

    /// Whether a held message matches.
    func isHeld(_ matches: (IKEMessage) -> Bool) -> Bool { held.values.contains { $0.contains(where: matches) } }

    /// Holds an IKE message until the change behind `token` is released (with synchronous
    /// replication; otherwise it leaves at once).
    mutating func hold(_ token: ReplicationToken?, _ message: IKEMessage) {
        guard configuration.synchronousReplication, let token else { return sendOutside(message) }
        held[token, default: []].append(message)
    }

    /// A standby took over (the member applied the plan): the Child SAs it cannot move on are
    /// deleted, and every IKE SA continues as the plan says (RFC 6311 with the peer where it
    /// says so, a probe for a rekey whose answer may have died with the failed member).
    mutating func tookOver(_ index: Int, plan: TakeoverPlan, rekey: [UInt32]) throws {
        // Without an arbiter a member takes over only with a complete copy; an arbiter may
        // promote one that is still resyncing.
        report.standbyReadyAtTakeover = (report.standbyReadyAtTakeover ?? true) && members[index].wasReady
        report.takeovers += 1
        if !plotIndex.isEmpty {
            let state = members[index].cluster.state
            for decision in plan.childSAs {
                guard case .resume(let resumeAfter) = decision.outbound, let sa = state.childSA(inboundSPI: decision.inboundSPI),
                    let series = plotIndex[sa.outboundSPI]
                else { continue }
                plot.series[series].takeover = (milliseconds, resumeAfter - decision.advance, resumeAfter)
            }
        }
        report.childSAsRekeyedByTakeover += rekey.count
        let known = peerIndex
        var syncs: [(IKESAIdentifier, UInt64?)] = []
        var undone = 0
        var deleted: [IKESAIdentifier] = []
        _ = try members[index].cluster.update(now: clock(index)) { state, changes throws(GatewayStateError) in
            for spi in rekey { changes += (try? state.deleteChildSA(inboundSPI: spi)) ?? [] }
            for ikePlan in plan.ikeSAs {
                let identifier = ikePlan.identifier
                // A rekey whose answer may have died with the failed member: the probe (a
                // liveness check, answered at once here) finds whether the peer knows the new
                // IKE SA.
                if let old = ikePlan.unconfirmedRekey {
                    if known[identifier] == nil {
                        changes += try state.undoIKESARekey(identifier)
                        undone += 1
                        continue
                    }
                    // Answered: the peer had the rekey's answer, so it is done with the old IKE
                    // SA (its Delete may have died with the failed member).
                    changes += (try? state.deleteIKESA(old)) ?? []
                }
                switch ikePlan.messageIDs {
                case .exact, .awaitPeerRetransmission:
                    break
                case .messageIDSync(_, _, let delta):
                    syncs.append((identifier, delta))
                case .deleteAndReestablish:
                    changes += (try? state.deleteIKESA(identifier)) ?? []
                    deleted.append(identifier)
                }
            }
        }
        report.ikeSARekeysUndoneByTakeover += undone
        for identifier in deleted {
            guard let i = peerIndex[identifier] else { continue }
            peers[i].dead = true
            peers[i].lostReason = "deleted by the takeover plan"
        }
        held = [:]
        // What another member (a split brain) asked the peer is that member's to finish.
        clusterOutstanding = [:]
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
        guard let index = active, let i = peerIndex[identifier], !peers[i].dead, let windows = members[index].cluster.state.ikeSAs[identifier]?.messageIDs else { return }
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
                _ = try? members[index].cluster.update(now: clock(index)) { state, changes throws(GatewayStateError) in
                    changes += try state.updateMessageIDs(of: identifier) { $0 = agreed }
                }
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
