import IPsecHACore
import Testing

@Suite("IKE message-ID windows (RFC 7296 2.1-2.3)")
struct IKEMessageIDWindowTests {
    @Test func windowOfOneWaitsForEachResponse() throws {
        var requests = IKERequestWindow()
        #expect(try requests.nextRequestID() == 0)
        #expect(!requests.canSendRequest)
        #expect(throws: IKEMessageIDError.windowFull(outstanding: 1)) { try requests.nextRequestID() }
        #expect(requests.isAwaitingResponse(0))
        try requests.receiveResponse(0)
        #expect(try requests.nextRequestID() == 1)
        #expect(throws: IKEMessageIDError.unexpectedResponse(0)) { try requests.receiveResponse(0) }
        #expect(throws: IKEMessageIDError.unexpectedResponse(7)) { try requests.receiveResponse(7) }
        #expect(requests.outstanding == [1])
    }

    @Test func largerWindowIsBoundedByTheOldestOutstandingRequest() throws {
        var requests = IKERequestWindow()
        try requests.updatePeerWindowSize(3)
        #expect(try requests.nextRequestID() == 0)
        #expect(try requests.nextRequestID() == 1)
        #expect(try requests.nextRequestID() == 2)
        #expect(throws: IKEMessageIDError.windowFull(outstanding: 3)) { try requests.nextRequestID() }
        // Responses out of order: 1 and 2 arrive, 0 is still missing, so 3 = 0 + 3 must wait.
        try requests.receiveResponse(2)
        try requests.receiveResponse(1)
        #expect(!requests.canSendRequest)
        try requests.receiveResponse(0)
        #expect(try requests.nextRequestID() == 3)
        #expect(try requests.nextRequestID() == 4)
        #expect(try requests.nextRequestID() == 5)
        #expect(requests.outstanding == [3, 4, 5])
    }

    @Test func peerWindowOnlyGrows() throws {
        var requests = IKERequestWindow()
        try requests.updatePeerWindowSize(5)
        #expect(throws: IKEMessageIDError.windowSizeDecrease(from: 5, to: 4)) { try requests.updatePeerWindowSize(4) }
        #expect(throws: IKEMessageIDError.windowSizeDecrease(from: 5, to: 0)) { try requests.updatePeerWindowSize(0) }
        #expect(requests.peerWindowSize == 5)
        try requests.updatePeerWindowSize(.max)
        #expect(requests.effectiveWindowSize == IKERequestWindow.maximumOutstanding)
    }

    @Test func messageIDSpaceEndsAt2To32Minus1() throws {
        var requests = try IKERequestWindow(nextMessageID: 0xFFFF_FFFF, peerWindowSize: 1, outstanding: [])
        #expect(try requests.nextRequestID() == 0xFFFF_FFFF)
        try requests.receiveResponse(0xFFFF_FFFF)
        #expect(throws: IKEMessageIDError.messageIDSpaceExhausted) { try requests.nextRequestID() }
    }

    @Test func responderRecognisesNewRetransmittedOldAndOutOfWindowRequests() throws {
        var responses = IKEResponderWindow()
        #expect(responses.classify(0) == .new)
        #expect(responses.classify(1) == .outsideWindow)
        try responses.recordProcessed(0)
        #expect(responses.classify(0) == .retransmission)
        #expect(throws: IKEMessageIDError.requestNotNew(0, .retransmission)) { try responses.recordProcessed(0) }
        try responses.recordProcessed(1)
        // Window 1: once request 1 is processed, the response to 0 may be forgotten.
        #expect(responses.classify(0) == .tooOld)
        #expect(responses.classify(1) == .retransmission)
        #expect(responses.classify(2) == .new)
        #expect(responses.classify(3) == .outsideWindow)
        #expect(throws: IKEMessageIDError.requestNotNew(3, .outsideWindow)) { try responses.recordProcessed(3) }
        #expect(responses.nextExpectedMessageID == 2)
    }

    @Test func responderWithWindowAboveOneProcessesOutOfOrder() throws {
        var responses = IKEResponderWindow()
        try responses.announceWindowSize(4)
        #expect(throws: IKEMessageIDError.windowSizeDecrease(from: 4, to: 2)) { try responses.announceWindowSize(2) }
        #expect(throws: IKEMessageIDError.windowSizeTooLarge(5_000)) { try responses.announceWindowSize(5_000) }
        try responses.recordProcessed(2)
        try responses.recordProcessed(3)
        #expect(responses.classify(4) == .outsideWindow)
        #expect(responses.classify(0) == .new)
        #expect(responses.classify(3) == .retransmission)
        try responses.recordProcessed(0)
        #expect(responses.nextExpectedMessageID == 1)
        #expect(responses.processedAhead == [2, 3])
        try responses.recordProcessed(1)
        #expect(responses.nextExpectedMessageID == 4)
        #expect(responses.processedAhead.isEmpty)
        #expect(responses.highestProcessed == 3)
        #expect(responses.classify(0) == .retransmission)
        try responses.recordProcessed(4)
        #expect(responses.classify(0) == .tooOld)
        #expect(responses.classify(1) == .retransmission)
        #expect(responses.classify(9) == .outsideWindow)
        #expect(responses.classify(8) == .new)
    }

