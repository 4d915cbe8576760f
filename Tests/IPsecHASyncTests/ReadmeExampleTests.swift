import Foundation
import IPsecHACore
import IPsecHASync
import IPsecHATestKit
import Testing

/// The README's example, compiled and run here: the README quotes the body of `example()`
/// between the markers, and a test checks that the two have not drifted apart.
@Suite("README example")
struct ReadmeExampleTests {
    static func example() throws -> (events: [ClusterMemberAction], token: ReplicationToken, resumeAfter: UInt64, lastSent: UInt64) {
        // README example begin
        // Two members, one cluster key, and a network between them: the in-memory one here; a
        // real cluster uses UDPSyncTransport (IPsecHASyncNIO) or a transport of its own.
        let ids = [ClusterMemberID(rawValue: 1), ClusterMemberID(rawValue: 2)]  // active, standby
        let (key, network) = (try ChannelKey.generate(), InMemorySyncNetwork(seed: 1))
        var transports = ids.map(network.transport(for:))
        var members = try ids.map { me in
            let channel = SyncChannelConfiguration(clusterID: 1, member: me, epoch: 1, key: key, peers: ids.filter { $0 != me })
            return try ClusterMember(configuration: ClusterMemberConfiguration(channel: channel, activeMember: ids[0]))
        }
        var (now, events) = (Timestamp(nanoseconds: 0), [ClusterMemberAction]())

        // Each member's event loop: datagrams in, time, datagrams out, other actions returned;
        // a real loop then sleeps until members[i].nextDeadline or the next datagram.
        func run(milliseconds: Int, members alive: [Int] = [0, 1]) {
            for _ in 0..<milliseconds {
                now = now + .milliseconds(1)
                for i in alive { events += transports[i].service(&members[i], now: now) }
            }
        }
        run(milliseconds: 300)  // the standby joins and is resynced (.becameReady)

        // The IKE stack establishes an IKE SA and a Child SA through the active member: the
        // token comes back (.released) once the standby holds them; then IKE_AUTH's answer goes.
        var random = SplitMix64(seed: 2)
        let ike = try SAFixtures.ikeSA(1, &random)
        let child = try SAFixtures.childSA(0x1001, parent: ike.identifier, window: 1024, &random)
        let token = try members[0].update(now: now) { state, changes throws(GatewayStateError) in
            changes += try state.createIKESA(ike) + state.createChildSA(child)
        }
        // ESP goes out on the packet path; the counters reach the standby with checkpoints.
        _ = members[0].packetPath { state in
            for _ in 0..<5_000 { _ = try? state.nextOutboundSequenceNumber(at: state.slot(forInboundSPI: 0x1001)!, bytes: 1_400) }
        }
        run(milliseconds: 100)

        // The active member fails. The standby notices within three heartbeats and takes over
        // (.tookOver, with the plan applied): outbound counters jump past anything the failed
        // member may have sent, inbound windows are restored, every IKE SA continues.
        run(milliseconds: 300, members: [1])
        let resumed = members[1].state.childSA(inboundSPI: 0x1001)!
        // README example end
        return (events, token, resumed.outboundCounter.lastSent, members[0].state.childSA(inboundSPI: 0x1001)!.outboundCounter.lastSent)
    }

    @Test func theExampleRunsAndTheTakeoverNeverReusesANumber() throws {
        let outcome = try Self.example()
        #expect(outcome.events.first == .becameReady && outcome.events.contains(.released(outcome.token)), "\(outcome.events)")
        guard case .tookOver(let plan, _)? = outcome.events.last else {
            Issue.record("no takeover: \(outcome.events)")
            return
        }
        #expect(plan.ikeSAs.count == 1 && plan.childSAs.count == 1)
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
