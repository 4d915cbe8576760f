/// The requests one end of an IKE SA receives from its peer (RFC 7296 sections 2.1 to 2.3).
///
/// Requests are numbered from 0. With the window size this end announced (1 until it sends
/// SET_WINDOW_SIZE), the peer may have that many requests in flight, so they may be processed
/// out of order. Use it in two phases: ``classify(_:)`` the message ID of an incoming request
/// (it changes nothing), and ``recordProcessed(_:)`` once the request was authenticated and
/// answered.
///
/// A request already processed is a retransmission as long as its response must still be kept,
/// that is until a request with an ID at least `ID + window size` has been processed; later
/// it is too old and must be ignored.
public struct IKEResponderWindow: Sendable, Hashable {
    /// The largest window this package announces, which bounds what it tracks.
    public static let maximumWindowSize: UInt32 = 4096

    /// The lowest message ID not yet processed; 2^32 once the last ID has been processed.
    public private(set) var nextExpectedMessageID: UInt64
    /// The window size this end announced to the peer (1 until SET_WINDOW_SIZE).
    public private(set) var windowSize: UInt32
    /// Requests processed out of order, above ``nextExpectedMessageID``, in ascending order.
    public private(set) var processedAhead: [UInt32]
    /// The highest message ID processed so far, if any.
    public private(set) var highestProcessed: UInt32?

    /// The state of a new IKE SA: expecting message ID 0, window 1.
    public init() {
        nextExpectedMessageID = 0
        windowSize = 1
        processedAhead = []
        highestProcessed = nil
    }

    /// Rebuilds the state from replicated values, checking that they could have come from a
    /// real window. Throws ``IKEMessageIDError/inconsistentSnapshot(_:)`` otherwise.
    public init(
        nextExpectedMessageID: UInt64,
        windowSize: UInt32,
        processedAhead: [UInt32],
        highestProcessed: UInt32?
    ) throws(IKEMessageIDError) {
        guard nextExpectedMessageID <= 1 << 32 else { throw .inconsistentSnapshot("next expected ID beyond 2^32") }
        guard (1...Self.maximumWindowSize).contains(windowSize) else {
            throw .inconsistentSnapshot("window size outside 1...\(Self.maximumWindowSize)")
        }
        for (earlier, later) in zip(processedAhead, processedAhead.dropFirst()) where earlier >= later {
            throw .inconsistentSnapshot("out-of-order processed IDs not strictly ascending")
        }
        if let lowest = processedAhead.first, let highest = processedAhead.last {
            guard UInt64(lowest) > nextExpectedMessageID,
                UInt64(highest) < nextExpectedMessageID + UInt64(windowSize)
            else { throw .inconsistentSnapshot("out-of-order processed IDs outside the window") }
        }
        let highestExpected: UInt64? =
            processedAhead.last.map { UInt64($0) }
            ?? (nextExpectedMessageID > 0 ? nextExpectedMessageID - 1 : nil)
        guard highestProcessed.map({ UInt64($0) }) == highestExpected else {
            throw .inconsistentSnapshot("highest processed ID does not match the window")
        }
        self.nextExpectedMessageID = nextExpectedMessageID
        self.windowSize = windowSize
        self.processedAhead = processedAhead
        self.highestProcessed = highestProcessed
    }

    /// What to do with an incoming request carrying `messageID`. Changes nothing.
    public func classify(_ messageID: UInt32) -> IKERequestDisposition {
        let id = UInt64(messageID)
        if id >= nextExpectedMessageID && !processedAhead.contains(messageID) {
            return id < nextExpectedMessageID + UInt64(windowSize) ? .new : .outsideWindow
        }
        // Processed already: the response is kept until a request `windowSize` IDs later.
        if let highest = highestProcessed, UInt64(highest) >= id + UInt64(windowSize) {
            return .tooOld
        }
        return .retransmission
    }

    /// Records that request `messageID` was authenticated and answered. Throws
    /// ``IKEMessageIDError/requestNotNew(_:_:)``, changing nothing, unless ``classify(_:)``
    /// says ``IKERequestDisposition/new``.
    public mutating func recordProcessed(_ messageID: UInt32) throws(IKEMessageIDError) {
        let disposition = classify(messageID)
        guard disposition == .new else { throw .requestNotNew(messageID, disposition) }
        if UInt64(messageID) == nextExpectedMessageID {
            nextExpectedMessageID += 1
            while let first = processedAhead.first, UInt64(first) == nextExpectedMessageID {
                processedAhead.removeFirst()
                nextExpectedMessageID += 1
            }
        } else {
            let index = processedAhead.firstIndex { $0 > messageID } ?? processedAhead.endIndex
            processedAhead.insert(messageID, at: index)
        }
        highestProcessed = max(highestProcessed ?? messageID, messageID)
    }

    /// Records the window size this end announced with SET_WINDOW_SIZE. It can only grow, up to
    /// ``maximumWindowSize``; anything else is refused and nothing changes.
    public mutating func announceWindowSize(_ size: UInt32) throws(IKEMessageIDError) {
        guard size >= windowSize else { throw .windowSizeDecrease(from: windowSize, to: size) }
        guard size <= Self.maximumWindowSize else { throw .windowSizeTooLarge(size) }
        windowSize = size
    }
}

/// How an IKE endpoint must treat an incoming request, by its message ID.
public enum IKERequestDisposition: Sendable, Hashable {
    /// Not processed yet and inside the window: process it.
    case new
    /// Processed already, response still kept: send the same response again.
    case retransmission
    /// Processed long ago, response no longer kept: ignore it (RFC 7296 section 2.4).
    case tooOld
    /// Beyond the window: drop it (optionally answer INVALID_MESSAGE_ID, rate-limited).
    case outsideWindow
}
