/// The ESP/AH sequence number counter of an outbound Child SA (RFC 4303 sections 2.2 and 3.3.3).
///
/// The counter starts at 0 and is incremented before each packet, so the first packet carries 1.
/// With anti-replay on the receiver, the counter must never cycle: the last value is 2^32 - 1
/// without Extended Sequence Numbers and 2^64 - 1 with them, and asking for the number after it
/// throws ``SequenceCounterError/exhausted(lastSent:)`` without changing anything. A soft limit
/// below that marks the numbers from which the caller should rekey, so that a new Child SA is in
/// place before the old one runs out.
///
/// On failover the member that takes over restores the counter from the last replicated
/// checkpoint and ``advance(by:)``s it past every number the failed member may have used.
public struct OutboundSequenceCounter: Sendable, Hashable {
    /// Whether the Child SA negotiated Extended Sequence Numbers.
    public let extendedSequenceNumbers: Bool
    /// The last sequence number handed out (0 before the first packet).
    @inlinable public var lastSent: UInt64 { storedLastSent }
    @usableFromInline var storedLastSent: UInt64
    /// From this sequence number on, ``next()`` reports that a rekey is due.
    public let softLimit: UInt64

    /// The highest sequence number the counter may ever hand out.
    @inlinable
    public var hardLimit: UInt64 { extendedSequenceNumbers ? .max : UInt64(UInt32.max) }

    /// A counter for a new Child SA, at 0.
    ///
    /// - Parameters:
    ///   - extendedSequenceNumbers: whether the Child SA uses 64-bit sequence numbers (ESN).
    ///   - softLimit: the first number at which ``next()`` says a rekey is due; by default
    ///     2^32 - 2^24 without ESN (16.7 million packets of notice) and 2^64 - 2^32 with it.
    public init(extendedSequenceNumbers: Bool, softLimit: UInt64? = nil) throws(SequenceCounterError) {
        try self.init(extendedSequenceNumbers: extendedSequenceNumbers, lastSent: 0, softLimit: softLimit)
    }

    /// A counter that continues after `lastSent`, for instance from a replicated checkpoint.
    public init(
        extendedSequenceNumbers: Bool,
        lastSent: UInt64,
        softLimit: UInt64? = nil
    ) throws(SequenceCounterError) {
        let hardLimit = extendedSequenceNumbers ? UInt64.max : UInt64(UInt32.max)
        let soft = softLimit ?? (extendedSequenceNumbers ? UInt64.max - (1 << 32) : hardLimit - (1 << 24))
        guard lastSent <= hardLimit else { throw .beyondSequenceSpace(lastSent) }
        guard soft >= 1, soft <= hardLimit else { throw .softLimitOutOfRange(soft) }
        self.extendedSequenceNumbers = extendedSequenceNumbers
        self.storedLastSent = lastSent
        self.softLimit = soft
    }

    /// The counter of a Child SA on the member that takes it over: the last replicated
    /// checkpoint plus `advance`, which must cover every number the failed member may have sent
    /// since. Throws ``SequenceCounterError/advanceBeyondLimit(lastSent:advance:)`` when that
    /// passes the hard limit: the Child SA must be rekeyed instead.
    public init(
        extendedSequenceNumbers: Bool,
        restoringFrom checkpoint: OutboundCounterCheckpoint,
        advance: UInt64,
        softLimit: UInt64? = nil
    ) throws(SequenceCounterError) {
        try self.init(
            extendedSequenceNumbers: extendedSequenceNumbers, lastSent: checkpoint.lastSent, softLimit: softLimit)
        try self.advance(by: advance)
    }

    /// Takes the next sequence number for an outgoing packet.
    @inlinable
    public mutating func next() throws(SequenceCounterError) -> OutboundSequenceNumber {
        guard lastSent < hardLimit else { throw .exhausted(lastSent: lastSent) }
        storedLastSent &+= 1
        return OutboundSequenceNumber(value: lastSent, rekeyDue: lastSent >= softLimit)
    }

    /// Skips `count` numbers, as a member taking over does past the last checkpoint.
    /// Throws, changing nothing, when the counter would pass its hard limit: rekey instead.
    public mutating func advance(by count: UInt64) throws(SequenceCounterError) {
        let (advanced, overflow) = lastSent.addingReportingOverflow(count)
        guard !overflow, advanced <= hardLimit else {
            throw .advanceBeyondLimit(lastSent: lastSent, advance: count)
        }
        storedLastSent = advanced
    }

    /// True once the soft limit has been reached.
    public var isRekeyDue: Bool { lastSent >= softLimit }

    /// How many more packets the Child SA can send before it must be replaced.
    public var remaining: UInt64 { hardLimit - lastSent }

    /// The value a member replicates so that another can continue this counter.
    public var checkpoint: OutboundCounterCheckpoint { OutboundCounterCheckpoint(lastSent: lastSent) }
}

/// One sequence number handed out by ``OutboundSequenceCounter/next()``.
public struct OutboundSequenceNumber: Sendable, Hashable {
    /// The full sequence number (the ICV covers all 64 bits with ESN).
    public let value: UInt64
    /// True when the counter has reached its soft limit: start a rekey of the Child SA.
    public let rekeyDue: Bool

    /// The 32 bits that go into the ESP header.
    @inlinable
    public var wire: UInt32 { UInt32(truncatingIfNeeded: value) }

    /// Creates a sequence number record.
    @inlinable
    public init(value: UInt64, rekeyDue: Bool) {
        self.value = value
        self.rekeyDue = rekeyDue
    }
}

/// What a member replicates of an outbound counter.
public struct OutboundCounterCheckpoint: Sendable, Hashable, Codable {
    /// The last sequence number the counter had handed out when the checkpoint was taken.
    public var lastSent: UInt64

    /// A checkpoint at `lastSent`.
    public init(lastSent: UInt64) { self.lastSent = lastSent }
}

/// Errors of ``OutboundSequenceCounter``. None of them changes the counter.
public enum SequenceCounterError: Error, Sendable, Hashable {
    /// Every number has been used; sending another packet would cycle the counter.
    case exhausted(lastSent: UInt64)
    /// The advance would pass the hard limit.
    case advanceBeyondLimit(lastSent: UInt64, advance: UInt64)
    /// A starting value above the hard limit (2^32 - 1 without ESN).
    case beyondSequenceSpace(UInt64)
    /// A soft limit of 0 or above the hard limit.
    case softLimitOutOfRange(UInt64)
}
