public import IPsecHACore
public import IPsecHASync
public import IPsecHATestKit

/// One member of a ``LoadSharingCluster``: the SAs it serves, a replica of every other
/// member's, and the machines that move them.
public struct LoadSharingMember {
    /// The member's ID.
    public let id: ClusterMemberID
    /// Whether it runs (false after a crash, and before its first start).
    public internal(set) var isRunning = false
    /// Its incarnation: the synch channel epoch of its current life.
    public internal(set) var incarnation: UInt32 = 0
    /// The SAs this member holds as its own: those of the segments it serves, and, until the
    /// successor holds them, those of segments it handed over.
    public internal(set) var state = GatewayState()
    /// Copies of every other member's own state.
    public internal(set) var replicas: [ClusterMemberID: Replica] = [:]
    /// Segment ownership.
    public internal(set) var ownership: SegmentOwnership
    var channel: SyncChannel
    var transport: InMemorySyncTransport
    var replicator: Replicator
    var lastHello: [ClusterMemberID: Timestamp] = [:]
    var checkpoints = CounterCheckpointScheduler()
    var streamResets: UInt64 = 0
    /// Segments started whose SAs are still to be adopted from the previous owner's replica,
    /// which was not complete yet (a bulk resync under way).
    public internal(set) var pendingAdoptions: [Segment: (previous: ClusterMemberID, handedOver: Bool)] = [:]

    /// Whether every replica is complete.
    public var replicasReady: Bool { replicas.values.allSatisfy(\.isReady) }
}

/// What a ``LoadSharingCluster`` observed: the invariants it checks on every step and what the
/// takeovers did.
public struct LoadSharingReport: Sendable, Hashable {
    /// Steps at which some segment was served by two members at once (must stay 0).
    public var duplicateOwnershipSteps = 0
    /// ESP packets sent with an (SPI, sequence number) pair sent before (must stay 0).
    public var sequenceNumbersReused = 0
    /// Replayed or duplicated inbound packets accepted (must stay 0).
    public var replaysAccepted = 0
    /// ESP packets sent by the cluster, and received from the peer and accepted.
    public var espPacketsSent = 0, espPacketsAccepted = 0
    /// Inbound packets that found no member serving their segment.
    public var inboundUnserved = 0
    /// Segments started after a failure (takeover plan applied) and after a handover.
    public var segmentsTakenOver = 0, segmentsHandedOver = 0
    /// Child SAs the takeover plans said to rekey (dropped here).
    public var childSAsRekeyed = 0
    /// Synch sends refused by a full channel buffer.
    public var sendsRefused = 0
}

/// A deterministic load-sharing cluster of N members on an `InMemorySyncNetwork`: every member
/// serves the segments `SegmentOwnership` gives it, replicates its own SAs to every other
/// member, and takes over or hands over segments with their SAs. A remote peer sends ESP to
/// whichever member serves each Child SA, an attacker replays what it captured, and every step
/// checks the invariants of the design (``LoadSharingReport``).
public struct LoadSharingCluster {
    /// The network; change its faults at any time.
    public let network: InMemorySyncNetwork
    /// The cluster's segments.
    public let segments: ClusterSegments
    /// The SPI layout (segment and member bits).
    public let layout: SPILayout
    /// The members, by ID.
    public private(set) var members: [ClusterMemberID: LoadSharingMember] = [:]
    /// The virtual clock.
    public private(set) var now = Timestamp(nanoseconds: 1_000_000_000)
    /// What was observed so far.
    public private(set) var report = LoadSharingReport()
    /// Counter checkpoint interval of every member.
    public var checkpointInterval: UInt64 = 10_000_000
    /// The takeover policy after a failure.
    public var takeoverPolicy = TakeoverPolicy()
    /// ESP packets sent, and received from the peer, per Child SA and step.
    public var packetsPerStep = 1

