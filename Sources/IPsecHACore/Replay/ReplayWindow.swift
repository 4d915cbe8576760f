/// An inbound ESP/AH anti-replay window (RFC 4303 section 3.4.3 and Appendix A), laid out as the
/// bit ring of RFC 6479 so that a check and a commit cost O(1) whatever the window size.
///
/// Use it in two phases, as RFC 4303 requires:
/// 1. ``check(wire:)`` the 32-bit sequence number from the packet header, before the integrity
///    check. It infers the full 64-bit number (with Extended Sequence Numbers, by Appendix A2.2)
///    and says whether the packet may be new. It changes nothing.
/// 2. After the ICV verified (with ESN, over the inferred high-order bits), ``commit(_:)`` the
///    inferred number. Only then does the window move.
///
/// Without ESN, sequence number 0 is never valid (the first packet carries 1) and is stale.
/// With ESN, in Appendix A2.2's case B while the high-order half of the window top is still 0,
/// the RFC would infer `Seqh = Th - 1 = -1`; this window keeps `Seqh = 0` instead, as DPDK does.
///
/// The window's size may be any value from ``minimumSize`` to ``maximumSize``; the ring holds
/// one spare block beyond it (RFC 6479's redundant bits), so memory is about `size / 8 + 16`
/// bytes. Copies share storage until one of them commits.
public struct ReplayWindow: Sendable {
    /// RFC 4303: a receiver MUST support at least 32 packets.
    public static let minimumSize: UInt32 = 32
    /// The bound this package keeps memory to: 2^20 packets, 128 KiB of ring per window.
    /// (RFC 4303 Appendix A2 allows up to 2^31.)
    public static let maximumSize: UInt32 = 1 << 20

    /// `W`: how many sequence numbers, ending at the window top, are remembered.
    @inlinable public var size: UInt32 { core.size }
    /// Whether the Child SA negotiated Extended Sequence Numbers (64-bit counters, 32 on the wire).
    @inlinable public var extendedSequenceNumbers: Bool { core.extendedSequenceNumbers }
    /// `T`: the highest sequence number committed so far (0 before the first packet).
    @inlinable public var top: UInt64 { core.top }

    @usableFromInline var core: ReplayWindowCore
    @usableFromInline var ring: ReplayBlockRing

    /// A fresh window for a new Child SA: nothing seen, top 0.
    public init(size: UInt32 = 64, extendedSequenceNumbers: Bool) throws(ReplayWindowError) {
        guard size >= Self.minimumSize, size <= Self.maximumSize else {
            throw .windowSizeOutOfRange(size)
        }
        core = ReplayWindowCore(top: 0, size: size, extendedSequenceNumbers: extendedSequenceNumbers)
        ring = ReplayBlockRing(blockCount: Self.blockCount(size: size))
    }

    /// Rebuilds the window of a Child SA on the member that takes it over, from the last
    /// checkpoint the failed member replicated.
    ///
    /// - ``ReplayWindowRestorePolicy/conservative(advance:)`` and
    ///   ``ReplayWindowRestorePolicy/replayCounterSync(delta:)`` move the top to
    ///   `checkpoint + advance` and count every number up to it as seen, so no packet the old
    ///   member may have accepted after its last checkpoint can be accepted again.
    /// - ``ReplayWindowRestorePolicy/permissiveUnsafe`` puts the top at the checkpoint with
    ///   nothing below it seen: packets inside the window can be replayed once each.
    ///
    /// Throws ``ReplayWindowError/restoredTopBeyondSequenceSpace(checkpoint:advance:)`` when
    /// `checkpoint + advance` does not fit the sequence space (32 bits without ESN): the peer
    /// cannot send above it, so the Child SA must be rekeyed instead.
    public init(
        size: UInt32 = 64,
        extendedSequenceNumbers: Bool,
        restoringFrom checkpoint: ReplayWindowCheckpoint,
        policy: ReplayWindowRestorePolicy
    ) throws(ReplayWindowError) {
        try self.init(size: size, extendedSequenceNumbers: extendedSequenceNumbers)
        let limit = extendedSequenceNumbers ? UInt64.max : UInt64(UInt32.max)
        let base = checkpoint.highestAuthenticatedSequenceNumber
        let advance = policy.advance
        let (restoredTop, overflow) = base.addingReportingOverflow(advance)
        guard !overflow, restoredTop <= limit else {
            throw .restoredTopBeyondSequenceSpace(checkpoint: base, advance: advance)
        }
        core.top = restoredTop
        if policy.marksSkippedNumbersSeen, restoredTop > 0 {
            ring.markAllSeen(upTo: restoredTop)
        } else if restoredTop > 0 {
            // The checkpoint itself was accepted by the failed member; every policy keeps it seen.
            ring.makeUnique()
            _ = ring.words.insert(restoredTop)
        }
    }

