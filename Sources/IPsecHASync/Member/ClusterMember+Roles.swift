internal import IPsecHACore

// What moves the member between its roles: routing the channel's deliveries, each role's tick,
// takeover, step-down and reassertion.
extension ClusterMember {
    mutating func enqueue(_ actions: [SyncChannelAction]) {
        for case .transmit(let to, let datagram) in actions { outbox.append(.transmit(to: to, datagram: datagram)) }
    }

    /// Sends one record to each of `peers`, its datagrams to the outbox; a peer the channel
    /// refuses (its buffer full) misses this one, as a hello may.
    mutating func say(_ record: SyncRecord, to peers: [ClusterMemberID], now: Timestamp) {
        for peer in peers {
            if let sent = try? channel.send([record], to: peer, now: now) { enqueue(sent.actions) }
        }
    }

    /// Whether `last` is nil or at least `interval` before `now`.
    static func isDue(_ last: Timestamp?, every interval: Duration, now: Timestamp) -> Bool {
        last.map { now >= $0 + interval } ?? true
    }

    /// Routes what the channel said: datagrams out, records to the replicator or the replica,
    /// hellos to the role.
    mutating func route(_ actions: [SyncChannelAction], now: Timestamp) {
        for action in actions {
            if case .transmit(let to, let datagram) = action {
                outbox.append(.transmit(to: to, datagram: datagram))
                continue
            }
            if isSharing {
                routeSharing(action, now: now)
                continue
            }
            switch action {
            case .transmit:
                break
            case .deliver(let from, let records):
                for case .hello(let epoch, let capabilities, _) in records { heardHello(from: from, epoch: epoch, capabilities: capabilities, now: now) }
                // After the hellos: the switchover's hello makes this member active first.
                if isActive {
                    for case .relayedDatagram(let relayed) in records { outbox.append(.relayed(relayed)) }
                }
                if case .standby(var standby) = lifecycle {
                    guard from == standby.active, !standby.activeRestarted else { continue }
                    lifecycle = .moving
                    standby.copyEpoch = max(standby.copyEpoch, channel.epoch(of: from) ?? 0)
                    standby.replica.apply(records, now: now)
                    lifecycle = .standby(standby)
                } else {
                    handOnToReplicator(action, now: now)
                }
            case .resyncNeeded:
                handOnToReplicator(action, now: now)
            case .peerRestarted(let peer, _):
                // The active member restarted: it serves nothing now, and what it says as a new
                // standby must not pass for a live active member (a crash and a quick reboot
                // hid the failure from the standbys, which never took over), nor reach the
                // replica (its hellos made the copy look complete up to then, and a takeover
                // moved the counters too little). The first incarnation a standby meets is
                // not a restart: it has no copy yet.
                if case .standby(var standby) = lifecycle, standby.ready || standby.replica.isResyncing, standby.active == peer {
                    standby.activeRestarted = true
                    lifecycle = .standby(standby)
                }
            case .dropped:
                break
            }
        }
    }

    var isSharing: Bool { if case .sharing = lifecycle { true } else { false } }

    /// Gives a delivery or a resync need to the replicator (active member only) and sends its answer.
    private mutating func handOnToReplicator(_ action: SyncChannelAction, now: Timestamp) {
        guard case .active(var active) = lifecycle else { return }
        lifecycle = .moving
        let answer = active.replicator.handle(action, state: active.state, channel: &channel, now: now)
        lifecycle = .active(active)
        enqueue(answer)
    }

    /// Above every epoch this member has been at or heard of, for a takeover, a claim or a
    /// reassertion; its low six bits are the member's rank, so that two members never take
    /// the same epoch (two standbys that took over at once, a rebooted member that forgot its
    /// epochs): at most one member is ever active at an epoch, which `Models/cluster-role.pml`
    /// checks. Saturates at the largest (a hello from a key holder can claim it).
    var nextEpoch: UInt32 {
        let highest = max(channel.configuration.epoch, role.epoch, highestEpochHeard)
        let (above, overflow) = (highest | Self.epochRankMask).addingReportingOverflow(1)
        return overflow ? .max : above | UInt32(rank) & Self.epochRankMask
    }