    private let key: ChannelKey
    private let ids: [ClusterMemberID]
    private var random: SplitMix64
    private var nextIKESPI: UInt64 = 1
    /// Per outbound SPI, the highest sequence number the cluster sent.
    private var highestSent: [UInt32: UInt64] = [:]
    /// Per inbound SPI: the peer's next sequence number, and the numbers a member accepted.
    private var peerNext: [UInt32: UInt64] = [:]
    private var accepted: [UInt32: Set<UInt64>] = [:]
    /// IKE SAs established and not deleted.
    public private(set) var establishedIKESAs: [IKESAIdentifier: Segment] = [:]

    /// A cluster of `memberCount` members (IDs 1 to N), none running yet: ``start(_:)`` each.
    public init(seed: UInt64, memberCount: Int, segmentCount: Int = 32, faults: NetworkFaults = NetworkFaults()) throws {
        network = InMemorySyncNetwork(faults: faults, seed: seed)
        segments = try ClusterSegments(count: segmentCount, key: .peerAddress, seed: seed ^ 0x5E6)
        layout = try SPILayout(segments: segments, memberBits: 4)
        key = try ChannelKey.generate()
        ids = (1...memberCount).map { ClusterMemberID(rawValue: UInt16($0)) }
        random = SplitMix64(seed: seed)
        for id in ids { members[id] = try makeMember(id, incarnation: 0) }
    }

    private func makeMember(_ id: ClusterMemberID, incarnation: UInt32) throws -> LoadSharingMember {
        let others = ids.filter { $0 != id }
        let channel = try SyncChannel(
            configuration: SyncChannelConfiguration(clusterID: 9, member: id, epoch: max(incarnation, 1), key: key, peers: others))
        let ownership = SegmentOwnership(
            configuration: try SegmentOwnershipConfiguration(member: id, incarnation: incarnation, members: ids, segments: segments),
            now: now)
        var member = LoadSharingMember(
            id: id, ownership: ownership, channel: channel, transport: network.transport(for: id), replicator: Replicator(standbys: others))
        member.state = GatewayState(localMember: id)
        for other in others { member.replicas[other] = Replica() }
        return member
    }

    // MARK: Faults

    /// Starts a member, or restarts one that crashed: empty state, a new incarnation (epoch),
    /// silent for the startup silence.
    public mutating func start(_ id: ClusterMemberID) throws {
        guard let old = members[id], !old.isRunning else { return }
        var member = try makeMember(id, incarnation: old.incarnation + 1)
        member.isRunning = true
        member.incarnation = old.incarnation + 1
        members[id] = member
    }

    /// Stops a member at once (its state is gone).
    public mutating func crash(_ id: ClusterMemberID) {
        members[id]?.isRunning = false
    }

    // MARK: SAs and traffic

    /// Establishes an IKE SA with `childSAs` Child SAs for a peer at `peer`, on the member that
    /// serves the peer's segment, and replicates it; nil when no member serves it now.
    @discardableResult
    public mutating func establishIKESA(peer: IPAddress, childSAs: Int = 2) throws -> IKESAIdentifier? {
        let spi = nextIKESPI
        let segment = segments.segment(peer: peer, initiatorSPI: spi)
        guard let id = servers(of: segment).first else { return nil }
        nextIKESPI += 1
        var member = members[id]!
        defer { members[id] = member }
        let ike = try SAFixtures.ikeSA(spi, remote: peer, owner: id, &random)
        var changes = try member.state.createIKESA(ike)
        for _ in 0..<childSAs {
            let state = member.state
            let inbound = try layout.allocate(segment: segment, member: id, using: &random) { state.childSA(inboundSPI: $0) != nil }
            changes += try member.state.createChildSA(
                SAFixtures.childSA(inbound, parent: ike.identifier, window: 128, owner: id, &random))
            peerNext[inbound] = 1
        }
        establishedIKESAs[ike.identifier] = segment
        try replicate(changes, at: &member)
        return ike.identifier
    }