    /// A standby's passive copy of a window at a replicated checkpoint: the top, with nothing
    /// behind it of its own. Its ring is one all-zero ring shared by every passive copy of the
    /// same size (until something writes to it, which copies it first), so a standby that
    /// holds a million Child SAs holds no ring for them; a takeover rebuilds the window from
    /// ``checkpoint`` with ``init(size:extendedSequenceNumbers:restoringFrom:policy:)``.
    /// Throws for a size out of range or a top beyond the sequence space.
    public init(
        passiveCopyAt checkpoint: ReplayWindowCheckpoint, size: UInt32, extendedSequenceNumbers: Bool
    ) throws(ReplayWindowError) {
        guard size >= Self.minimumSize, size <= Self.maximumSize else { throw .windowSizeOutOfRange(size) }
        let top = checkpoint.highestAuthenticatedSequenceNumber
        guard extendedSequenceNumbers || top <= UInt64(UInt32.max) else {
            throw .restoredTopBeyondSequenceSpace(checkpoint: top, advance: 0)
        }
        core = ReplayWindowCore(top: top, size: size, extendedSequenceNumbers: extendedSequenceNumbers)
        ring = ReplayBlockRing(sharingZeroBlocks: Self.blockCount(size: size))
    }

    /// One spare block beyond ceil(W / 64) blocks, rounded up to a power of two so that a block
    /// index is a mask, not a division.
    static func blockCount(size: UInt32) -> Int {
        let needed = (Int(size) + 63) / 64 + 1
        return 1 << (Int.bitWidth - (needed - 1).leadingZeroBitCount)
    }

    /// Moves a standby's passive copy to a replicated checkpoint: only the top changes. The
    /// ring is not touched (no write, no copy, not even a read: on a standby holding hundreds of
    /// thousands of windows that is most of the cost of a checkpoint), so what it says below the
    /// top is unspecified. A passive copy must not check traffic: a takeover rebuilds the window
    /// from its ``checkpoint`` with ``init(size:extendedSequenceNumbers:restoringFrom:policy:)``,
    /// as the takeover plan says. Throws, changing nothing, when the checkpoint does not fit
    /// the sequence space.
    public mutating func adoptPassively(_ checkpoint: ReplayWindowCheckpoint) throws(ReplayWindowError) {
        let newTop = checkpoint.highestAuthenticatedSequenceNumber
        guard extendedSequenceNumbers || newTop <= UInt64(UInt32.max) else {
            throw .restoredTopBeyondSequenceSpace(checkpoint: newTop, advance: 0)
        }
        core.top = newTop
    }

