import IPsecHACore
import IPsecHASimulation
import IPsecHASync
import Testing

/// Two `ClusterMember`s on an in-memory network, on a virtual clock that jumps from one
/// deadline or delivery to the next (no polling).
struct MemberPair {
    static let activeID = ClusterMemberID(rawValue: 1)
    static let standbyID = ClusterMemberID(rawValue: 2)
    let network: InMemorySyncNetwork
    var members: [ClusterMember]
    var transports: [InMemorySyncTransport]
    var alive = [true, true]
    var now = Timestamp.seconds(1)
    var ticks = 0
    /// Every action each member gave, except transmissions.
    var events: [[ClusterMemberAction]] = [[], []]

    init(seed: UInt64, faults: NetworkFaults = NetworkFaults()) throws {
        network = InMemorySyncNetwork(faults: faults, seed: seed)
        let key = try ChannelKey.generate()
        members = try [Self.activeID, Self.standbyID].map { id in
            let peer = id == Self.activeID ? Self.standbyID : Self.activeID
            let channel = SyncChannelConfiguration(clusterID: 3, member: id, epoch: 1, key: key, peers: [peer])
            return try ClusterMember(configuration: ClusterMemberConfiguration(channel: channel, activeMember: Self.activeID))
        }
        transports = [network.transport(for: Self.activeID), network.transport(for: Self.standbyID)]
    }

    /// Runs until `until`: each member ticks at its deadline and takes datagrams as they arrive.
    mutating func run(until end: Timestamp) throws {
        var steps = 0
        while now < end {
            steps += 1
            if steps > 200_000 {
                Issue.record("no progress at \(now): deadlines \(members.map(\.nextDeadline)), delivery \(String(describing: network.nextDelivery))")
                return
            }
            var next = end.nanoseconds
            for index in members.indices where alive[index] { next = min(next, members[index].nextDeadline.nanoseconds) }
            if let delivery = network.nextDelivery { next = min(next, delivery.nanoseconds) }
            now = Timestamp(nanoseconds: max(next, now.nanoseconds + 1))
            for index in members.indices where !alive[index] { _ = transports[index].receive(now: now) }  // lost with it
            for index in members.indices where alive[index] {
                for datagram in transports[index].receive(now: now) { members[index].receive(datagram, now: now) }
                if members[index].nextDeadline <= now {
                    members[index].tick(now: now)
                    ticks += 1
                }
                try drain(index)
            }
        }
    }

    mutating func drain(_ index: Int) throws {
        while let action = members[index].nextAction() {
            if case .transmit(let to, let datagram) = action {
                try transports[index].send(datagram, to: to, now: now)
            } else {
                events[index].append(action)
            }
        }
    }

    mutating func run(for duration: UInt64) throws { try run(until: Timestamp(nanoseconds: now.nanoseconds + duration)) }

    /// An IKE SA with one Child SA (inbound SPI `spi`) made through the active member.
    mutating func createSAs(ikeSPI: UInt64, childSPI spi: UInt32, seed: UInt64) throws -> (IKESA, ReplicationToken) {
        var random = SplitMix64(seed: seed)
        let ike = try SimulationFixtures.ikeSA(ikeSPI, &random)
        let child = try SimulationFixtures.childSA(spi, parent: ike.identifier, window: 64, &random)
        let token = try members[0].update(now: now) { state throws(GatewayStateError) in try state.createIKESA(ike) + state.createChildSA(child) }
        return (ike, token)
    }

    /// `count` packets out on the Child SA with inbound SPI `spi`, if `member` is active.
    mutating func send(_ member: Int, spi: UInt32, count: Int) {
        _ = members[member].packetPath { state in
            guard let slot = state.slot(forInboundSPI: spi) else { return }
            for _ in 0..<count { _ = try? state.nextOutboundSequenceNumber(at: slot, bytes: 100) }
        }
    }
}

