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
