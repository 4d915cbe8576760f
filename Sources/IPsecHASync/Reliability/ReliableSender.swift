import IPsecHACore

/// The sending half of the reliable stream to one peer: numbers reliable datagrams 1, 2, 3...,
/// keeps each until it is acknowledged, retransmits on negative acknowledgement or time-out,
/// and says when a peer asks for something never sent (the stream must be reset and a resync
/// follow). Everything unacknowledged is held: when the buffer is full nothing more is taken.
/// Sans-I/O: it returns what to send; sealing happens in ``SyncChannel``.
struct ReliableSender {
    struct Outstanding {
        let sequence: UInt64
        let payload: [UInt8]
        let streamReset: Bool
        let firstSent: Timestamp
        var lastSent: Timestamp
        var transmissions: Int
        var selectivelyAcknowledged = false
    }

    /// At most this many unacknowledged datagrams are held.
    let limit: Int
    private(set) var nextSequence: UInt64 = 1
    /// Everything at or below this was acknowledged.
    private(set) var cumulativeAcknowledged: UInt64 = 0
    /// Unacknowledged datagrams from `cumulativeAcknowledged + 1` on, in order (some may be
    /// selectively acknowledged already): `storage[head...]`. Acknowledged entries are dropped
    /// from the front by moving `head`, and the array is compacted once half of it is dead, so
    /// an acknowledgement costs what it removes, not the whole buffer.
    private var storage: [Outstanding] = []
    private var head = 0
    var outstanding: ArraySlice<Outstanding> { storage[head...] }
    private var resetPending = false
    /// Sequence numbers stream resets dropped unacknowledged, ascending: their tickets never
    /// become acknowledged (the resync that follows a reset carries the state instead).
    /// At most ``droppedRangeLimit``; beyond, the two oldest merge, which can only make an
    /// old ticket look dropped, never acknowledged.
    private var droppedRanges: [SequenceRange] = []
    static let droppedRangeLimit = 64

    init(limit: Int) { self.limit = max(limit, 1) }

    /// The highest sequence number sent so far (0 before the first).
    var highestSent: UInt64 { nextSequence - 1 }
    var hasRoom: Bool { storage.count - head < limit }
    var freeSlots: Int { limit - (storage.count - head) }

    /// Takes a reliable payload; nil when the buffer is full.
    mutating func enqueue(_ payload: [UInt8], now: Timestamp) -> Outstanding? {
        guard hasRoom else { return nil }
        let entry = Outstanding(
            sequence: nextSequence, payload: payload, streamReset: resetPending, firstSent: now, lastSent: now, transmissions: 1)
        resetPending = false
        storage.append(entry)
        nextSequence += 1
        return entry
    }

    /// Forgets everything unacknowledged; the next datagram restarts the receiver's stream.
    mutating func resetStream() {
        if nextSequence - 1 > cumulativeAcknowledged {
            droppedRanges.append(SequenceRange(cumulativeAcknowledged + 1, nextSequence - 1))
            if droppedRanges.count > Self.droppedRangeLimit {
                droppedRanges[1].lower = droppedRanges[0].lower
                droppedRanges.removeFirst()
            }
        }
        cumulativeAcknowledged = nextSequence - 1
        storage.removeAll()
        head = 0
        resetPending = true
    }

    /// Applies an acknowledgement. Values beyond what was sent are ignored. Returns a round-trip
    /// sample in nanoseconds: from the first transmission of the newest datagram it newly
    /// acknowledges cumulatively to `now`, when that datagram went out once only (Karn's rule:
    /// the acknowledgement of a retransmitted one may answer either copy). The newest waited
    /// least for a delayed acknowledgement.
    @discardableResult
    mutating func acknowledge(cumulative: UInt64, selective: [SequenceRange], now: Timestamp) -> UInt64? {
        let cumulative = min(cumulative, highestSent)
        var sample: UInt64?
        if cumulative > cumulativeAcknowledged {
            let covered = min(Int(cumulative - cumulativeAcknowledged), storage.count - head)
            if covered > 0, case let newest = storage[head + covered - 1], newest.transmissions == 1, newest.sequence == cumulative,
                now >= newest.firstSent
            {
                sample = now.nanoseconds - newest.firstSent.nanoseconds
            }
            head += covered
            cumulativeAcknowledged = cumulative
            if head == storage.count {
                storage.removeAll(keepingCapacity: true)
                head = 0
            } else if head > storage.count / 2 {
                storage.removeFirst(head)
                head = 0
            }
        }
        for range in selective {
            for index in indices(of: range) { storage[index].selectivelyAcknowledged = true }
        }
        return sample
    }

