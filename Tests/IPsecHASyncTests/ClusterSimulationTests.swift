import Foundation
import IPsecHACore
import IPsecHASimulation
import Testing

@Suite("Cluster simulation: a peer, an attacker, a crash")
struct ClusterSimulationTests {
    static func configuration(members: Int = 2, seed: UInt64 = 3) -> SimulationConfiguration {
        var configuration = SimulationConfiguration()
        configuration.seed = seed
        configuration.members = members
        configuration.ikeSAs = 40
        configuration.durationMs = 1_500
        configuration.crashAtMs = 600
        configuration.ikeExchangeIntervalMs = 150
        return configuration
    }

    static func run(_ configuration: SimulationConfiguration) throws -> SimulationReport {
        var simulation = try ClusterSimulation(configuration: configuration)
        return try simulation.run()
    }

    @Test func theSameSeedGivesTheSameRun() throws {
        let first = try Self.run(Self.configuration())
        #expect(try Self.run(Self.configuration()) == first)
        #expect(try Self.run(Self.configuration(seed: 4)).json != first.json)
    }

    @Test("the invariants hold through a crash of the active member", arguments: [(2, true), (3, true), (2, false)] as [(Int, Bool)])
    func invariantsHoldThroughACrash(members: Int, synchronous: Bool) throws {
        var configuration = Self.configuration(members: members)
        configuration.synchronousReplication = synchronous
        let report = try Self.run(configuration)
        #expect(report.invariantsHeld, "\(report.json)")
        #expect(report.standbyReadyAtTakeover != nil)
        // Asynchronous replication keeps the invariants but not the message IDs: responses left
        // before the standby held their state, and the standby cannot know what it lacks.
        guard synchronous else { return }
        #expect(report.takeoverMs.map { $0 < 300 } == true, "detection (3 heartbeats) and takeover: \(report.json)")
        #expect(report.ikeExchangesInFlightAtCrash > 0 && report.ikeSAsResyncedViaRFC6311 > 0)
        #expect(report.ikeSAsSurvived == report.ikeSAs && report.ikeSAsEstablished > 0 && report.ikeRequestsDroppedByPeer == 0, "\(report.json)")
        #expect(report.restartedMemberReady == true && report.staleRecordsRefused == 0, "\(report.json)")
        #expect(report.legitPacketsRejectedByCluster == 0, "the peer jumped its counters (RFC 6311): \(report.json)")
        #expect(report.replaysAttempted > 100 && report.espPacketsSent > 1_000 && report.childSARekeys > 0)
    }

    @Test func theChecksCanFail() throws {
        // Permissive windows accept the attacker's replays once: the check sees them.
        var permissive = Self.configuration()
        permissive.inboundPolicy = .permissiveUnsafe
        let unsafe = try Self.run(permissive)
        #expect(unsafe.replaysAccepted > 0 && !unsafe.invariantsHeld)
        // Conservative windows accept no replay but drop the peer's packets inside the advance.
        var conservative = Self.configuration()
        conservative.inboundPolicy = .conservative
        let safe = try Self.run(conservative)
        #expect(safe.replaysAccepted == 0 && safe.invariantsHeld && safe.legitPacketsRejectedByCluster > 0)
    }

    @Test func configurationsOutOfRangeAreTypedErrors() {
        var configuration = SimulationConfiguration()
        configuration.members = 1
        #expect(throws: SimulationError.self) { try ClusterSimulation(configuration: configuration) }
        configuration = SimulationConfiguration()
        configuration.crashAtMs = configuration.durationMs
        #expect(throws: SimulationError.self) { try configuration.validate() }
    }
}

