import IPsecHACore

/// The longest round trip to one peer over the last one to two seconds in which reliable
/// datagrams were acknowledged: a bound that follows the link as it slows down at once, and
/// as it speeds up after a second or two. Samples come from ``ReliableSender/acknowledge(cumulative:selective:now:)``.
/// Windows turn over only when samples come: while nothing reliable goes out (an idle
/// cluster sends no checkpoints) the last bound stands instead of vanishing.
struct RoundTripBound {
    /// How long one window lasts.
    static let window: UInt64 = 1_000_000_000

    private var current: UInt64 = 0
    private var previous: UInt64 = 0
    private var currentStart: Timestamp?

    /// The bound in nanoseconds; nil before the first sample.
    var nanoseconds: UInt64? { currentStart == nil ? nil : max(current, previous) }

    mutating func record(_ sample: UInt64, now: Timestamp) {
        if let start = currentStart, now.nanoseconds < start.nanoseconds &+ Self.window, now >= start {
            current = max(current, sample)
            return
        }
        // A window with samples has ended: it stays as the previous one only if it ended
        // just now, so that a burst two seconds ago no longer counts.
        let adjacent = currentStart.map { now.nanoseconds >= $0.nanoseconds && now.nanoseconds < $0.nanoseconds &+ 2 &* Self.window } ?? false
        previous = adjacent ? current : 0
        current = sample
        currentStart = now
    }
}
