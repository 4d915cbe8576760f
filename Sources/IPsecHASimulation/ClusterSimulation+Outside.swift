import IPsecHACore
import IPsecHASync
import IPsecHATestKit

// The outside link: the peer's ESP and IKE, the attacker's replays, and what the cluster does with them.
extension ClusterSimulation {
    mutating func sendOutside(_ message: IKEMessage) {
        guard random.next() % 1_000_000 >= UInt64(configuration.outsideLoss * 1_000_000) else {
            traceIKE(message, verdict: "lost")
            return
        }
        let jitter = configuration.outsideJitterMs == 0 ? 0 : random.next() % (configuration.outsideJitterMs * 1_000_000)
        outside.append((now.nanoseconds + configuration.outsideDelayMs * 1_000_000 + jitter, message))
    }

    /// One ESP packet from member `index` to the peer on Child SA `child` of the peer's IKE SA
    /// `i`, with the checks: no sequence number twice, every one the address holder sends
    /// accepted by the peer. `index` is the active member, or during a split brain another
    /// member that believes it is active (its packets reach the peer too).
    mutating func sendToPeer(_ i: Int, _ child: Int, from index: Int) {
        let inbound = peers[i].children[child].clusterInbound
        guard let number = members[index].cluster.packetPath({ state in
                state.slot(forInboundSPI: inbound).flatMap { try? state.nextOutboundSequenceNumber(at: $0, bytes: 1_000) }
            }) ?? nil
        else { return }
        let spi = peers[i].children[child].clusterOutbound
        report.espPacketsSent += 1
        if index == active, let since = awaitingTakeoverSince {
            report.takeoverMs = max(report.takeoverMs ?? 0, Double(now.nanoseconds - since.nanoseconds) / 1e6)
            awaitingTakeoverSince = nil
        }
        if !sent.record(number.value, on: spi, by: index) { report.sequenceNumbersReused += 1 }
        let verdict = peers[i].children[child].received.verdict(number.value)
        if let series = plotIndex[spi] {
            plot.series[series].sent.append((milliseconds, members[index].id.rawValue, number.value))
            plot.series[series].peerTop.append((milliseconds, peers[i].children[child].received.highest))
        }
        if verdict != "accept" {
            // Either member of a split brain may have pushed the peer's window past the other.
            if splitBrainChildSAs.contains(inbound) { report.splitBrainPacketsRejectedByPeer += 1 } else { report.legitPacketsRejectedByPeer += 1 }
        }
        traceESP(src: name(index), dst: "peer", spi: spi, seq: number.value, forged: false, verdict: verdict, receiver: "peer")
        if random.next() % 64 == 0 { capturedToPeer.append((i, spi, number.value)) }
    }

    /// ESP both ways on every Child SA, and the attacker's replays.
    mutating func traffic() throws {
        if bursting, crashedAt == nil, let index = active, let first = peers.indices.first, !peers[first].dead, !peers[first].children.isEmpty {
            for _ in 0..<configuration.burstPacketsPerMs { sendToPeer(first, 0, from: index) }
        }
        let every = max(1, 1_000 / configuration.packetsPerSecond)
        // Members active without the address (a split brain) send too: their packets reach the peer.
        let senders = (active.map { [$0] } ?? []) + members.indices.filter { $0 != active && members[$0].alive && members[$0].cluster.isActive }
        for i in peers.indices where (step + i) % every == 0 && !peers[i].dead {
            for child in peers[i].children.indices {
                // A split brain that began this step is seen by the check only after it.
                if senders.count > 1 { splitBrainChildSAs.insert(peers[i].children[child].clusterInbound) }
                for index in senders { sendToPeer(i, child, from: index) }
                // Peer -> cluster.
                let number = peers[i].children[child].sendNext
                peers[i].children[child].sendNext += 1
                report.espPacketsFromPeer += 1
                let spi = peers[i].children[child].clusterInbound
                if receiveAtCluster(spi, number, from: "peer") == false { report.legitPacketsRejectedByCluster += 1 }
                if random.next() % 64 == 0 { capturedToCluster.append((spi, number)) }
            }
        }
        // The attacker replays one captured packet each way per step.
        if let (spi, number) = capturedToCluster.randomElement(using: &random) {
            report.replaysAttempted += 1
            _ = receiveAtCluster(spi, number, from: "attacker")
            // And a forgery: a number far ahead, with an ICV the attacker cannot compute. Only
            // the check phase runs, which changes nothing: the peer's next packets still pass.
            let forged = number + 1 + random.next() % (1 << 20)
            _ = receiveAtCluster(spi, forged, from: "attacker", forged: true)
        }
        if let (i, spi, number) = capturedToPeer.randomElement(using: &random),
            let child = peers[i].children.firstIndex(where: { $0.clusterOutbound == spi })
        {
            report.replaysAttempted += 1
            let verdict = peers[i].children[child].received.verdict(number)
            if verdict == "accept" { report.replaysAccepted += 1 }
            traceESP(src: "attacker", dst: "peer", spi: spi, seq: number, forged: false, verdict: verdict, receiver: "peer")
        }
        if capturedToCluster.count > 4_096 { capturedToCluster.removeFirst(2_048) }
        if capturedToPeer.count > 256 { capturedToPeer.removeFirst(128) }
        if step % 1_000 == 0 { forgetRetiredSAs() }
    }