@Suite("Cluster simulation: the trace")
struct ClusterSimulationTraceTests {
    @Test func theTraceIsJSONLinesThatAnAuditorCanCheckOnItsOwn() throws {
        var configuration = ClusterSimulationTests.configuration()
        configuration.ikeSAs = 10
        var simulation = try ClusterSimulation(configuration: configuration)
        nonisolated(unsafe) var lines: [String] = []
        simulation.trace = { lines.append($0) }
        let report = try simulation.run()
        var declared: Set<String> = []
        var accepted: [String: Set<Int64>] = [:]
        var kinds: [String: Int] = [:]
        var espCount = 0
        for line in lines {
            let parsed = try JSONSerialization.jsonObject(with: Data(line.utf8))
            let object = try #require(parsed as? [String: Any], "\(line)")
            let kind = try #require(object["kind"] as? String)
            kinds[kind, default: 0] += 1
            switch kind {
            case "child_sa":
                let receiver = try #require(object["receiver"] as? String)
                #expect(["peer", "cluster"].contains(receiver))
                declared.insert("\(receiver):\(try #require(object["spi"] as? Int))")
            case "esp":
                espCount += 1
                let verdict = try #require(object["verdict"] as? String)
                #expect(["accept", "replay", "stale", "fail", "lost"].contains(verdict), "\(line)")
                let receiver = (object["dst"] as? String) == "peer" ? "peer" : "cluster"
                let spi = try #require(object["spi"] as? Int)
                #expect(declared.contains("\(receiver):\(spi)"), "a child_sa line comes first: \(line)")
                if (object["forged"] as? Bool) == true { #expect(verdict != "accept", "\(line)") }
                if verdict == "accept" {
                    // The auditor's own replay check: no receiver accepts a sequence number twice.
                    let seq = Int64(try #require(object["seq"] as? Int))
                    #expect(accepted["\(receiver):\(spi)", default: []].insert(seq).inserted, "accepted twice: \(line)")
                }
            case "ike":
                let verdict = try #require(object["verdict"] as? String)
                #expect(["accept", "retransmit", "drop", "lost"].contains(verdict), "\(line)")
                #expect((object["ispi"] as? String)?.count == 16 && (object["rspi"] as? String)?.count == 16)
            case "crash", "failover":
                #expect(object["t"] is Int)
            default:
                Issue.record("unknown kind: \(line)")
            }
        }
        #expect(kinds["crash"] == 1 && kinds["failover"] == 1)
        #expect(kinds["ike", default: 0] > 0)
        // Every packet of the report is in the trace, with the attacker's replays and forgeries.
        #expect(espCount >= report.espPacketsSent + report.espPacketsFromPeer + report.replaysAttempted)
    }
}

@Suite("Cluster simulation: a grid of seeded runs")
struct ClusterSimulationGridTests {
    static let grid: [(Double, UInt64, InboundTakeoverPolicy)] = [0.0, 0.2, 0.4].flatMap { loss in
        [200, 700].flatMap { crash in [InboundTakeoverPolicy.replayCounterSyncWhereNegotiated, .conservative].map { (loss, UInt64(crash), $0) } }
    }

    @Test("invariants over synch loss, crash time and inbound policy", arguments: grid)
    func invariantsHold(loss: Double, crashAtMs: UInt64, policy: InboundTakeoverPolicy) throws {
        var configuration = SimulationConfiguration()
        configuration.seed = UInt64(loss * 10) * 1_000 + crashAtMs
        configuration.ikeSAs = 10
        configuration.durationMs = 1_000
        configuration.crashAtMs = crashAtMs
        configuration.syncLoss = loss
        configuration.inboundPolicy = policy
        var simulation = try ClusterSimulation(configuration: configuration)
        let report = try simulation.run()
        #expect(report.invariantsHeld, "\(report.json)")
        #expect(report.takeoverMs != nil && report.ikeSAsSurvived == report.ikeSAs, "\(report.json)")
    }
}

@Suite("Cluster simulation: the failover picture's data")
struct ClusterSimulationPlotTests {
    @Test func thePlotShowsBothMembersTheCheckpointsAndTheAdvance() throws {
        var simulation = try ClusterSimulation(configuration: ClusterSimulationTests.configuration())
        simulation.recordsPlot = true
        _ = try simulation.run()
        let plot = simulation.plot
        #expect(plot.series.count == 3)
        let crash = try #require(plot.crash)
        #expect(try #require(plot.failover) > crash)
        for series in plot.series {
            #expect(Set(series.sent.map(\.member)) == [1, 2], "sent before the crash by member 1, after by member 2")
            #expect(!series.checkpoints.isEmpty && !series.peerTop.isEmpty)
            let takeover = try #require(series.takeover)
            #expect(takeover.resumeAfter > takeover.replicated)
            // Member 2's first number is beyond everything member 1 sent.
            let before = series.sent.filter { $0.member == 1 }.map(\.number).max() ?? 0
            let after = series.sent.filter { $0.member == 2 }.map(\.number).min() ?? 0
            #expect(after > before && after == takeover.resumeAfter + 1)
        }
    }
}
