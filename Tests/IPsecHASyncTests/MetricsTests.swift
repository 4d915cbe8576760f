import CoreMetrics
import IPsecHACore
import IPsecHASync
import IPsecHATestKit
import MetricsTestKit
import Testing

@Suite("Synch metrics")
struct MetricsTests {
    @Test func countersFollowTheChannelAndTheReplica() throws {
        let factory = TestMetrics()
        var faults = NetworkFaults()
        faults.loss = 0.3
        var pair = try ReplicationPair(seed: 50, faults: faults)
        var reporter = withMetricsFactory(factory) { SyncMetricsReporter(peers: [ReplicationPair.standbyID]) }
        var history = HistoryGenerator(seed: 51)
        for _ in 0..<100 {
            _ = try pair.replicate(try history.step(&pair.state))
            try pair.run(for: 2_000_000)
        }
        pair.network.faults = NetworkFaults()
        _ = try pair.settle()
        reporter.report(channel: pair.activeChannel, now: pair.now)
        var standbyReporter = withMetricsFactory(factory) { SyncMetricsReporter(peers: []) }
        standbyReporter.report(channel: pair.standbyChannel, replica: pair.replica, now: pair.now)
        #expect(try factory.expectCounter("ipsecha_sync_retransmissions").totalValue == Int64(pair.activeChannel.statistics.retransmissions))
        #expect(try factory.expectCounter("ipsecha_sync_retransmissions").totalValue > 0)
        #expect(try factory.expectCounter("ipsecha_sync_gaps_detected").totalValue == Int64(pair.standbyChannel.statistics.gapsDetected))
        #expect(try factory.expectCounter("ipsecha_sync_resyncs_completed").totalValue >= 1)
        // Both reporters feed the same counters.
        let channels = [pair.activeChannel.statistics, pair.standbyChannel.statistics]
        #expect(try factory.expectCounter("ipsecha_sync_records_sent").totalValue == Int64(channels.map(\.recordsSent).reduce(0, +)))
        #expect(try factory.expectCounter("ipsecha_sync_records_received").totalValue == Int64(channels.map(\.recordsReceived).reduce(0, +)))
        #expect(pair.standbyChannel.statistics.recordsReceived > pair.standbyChannel.statistics.datagramsReceived)
        #expect(try factory.expectGauge("ipsecha_sync_replication_lag_seconds", [("peer", "2")]).lastValue == 0)
        // A second report adds only what changed since.
        reporter.report(channel: pair.activeChannel, now: pair.now)
        #expect(try factory.expectCounter("ipsecha_sync_retransmissions").totalValue == Int64(pair.activeChannel.statistics.retransmissions))
    }

    @Test func replicationLagGrowsWhileTheStandbyIsCutOff() throws {
        var pair = try ReplicationPair(seed: 52)
        _ = try pair.settle()
        pair.network.faults.partitions = [[1, 2]]
        var history = HistoryGenerator(seed: 53)
        var changes: [StateChange] = []
        while changes.isEmpty { changes = try history.step(&pair.state) }
        _ = try pair.replicate(changes)
        try pair.run(for: 30_000_000)
        #expect(pair.activeChannel.replicationLag(to: ReplicationPair.standbyID, now: pair.now) >= .milliseconds(30))
        pair.network.faults.partitions = []
        _ = try pair.settle()
        #expect(pair.activeChannel.replicationLag(to: ReplicationPair.standbyID, now: pair.now) == .zero)
    }

    @Test func theActiveMemberReportsWhatWaitsForAStandby() throws {
        let factory = TestMetrics()
        var pair = try ReplicationPair(seed: 54) { $0.retransmitBufferLimit = 4 }
        _ = try pair.settle()
        var reporter = withMetricsFactory(factory) { SyncMetricsReporter(peers: [ReplicationPair.standbyID]) }
        var history = HistoryGenerator(seed: 55)
        for _ in 0..<100 { _ = try pair.replicate(try history.step(&pair.state)) }
        let waiting = pair.replicator.waitingRecords(for: ReplicationPair.standbyID)
        #expect(waiting > 0)
        reporter.report(channel: pair.activeChannel, replicator: pair.replicator, now: pair.now)
        #expect(try factory.expectGauge("ipsecha_sync_waiting_records", [("peer", "2")]).lastValue == Double(waiting))
        #expect(try factory.expectCounter("ipsecha_sync_backlogs").totalValue == 1)
        #expect(try factory.expectCounter("ipsecha_sync_resyncs_started").totalValue == 1)
        _ = try pair.settle()
        reporter.report(channel: pair.activeChannel, replicator: pair.replicator, now: pair.now)
        #expect(try factory.expectGauge("ipsecha_sync_waiting_records", [("peer", "2")]).lastValue == 0)
        #expect(try factory.expectCounter("ipsecha_sync_backlogs").totalValue == 1, "counted once")
    }

