/// The requests one end of an IKE SA sends, and the responses it still waits for
/// (RFC 7296 sections 2.1 to 2.3).
///
/// Request message IDs start at 0 (IKE_SA_INIT) and grow by one per exchange. With the peer's
/// window size `N` (1 until it sends SET_WINDOW_SIZE), request `X` may only be sent once the
/// responses to every request up to `X - N` have arrived. The last message ID is 2^32 - 1;
/// after it the IKE SA must be rekeyed or closed, and ``nextRequestID()`` throws.
///
/// However large a window the peer announces, at most ``maximumOutstanding`` requests are
/// tracked at once (sending fewer than the peer allows is always permitted), so memory stays
/// bounded.
public struct IKERequestWindow: Sendable, Hashable {
    /// How many requests this package keeps outstanding at most, whatever the peer allows.
    public static let maximumOutstanding: UInt32 = 4096

    /// The message ID the next request will carry; 2^32 once every ID has been used.
    public private(set) var nextMessageID: UInt64
    /// The window size the peer announced with SET_WINDOW_SIZE (1 until then).
    public private(set) var peerWindowSize: UInt32
    /// Requests sent whose responses have not arrived, in ascending order.
    public private(set) var outstanding: [UInt32]

    /// The state of a new IKE SA: next ID 0, window 1, nothing outstanding.
    public init() {
        nextMessageID = 0
        peerWindowSize = 1
        outstanding = []
    }

    /// Rebuilds the state from replicated values, checking that they could have come from a
    /// real window. Throws ``IKEMessageIDError/inconsistentSnapshot(_:)`` otherwise.
    public init(nextMessageID: UInt64, peerWindowSize: UInt32, outstanding: [UInt32]) throws(IKEMessageIDError) {
        guard nextMessageID <= 1 << 32 else { throw .inconsistentSnapshot("next request ID beyond 2^32") }
        guard peerWindowSize >= 1 else { throw .inconsistentSnapshot("peer window size 0") }
        guard outstanding.count <= Int(min(peerWindowSize, Self.maximumOutstanding)) else {
            throw .inconsistentSnapshot("more outstanding requests than the window allows")
        }
        for (earlier, later) in zip(outstanding, outstanding.dropFirst()) where earlier >= later {
            throw .inconsistentSnapshot("outstanding request IDs not strictly ascending")
        }
        if let lowest = outstanding.first, let highest = outstanding.last {
            guard UInt64(highest) < nextMessageID else {
                throw .inconsistentSnapshot("outstanding request at or above the next request ID")
            }
            guard UInt64(highest) - UInt64(lowest) < UInt64(peerWindowSize) else {
                throw .inconsistentSnapshot("outstanding requests span more than the window")
            }
        }
        self.nextMessageID = nextMessageID
        self.peerWindowSize = peerWindowSize
        self.outstanding = outstanding
    }

    /// How many requests may be outstanding at once: the peer's window, capped by
    /// ``maximumOutstanding``.
    public var effectiveWindowSize: UInt32 { min(peerWindowSize, Self.maximumOutstanding) }

    /// True when a new request may be sent now.
    public var canSendRequest: Bool { blockingReason == nil }

    /// Takes the message ID for a new request and records the request as outstanding.
    /// Throws, changing nothing, when the window is full or the ID space is used up.
    public mutating func nextRequestID() throws(IKEMessageIDError) -> UInt32 {
        if let reason = blockingReason { throw reason }
        let id = UInt32(nextMessageID)
        outstanding.append(id)
        nextMessageID += 1
        return id
    }

    /// True when `messageID` names a request still waiting for its response: check this before
    /// spending work on a message that claims to be a response.
    public func isAwaitingResponse(_ messageID: UInt32) -> Bool {
        outstanding.contains(messageID)
    }

    /// Records the (authenticated) response to request `messageID`. Throws
    /// ``IKEMessageIDError/unexpectedResponse(_:)`` for a response to a request that is not
    /// outstanding (a duplicate, or one never sent); nothing changes then.
    public mutating func receiveResponse(_ messageID: UInt32) throws(IKEMessageIDError) {
        guard let index = outstanding.firstIndex(of: messageID) else { throw .unexpectedResponse(messageID) }
        outstanding.remove(at: index)
    }

    /// Applies the peer's SET_WINDOW_SIZE. The window can only grow (RFC 7296 section 2.3 leaves
    /// shrinking undefined), so a smaller value or 0 is refused and the window stays as it is.
    public mutating func updatePeerWindowSize(_ size: UInt32) throws(IKEMessageIDError) {
        guard size >= peerWindowSize else { throw .windowSizeDecrease(from: peerWindowSize, to: size) }
        peerWindowSize = size
    }

    private var blockingReason: IKEMessageIDError? {
        if nextMessageID > UInt64(UInt32.max) { return .messageIDSpaceExhausted }
        if let lowest = outstanding.first, nextMessageID >= UInt64(lowest) + UInt64(effectiveWindowSize) {
            return .windowFull(outstanding: UInt32(outstanding.count))
        }
        return nil
    }
}
