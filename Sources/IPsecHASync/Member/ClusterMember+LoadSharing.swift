internal import IPsecHACore

// Load sharing: every member serves the segments its SegmentOwnership gives it, replicates its
// own SAs to every other member and holds a replica of each of theirs; segments move with their
// SAs, taken over after a failure (the takeover plan, restricted to the segment) or handed over.
extension ClusterMember {
    /// Makes the ownership machine at the first call: its start time begins the startup silence.
    mutating func startOwnership(now: Timestamp) {
        guard case .sharing(var sharing) = lifecycle, sharing.ownership == nil, let configuration = configuration.loadSharing else { return }
        lifecycle = .moving
        sharing.ownership = SegmentOwnership(configuration: configuration, now: now)
        lifecycle = .sharing(sharing)
    }

    /// Whether this load-sharing member is in its startup silence (or has not started): it
    /// sends and answers nothing, so that its peers declare its previous life down first.
    func isStartupSilent(now: Timestamp) -> Bool {
        guard case .sharing(let sharing) = lifecycle else { return false }
        guard let ownership = sharing.ownership else { return true }
        return now.nanoseconds < ownership.startedAt.nanoseconds &+ ownership.configuration.startupSilenceNanoseconds
    }

    /// A delivery or a restart seen by a load-sharing member: every record to the ownership
    /// machine, to the replica of its sender and to the replicator (a resync request).
    mutating func routeSharing(_ action: SyncChannelAction, now: Timestamp) {
        guard case .sharing(var sharing) = lifecycle else { return }
        lifecycle = .moving
        var ownershipActions: [OwnershipAction] = []
        switch action {
        case .deliver(let from, let records):
            for record in records {
                ownershipActions += sharing.ownership?.receive(record, from: from, now: now) ?? []
                sharing.replicas[from]?.apply([record], now: now)
                enqueue(sharing.replicator.handle(.deliver(from: from, records: [record]), state: sharing.state, channel: &channel, now: now))
            }
        case .peerRestarted(let peer, _):
            sharing.ownership?.peerRestarted(peer)
            sharing.replicas[peer] = Replica()
        case .resyncNeeded:
            enqueue(sharing.replicator.handle(action, state: sharing.state, channel: &channel, now: now))
        case .transmit, .dropped:
            break
        }
        perform(ownershipActions, &sharing, now: now)
        lifecycle = .sharing(sharing)
    }

    mutating func sharingTick(now: Timestamp) {
        guard case .sharing(var sharing) = lifecycle, var ownership = sharing.ownership else { return }
        lifecycle = .moving
        defer { lifecycle = .sharing(sharing) }
        ownership.isReady = sharing.replicas.values.allSatisfy(\.isReady)
        if !hearsQuorum(failed: nil, heardSince: silenceWindowStart(now: now)) { sharing.lastCutOff = now }
        let actions = ownership.tick(now: now)
        sharing.ownership = ownership
        perform(actions, &sharing, now: now)
        enqueue(sharing.replicator.pump(state: sharing.state, channel: &channel, now: now))
        for (other, replica) in sharing.replicas.sorted(by: { $0.key < $1.key }) where !replica.isReady && !replica.isResyncing {
            guard Self.isDue(sharing.lastHello[other], every: configuration.helloInterval, now: now) else { continue }
            sharing.lastHello[other] = now
            say(replica.hello(epoch: ownership.configuration.incarnation), to: [other], now: now)
        }
        let due = scheduler.takeDueCheckpoints(from: &sharing.state, now: now)
        if !due.isEmpty {
            enqueue(sharing.replicator.replicate(checkpoints: due, state: sharing.state, channel: &channel, now: now).actions)
            outbox.append(.countersCheckpointed(due))
        }
        adoptPending(&sharing, now: now)
        completeReleases(&sharing, now: now)
        if channel.statistics.streamResets != sharing.streamResets {
            // A resync reset a stream, and with it the claims in flight on it.
            sharing.streamResets = channel.statistics.streamResets
            for peer in configuration.channel.peers { sharing.ownership?.streamReset(to: peer) }
        }
    }