@Suite("ClusterMember: one machine per member")
struct ClusterMemberTests {
    @Test func theStandbyBecomesReadyAndAChangeIsReleasedOnceItHoldsIt() throws {
        var pair = try MemberPair(seed: 1)
        try pair.run(for: 500_000_000)
        #expect(pair.events[1] == [.becameReady])
        let (ike, token) = try pair.createSAs(ikeSPI: 7, childSPI: 0x4000, seed: 2)
        try pair.drain(0)
        #expect(!pair.events[0].contains(.released(token)), "not before the standby acknowledged")
        try pair.run(for: 20_000_000)
        #expect(pair.events[0].contains(.released(token)))
        #expect(pair.members[1].state == pair.members[0].state && pair.members[1].state.childSACount == 1)
        #expect(throws: ClusterMemberError.notActive) { try pair.members[1].update(now: pair.now) { _ throws(GatewayStateError) in [] } }
        // A change that fails leaves the state as it was and replicates nothing.
        let before = pair.members[0].state
        #expect(throws: ClusterMemberError.state(.ikeSAExists(ike.identifier))) {
            try pair.members[0].update(now: pair.now) { state throws(GatewayStateError) in try state.createIKESA(ike) }
        }
        #expect(pair.members[0].state == before && pair.members[0].nextAction() == nil)
        #expect(pair.members[1].packetPath { _ in true } == nil, "a standby does not send")
    }

    /// The active member dies with counters moving; the ready standby notices within the miss
    /// count, takes over with the plan applied, and resumes beyond every number used.
    @Test func theStandbyTakesOverWhenTheActiveMemberFallsSilent() throws {
        var pair = try MemberPair(seed: 3)
        try pair.run(for: 300_000_000)
        _ = try pair.createSAs(ikeSPI: 9, childSPI: 0x5000, seed: 4)
        for _ in 0..<300 {
            pair.send(0, spi: 0x5000, count: 10)
            try pair.run(for: 1_000_000)
        }
        let used = try #require(pair.members[0].state.childSA(inboundSPI: 0x5000)).outboundCounter.lastSent
        pair.alive[0] = false
        try pair.run(for: 400_000_000)
        guard case .tookOver(let plan, let rekey)? = pair.events[1].last else {
            Issue.record("no takeover: \(pair.events[1])")
            return
        }
        #expect(pair.members[1].isActive && rekey.isEmpty && plan.childSAs.count == 1)
        #expect(try #require(pair.members[1].state.childSA(inboundSPI: 0x5000)).outboundCounter.lastSent > used)
        #expect(pair.members[1].packetPath { _ in true } == true, "it serves now")
    }

    /// The event loop sleeps until the next deadline: an idle pair ticks about once a heartbeat
    /// each, not every millisecond.
    @Test func anIdlePairWakesAboutOnceAHeartbeat() throws {
        var pair = try MemberPair(seed: 5)
        try pair.run(for: 500_000_000)
        let before = pair.ticks
        try pair.run(for: 1_000_000_000)
        #expect(pair.ticks - before < 200, "\(pair.ticks - before) ticks in an idle second")
    }

    /// A split brain: the members cannot hear each other, the standby takes over while the
    /// active member goes on sending; when they hear each other again, epochs decide. The
    /// older active steps down and says so, and the newer moves every counter past anything
    /// the other could have used, then resyncs it.
    @Test func aHealedSplitBrainLeavesOneActiveMemberBeyondTheOthersCounters() throws {
        var pair = try MemberPair(seed: 6)
        try pair.run(for: 300_000_000)
        _ = try pair.createSAs(ikeSPI: 11, childSPI: 0x6000, seed: 7)
        try pair.run(for: 50_000_000)
        pair.network.faults.partitions = [[1, 2]]
        for _ in 0..<400 {
            pair.send(0, spi: 0x6000, count: 100)
            pair.send(1, spi: 0x6000, count: 100)
            try pair.run(for: 1_000_000)
        }
        #expect(pair.members[0].isActive && pair.members[1].isActive, "both active during the split")
        let oldActiveSent = try #require(pair.members[0].state.childSA(inboundSPI: 0x6000)).outboundCounter.lastSent
        pair.network.faults.partitions = []
        try pair.run(for: 2_000_000_000)
        #expect(!pair.members[0].isActive && pair.members[1].isActive)
        #expect(pair.events[0].contains { if case .steppedDown(ClusterMemberID(rawValue: 2), _) = $0 { true } else { false } }, "\(pair.events[0])")
        #expect(pair.events[1].contains(.reasserted(jump: ClusterMember.reassertionJump, rekey: [])), "\(pair.events[1])")
        #expect(pair.events[0].last == .becameReady, "resynced from the newer active member")
        let resumed = try #require(pair.members[1].state.childSA(inboundSPI: 0x6000)).outboundCounter.lastSent
        #expect(resumed > oldActiveSent + ClusterMember.reassertionJump / 2, "beyond what the other sent")
        #expect(pair.members[0].state == pair.members[1].state)
    }
}

