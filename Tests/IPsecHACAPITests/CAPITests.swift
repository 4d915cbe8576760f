import Foundation
import IPsecHACore
import IPsecHASync
import IPsecHATestSupport
import Testing

/// libipsecha from C (`scripts/c-api.sh`): the library installed with its header and
/// pkg-config file, the header under `-std=c11 -Wall -Wextra -Werror -pedantic`, every entry
/// point with bad arguments, a two-process failover over UDP, each plainly, under
/// AddressSanitizer and under valgrind; and the plan a C embedder gets from a scripted failover
/// compared line by line with the plan the same script gives through ``ClusterMember`` in Swift.
@Suite struct CAPITests {
    @Test func theCEmbedderPassesUnderSanitizersAndReachesTheSwiftEmbeddersPlan() throws {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("ipsecha-c-\(getpid())")
        defer { try? FileManager.default.removeItem(at: out) }
        guard let (status, text) = try Self.runScript(out: out) else { return }
        #expect(status == 0, "c-api.sh failed")
        for check in [
            "PASS: ipsecha.h compiles with -std=c11 -Wall -Wextra -Werror -pedantic", "PASS: bad arguments valgrind",
            "PASS: bad arguments asan", "PASS: plan scenario valgrind", "PASS: pair plain", "PASS: pair asan", "PASS: pair valgrind",
        ] {
            #expect(text.contains(check), "missing: \(check)")
        }
        let cPlan = try String(contentsOf: out.appendingPathComponent("plan-c.txt"), encoding: .utf8)
        var swift = try PlanScenario()
        let swiftPlan = try swift.run()
        #expect(cPlan == swiftPlan)
        #expect(swiftPlan.split(separator: "\n").count == 10)
    }

    /// Runs the harness; nil when it was skipped (exit 77: a compiler, pkg-config or valgrind
    /// is missing).
    static func runScript(out: URL) throws -> (status: Int32, output: String)? { try Harness.script("scripts/c-api.sh", [out.path]) }
}

/// Tests/CAPI/plan_scenario.c step by step, through ``ClusterMember``: the same members, SAs,
/// packets, clock and delivery order, and its output format.
struct PlanScenario {
    var members: [ClusterMember]
    var alive = [true, true]
    var now = Timestamp(nanoseconds: 1_000_000_000)
    var queue: [(to: Int, datagram: [UInt8])] = []
    var tookOver: (plan: TakeoverPlan, rekey: [UInt32])?

    init() throws {
        let key = try ChannelKey(bytes: (1...32).map { UInt8($0) })
        members = try (1...2).map { me in
            let channel = SyncChannelConfiguration(
                clusterID: 7, member: ClusterMemberID(rawValue: UInt16(me)), epoch: 1, key: key, peers: [ClusterMemberID(rawValue: me == 1 ? 2 : 1)])
            return try ClusterMember(configuration: ClusterMemberConfiguration(channel: channel, activeMember: ClusterMemberID(rawValue: 1)))
        }
    }

    mutating func drain(_ i: Int) {
        while let action = members[i].nextAction() {
            switch action {
            case .transmit(let peer, let datagram) where alive[i]: queue.append((Int(peer.rawValue) - 1, datagram))
            case .tookOver(let plan, let rekey): tookOver = (plan, rekey)
            default: break
            }
        }
    }

    mutating func run(milliseconds: Int) {
        var step = 0
        while step < milliseconds, tookOver == nil {
            step += 1
            now = now + .milliseconds(1)
            for i in 0..<2 where alive[i] {
                members[i].tick(now: now)
                drain(i)
            }
            var next = 0
            while next < queue.count {
                let (to, datagram) = queue[next]
                next += 1
                guard alive[to] else { continue }
                members[to].receive(datagram, now: now)
                drain(to)
            }
            queue.removeAll()
        }
    }

