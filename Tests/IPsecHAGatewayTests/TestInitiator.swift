import IPsecHACore
import Logging

@testable import IPsecHAGateway

/// The initiator's side of IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA and INFORMATIONAL, written
/// from RFC 7296 for the tests: what strongSwan does in `scripts/interop.sh`, in process.
struct TestInitiator {
    let psk: KeyMaterial
    let identity = IKEIdentity("peer@test")
    var remote = Endpoint(address: IPAddress(ipv4: 0x0A63_0001), port: 4500, udpEncapsulation: true)
    let gateway = Endpoint(address: IPAddress(ipv4: 0x0A63_0002), port: 4500, udpEncapsulation: true)
    var initiatorSPI: UInt64 = 0x1122_3344_5566_7788
    var responderSPI: UInt64 = 0
    var nonce = IKECrypto.randomBytes(32)
    let keyPair = IKECrypto.X25519KeyPair()
    var request1: [UInt8] = []
    var keys: IKEKeys?
    var nextMessageID: UInt32 = 1
    /// The SPI this initiator receives ESP on, for the Child SA of IKE_AUTH.
    var espSPI: UInt32 = 0xC0DE_0001
    var keymat: KeyMaterial?

    var identifier: IKESAIdentifier { IKESAIdentifier(initiatorSPI: initiatorSPI, responderSPI: responderSPI) }

    init(psk: [UInt8]) { self.psk = KeyMaterial(copying: psk) }

    static func espProposal(spi: UInt32, keyExchange: Bool = false) -> SecurityAssociationPayload {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(spi)
        var transforms = [IKETransform(.encryption, id: EncryptionAlgorithm.chacha20Poly1305.rawValue)]
        if keyExchange { transforms.append(IKETransform(.keyExchange, id: KeyExchangeMethod.curve25519.rawValue)) }
        transforms.append(IKETransform(.extendedSequenceNumbers, id: 0))
        return SecurityAssociationPayload(proposals: [IKEProposal(number: 1, protocolID: IKEProposal.esp, spi: bytes, transforms: transforms)])
    }

    static let selectors = (
        initiator: TrafficSelectorPayload(selectors: [TrafficSelector(address: IPAddress(ipv4: 0x0A63_0101))]),
        responder: TrafficSelectorPayload(selectors: [TrafficSelector(address: IPAddress(ipv4: 0x0A63_0201))])
    )

    mutating func ikeSAInit(proposals: SecurityAssociationPayload? = nil, cookie: [UInt8]? = nil) throws -> [UInt8] {
        let offer = proposals ?? SecurityAssociationPayload(proposals: [
            IKEProposal(number: 1, protocolID: IKEProposal.ike, spi: [], transforms: [
                IKETransform(.encryption, id: EncryptionAlgorithm.aesGCM16.rawValue, keyLength: 256),
                IKETransform(.pseudorandomFunction, id: PseudorandomFunction.hmacSHA2_256.rawValue),
                IKETransform(.keyExchange, id: KeyExchangeMethod.curve25519.rawValue),
            ]),
            IKEProposal(number: 2, protocolID: IKEProposal.ike, spi: [], transforms: [
                IKETransform(.encryption, id: EncryptionAlgorithm.chacha20Poly1305.rawValue),
                IKETransform(.pseudorandomFunction, id: PseudorandomFunction.hmacSHA2_256.rawValue),
                IKETransform(.keyExchange, id: KeyExchangeMethod.curve25519.rawValue),
            ]),
        ])
        let header = IKEHeader(
            initiatorSPI: initiatorSPI, responderSPI: 0, nextPayload: .none, exchangeType: .ikeSAInit, flags: IKEHeader.initiatorFlag,
            messageID: 0, length: 0)
        // A cookie the responder asked for goes first (RFC 7296 section 2.6).
        request1 = try IKEMessage(header: header, payloads: (cookie.map { [NotifyPayload(type: .cookie, data: $0).payload] } ?? []) + [
            offer.payload,
            KeyExchangePayload(group: .curve25519, data: keyPair.publicKey).payload,
            IKEPayload(type: .nonce, body: nonce),
            NotifyPayload(type: .natDetectionSourceIP, data: IKEv2Responder.natDetectionHash(initiatorSPI: initiatorSPI, responderSPI: 0, remote)).payload,
        ]).encoded()
        return request1
    }