    /// The running members that serve `segment` now (more than one is a violation).
    public func servers(of segment: Segment) -> [ClusterMemberID] {
        ids.filter { members[$0]!.isRunning && members[$0]!.ownership.isServing(segment, now: now) }
    }

    /// The running member whose own state holds each established IKE SA (empty for one that
    /// no member holds).
    public func holders(of identifier: IKESAIdentifier) -> [ClusterMemberID] {
        ids.filter { members[$0]!.isRunning && members[$0]!.state.ikeSAs[identifier] != nil }
    }

    // MARK: Running

    /// Advances the clock by `duration` in steps of `step` nanoseconds.
    public mutating func run(for duration: UInt64, step: UInt64 = 1_000_000) throws {
        let end = now.nanoseconds + duration
        while now.nanoseconds < end {
            now = Timestamp(nanoseconds: min(now.nanoseconds + step, end))
            for id in ids {
                if members[id]!.isRunning {
                    try stepMember(id)
                } else {
                    // What reaches a stopped member is lost.
                    _ = members[id]!.transport.receive(now: now)
                }
            }
            let serving = servingMembers()
            if serving.contains(where: { $0.count > 1 }) { report.duplicateOwnershipSteps += 1 }
            try sendTraffic(serving)
        }
    }

    private mutating func stepMember(_ id: ClusterMemberID) throws {
        var member = members[id]!
        defer { members[id] = member }
        let silent = now.nanoseconds < member.ownership.startedAt.nanoseconds + member.ownership.configuration.startupSilence
        if silent { return }
        for datagram in member.transport.receive(now: now) {
            try perform(member.channel.receive(datagram, now: now), at: &member)
        }
        try perform(member.channel.tick(now: now), at: &member)
        member.ownership.isReady = member.replicasReady
        try perform(member.ownership.tick(now: now), at: &member)
        try perform(member.replicator.pump(channel: &member.channel, now: now), at: &member)
        for (other, replica) in member.replicas.sorted(by: { $0.key < $1.key }) where !replica.isReady && !replica.isResyncing {
            if let last = member.lastHello[other], now.nanoseconds - last.nanoseconds < 200_000_000 { continue }
            member.lastHello[other] = now
            try send([replica.hello(epoch: member.incarnation)], to: other, at: &member)
        }
        member.checkpoints.policy = CounterCheckpointPolicy(packets: 4_096, interval: checkpointInterval)
        let due = member.checkpoints.takeDueCheckpoints(from: &member.state, now: now)
        if !due.isEmpty {
            try perform(member.replicator.replicate(checkpoints: due, state: member.state, channel: &member.channel, now: now).actions, at: &member)
        }
        try adoptPending(at: &member)
        try completeReleases(at: &member)
        if member.channel.statistics.streamResets != member.streamResets {
            // A resync reset a stream, and with it the claims in flight on it.
            member.streamResets = member.channel.statistics.streamResets
            for peer in ids where peer != id { member.ownership.streamReset(to: peer) }
        }
    }

    private mutating func perform(_ actions: [SyncChannelAction], at member: inout LoadSharingMember) throws {
        for action in actions {
            switch action {
            case .transmit(let to, let datagram):
                try member.transport.send(datagram, to: to, now: now)
            case .deliver(let from, let records):
                for record in records {
                    try perform(member.ownership.receive(record, from: from, now: now), at: &member)
                    member.replicas[from]?.apply([record], now: now)
                    try perform(
                        member.replicator.handle(.deliver(from: from, records: [record]), state: member.state, channel: &member.channel, now: now),
                        at: &member)
                }
            case .peerRestarted(let peer, _):
                member.ownership.peerRestarted(peer)
                member.replicas[peer] = Replica()
            case .resyncNeeded:
                try perform(member.replicator.handle(action, state: member.state, channel: &member.channel, now: now), at: &member)
            case .dropped:
                break
            }
        }
    }