    private mutating func heardHello(from peer: ClusterMemberID, epoch: UInt32, capabilities: UInt32, now: Timestamp) {
        highestEpochHeard = max(highestEpochHeard, epoch)
        if capabilities & Self.readyStandbyCapability != 0 { readyStandbys[peer] = now } else { readyStandbys[peer] = nil }
        let complete = capabilities & ClusterRole.incompleteCopyCapability == 0
        if complete, capabilities & (ClusterRole.activeCapability | Self.readyStandbyCapability) != 0 { lastCompleteCopyHeard = now }
        if role.reassertionDue(afterHelloFrom: peer, epoch: epoch, capabilities: capabilities, now: now) { reassert(now: now) }
        let wasIncomplete = role.servesIncompleteCopy
        for case .steppedDown(let newer, let newerEpoch) in role.heardHello(from: peer, epoch: epoch, capabilities: capabilities) {
            // A newer active member: what this one served is the other's to carry on.
            steppedDownAt = now
            stepDown(wasIncomplete && complete ? .activeWithCompleteCopy(newer) : .newerActive(newer, epoch: newerEpoch), following: newer)
        }
        if capabilities & Self.claimCapability != 0 { answerClaim(from: peer, epoch: epoch, now: now) }
        if capabilities & Self.claimAgreedCapability != 0, case .standby(var standby) = lifecycle, standby.claim?.epoch == epoch {
            standby.claim!.acks.insert(peer)
            lifecycle = .standby(standby)
        }
        if capabilities & Self.switchOverCapability != 0, isReadyStandby(following: peer) {
            // The active member stopped, sent its final state before this hello (the channel
            // delivers in order) and handed over: this copy is exact, nothing moves.
            return takeOver(reason: .switchOver(from: peer), now: now, exact: true)
        }
        if case .standby(let standby) = lifecycle, peer == standby.active, capabilities & ClusterRole.steppedDownCapability != 0, !standby.activeRestarted {
            // The member this copy follows says it stepped down (keepalived or a newer member
            // did it; not a planned switchover, which hands over to its target and says
            // nothing of the sort): whoever took over serves beyond this copy, which is then no
            // complete copy of anything; keepalived must not elect it (torture seed 396: the
            // new active member had not heard this one since a partition and served at once).
            // Resynced from whoever says it is active.
            lifecycle = .standby(Standby(active: nil, former: standby.former, formerAsOf: standby.formerAsOf))
        }
        if case .standby(var standby) = lifecycle, capabilities & ClusterRole.activeCapability != 0, role.activeMember == peer {
            if peer != standby.active {
                // Another standby took over: its state went on from the plan, so the copy from
                // the failed member is no base for its records. Resynced from it. So too when
                // the member this one follows is active again at a newer epoch: it stepped down
                // and took over from another member's state meanwhile, which this copy lacks
                // (torture seed 396: its takeover was not heard here, a partition had just healed).
                standby = Standby(active: peer, former: standby.former, formerAsOf: standby.formerAsOf)
            } else if let followed = standby.activeEpoch, epoch > followed {
                // The reassertion this standby's stepped-down hello asked for moves the
                // counters in replicated records: the copy stays a base. Any other newer epoch
                // is a takeover this copy knows nothing of.
                if standby.reassertionAskedAt != followed { standby = Standby(active: peer, former: standby.former, formerAsOf: standby.formerAsOf) }
                standby.reassertionAskedAt = nil
            }
            standby.activeEpoch = epoch
            lifecycle = .standby(standby)
        }
    }

    mutating func activeTick(now: Timestamp) {
        guard case .active(var active) = lifecycle else { return }
        lifecycle = .moving
        if let announcement = active.announcement, announcementDone(announcement, now: now) {
            active.announcement = nil
            outbox.append(.tookOver(announcement.plan, rekey: announcement.rekey))
        }
        enqueue(active.replicator.pump(state: active.state, channel: &channel, now: now))
        // A scan visits every Child SA: at most five per checkpoint interval (a checkpoint is
        // then at most a fifth of it late), however often the embedder ticks.
        if Self.isDue(active.lastCheckpointScan, every: configuration.checkpoints.interval / 5, now: now) {
            active.lastCheckpointScan = now
            let due = scheduler.takeDueCheckpoints(from: &active.state, now: now)
            if !due.isEmpty {
                enqueue(active.replicator.replicate(checkpoints: due, state: active.state, channel: &channel, now: now).actions)
                outbox.append(.countersCheckpointed(due))
            }
        }
        if Self.isDue(active.lastHello, every: configuration.helloInterval, now: now) {
            // Says who is active, so that a member that was active too steps down (epochs decide).
            active.lastHello = now
            let hello = SyncRecord.hello(epoch: role.epoch, capabilities: role.capabilities, needsResync: false)
            say(hello, to: configuration.channel.peers, now: now)
        }
        lifecycle = .active(active)
    }

