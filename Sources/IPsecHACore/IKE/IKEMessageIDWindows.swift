/// Both message-ID windows of one IKE SA: the requests it sends and the requests it receives.
///
/// A rekeyed IKE SA starts again from a fresh value (both counters 0, both windows 1), as
/// RFC 7296 section 2.18 requires; the old SA keeps its own counters until it is deleted.
public struct IKEMessageIDWindows: Sendable, Hashable {
    /// The requests this end sends.
    public var requests: IKERequestWindow
    /// The requests this end receives.
    public var responses: IKEResponderWindow

    /// The windows of a new (or newly rekeyed) IKE SA.
    public init() {
        requests = IKERequestWindow()
        responses = IKEResponderWindow()
    }

    /// Rebuilds both windows from a replicated snapshot, validating it.
    public init(restoringFrom snapshot: IKEMessageIDSnapshot) throws(IKEMessageIDError) {
        requests = try IKERequestWindow(
            nextMessageID: snapshot.nextRequestID,
            peerWindowSize: snapshot.peerWindowSize,
            outstanding: snapshot.outstandingRequests)
        responses = try IKEResponderWindow(
            nextExpectedMessageID: snapshot.nextExpectedRequestID,
            windowSize: snapshot.localWindowSize,
            processedAhead: snapshot.requestsProcessedAhead,
            highestProcessed: snapshot.highestProcessedRequest)
    }

    /// Windows that resume at `nextRequestID` and expect `nextExpectedRequestID`, with nothing
    /// outstanding and nothing processed ahead, keeping the given window sizes: what both sides
    /// of an RFC 6311 message-ID sync adopt. Throws when the values do not fit a window.
    public init(
        resumingAt nextRequestID: UInt64, expecting nextExpectedRequestID: UInt64, peerWindowSize: UInt32,
        localWindowSize: UInt32
    ) throws(IKEMessageIDError) {
        try self.init(
            restoringFrom: IKEMessageIDSnapshot(
                nextRequestID: nextRequestID, peerWindowSize: peerWindowSize, outstandingRequests: [],
                nextExpectedRequestID: nextExpectedRequestID, localWindowSize: localWindowSize, requestsProcessedAhead: [],
                highestProcessedRequest: nextExpectedRequestID > 0
                    ? UInt32(truncatingIfNeeded: nextExpectedRequestID - 1) : nil))
    }

    /// The value a member replicates after each exchange.
    public var snapshot: IKEMessageIDSnapshot {
        IKEMessageIDSnapshot(
            nextRequestID: requests.nextMessageID,
            peerWindowSize: requests.peerWindowSize,
            outstandingRequests: requests.outstanding,
            nextExpectedRequestID: responses.nextExpectedMessageID,
            localWindowSize: responses.windowSize,
            requestsProcessedAhead: responses.processedAhead,
            highestProcessedRequest: responses.highestProcessed)
    }
}

/// The replicated form of ``IKEMessageIDWindows``: plain values, checked again on restore.
public struct IKEMessageIDSnapshot: Sendable, Hashable, Codable {
    /// See ``IKERequestWindow/nextMessageID``.
    public var nextRequestID: UInt64
    /// See ``IKERequestWindow/peerWindowSize``.
    public var peerWindowSize: UInt32
    /// See ``IKERequestWindow/outstanding``.
    public var outstandingRequests: [UInt32]
    /// See ``IKEResponderWindow/nextExpectedMessageID``.
    public var nextExpectedRequestID: UInt64
    /// See ``IKEResponderWindow/windowSize``.
    public var localWindowSize: UInt32
    /// See ``IKEResponderWindow/processedAhead``.
    public var requestsProcessedAhead: [UInt32]
    /// See ``IKEResponderWindow/highestProcessed``.
    public var highestProcessedRequest: UInt32?

    /// A snapshot from its parts; ``IKEMessageIDWindows/init(restoringFrom:)`` validates them.
    public init(
        nextRequestID: UInt64,
        peerWindowSize: UInt32,
        outstandingRequests: [UInt32],
        nextExpectedRequestID: UInt64,
        localWindowSize: UInt32,
        requestsProcessedAhead: [UInt32],
        highestProcessedRequest: UInt32?
    ) {
        self.nextRequestID = nextRequestID
        self.peerWindowSize = peerWindowSize
        self.outstandingRequests = outstandingRequests
        self.nextExpectedRequestID = nextExpectedRequestID
        self.localWindowSize = localWindowSize
        self.requestsProcessedAhead = requestsProcessedAhead
        self.highestProcessedRequest = highestProcessedRequest
    }
}

/// Errors of the IKE message-ID windows. None of them changes the window.
public enum IKEMessageIDError: Error, Sendable, Hashable {
    /// As many requests are outstanding as the window allows; wait for a response.
    case windowFull(outstanding: UInt32)
    /// Every message ID has been used; rekey or close the IKE SA (RFC 7296 section 2.2).
    case messageIDSpaceExhausted
    /// A response to a request that is not outstanding.
    case unexpectedResponse(UInt32)
    /// An attempt to record a request that ``IKEResponderWindow/classify(_:)`` does not call new.
    case requestNotNew(UInt32, IKERequestDisposition)
    /// A window size below the current one (or 0); windows only grow.
    case windowSizeDecrease(from: UInt32, to: UInt32)
    /// A local window size above ``IKEResponderWindow/maximumWindowSize``.
    case windowSizeTooLarge(UInt32)
    /// Replicated values that no real window could have produced.
    case inconsistentSnapshot(String)
}
