import IPsecHACore
import Testing

@Suite("RFC 6311 message-ID sync")
struct MessageIDSyncTests {
    /// Windows whose next request ID is `send` and next expected request ID is `receive`.
    func windows(send: UInt64, receive: UInt64, window: UInt32 = 1) throws -> IKEMessageIDWindows {
        try IKEMessageIDWindows(
            restoringFrom: IKEMessageIDSnapshot(
                nextRequestID: send, peerWindowSize: window, outstandingRequests: [], nextExpectedRequestID: receive,
                localWindowSize: 1, requestsProcessedAhead: [], highestProcessedRequest: receive > 0 ? UInt32(receive - 1) : nil))
    }

    func request(_ send: UInt32, _ receive: UInt32, nonce: UInt32 = 7) -> MessageIDSyncNotification {
        MessageIDSyncNotification(nonce: nonce, expectedSendRequestID: send, expectedReceiveRequestID: receive)
    }

    /// RFC 6311 Appendix A.1: member (0, 5), peer (5, 0), response (5, 0).
    @Test func appendixA1() throws {
        var peer = MessageIDSyncPeer()
        guard case .respond(let response, let adopted, nil) = peer.process(request(0, 5), replayCounter: nil, windows: try windows(send: 5, receive: 0))
        else {
            Issue.record("A.1 must be answered")
            return
        }
        #expect(response == request(5, 0))
        #expect(adopted.requests.nextMessageID == 5 && adopted.responses.nextExpectedMessageID == 0)
    }

    /// A.2 and A.3 show answers to requests whose M1 is below what the peer has seen from the
    /// cluster; section 5.1's normative rule drops them, and so does the peer here.
    @Test(arguments: [(2, 3, 4, 5), (2, 5, 2, 4)] as [(UInt32, UInt32, UInt64, UInt64)])
    func appendixA2AndA3AreDroppedByTheNormativeRule(m1: UInt32, p1: UInt32, peerSend: UInt64, peerReceive: UInt64) throws {
        var peer = MessageIDSyncPeer()
        guard case .drop(let reason) = peer.process(request(m1, p1), replayCounter: nil, windows: try windows(send: peerSend, receive: peerReceive))
        else {
            Issue.record("must be dropped")
            return
        }
        #expect(reason.contains("highest value seen"))
    }

    /// The arithmetic of A.3 when M1 is acceptable: the answer takes the maximum of each pair.
    @Test func answerTakesTheMaximaAndPeerStopsWaiting() throws {
        var peer = MessageIDSyncPeer()
        var peerWindows = try windows(send: 2, receive: 4, window: 4)
        _ = try peerWindows.requests.nextRequestID()  // an outstanding request counts as used
        guard case .respond(let response, let adopted, let delta) = peer.process(
            request(9, 1), replayCounter: try ReplayCounterSyncNotification(delta: 500, extendedSequenceNumbers: false),
            windows: peerWindows)
        else {
            Issue.record("must be answered")
            return
        }
        #expect(response == request(3, 9))
        #expect(adopted.requests.outstanding.isEmpty)
        #expect(delta == 500)
        // The same request replayed, or an older M1, is dropped.
        if case .respond = peer.process(request(9, 1), replayCounter: nil, windows: adopted) { Issue.record("replay answered") }
    }

    @Test func clusterAndPeerAgreeAfterOneExchange() throws {
        let member = try windows(send: 10, receive: 20, window: 4)
        var initiator = MessageIDSyncInitiator()
        let sync = try initiator.start(windows: member, nonce: 0xABCD)
        #expect(sync == request(14, 20, nonce: 0xABCD))
        #expect(throws: MessageIDSyncError.alreadyStarted) { try initiator.start(windows: member, nonce: 1) }
        var peer = MessageIDSyncPeer()
        guard case .respond(let response, let peerWindows, _) = peer.process(sync, replayCounter: nil, windows: try windows(send: 23, receive: 12))
        else {
            Issue.record("must be answered")
            return
        }
        var forged = response
        forged.nonce ^= 1
        #expect(throws: MessageIDSyncError.nonceMismatch) { try initiator.receive(forged, windows: member) }
        let adopted = try initiator.receive(response, windows: member)
        #expect(adopted.requests.nextMessageID == peerWindows.responses.nextExpectedMessageID)
        #expect(adopted.responses.nextExpectedMessageID == peerWindows.requests.nextMessageID)
        #expect(adopted.requests.nextMessageID == 14 && adopted.responses.nextExpectedMessageID == 23)
        #expect(throws: MessageIDSyncError.unexpectedResponse) { try initiator.receive(response, windows: member) }
    }
}
