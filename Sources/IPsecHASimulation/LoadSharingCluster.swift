public import IPsecHACore
public import IPsecHASync
public import IPsecHATestKit

/// One member of a ``LoadSharingCluster``: a `ClusterMember` in load-sharing mode on its port
/// of the network.
public struct LoadSharingMember {
    /// The member's ID.
    public let id: ClusterMemberID
    /// Whether it runs (false after a crash, and before its first start).
    public internal(set) var isRunning = false
    /// Its incarnation: the synch channel epoch of its current life.
    public internal(set) var incarnation: UInt32 = 0
    /// The member: its own SAs, a replica of every other member's, segment ownership.
    public internal(set) var cluster: ClusterMember
    var transport: InMemorySyncTransport

    /// The SAs this member holds as its own: those of the segments it serves, and, until the
    /// successor holds them, those of segments it handed over.
    public var state: GatewayState { cluster.state }
    /// Segment ownership (nil before the member first ran).
    public var ownership: SegmentOwnership? { cluster.segmentOwnership }
    /// Whether every replica is complete.
    public var replicasReady: Bool { cluster.isReady }
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
    public var checkpointInterval: Duration = .milliseconds(10)
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
        var channel = SyncChannelConfiguration(clusterID: 9, member: id, epoch: max(incarnation, 1), key: key, peers: ids.filter { $0 != id })
        // The report says what happened; the channel's routine notices would drown it.
        channel.logger.logLevel = .error
        var configuration = ClusterMemberConfiguration(channel: channel, activeMember: id)
        configuration.loadSharing = try SegmentOwnershipConfiguration(member: id, incarnation: incarnation, members: ids, segments: segments)
        configuration.checkpoints = CounterCheckpointPolicy(packets: 4_096, interval: checkpointInterval)
        configuration.takeover = takeoverPolicy
        return LoadSharingMember(id: id, cluster: try ClusterMember(configuration: configuration), transport: network.transport(for: id))
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
        let ike = try SAFixtures.ikeSA(spi, remote: peer, owner: id, &random)
        let state = members[id]!.state
        var children: [ChildSA] = []
        for _ in 0..<childSAs {
            let inbound = try layout.allocate(segment: segment, member: id, using: &random) { spi in
                state.childSA(inboundSPI: spi) != nil || children.contains { $0.inboundSPI == spi }
            }
            children.append(try SAFixtures.childSA(inbound, parent: ike.identifier, window: 128, owner: id, &random))
            peerNext[inbound] = 1
        }
        _ = try members[id]!.cluster.update(now: now) { state, changes throws(GatewayStateError) in
            changes += try state.createIKESA(ike)
            for child in children { changes += try state.createChildSA(child) }
        }
        establishedIKESAs[ike.identifier] = segment
        return ike.identifier
    }

    /// The running members that serve `segment` now (more than one is a violation).
    public func servers(of segment: Segment) -> [ClusterMemberID] {
        ids.filter { members[$0]!.isRunning && members[$0]!.cluster.isServing(segment, now: now) }
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

    /// One step of a running member: its datagrams, its time, and what it says.
    private mutating func stepMember(_ id: ClusterMemberID) throws {
        var member = members[id]!
        defer { members[id] = member }
        let refusedBefore = member.cluster.ownershipSendsRefused
        for datagram in member.transport.receive(now: now) { member.cluster.receive(datagram, now: now) }
        member.cluster.tick(now: now)
        while let action = member.cluster.nextAction() {
            switch action {
            case .transmit(let to, let datagram):
                try member.transport.send(datagram, to: to, now: now)
            case .segmentStarted(_, _?, let handedOver, _, let rekey):
                if handedOver { report.segmentsHandedOver += 1 } else { report.segmentsTakenOver += 1 }
                report.childSAsRekeyed += rekey.count
            default:
                break
            }
        }
        report.sendsRefused += member.cluster.ownershipSendsRefused - refusedBefore
    }

    // MARK: Checks

    /// Per segment, the running members serving it now.
    private func servingMembers() -> [[ClusterMemberID]] {
        var serving = [[ClusterMemberID]](repeating: [], count: segments.count)
        for id in ids where members[id]!.isRunning {
            for segment in members[id]!.ownership?.servedSegments(now: now) ?? [] { serving[Int(segment.rawValue)].append(id) }
        }
        return serving
    }

    /// Each serving member sends on its Child SAs; the peer sends on each to whichever member
    /// serves it, and the attacker replays one captured packet.
    private mutating func sendTraffic(_ serving: [[ClusterMemberID]]) throws {
        for id in ids where members[id]!.isRunning {
            let segments = self.segments
            let packetsPerStep = self.packetsPerStep
            let sent = members[id]!.cluster.packetPath { state -> [(outboundSPI: UInt32, number: UInt64)] in
                var sent: [(UInt32, UInt64)] = []
                for ike in state.ikeSAs.values where serving[Int(segments.segment(of: ike).rawValue)].contains(id) {
                    for spi in ike.childSAs {
                        guard let slot = state.slot(forInboundSPI: spi), let outboundSPI = state[slot]?.outboundSPI else { continue }
                        for _ in 0..<packetsPerStep {
                            guard let number = try? state.nextOutboundSequenceNumber(at: slot, bytes: 100) else { break }
                            sent.append((outboundSPI, number.value))
                        }
                    }
                }
                return sent
            } ?? []
            for (outboundSPI, number) in sent {
                report.espPacketsSent += 1
                if number <= highestSent[outboundSPI, default: 0] { report.sequenceNumbersReused += 1 }
                highestSent[outboundSPI] = max(highestSent[outboundSPI, default: 0], number)
            }
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
        // The ICV covers the high-order ESN bits (RFC 4303 section 2.2.1): a packet whose
        // inferred number is not the one it was sent with fails authentication.
        let committed = members[id]!.cluster.packetPath { state -> UInt64? in
            guard let slot = state.slot(forInboundSPI: spi),
                case .fresh(let full)? = state.checkInbound(wire: UInt32(truncatingIfNeeded: sequenceNumber), at: slot),
                full == sequenceNumber, (try? state.commitInbound(full, bytes: 100, at: slot)) != nil
            else { return nil }
            return full
        }
        guard let full = committed ?? nil else { return }
        report.espPacketsAccepted += 1
        if !accepted[spi, default: []].insert(full).inserted { report.replaysAccepted += 1 }
    }
}