    static func childSPI(_ i: Int, _ j: Int) -> UInt32 { 0x1000 + 16 * UInt32(i) + UInt32(j) }
    static let ikeSAs = (0..<3).map { IKESAIdentifier(initiatorSPI: 0x1111_0000_0000_0000 + UInt64($0), responderSPI: 0x2222_0000_0000_0000 + UInt64($0)) }

    mutating func establish() throws {
        let owner = ClusterMemberID(rawValue: 1)
        let keys = try IKEKeys(packed: KeyMaterial(copying: (0..<224).map { UInt8($0) }), lengths: Array(repeating: 32, count: 7))
        let childKey = KeyMaterial(copying: (1...36).map { UInt8($0) })
        for i in 0..<3 {
            let ike = try IKESA(
                identifier: Self.ikeSAs[i], isOriginalInitiator: false,
                local: Endpoint(address: IPAddress("192.0.2.1"), port: 500), remote: Endpoint(address: IPAddress("198.51.100.\(10 + i)"), port: 500),
                transforms: IKETransforms(encryption: .init(rawValue: 20), encryptionKeyLength: 256, prf: .init(rawValue: 5), integrity: .none, keyExchange: .curve25519),
                keys: keys, messageIDs: IKEMessageIDWindows(resumingAt: 1, expecting: UInt64(2 + i), peerWindowSize: 1, localWindowSize: 1),
                extensions: IKEExtensions(messageIDSync: i != 0, replayCounterSync: i == 1, childSAsUseExtendedSequenceNumbers: i != 2), owner: owner)
            _ = try members[0].update(now: now) { state, changes throws(GatewayStateError) in changes += try state.createIKESA(ike) }
            for j in 0..<2 {
                let esn = i != 2
                let child = try ChildSA(
                    inboundSPI: Self.childSPI(i, j), outboundSPI: 0x2000 + 16 * UInt32(i) + UInt32(j),
                    localSelectors: [TrafficSelector(startAddress: IPAddress("10.0.0.0"), endAddress: IPAddress("10.0.0.255"))],
                    remoteSelectors: [
                        TrafficSelector(startAddress: IPAddress("10.1.\(i).0"), endAddress: IPAddress("10.1.\(i).255"), ipProtocol: 17, startPort: 500, endPort: 500)
                    ],
                    transforms: ChildSATransforms(encryption: .init(rawValue: 20), encryptionKeyLength: 256, integrity: .none),
                    inboundKeys: ChildSAKeys(encryption: childKey), outboundKeys: ChildSAKeys(encryption: childKey),
                    outboundCounter: OutboundSequenceCounter(extendedSequenceNumbers: esn),
                    inboundWindow: ReplayWindow(size: j == 0 ? 64 : 1024, extendedSequenceNumbers: esn),
                    lifetime: ChildSALifetime(soft: LifetimeLimits(seconds: 3000), hard: LifetimeLimits(seconds: 3600), installedAt: now),
                    parent: Self.ikeSAs[i], owner: owner)
                _ = try members[0].update(now: now) { state, changes throws(GatewayStateError) in changes += try state.createChildSA(child) }
            }
        }
    }

    mutating func traffic(_ spi: UInt32, outbound: Int, inbound: UInt32) {
        _ = members[0].packetPath { state in
            let slot = state.slot(forInboundSPI: spi)!
            for _ in 0..<outbound { _ = try! state.nextOutboundSequenceNumber(at: slot, bytes: 1200) }
            for wire in UInt32(1)...max(inbound, 1) where inbound > 0 {
                guard case .fresh(let sequence)? = state.checkInbound(wire: wire, at: slot) else { preconditionFailure("not fresh") }
                try! state.commitInbound(sequence, bytes: 1200, at: slot)
            }
        }
    }