    /// The datagrams a negative acknowledgement asks for, still held and not selectively
    /// acknowledged.
    ///
    /// Numbers at or below the cumulative acknowledgement need nothing: they were acknowledged
    /// (the request is older than the acknowledgement that overtook it), or a stream reset
    /// dropped them and the datagram that tells the receiver so is still on its way (it can
    /// arrive after later ones). Numbers above the highest sent are ignored: a peer's receiver
    /// starts afresh with each incarnation of this member, so only a forger asks for them, and
    /// resetting the stream for it (as this once did) let one datagram start a bulk resync.
    mutating func negativeAcknowledge(_ ranges: [SequenceRange], now: Timestamp) -> [Outstanding] {
        var retransmit: [Outstanding] = []
        for range in ranges {
            for index in indices(of: range) where !storage[index].selectivelyAcknowledged {
                storage[index].lastSent = now
                storage[index].transmissions += 1
                retransmit.append(storage[index])
            }
        }
        return retransmit
    }

    /// Datagrams unacknowledged for `timeout` or longer, at most `maximum`, marked as resent now.
    mutating func timedOut(now: Timestamp, timeout: UInt64, maximum: Int) -> [Outstanding] {
        var due: [Outstanding] = []
        for index in head..<storage.count where due.count < maximum {
            let entry = storage[index]
            if !entry.selectivelyAcknowledged, now.nanoseconds >= entry.lastSent.nanoseconds &+ timeout {
                storage[index].lastSent = now
                storage[index].transmissions += 1
                due.append(storage[index])
            }
        }
        return due
    }

    /// Whether everything up to `sequence` has been acknowledged (cumulatively or selectively).
    /// False for a sequence number a stream reset dropped (``wasDropped(_:)``).
    func isAcknowledged(_ sequence: UInt64) -> Bool {
        if wasDropped(sequence) { return false }
        if sequence <= cumulativeAcknowledged { return true }
        guard let first = outstanding.first?.sequence, sequence >= first else { return false }
        return outstanding.prefix(Int(sequence - first) + 1).allSatisfy(\.selectivelyAcknowledged)
    }

    /// Whether a stream reset dropped `sequence` before it was acknowledged.
    func wasDropped(_ sequence: UInt64) -> Bool {
        var low = 0
        var high = droppedRanges.count
        while low < high {
            let middle = (low + high) / 2
            if droppedRanges[middle].upper < sequence { low = middle + 1 } else { high = middle }
        }
        return low < droppedRanges.count && droppedRanges[low].lower <= sequence
    }

    /// The storage indices of the entries of `range` that are still held.
    private func indices(of range: SequenceRange) -> Range<Int> {
        guard head < storage.count else { return 0..<0 }
        let first = storage[head].sequence
        let lower = max(range.lower, first)
        let upper = min(range.upper, first + UInt64(storage.count - head) - 1)
        guard lower <= upper else { return 0..<0 }
        return head + Int(lower - first)..<head + Int(upper - first + 1)
    }

    /// Every broken invariant, described (for the tests): the outstanding datagrams are exactly
    /// the numbers after the cumulative acknowledgement, in order, within the limit; the
    /// dropped ranges are ordered, apart, and all acknowledged-or-dropped.
    func invariantViolations() -> [String] {
        var violations: [String] = []
        if head > storage.count { violations.append("sender head \(head) past \(storage.count) entries") }
        let expected = nextSequence - 1 - min(cumulativeAcknowledged, nextSequence - 1)
        if UInt64(outstanding.count) != expected {
            violations.append("sender holds \(outstanding.count) datagrams, \(expected) are unacknowledged")
        }
        if outstanding.count > limit { violations.append("sender holds \(outstanding.count), above its limit \(limit)") }
        for (offset, entry) in outstanding.enumerated() where entry.sequence != cumulativeAcknowledged + 1 + UInt64(offset) {
            violations.append("sender entry \(offset) is \(entry.sequence), not \(cumulativeAcknowledged + 1 + UInt64(offset))")
            break
        }
        for (earlier, later) in zip(droppedRanges, droppedRanges.dropFirst()) where earlier.upper >= later.lower {
            violations.append("dropped ranges \(earlier) and \(later) overlap or are out of order")
        }
        if droppedRanges.count > Self.droppedRangeLimit || droppedRanges.contains(where: { $0.lower > $0.upper || $0.upper > cumulativeAcknowledged }) {
            violations.append("dropped ranges \(droppedRanges) beyond what was acknowledged (\(cumulativeAcknowledged)) or their limit")
        }
        return violations
    }
}

