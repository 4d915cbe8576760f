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
    /// The shortest time a checkpoint's packet rate is measured over (at least 1 ns; it spans
    /// between one and two of these). Over one checkpoint's few packets the rate of a slow SA
    /// is mostly rounding (4 packets in 16 or in 24 ms: 250 or 166 a second), and a takeover's
    /// conservative inbound window drops the peer's packets in proportion to it. Counters a
    /// data plane reports less often are measured over its report interval instead
    /// (``CounterCheckpointScheduler/counterReportInterval``).
    public var rateWindow: Duration {
        get { .nanoseconds(Int64(clamping: rateWindowNanoseconds)) }
        set { rateWindowNanoseconds = max(newValue.nonNegativeNanoseconds, 1) }
    }
    /// ``rateWindow`` in nanoseconds.
    package private(set) var rateWindowNanoseconds: UInt64

    /// A policy; 4,096 packets or 50 ms by default, rates measured over at least 100 ms.
    public init(packets: UInt64 = 4_096, interval: Duration = .milliseconds(50), rateWindow: Duration = .milliseconds(100)) {
        self.packets = max(packets, 1)
        intervalNanoseconds = max(interval.nonNegativeNanoseconds, 1)
        rateWindowNanoseconds = max(rateWindow.nonNegativeNanoseconds, 1)
    }
}

/// Decides which Child SAs' counters are due for a checkpoint, takes the checkpoints in the
/// gateway state, and measures each SA's packet rate for the takeover's advance.
///
/// The rate a checkpoint carries is that of the busier direction, over the last
/// ``CounterCheckpointPolicy/rateWindow`` or up to twice that: a takeover moves each direction's
/// counter by what that direction may have carried, so the sum of both would double the
/// inbound advance of a two-way flow, and with it the peer's packets a conservative window
/// drops.
public struct CounterCheckpointScheduler {
    struct Track {
        /// The Child SA tracked: another in its slot starts a track of its own.
        var inboundSPI: UInt32
        /// The last checkpoint, and the packets of both directions then.
        var at: Timestamp
        var packets: UInt64
        /// Where the rate is measured from, and the next such point once it is a window old.
        var rateFrom: RatePoint
        var rateNext: RatePoint
        /// The last visit: between visits the counters did not move (the scan visits every
        /// Child SA whose counters moved since its last checkpoint).
        var seen: RatePoint
    }

    struct RatePoint {
        var at: Timestamp
        var inbound: UInt64
        var outbound: UInt64
    }

    /// The policy in force.
    public var policy: CounterCheckpointPolicy
    /// How long the counters of a Child SA that carries traffic may stand still in the state
    /// because its data plane reports them only that often
    /// (``ClusterDataPlane/counterReportInterval``; zero for counters the package keeps).
    /// Rates are measured over at least this: a kernel that reports an SA once a second moves
    /// its counters by a second's packets at once, and over the 100 ms rate window alone that
    /// read as five to ten times the rate (a takeover's conservative inbound window then
    /// dropped up to seven seconds of the peer's pings, none since).
    public var counterReportInterval: Duration {
        get { .nanoseconds(Int64(clamping: counterReportIntervalNanoseconds)) }
        set { counterReportIntervalNanoseconds = newValue.nonNegativeNanoseconds }
    }
    private var counterReportIntervalNanoseconds: UInt64 = 0
    /// By the Child SA's slot in the gateway state (`ChildSASlot.index`). A dictionary by SPI
    /// (a hash, a probe and a set of the SPIs seen, per Child SA and pass) made a pass over
    /// 200,000 Child SAs take 32 ms, three times the 10 ms between passes.
    private var tracks: [Track?] = []

    /// A scheduler with this policy.
    public init(policy: CounterCheckpointPolicy = CounterCheckpointPolicy()) { self.policy = policy }

    /// Checkpoints every Child SA that is due at `now` and returns the entries to replicate,
    /// each with its measured packet rate. The first pass visits every Child SA, to start
    /// tracking each; later ones only those whose counters moved since their last checkpoint
    /// (`GatewayState.visitChildSACountersMoved(_:)`): an idle Child SA costs nothing.
    public mutating func takeDueCheckpoints(from state: inout GatewayState, now: Timestamp) -> [CounterCheckpointEntry] {
        var due: [Due] = []
        if tracks.isEmpty {
            state.forEachChildSACounters { sa in _ = visit(sa, now: now, due: &due) }
        } else {
            state.visitChildSACountersMoved { sa in visit(sa, now: now, due: &due) }
        }
        var entries: [CounterCheckpointEntry] = []
        entries.reserveCapacity(due.count)
        for (slot, packets, rate) in due {
            guard case .countersAdvanced(let checkpoint, let generation)? = state.checkpointCounters(at: slot).first else { continue }
            entries.append(CounterCheckpointEntry(checkpoint: checkpoint, generation: generation, packetsPerSecond: rate))
            tracks[slot.index]?.at = now
            tracks[slot.index]?.packets = packets
        }
        return entries
    }

    /// A Child SA due for a checkpoint: where, its packets then, its measured rate.
    private typealias Due = (slot: ChildSASlot, packets: UInt64, rate: UInt32)

    /// One Child SA's visit: its track started or moved on, and it appended to `due` when due.
    /// Returns whether it has packets since its last checkpoint that are not due yet (to be
    /// visited again).
    private mutating func visit(_ sa: GatewayState.ChildSACounters, now: Timestamp, due: inout [Due]) -> Bool {
        let index = sa.slot.index
        if index >= tracks.count { tracks.append(contentsOf: repeatElement(nil, count: index + 1 - tracks.count)) }
        let point = RatePoint(at: now, inbound: sa.inboundPackets, outbound: sa.outboundPackets)
        // A slot's first Child SA, or another one since the last visit (its counters start
        // again; a count below the last checkpoint's cannot be the same SA's).
        guard var track = tracks[index], track.inboundSPI == sa.inboundSPI, sa.packets >= track.packets else {
            tracks[index] = Track(inboundSPI: sa.inboundSPI, at: now, packets: sa.packets, rateFrom: point, rateNext: point, seen: point)
            return false
        }
        let window = max(policy.rateWindowNanoseconds, counterReportIntervalNanoseconds)
        if now.nanoseconds &- track.seen.at.nanoseconds > window {
            // Not visited for more than a window: idle, its counters as last seen, until after
            // the last pass. Measured over the last window, as if it had been visited all along
            // (not over the idle time, which would make a flow that starts look slow).
            let idle = RatePoint(at: Timestamp(nanoseconds: now.nanoseconds &- window), inbound: track.seen.inbound, outbound: track.seen.outbound)
            track.rateFrom = idle
            track.rateNext = idle
        } else if now.nanoseconds &- track.rateNext.at.nanoseconds >= window {
            track.rateFrom = track.rateNext
            track.rateNext = point
        }
        track.seen = point
        tracks[index] = track
        let sent = sa.packets &- track.packets
        guard sent > 0 else { return false }
        guard sent >= policy.packets || now.nanoseconds &- track.at.nanoseconds >= policy.intervalNanoseconds else { return true }
        let from = track.rateFrom
        let measured = max(sa.inboundPackets &- from.inbound, sa.outboundPackets &- from.outbound)
        let span = now.nanoseconds &- from.at.nanoseconds
        let (scaled, overflow) = measured.multipliedReportingOverflow(by: 1_000_000_000)
        let rate = span == 0 || overflow ? UInt64(UInt32.max) : min(scaled / span, UInt64(UInt32.max))
        due.append((sa.slot, sa.packets, UInt32(rate)))
        return true
    }
}