    mutating func standbyTick(now: Timestamp) {
        guard case .standby(var standby) = lifecycle else { return }
        lifecycle = .moving
        if !standby.replica.isReady, !standby.replica.isResyncing, Self.isDue(standby.lastHello, every: configuration.helloInterval, now: now) {
            askForResync(&standby, now: now)
        }
        if lastResortDue(standby, now: now), let silence = configuration.lastResortTakeover {
            return takeOver(from: &standby, reason: .noCompleteCopy(silentFor: silence), now: now)
        }
        guard let active = standby.active else {
            lifecycle = .standby(standby)
            return
        }
        standby.replica.observe(missingSince: channel.missingSince(from: active))
        if standby.replica.isReady, let request = standby.replica.takeResyncRequest(), let sent = try? channel.send([request], to: active, now: now) {
            enqueue(sent.actions)
        }
        if standby.replica.isReady, !standby.ready {
            // Said at once (not at the next hello interval): the other standbys defer to a lower
            // ID only once they know it is ready.
            standby.lastHello = nil
            standby.ready = true
            standby.former = nil
            outbox.append(.becameReady)
        }
        if standby.ready, Self.isDue(standby.lastHello, every: configuration.helloInterval, now: now) {
            // Tells the other standbys that this one could take over (they defer to a lower ID).
            standby.lastHello = now
            let hello = SyncRecord.hello(epoch: role.epoch, capabilities: Self.readyStandbyCapability, needsResync: false)
            say(hello, to: configuration.channel.peers.filter { $0 != active }, now: now)
        }
        // Only a ready standby takes over (an incomplete copy would lose what it lacks), and
        // only the lowest of those that are heard; with keepalived, only where the address is.
        if standby.ready, standby.activeRestarted || isSilent(active, now: now) {
            let noticed = standby.failureNoticedAt ?? now
            standby.failureNoticedAt = noticed
            if !configuration.followsVRRP {
                if !defersToAnotherStandby(active: active, now: now), now >= noticed + takeoverStagger(failed: active),
                    hearsQuorum(failed: active, heardSince: noticed), promise.map({ $0.to == configuration.channel.member || now >= $0.until }) ?? true
                {
                    if quorumSize <= 1 { return takeOver(from: &standby, reason: .activeMemberSilent(active), now: now) }
                    if let claim = standby.claim, now < claim.since + claimTimeout {
                        if claim.acks.count + 1 >= quorumSize { return takeOver(from: &standby, reason: .activeMemberSilent(active), now: now) }
                    } else {
                        // Asks first: the members that agree will not claim or agree to another
                        // claim meanwhile, and learn of this takeover before it happens.
                        let epoch = nextEpoch
                        standby.claim = (epoch, now, [])
                        promise = (configuration.channel.member, epoch, now + claimTimeout)
                        let hello = SyncRecord.hello(epoch: epoch, capabilities: Self.claimCapability | Self.readyStandbyCapability, needsResync: false)
                        say(hello, to: configuration.channel.peers.filter { $0 != active }, now: now)
                    }
                }
            } else {
                switch vrrp.activeMemberSilent(active) {
                case .takeOver(let reason): return takeOver(from: &standby, reason: reason, now: now)
                case .holdBack(let why): outbox.append(.heldBack(why))
                case .stay, .stepDown: break
                }
            }
        } else {
            vrrp.activeMemberHeard()
            standby.failureNoticedAt = nil
        }
        // keepalived gave this host the address while another member said it was active with a
        // newer epoch (a healed split brain): after a second for the other side to settle, the
        // address decides.
        if configuration.followsVRRP, vrrp.state == .master, let steppedDownAt, now >= steppedDownAt + .seconds(1) {
            return takeOver(from: &standby, reason: .external("keepalived: MASTER, the address is here"), now: now)
        }
        lifecycle = .standby(standby)
    }

