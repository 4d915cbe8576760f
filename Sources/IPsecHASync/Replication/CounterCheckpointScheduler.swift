public import IPsecHACore

/// When the per-packet counters of a Child SA are checkpointed to the standbys: after
/// ``packets`` packets or ``interval`` nanoseconds, whichever comes first (and only if the SA
/// carried traffic since its last checkpoint).
///
/// The defaults, 4,096 packets or 50 ms, bound what a takeover must skip: the outbound advance
/// has to cover every packet sent since the last checkpoint that reached the standby, at most
/// `min(packets, rate x interval)` plus `rate x` the time to detect the failure (a few heartbeat
/// intervals, 150 ms by default). At 100,000 packets per second on one SA that is 4,096 + 15,000
/// sequence numbers, far below the 2^32 a 32-bit SA has, and far below what an ESN SA has; at
/// 1,000 packets per second it is 50 + 150. Shorter intervals cost synch traffic: each
/// checkpoint is about 25 bytes on the wire (79 at most), batched up to 16 per record.
public struct CounterCheckpointPolicy: Sendable, Hashable {
    /// Packets (both directions) after which a checkpoint is due.
    public var packets: UInt64
    /// The time after which a checkpoint of an SA with new traffic is due (at least 1 ns).
    public var interval: Duration {
        get { .nanoseconds(Int64(clamping: intervalNanoseconds)) }
        set { intervalNanoseconds = max(newValue.nonNegativeNanoseconds, 1) }
    }
    /// ``interval`` in nanoseconds, for the scheduler's clock arithmetic.
    package private(set) var intervalNanoseconds: UInt64

    /// A policy; 4,096 packets or 50 ms by default.
    public init(packets: UInt64 = 4_096, interval: Duration = .milliseconds(50)) {
        self.packets = max(packets, 1)
        intervalNanoseconds = max(interval.nonNegativeNanoseconds, 1)
    }
}

/// Decides which Child SAs' counters are due for a checkpoint, takes the checkpoints in the
/// gateway state, and measures each SA's packet rate for the takeover's advance.
public struct CounterCheckpointScheduler {
    struct Track {
        var at: Timestamp
        var packets: UInt64
    }

    /// The policy in force.
    public var policy: CounterCheckpointPolicy
    private var tracks: [UInt32: Track] = [:]

    /// A scheduler with this policy.
    public init(policy: CounterCheckpointPolicy = CounterCheckpointPolicy()) { self.policy = policy }

    /// Checkpoints every Child SA that is due at `now` (one pass over the SAs) and returns the
    /// entries to replicate, each with its measured packet rate.
    public mutating func takeDueCheckpoints(from state: inout GatewayState, now: Timestamp) -> [CounterCheckpointEntry] {
        var entries: [CounterCheckpointEntry] = []
        var seen = Set<UInt32>()
        var due: [(spi: UInt32, packets: UInt64, rate: UInt32)] = []
        let interval = policy.intervalNanoseconds
        state.forEachChildSACounters { sa in
            seen.insert(sa.inboundSPI)
            guard let track = tracks[sa.inboundSPI] else {
                tracks[sa.inboundSPI] = Track(at: now, packets: sa.packets)
                return
            }
            let sent = sa.packets &- track.packets
            let elapsed = now.nanoseconds &- track.at.nanoseconds
            guard sent > 0, sent >= policy.packets || elapsed >= interval else { return }
            let rate = elapsed == 0 ? UInt64(UInt32.max) : min(sent &* 1_000_000_000 / elapsed, UInt64(UInt32.max))
            due.append((sa.inboundSPI, sa.packets, UInt32(rate)))
        }
        for (spi, packets, rate) in due {
            guard let slot = state.slot(forInboundSPI: spi),
                case .countersAdvanced(let checkpoint, let generation)? = state.checkpointCounters(at: slot).first
            else { continue }
            entries.append(CounterCheckpointEntry(checkpoint: checkpoint, generation: generation, packetsPerSecond: rate))
            tracks[spi] = Track(at: now, packets: packets)
        }
        if tracks.count > seen.count { tracks = tracks.filter { seen.contains($0.key) } }
        return entries
    }
}
