/// The data of an IKEV2_MESSAGE_ID_SYNC notification (RFC 6311 section 6.3): a nonce echoed by
/// the response, and the message IDs seen from the sender of the notification.
public struct MessageIDSyncNotification: Sendable, Hashable {
    /// Random; the response carries the same value.
    public var nonce: UInt32
    /// EXPECTED_SEND_REQ_MESSAGE_ID: the ID of the next request the sender will send.
    public var expectedSendRequestID: UInt32
    /// EXPECTED_RECV_REQ_MESSAGE_ID: the ID of the next request the sender expects to receive.
    public var expectedReceiveRequestID: UInt32

    /// A notification from its parts.
    public init(nonce: UInt32, expectedSendRequestID: UInt32, expectedReceiveRequestID: UInt32) {
        self.nonce = nonce
        self.expectedSendRequestID = expectedSendRequestID
        self.expectedReceiveRequestID = expectedReceiveRequestID
    }

    /// As a Notify payload body: protocol ID 0, SPI size 0, type 16422, 12 bytes of data.
    public var notify: NotifyPayload {
        var data: [UInt8] = []
        data.appendBigEndian(nonce)
        data.appendBigEndian(expectedSendRequestID)
        data.appendBigEndian(expectedReceiveRequestID)
        return NotifyPayload(type: .messageIDSync, data: data)
    }

    /// From a Notify payload; throws unless it is a 16422 about the IKE SA with 12 bytes of data.
    public init(_ notify: NotifyPayload) throws(IKEWireError) {
        guard notify.type == .messageIDSync else { throw .unexpectedMessage("not IKEV2_MESSAGE_ID_SYNC") }
        guard notify.protocolID == 0, notify.spi.isEmpty else { throw .invalidNotifyTarget(notify.type) }
        guard notify.data.count == 12 else { throw .invalidNotifyData(notify.type, length: notify.data.count) }
        var reader = WireReader(notify.data[...])
        nonce = try reader.uint32()
        expectedSendRequestID = try reader.uint32()
        expectedReceiveRequestID = try reader.uint32()
    }
}

/// The data of an IPSEC_REPLAY_COUNTER_SYNC notification (RFC 6311 section 6.4): how far the
/// receiver must move the counters of every Child SA of the IKE SA for the sender's incoming
/// traffic. 4 bytes when the Child SAs use no ESN, 8 when they do.
public struct ReplayCounterSyncNotification: Sendable, Hashable {
    /// The increment.
    public var delta: UInt64
    /// Whether the Child SAs use Extended Sequence Numbers (8-byte field).
    public var extendedSequenceNumbers: Bool

    /// A notification; throws when `delta` does not fit 4 bytes without ESN.
    public init(delta: UInt64, extendedSequenceNumbers: Bool) throws(IKEWireError) {
        guard extendedSequenceNumbers || delta <= UInt64(UInt32.max) else {
            throw .invalidNotifyData(.replayCounterSync, length: 8)
        }
        self.delta = delta
        self.extendedSequenceNumbers = extendedSequenceNumbers
    }

    /// As a Notify payload body: protocol ID 0, SPI size 0, type 16423, 4 or 8 bytes of data.
    public var notify: NotifyPayload {
        var data: [UInt8] = []
        if extendedSequenceNumbers { data.appendBigEndian(delta) } else { data.appendBigEndian(UInt32(delta)) }
        return NotifyPayload(type: .replayCounterSync, data: data)
    }

    /// From a Notify payload; throws unless it is a 16423 about the IKE SA with 4 or 8 bytes.
    public init(_ notify: NotifyPayload) throws(IKEWireError) {
        guard notify.type == .replayCounterSync else { throw .unexpectedMessage("not IPSEC_REPLAY_COUNTER_SYNC") }
        guard notify.protocolID == 0, notify.spi.isEmpty else { throw .invalidNotifyTarget(notify.type) }
        var reader = WireReader(notify.data[...])
        switch notify.data.count {
        case 4:
            delta = UInt64(try reader.uint32())
            extendedSequenceNumbers = false
        case 8:
            delta = try reader.uint64()
            extendedSequenceNumbers = true
        default:
            throw .invalidNotifyData(notify.type, length: notify.data.count)
        }
    }
}

extension IKEMessage {
    /// The RFC 6311 message-ID sync INFORMATIONAL message (section 5): Message ID 0, the
    /// IKEV2_MESSAGE_ID_SYNC notification and, optionally, IPSEC_REPLAY_COUNTER_SYNC, in clear
    /// (the embedding stack encrypts the chain into an SK payload).
    public static func messageIDSync(
        ikeSA: IKESAIdentifier, isOriginalInitiator: Bool, isResponse: Bool, sync: MessageIDSyncNotification,
        replayCounter: ReplayCounterSyncNotification? = nil
    ) -> IKEMessage {
        var flags: UInt8 = 0
        if isOriginalInitiator { flags |= IKEHeader.initiatorFlag }
        if isResponse { flags |= IKEHeader.responseFlag }
        var payloads = [sync.notify.payload]
        if let replayCounter { payloads.append(replayCounter.notify.payload) }
        return IKEMessage(
            header: IKEHeader(
                initiatorSPI: ikeSA.initiatorSPI, responderSPI: ikeSA.responderSPI, nextPayload: .notify,
                exchangeType: .informational, flags: flags, messageID: 0, length: 0),
            payloads: payloads)
    }

    /// The notifications of the chain, in order; throws on a malformed Notify payload.
    public func notifications() throws(IKEWireError) -> [NotifyPayload] {
        var notifications: [NotifyPayload] = []
        for payload in payloads where payload.type == .notify { notifications.append(try NotifyPayload(body: payload.body)) }
        return notifications
    }
}