    private mutating func perform(_ actions: [OwnershipAction], _ sharing: inout Sharing, now: Timestamp) {
        for action in actions {
            switch action {
            case .send(let records, let peer):
                do throws(SyncChannelError) {
                    enqueue(try channel.send(records, to: peer, now: now).actions)
                } catch {
                    // Lost claims would leave the peer waiting for their number: the whole table
                    // goes again, under a newer one, once the channel takes it.
                    ownershipSendsRefused += 1
                    sharing.ownership?.streamReset(to: peer)
                }
            case .startServing(let segment, let previous, let handedOver):
                if let previous, previous != configuration.channel.member {
                    // Copies from an earlier ownership of the segment are stale: never send on them.
                    let segments = sharing.ownership!.configuration.segments
                    var changes: [StateChange] = []
                    for identifier in segments.ikeSAIdentifiers(in: segment, of: sharing.state) {
                        changes += (try? sharing.state.deleteIKESA(identifier)) ?? []
                    }
                    replicate(changes, &sharing, now: now)
                    sharing.pendingAdoptions[segment] = (previous, handedOver)
                } else if previous == nil || !handedOver {
                    // Nobody's (its owner's SAs were lost), or this member's own after a lapse
                    // during which a peer restarted: SAs of the segment this member still holds
                    // are from an earlier ownership (torture seed 720: they were resumed after
                    // the member that took the segment over had died and its claim had been
                    // released), or may have been served meanwhile by a member since forgotten.
                    resumeBlind(segment, previousOwner: previous, &sharing, now: now)
                } else {
                    outbox.append(.segmentStarted(segment, previousOwner: nil, handedOver: handedOver, plan: TakeoverPlan(ikeSAs: [], childSAs: []), rekey: []))
                }
                sharing.stoppedAt[segment] = nil
                adoptPending(&sharing, now: now)
            case .stopServing(let segment):
                sharing.stoppedAt[segment] = now
                sharing.pendingAdoptions[segment] = nil
                outbox.append(.segmentStopped(segment))
            case .peerUp, .peerDown:
                break
            }
        }
    }

    private mutating func replicate(_ changes: [StateChange], _ sharing: inout Sharing, now: Timestamp) {
        guard !changes.isEmpty else { return }
        enqueue(sharing.replicator.replicate(changes, state: sharing.state, channel: &channel, now: now).actions)
    }

    /// Adopts the SAs of started segments whose previous owner's replica is complete.
    private mutating func adoptPending(_ sharing: inout Sharing, now: Timestamp) {
        for (segment, origin) in sharing.pendingAdoptions.sorted(by: { $0.key < $1.key }) where sharing.replicas[origin.previous]?.isReady ?? true {
            sharing.pendingAdoptions[segment] = nil
            adopt(segment, from: origin.previous, handedOver: origin.handedOver, &sharing, now: now)
        }
    }

    /// Moves the SAs of `segment` from the replica of `previous` into this member's own state:
    /// after a failure with the takeover plan (outbound counters advanced, inbound windows
    /// restored); after a handover the same way, which costs a skip of sequence numbers but
    /// needs no final checkpoint to arrive first. After a failure that this member may have
    /// seen only in part, cut off from a quorum since the replica was last complete, the plan
    /// is blind: meanwhile the owner may have resumed the segment blind itself, and that did
    /// not reach the replica (torture seed 120065 resumed 2^31 below the owner's numbers).
    private mutating func adopt(_ segment: Segment, from previous: ClusterMemberID, handedOver: Bool, _ sharing: inout Sharing, now: Timestamp) {
        guard var replica = sharing.replicas[previous], let segments = sharing.ownership?.configuration.segments else { return }
        if !handedOver {
            replica.applyHeldCheckpoints(channel.recordsHeldBehindGap(from: previous), now: now)
            sharing.replicas[previous] = replica
        }
        var source = replica.state
        let identifiers = segments.ikeSAIdentifiers(in: segment, of: source)
        var rekey: [UInt32] = []
        var plan = TakeoverPlan(ikeSAs: [], childSAs: [])
        if !identifiers.isEmpty {
            var policy = configuration.takeover
            if !handedOver, let cutOff = sharing.lastCutOff, cutOff >= replica.completeAsOf ?? Timestamp(nanoseconds: 0) {
                policy = policy.blind(exactAsOf: replica.completeAsOf, now: now)
            }
            plan = replica.takeoverPlan(policy: policy, now: now, restrictedTo: Set(identifiers))
            if !handedOver { Self.raise(&plan, &source, toCopiesIn: sharing.replicas, besides: previous) }
            rekey = source.applyTakeover(plan).rekey
            let me = configuration.channel.member
            var changes: [StateChange] = []
            for identifier in identifiers where sharing.state.ikeSAs[identifier] == nil {
                var ike = source.ikeSAs[identifier]!
                ike.owner = me
                changes += (try? sharing.state.createIKESA(ike)) ?? []
                for spi in ike.childSAs where !rekey.contains(spi) {
                    guard var child = source.childSA(inboundSPI: spi) else { continue }
                    child.owner = me
                    changes += (try? sharing.state.createChildSA(child)) ?? []
                }
            }
            replicate(changes, &sharing, now: now)
        }
        outbox.append(.segmentStarted(segment, previousOwner: previous, handedOver: handedOver, plan: plan, rekey: rekey))
    }