    /// Takes the IKE_SA_INIT response and derives the keys (section 2.14).
    mutating func takeIKESAInitResponse(_ bytes: [UInt8]) throws -> [UInt8] {
        let response = try IKEMessage(decoding: bytes)
        responderSPI = response.header.responderSPI
        let ke = try KeyExchangePayload(body: response.payloads.first { $0.type == .keyExchange }!.body)
        let responderNonce = response.payloads.first { $0.type == .nonce }!.body
        let shared = try keyPair.sharedSecret(with: ke.data)
        let skeyseed = IKECrypto.prf(key: nonce + responderNonce, secret: shared)
        var seed = nonce + responderNonce
        seed.appendBigEndian(initiatorSPI)
        seed.appendBigEndian(responderSPI)
        keys = try IKEKeys(packed: IKECrypto.prfPlus(key: skeyseed, seed: seed, count: 168), lengths: IKEv2Responder.keyLengths)
        return responderNonce
    }

    func pskAuth(_ octets: [UInt8]) -> [UInt8] {
        IKECrypto.prf(key: KeyMaterial(copying: IKECrypto.prf(key: psk, Array("Key Pad for IKEv2".utf8))), octets)
    }

    mutating func ikeAuth(responderNonce: [UInt8], extraNotifies: [NotifyMessageType] = [.messageIDSyncSupported]) throws -> [UInt8] {
        let idBody = identity.body
        let auth = pskAuth(request1 + responderNonce + IKECrypto.prf(key: keys!.pi, idBody))
        var payloads: [IKEPayload] = [
            IKEPayload(type: .identificationInitiator, body: idBody),
            AuthenticationPayload(method: AuthenticationPayload.sharedKeyMIC, data: auth).payload,
            Self.espProposal(spi: espSPI).payload,
            IKEPayload(type: .trafficSelectorInitiator, body: Self.selectors.initiator.body),
            IKEPayload(type: .trafficSelectorResponder, body: Self.selectors.responder.body),
        ]
        payloads += extraNotifies.map { NotifyPayload(type: $0).payload }
        keymat = IKECrypto.prfPlus(key: keys!.d, seed: nonce + responderNonce, count: 72)
        return try request(.ikeAuth, payloads)
    }

    /// A request of this IKE SA, protected with SK_ei, with the next message ID.
    mutating func request(_ exchange: IKEExchangeType, _ payloads: [IKEPayload]) throws -> [UInt8] {
        let header = IKEHeader(
            initiatorSPI: initiatorSPI, responderSPI: responderSPI, nextPayload: .none, exchangeType: exchange,
            flags: IKEHeader.initiatorFlag, messageID: nextMessageID, length: 0)
        nextMessageID += 1
        return try EncryptedMessage.seal(header: header, payloads: payloads, keyAndSalt: keys!.ei)
    }

    /// A message from the responder, opened with SK_er.
    func open(_ bytes: [UInt8]) throws -> IKEMessage { try EncryptedMessage.open(bytes, keyAndSalt: keys!.er) }

    /// The Child SA as the initiator holds it: the mirror of the responder's.
    func mirror(of child: ChildSA) throws -> ChildSA {
        try ChildSA(
            inboundSPI: child.outboundSPI, outboundSPI: child.inboundSPI, localSelectors: child.remoteSelectors,
            remoteSelectors: child.localSelectors, transforms: child.transforms,
            inboundKeys: ChildSAKeys(encryption: keymat!.extracting(36..<72)), outboundKeys: ChildSAKeys(encryption: keymat!.extracting(0..<36)),
            outboundCounter: try OutboundSequenceCounter(extendedSequenceNumbers: false),
            inboundWindow: try ReplayWindow(size: 128, extendedSequenceNumbers: false),
            lifetime: child.lifetime, parent: child.parent, owner: child.owner)
    }
}

extension Logger {
    /// A logger that drops everything, for tests that look at outcomes, not logs.
    static let quiet: Logger = {
        var logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        logger.logLevel = .critical
        return logger
    }()
}
