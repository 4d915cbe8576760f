public import IPsecHACore
public import Logging

/// What the reference gateway's IKEv2 responder is configured with.
public struct IKEResponderConfiguration: Sendable {
    /// The identity this gateway proves (IDr).
    public var localIdentity: IKEIdentity
    /// The only identity accepted from initiators (IDi).
    public var remoteIdentity: IKEIdentity
    /// The pre-shared key both sides authenticate with (RFC 7296 section 2.15). One shorter
    /// than ``minimumPreSharedKeyLength`` authenticates nobody: an empty key would let anyone
    /// who knows the identities in, and a short one falls to an offline search of one captured
    /// IKE_AUTH.
    public var preSharedKey: KeyMaterial
    /// The shortest pre-shared key the responder authenticates with: 16 bytes.
    public static let minimumPreSharedKeyLength = 16
    /// The member that answers; it owns the SAs it creates.
    public var member: ClusterMemberID
    /// Announce IKEV2_MESSAGE_ID_SYNC_SUPPORTED in IKE_AUTH (RFC 6311 section 4).
    public var announceMessageIDSync = true
    /// Announce IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED in IKE_AUTH.
    public var announceReplayCounterSync = true
    /// The inbound anti-replay window of each Child SA, in packets.
    public var replayWindowSize: UInt32 = 1_024
    /// The soft lifetime of each Child SA (rekeying is the initiator's to start).
    public var childSASoftLifetimeSeconds: UInt64 = 3_300
    /// The hard lifetime of each Child SA.
    public var childSAHardLifetimeSeconds: UInt64 = 3_600
    /// At most this many Child SAs in one IKE SA: a CREATE_CHILD_SA for another is answered
    /// NO_ADDITIONAL_SAS. Rekeys may go up to twice as many, while the old Child SAs wait for
    /// the peer's Delete. Every SA is replicated: an authenticated peer must not grow both
    /// members' memory without bound (review M6).
    public var maximumChildSAsPerIKESA = 16
    /// At most this many IKE SAs from one peer address: IKE_AUTH for another is answered
    /// NO_ADDITIONAL_SAS, unless it carries INITIAL_CONTACT (which first deletes the others).
    public var maximumIKESAsPerPeerAddress = 4
    /// At most this many half-open exchanges from one address; further IKE_SA_INITs from it
    /// are dropped before any work until some complete or expire. Cookies stop spoofed
    /// floods; this stops one real address from taking the whole table (review H2).
    public var halfOpenPerAddressLimit = 16
    /// At most this many IKE_SA_INIT exchanges wait for their IKE_AUTH; the oldest goes first.
    public var halfOpenLimit = 1_024
    /// A half-open exchange is forgotten after this long.
    public var halfOpenLifetime: UInt64 = 30_000_000_000
    /// From this many half-open exchanges on, an IKE_SA_INIT without a valid COOKIE is answered
    /// with one (RFC 7296 section 2.6) and costs nothing more: a flood from spoofed addresses
    /// can neither evict a real initiator's exchange nor take the responder's time, since only
    /// an initiator that receives at its address can return the cookie (default 256; 0: always).
    public var cookieThreshold = 256
    /// How long a cookie secret is used before the next one (the previous one is still
    /// accepted for as long again).
    public var cookieSecretLifetime: UInt64 = 60_000_000_000
    /// Load sharing: inbound SPIs are drawn in the segment of their IKE SA and this member's
    /// field of the layout, so that the SPI alone steers ESP to the member serving the segment
    /// (`NFTablesSteering`). Nil: any free SPI.
    public var spiLayout: SPILayout?

    /// A configuration from the identities, the key and the member.
    public init(localIdentity: IKEIdentity, remoteIdentity: IKEIdentity, preSharedKey: KeyMaterial, member: ClusterMemberID) {
        self.localIdentity = localIdentity
        self.remoteIdentity = remoteIdentity
        self.preSharedKey = preSharedKey
        self.member = member
    }
}

/// An IKE message to send: its bytes, where to, and from which local port (on 4500 the
/// transport puts the four-byte non-ESP marker in front, RFC 3948 section 2.2).
public struct IKEDatagram: Sendable, Hashable {
    /// The IKE message.
    public var bytes: [UInt8]
    /// The peer's address and port.
    public var destination: Endpoint
    /// The local port to send from (500 or 4500).
    public var localPort: UInt16
}

/// What one received IKE message led to.
public struct IKEOutcome: Sendable {
    /// Messages to send now (or, with synchronous replication, once `changes` are acknowledged).
    public var replies: [IKEDatagram] = []
    /// State changes to replicate.
    public var changes: [StateChange] = []
    /// The exchange that was processed (an IKE SA and the peer's request message ID).
    public var exchange: (ikeSA: IKESAIdentifier, messageID: UInt32)?
    /// Set when an RFC 6311 message-ID sync this member started was answered and adopted.
    public var messageIDSyncCompleted: IKESAIdentifier?
}

/// The IKEv2 responder of the reference gateway: IKE_SA_INIT, IKE_AUTH with a pre-shared key,
/// CREATE_CHILD_SA to rekey Child SAs and the IKE SA, INFORMATIONAL (liveness checks, deletes), and the cluster
/// member's side of an RFC 6311 message-ID sync. One proposal set: X25519, PRF_HMAC_SHA2_256
/// and ChaCha20-Poly1305 (RFC 7634), for the IKE SA and for ESP.
///
/// It is sans-I/O like the rest of the package: `receive` takes a message and the
/// `GatewayState` that holds every IKE SA and Child SA, records what the exchange changed
/// there, and returns the replies and the changes to replicate. The state is the only thing a
/// standby needs to carry on: keys, message IDs, selectors and counters are all in it. What is
/// kept here is local and may be lost on failover: exchanges between IKE_SA_INIT and IKE_AUTH,
/// and the last response of each IKE SA (for retransmitted requests).
public struct IKEv2Responder: Sendable {
    /// What the responder was built with.
    public let configuration: IKEResponderConfiguration
    /// Where it says what it did: exchanges at notice, refusals at notice or warning.
    public var logger: Logger

    /// An IKE_SA_INIT answered and awaiting its IKE_AUTH.
    struct HalfOpen: Sendable {
        var identifier: IKESAIdentifier
        var remote: Endpoint
        var request: [UInt8]
        var response: [UInt8]
        var initiatorNonce: [UInt8]
        var responderNonce: [UInt8]
        var keys: IKEKeys
        var createdAt: Timestamp
    }

    private var halfOpen: [UInt64: HalfOpen] = [:]
    /// The secrets cookies are made with (RFC 7296 section 2.6): the current one, its version
    /// (the first four bytes of each cookie), when it was made, and the previous one.
    private var cookieSecret: (version: UInt32, secret: KeyMaterial, since: Timestamp)?
    private var previousCookieSecret: (version: UInt32, secret: KeyMaterial)?
    /// IKE_SA_INIT requests answered with a COOKIE instead of an exchange.
    public private(set) var cookiesSent = 0
    /// IKE_AUTH requests refused for a wrong identity or pre-shared key.
    public private(set) var authenticationFailures = 0
    private var authenticationFailuresWarned = 0
    private var lastAuthenticationWarning: Timestamp?
    private var lastResponses: [IKESAIdentifier: (messageID: UInt32, datagram: IKEDatagram)] = [:]
    private var messageIDSyncs: [IKESAIdentifier: MessageIDSyncInitiator] = [:]

