/// One run of a member's synch channel: 128 random bits drawn when the channel starts, never
/// stored and never reused.
///
/// Every direction key is bound to the incarnations of both ends (see `Docs/SyncProtocol.md`,
/// "Handshake"). A restarted process draws a new incarnation, so it never seals under a key an
/// earlier run used (whatever its clock or epoch says), and it opens nothing sealed for an
/// earlier run of itself: a recording of old datagrams is refused.
public struct ChannelIncarnation: Sendable, Hashable, CustomStringConvertible {
    /// The upper 64 bits.
    public let high: UInt64
    /// The lower 64 bits.
    public let low: UInt64

    /// The all-zero value, which no channel has: it stands for "none" on the wire.
    static let none = ChannelIncarnation(uncheckedHigh: 0, low: 0)

    private init(uncheckedHigh high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// An incarnation from its two halves; nil for the all-zero value, which means "none".
    public init?(high: UInt64, low: UInt64) {
        guard high | low != 0 else { return nil }
        self.init(uncheckedHigh: high, low: low)
    }

    /// A new incarnation from `generator`. Use a cryptographically secure generator (the
    /// default, the system's) outside deterministic simulations: uniqueness across restarts
    /// rests on these bits.
    public static func random(using generator: inout some RandomNumberGenerator) -> ChannelIncarnation {
        while true {
            let high = generator.next()
            let low = generator.next()
            if let incarnation = ChannelIncarnation(high: high, low: low) { return incarnation }
        }
    }

    /// A new incarnation from the system's cryptographically secure generator.
    public static func random() -> ChannelIncarnation {
        var generator = SystemRandomNumberGenerator()
        return random(using: &generator)
    }

    public var description: String {
        String(high, radix: 16) + ":" + String(low, radix: 16)
    }
}