    /// A standby's hello asking for a resync, saying it stepped down while it holds what it
    /// served (unless it handed that over): to its active member, or, with none known (after
    /// an external step-down), to every peer: the one that becomes active resyncs it.
    private mutating func askForResync(_ standby: inout Standby, now: Timestamp) {
        standby.lastHello = now
        let steppedDown = standby.former != nil && standby.handedOverTo == nil
        if steppedDown, standby.active != nil { standby.reassertionAskedAt = standby.activeEpoch }
        let hello = SyncRecord.hello(epoch: channel.configuration.epoch, capabilities: steppedDown ? ClusterRole.steppedDownCapability : 0, needsResync: true)
        say(hello, to: standby.active.map { [$0] } ?? configuration.channel.peers, now: now)
    }

    /// Whether nothing came from `peer` for the miss count of heartbeats (a peer never heard
    /// is not declared failed: it may not have started).
    func isSilent(_ peer: ClusterMemberID, now: Timestamp) -> Bool {
        guard let heard = channel.lastHeard(from: peer) else { return false }
        return now >= heard + silenceTime
    }

    /// The peers heard at least once and not silent now.
    func peersHeard(now: Timestamp) -> [ClusterMemberID] {
        configuration.channel.peers.filter { channel.lastHeard(from: $0) != nil && !isSilent($0, now: now) }
    }

    /// `now` less the miss count of heartbeats (0 when that reaches back beyond the clock's
    /// start): what was heard before it is silence.
    func silenceWindowStart(now: Timestamp) -> Timestamp {
        let silence = UInt64(silenceTime.nonNegativeNanoseconds)
        return Timestamp(nanoseconds: now.nanoseconds - min(now.nanoseconds, silence))
    }

    /// The miss count of heartbeat intervals: silence that long declares a member failed
    /// (saturating: a configuration too large for it never declares anyone failed).
    var silenceTime: Duration {
        let (silence, overflow) = configuration.channel.heartbeatIntervalNanoseconds.multipliedReportingOverflow(by: max(configuration.missCount, 1))
        return .nanoseconds(overflow ? .max : Int64(clamping: silence))
    }

    /// Whether this standby, not a complete copy, takes over as the last resort on its own:
    /// without keepalived, when ``mayTakeOverAsLastResort(_:now:)``.
    private func lastResortDue(_ standby: Standby, now: Timestamp) -> Bool {
        !configuration.followsVRRP && mayTakeOverAsLastResort(standby, now: now)
    }

    /// Whether this standby, not a complete copy, may serve as the last resort
    /// (``ClusterMemberConfiguration/lastResortTakeover``): no hello from an active member or a
    /// ready standby for that long since the first tick, and no member with a lower ID heard
    /// within it. With keepalived it then says it is electable (``ClusterMember/readiness``).
    func mayTakeOverAsLastResort(_ standby: Standby, now: Timestamp) -> Bool {
        guard let silence = configuration.lastResortTakeover, !standby.ready, let firstTick else { return false }
        // Hellos only: the member this one was told is active may be a restarted, empty standby
        // whose hellos ask for a resync (two members restarted that way waited for each other).
        let since = max(firstTick, lastCompleteCopyHeard ?? firstTick)
        guard now >= since + silence, hearsQuorum(failed: nil, heardSince: silenceWindowStart(now: now)) else { return false }
        let me = configuration.channel.member
        return !configuration.channel.peers.contains { peer in
            guard peer < me, let heard = channel.lastHeard(from: peer) else { return false }
            return now < heard + silence
        }
    }

    /// How long after noticing the active member's failure this standby waits before it takes
    /// over: two heartbeat intervals for each member with a lower ID (the failed one aside). The lowest ready standby takes over first, and its hello
    /// saying so reaches the others before they would: two standbys that took over together
    /// from the same copy would send the same sequence numbers. (Readiness hellos alone left
    /// a window: the torture run found three standbys taking over in the same millisecond,
    /// none yet told that a lower one had become ready.) The order holds while the synch link
    /// delivers within the stagger; beyond it (a 200 ms delay made every standby think the
    /// active dead) the members' outbound offsets keep their numbers apart (`Docs/Reliability.md`).
    private func takeoverStagger(failed: ClusterMemberID) -> Duration {
        let me = configuration.channel.member
        return configuration.channel.heartbeatInterval * 2 * configuration.channel.peers.filter { $0 != failed && $0 < me }.count
    }

    /// This member's place among all members by ID, from 0: its takeovers move outbound
    /// counters that many ``takeoverOffsetSpacing`` further (`TakeoverPolicy.outboundOffset`).
    var rank: Int { configuration.channel.peers.filter { $0 < configuration.channel.member }.count }