    /// The peer's SPI for a new Child SA (the cluster's outbound SPI), from `spi` on: never one
    /// in use or still tracked, as a real peer never hands out an SPI it holds. (Random draws
    /// collided once in a 5-minute soak, and the checks took the second Child SA's numbers for
    /// reused ones.)
    mutating func claimPeerSPI(_ spi: UInt32) -> UInt32 {
        var spi = spi
        while spi < 256 || !peerSPIs.insert(spi).inserted { spi &+= 1 }
        return spi
    }

    /// Whether the active member may give a new Child SA this inbound SPI: it holds none with it,
    /// and the checks no longer track one that had it.
    func isFreeInboundSPI(_ spi: UInt32, at index: Int) -> Bool {
        members[index].cluster.state.childSA(inboundSPI: spi) == nil && acceptedByCluster[spi] == nil
    }

    mutating func forgetRetiredSAs() {
        let states = liveStates
        retiredIKESAs = retiredIKESAs.filter { identifier in states.contains { $0.ikeSAs.contains(identifier) } }
        retiredChildSAs.removeAll { retired in
            guard states.allSatisfy({ $0.slot(forInboundSPI: retired.inbound) == nil }) else { return false }
            acceptedByCluster[retired.inbound] = nil
            acceptedFloor[retired.inbound] = nil
            splitBrainChildSAs.remove(retired.inbound)
            sent.forget(retired.outbound)
            peerSPIs.remove(retired.outbound)
            return true
        }
    }

    /// A packet at the active member: nil when nobody receives it (no active member, no SA),
    /// else whether it was accepted. The ICV covers the ESN high bits: a wrong inference fails.
    mutating func receiveAtCluster(_ spi: UInt32, _ number: UInt64, from source: String, forged: Bool = false) -> Bool? {
        guard let index = active else {
            traceESP(src: source, dst: "cluster", spi: spi, seq: number, forged: forged, verdict: "lost", receiver: "cluster")
            return nil
        }
        let checked = members[index].cluster.packetPath { state -> String? in
            guard let slot = state.slot(forInboundSPI: spi) else { return nil }
            switch state.checkInbound(wire: UInt32(truncatingIfNeeded: number), at: slot) {
            case .fresh(let full)?:
                // A forgery fails its ICV; so does a packet whose inferred ESN high bits are not
                // the ones it was sent with.
                return forged || full != number || (try? state.commitInbound(full, bytes: 1_000, at: slot)) == nil ? "fail" : "accept"
            case .replayed?: return "replay"
            case .stale?, nil: return "stale"
            }
        }
        guard let verdict = checked ?? nil else {
            traceESP(src: source, dst: name(index), spi: spi, seq: number, forged: forged, verdict: "fail", receiver: "cluster")
            return nil
        }
        traceESP(src: source, dst: name(index), spi: spi, seq: number, forged: forged, verdict: verdict, receiver: "cluster")
        guard verdict == "accept" else { return false }
        // Numbers are kept from one window below the highest accepted: the peer sends in order,
        // so a packet further below is one the window must refuse (stale), and accepting it
        // counts as accepting a replay. Bounded memory for long runs.
        let window = UInt64(configuration.replayWindow)
        if number < acceptedFloor[spi, default: 0] || !acceptedByCluster[spi, default: []].insert(number).inserted {
            // A member that was active beside another never saw what the other accepted.
            if splitBrainChildSAs.contains(spi) { report.splitBrainReplaysAccepted += 1 } else { report.replaysAccepted += 1 }
        }
        if acceptedByCluster[spi]!.count > Int(window) + 64, let top = acceptedByCluster[spi]!.max(), top > window {
            acceptedFloor[spi] = top - window
            acceptedByCluster[spi] = acceptedByCluster[spi]!.filter { $0 >= top - window }
        }
        return true
    }

