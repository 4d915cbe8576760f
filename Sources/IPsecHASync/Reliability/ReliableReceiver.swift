import IPsecHACore

/// The receiving half of the reliable stream from one peer: delivers records in sequence order,
/// holds a bounded number of datagrams that arrived early, and knows which ranges are missing,
/// from gaps in what arrived and from the peer's heartbeats (which carry the highest sequence
/// number sent, so a loss at the end of a burst is noticed at the next heartbeat).
struct ReliableReceiver {
    /// Reliable sequence numbers (received or announced) at or above this are refused: no
    /// sender reaches it (2^62 datagrams), and below it no arithmetic on them can overflow.
    static let sequenceCeiling: UInt64 = 1 << 62
    /// At most this many early datagrams are held; later ones are dropped and come again.
    let limit: Int
    /// Everything up to this was delivered.
    private(set) var delivered: UInt64 = 0
    /// Datagrams above `delivered + 1`, waiting for the gap below them.
    private(set) var held: [UInt64: [SyncRecord]] = [:]
    /// The sequence numbers of `held`, ascending: acknowledgements and negative acknowledgements
    /// read them in order for every datagram, and sorting a full hold each time cost more than
    /// the rest of the channel.
    private var heldOrder: [UInt64] = []
    /// The sequence numbers of the held datagrams, ascending.
    var heldInOrder: [UInt64] { heldOrder }
    /// The highest sequence number known to exist (received, or announced by a heartbeat).
    private(set) var highestKnown: UInt64 = 0
    /// Since when something has been missing, if it is.
    private(set) var gapSince: Timestamp?
    /// When the last negative acknowledgement went out.
    var lastNegativeAcknowledgement: Timestamp?

    init(limit: Int) { self.limit = max(limit, 1) }

    /// Takes a reliable datagram; returns the record lists now deliverable, in order.
    mutating func receive(sequence: UInt64, records: [SyncRecord], streamReset: Bool, now: Timestamp) -> [[SyncRecord]] {
        var ready: [[SyncRecord]] = []
        receive(sequence: sequence, records: records, streamReset: streamReset, now: now) { ready.append($0) }
        return ready
    }

    /// Takes a reliable datagram and hands `deliver` the record lists now deliverable, in
    /// order: the channel's way, without an array of them for each datagram (a heap
    /// allocation per datagram received).
    mutating func receive(
        sequence: UInt64, records: [SyncRecord], streamReset: Bool, now: Timestamp, deliver: ([SyncRecord]) -> Void
    ) {
        if streamReset, sequence > delivered {
            // The sender could no longer fill the gap below this datagram: give up on it (a
            // resync follows in the new stream).
            delivered = sequence - 1
            held = held.filter { $0.key >= sequence }
            heldOrder.removeAll { $0 < sequence }
        }
        highestKnown = max(highestKnown, sequence)
        guard sequence > delivered, held[sequence] == nil else { return }
        if sequence == delivered + 1 {
            deliver(records)
            delivered = sequence
            var consumed = 0
            while consumed < heldOrder.count, heldOrder[consumed] == delivered + 1, let next = held.removeValue(forKey: delivered + 1) {
                deliver(next)
                delivered += 1
                consumed += 1
            }
            heldOrder.removeFirst(consumed)
        } else if held.count < limit {
            held[sequence] = records
            heldOrder.insert(sequence, at: heldOrder.sortedPosition(of: sequence))
        }
        updateGap(now: now)
    }

    /// Takes the highest sequence number the peer says it sent.
    mutating func announce(highest: UInt64, now: Timestamp) {
        highestKnown = max(highestKnown, highest)
        updateGap(now: now)
    }

    /// Forgets the stream (the peer restarted).
    mutating func reset() {
        delivered = 0
        held.removeAll()
        heldOrder.removeAll()
        highestKnown = 0
        gapSince = nil
        lastNegativeAcknowledgement = nil
    }

    /// Whether sequence numbers are known to be missing.
    var hasGap: Bool { highestKnown > delivered }

    /// The missing ranges, at most `maximum` of them, lowest first.
    func missingRanges(maximum: Int = 32) -> [SequenceRange] {
        guard hasGap else { return [] }
        var ranges: [SequenceRange] = []
        var start = delivered + 1
        for run in heldRuns(maximum: maximum + 1) {
            if run.lower > start { ranges.append(SequenceRange(start, run.lower - 1)) }
            start = run.upper + 1
            if ranges.count == maximum { return ranges }
        }
        if start <= highestKnown { ranges.append(SequenceRange(start, highestKnown)) }
        return Array(ranges.prefix(maximum))
    }

    /// The acknowledgement to send: cumulative, plus held ranges above it.
    func acknowledgement(maximumRanges: Int = 32) -> SyncRecord {
        .acknowledgement(cumulative: delivered, selective: heldRuns(maximum: maximumRanges))
    }

    /// The first `maximum` runs of consecutive held sequence numbers, lowest first. Each run's
    /// end is found by binary search (in a run, values and positions advance together), so a
    /// hold of thousands in a few runs costs a few dozen reads, not thousands.
    private func heldRuns(maximum: Int) -> [SequenceRange] {
        var runs: [SequenceRange] = []
        var index = 0
        while index < heldOrder.count, runs.count < maximum {
            let first = heldOrder[index]
            var low = index
            var high = heldOrder.count - 1
            while low < high {
                let middle = (low + high + 1) / 2
                if heldOrder[middle] - first == UInt64(middle - index) { low = middle } else { high = middle - 1 }
            }
            runs.append(SequenceRange(first, heldOrder[low]))
            index = low + 1
        }
        return runs
    }

    private mutating func updateGap(now: Timestamp) {
        if hasGap {
            if gapSince == nil { gapSince = now }
        } else {
            gapSince = nil
            lastNegativeAcknowledgement = nil
        }
    }

    /// Every broken invariant, described (for the tests): the held datagrams and their ordered
    /// list agree, all above what was delivered and within the limit; the gap's start is known
    /// exactly while something is missing.
    func invariantViolations() -> [String] {
        var violations: [String] = []
        if Set(heldOrder) != Set(held.keys) || heldOrder.count != held.count { violations.append("receiver's held list disagrees with its hold") }
        if heldOrder != heldOrder.sorted() { violations.append("receiver's held list is out of order") }
        if heldOrder.contains(where: { $0 <= delivered + 1 }) { violations.append("receiver holds a datagram it could have delivered") }
        if held.count > limit { violations.append("receiver holds \(held.count), above its limit \(limit)") }
        if highestKnown < delivered || heldOrder.contains(where: { $0 > highestKnown }) {
            violations.append("receiver's highest known \(highestKnown) below what it holds or delivered (\(delivered))")
        }
        if (gapSince != nil) != hasGap { violations.append("receiver's gap start \(String(describing: gapSince)) with a gap: \(hasGap)") }
        return violations
    }
}