    /// Issue 20: the active member must not call a standby current unless it acknowledged
    /// recent state; cut off, it is silent, and the metric says 0.
    @Test func theStandbyIsCurrentOnlyWhileItAcknowledges() throws {
        let factory = TestMetrics()
        var pair = try ReplicationPair(seed: 56)
        _ = try pair.settle()
        var reporter = withMetricsFactory(factory) { SyncMetricsReporter(peers: [ReplicationPair.standbyID]) }
        func status() -> StandbyStatus { pair.replicator.status(of: ReplicationPair.standbyID, channel: pair.activeChannel, now: pair.now) }
        reporter.report(channel: pair.activeChannel, replicator: pair.replicator, now: pair.now)
        #expect(status() == .current)
        #expect(try factory.expectGauge("ipsecha_sync_standby_current", [("peer", "2")]).lastValue == 1)
        pair.network.faults.partitions = [[1, 2]]
        var history = HistoryGenerator(seed: 57)
        var changes: [StateChange] = []
        while changes.isEmpty { changes = try history.step(&pair.state) }
        _ = try pair.replicate(changes)
        try pair.run(for: 170_000_000)
        #expect(status() == .lagging, "an acknowledgement outstanding for more than three heartbeats")
        try pair.run(for: 100_000_000)
        #expect(status() == .silent)
        reporter.report(channel: pair.activeChannel, replicator: pair.replicator, now: pair.now)
        #expect(try factory.expectGauge("ipsecha_sync_standby_current", [("peer", "2")]).lastValue == 0)
        pair.network.faults.partitions = []
        _ = try pair.settle()
        #expect(status() == .current)
    }

    /// What an operator watches during a switchover and a failover: the role, the readiness,
    /// the epoch, the SAs held, and why each promotion happened.
    @Test func memberMetricsFollowASwitchoverAndAFailover() throws {
        let factory = TestMetrics()
        var cluster = try EmbeddedCluster(seed: 58)
        var reporters = withMetricsFactory(factory) { [ClusterMemberMetrics(peers: [EmbeddedCluster.id(1)])] }
        let standbyFactory = TestMetrics()
        reporters.append(withMetricsFactory(standbyFactory) { ClusterMemberMetrics(peers: [EmbeddedCluster.id(0)]) })
        func report() { for index in 0..<2 { reporters[index].report(cluster.members[index], now: cluster.now) } }
        func gauge(_ metrics: TestMetrics, _ label: String, _ dimensions: [(String, String)] = []) throws -> Double {
            try metrics.expectGauge(label, dimensions).lastValue ?? -1
        }
        try cluster.run(for: .milliseconds(300))
        _ = try cluster.createSAs(ikeSPI: 101, childSPI: 0x7700, seed: 59)
        try cluster.run(for: .milliseconds(50))
        report()
        #expect(try gauge(factory, "ipsecha_member_active") == 1)
        #expect(try gauge(standbyFactory, "ipsecha_member_active") == 0)
        #expect(try gauge(standbyFactory, "ipsecha_member_readiness", [("state", "complete-copy")]) == 1)
        #expect(try gauge(standbyFactory, "ipsecha_member_readiness", [("state", "resyncing")]) == 0)
        #expect(try gauge(standbyFactory, "ipsecha_member_electable") == 1)
        #expect(try gauge(standbyFactory, "ipsecha_member_ike_sas") == 1)
        #expect(try gauge(standbyFactory, "ipsecha_member_child_sas") == 1)
        #expect(try gauge(factory, "ipsecha_sync_standby_current", [("peer", "2")]) == 1)
        #expect(try gauge(factory, "ipsecha_sync_peer_protocol_version", [("peer", "2")]) == Double(SyncProtocolVersion.current))
        // The SAs' records went out reliably: their acknowledgement came back within the 0.1 ms
        // link delay each way and the standby's 2 ms acknowledgement delay.
        let roundTrip = try gauge(factory, "ipsecha_sync_peer_round_trip_seconds", [("peer", "2")])
        #expect(roundTrip > 0.000_2 && roundTrip < 0.003, "\(roundTrip) s")

        _ = try cluster.members[0].switchOver(now: cluster.now)
        try cluster.run(for: .milliseconds(50))
        report()
        #expect(try gauge(factory, "ipsecha_member_active") == 0)
        #expect(try gauge(standbyFactory, "ipsecha_member_active") == 1)
        #expect(try standbyFactory.expectCounter("ipsecha_member_promotions", [("reason", "switchover")]).totalValue == 1)
        #expect(try factory.expectCounter("ipsecha_member_step_downs").totalValue == 1)
        let epochAfterSwitchover = try gauge(standbyFactory, "ipsecha_member_epoch")

        try cluster.run(for: .seconds(1))
        cluster.crash(1)
        try cluster.run(for: .milliseconds(400))
        report()
        #expect(try gauge(factory, "ipsecha_member_active") == 1)
        #expect(try factory.expectCounter("ipsecha_member_promotions", [("reason", "failure")]).totalValue == 1)
        #expect(try gauge(factory, "ipsecha_member_epoch") > epochAfterSwitchover, "a takeover moves to a newer epoch")
        // Reported again with nothing new: the counters stay.
        report()
        #expect(try factory.expectCounter("ipsecha_member_promotions", [("reason", "failure")]).totalValue == 1)
    }
}