    /// IKE: the peer's requests, retransmissions and the cluster's answers; the cluster's own
    /// liveness checks.
    mutating func ike() throws {
        let due = outside.filter { $0.at <= now.nanoseconds }
        outside.removeAll { $0.at <= now.nanoseconds }
        for (_, message) in due {
            // Described before delivery: a takeover in between does not rename the receiver.
            let line = trace == nil && capture == nil ? nil : describe(message)
            let verdict = try deliver(message)
            if let line { traceIKE(line, verdict: verdict) }
        }
        for i in peers.indices where !peers[i].dead {
            let identifier = peers[i].identifier
            if var outstanding = peers[i].outstanding {
                // Retransmissions back off, 100 ms doubling (RFC 7296 section 2.1): about 3 s in all.
                if now.nanoseconds - outstanding.sentAt.nanoseconds >= 100_000_000 << UInt64(outstanding.attempts) {
                    guard outstanding.attempts < 5 else {
                        peers[i].dead = true
                        peers[i].lostReason = "the peer gave up: no answer to its request for 3 s"
                        continue
                    }
                    outstanding.attempts += 1
                    outstanding.sentAt = now
                    peers[i].outstanding = outstanding
                    sendOutside(.peerRequest(identifier, outstanding.messageID, outstanding.kind))
                }
            } else if now.nanoseconds >= peers[i].nextExchangeAt.nanoseconds, now.nanoseconds < quietFrom,
                let messageID = try? peers[i].windows.requests.nextRequestID()
            {
                peers[i].exchangesStarted += 1
                let kind: ExchangeKind
                if configuration.ikeSARekeyEvery > 0, peers[i].exchangesStarted % configuration.ikeSARekeyEvery == 0 {
                    kind = .ikeRekey(newInitiatorSPI: random.next() | 1)
                } else if peers[i].exchangesStarted % 4 == 0, let child = peers[i].children.first {
                    kind = .rekey(old: child.clusterInbound)
                } else {
                    // Also an IKE SA without Child SAs (RFC 7296 allows one): a member that took
                    // over holding the IKE SA but not yet its Child SAs answered the peer's
                    // retransmitted request without them.
                    kind = .liveness
                }
                peers[i].outstanding = (messageID, kind, now, 0)
                peers[i].nextExchangeAt = Timestamp(nanoseconds: now.nanoseconds + configuration.ikeExchangeIntervalMs * 1_000_000)
                sendOutside(.peerRequest(identifier, messageID, kind))
            }
        }
        // New IKE SAs, and their retransmissions.
        if configuration.newIKESAsPerSecond > 0, step % max(1, 1_000 / configuration.newIKESAsPerSecond) == 0 {
            nextIKESPI += 1
            establishing[nextIKESPI] = now
            establishRequested += 1
            sendOutside(.establish(nextIKESPI))
        }
        for (spi, since) in establishing.sorted(by: { $0.key < $1.key }) where now.nanoseconds - since.nanoseconds >= 100_000_000 {
            if now.nanoseconds - since.nanoseconds >= 500_000_000 {
                establishing[spi] = nil
            } else if (now.nanoseconds - since.nanoseconds) % 100_000_000 < 1_000_000 {
                sendOutside(.establish(spi))
            }
        }
        // The cluster's liveness checks, one IKE SA per step in turn, each at twice the interval.
        if let index = active, !peers.isEmpty {
            let perStep = max(1, peers.count / Int(2 * configuration.ikeExchangeIntervalMs))
            for offset in 0..<perStep {
                let identifier = peers[(step * perStep + offset) % peers.count].identifier
                guard clusterOutstanding[identifier] == nil, members[index].cluster.state.ikeSAs[identifier] != nil else { continue }
                var messageID: UInt32?
                _ = try change { state, changes throws(GatewayStateError) in
                    changes += try state.updateMessageIDs(of: identifier) { messageID = try? $0.requests.nextRequestID() }
                }
                guard let messageID else { continue }
                let token = try replicateExchange(identifier, messageID, initiatedHere: true, finished: false)
                clusterOutstanding[identifier] = (messageID, now)
                hold(token, .clusterRequest(identifier, messageID))
            }
            // Retransmit what went out unanswered (a request still held for its tickets has not).
            let waiting = Set(held.values.joined().compactMap { message -> IKESAIdentifier? in
                if case .clusterRequest(let identifier, _) = message { identifier } else { nil }
            })
            for (identifier, request) in clusterOutstanding where now.nanoseconds - request.1.nanoseconds >= 100_000_000 && !waiting.contains(identifier) {
                clusterOutstanding[identifier] = (request.0, now)
                sendOutside(.clusterRequest(identifier, request.0))
            }
        }
    }

