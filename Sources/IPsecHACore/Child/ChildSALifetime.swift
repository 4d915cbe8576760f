/// Limits on an SA's life: time, bytes, packets; any may be absent (RFC 4301 section 4.4.2.1).
public struct LifetimeLimits: Sendable, Hashable, Codable {
    // 2^64 - 1 stands for "no limit", so that a limit takes 8 bytes instead of 16.
    private var storedSeconds: UInt64
    private var storedBytes: UInt64
    private var storedPackets: UInt64

    /// Seconds since installation.
    public var seconds: UInt64? {
        get { storedSeconds == .max ? nil : storedSeconds }
        set { storedSeconds = newValue ?? .max }
    }
    /// Bytes protected (in either direction of the pair).
    public var bytes: UInt64? {
        get { storedBytes == .max ? nil : storedBytes }
        set { storedBytes = newValue ?? .max }
    }
    /// Packets protected (in either direction of the pair).
    public var packets: UInt64? {
        get { storedPackets == .max ? nil : storedPackets }
        set { storedPackets = newValue ?? .max }
    }

    /// Limits from their parts; none by default. A limit of 2^64 - 1 is the same as none.
    public init(seconds: UInt64? = nil, bytes: UInt64? = nil, packets: UInt64? = nil) {
        storedSeconds = seconds ?? .max
        storedBytes = bytes ?? .max
        storedPackets = packets ?? .max
    }

    /// No limit at all.
    public static let unlimited = LifetimeLimits()
}

/// Where a Child SA is in its life.
public enum ChildSALifetimeState: Sendable, Hashable {
    /// Below every soft limit.
    case active
    /// A soft limit is reached: negotiate a replacement (rekey).
    case rekeyDue
    /// A hard limit is reached: the SA must not be used any more; delete it.
    case expired
}

/// Traffic counted on a Child SA pair, per direction.
public struct ChildSAUsage: Sendable, Hashable, Codable {
    /// Bytes received and verified.
    public var inboundBytes: UInt64 = 0
    /// Packets received and verified.
    public var inboundPackets: UInt64 = 0
    /// Bytes sent.
    public var outboundBytes: UInt64 = 0
    /// Packets sent.
    public var outboundPackets: UInt64 = 0

    /// Usage from its parts; zero by default.
    public init(inboundBytes: UInt64 = 0, inboundPackets: UInt64 = 0, outboundBytes: UInt64 = 0, outboundPackets: UInt64 = 0) {
        self.inboundBytes = inboundBytes
        self.inboundPackets = inboundPackets
        self.outboundBytes = outboundBytes
        self.outboundPackets = outboundPackets
    }
}

/// A Child SA's soft and hard lifetimes with the usage they are measured against.
///
/// RFC 4301: when a soft limit is reached the SA should be replaced, when a hard limit is
/// reached it must be deleted; whichever of time, bytes or packets comes first counts. Each
/// direction of the pair is measured on its own.
public struct ChildSALifetime: Sendable, Hashable {
    // The usage first: the per-packet paths and checkpoints write it next to the counters.
    /// Traffic so far.
    public var usage: ChildSAUsage
    /// Limits that call for a rekey.
    public let soft: LifetimeLimits
    /// Limits that end the SA.
    public let hard: LifetimeLimits
    /// When the SA was installed.
    public var installedAt: Timestamp { installedAtStorage }
    private var installedAtStorage: Timestamp

    /// A lifetime; throws when a soft limit is above the matching hard limit.
    public init(
        soft: LifetimeLimits, hard: LifetimeLimits, installedAt: Timestamp, usage: ChildSAUsage = ChildSAUsage()
    ) throws(ChildSAError) {
        func above(_ softValue: UInt64?, _ hardValue: UInt64?) -> Bool {
            guard let softValue, let hardValue else { return false }
            return softValue > hardValue
        }
        // Without an array of pairs: a standby builds one lifetime per Child SA it receives.
        if above(soft.seconds, hard.seconds) || above(soft.bytes, hard.bytes) || above(soft.packets, hard.packets) {
            throw .softLifetimeAboveHard
        }
        self.soft = soft
        self.hard = hard
        self.installedAtStorage = installedAt
        self.usage = usage
    }

    /// The same lifetime with its installation time moved by `offset` nanoseconds (onto
    /// another member's clock).
    public func shifted(by offset: Int64) -> ChildSALifetime {
        var moved = self
        moved.installedAtStorage = installedAt.shifted(by: offset)
        return moved
    }

    /// The state at time `now`.
    public func state(at now: Timestamp) -> ChildSALifetimeState {
        if reached(hard, at: now) { return .expired }
        if reached(soft, at: now) { return .rekeyDue }
        return .active
    }

    private func reached(_ limits: LifetimeLimits, at now: Timestamp) -> Bool {
        if let seconds = limits.seconds, now >= installedAt.adding(seconds: seconds) { return true }
        if let bytes = limits.bytes, max(usage.inboundBytes, usage.outboundBytes) >= bytes { return true }
        if let packets = limits.packets, max(usage.inboundPackets, usage.outboundPackets) >= packets { return true }
        return false
    }
}
