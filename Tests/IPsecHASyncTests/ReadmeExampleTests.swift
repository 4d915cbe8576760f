import Foundation
import IPsecHACore
import IPsecHASimulation
import IPsecHASync
import Testing

/// The README's example, compiled and run here: the README quotes the body of `example()`
/// between the markers, and a test checks that the two have not drifted apart.
@Suite("README example")
struct ReadmeExampleTests {
    static func example() throws -> (ikeSAs: Int, resumeAfter: UInt64, lastSent: UInt64) {
        // README example begin
        // Two members, one cluster key, and a network between them: the in-memory one here; a
        // real cluster uses UDPSyncTransport (IPsecHASyncNIO) or a transport of its own.
        let (active, standby) = (ClusterMemberID(rawValue: 1), ClusterMemberID(rawValue: 2))
        let key = try ChannelKey.generate()
        let network = InMemorySyncNetwork(seed: 1)
        var transports = [active: network.transport(for: active), standby: network.transport(for: standby)]
        var channels = [
            active: try SyncChannel(configuration: SyncChannelConfiguration(clusterID: 1, member: active, epoch: 1, key: key, peers: [standby])),
            standby: try SyncChannel(configuration: SyncChannelConfiguration(clusterID: 1, member: standby, epoch: 1, key: key, peers: [active])),
        ]
        var state = GatewayState()  // the active member's IPsec state
        var replicator = Replicator(standbys: [standby])
        var replica = Replica()  // the standby's copy
        var now = Timestamp(nanoseconds: 0)

        func transmit(_ actions: [SyncChannelAction], from member: ClusterMemberID) throws {
            for case .transmit(let to, let datagram) in actions { try transports[member]!.send(datagram, to: to, now: now) }
        }
        // One step of both members' loops: datagrams in, replication, datagrams out.
        func step() throws {
            now = Timestamp(nanoseconds: now.nanoseconds + 1_000_000)
            for member in [active, standby] {
                var actions = transports[member]!.receive(now: now).flatMap { channels[member]!.receive($0, now: now) }
                actions += channels[member]!.tick(now: now)
                if member == active { actions += replicator.pump(channel: &channels[active]!, now: now) }
                while !actions.isEmpty {
                    var next: [SyncChannelAction] = []
                    for action in actions {
                        switch action {
                        case .transmit(let to, let datagram): try transports[member]!.send(datagram, to: to, now: now)
                        case .deliver(_, let records) where member == standby: replica.apply(records, now: now)
                        case .deliver, .resyncNeeded: next += replicator.handle(action, state: state, channel: &channels[active]!, now: now)
                        default: break
                        }
                    }
                    actions = next
                }
            }
        }

        // The standby joins: it says hello and is resynced.
        try transmit(try channels[standby]!.send([replica.hello(epoch: 1)], to: active, now: now).actions, from: standby)
        while !replica.isReady { try step() }

        // The IKE stack establishes an IKE SA and a Child SA; each change is replicated.
        var random = SplitMix64(seed: 2)
        let ike = try SimulationFixtures.ikeSA(1, &random)
        let child = try SimulationFixtures.childSA(0x1001, parent: ike.identifier, window: 1024, &random)
        for changes in [try state.createIKESA(ike), try state.createChildSA(child)] {
            try transmit(replicator.replicate(changes, state: state, channel: &channels[active]!, now: now).actions, from: active)
        }
        // ESP goes out; the counters are checkpointed now and then (CounterCheckpointScheduler).
        let slot = state.slot(forInboundSPI: 0x1001)!
        for _ in 0..<5_000 { _ = try state.nextOutboundSequenceNumber(at: slot, bytes: 1_400) }
        try transmit(replicator.replicate(state.checkpointCounters(at: slot), state: state, channel: &channels[active]!, now: now).actions, from: active)
        for _ in 0..<10 { try step() }

        // The active member fails. The standby plans the takeover and applies it: outbound
        // counters jump past anything the failed member may have sent, inbound windows are
        // restored, every IKE SA continues (here with an RFC 6311 message-ID sync).
        let plan = replica.takeoverPlan(now: now)
        var takenOver = replica.state
        _ = takenOver.applyTakeover(plan)
        let resumed = takenOver.childSA(inboundSPI: 0x1001)!
        // README example end
        return (plan.ikeSAs.count, resumed.outboundCounter.lastSent, state.childSA(inboundSPI: 0x1001)!.outboundCounter.lastSent)
    }

    @Test func theExampleRunsAndTheTakeoverNeverReusesANumber() throws {
        let outcome = try Self.example()
        #expect(outcome.ikeSAs == 1)
        #expect(outcome.resumeAfter > outcome.lastSent, "resumes after \(outcome.resumeAfter), the failed member sent up to \(outcome.lastSent)")
    }

    @Test func theReadmeQuotesTheExampleAsItIs() throws {
        let here = URL(fileURLWithPath: #filePath)
        let root = here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let source = try String(contentsOf: here, encoding: .utf8)
        let readme = try String(contentsOf: root.appendingPathComponent("README.md"), encoding: .utf8)
        func lines(_ text: Substring) -> [String] {
            text.split(separator: "\n", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        }
        let begin = try #require(source.range(of: "// README example begin\n"))
        let end = try #require(source.range(of: "        // README example end"))
        let quoted = try #require(readme.range(of: "```swift\n"))
        let quotedEnd = try #require(readme.range(of: "```", range: quoted.upperBound..<readme.endIndex))
        // The README adds the imports this file has at its top.
        let quotedLines = lines(readme[quoted.upperBound..<quotedEnd.lowerBound]).drop { $0.hasPrefix("import ") || $0.isEmpty }
        #expect(lines(source[begin.upperBound..<end.lowerBound]) == Array(quotedLines))
    }
}
