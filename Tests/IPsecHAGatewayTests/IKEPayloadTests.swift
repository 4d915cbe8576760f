import IPsecHACore
import Testing

@testable import IPsecHAGateway

/// The payload codecs: what they write they read back, and malformed bodies are refused.
@Suite struct IKEPayloadTests {
    @Test func securityAssociationRoundTrip() throws {
        let sa = SecurityAssociationPayload(proposals: [
            IKEProposal(number: 1, protocolID: IKEProposal.ike, spi: [], transforms: [
                IKETransform(.encryption, id: 20, keyLength: 256), IKETransform(.pseudorandomFunction, id: 5),
                IKETransform(.keyExchange, id: 31),
            ]),
            TestInitiator.espProposal(spi: 0xDEAD_BEEF, keyExchange: true).proposals[0],
        ])
        let decoded = try SecurityAssociationPayload(body: sa.body)
        #expect(decoded == sa)
        #expect(decoded.proposals[1].espSPI == 0xDEAD_BEEF)
        #expect(IKEv2Responder.chooseESPProposal(decoded, keyExchange: true)?.number == 1)
        #expect(IKEv2Responder.chooseESPProposal(decoded, keyExchange: false) == nil)
        #expect(IKEv2Responder.chooseIKEProposal(decoded) == nil)  // AES-GCM only
    }

    @Test func malformedSecurityAssociationsAreRefused() throws {
        let body = TestInitiator.espProposal(spi: 0x1234_5678).body
        for cut in [1, 4, 9, body.count - 1] {
            #expect(throws: IKEWireError.self) { try SecurityAssociationPayload(body: Array(body.prefix(cut))) }
        }
        var wrongCount = body
        wrongCount[7] = 5  // more transforms than there are
        #expect(throws: IKEWireError.self) { try SecurityAssociationPayload(body: wrongCount) }
        var wrongSPISize = body
        wrongSPISize[6] = 3
        #expect(throws: IKEWireError.self) { try SecurityAssociationPayload(body: wrongSPISize) }
        var wrongMarker = body
        wrongMarker[0] = 7
        #expect(throws: IKEWireError.self) { try SecurityAssociationPayload(body: wrongMarker) }
    }

    @Test func trafficSelectorsAndDeletesRoundTrip() throws {
        let selectors = TrafficSelectorPayload(selectors: [
            TrafficSelector(address: IPAddress(ipv4: 0x0A63_0101)),
            try TrafficSelector(prefix: IPAddress(ipv6High: 0x2001_0DB8_0000_0000, low: 0), length: 64, ipProtocol: 17),
        ])
        #expect(try TrafficSelectorPayload(body: selectors.body) == selectors)
        var inverted = TrafficSelectorPayload(selectors: [TrafficSelector(address: IPAddress(ipv4: 5))]).body
        inverted[15] = 9  // start 0.0.0.9, end 0.0.0.5
        #expect(throws: IKEWireError.self) { try TrafficSelectorPayload(body: inverted) }
        #expect(throws: IKEWireError.self) { try TrafficSelectorPayload(body: Array(selectors.body.dropLast())) }
        let delete = DeletePayload(protocolID: IKEProposal.esp, spis: [1, 0xFFFF_FFFF])
        #expect(try DeletePayload(body: delete.payload.body) == delete)
        #expect(throws: IKEWireError.self) { try DeletePayload(body: Array(delete.payload.body.dropLast())) }
    }

    @Test func encryptedMessagesRoundTripAndRefuseTampering() throws {
        let key = KeyMaterial(copying: IKECrypto.randomBytes(36))
        let header = IKEHeader(initiatorSPI: 1, responderSPI: 2, nextPayload: .none, exchangeType: .informational, flags: IKEHeader.responseFlag, messageID: 7, length: 0)
        let payloads = [NotifyPayload(type: .messageIDSyncSupported).payload, IKEPayload(type: .nonce, body: [1, 2, 3])]
        let sealed = try EncryptedMessage.seal(header: header, payloads: payloads, keyAndSalt: key)
        let opened = try EncryptedMessage.open(sealed, keyAndSalt: key)
        #expect(opened.payloads == payloads && opened.header.messageID == 7)
        // The plain decoder sees one SK payload naming the first inner payload.
        let plain = try IKEMessage(decoding: sealed)
        #expect(plain.payloads.map(\.type) == [.encrypted] && plain.firstPayloadInsideEncrypted == .notify)
        #expect(try plain.encoded() == sealed)
        for index in [0, 17, 28, 30, 36, sealed.count - 1] {
            var tampered = sealed
            tampered[index] ^= 0x01
            #expect(throws: IKEProtocolError.self) { try EncryptedMessage.open(tampered, keyAndSalt: key) }
        }
        #expect(throws: IKEProtocolError.self) { try EncryptedMessage.open(Array(sealed.dropLast()), keyAndSalt: key) }
        #expect(throws: IKEProtocolError.integrityCheckFailed) { try EncryptedMessage.open(sealed, keyAndSalt: KeyMaterial(copying: IKECrypto.randomBytes(36))) }
    }
}