    mutating func run() throws -> String {
        run(milliseconds: 300)
        try establish()
        run(milliseconds: 100)
        for k in 0..<6 { traffic(Self.childSPI(k / 2, k % 2), outbound: (k + 1) * 1000, inbound: UInt32(k + 1) * 100) }
        _ = try members[0].replicateExchange(of: Self.ikeSAs[0], messageID: 2, initiatedHere: false, finished: false, now: now)
        _ = try members[0].update(now: now) { state, changes throws(GatewayStateError) in
            let windows = try! IKEMessageIDWindows(resumingAt: 5, expecting: 9, peerWindowSize: 1, localWindowSize: 1)
            changes += try state.updateMessageIDs(of: Self.ikeSAs[2]) { $0 = windows }
        }
        run(milliseconds: 120)
        traffic(Self.childSPI(0, 0), outbound: 300, inbound: 0)
        run(milliseconds: 10)
        alive[0] = false
        run(milliseconds: 3000)
        guard let (plan, rekey) = tookOver else { throw PlanScenarioError.noTakeover }
        return Self.lines(plan, rekey: rekey, state: members[1].state)
    }

    /// The plan as plan_scenario.c prints it.
    static func lines(_ plan: TakeoverPlan, rekey: [UInt32], state: GatewayState) -> String {
        func hex(_ value: some BinaryInteger, _ digits: Int) -> String {
            let text = String(value, radix: 16)
            return String(repeating: "0", count: max(digits - text.count, 0)) + text
        }
        func optional(_ value: UInt64?) -> String { value.map(String.init) ?? "-" }
        var text = ""
        for decision in plan.ikeSAs {
            var (mid, next, expected, send, receive, delta): (Int, UInt64, UInt64, UInt32, UInt32, UInt64?) = (0, 0, 0, 0, 0, nil)
            switch decision.messageIDs {
            case .exact(let n, let e): (mid, next, expected) = (0, n, e)
            case .messageIDSync(let s, let r, let d): (mid, send, receive, delta) = (1, s, r, d)
            case .awaitPeerRetransmission(let n, let e): (mid, next, expected) = (2, n, e)
            case .deleteAndReestablish: mid = 3
            }
            let classification = [IKESAClassification.certain, .inFlight, .suspect].firstIndex(of: decision.classification)!
            text += "ike \(hex(decision.identifier.initiatorSPI, 16))_\(hex(decision.identifier.responderSPI, 16)) class=\(classification) mid=\(mid)"
            text += " next=\(next) expected=\(expected) sync=\(send)/\(receive) delta=\(optional(delta))"
            text += " unconfirmed=\(decision.unconfirmedRekey == nil ? 0 : 1) reason=\(decision.reason)\n"
        }
        for decision in plan.childSAs {
            var (outbound, lastSent) = (1, UInt64(0))
            if case .resume(let value) = decision.outbound { (outbound, lastSent) = (0, value) }
            let (inbound, inboundAdvance): (Int, UInt64) =
                switch decision.inbound {
                case .restore(.conservative(let advance)): (0, advance)
                case .restore(.replayCounterSync(let delta)): (1, delta)
                case .restore(.permissiveUnsafe): (2, 0)
                case .rekey: (3, 0)
                }
            let counters = state.childSA(inboundSPI: decision.inboundSPI)!.counterCheckpoint
            text += "child \(hex(decision.inboundSPI, 8)) parent=\(hex(decision.parent.initiatorSPI, 16)) out=\(outbound) last_sent=\(lastSent)"
            text += " in=\(inbound) in_advance=\(inboundAdvance) advance=\(decision.advance)"
            text += " age_ns=\(optional(decision.reason.checkpointAge.map { UInt64($0.saturatingNanoseconds) })) pps=\(optional(decision.reason.packetsPerSecond))"
            text += " suspect=\(decision.reason.suspect ? 1 : 0) counters=\(counters.outbound.lastSent)/\(counters.inbound.highestAuthenticatedSequenceNumber)\n"
        }
        return text + "rekey \(rekey.count)\n"
    }
}

enum PlanScenarioError: Error { case noTakeover }