    /// Members that must agree to a takeover, this one included
    /// (``ClusterMemberConfiguration/takeoverQuorum``).
    private var quorumSize: Int {
        let members = configuration.channel.peers.count + 1
        return configuration.takeoverQuorum ?? (members <= 2 ? 1 : members / 2 + 1)
    }

    /// How long a claim to the active role waits for a quorum to agree (four heartbeat
    /// intervals); an agreement holds half as long again, so that it outlasts the claim.
    private var claimTimeout: Duration { configuration.channel.heartbeatInterval * 4 }

    /// Agrees to another standby's claim to the active role, unless this member still hears
    /// the active member it follows (the claimer is cut off from it, not the other way round),
    /// agreed to another claim that still holds, or claims itself with a lower ID.
    private mutating func answerClaim(from peer: ClusterMemberID, epoch: UInt32, now: Timestamp) {
        guard case .standby(var standby) = lifecycle else { return }
        if let active = standby.active, active != peer, !standby.activeRestarted, channel.lastHeard(from: active) != nil, !isSilent(active, now: now) {
            return
        }
        if let promise, now < promise.until, promise.to != peer { return }
        if standby.claim != nil, configuration.channel.member < peer { return }
        standby.claim = nil
        standby.agreedTo = peer
        lifecycle = .standby(standby)
        promise = (peer, epoch, now + claimTimeout * 3 / 2)
        let hello = SyncRecord.hello(
            epoch: epoch, capabilities: Self.claimAgreedCapability | (standby.ready ? Self.readyStandbyCapability : 0), needsResync: false)
        say(hello, to: [peer], now: now)
    }

    /// Whether this member, with the members it heard at `heardSince` or later (`failed`
    /// aside), makes ``ClusterMemberConfiguration/takeoverQuorum``. A standby counts only what
    /// it heard after it noticed the failure: a partition younger than the failure is not yet
    /// visible as silence (the torture run had a standby take over in a partition 34 ms old,
    /// counting a member it could no longer reach). With `runningSince`, a member counts only
    /// if its current run was heard from then or before: one that restarted since cannot say
    /// what its earlier run did, which may have been to take over and die (torture seed 114116
    /// counted two such members).
    func hearsQuorum(failed: ClusterMemberID?, heardSince: Timestamp, runningSince: Timestamp? = nil) -> Bool {
        let quorum = quorumSize
        let heard = configuration.channel.peers.filter { peer in
            guard peer != failed, let heard = channel.lastHeard(from: peer) else { return false }
            if let runningSince, let taken = channel.incarnationTaken(of: peer), taken > runningSince { return false }
            return heard >= heardSince
        }
        return heard.count + 1 >= quorum
    }

    /// Whether a ready standby with a lower ID than this one is heard: that one takes over.
    private func defersToAnotherStandby(active: ClusterMemberID, now: Timestamp) -> Bool {
        let me = configuration.channel.member
        return readyStandbys.contains { peer, said in
            peer != active && peer < me && now < said + configuration.helloInterval * 3 && channel.lastHeard(from: peer) != nil
                && !isSilent(peer, now: now)
        }
    }

    /// Whether this member is a ready standby of `active`; asked here so that no binding of the
    /// standby outlives the question (``takeOver(reason:now:exact:)``).
    private func isReadyStandby(following active: ClusterMemberID) -> Bool {
        guard case .standby(let standby) = lifecycle else { return false }
        return standby.active == active && standby.ready
    }

    /// ``takeOver(reason:now:exact:)`` from a standby taken out of ``lifecycle`` (and changed):
    /// back in, and the caller's copy emptied, so that the takeover holds the only copy of the
    /// replica's state.
    mutating func takeOver(from standby: inout Standby, reason: PromotionReason, now: Timestamp, exact: Bool = false) {
        lifecycle = .standby(standby)
        standby = Standby()
        takeOver(reason: reason, now: now, exact: exact)
    }