    private mutating func perform(_ actions: [OwnershipAction], at member: inout LoadSharingMember) throws {
        for action in actions {
            switch action {
            case .send(let records, let to):
                try send(records, to: to, at: &member)
            case .startServing(let segment, let previous, let handedOver):
                if let previous, previous != member.id {
                    // Copies from an earlier ownership of the segment are stale: never send on them.
                    var changes: [StateChange] = []
                    for sa in member.state.ikeSAs.values.filter({ segments.segment(of: $0) == segment }).sorted(by: { $0.identifier < $1.identifier }) {
                        changes += try member.state.deleteIKESA(sa.identifier)
                    }
                    try replicate(changes, at: &member)
                    member.pendingAdoptions[segment] = (previous, handedOver)
                }
                try adoptPending(at: &member)
            case .stopServing(let segment):
                member.pendingAdoptions[segment] = nil
            case .peerUp, .peerDown:
                break
            }
        }
    }

    private mutating func send(_ records: [SyncRecord], to peer: ClusterMemberID, at member: inout LoadSharingMember) throws {
        let sent: [SyncChannelAction]
        do {
            sent = try member.channel.send(records, to: peer, now: now).actions
        } catch .sendQueueFull {
            report.sendsRefused += 1
            // Lost claims would leave the peer waiting for their number: the whole table goes
            // again, under a newer one, once the channel takes it.
            member.ownership.streamReset(to: peer)
            return
        }
        try perform(sent, at: &member)
    }

    private mutating func replicate(_ changes: [StateChange], at member: inout LoadSharingMember) throws {
        guard !changes.isEmpty else { return }
        let result = member.replicator.replicate(changes, state: member.state, channel: &member.channel, now: now)
        try perform(result.actions, at: &member)
    }

    /// Adopts the SAs of started segments whose previous owner's replica is complete.
    private mutating func adoptPending(at member: inout LoadSharingMember) throws {
        for (segment, origin) in member.pendingAdoptions.sorted(by: { $0.key < $1.key })
        where member.replicas[origin.previous]?.isReady ?? true {
            member.pendingAdoptions[segment] = nil
            try adopt(segment, from: origin.previous, handedOver: origin.handedOver, at: &member)
        }
    }

    /// Moves the SAs of `segment` from this member's replica of `previous` into its own state:
    /// after a failure with the takeover plan (outbound counters advanced, inbound windows
    /// restored); after a handover the same way, which costs a skip of sequence numbers but
    /// needs no final checkpoint to arrive first.
    private mutating func adopt(
        _ segment: Segment, from previous: ClusterMemberID, handedOver: Bool, at member: inout LoadSharingMember
    ) throws {
        guard var replica = member.replicas[previous] else { return }
        if !handedOver {
            replica.applyHeldCheckpoints(member.channel.recordsHeldBehindGap(from: previous), now: now)
            member.replicas[previous] = replica
        }
        var source = replica.state
        let identifiers = source.ikeSAs.values.filter { segments.segment(of: $0) == segment }.map(\.identifier).sorted()
        if handedOver { report.segmentsHandedOver += 1 } else { report.segmentsTakenOver += 1 }
        guard !identifiers.isEmpty else { return }
        let plan = replica.takeoverPlan(policy: takeoverPolicy, now: now, restrictedTo: Set(identifiers))
        let rekey = Set(source.applyTakeover(plan).rekey)
        var changes: [StateChange] = []
        for identifier in identifiers where member.state.ikeSAs[identifier] == nil {
            var ike = source.ikeSAs[identifier]!
            ike.owner = member.id
            changes += try member.state.createIKESA(ike)
            for spi in ike.childSAs {
                guard var child = source.childSA(inboundSPI: spi), !rekey.contains(spi) else {
                    report.childSAsRekeyed += 1
                    continue
                }
                child.owner = member.id
                changes += try member.state.createChildSA(child)
            }
        }
        try replicate(changes, at: &member)
    }

