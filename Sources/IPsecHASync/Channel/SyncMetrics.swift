public import IPsecHACore
import Metrics

/// Publishes the synch channel's and the replica's counters to swift-metrics (whatever backend
/// the process bootstrapped: Prometheus, StatsD, OpenTelemetry...).
///
/// The channel, the replica and the replicator are plain values that count; call
/// ``report(channel:replica:replicator:now:)`` from the owner's loop (every tick, or every second): it adds what changed since the last
/// report to the counters and sets the replication-lag gauge.
///
/// | metric | kind | meaning |
/// |---|---|---|
/// | `ipsecha_sync_datagrams_sent` | counter | datagrams handed to the transport |
/// | `ipsecha_sync_records_sent` | counter | records sent (each once, however often retransmitted) |
/// | `ipsecha_sync_records_received` | counter | records in the datagrams accepted |
/// | `ipsecha_sync_retransmissions` | counter | reliable datagrams sent again |
/// | `ipsecha_sync_gaps_detected` | counter | gaps noticed in a peer's stream |
/// | `ipsecha_sync_stream_resets` | counter | streams reset (a resync follows) |
/// | `ipsecha_sync_authentication_failures` | counter | datagrams that failed authentication |
/// | `ipsecha_sync_replays_rejected` | counter | datagrams refused as replays |
/// | `ipsecha_sync_malformed_dropped` | counter | other datagrams dropped |
/// | `ipsecha_sync_resyncs_completed` | counter | bulk resyncs a replica completed |
/// | `ipsecha_sync_records_stale` | counter | records older than the state held, ignored |
/// | `ipsecha_sync_resyncs_started` | counter | bulk resyncs the active member started |
/// | `ipsecha_sync_backlogs` | counter | times records waited because a standby's buffer was full |
/// | `ipsecha_sync_backlog_overflows` | counter | times a standby's waiting records passed the limit (a resync followed) |
/// | `ipsecha_sync_records_too_large` | counter | records skipped because no datagram holds them (the standby lacks their SA) |
/// | `ipsecha_sync_replication_lag_seconds` | gauge, per peer | age of the oldest unacknowledged datagram |
/// | `ipsecha_sync_waiting_records` | gauge, per peer | records waiting for room in the channel's buffer (active member) |
/// | `ipsecha_sync_peer_protocol_version` | gauge, per peer | the synch protocol version spoken with the peer (``SyncChannel/protocolVersion(with:)``); 0 while not heard or when no version is common |
/// | `ipsecha_sync_peer_round_trip_seconds` | gauge, per peer | the longest round trip of a reliable datagram to the peer over the last one to two seconds (``SyncChannel/roundTrip(to:)``): what a standby of this member takes as its takeover's staleness margin; 0 before the first |
/// | `ipsecha_sync_standby_current` | gauge, per peer | 1 when the standby acknowledged recent state (``StandbyStatus/current``), else 0 (active member) |
public struct SyncMetricsReporter {
    private let datagramsSent = Counter(label: "ipsecha_sync_datagrams_sent")
    private let recordsSent = Counter(label: "ipsecha_sync_records_sent")
    private let recordsReceived = Counter(label: "ipsecha_sync_records_received")
    private let retransmissions = Counter(label: "ipsecha_sync_retransmissions")
    private let gaps = Counter(label: "ipsecha_sync_gaps_detected")
    private let resets = Counter(label: "ipsecha_sync_stream_resets")
    private let authenticationFailures = Counter(label: "ipsecha_sync_authentication_failures")
    private let replays = Counter(label: "ipsecha_sync_replays_rejected")
    private let malformed = Counter(label: "ipsecha_sync_malformed_dropped")
    private let resyncs = Counter(label: "ipsecha_sync_resyncs_completed")
    private let stale = Counter(label: "ipsecha_sync_records_stale")
    private let resyncsStarted = Counter(label: "ipsecha_sync_resyncs_started")
    private let backlogs = Counter(label: "ipsecha_sync_backlogs")
    private let backlogOverflows = Counter(label: "ipsecha_sync_backlog_overflows")
    private let recordsTooLarge = Counter(label: "ipsecha_sync_records_too_large")
    private var lastChannel = SyncChannelStatistics()
    private var lastReplica = ReplicaStatistics()
    private var lastReplicator = (resyncs: 0, backlogs: 0, overflows: 0, tooLarge: 0)
    private var lagGauges: [ClusterMemberID: Gauge] = [:]
    private var waitingGauges: [ClusterMemberID: Gauge] = [:]
    private var currentGauges: [ClusterMemberID: Gauge] = [:]
    private var versionGauges: [ClusterMemberID: Gauge] = [:]
    private var roundTripGauges: [ClusterMemberID: Gauge] = [:]