    /// The value a member replicates so that another can rebuild this window.
    public var checkpoint: ReplayWindowCheckpoint {
        ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: top)
    }

    /// Phase one: the verdict on the 32-bit sequence number read from a packet, before its
    /// integrity check. Changes nothing.
    @inlinable
    public func check(wire: UInt32) -> ReplayCheckResult {
        core.check(wire: wire, in: ring.words)
    }

    /// The verdict on a full sequence number, as ``check(wire:)`` gives it after inference.
    @inlinable
    public func classify(_ sequenceNumber: UInt64) -> ReplayCheckResult {
        core.classify(sequenceNumber, in: ring.words)
    }

    /// Phase two: records `sequenceNumber` (as inferred by ``check(wire:)``) once the packet's
    /// integrity check passed, moving the window when it is above the top.
    ///
    /// The verdict is taken again, since another packet may have been committed since the
    /// check; on any error nothing changes. Each call first makes sure this value does not share
    /// its ring with a copy (a reference-count check of a few nanoseconds); a data plane that
    /// handles packets in bursts saves it with ``withExclusiveAccess(_:)``.
    @inlinable
    public mutating func commit(_ sequenceNumber: UInt64) throws(ReplayWindowRejection) {
        ring.makeUnique()
        try core.commit(sequenceNumber, in: ring.words)
    }

    /// Runs `body` with exclusive access to the window's state, for a burst of packets: the
    /// copy-on-write check happens once here instead of once per commit, and the access
    /// touches no reference count. The access cannot outlive `body`.
    @inlinable
    public mutating func withExclusiveAccess<Result, Failure: Error>(
        _ body: (inout ReplayWindowAccess) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        ring.makeUnique()
        var access = ReplayWindowAccess(core: core, words: ring.words)
        defer { core = access.core }
        return try body(&access)
    }

    /// How many sequence numbers the window currently remembers as seen (including bits the
    /// ring keeps just below the window); for tests and diagnostics, O(size).
    public var rememberedCount: Int { ring.populationCount }
}

/// Exclusive access to a ``ReplayWindow`` for a burst of packets, from
/// ``ReplayWindow/withExclusiveAccess(_:)``: the same two phases, with no reference counting
/// and no copy-on-write check per packet.
public struct ReplayWindowAccess: ~Copyable {
    @usableFromInline var core: ReplayWindowCore
    @usableFromInline let words: ReplayRingWords

    @inlinable
    init(core: ReplayWindowCore, words: ReplayRingWords) {
        self.core = core
        self.words = words
    }

    /// `T`: the highest sequence number committed so far.
    @inlinable public var top: UInt64 { core.top }

    /// As ``ReplayWindow/check(wire:)``.
    @inlinable
    public func check(wire: UInt32) -> ReplayCheckResult {
        core.check(wire: wire, in: words)
    }

    /// As ``ReplayWindow/commit(_:)``.
    @inlinable
    public mutating func commit(_ sequenceNumber: UInt64) throws(ReplayWindowRejection) {
        try core.commit(sequenceNumber, in: words)
    }
}

/// The window's position and rules, apart from its words: RFC 4303 Appendix A with the bit
/// layout of RFC 6479.
@usableFromInline
struct ReplayWindowCore: Sendable {
    @usableFromInline var top: UInt64
    @usableFromInline let size: UInt32
    @usableFromInline let extendedSequenceNumbers: Bool

    @inlinable
    init(top: UInt64, size: UInt32, extendedSequenceNumbers: Bool) {
        self.top = top
        self.size = size
        self.extendedSequenceNumbers = extendedSequenceNumbers
    }

    @inlinable @inline(__always)
    func check(wire: UInt32, in words: ReplayRingWords) -> ReplayCheckResult {
        // Laid out with the 32-bit path straight: measured against the C ring of
        // Benchmarks/reference-c (`make bench-replay`, paired runs), W=64 with duplicates went
        // from 1.2-1.3 times C's time to about 1.0; ESN windows from about 0.6 of C's to 0.75-0.9.
        if _slowPath(extendedSequenceNumbers) {
            return classify(ExtendedSequenceNumber.infer(wire: wire, top: top, windowSize: size), in: words)
        }
        return classify(UInt64(wire), in: words)
    }

    @inlinable @inline(__always)
    func classify(_ sequenceNumber: UInt64, in words: ReplayRingWords) -> ReplayCheckResult {
        if sequenceNumber > top { return .fresh(sequenceNumber) }
        // The top is always marked seen (a restore marks it too), so a duplicate of the newest
        // packet, the commonest replay, needs no bitmap read.
        if sequenceNumber == top { return sequenceNumber == 0 ? .stale(0) : .replayed(sequenceNumber) }
        if sequenceNumber == 0 || top &- sequenceNumber >= UInt64(size) {
            return .stale(sequenceNumber)
        }
        return words.contains(sequenceNumber) ? .replayed(sequenceNumber) : .fresh(sequenceNumber)
    }

