import IPsecHACore
import IPsecHASync
import Testing

@Suite("Replication over the synch channel")
struct ReplicationTests {
    @Test func standbyBecomesReadyAndFollowsChanges() throws {
        var cluster = try ClusterHarness(seed: 1)
        try cluster.run(for: 300_000_000)
        #expect(cluster.replica.isReady)
        var history = HistoryGenerator(seed: 2)
        for _ in 0..<200 { _ = try cluster.replicate(try history.step(&cluster.state)) }
        try cluster.run(for: 300_000_000)
        #expect(cluster.replica.state == cluster.state)
        #expect(cluster.replica.statistics.stale == 0)
        #expect(cluster.replica.statistics.rejected == 0)
    }

    @Test(arguments: [3, 4, 5] as [UInt64])
    func convergesUnderLossDuplicationReorderingAndCorruption(seed: UInt64) throws {
        var faults = NetworkFaults()
        faults.loss = 0.3
        faults.duplication = 0.1
        faults.corruption = 0.02
        faults.jitter = 5_000_000
        var cluster = try ClusterHarness(seed: seed, faults: faults)
        try cluster.run(for: 500_000_000)
        var history = HistoryGenerator(seed: seed * 10)
        for _ in 0..<300 {
            _ = try cluster.replicate(try history.step(&cluster.state))
            try cluster.run(for: 2_000_000)
        }
        cluster.network.faults = NetworkFaults()
        try cluster.checkpointAll()
        try cluster.run(for: 2_000_000_000)
        #expect(cluster.replica.isReady)
        #expect(cluster.replica.state == cluster.state)
        #expect(cluster.activeChannel.statistics.retransmissions > 0)
        #expect(cluster.standbyChannel.statistics.gapsDetected > 0)
        #expect(cluster.standbyChannel.statistics.authenticationFailures > 0, "corrupted datagrams were refused")
        #expect(cluster.state.ikeSAs.count > 5)
    }

    @Test func lateJoinerCatchesUpByBulkResync() throws {
        var cluster = try ClusterHarness(seed: 6)
        var history = HistoryGenerator(seed: 7)
        // The active member works alone for a while: the standby is cut off.
        cluster.network.faults.partitions = [[1, 2]]
        for _ in 0..<400 { _ = try cluster.replicate(try history.step(&cluster.state)) }
        try cluster.run(for: 100_000_000)
        #expect(!cluster.replica.isReady)
        cluster.network.faults.partitions = []
        try cluster.run(for: 1_000_000_000)
        #expect(cluster.replica.isReady)
        #expect(cluster.replica.state == cluster.state)
        #expect(cluster.replicator.resyncsStarted >= 1)
    }

    @Test func tailLossIsDetectedWithinTwoHeartbeats() throws {
        var cluster = try ClusterHarness(seed: 8)
        try cluster.run(for: 300_000_000)
        let heartbeat = cluster.standbyChannel.configuration.heartbeatInterval
        var history = HistoryGenerator(seed: 9)
        // A burst whose last datagram is lost.
        for _ in 0..<20 { _ = try cluster.replicate(try history.step(&cluster.state)) }
        try cluster.run(for: 10_000_000)
        cluster.network.faults.loss = 1
        var sa = history.records.ikeSA()
        sa.generation = 0
        _ = try cluster.replicate(try cluster.state.createIKESA(sa))
        let lostAt = cluster.now
        try cluster.run(for: 1_000_000)
        cluster.network.faults.loss = 0
        var detectedAt: Timestamp?
        for _ in 0..<Int(3 * heartbeat / 1_000_000) {
            try cluster.run(for: 1_000_000)
            if detectedAt == nil, cluster.standbyChannel.missingSince(from: ClusterHarness.activeID) != nil { detectedAt = cluster.now }
        }
        let detected = try #require(detectedAt)
        #expect(detected.nanoseconds - lostAt.nanoseconds <= 2 * heartbeat)
        #expect(cluster.replica.state == cluster.state, "and repaired")
    }
}