    /// Moves the counters of a failure's plan past what any other member's copy holds of the
    /// same Child SAs. The claim a takeover supersedes names the member that held the segment
    /// last, not the one that served it last: a member that took the segment over from a
    /// member that had died may itself fail before it served, and then the dead member's copy,
    /// not the claim holder's, has the numbers the peer saw (torture seed 150605: member 2
    /// served a segment from 7,140,443 on and died; member 1's claim on it was never served;
    /// member 4 took it over from its copy of member 1 at 1,530,477). Each counter continues
    /// from the highest any copy holds, plus the plan's advance.
    private static func raise(
        _ plan: inout TakeoverPlan, _ source: inout GatewayState, toCopiesIn replicas: [ClusterMemberID: Replica], besides previous: ClusterMemberID
    ) {
        for (index, decision) in plan.childSAs.enumerated() {
            guard case .resume = decision.outbound, let held = source.childSA(inboundSPI: decision.inboundSPI) else { continue }
            for (member, replica) in replicas where member != previous {
                guard let copy = replica.state.childSA(inboundSPI: decision.inboundSPI) else { continue }
                try? source.observeCounters(copy.counterCheckpoint)
            }
            guard let raised = source.childSA(inboundSPI: decision.inboundSPI)?.outboundCounter, raised.lastSent > held.outboundCounter.lastSent else { continue }
            let limit = raised.hardLimit
            plan.childSAs[index].outbound =
                raised.lastSent > limit - min(decision.advance, limit) ? .rekey : .resume(lastSent: raised.lastSent + decision.advance)
        }
    }

    /// Resumes this member's own SAs of `segment` as after a blind takeover: another member
    /// may have served them since this one stopped, from a copy of them, under a claim since
    /// released or forgotten. Every counter of the segment moves past what that member can have sent or
    /// accepted, and the moved Child SAs are replicated whole, so that a replica never holds the
    /// counters from before the move.
    private mutating func resumeBlind(_ segment: Segment, previousOwner: ClusterMemberID?, _ sharing: inout Sharing, now: Timestamp) {
        guard let segments = sharing.ownership?.configuration.segments else { return }
        let identifiers = Set(segments.ikeSAIdentifiers(in: segment, of: sharing.state))
        var plan = TakeoverPlan(ikeSAs: [], childSAs: [])
        var rekey: [UInt32] = []
        if !identifiers.isEmpty {
            let policy = configuration.takeover.blind(exactAsOf: sharing.stoppedAt[segment], now: now)
            plan = TakeoverPlanner.plan(state: sharing.state, inFlight: [:], suspect: .all, policy: policy, now: now, restrictedTo: identifiers)
            rekey = sharing.state.applyTakeover(plan).rekey
            var changes: [StateChange] = []
            for decision in plan.childSAs {
                changes += (try? sharing.state.updateChildSA(inboundSPI: decision.inboundSPI) { _ in }) ?? []
            }
            replicate(changes, &sharing, now: now)
        }
        outbox.append(.segmentStarted(segment, previousOwner: previousOwner, handedOver: false, plan: plan, rekey: rekey))
    }

    /// Deletes the SAs of segments another member owns now, once that member's replicated
    /// state holds them with outbound counters at least as far as this member's (so that they
    /// exist somewhere at every moment, and a stale copy the new owner held from an earlier
    /// ownership does not count).
    private mutating func completeReleases(_ sharing: inout Sharing, now: Timestamp) {
        guard let ownership = sharing.ownership else { return }
        let me = configuration.channel.member
        var lost: [Segment: [IKESAIdentifier]] = [:]
        for sa in sharing.state.ikeSAs.values {
            let segment = ownership.configuration.segments.segment(of: sa)
            guard let claim = ownership.claim(of: segment), claim.owner != me || claim.incarnation != ownership.configuration.incarnation
            else { continue }
            lost[segment, default: []].append(sa.identifier)
        }
        var changes: [StateChange] = []
        for (segment, identifiers) in lost.sorted(by: { $0.key < $1.key }) {
            guard let owner = ownership.claim(of: segment)?.owner, let theirs = sharing.replicas[owner], theirs.isReady,
                identifiers.allSatisfy({ Self.holds(theirs.state, $0, asFarAs: sharing.state) })
            else { continue }
            for identifier in identifiers.sorted() { changes += (try? sharing.state.deleteIKESA(identifier)) ?? [] }
        }
        replicate(changes, &sharing, now: now)
    }

    /// Whether `state` holds the IKE SA and each of its Child SAs in `reference`, with outbound
    /// counters no lower.
    private static func holds(_ state: GatewayState, _ identifier: IKESAIdentifier, asFarAs reference: GatewayState) -> Bool {
        guard state.ikeSAs[identifier] != nil, let mine = reference.ikeSAs[identifier] else { return false }
        return mine.childSAs.allSatisfy { spi in
            guard let theirs = state.childSA(inboundSPI: spi), let own = reference.childSA(inboundSPI: spi) else { return false }
            return theirs.outboundCounter.lastSent >= own.outboundCounter.lastSent
        }
    }
}