    /// `words` must not be shared with another window.
    @inlinable @inline(__always)
    mutating func commit(_ sequenceNumber: UInt64, in words: ReplayRingWords) throws(ReplayWindowRejection) {
        if sequenceNumber > top {
            if _slowPath(sequenceNumber &>> 32 != 0) {
                guard extendedSequenceNumbers else { throw .beyondSequenceSpace }
            }
            // In order, a new block starts once every 64 packets.
            if _slowPath((sequenceNumber ^ top) > 63) {
                words.clearBlocks(after: top &>> 6, through: sequenceNumber &>> 6)
            }
            top = sequenceNumber
            words.insertAboveTop(sequenceNumber)
            return
        }
        if sequenceNumber == 0 || top &- sequenceNumber >= UInt64(size) { throw .stale }
        if !words.insert(sequenceNumber) { throw .replayed }
    }
}

/// What ``ReplayWindow/check(wire:)`` concludes about a packet, with the full 64-bit sequence
/// number it inferred (equal to the wire value without ESN).
public enum ReplayCheckResult: Sendable, Hashable {
    /// Above the top, or inside the window and not seen: verify the ICV, then commit.
    case fresh(UInt64)
    /// Inside the window and already seen: drop (RFC 4303 says audit it).
    case replayed(UInt64)
    /// Below the window, or 0: drop.
    case stale(UInt64)

    /// The full sequence number the verdict is about.
    @inlinable
    public var sequenceNumber: UInt64 {
        switch self {
        case .fresh(let value), .replayed(let value), .stale(let value): value
        }
    }
}

/// Why ``ReplayWindow/commit(_:)`` refused a sequence number. Nothing changed.
public enum ReplayWindowRejection: Error, Sendable, Hashable {
    /// Inside the window and already seen.
    case replayed
    /// Below the window, or 0.
    case stale
    /// Above 2^32 - 1 on a window without ESN: no such packet can exist.
    case beyondSequenceSpace
}

/// Errors creating or restoring a ``ReplayWindow``.
public enum ReplayWindowError: Error, Sendable, Hashable {
    /// The size is outside ``ReplayWindow/minimumSize``...``ReplayWindow/maximumSize``.
    case windowSizeOutOfRange(UInt32)
    /// The restored top would leave the sequence space; the Child SA must be rekeyed.
    case restoredTopBeyondSequenceSpace(checkpoint: UInt64, advance: UInt64)
}

/// What a member replicates of an inbound window: its top. The bitmap below the top is not
/// replicated; a restore policy decides how to treat it.
public struct ReplayWindowCheckpoint: Sendable, Hashable, Codable {
    /// The highest sequence number the window had committed when the checkpoint was taken.
    public var highestAuthenticatedSequenceNumber: UInt64

    /// A checkpoint at `highestAuthenticatedSequenceNumber`.
    public init(highestAuthenticatedSequenceNumber: UInt64) {
        self.highestAuthenticatedSequenceNumber = highestAuthenticatedSequenceNumber
    }
}

/// How a member that takes over a Child SA rebuilds its inbound replay window from a checkpoint.
public enum ReplayWindowRestorePolicy: Sendable, Hashable {
    /// Count everything up to `checkpoint + advance` as seen. Safe without the peer's help;
    /// legitimate packets numbered up to that top are dropped until the peer's counter passes it.
    case conservative(advance: UInt64)
    /// The member asks the peer (RFC 6311 IPSEC_REPLAY_COUNTER_SYNC) to raise its outbound
    /// counters by `delta`, and counts everything up to `checkpoint + delta` as seen.
    case replayCounterSync(delta: UInt64)
    /// Resume at the checkpoint with nothing below it seen. **Unsafe**: any packet the failed
    /// member accepted inside the window, or above the checkpoint, can be replayed once.
    case permissiveUnsafe

    /// How far the top moves beyond the checkpoint.
    public var advance: UInt64 {
        switch self {
        case .conservative(let advance): advance
        case .replayCounterSync(let delta): delta
        case .permissiveUnsafe: 0
        }
    }

    var marksSkippedNumbersSeen: Bool {
        if case .permissiveUnsafe = self { return false }
        return true
    }
}