    /// Delivers one IKE message; returns its receiver's verdict: `accept`, `retransmit` (a
    /// retransmission, answered again), `drop`, or `lost` (nobody to receive it).
    mutating func deliver(_ message: IKEMessage) throws -> String {
        switch message {
        case .establish(let spi):
            guard let index = active else { return "lost" }
            let state = members[index].cluster.state
            if let existing = state.ikeSAs.values.first(where: { $0.identifier.initiatorSPI == spi }) {
                // The answer still held for the standbys goes out when they have the state, not
                // before (the trace of a run at 40% synch loss showed one leaving early).
                if isHeld({ if case .established(let held, _) = $0 { held == existing.identifier } else { false } }) { return "retransmit" }
                let children = existing.childSAs.compactMap(state.childSA(inboundSPI:)).map { ($0.inboundSPI, $0.outboundSPI) }
                sendOutside(.established(existing.identifier, children: children))
                return "retransmit"
            }
            var ike = try SAFixtures.ikeSA(spi, owner: members[index].id, &random)
            ike.extensions = IKEExtensions(messageIDSync: true, replayCounterSync: true)
            var childSAs: [ChildSA] = []
            for _ in 0..<configuration.childSAsPerIKESA {
                var inbound = UInt32(truncatingIfNeeded: random.next()) | 0x2000_0000
                while !isFreeInboundSPI(inbound, at: index) || childSAs.contains(where: { $0.inboundSPI == inbound }) { inbound &+= 1 }
                var child = try SAFixtures.childSA(inbound, parent: ike.identifier, window: configuration.replayWindow, owner: members[index].id, &random)
                child.outboundSPI = claimPeerSPI(child.outboundSPI)
                childSAs.append(child)
            }
            let token = try change { state, changes throws(GatewayStateError) in
                changes += try state.createIKESA(ike)
                for child in childSAs { changes += try state.createChildSA(child) }
            }
            hold(token, .established(ike.identifier, children: childSAs.map { ($0.inboundSPI, $0.outboundSPI) }))
            return "accept"
        case .established(let identifier, let children):
            guard establishing.removeValue(forKey: identifier.initiatorSPI) != nil, peerIndex[identifier] == nil else { return "drop" }
            peerIndex[identifier] = peers.count
            peers.append(
                PeerIKESA(
                    identifier: identifier,
                    windows: IKEMessageIDWindows(),
                    nextExchangeAt: Timestamp(nanoseconds: now.nanoseconds + configuration.ikeExchangeIntervalMs * 1_000_000),
                    children: children.map {
                        PeerChildSA(clusterInbound: $0.inbound, clusterOutbound: $0.outbound, received: SetReplayWindow(size: UInt64(configuration.replayWindow)))
                    }))
            report.ikeSAsEstablished += 1
            report.ikeSAs += 1
            report.childSAs += children.count
            if let delta = pendingSyncs.removeValue(forKey: identifier) { messageIDSync(identifier, delta: delta) }
            return "accept"
        case .peerRequest(let identifier, let messageID, let kind):
            guard let index = active else { return "lost" }
            let state = members[index].cluster.state
            guard let sa = state.ikeSAs[identifier] else { return "drop" }
            switch sa.messageIDs.responses.classify(messageID) {
            case .new:
                _ = try replicateExchange(identifier, messageID, initiatedHere: false, finished: false)
                // A request on the new IKE SA of a rekey proves the peer has it: the old one,
                // empty since the rekey, goes even if the peer's delete was lost.
                let emptyOld = sa.rekeyedFrom.flatMap { old in state.ikeSAs[old]?.childSAs.isEmpty == true ? old : nil }
                if let emptyOld { clusterOutstanding[emptyOld] = nil }
                var freshChild: (old: UInt32, fresh: ChildSA)?
                if case .rekey(let old) = kind, let oldSA = state.childSA(inboundSPI: old) {
                    var spi = UInt32(truncatingIfNeeded: random.next()) | 0x1000_0000
                    while !isFreeInboundSPI(spi, at: index) { spi &+= 1 }
                    var fresh = try SAFixtures.childSA(spi, parent: identifier, window: configuration.replayWindow, owner: members[index].id, &random)
                    fresh.outboundSPI = claimPeerSPI(fresh.outboundSPI)
                    fresh.localSelectors = oldSA.localSelectors
                    // The exchange that made it, so that a retransmitted request finds it.
                    fresh.requestID = messageID
                    freshChild = (old, fresh)
                }
                var freshIKESA: IKESA?
                if case .ikeRekey(let initiatorSPI) = kind {
                    // RFC 7296 section 2.18: a new IKE SA (message IDs from 0, as every new one), the
                    // Child SAs moved.
                    var fresh = try SAFixtures.ikeSA(initiatorSPI, remote: sa.remote.address, owner: members[index].id, &random)
                    fresh.extensions = IKEExtensions(messageIDSync: sa.extensions.messageIDSync, replayCounterSync: sa.extensions.replayCounterSync)
                    freshIKESA = fresh
                }
                _ = try change { state, changes throws(GatewayStateError) in
                    changes += try state.updateMessageIDs(of: identifier) { try? $0.responses.recordProcessed(messageID) }
                    if let emptyOld { changes += try state.deleteIKESA(emptyOld) }
                    if let freshChild {
                        changes += try state.createChildSA(freshChild.fresh)
                        changes += try state.deleteChildSA(inboundSPI: freshChild.old)
                    }
                    if let freshIKESA { changes += try state.rekeyIKESA(identifier, to: freshIKESA) }
                }
                let token = try replicateExchange(identifier, messageID, initiatedHere: false, finished: true)
                let newChild = freshChild.map { ($0.fresh.inboundSPI, $0.fresh.outboundSPI) }
                hold(token, .clusterResponse(identifier, messageID, newChild: newChild, newIKESA: freshIKESA?.identifier))
                return "accept"
            case .retransmission:
                // The response was lost, or this member took over: answer again, unless the
                // answer is still held for the standbys. A rekey's new Child SA is the one its
                // exchange made.
                if isHeld({ if case .clusterResponse(identifier, messageID, _, _) = $0 { true } else { false } }) { return "retransmit" }
                switch kind {
                case .liveness:
                    sendOutside(.clusterResponse(identifier, messageID, newChild: nil))
                case .rekey:
                    let child = sa.childSAs.compactMap(state.childSA(inboundSPI:)).first { $0.requestID == messageID }
                    sendOutside(.clusterResponse(identifier, messageID, newChild: child.map { ($0.inboundSPI, $0.outboundSPI) }))
                case .ikeRekey(let initiatorSPI):
                    // The IKE SA that exchange made, found by the initiator SPI the peer proposed.
                    let made = state.ikeSAs.keys.first { $0.initiatorSPI == initiatorSPI }
                    sendOutside(.clusterResponse(identifier, messageID, newChild: nil, newIKESA: made))
                }
                return "retransmit"
            case .tooOld, .outsideWindow:
                return "drop"
            }
        case .clusterResponse(let identifier, let messageID, let newChild, let newIKESA):
            guard let i = peerIndex[identifier], !peers[i].dead, let outstanding = peers[i].outstanding, outstanding.messageID == messageID
            else { return "drop" }
            try? peers[i].windows.requests.receiveResponse(messageID)
            peers[i].outstanding = nil
            report.ikeExchanges += 1
            if case .ikeRekey = outstanding.kind, let newIKESA, newIKESA != identifier {
                // Continue on the new IKE SA, from message ID 0, and delete the old one on it.
                peerIndex[identifier] = nil
                peerIndex[newIKESA] = i
                peers[i].identifier = newIKESA
                peers[i].windows = IKEMessageIDWindows()
                peers[i].syncPeer = MessageIDSyncPeer()
                retiredIKESAs.insert(identifier)
                report.ikeSARekeys += 1
                sendOutside(.peerDeleteIKESA(identifier))
            }
            if case .rekey(let old) = outstanding.kind, let newChild, let child = peers[i].children.firstIndex(where: { $0.clusterInbound == old }),
                newChild.inbound != old
            {
                retiredChildSAs.append((old, peers[i].children[child].clusterOutbound))
                peers[i].children[child] = PeerChildSA(
                    clusterInbound: newChild.inbound, clusterOutbound: newChild.outbound, received: SetReplayWindow(size: UInt64(configuration.replayWindow)))
                report.childSARekeys += 1
            }
            return "accept"
        case .clusterRequest(let identifier, let messageID):
            if peerIndex[identifier] == nil, retiredIKESAs.contains(identifier) {
                // A request on an IKE SA the peer deleted after rekeying it (the delete was lost,
                // or a takeover brought the IKE SA back): it says so again.
                sendOutside(.peerDeleteIKESA(identifier))
                return "drop"
            }
            guard let i = peerIndex[identifier], !peers[i].dead else { return "drop" }
            switch peers[i].windows.responses.classify(messageID) {
            case .new:
                try? peers[i].windows.responses.recordProcessed(messageID)
                sendOutside(.peerResponse(identifier, messageID))
                return "accept"
            case .retransmission:
                sendOutside(.peerResponse(identifier, messageID))
                return "retransmit"
            case .tooOld, .outsideWindow:
                report.ikeRequestsDroppedByPeer += 1
                return "drop"
            }
        case .peerDeleteIKESA(let identifier):
            guard let index = active else { return "lost" }
            guard members[index].cluster.state.ikeSAs.contains(identifier) else { return "drop" }
            clusterOutstanding[identifier] = nil
            _ = try change { state, changes throws(GatewayStateError) in changes += try state.deleteIKESA(identifier) }
            return "accept"
        case .peerResponse(let identifier, let messageID):
            guard active != nil else { return "lost" }
            guard clusterOutstanding[identifier]?.0 == messageID else { return "drop" }
            clusterOutstanding[identifier] = nil
            report.ikeExchanges += 1
            _ = try change { state, changes throws(GatewayStateError) in
                changes += try state.updateMessageIDs(of: identifier) { try? $0.requests.receiveResponse(messageID) }
            }
            _ = try replicateExchange(identifier, messageID, initiatedHere: true, finished: true)
            return "accept"
        }
    }