    /// The standby in ``lifecycle`` becomes the active member: a newer epoch, the plan from the
    /// replica (or, without a complete one, from the state this member served before, every
    /// IKE SA suspect) applied. Its replica's state must be the only copy: the takeover changes
    /// every Child SA's counters, and a second copy anywhere (a caller's binding of the
    /// standby) made the first change copy the whole state, every SA retained (200,000 Child
    /// SAs: most of a 150 ms takeover).
    mutating func takeOver(reason: PromotionReason, now: Timestamp, exact: Bool = false) {
        guard case .standby(var standby) = lifecycle else { return }
        lifecycle = .moving
        let epoch = nextEpoch
        _ = try? role.promote(reason, newEpoch: epoch, completeCopy: standby.replica.isReady)
        lastPromotion = reason
        promotions += 1
        try? channel.rotate(toEpoch: epoch)
        steppedDownAt = nil
        if let failed = standby.active { standby.replica.applyHeldCheckpoints(channel.recordsHeldBehindGap(from: failed), now: now) }
        let plan: TakeoverPlan
        var state: GatewayState
        var policy = configuration.takeover
        let (offset, overflow) = policy.outboundOffset.addingReportingOverflow(UInt64(rank) * Self.takeoverOffsetSpacing)
        policy.outboundOffset = overflow ? .max : offset
        let fromFormer = !standby.replica.isReady && standby.former != nil
        if !exact,
            !hearsQuorum(
                failed: standby.active, heardSince: silenceWindowStart(now: now),
                runningSince: standby.replica.completeAsOf) || fromFormer || standby.agreedTo != nil
                || anotherMemberMovedBeyond(standby)
        {
            // Told to take over (keepalived, an operator) without hearing a quorum of members
            // running since the copy was last complete, from the state it served before it
            // stepped down, after it agreed to another standby's claim and never heard it
            // active, or after another member moved to an epoch above this copy's (seed 104771:
            // its hello missed, it died): another member may have served meanwhile, unseen,
            // and may itself have moved by the unknown advance, by a rate bound near it, plus
            // its rank's offset. Every counter moves past that (twice the unknown advance, still
            // within what ESN inference allows), both ways. (The torture run had keepalived give
            // the address to a member cut off from the others, which died, and to a member that
            // had stepped down for one that then died: each resumed below the numbers the peer
            // had seen. And, seed 2618, a standby that took over 17 ms after the one it had
            // agreed to had, from a copy of the same state, sent numbers 2^30 higher than its
            // own plan.)
            policy = policy.blind(exactAsOf: fromFormer ? standby.formerAsOf : standby.replica.completeAsOf, now: now)
        }
        if !standby.replica.isReady, let former = standby.former {
            // The other member may have sent on these SAs meanwhile: counters without a fresh
            // checkpoint jump by the unknown advance.
            plan = TakeoverPlanner.plan(state: former, inFlight: [:], suspect: .all, policy: policy, now: now)
            state = former
        } else {
            var planned = standby.replica.takeoverPlan(policy: policy, now: now)
            if exact {
                // After a switchover the outbound counters are the active member's own, and it
                // sent nothing after them: the next packet carries the next number. A replica
                // holds a window's top, not its bitmap: everything up to the top counts as seen
                // (a packet the peer sent earlier that arrives late is dropped; none is
                // accepted twice), nothing above it is refused. IKE SAs keep their decisions
                // (an exchange in flight still needs its RFC 6311 sync).
                func makeExact(_ decision: inout ChildSATakeover, lastSent: UInt64) {
                    if case .resume = decision.outbound { decision.outbound = .resume(lastSent: lastSent) }
                    if case .restore = decision.inbound { decision.inbound = .restore(.conservative(advance: 0)) }
                    decision.advance = 0
                }
                // The plan lists the Child SAs in the order the state holds them: walked
                // together, no Child SA is looked up (a lookup and a copy of each took 0.5 s of
                // the handover at a million IKE SAs, now 42 ms); any the walk misses, one by one.
                var next = planned.childSAs.startIndex
                standby.replica.state.forEachChildSACounters { sa in
                    guard next < planned.childSAs.endIndex, planned.childSAs[next].inboundSPI == sa.inboundSPI else { return }
                    makeExact(&planned.childSAs[next], lastSent: sa.lastSent)
                    next += 1
                }
                for index in next..<planned.childSAs.endIndex {
                    guard let sa = standby.replica.state.childSA(inboundSPI: planned.childSAs[index].inboundSPI) else { continue }
                    makeExact(&planned.childSAs[index], lastSent: sa.outboundCounter.lastSent)
                }
            }
            plan = planned
            state = standby.replica.state
        }
        let replaced = standby.active
        standby = Standby()
        let outcome = state.applyTakeover(plan)
        var active = Active(replicator: Replicator(standbys: configuration.channel.peers), state: state)
        // After a switchover the old active member relays what still reaches it: no wait.
        if !exact { active.announcement = announce(plan, rekey: outcome.rekey, replacing: replaced, now: now) }
        lifecycle = .active(active)
        if active.announcement == nil { outbox.append(.tookOver(plan, rekey: outcome.rekey)) }
    }