    /// A reporter for a member with these peers; the metrics are created in the bootstrapped
    /// backend (or the task's, under `withMetricsFactory`).
    public init(peers: [ClusterMemberID]) {
        for peer in peers {
            lagGauges[peer] = Gauge(label: "ipsecha_sync_replication_lag_seconds", dimensions: [("peer", "\(peer.rawValue)")])
            waitingGauges[peer] = Gauge(label: "ipsecha_sync_waiting_records", dimensions: [("peer", "\(peer.rawValue)")])
            currentGauges[peer] = Gauge(label: "ipsecha_sync_standby_current", dimensions: [("peer", "\(peer.rawValue)")])
            versionGauges[peer] = Gauge(label: "ipsecha_sync_peer_protocol_version", dimensions: [("peer", "\(peer.rawValue)")])
            roundTripGauges[peer] = Gauge(label: "ipsecha_sync_peer_round_trip_seconds", dimensions: [("peer", "\(peer.rawValue)")])
        }
    }

    /// Adds what changed since the last report.
    public mutating func report(channel: SyncChannel, replica: Replica? = nil, replicator: Replicator? = nil, now: Timestamp) {
        let current = channel.statistics
        func add<Count: BinaryInteger>(_ counter: Counter, _ new: Count, _ old: Count) {
            if new > old { counter.increment(by: Int64(clamping: new - old)) }
        }
        add(datagramsSent, current.datagramsSent, lastChannel.datagramsSent)
        add(recordsSent, current.recordsSent, lastChannel.recordsSent)
        add(recordsReceived, current.recordsReceived, lastChannel.recordsReceived)
        add(retransmissions, current.retransmissions, lastChannel.retransmissions)
        add(gaps, current.gapsDetected, lastChannel.gapsDetected)
        add(resets, current.streamResets, lastChannel.streamResets)
        add(authenticationFailures, current.authenticationFailures, lastChannel.authenticationFailures)
        add(replays, current.replaysRejected, lastChannel.replaysRejected)
        add(malformed, current.malformedDropped, lastChannel.malformedDropped)
        lastChannel = current
        if let replica {
            add(resyncs, replica.statistics.resyncsCompleted, lastReplica.resyncsCompleted)
            add(stale, replica.statistics.stale, lastReplica.stale)
            lastReplica = replica.statistics
        }
        if let replicator {
            add(resyncsStarted, replicator.resyncsStarted, lastReplicator.resyncs)
            add(backlogs, replicator.backlogsStarted, lastReplicator.backlogs)
            add(backlogOverflows, replicator.backlogOverflows, lastReplicator.overflows)
            add(recordsTooLarge, replicator.recordsTooLarge, lastReplicator.tooLarge)
            lastReplicator = (replicator.resyncsStarted, replicator.backlogsStarted, replicator.backlogOverflows, replicator.recordsTooLarge)
            for (peer, gauge) in waitingGauges { gauge.record(Double(replicator.waitingRecords(for: peer))) }
            for (peer, gauge) in currentGauges { gauge.record(replicator.status(of: peer, channel: channel, now: now) == .current ? 1 : 0) }
        }
        for (peer, gauge) in versionGauges {
            if case .speaking(let version) = channel.protocolVersion(with: peer) { gauge.record(Double(version)) } else { gauge.record(0) }
        }
        for (peer, gauge) in roundTripGauges {
            gauge.record(channel.roundTrip(to: peer).map { Double($0.nonNegativeNanoseconds) / 1e9 } ?? 0)
        }
        for (peer, gauge) in lagGauges {
            gauge.record(Double(channel.replicationLagNanoseconds(to: peer, now: now)) / 1e9)
        }
    }
}
