/// The peer's side of an RFC 6311 message-ID sync for one IKE SA (section 5.1): what a gateway
/// that is *not* a cluster does when a newly active cluster member asks it to agree on message
/// IDs. strongSwan implements this side; this package implements both.
///
/// Rules, from section 5.1:
/// - drop, silently, a request whose M1 (the member's next send ID) is not above the highest
///   value seen from the cluster, sync requests included (this stops replayed sync requests);
/// - answer M2 = max(M1, next request ID expected from the cluster) and
///   P2 = max(P1, next request ID this peer will send, counting its outstanding requests as
///   used), with the request's nonce, and adopt those values without waiting for outstanding
///   exchanges (section 9);
/// - apply a replay-counter delta, when present, to every Child SA of the IKE SA (section 5.2).
///
/// RFC 6311's non-normative Appendix A.2 and A.3 show answers to requests whose M1 is below
/// what the peer has seen; the normative rule above drops them, and so does this type (as
/// strongSwan does).
public struct MessageIDSyncPeer: Sendable, Hashable {
    /// The highest M1 of any sync request accepted so far.
    public private(set) var highestSyncM1: UInt32?

    /// A peer that has seen no sync request yet.
    public init() {}

    /// The outcome of a sync request.
    public enum Outcome: Sendable, Hashable {
        /// Drop the request silently; the reason is for the log.
        case drop(String)
        /// Send this response (in an INFORMATIONAL with Message ID 0) and adopt `windows`; move
        /// the outbound counters of every Child SA of the IKE SA by `replayCounterDelta`.
        case respond(MessageIDSyncNotification, windows: IKEMessageIDWindows, replayCounterDelta: UInt64?)
    }

    /// Processes a sync request against this peer's message-ID windows of the IKE SA.
    public mutating func process(
        _ request: MessageIDSyncNotification, replayCounter: ReplayCounterSyncNotification?, windows: IKEMessageIDWindows
    ) -> Outcome {
        let m1 = UInt64(request.expectedSendRequestID)
        let p1 = UInt64(request.expectedReceiveRequestID)
        let nextExpected = windows.responses.nextExpectedMessageID
        // The highest message ID seen from the cluster: its last request, or an earlier sync's M1.
        var highestSeen = highestSyncM1.map(UInt64.init)
        if nextExpected > 0 { highestSeen = max(highestSeen ?? 0, nextExpected - 1) }
        if let highestSeen, m1 <= highestSeen {
            return .drop("M1 \(m1) is not above \(highestSeen), the highest value seen from the cluster")
        }
        let m2 = max(m1, nextExpected)
        let p2 = max(p1, windows.requests.nextMessageID)
        guard m2 <= UInt64(UInt32.max), p2 <= UInt64(UInt32.max) else { return .drop("message IDs exhausted") }
        let adopted: IKEMessageIDWindows
        do {
            adopted = try IKEMessageIDWindows(
                resumingAt: p2, expecting: m2, peerWindowSize: windows.requests.peerWindowSize,
                localWindowSize: windows.responses.windowSize)
        } catch {
            return .drop("the agreed values do not form a valid window: \(error)")
        }
        highestSyncM1 = request.expectedSendRequestID
        return .respond(
            MessageIDSyncNotification(nonce: request.nonce, expectedSendRequestID: UInt32(p2), expectedReceiveRequestID: UInt32(m2)),
            windows: adopted, replayCounterDelta: replayCounter?.delta)
    }
}

/// The cluster member's side of an RFC 6311 message-ID sync for one IKE SA (sections 5.1, 7
/// and 11): at most one sync per IKE SA per failover, a fresh nonce, and only the response that
/// echoes it, once.
public struct MessageIDSyncInitiator: Sendable, Hashable {
    enum State: Sendable, Hashable {
        case idle
        case awaiting(MessageIDSyncNotification)
        case done
    }

    private var state: State = .idle

    /// A member that has not started a sync for this IKE SA in this failover.
    public init() {}

    /// Whether a response is awaited.
    public var isAwaitingResponse: Bool { if case .awaiting = state { true } else { false } }

    /// The request to send: M1 = the next request ID + at least the peer's window (above anything
    /// the failed member may have used), P1 = the next request ID expected from the peer. Throws
    /// when a sync was already started in this failover, or the IDs are exhausted.
    public mutating func start(windows: IKEMessageIDWindows, nonce: UInt32) throws(MessageIDSyncError) -> MessageIDSyncNotification {
        guard case .idle = state else { throw .alreadyStarted }
        let send = windows.requests.nextMessageID + UInt64(max(windows.requests.peerWindowSize, 1))
        let receive = windows.responses.nextExpectedMessageID
        guard send <= UInt64(UInt32.max), receive <= UInt64(UInt32.max) else { throw .messageIDsExhausted }
        let request = MessageIDSyncNotification(nonce: nonce, expectedSendRequestID: UInt32(send), expectedReceiveRequestID: UInt32(receive))
        state = .awaiting(request)
        return request
    }

    /// Takes a response. Returns the windows to adopt (next send = the peer's M2, next expected
    /// = the peer's P2), or throws, changing nothing, for a response that is not awaited or whose
    /// nonce differs (RFC 6311 section 11: replayed responses are discarded).
    public mutating func receive(
        _ response: MessageIDSyncNotification, windows: IKEMessageIDWindows
    ) throws(MessageIDSyncError) -> IKEMessageIDWindows {
        guard case .awaiting(let request) = state else { throw .unexpectedResponse }
        guard response.nonce == request.nonce else { throw .nonceMismatch }
        let nextSend = max(UInt64(response.expectedReceiveRequestID), UInt64(request.expectedSendRequestID))
        let nextExpected = max(UInt64(response.expectedSendRequestID), UInt64(request.expectedReceiveRequestID))
        do {
            let adopted = try IKEMessageIDWindows(
                resumingAt: nextSend, expecting: nextExpected, peerWindowSize: windows.requests.peerWindowSize,
                localWindowSize: windows.responses.windowSize)
            state = .done
            return adopted
        } catch {
            throw .messageIDsExhausted
        }
    }
}

/// Errors of the cluster side of a message-ID sync. None of them changes anything.
public enum MessageIDSyncError: Error, Sendable, Hashable {
    /// A sync was already started for this IKE SA in this failover (RFC 6311 section 7).
    case alreadyStarted
    /// No response is awaited (none was asked for, or one was already taken).
    case unexpectedResponse
    /// The response's nonce is not the request's.
    case nonceMismatch
    /// The message IDs do not fit 32 bits any more: delete and re-establish the IKE SA.
    case messageIDsExhausted
}
