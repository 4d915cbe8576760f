/// A point in time on the cluster's shared time base, in nanoseconds (for instance
/// `CLOCK_REALTIME` on members whose clocks are synchronised, or a simulation's virtual clock).
/// The package never reads a clock itself: callers pass the current time in.
public struct Timestamp: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    /// Nanoseconds since the time base's epoch.
    public var nanoseconds: UInt64

    /// A timestamp `nanoseconds` after the epoch.
    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    /// A timestamp `seconds` after the epoch.
    public static func seconds(_ seconds: UInt64) -> Timestamp {
        Timestamp(nanoseconds: seconds.multipliedReportingOverflow(by: 1_000_000_000).overflow ? .max : seconds * 1_000_000_000)
    }

    /// This time moved by `offset` nanoseconds, saturating at both ends: a time read on one
    /// member's clock, on another's.
    public func shifted(by offset: Int64) -> Timestamp {
        if offset >= 0 {
            let (sum, overflow) = nanoseconds.addingReportingOverflow(UInt64(offset))
            return Timestamp(nanoseconds: overflow ? .max : sum)
        }
        let back = offset.magnitude
        return Timestamp(nanoseconds: nanoseconds > back ? nanoseconds - back : 0)
    }

    /// This timestamp plus `seconds`, saturating at the end of time.
    public func adding(seconds: UInt64) -> Timestamp {
        let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let (sum, overflow2) = nanoseconds.addingReportingOverflow(product)
        return Timestamp(nanoseconds: overflow || overflow2 ? .max : sum)
    }

    /// This timestamp moved by `duration`, saturating at both ends of time.
    public static func + (lhs: Timestamp, rhs: Duration) -> Timestamp {
        let nanoseconds = rhs.saturatingNanoseconds
        return nanoseconds >= 0
            ? Timestamp(nanoseconds: lhs.nanoseconds.addingReportingOverflow(UInt64(nanoseconds)).overflow ? .max : lhs.nanoseconds + UInt64(nanoseconds))
            : Timestamp(nanoseconds: lhs.nanoseconds > nanoseconds.magnitude ? lhs.nanoseconds - nanoseconds.magnitude : 0)
    }

    public static func < (lhs: Timestamp, rhs: Timestamp) -> Bool { lhs.nanoseconds < rhs.nanoseconds }
    public var description: String { "t=\(nanoseconds)ns" }
}

/// Names one member of the cluster.
public struct ClusterMemberID: RawRepresentable, Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { "member \(rawValue)" }
}

extension Duration {
    /// The duration in whole nanoseconds, saturating at `Int64`'s ends: the package's clock
    /// arithmetic is in nanoseconds, its public intervals in `Duration`.
    @usableFromInline
    package var saturatingNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let (sum, overflow2) = whole.addingReportingOverflow(attoseconds / 1_000_000_000)
        return overflow || overflow2 ? (seconds < 0 ? .min : .max) : sum
    }
}

extension Duration {
    /// The duration in whole nanoseconds, 0 for a negative one, saturating.
    @usableFromInline
    package var nonNegativeNanoseconds: UInt64 { UInt64(max(saturatingNanoseconds, 0)) }
}