    /// A responder.
    public init(configuration: IKEResponderConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// The key lengths of the one IKE proposal: SK_d, SK_ai, SK_ar, SK_ei, SK_er, SK_pi, SK_pr.
    static let keyLengths = [32, 0, 0, IKECrypto.aeadKeyLength, IKECrypto.aeadKeyLength, 32, 32]
    static let ikeTransforms = IKETransforms(
        encryption: .chacha20Poly1305, prf: .hmacSHA2_256, integrity: .none, keyExchange: .curve25519)

    // MARK: Receiving

    /// Handles one IKE message (without the non-ESP marker) from `remote`, received on
    /// `local`. Messages that fail to parse or authenticate are logged and dropped: nothing
    /// changes and nothing is sent.
    public mutating func receive(
        _ bytes: [UInt8], from remote: Endpoint, on local: Endpoint, state: inout GatewayState, now: Timestamp
    ) -> IKEOutcome {
        do throws(IKEProtocolError) {
            let header = try EncryptedMessage.header(of: bytes)
            if header.exchangeType == .ikeSAInit {
                return try ikeSAInit(bytes, header: header, from: remote, on: local, now: now)
            }
            let identifier = IKESAIdentifier(initiatorSPI: header.initiatorSPI, responderSPI: header.responderSPI)
            if header.exchangeType == .ikeAuth, let pending = halfOpen[header.initiatorSPI], pending.identifier == identifier {
                return try ikeAuth(bytes, pending: pending, from: remote, on: local, state: &state, now: now)
            }
            guard let sa = state.ikeSAs[identifier] else { throw .unknownIKESA(identifier) }
            // Messages from the original initiator are protected with SK_ei (section 2.14).
            let message = try EncryptedMessage.open(bytes, keyAndSalt: sa.keys.ei)
            if header.isResponse {
                return try response(message, of: sa, state: &state)
            }
            switch sa.messageIDs.responses.classify(header.messageID) {
            case .new:
                break
            case .retransmission:
                guard let last = lastResponses[identifier], last.messageID == header.messageID else {
                    logger.info("retransmitted request without a kept response: dropped", metadata: ["ike_sa": "\(identifier)", "message_id": "\(header.messageID)"])
                    return IKEOutcome()
                }
                logger.debug("retransmitted request: the kept response again", metadata: ["ike_sa": "\(identifier)", "message_id": "\(header.messageID)"])
                return IKEOutcome(replies: [last.datagram])
            case .tooOld, .outsideWindow:
                logger.notice("request outside the message-ID window: dropped", metadata: [
                    "ike_sa": "\(identifier)", "message_id": "\(header.messageID)",
                    "expected": "\(sa.messageIDs.responses.nextExpectedMessageID)",
                ])
                return IKEOutcome()
            }
            let answer: RequestAnswer
            switch header.exchangeType {
            case .informational: answer = try informational(message, of: sa, state: &state)
            case .createChildSA: answer = try createChildSA(message, of: sa, state: &state, now: now)
            default:
                logger.notice("unexpected exchange: dropped", metadata: ["exchange": "\(header.exchangeType)"])
                return IKEOutcome()
            }
            return try finish(answer, of: header, sa: sa, state: &state)
        } catch {
            // At debug level only: unauthenticated input must not be able to flood the log.
            droppedMessages += 1
            logger.debug("IKE message dropped", metadata: ["from": "\(remote)", "reason": "\(error)"])
            return IKEOutcome()
        }
    }

    /// The IKE SA and message ID of `bytes` when it is an authentic request that starts a new
    /// exchange on an established IKE SA (not a retransmission); nil for anything else. The
    /// gateway tells the standbys that an exchange started only then: replicating the clear
    /// header of whatever arrives let anyone who saw the SPIs on the wire fill the synch
    /// channel and the standby's table of exchanges in flight (review M5). It costs one more
    /// decryption of the request, which ``receive(_:from:on:state:now:)`` then processes.
    public func authenticNewRequest(_ bytes: [UInt8], state: GatewayState) -> (ikeSA: IKESAIdentifier, messageID: UInt32)? {
        guard let header = try? EncryptedMessage.header(of: bytes), !header.isResponse,
            header.exchangeType != .ikeSAInit, header.exchangeType != .ikeAuth
        else { return nil }
        let identifier = IKESAIdentifier(initiatorSPI: header.initiatorSPI, responderSPI: header.responderSPI)
        guard let sa = state.ikeSAs[identifier], sa.messageIDs.responses.classify(header.messageID) == .new,
            (try? EncryptedMessage.open(bytes, keyAndSalt: sa.keys.ei)) != nil
        else { return nil }
        return (identifier, header.messageID)
    }

    /// Messages refused so far: malformed, unauthenticated, for unknown IKE SAs.
    public private(set) var droppedMessages = 0

    /// Forgets half-open exchanges older than the configured lifetime.
    public mutating func expire(now: Timestamp) {
        halfOpen = halfOpen.filter { now.nanoseconds &- $0.value.createdAt.nanoseconds < configuration.halfOpenLifetime }
    }

    // MARK: IKE_SA_INIT

    private mutating func ikeSAInit(
        _ bytes: [UInt8], header: IKEHeader, from remote: Endpoint, on local: Endpoint, now: Timestamp
    ) throws(IKEProtocolError) -> IKEOutcome {
        guard !header.isResponse, header.responderSPI == 0, header.messageID == 0 else {
            throw .malformed(.unexpectedMessage("IKE_SA_INIT that is not a first request"))
        }
        if let pending = halfOpen[header.initiatorSPI], pending.request == bytes {
            return IKEOutcome(replies: [IKEDatagram(bytes: pending.response, destination: remote, localPort: local.port)])
        }
        let message: IKEMessage
        do { message = try IKEMessage(decoding: bytes) } catch { throw .malformed(error) }
        let initiatorNonce = try Self.initiatorNonce(of: message)
        var reply = IKEHeader(
            initiatorSPI: header.initiatorSPI, responderSPI: 0, nextPayload: .none, exchangeType: .ikeSAInit,
            flags: IKEHeader.responseFlag, messageID: 0, length: 0)
        if halfOpen.count >= configuration.cookieThreshold {
            // Under load, before any costly work: only an initiator that receives at its address
            // gets past this (section 2.6).
            let expected = cookie(nonce: initiatorNonce, remote: remote, initiatorSPI: header.initiatorSPI, now: now)
            let returned = message.notifies.first { $0.type == .cookie }?.data
            guard let returned, isValidCookie(returned, nonce: initiatorNonce, remote: remote, initiatorSPI: header.initiatorSPI) else {
                cookiesSent += 1
                logger.debug("IKE_SA_INIT answered with a cookie", metadata: ["from": "\(remote)", "half_open": "\(halfOpen.count)"])
                return IKEOutcome(replies: [try plainReply(reply, [NotifyPayload(type: .cookie, data: expected).payload], to: remote, on: local)])
            }
        }
        let fromAddress = halfOpen.values.count { $0.remote.address == remote.address }
        guard fromAddress < configuration.halfOpenPerAddressLimit else {
            logger.debug("IKE_SA_INIT dropped: too many half-open exchanges from this address", metadata: ["from": "\(remote)"])
            return IKEOutcome()
        }
        let offered = try message.decode(.securityAssociation, SecurityAssociationPayload.init(body:))
        let ke = try message.decode(.keyExchange, KeyExchangePayload.init(body:))
        guard let proposal = Self.chooseIKEProposal(offered) else {
            logger.notice("IKE_SA_INIT: no acceptable proposal", metadata: ["from": "\(remote)"])
            return IKEOutcome(replies: [try plainReply(reply, [NotifyPayload(type: .noProposalChosen).payload], to: remote, on: local)])
        }
        guard ke.group == .curve25519 else {
            var data: [UInt8] = []
            data.appendBigEndian(KeyExchangeMethod.curve25519.rawValue)
            return IKEOutcome(replies: [try plainReply(reply, [NotifyPayload(type: .invalidKEPayload, data: data).payload], to: remote, on: local)])
        }
        reply.responderSPI = IKECrypto.random(UInt64.self) | 1
        let identifier = IKESAIdentifier(initiatorSPI: header.initiatorSPI, responderSPI: reply.responderSPI)
        let keyPair = IKECrypto.X25519KeyPair()
        let shared = try keyPair.sharedSecret(with: ke.data)
        let responderNonce = IKECrypto.randomBytes(32)
        let nonces = initiatorNonce + responderNonce
        let keys = try Self.ikeKeys(skeyseed: IKECrypto.prf(key: nonces, secret: shared), nonces: nonces, identifier: identifier)

        let natdSourceExpected = Self.natDetectionHash(initiatorSPI: header.initiatorSPI, responderSPI: 0, remote)
        if let claimed = message.notifies.first(where: { $0.type == .natDetectionSourceIP }), claimed.data != natdSourceExpected {
            logger.info("NAT detection: the initiator is behind a NAT (or says so); UDP encapsulation on 4500", metadata: ["from": "\(remote)"])
        }
        var chosen = proposal
        chosen.spi = []
        let payloads: [IKEPayload] = [
            SecurityAssociationPayload(proposals: [chosen]).payload,
            KeyExchangePayload(group: .curve25519, data: keyPair.publicKey).payload,
            IKEPayload(type: .nonce, body: responderNonce),
            NotifyPayload(type: .natDetectionSourceIP, data: Self.natDetectionHash(initiatorSPI: identifier.initiatorSPI, responderSPI: identifier.responderSPI, local)).payload,
            NotifyPayload(type: .natDetectionDestinationIP, data: Self.natDetectionHash(initiatorSPI: identifier.initiatorSPI, responderSPI: identifier.responderSPI, remote)).payload,
        ]
        let response: [UInt8]
        do { response = try IKEMessage(header: reply, payloads: payloads).encoded() } catch { throw .malformed(error) }
        if halfOpen.count >= configuration.halfOpenLimit, let oldest = halfOpen.min(by: { $0.value.createdAt < $1.value.createdAt }) {
            halfOpen[oldest.key] = nil
        }
        halfOpen[header.initiatorSPI] = HalfOpen(
            identifier: identifier, remote: remote, request: bytes, response: response, initiatorNonce: initiatorNonce,
            responderNonce: responderNonce, keys: keys, createdAt: now)
        // Debug only: anybody can send IKE_SA_INIT, and the log must not grow with a flood.
        logger.debug("IKE_SA_INIT answered", metadata: ["ike_sa": "\(identifier)", "from": "\(remote)"])
        return IKEOutcome(replies: [IKEDatagram(bytes: response, destination: remote, localPort: local.port)])
    }

    /// The cookie for an IKE_SA_INIT (RFC 7296 section 2.6): the secret's version, then
    /// prf(secret, Ni | IPi | SPIi). A new secret is made when the current one is older than
    /// its lifetime.
    private mutating func cookie(nonce: [UInt8], remote: Endpoint, initiatorSPI: UInt64, now: Timestamp) -> [UInt8] {
        if cookieSecret.map({ now.nanoseconds &- $0.since.nanoseconds >= configuration.cookieSecretLifetime }) ?? true {
            if let current = cookieSecret { previousCookieSecret = (current.version, current.secret) }
            cookieSecret = ((cookieSecret?.version ?? 0) &+ 1, KeyMaterial(copying: IKECrypto.randomBytes(32)), now)
        }
        return Self.cookie(version: cookieSecret!.version, secret: cookieSecret!.secret, nonce: nonce, remote: remote, initiatorSPI: initiatorSPI)
    }

    /// Whether `cookie` was made by the current or the previous secret for this initiator.
    private func isValidCookie(_ cookie: [UInt8], nonce: [UInt8], remote: Endpoint, initiatorSPI: UInt64) -> Bool {
        guard cookie.count == 36 else { return false }
        let version = cookie[0..<4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        for secret in [cookieSecret.map { ($0.version, $0.secret) }, previousCookieSecret].compactMap({ $0 }) where secret.0 == version {
            let expected = Self.cookie(version: version, secret: secret.1, nonce: nonce, remote: remote, initiatorSPI: initiatorSPI)
            return IKECrypto.constantTimeEqual(cookie, expected)
        }
        return false
    }

    private static func cookie(version: UInt32, secret: KeyMaterial, nonce: [UInt8], remote: Endpoint, initiatorSPI: UInt64) -> [UInt8] {
        var spi: [UInt8] = []
        spi.appendBigEndian(initiatorSPI)
        var cookie: [UInt8] = []
        cookie.appendBigEndian(version)
        return cookie + IKECrypto.prf(key: secret, nonce, addressBytes(remote.address), spi)
    }

    /// The initiator's nonce of IKE_SA_INIT or CREATE_CHILD_SA: 16 to 256 bytes (RFC 7296
    /// sections 2.10 and 3.9); a shorter one weakens the keys derived from it.
    static func initiatorNonce(of message: IKEMessage) throws(IKEProtocolError) -> [UInt8] {
        let nonce = try message.required(.nonce).body
        guard (16...256).contains(nonce.count) else { throw .malformed(.unexpectedMessage("nonce of \(nonce.count) bytes")) }
        return nonce
    }

    /// {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi |
    /// SPIr) (RFC 7296 section 2.14; with the new SPIs for a rekey, section 2.18).
    static func ikeKeys(skeyseed: KeyMaterial, nonces: [UInt8], identifier: IKESAIdentifier) throws(IKEProtocolError) -> IKEKeys {
        var seed = nonces
        seed.appendBigEndian(identifier.initiatorSPI)
        seed.appendBigEndian(identifier.responderSPI)
        let material = IKECrypto.prfPlus(key: skeyseed, seed: seed, count: keyLengths.reduce(0, +))
        do { return try IKEKeys(packed: material, lengths: keyLengths) } catch { throw .invalidKeyExchange("\(error)") }
    }

    /// The first IKE proposal that offers ChaCha20-Poly1305, PRF_HMAC_SHA2_256 and X25519 (and
    /// no integrity algorithm, or NONE), reduced to those transforms.
    static func chooseIKEProposal(_ offered: SecurityAssociationPayload) -> IKEProposal? {
        for proposal in offered.proposals where proposal.protocolID == IKEProposal.ike {
            guard proposal.transforms.allSatisfy({ $0.kind != nil }) else { continue }
            let integrity = proposal.transforms(.integrity)
            guard proposal.transforms(.encryption).contains(where: { $0.id == EncryptionAlgorithm.chacha20Poly1305.rawValue && $0.keyLength.map { $0 == 256 } ?? true }),
                proposal.transforms(.pseudorandomFunction).contains(where: { $0.id == PseudorandomFunction.hmacSHA2_256.rawValue }),
                proposal.transforms(.keyExchange).contains(where: { $0.id == KeyExchangeMethod.curve25519.rawValue }),
                integrity.isEmpty || integrity.contains(where: { $0.id == IntegrityAlgorithm.none.rawValue })
            else { continue }
            return IKEProposal(
                number: proposal.number, protocolID: IKEProposal.ike, spi: proposal.spi,
                transforms: [
                    IKETransform(.encryption, id: EncryptionAlgorithm.chacha20Poly1305.rawValue),
                    IKETransform(.pseudorandomFunction, id: PseudorandomFunction.hmacSHA2_256.rawValue),
                    IKETransform(.keyExchange, id: KeyExchangeMethod.curve25519.rawValue),
                ])
        }
        return nil
    }

    /// The first ESP proposal with ChaCha20-Poly1305 and without extended sequence numbers,
    /// reduced to those transforms (with X25519 when `keyExchange` is asked for: PFS on a
    /// CREATE_CHILD_SA).
    static func chooseESPProposal(_ offered: SecurityAssociationPayload, keyExchange: Bool) -> IKEProposal? {
        for proposal in offered.proposals where proposal.protocolID == IKEProposal.esp && proposal.espSPI != nil {
            guard proposal.transforms.allSatisfy({ $0.kind != nil }) else { continue }
            let groups = proposal.transforms(.keyExchange).filter { $0.id != 0 }
            guard proposal.transforms(.encryption).contains(where: { $0.id == EncryptionAlgorithm.chacha20Poly1305.rawValue && $0.keyLength.map { $0 == 256 } ?? true }),
                proposal.transforms(.extendedSequenceNumbers).contains(where: { $0.id == 0 }),
                proposal.transforms(.integrity).allSatisfy({ $0.id == 0 }),
                keyExchange ? groups.contains(where: { $0.id == KeyExchangeMethod.curve25519.rawValue }) : groups.isEmpty || proposal.transforms(.keyExchange).contains(where: { $0.id == 0 })
            else { continue }
            var transforms = [IKETransform(.encryption, id: EncryptionAlgorithm.chacha20Poly1305.rawValue)]
            if keyExchange { transforms.append(IKETransform(.keyExchange, id: KeyExchangeMethod.curve25519.rawValue)) }
            transforms.append(IKETransform(.extendedSequenceNumbers, id: 0))
            return IKEProposal(number: proposal.number, protocolID: IKEProposal.esp, spi: proposal.spi, transforms: transforms)
        }
        return nil
    }

    /// NAT_DETECTION_*_IP data: SHA-1(SPIi | SPIr | IP | port) (RFC 7296 section 2.23).
    public static func natDetectionHash(initiatorSPI: UInt64, responderSPI: UInt64, _ endpoint: Endpoint) -> [UInt8] {
        var input: [UInt8] = []
        input.appendBigEndian(initiatorSPI)
        input.appendBigEndian(responderSPI)
        input += addressBytes(endpoint.address)
        input.appendBigEndian(endpoint.port)
        return IKECrypto.sha1(input)
    }

    /// An address as on the wire: 4 bytes for IPv4, 16 for IPv6.
    static func addressBytes(_ address: IPAddress) -> [UInt8] {
        var bytes: [UInt8] = []
        if address.family == .ipv4 {
            bytes.appendBigEndian(UInt32(truncatingIfNeeded: address.low))
        } else {
            bytes.appendBigEndian(address.high)
            bytes.appendBigEndian(address.low)
        }
        return bytes
    }

    private func plainReply(_ header: IKEHeader, _ payloads: [IKEPayload], to remote: Endpoint, on local: Endpoint) throws(IKEProtocolError) -> IKEDatagram {
        do {
            return IKEDatagram(bytes: try IKEMessage(header: header, payloads: payloads).encoded(), destination: remote, localPort: local.port)
        } catch {
            throw .malformed(error)
        }
    }

    // MARK: IKE_AUTH

    /// AUTH for a pre-shared key (section 2.15): prf(prf(key, "Key Pad for IKEv2"), octets).
    private func pskAuthentication(_ octets: [UInt8]) -> [UInt8] {
        let pad = KeyMaterial(copying: IKECrypto.prf(key: configuration.preSharedKey, Array("Key Pad for IKEv2".utf8)))
        return IKECrypto.prf(key: pad, octets)
    }

    private mutating func ikeAuth(
        _ bytes: [UInt8], pending: HalfOpen, from remote: Endpoint, on local: Endpoint, state: inout GatewayState, now: Timestamp
    ) throws(IKEProtocolError) -> IKEOutcome {
        let message = try EncryptedMessage.open(bytes, keyAndSalt: pending.keys.ei)
        guard !message.header.isResponse, message.header.messageID == 1 else { throw .malformed(.unexpectedMessage("IKE_AUTH with message ID \(message.header.messageID)")) }
        let identifier = pending.identifier
        let replyHeader = IKEHeader(
            initiatorSPI: identifier.initiatorSPI, responderSPI: identifier.responderSPI, nextPayload: .none, exchangeType: .ikeAuth,
            flags: IKEHeader.responseFlag, messageID: 1, length: 0)
        let initiatorIDBody = try message.required(.identificationInitiator).body
        let initiatorID = try message.decode(.identificationInitiator, IKEIdentity.init(body:))
        let auth = try message.decode(.authentication, AuthenticationPayload.init(body:))
        let expected = pskAuthentication(pending.request + pending.responderNonce + IKECrypto.prf(key: pending.keys.pi, initiatorIDBody))
        let keyTooShort = configuration.preSharedKey.count < IKEResponderConfiguration.minimumPreSharedKeyLength
        guard !keyTooShort, initiatorID == configuration.remoteIdentity, auth.method == AuthenticationPayload.sharedKeyMIC,
            IKECrypto.constantTimeEqual(auth.data, expected)
        else {
            halfOpen[identifier.initiatorSPI] = nil
            if keyTooShort {
                logger.error(
                    "IKE_AUTH refused: the configured pre-shared key is shorter than \(IKEResponderConfiguration.minimumPreSharedKeyLength) bytes",
                    metadata: ["ike_sa": "\(identifier)"])
            } else {
                authenticationFailures += 1
                // One warning a second at most, with the count since the last: a peer that only
                // completed IKE_SA_INIT can repeat this as fast as it likes.
                let metadata: Logger.Metadata = [
                    "ike_sa": "\(identifier)", "identity": "\(initiatorID)", "failures": "\(authenticationFailures - authenticationFailuresWarned)",
                ]
                if lastAuthenticationWarning.map({ now.nanoseconds &- $0.nanoseconds >= 1_000_000_000 }) ?? true {
                    lastAuthenticationWarning = now
                    authenticationFailuresWarned = authenticationFailures
                    logger.warning("IKE_AUTH failed: wrong identity or pre-shared key", metadata: metadata)
                } else {
                    logger.debug("IKE_AUTH failed: wrong identity or pre-shared key", metadata: metadata)
                }
            }
            let reply = try EncryptedMessage.seal(header: replyHeader, payloads: [NotifyPayload(type: .authenticationFailed).payload], keyAndSalt: pending.keys.er)
            return IKEOutcome(replies: [IKEDatagram(bytes: reply, destination: remote, localPort: local.port)])
        }
        halfOpen[identifier.initiatorSPI] = nil
        var outcome = IKEOutcome()
        if message.hasNotify(.initialContact) {
            // RFC 7296 section 2.4: the peer has no other IKE SA with this gateway any more (it
            // restarted). Every peer of this responder has the one identity it accepts, so the
            // peer is told apart by its address: another peer's IKE SAs stay (with load sharing
            // a member serves many peers).
            for other in state.ikeSAs.values.filter({ !$0.isOriginalInitiator && $0.remote.address == remote.address }).map(\.identifier) {
                if let changes = try? state.deleteIKESA(other) { outcome.changes += changes }
                lastResponses[other] = nil
                logger.notice("IKE SA deleted: the peer says INITIAL_CONTACT", metadata: ["ike_sa": "\(other)", "new_ike_sa": "\(identifier)"])
            }
        }
        let fromPeer = state.ikeSAs.values.count { !$0.isOriginalInitiator && $0.remote.address == remote.address }
        guard fromPeer < configuration.maximumIKESAsPerPeerAddress else {
            logger.warning("IKE_AUTH refused: the peer holds the most IKE SAs allowed", metadata: [
                "from": "\(remote)", "ike_sas": "\(fromPeer)",
            ])
            let reply = try EncryptedMessage.seal(header: replyHeader, payloads: [NotifyPayload(type: .noAdditionalSAs).payload], keyAndSalt: pending.keys.er)
            outcome.replies = [IKEDatagram(bytes: reply, destination: remote, localPort: local.port)]
            return outcome
        }

        let responderIDBody = configuration.localIdentity.body
        let ourAuth = pskAuthentication(pending.response + pending.initiatorNonce + IKECrypto.prf(key: pending.keys.pr, responderIDBody))
        var ike: IKESA
        do {
            ike = try IKESA(
                identifier: identifier, isOriginalInitiator: false,
                local: Endpoint(address: local.address, port: local.port, udpEncapsulation: local.port == 4500),
                remote: Endpoint(address: remote.address, port: remote.port, udpEncapsulation: remote.port != 500),
                transforms: Self.ikeTransforms, keys: pending.keys,
                messageIDs: try IKEMessageIDWindows(resumingAt: 0, expecting: 2, peerWindowSize: 1, localWindowSize: 1),
                extensions: IKEExtensions(
                    messageIDSync: configuration.announceMessageIDSync && message.hasNotify(.messageIDSyncSupported),
                    replayCounterSync: configuration.announceReplayCounterSync && message.hasNotify(.replayCounterSyncSupported),
                    childSAsUseExtendedSequenceNumbers: false),
                owner: configuration.member)
        } catch {
            throw .invalidKeyExchange("\(error)")
        }
        ike.state = .established
        do { outcome.changes += try state.createIKESA(ike) } catch { throw .unknownIKESA(identifier) }
        var payloads: [IKEPayload] = [
            IKEPayload(type: .identificationResponder, body: responderIDBody),
            AuthenticationPayload(method: AuthenticationPayload.sharedKeyMIC, data: ourAuth).payload,
        ]
        payloads += childSA(
            for: message, of: identifier, nonces: pending.initiatorNonce + pending.responderNonce, keyExchange: nil,
            keyDerivationKey: pending.keys.d, state: &state, now: now, changes: &outcome.changes)
        if configuration.announceMessageIDSync { payloads.append(NotifyPayload(type: .messageIDSyncSupported).payload) }
        if configuration.announceReplayCounterSync { payloads.append(NotifyPayload(type: .replayCounterSyncSupported).payload) }
        let reply = try EncryptedMessage.seal(header: replyHeader, payloads: payloads, keyAndSalt: pending.keys.er)
        let datagram = IKEDatagram(bytes: reply, destination: remote, localPort: local.port)
        lastResponses[identifier] = (1, datagram)
        outcome.replies = [datagram]
        outcome.exchange = (identifier, 1)
        logger.notice("IKE SA established", metadata: [
            "ike_sa": "\(identifier)", "peer": "\(remote)", "identity": "\(initiatorID)",
            "message_id_sync": "\(ike.extensions.messageIDSync)", "replay_counter_sync": "\(ike.extensions.replayCounterSync)",
        ])
        return outcome
    }

    /// Negotiates the Child SA an IKE_AUTH or CREATE_CHILD_SA request asks for, installs it in
    /// `state`, and returns the payloads of the answer: SA, [KE], TSi, TSr, or the error notify
    /// that says why there is no Child SA (the IKE SA stands either way).
    private mutating func childSA(
        for message: IKEMessage, of parent: IKESAIdentifier, nonces: [UInt8], keyExchange: KeyExchangePayload?,
        keyDerivationKey: KeyMaterial, state: inout GatewayState, now: Timestamp, changes: inout [StateChange]
    ) -> [IKEPayload] {
        do throws(IKEProtocolError) {
            let offered = try message.decode(.securityAssociation, SecurityAssociationPayload.init(body:))
            let tsi = try message.decode(.trafficSelectorInitiator, TrafficSelectorPayload.init(body:))
            let tsr = try message.decode(.trafficSelectorResponder, TrafficSelectorPayload.init(body:))
            guard var proposal = Self.chooseESPProposal(offered, keyExchange: keyExchange != nil), let outboundSPI = proposal.espSPI else {
                logger.notice("Child SA: no acceptable ESP proposal", metadata: ["ike_sa": "\(parent)"])
                return [NotifyPayload(type: .noProposalChosen).payload]
            }
            let narrowed: NarrowedSelectors
            do {
                narrowed = try state.spd.narrow(initiatorSelectors: tsi.selectors, responderSelectors: tsr.selectors)
                // More selectors than a Child SA holds (and than a TS payload counts) cannot be
                // answered: as unacceptable as no intersection at all.
                guard narrowed.initiatorSelectors.count + narrowed.responderSelectors.count <= ChildSA.maximumSelectors else {
                    throw SecurityPolicyError.tooManySelectors(narrowed.initiatorSelectors.count + narrowed.responderSelectors.count)
                }
            } catch {
                logger.notice("Child SA: traffic selectors unacceptable", metadata: ["ike_sa": "\(parent)", "tsi": "\(tsi.selectors)", "tsr": "\(tsr.selectors)"])
                return [NotifyPayload(type: .tsUnacceptable).payload]
            }
            var answer: [IKEPayload] = []
            var seed = nonces
            var ourKeyExchange: KeyExchangePayload?
            if let keyExchange {
                let pair = IKECrypto.X25519KeyPair()
                let shared = try pair.sharedSecret(with: keyExchange.data)
                // KEYMAT = prf+(SK_d, g^ir (new) | Ni | Nr) with PFS (section 2.17).
                seed = shared.withUnsafeBytes { Array($0) } + nonces
                ourKeyExchange = KeyExchangePayload(group: .curve25519, data: pair.publicKey)
            }
            let keymat = IKECrypto.prfPlus(key: keyDerivationKey, seed: seed, count: 2 * IKECrypto.aeadKeyLength)
            guard let inboundSPI = freeInboundSPI(in: state, parent: parent) else {
                logger.warning("no free inbound SPI in the IKE SA's segment", metadata: ["ike_sa": "\(parent)"])
                return [NotifyPayload(type: .noAdditionalSAs).payload]
            }
            let child: ChildSA
            do {
                child = try ChildSA(
                    inboundSPI: inboundSPI, outboundSPI: outboundSPI,
                    localSelectors: narrowed.responderSelectors, remoteSelectors: narrowed.initiatorSelectors,
                    transforms: ChildSATransforms(
                        encryption: .chacha20Poly1305, integrity: .none, keyExchange: keyExchange == nil ? .none : .curve25519),
                    // The initiator-to-responder key comes first in KEYMAT (section 2.17).
                    inboundKeys: ChildSAKeys(encryption: keymat.extracting(0..<IKECrypto.aeadKeyLength)),
                    outboundKeys: ChildSAKeys(encryption: keymat.extracting(IKECrypto.aeadKeyLength..<2 * IKECrypto.aeadKeyLength)),
                    outboundCounter: try OutboundSequenceCounter(extendedSequenceNumbers: false),
                    inboundWindow: try ReplayWindow(size: configuration.replayWindowSize, extendedSequenceNumbers: false),
                    lifetime: try ChildSALifetime(
                        soft: LifetimeLimits(seconds: configuration.childSASoftLifetimeSeconds),
                        hard: LifetimeLimits(seconds: configuration.childSAHardLifetimeSeconds), installedAt: now),
                    requestID: inboundSPI, policy: narrowed.policy, parent: parent, owner: configuration.member)
                changes += try state.createChildSA(child)
            } catch {
                logger.error("Child SA could not be installed", metadata: ["ike_sa": "\(parent)", "reason": "\(error)"])
                return [NotifyPayload(type: .noProposalChosen).payload]
            }
            var spi: [UInt8] = []
            spi.appendBigEndian(inboundSPI)
            proposal.spi = spi
            answer.append(SecurityAssociationPayload(proposals: [proposal]).payload)
            if let ourKeyExchange { answer.append(ourKeyExchange.payload) }
            answer.append(IKEPayload(type: .trafficSelectorInitiator, body: TrafficSelectorPayload(selectors: narrowed.initiatorSelectors).body))
            answer.append(IKEPayload(type: .trafficSelectorResponder, body: TrafficSelectorPayload(selectors: narrowed.responderSelectors).body))
            logger.notice("Child SA installed", metadata: [
                "ike_sa": "\(parent)", "inbound_spi": "\(inboundSPI.paddedHexDigits)", "outbound_spi": "\(outboundSPI.paddedHexDigits)",
                "local_ts": "\(narrowed.responderSelectors)", "remote_ts": "\(narrowed.initiatorSelectors)",
            ])
            return answer
        } catch {
            logger.notice("Child SA refused", metadata: ["ike_sa": "\(parent)", "reason": "\(error)"])
            if case .invalidKeyExchange = error { return [NotifyPayload(type: .invalidKEPayload).payload] }
            return [NotifyPayload(type: .invalidSyntax).payload]
        }
    }

    /// A random inbound SPI above the reserved range that no Child SA uses; with a layout, in
    /// the segment of `parent` and this member's field (nil when that part of the space is full).
    func freeInboundSPI(in state: GatewayState, parent: IKESAIdentifier) -> UInt32? {
        guard let layout = configuration.spiLayout, let ike = state.ikeSAs[parent] else {
            while true {
                let spi = IKECrypto.random(UInt32.self)
                if spi > 255, state.slot(forInboundSPI: spi) == nil { return spi }
            }
        }
        var random = IKECrypto.Random()
        return try? layout.allocate(segment: layout.segments.segment(of: ike), member: configuration.member, using: &random) {
            state.slot(forInboundSPI: $0) != nil
        }
    }

    // MARK: CREATE_CHILD_SA, INFORMATIONAL

    /// The answer to a request within an IKE SA, before it is sealed.
    struct RequestAnswer {
        var payloads: [IKEPayload] = []
        var changes: [StateChange] = []
        /// The request deleted the IKE SA: forget it once the (empty) response is sealed.
        var deletesIKESA = false
    }

    private mutating func createChildSA(
        _ message: IKEMessage, of sa: IKESA, state: inout GatewayState, now: Timestamp
    ) throws(IKEProtocolError) -> RequestAnswer {
        var answer = RequestAnswer()
        let offered = try message.decode(.securityAssociation, SecurityAssociationPayload.init(body:))
        if offered.proposals.contains(where: { $0.protocolID == IKEProposal.ike }) {
            return try rekeyIKESA(message, offered: offered, of: sa, state: &state)
        }
        let initiatorNonce = try Self.initiatorNonce(of: message)
        let isRekey = message.notifies.contains { $0.type == .rekeySA }
        guard sa.childSAs.count < configuration.maximumChildSAsPerIKESA * (isRekey ? 2 : 1) else {
            logger.notice("CREATE_CHILD_SA refused: the IKE SA holds the most Child SAs allowed", metadata: [
                "ike_sa": "\(sa.identifier)", "child_sas": "\(sa.childSAs.count)",
            ])
            answer.payloads = [NotifyPayload(type: .noAdditionalSAs).payload]
            return answer
        }
        let responderNonce = IKECrypto.randomBytes(32)
        var keyExchange: KeyExchangePayload?
        if let ke = message.first(.keyExchange) {
            do { keyExchange = try KeyExchangePayload(body: ke.body) } catch { throw .malformed(error) }
            guard keyExchange?.group == .curve25519 else {
                var data: [UInt8] = []
                data.appendBigEndian(KeyExchangeMethod.curve25519.rawValue)
                answer.payloads = [NotifyPayload(type: .invalidKEPayload, data: data).payload]
                return answer
            }
        }
        answer.payloads = childSA(
            for: message, of: sa.identifier, nonces: initiatorNonce + responderNonce, keyExchange: keyExchange,
            keyDerivationKey: sa.keys.d, state: &state, now: now, changes: &answer.changes)
        guard answer.payloads.first?.type == .securityAssociation else { return answer }
        // SA, Nr, [KEr], TSi, TSr (section 1.3.1).
        answer.payloads.insert(IKEPayload(type: .nonce, body: responderNonce), at: 1)
        let rekeyed = message.notifies.first { $0.type == .rekeySA && $0.protocolID == IKEProposal.esp && $0.spi.count == 4 }
        if let rekeyed {
            let spi = rekeyed.spi.reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            let old = state.childSA(of: sa.identifier, outboundSPI: spi)
            logger.notice("Child SA rekeyed; the old one stays until the peer deletes it", metadata: [
                "ike_sa": "\(sa.identifier)", "old_inbound_spi": "\(old.map { $0.inboundSPI.paddedHexDigits } ?? "unknown")",
            ])
        }
        return answer
    }

    /// CREATE_CHILD_SA rekeying the IKE SA (RFC 7296 sections 1.3.2 and 2.18): SA (the new
    /// initiator SPI in the proposal), Ni, KEi; answered with SA (the new responder SPI), Nr,
    /// KEr. The new IKE SA's keys come from SK_d of the old one; every Child SA moves to it; the
    /// old one stays until the peer deletes it. The changes go to the standbys before the answer
    /// does (synchronous replication), so a member that takes over knows the new SPIs.
    private mutating func rekeyIKESA(
        _ message: IKEMessage, offered: SecurityAssociationPayload, of sa: IKESA, state: inout GatewayState
    ) throws(IKEProtocolError) -> RequestAnswer {
        var answer = RequestAnswer()
        guard var proposal = Self.chooseIKEProposal(offered), proposal.spi.count == 8 else {
            logger.notice("IKE SA rekey: no acceptable proposal", metadata: ["ike_sa": "\(sa.identifier)"])
            answer.payloads = [NotifyPayload(type: .noProposalChosen).payload]
            return answer
        }
        let initiatorNonce = try Self.initiatorNonce(of: message)
        let ke = try message.decode(.keyExchange, KeyExchangePayload.init(body:))
        guard ke.group == .curve25519 else {
            var data: [UInt8] = []
            data.appendBigEndian(KeyExchangeMethod.curve25519.rawValue)
            answer.payloads = [NotifyPayload(type: .invalidKEPayload, data: data).payload]
            return answer
        }
        let initiatorSPI = proposal.spi.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        var identifier: IKESAIdentifier
        repeat {
            identifier = IKESAIdentifier(initiatorSPI: initiatorSPI, responderSPI: IKECrypto.random(UInt64.self) | 1)
        } while state.ikeSAs.contains(identifier)
        let keyPair = IKECrypto.X25519KeyPair()
        let shared = try keyPair.sharedSecret(with: ke.data)
        let responderNonce = IKECrypto.randomBytes(32)
        // SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) (section 2.18).
        let skeyseed = KeyMaterial(copying: IKECrypto.prf(key: sa.keys.d, shared.withUnsafeBytes { Array($0) }, initiatorNonce, responderNonce))
        let keys = try Self.ikeKeys(skeyseed: skeyseed, nonces: initiatorNonce + responderNonce, identifier: identifier)
        let new: IKESA
        do {
            var extensions = sa.extensions
            extensions.messageIDSyncAnswered = false
            var fresh = try IKESA(
                identifier: identifier, isOriginalInitiator: false, local: sa.local, remote: sa.remote, transforms: Self.ikeTransforms,
                keys: keys, lifetime: sa.lifetime,
                // The new IKE SA's message IDs start at 0 both ways (section 2.18).
                messageIDs: IKEMessageIDWindows(),
                extensions: extensions, owner: configuration.member)
            fresh.state = .established
            new = fresh
        } catch {
            throw .invalidKeyExchange("\(error)")
        }
        do { answer.changes = try state.rekeyIKESA(sa.identifier, to: new) } catch { throw .unknownIKESA(sa.identifier) }
        proposal.spi = []
        proposal.spi.appendBigEndian(identifier.responderSPI)
        answer.payloads = [
            SecurityAssociationPayload(proposals: [proposal]).payload,
            IKEPayload(type: .nonce, body: responderNonce),
            KeyExchangePayload(group: .curve25519, data: keyPair.publicKey).payload,
        ]
        logger.notice("IKE SA rekeyed; the old one stays until the peer deletes it", metadata: [
            "old_ike_sa": "\(sa.identifier)", "ike_sa": "\(identifier)", "child_sas": "\(sa.childSAs.count)",
        ])
        return answer
    }

    /// Inbound SPIs of the Child SAs of `sa`, by outbound SPI.
    private static func childSAsByOutboundSPI(of sa: IKESA, in state: GatewayState) -> [UInt32: UInt32] {
        var table: [UInt32: UInt32] = [:]
        table.reserveCapacity(sa.childSAs.count)
        for inboundSPI in sa.childSAs {
            if let outboundSPI = state.childSA(inboundSPI: inboundSPI)?.outboundSPI { table[outboundSPI] = inboundSPI }
        }
        return table
    }

    private mutating func informational(_ message: IKEMessage, of sa: IKESA, state: inout GatewayState) throws(IKEProtocolError) -> RequestAnswer {
        var answer = RequestAnswer()
        var deleted: [UInt32] = []
        // The IKE SA's own Child SAs by the SPI the peer names them by (their outbound SPI),
        // made once: a Delete may name thousands of SPIs (16,000 fit a message), and an IKE SA
        // may hold thousands of Child SAs, so no lookup may walk either list.
        var own: [UInt32: UInt32]?
        for payload in message.payloads where payload.type == .delete {
            let delete: DeletePayload
            do { delete = try DeletePayload(body: payload.body) } catch { throw .malformed(error) }
            if delete.protocolID == IKEProposal.ike {
                answer.deletesIKESA = true
                continue
            }
            let byOutboundSPI = own ?? Self.childSAsByOutboundSPI(of: sa, in: state)
            own = byOutboundSPI
            for spi in delete.spis {
                guard let inboundSPI = byOutboundSPI[spi], let changes = try? state.deleteChildSA(inboundSPI: inboundSPI) else { continue }
                answer.changes += changes
                deleted.append(inboundSPI)
                logger.notice("Child SA deleted by the peer", metadata: ["ike_sa": "\(sa.identifier)", "inbound_spi": "\(inboundSPI.paddedHexDigits)"])
            }
        }
        if message.payloads.isEmpty {
            logger.info("liveness check answered", metadata: ["ike_sa": "\(sa.identifier)", "message_id": "\(message.header.messageID)"])
        }
        // Deleting the IKE SA deletes its Child SAs too; the response is empty then.
        if !deleted.isEmpty, !answer.deletesIKESA { answer.payloads = [DeletePayload(protocolID: IKEProposal.esp, spis: deleted).payload] }
        return answer
    }

    /// Seals the answer to a request, records the request as processed in the IKE SA's
    /// message-ID window, and keeps the response for retransmissions.
    private mutating func finish(
        _ answer: RequestAnswer, of request: IKEHeader, sa: IKESA, state: inout GatewayState
    ) throws(IKEProtocolError) -> IKEOutcome {
        let replyHeader = IKEHeader(
            initiatorSPI: sa.identifier.initiatorSPI, responderSPI: sa.identifier.responderSPI, nextPayload: .none,
            exchangeType: request.exchangeType, flags: IKEHeader.responseFlag, messageID: request.messageID, length: 0)
        // Responses from the original responder are protected with SK_er.
        let bytes = try EncryptedMessage.seal(header: replyHeader, payloads: answer.payloads, keyAndSalt: sa.keys.er)
        let datagram = IKEDatagram(bytes: bytes, destination: sa.remote, localPort: sa.local.port)
        var outcome = IKEOutcome(replies: [datagram], changes: answer.changes, exchange: (sa.identifier, request.messageID))
        if answer.deletesIKESA {
            // Its Child SAs go with it (GatewayState.deleteIKESA deletes them first).
            if let changes = try? state.deleteIKESA(sa.identifier) { outcome.changes += changes }
            lastResponses[sa.identifier] = nil
            messageIDSyncs[sa.identifier] = nil
            logger.notice("IKE SA deleted by the peer", metadata: ["ike_sa": "\(sa.identifier)"])
            return outcome
        }
        do {
            outcome.changes += try state.updateMessageIDs(of: sa.identifier) { windows in
                try? windows.responses.recordProcessed(request.messageID)
            }
        } catch {
            throw .unknownIKESA(sa.identifier)
        }
        lastResponses[sa.identifier] = (request.messageID, datagram)
        return outcome
    }

    // MARK: RFC 6311

    /// Starts an RFC 6311 message-ID sync for an IKE SA this member has just taken over: an
    /// INFORMATIONAL request with Message ID 0 carrying IKEV2_MESSAGE_ID_SYNC (M1 above any ID
    /// the failed member may have used, P1 the next request expected from the peer). Throws
    /// when the IKE SA is unknown or did not negotiate RFC 6311, when the peer already answered
    /// a sync on it (`IKEExtensions.messageIDSyncAnswered`), or a sync already started.
    public mutating func startMessageIDSync(
        of identifier: IKESAIdentifier, state: GatewayState, replayCounterDelta: UInt64? = nil
    ) throws(IKEProtocolError) -> IKEDatagram {
        guard let sa = state.ikeSAs[identifier] else { throw .unknownIKESA(identifier) }
        guard sa.extensions.messageIDSync else { throw .malformed(.unexpectedMessage("RFC 6311 not negotiated on \(identifier)")) }
        guard !sa.extensions.messageIDSyncAnswered else { throw .messageIDSyncAlreadyAnswered(identifier) }
        var initiator = messageIDSyncs[identifier] ?? MessageIDSyncInitiator()
        let request: MessageIDSyncNotification
        do { request = try initiator.start(windows: sa.messageIDs, nonce: IKECrypto.random(UInt32.self)) } catch {
            throw .malformed(.unexpectedMessage("message-ID sync: \(error)"))
        }
        var replayCounter: ReplayCounterSyncNotification?
        if let replayCounterDelta, sa.extensions.replayCounterSync {
            replayCounter = try? ReplayCounterSyncNotification(delta: replayCounterDelta, extendedSequenceNumbers: sa.extensions.childSAsUseExtendedSequenceNumbers)
        }
        let plain = IKEMessage.messageIDSync(ikeSA: identifier, isOriginalInitiator: false, isResponse: false, sync: request, replayCounter: replayCounter)
        // Messages from the original responder are protected with SK_er, requests included.
        let bytes = try EncryptedMessage.seal(header: plain.header, payloads: plain.payloads, keyAndSalt: sa.keys.er)
        messageIDSyncs[identifier] = initiator
        logger.notice("RFC 6311 message-ID sync sent", metadata: [
            "ike_sa": "\(identifier)", "m1": "\(request.expectedSendRequestID)", "p1": "\(request.expectedReceiveRequestID)",
        ])
        return IKEDatagram(bytes: bytes, destination: sa.remote, localPort: sa.local.port)
    }

    /// Starts a new failover for RFC 6311's purposes: every IKE SA may be synced once again
    /// (section 7 allows one sync per IKE SA per failover).
    public mutating func forgetMessageIDSyncs() { messageIDSyncs = [:] }

    /// Whether a message-ID sync of `identifier` awaits its answer.
    public func isAwaitingMessageIDSync(_ identifier: IKESAIdentifier) -> Bool {
        messageIDSyncs[identifier]?.isAwaitingResponse ?? false
    }

    private mutating func response(_ message: IKEMessage, of sa: IKESA, state: inout GatewayState) throws(IKEProtocolError) -> IKEOutcome {
        guard message.header.exchangeType == .informational, message.header.messageID == 0,
            let notify = message.notifies.first(where: { $0.type == .messageIDSync }), var initiator = messageIDSyncs[sa.identifier]
        else {
            logger.info("response to no request of ours: dropped", metadata: ["ike_sa": "\(sa.identifier)", "message_id": "\(message.header.messageID)"])
            return IKEOutcome()
        }
        let answer: MessageIDSyncNotification
        do { answer = try MessageIDSyncNotification(notify) } catch { throw .malformed(error) }
        let adopted: IKEMessageIDWindows
        do { adopted = try initiator.receive(answer, windows: sa.messageIDs) } catch {
            logger.warning("message-ID sync answer refused", metadata: ["ike_sa": "\(sa.identifier)", "reason": "\(error)"])
            return IKEOutcome()
        }
        messageIDSyncs[sa.identifier] = initiator
        var outcome = IKEOutcome()
        do {
            outcome.changes = try state.updateIKESA(sa.identifier) {
                $0.messageIDs = adopted
                $0.extensions.messageIDSyncAnswered = true
            }
        } catch {
            throw .unknownIKESA(sa.identifier)
        }
        outcome.messageIDSyncCompleted = sa.identifier
        logger.notice("RFC 6311 message-ID sync answered by the peer", metadata: [
            "ike_sa": "\(sa.identifier)", "m2": "\(answer.expectedSendRequestID)", "p2": "\(answer.expectedReceiveRequestID)",
            "next_request_id": "\(adopted.requests.nextMessageID)", "next_expected_request_id": "\(adopted.responses.nextExpectedMessageID)",
        ])
        return outcome
    }
}
