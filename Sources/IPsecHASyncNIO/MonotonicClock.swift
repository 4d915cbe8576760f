public import IPsecHACore

#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

extension Timestamp {
    /// The system's monotonic clock (`CLOCK_MONOTONIC`): the `now` a process feeds the sans-I/O
    /// types when it drives them with real time. It never goes back and ignores changes of the
    /// wall clock, so timers (heartbeats, retransmissions, failure detection) stay right when
    /// an operator or NTP sets the date.
    public static func monotonicNow() -> Timestamp {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Timestamp(nanoseconds: UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec))
    }
}