    @Test func lastMessageIDCanBeProcessedAndNothingAfter() throws {
        var responses = try IKEResponderWindow(
            nextExpectedMessageID: 0xFFFF_FFFF, windowSize: 1, processedAhead: [], highestProcessed: 0xFFFF_FFFE)
        try responses.recordProcessed(0xFFFF_FFFF)
        #expect(responses.nextExpectedMessageID == 1 << 32)
        #expect(responses.classify(0xFFFF_FFFF) == .retransmission)
        #expect(responses.classify(0) == .tooOld)
    }

    @Test func snapshotRoundTripsAndRekeyStartsOver() throws {
        var windows = IKEMessageIDWindows()
        try windows.requests.updatePeerWindowSize(4)
        try windows.responses.announceWindowSize(4)
        for _ in 0..<4 { _ = try windows.requests.nextRequestID() }
        #expect(throws: IKEMessageIDError.windowFull(outstanding: 4)) { try windows.requests.nextRequestID() }
        try windows.requests.receiveResponse(0)
        try windows.requests.receiveResponse(2)
        try windows.responses.recordProcessed(0)
        try windows.responses.recordProcessed(2)
        let snapshot = windows.snapshot
        #expect(snapshot.outstandingRequests == [1, 3])
        #expect(snapshot.nextRequestID == 4)
        #expect(snapshot.requestsProcessedAhead == [2])
        let restored = try IKEMessageIDWindows(restoringFrom: snapshot)
        #expect(restored == windows)
        let rekeyed = IKEMessageIDWindows()
        #expect(rekeyed.requests.nextMessageID == 0)
        #expect(rekeyed.requests.peerWindowSize == 1)
        #expect(rekeyed.responses.nextExpectedMessageID == 0)
    }

    static let inconsistent: [IKEMessageIDSnapshot] = [
        // outstanding above the next ID
        .init(
            nextRequestID: 3, peerWindowSize: 4, outstandingRequests: [3], nextExpectedRequestID: 0,
            localWindowSize: 1, requestsProcessedAhead: [], highestProcessedRequest: nil),
        // more outstanding than the window
        .init(
            nextRequestID: 3, peerWindowSize: 1, outstandingRequests: [1, 2], nextExpectedRequestID: 0,
            localWindowSize: 1, requestsProcessedAhead: [], highestProcessedRequest: nil),
        // not ascending
        .init(
            nextRequestID: 3, peerWindowSize: 4, outstandingRequests: [2, 1], nextExpectedRequestID: 0,
            localWindowSize: 1, requestsProcessedAhead: [], highestProcessedRequest: nil),
        // peer window 0
        .init(
            nextRequestID: 0, peerWindowSize: 0, outstandingRequests: [], nextExpectedRequestID: 0,
            localWindowSize: 1, requestsProcessedAhead: [], highestProcessedRequest: nil),
        // next ID beyond 2^32
        .init(
            nextRequestID: (1 << 32) + 1, peerWindowSize: 1, outstandingRequests: [], nextExpectedRequestID: 0,
            localWindowSize: 1, requestsProcessedAhead: [], highestProcessedRequest: nil),
        // processed-ahead outside the local window
        .init(
            nextRequestID: 0, peerWindowSize: 1, outstandingRequests: [], nextExpectedRequestID: 2,
            localWindowSize: 2, requestsProcessedAhead: [4], highestProcessedRequest: 4),
        // highest processed that does not match
        .init(
            nextRequestID: 0, peerWindowSize: 1, outstandingRequests: [], nextExpectedRequestID: 2,
            localWindowSize: 1, requestsProcessedAhead: [], highestProcessedRequest: 7),
        // local window 0
        .init(
            nextRequestID: 0, peerWindowSize: 1, outstandingRequests: [], nextExpectedRequestID: 0,
            localWindowSize: 0, requestsProcessedAhead: [], highestProcessedRequest: nil),
    ]

    @Test(arguments: inconsistent)
    func inconsistentSnapshotsAreRefused(snapshot: IKEMessageIDSnapshot) {
        #expect {
            try IKEMessageIDWindows(restoringFrom: snapshot)
        } throws: { error in
            if case IKEMessageIDError.inconsistentSnapshot = error { return true }
            return false
        }
    }
}