    /// Tells every member heard now, reliably, that this one took over (at its new epoch), for
    /// ``Announcement``; nil when nobody else is heard but the member it replaces (`replaced`:
    /// with two members nobody can be elected unaware, and the crash takeover keeps
    /// keepalived's pace). With other members heard it waits for that one too, to hear it
    /// (if it lives, it steps down first: never two serving) or to find it silent: its last
    /// synch datagrams have reached the others then (torture seed 2397 broke without it).
    private mutating func announce(_ plan: TakeoverPlan, rekey: [UInt32], replacing replaced: ClusterMemberID?, now: Timestamp) -> Announcement? {
        let heard = peersHeard(now: now)
        guard heard.contains(where: { $0 != replaced }) else { return nil }
        let hello = SyncRecord.hello(epoch: role.epoch, capabilities: role.capabilities, needsResync: false)
        var tickets: [SyncTicket] = []
        for peer in heard {
            guard let sent = try? channel.sendReliable(to: peer, now: now, { packer throws(SyncChannelError) in try packer.append(hello) }) else { continue }
            enqueue(sent.actions)
            if let ticket = sent.ticket { tickets.append(ticket) }
        }
        guard !tickets.isEmpty else { return nil }
        return Announcement(plan: plan, rekey: rekey, tickets: tickets, deadline: now + silenceTime)
    }

    /// Whether every member told of the takeover acknowledged it, fell silent, or had its
    /// stream reset (it asked for a resync: it knows), or the deadline passed.
    func announcementDone(_ announcement: Announcement, now: Timestamp) -> Bool {
        now >= announcement.deadline
            || announcement.tickets.allSatisfy { ticket in
                channel.isAcknowledged(ticket) || channel.wasDropped(ticket) || isSilent(ticket.peer, now: now)
            }
    }

    /// Whether this ready standby may hold less than it seems: its active member fell silent,
    /// and so did a member it still heard then. A partition cut it off from both, or both
    /// died; either way the other may have taken over unseen, and keepalived, told that this
    /// copy is complete, would elect it later to resume below what the other sent (torture
    /// seed 3588). A member silent since well before the active member is down, not cut off.
    func isCutOff(_ standby: Standby, now: Timestamp) -> Bool {
        guard let active = standby.active, let activeHeard = channel.lastHeard(from: active), isSilent(active, now: now) else { return false }
        return configuration.channel.peers.contains { peer in
            guard peer != active, let heard = channel.lastHeard(from: peer) else { return false }
            return isSilent(peer, now: now) && heard + silenceTime >= activeHeard
        }
    }

    /// Whether a member other than the one this copy follows moved, while it ran, to an epoch
    /// above the one the copy is of (`Standby.copyEpoch`): it took over (or reasserted) and
    /// served beyond this copy unseen here, its hellos lost or late, or it died before they
    /// came. A takeover from the copy would resume below what it sent.
    func anotherMemberMovedBeyond(_ standby: Standby) -> Bool {
        guard let active = standby.active else { return false }
        let copyEpoch = max(standby.activeEpoch ?? 0, standby.copyEpoch)
        return configuration.channel.peers.contains { peer in
            peer != active && channel.highestEpochMovedTo(by: peer).map { $0 > copyEpoch } ?? false
        }
    }

    /// Stops serving: a standby of `active` (nil: of whichever member says it is active next)
    /// with an empty copy, saying that it stepped down until resynced, since it may have sent on
    /// SAs the active member holds. After a split brain (another member active with a newer
    /// epoch: both served) it says so at once, since a resync that starts first would hold back
    /// its hellos and the other would never move its counters past what this one sent. After a
    /// switchover (`handedOverTo`) it says nothing of the kind: that member holds everything it
    /// sent.
    mutating func stepDown(_ reason: StepDownReason, following active: ClusterMemberID?, handedOverTo: ClusterMemberID? = nil) {
        guard case .active(let was) = lifecycle else { return }
        held.removeAll()
        stepDowns += 1
        // It held the state whole until now: the last-resort silence starts here, not at the
        // last hello it heard before it became active (a member that stepped down took over
        // again as the last resort within the same millisecond).
        lastCompleteCopyHeard = lastTick
        var standby = Standby(active: active, former: was.state, formerAsOf: lastTick)
        standby.handedOverTo = handedOverTo
        if handedOverTo == nil, case .newerActive = reason {
            // Not after keepalived's or an operator's word: the member that takes over then
            // plans past what this one sent until now, and a jump on top of that, unseen by a
            // third member following this one, put that member's later takeover below it
            // (torture seed 1729).
            askForResync(&standby, now: lastTick)
        }
        lifecycle = .standby(standby)
        outbox.append(.steppedDown(reason))
    }

