import IPsecHACore
import Testing

@Suite("Change stream: rebuilding a state from its changes")
struct ChangeStreamTests {
    /// Random histories of every kind of mutation; the replica applies each batch of changes as
    /// it comes, and after every checkpoint of all counters it must equal the active state.
    @Test(arguments: [11, 12, 13, 14, 15] as [UInt64])
    func replicaRebuildsAnEqualState(seed: UInt64) throws {
        var random = SplitMix64(seed: seed)
        var active = GatewayState()
        var replica = GatewayState()
        var everything: [StateChange] = []
        func record(_ changes: [StateChange]) throws {
            everything += changes
            for change in changes { try replica.apply(change) }
        }
        var nextIKE: UInt64 = 1
        var nextSPI: UInt32 = 5000
        var nextPolicy: UInt32 = 1
        for step in 0..<3_000 {
            let ikeIDs = active.ikeSAs.keys.sorted()
            let childSPIs = active.childSAs.map(\.inboundSPI).sorted()
            switch random.next() % 20 {
            case 0:
                let policy = SPDCacheTests.randomPolicy(id: nextPolicy, &random)
                nextPolicy += 1
                try record(try active.installPolicy(policy, at: Int(random.next() % UInt64(active.spd.policies.count + 1))))
            case 1:
                if let policy = active.spd.policies.randomElement(using: &random),
                    !active.childSAs.contains(where: { $0.policy == policy.id })
                {
                    try record(try active.removePolicy(policy.id))
                }
            case 2, 3:
                try record(try active.createIKESA(Fixtures.ikeSA(nextIKE, &random)))
                nextIKE += 1
            case 4:
                if let id = ikeIDs.randomElement(using: &random) {
                    let newRemote = Endpoint(address: IPAddress(ipv4: UInt32(truncatingIfNeeded: random.next())), port: 4500, udpEncapsulation: true)
                    try record(try active.updateIKESA(id) { sa in
                        sa.remote = newRemote
                        sa.state = .rekeying
                        _ = try? sa.messageIDs.requests.nextRequestID()
                    })
                }
            case 19:
                if let id = ikeIDs.randomElement(using: &random) {
                    try record(try active.updateMessageIDs(of: id) { windows in
                        if let request = try? windows.requests.nextRequestID() { try? windows.requests.receiveResponse(request) }
                    })
                }
            case 5:
                if let id = ikeIDs.randomElement(using: &random), random.next() % 3 == 0 {
                    try record(try active.deleteIKESA(id))
                }
            case 6, 7, 8:
                if let parent = ikeIDs.randomElement(using: &random) {
                    let policy = active.spd.policies.randomElement(using: &random)?.id
                    try record(try active.createChildSA(Fixtures.childSA(inboundSPI: nextSPI, parent: parent, policy: policy, esn: random.next() % 2 == 0, &random)))
                    nextSPI += 1
                }
            case 9:
                if let spi = childSPIs.randomElement(using: &random), let parent = ikeIDs.randomElement(using: &random) {
                    try record(try active.updateChildSA(inboundSPI: spi) { sa in
                        sa.parent = parent
                        sa.outboundSPI = sa.outboundSPI &+ 1
                    })
                }
            case 10:
                if let spi = childSPIs.randomElement(using: &random) {
                    try record(try active.deleteChildSA(inboundSPI: spi))
                }
            case 11:
                if let spi = childSPIs.randomElement(using: &random), let slot = active.slot(forInboundSPI: spi) {
                    try record(active.checkpointCounters(at: slot))
                }
            default:
                // Traffic: no change values, only counters.
                if let spi = childSPIs.randomElement(using: &random), let slot = active.slot(forInboundSPI: spi) {
                    for _ in 0..<(1 + random.next() % 20) {
                        _ = try active.nextOutboundSequenceNumber(at: slot, bytes: 1400)
                        let wire = UInt32(truncatingIfNeeded: random.next() % 200 + 1)
                        if case .fresh(let number) = active.checkInbound(wire: wire, at: slot) {
                            try active.commitInbound(number, bytes: 1400, at: slot)
                        }
                    }
                }
            }
            if step % 100 == 99 {
                for spi in active.childSAs.map(\.inboundSPI) {
                    try record(active.checkpointCounters(at: try #require(active.slot(forInboundSPI: spi))))
                }
                #expect(replica == active, "step \(step)")
            }
        }
        #expect(active.ikeSAs.count > 5)
        #expect(active.childSACount > 5)

        var rebuilt = GatewayState()
        for change in everything { try rebuilt.apply(change) }
        #expect(rebuilt == active)
    }

    @Test func olderRecordsAreRefusedAndChangeNothing() throws {
        var random = SplitMix64(seed: 20)
        var active = GatewayState()
        var replica = GatewayState()
        let ike = Fixtures.ikeSA(1, &random)
        var changes = try active.createIKESA(ike)
        changes += try active.createChildSA(Fixtures.childSA(inboundSPI: 4096, parent: ike.identifier, &random))
        let firstUpdate = try active.updateIKESA(ike.identifier) { $0.state = .rekeying }
        let secondUpdate = try active.updateIKESA(ike.identifier) { $0.state = .established }
        let slot = try #require(active.slot(forInboundSPI: 4096))
        _ = try active.nextOutboundSequenceNumber(at: slot, bytes: 10)
        let firstCounters = active.checkpointCounters(at: slot)
        _ = try active.nextOutboundSequenceNumber(at: slot, bytes: 10)
        let secondCounters = active.checkpointCounters(at: slot)
        for change in changes + secondUpdate + secondCounters { try replica.apply(change) }
        #expect(replica == active)

        let before = replica
        #expect(throws: GatewayStateError.staleChange(held: 3, received: 2)) { try replica.apply(firstUpdate[0]) }
        #expect(throws: GatewayStateError.staleChange(held: 3, received: 2)) { try replica.apply(firstCounters[0]) }
        #expect(throws: GatewayStateError.ikeSAExists(ike.identifier)) { try replica.apply(changes[0]) }
        #expect(throws: GatewayStateError.spiInUse(4096)) { try replica.apply(changes[1]) }
        #expect(replica == before)
        #expect(replica.childSA(inboundSPI: 4096)?.outboundCounter.lastSent == 2)
    }

    @Test func updatesCannotChangeIdentifiers() throws {
        var random = SplitMix64(seed: 21)
        var state = GatewayState()
        let ike = Fixtures.ikeSA(1, &random)
        _ = try state.createIKESA(ike)
        _ = try state.createChildSA(Fixtures.childSA(inboundSPI: 4096, parent: ike.identifier, &random))
        #expect(throws: GatewayStateError.unknownParent(IKESAIdentifier(initiatorSPI: 9, responderSPI: 9))) {
            try state.updateChildSA(inboundSPI: 4096) { $0.parent = IKESAIdentifier(initiatorSPI: 9, responderSPI: 9) }
        }
        #expect(state.childSA(inboundSPI: 4096)?.parent == ike.identifier)
        #expect(state.childSA(inboundSPI: 4096)?.generation == 1)
    }
}