    mutating func finish() {
        report.staleRecordsRefused = members.filter(\.alive).compactMap { $0.cluster.replicaStatistics.map { Int($0.stale) } }.reduce(0, +)
        let state = activeState
        report.ikeSAsSurvived = 0
        report.ikeSAsLostByReason = [:]
        for peer in peers {
            let reason: String? =
                if let lost = peer.lostReason { lost }
                else if state == nil { "no active member at the end" }
                else if state?.ikeSAs[peer.identifier] == nil { "not in the state of the member that took over" }
                else { nil }
            if let reason { report.ikeSAsLostByReason[reason, default: 0] += 1 } else { report.ikeSAsSurvived += 1 }
        }
        report.ikeSAsLost = report.ikeSAs - report.ikeSAsSurvived
        // A member holds no IKE SA nobody asked for: those of the start, one per IKE SA the peer
        // asked to establish (an answer lost in a takeover leaves one the peer never knew: the
        // torture run counted one past a tighter bound) and one per rekey.
        let bound = configuration.ikeSAs + establishRequested + report.ikeSARekeys
        report.stateBoundExceeded = members.filter { $0.alive && $0.cluster.state.ikeSAs.count > bound }.count
    }
}

/// The numbers the cluster sent on each outbound SPI, as runs of consecutive numbers per
/// member: a member's counter moves one at a time except at a takeover or a reassertion, so a
/// handful of runs per SPI say exactly which numbers were sent, whichever members sent them
/// (two active members of a split brain send on the same SPI).
struct SentNumbers {
    private var runs: [UInt32: [(member: Int, low: UInt64, high: UInt64)]] = [:]

    /// Records `number` sent on `spi` by `member`; false when it had been sent before.
    mutating func record(_ number: UInt64, on spi: UInt32, by member: Int) -> Bool {
        var list = runs[spi, default: []]
        defer { runs[spi] = list }
        let fresh = !list.contains { $0.low <= number && number <= $0.high }
        if let last = list.lastIndex(where: { $0.member == member }), list[last].high &+ 1 == number {
            list[last].high = number
        } else {
            list.append((member, number, number))
        }
        return fresh
    }

    /// Forgets an SPI (its Child SA is gone everywhere).
    mutating func forget(_ spi: UInt32) { runs[spi] = nil }
}
