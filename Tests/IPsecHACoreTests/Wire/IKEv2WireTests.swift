import IPsecHACore
import Testing

@Suite("IKEv2 wire: header, Notify, RFC 6311 notifications")
struct IKEv2WireTests {
    let ikeSA = IKESAIdentifier(initiatorSPI: 0x1122_3344_5566_7788, responderSPI: 0x99AA_BBCC_DDEE_FF00)

    func hex(_ text: String) -> [UInt8] {
        let digits = Array(text.filter { !$0.isWhitespace })
        return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
    }

    @Test func messageIDSyncRequestBytes() throws {
        let message = IKEMessage.messageIDSync(
            ikeSA: ikeSA, isOriginalInitiator: true, isResponse: false,
            sync: MessageIDSyncNotification(nonce: 0xDEAD_BEEF, expectedSendRequestID: 7, expectedReceiveRequestID: 5))
        #expect(try message.encoded() == hex("""
            1122334455667788 99aabbccddeeff00 29 20 25 08 00000000 00000030
            00 00 0014 00 00 4026 deadbeef 00000007 00000005
            """))
    }

    @Test func messageIDSyncResponseWithReplayCounterSyncBytes() throws {
        let message = IKEMessage.messageIDSync(
            ikeSA: ikeSA, isOriginalInitiator: false, isResponse: true,
            sync: MessageIDSyncNotification(nonce: 1, expectedSendRequestID: 2, expectedReceiveRequestID: 3),
            replayCounter: try ReplayCounterSyncNotification(delta: 0x1_0000_0000, extendedSequenceNumbers: true))
        let bytes = try message.encoded()
        #expect(bytes == hex("""
            1122334455667788 99aabbccddeeff00 29 20 25 20 00000000 00000040
            29 00 0014 00 00 4026 00000001 00000002 00000003
            00 00 0010 00 00 4027 0000000100000000
            """))
        let decoded = try IKEMessage(decoding: bytes)
        #expect(decoded.header.isResponse && !decoded.header.isFromOriginalInitiator)
        #expect(decoded.header.exchangeType == .informational && decoded.header.messageID == 0)
        let notifications = try decoded.notifications()
        #expect(try MessageIDSyncNotification(notifications[0]) == MessageIDSyncNotification(nonce: 1, expectedSendRequestID: 2, expectedReceiveRequestID: 3))
        #expect(try ReplayCounterSyncNotification(notifications[1]).delta == 0x1_0000_0000)
    }

    @Test func supportedNotificationsAreEightBytes() {
        #expect(NotifyPayload(type: .messageIDSyncSupported).payload.body.count + 4 == 8)
        #expect(NotifyPayload(type: .replayCounterSyncSupported).body == [0, 0, 0x40, 0x25])
        #expect(NotifyMessageType.messageIDSync.rawValue == 16422 && !NotifyMessageType.messageIDSync.isError)
    }

    @Test func malformedMessagesAreTypedErrors() throws {
        let good = try IKEMessage.messageIDSync(
            ikeSA: ikeSA, isOriginalInitiator: true, isResponse: false,
            sync: MessageIDSyncNotification(nonce: 1, expectedSendRequestID: 2, expectedReceiveRequestID: 3)).encoded()
        #expect(throws: IKEWireError.truncated) { try IKEMessage(decoding: Array(good.prefix(20))) }
        #expect(throws: IKEWireError.lengthMismatch(declared: 48, actual: 47)) { try IKEMessage(decoding: Array(good.dropLast())) }
        var version = good
        version[17] = 0x10
        #expect(throws: IKEWireError.unsupportedVersion(0x10)) { try IKEMessage(decoding: version) }
        var short = good
        short[31] = 3
        #expect(throws: IKEWireError.payloadTooShort(3)) { try IKEMessage(decoding: short) }
        var long = good
        long[31] = 0x30
        #expect(throws: IKEWireError.truncated) { try IKEMessage(decoding: long) }
        var reserved = good
        reserved[29] = 0x01
        #expect(throws: IKEWireError.reservedBitsSet) { try IKEMessage(decoding: reserved) }
        #expect(throws: IKEWireError.invalidNotifyData(.messageIDSync, length: 11)) {
            try MessageIDSyncNotification(NotifyPayload(type: .messageIDSync, data: [UInt8](repeating: 0, count: 11)))
        }
        #expect(throws: IKEWireError.invalidNotifyData(.replayCounterSync, length: 5)) {
            try ReplayCounterSyncNotification(NotifyPayload(type: .replayCounterSync, data: [UInt8](repeating: 0, count: 5)))
        }
        #expect(throws: IKEWireError.invalidNotifyTarget(.messageIDSync)) {
            try MessageIDSyncNotification(NotifyPayload(protocolID: 3, spi: [1, 2, 3, 4], type: .messageIDSync, data: [UInt8](repeating: 0, count: 12)))
        }
        #expect(throws: IKEWireError.invalidSPISize(3)) { try NotifyPayload(body: [3, 3, 0x40, 0x26, 1, 2, 3]) }
        #expect(throws: IKEWireError.invalidNotifyData(.replayCounterSync, length: 8)) {
            try ReplayCounterSyncNotification(delta: 1 << 32, extendedSequenceNumbers: false)
        }
    }

    @Test func randomBytesNeverCrashTheDecoder() {
        var random = SplitMix64(seed: 3)
        var rejected = 0
        for _ in 0..<5_000 {
            var bytes = (0..<Int(random.next() % 80)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            if bytes.count >= 28, random.next() % 2 == 0 {
                bytes[17] = 0x20
                bytes[24...27] = [0, 0, 0, UInt8(bytes.count)]
            }
            do {
                let message = try IKEMessage(decoding: bytes)
                _ = try? message.notifications()
            } catch {
                rejected += 1
            }
        }
        #expect(rejected > 4_000)
    }

    /// An SK payload closes the chain (RFC 7296 section 3.14): its next-payload field names the
    /// first payload inside, which the message keeps so that it encodes back byte for byte; a
    /// payload after it is refused.
    @Test func anEncryptedPayloadClosesTheChain() throws {
        let header = IKEHeader(initiatorSPI: 1, responderSPI: 2, nextPayload: .none, exchangeType: .informational, flags: 0x08, messageID: 3, length: 0)
        let message = IKEMessage(
            header: header, payloads: [IKEPayload(type: .encrypted, body: Array(repeating: 0xAB, count: 25))],
            firstPayloadInsideEncrypted: .notify)
        let bytes = try message.encoded()
        #expect(bytes[28] == IKEPayloadType.notify.rawValue)  // the SK payload's next-payload field
        let decoded = try IKEMessage(decoding: bytes)
        #expect(decoded.payloads == message.payloads && decoded.firstPayloadInsideEncrypted == .notify)
        #expect(try decoded.encoded() == bytes)
        #expect(try IKEHeader(decoding: bytes[...]).messageID == 3)
        // A payload after the SK payload: trailing bytes.
        var chain = try IKEPayload.encodeChain([IKEPayload(type: .encrypted, body: [1, 2, 3])], lastNextPayload: .notify)
        chain += try IKEPayload.encodeChain([IKEPayload(type: .notify, body: [0, 0, 0x40, 0x24])])
        #expect(throws: IKEWireError.trailingBytes(8)) { try IKEPayload.decodeChain(chain[...], first: .encrypted) }
        // A chain in clear keeps no inner type.
        let plain = try IKEPayload.decodeChainReportingEncrypted(
            try IKEPayload.encodeChain([IKEPayload(type: .nonce, body: [9])])[...], first: .nonce)
        #expect(plain.payloads.count == 1 && plain.firstInner == nil)
    }
}