    /// After a healed split brain: every outbound counter on by ``reassertionJump``, replicated,
    /// the Child SAs that cannot move deleted, and a newer epoch.
    private mutating func reassert(now: Timestamp) {
        guard case .active(var active) = lifecycle else { return }
        lifecycle = .moving
        let epoch = nextEpoch
        try? role.reassert(newEpoch: epoch)
        try? channel.rotate(toEpoch: epoch)
        var changes: [StateChange] = []
        var rekey: [UInt32] = []
        for identifier in active.state.ikeSAs.keys.sorted() {
            // Unseen by the peer, who is not told: an ESN Child SA whose jumps would add up past
            // what the peer can infer is rekeyed instead (torture seed 105558: two takeovers'
            // jumps and then this one put a counter 2^32 + 2^20 ahead of the peer).
            guard let moved = try? active.state.advanceOutboundCounters(ofChildSAsOf: identifier, by: Self.reassertionJump, unseenByPeer: true)
            else { continue }
            // The moved counters go to the standbys at once, not with the next checkpoint.
            for spi in moved.advanced {
                if let slot = active.state.slot(forInboundSPI: spi) { changes += active.state.checkpointCounters(at: slot) }
            }
            rekey += moved.needRekey
        }
        for spi in rekey { changes += (try? active.state.deleteChildSA(inboundSPI: spi)) ?? [] }
        enqueue(active.replicator.replicate(changes, state: active.state, channel: &channel, now: now).actions)
        lifecycle = .active(active)
        outbox.append(.reasserted(jump: Self.reassertionJump, rekey: rekey))
    }

    mutating func release(now: Timestamp) {
        guard held.count > 0 else { return }
        let replicator: Replicator
        switch lifecycle {
        case .active(let active): replicator = active.replicator
        case .sharing(let sharing): replicator = sharing.replicator
        case .standby, .moving: return
        }
        let channel = self.channel
        for token in held.release(channel: channel, replicator: replicator, now: now, gone: { !channel.isEstablished(with: $0) }) {
            outbox.append(.released(token))
        }
    }
}

extension TakeoverPolicy {
    /// This policy for a takeover that cannot know what other members sent: every counter
    /// moves by twice the unknown advance (still within what ESN inference allows), both
    /// ways, and outbound also by the most the copy can have fallen behind since it was last
    /// exact (`exactAsOf`) at the rate bound, at most half the unknown advance. Another member
    /// may have served meanwhile from a copy of the same state, unseen, and moved by the
    /// unknown advance, a rate bound near it, plus its rank's offset.
    func blind(exactAsOf: Timestamp?, now: Timestamp) -> TakeoverPolicy {
        var policy = self
        let (blind, overflow) = unknownAdvance.multipliedReportingOverflow(by: 2)
        policy.minimumAdvance = max(minimumAdvance, overflow ? .max : blind)
        policy.unknownAdvance = max(unknownAdvance, policy.minimumAdvance)
        // Of two blind takeovers in turn from the same copy the later one goes further (a
        // larger jump alone was the same for both, and the earlier one's rank offset put it
        // above the later one: torture seed 509).
        if let exactAsOf, let rate = maximumPacketsPerSecond, now > exactAsOf {
            let milliseconds = min((now.nanoseconds - exactAsOf.nanoseconds) / 1_000_000, 1 << 30)
            let (behind, overflow) = rate.multipliedReportingOverflow(by: milliseconds)
            let extra = min(overflow ? .max : behind / 1_000, policy.unknownAdvance / 2)
            let (offset, offsetOverflow) = outboundOffset.addingReportingOverflow(extra)
            policy.outboundOffset = offsetOverflow ? .max : offset
        }
        return policy
    }
}