    /// Deletes the SAs of segments another member owns now, once that member's replicated
    /// state holds them with outbound counters at least as far as this member's (so that they
    /// exist somewhere at every moment, and a stale copy the new owner held from an earlier
    /// ownership does not count).
    private mutating func completeReleases(at member: inout LoadSharingMember) throws {
        var lost: [Segment: [IKESAIdentifier]] = [:]
        for sa in member.state.ikeSAs.values {
            let segment = segments.segment(of: sa)
            guard let claim = member.ownership.claim(of: segment), claim.owner != member.id || claim.incarnation != member.incarnation
            else { continue }
            lost[segment, default: []].append(sa.identifier)
        }
        var changes: [StateChange] = []
        for (segment, identifiers) in lost.sorted(by: { $0.key < $1.key }) {
            guard let owner = member.ownership.claim(of: segment)?.owner, let theirs = member.replicas[owner], theirs.isReady,
                identifiers.allSatisfy({ Self.holds(theirs.state, $0, asFarAs: member.state) })
            else { continue }
            for identifier in identifiers.sorted() { changes += try member.state.deleteIKESA(identifier) }
        }
        try replicate(changes, at: &member)
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

    // MARK: Checks

    /// Per segment, the running members serving it now.
    private func servingMembers() -> [[ClusterMemberID]] {
        var serving = [[ClusterMemberID]](repeating: [], count: segments.count)
        for id in ids where members[id]!.isRunning {
            for segment in members[id]!.ownership.servedSegments(now: now) { serving[Int(segment.rawValue)].append(id) }
        }
        return serving
    }

    /// Each serving member sends on its Child SAs; the peer sends on each to whichever member
    /// serves it, and the attacker replays one captured packet.
    private mutating func sendTraffic(_ serving: [[ClusterMemberID]]) throws {
        for id in ids where members[id]!.isRunning {
            var member = members[id]!
            for ike in member.state.ikeSAs.values where serving[Int(segments.segment(of: ike).rawValue)].contains(id) {
                for spi in ike.childSAs {
                    guard let slot = member.state.slot(forInboundSPI: spi), let outboundSPI = member.state[slot]?.outboundSPI else { continue }
                    for _ in 0..<packetsPerStep {
                        guard let number = try? member.state.nextOutboundSequenceNumber(at: slot, bytes: 100) else { break }
                        report.espPacketsSent += 1
                        if number.value <= highestSent[outboundSPI, default: 0] { report.sequenceNumbersReused += 1 }
                        highestSent[outboundSPI] = max(highestSent[outboundSPI, default: 0], number.value)
                    }
                }
            }
            members[id] = member
        }
        let spis = peerNext.keys.sorted()
        for spi in spis {
            for _ in 0..<packetsPerStep {
                receive(spi, sequenceNumber: peerNext[spi]!, serving)
                peerNext[spi]! += 1
            }
        }
        if let spi = spis.randomElement(using: &random), let sent = peerNext[spi], sent > 1 {
            receive(spi, sequenceNumber: 1 + random.next() % (sent - 1), serving)
        }
    }

    /// One inbound ESP packet, steered by its SPI to the member serving its segment.
    private mutating func receive(_ spi: UInt32, sequenceNumber: UInt64, _ serving: [[ClusterMemberID]]) {
        guard let segment = layout.segment(ofSPI: spi), let id = serving[Int(segment.rawValue)].first else {
            report.inboundUnserved += 1
            return
        }
        var member = members[id]!
        defer { members[id] = member }
        // The ICV covers the high-order ESN bits (RFC 4303 section 2.2.1): a packet whose
        // inferred number is not the one it was sent with fails authentication.
        guard let slot = member.state.slot(forInboundSPI: spi),
            case .fresh(let full)? = member.state.checkInbound(wire: UInt32(truncatingIfNeeded: sequenceNumber), at: slot),
            full == sequenceNumber, (try? member.state.commitInbound(full, bytes: 100, at: slot)) != nil
        else { return }
        report.espPacketsAccepted += 1
        if !accepted[spi, default: []].insert(full).inserted { report.replaysAccepted += 1 }
    }
}
