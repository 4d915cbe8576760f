import CSodium
import IPsecHACore
import IPsecHASync
import Testing

/// The sealing described in `Docs/SyncProtocol.md`, computed here directly with libsodium,
/// gives the same bytes as the channel: an independent implementation following the document
/// interoperates.
@Suite("Sealing as documented")
struct SealingKnownAnswerTests {
    static let clusterKey = (0..<32).map { UInt8($0) }
    static let senderIncarnation = ChannelIncarnation(high: 0x1111_1111_1111_1111, low: 0x2222_2222_2222_2222)!
    static let receiverIncarnation = ChannelIncarnation(high: 0x3333_3333_3333_3333, low: 0x4444_4444_4444_4444)!

    func bytes(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (56 - 8 * $0)) } }

    /// Direction key: BLAKE2b-256 keyed with the cluster key over "IKEHA-SYNCH-v2", cluster ID,
    /// sender, receiver, sender incarnation, receiver incarnation (zero for a handshake).
    func directionKey(receiverIncarnation: ChannelIncarnation?) -> [UInt8] {
        let receiver = receiverIncarnation.map { bytes($0.high) + bytes($0.low) } ?? [UInt8](repeating: 0, count: 16)
        let input =
            Array("IKEHA-SYNCH-v2".utf8) + [0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x00, 0x02]
            + bytes(Self.senderIncarnation.high) + bytes(Self.senderIncarnation.low) + receiver
        var key = [UInt8](repeating: 0, count: 32)
        #expect(crypto_generichash(&key, 32, input, UInt64(input.count), Self.clusterKey, 32) == 0)
        return key
    }

    func seal(header: [UInt8], payload: [UInt8], key: [UInt8], packetNumber: UInt8) -> [UInt8] {
        // Nonce: sender (2), receiver (2), packet number (8).
        let nonce: [UInt8] = [0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, packetNumber]
        var sealed = [UInt8](repeating: 0, count: payload.count + 16)
        var sealedLength: UInt64 = 0
        _ = crypto_aead_chacha20poly1305_ietf_encrypt(
            &sealed, &sealedLength, payload, UInt64(payload.count), header, UInt64(header.count), nil, nonce, key)
        return header + sealed
    }

    @Test func handshakeAndDataMatchTheDocumentedConstruction() throws {
        var configuration = SyncChannelConfiguration(
            clusterID: 0x0102_0304, member: ClusterMemberID(rawValue: 1), epoch: 7, key: try ChannelKey(bytes: Self.clusterKey),
            peers: [ClusterMemberID(rawValue: 2)])
        configuration.incarnation = Self.senderIncarnation
        var channel = try SyncChannel(configuration: configuration)
        let incarnationBytes = bytes(Self.senderIncarnation.high) + bytes(Self.senderIncarnation.low)

        // 1. The first tick sends a handshake: flags sealed | handshake, packet number 1,
        // payload challenge 0 and nothing heard yet.
        guard case .transmit(_, let handshake)? = channel.tick(now: Timestamp(nanoseconds: 1)).first else {
            Issue.record("no handshake")
            return
        }
        let handshakeHeader: [UInt8] =
            [0x49, 0x48, 0x02, 0x05, 0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x07] + incarnationBytes
            + bytes(1) + bytes(0)
        #expect(
            handshake
                == seal(
                    header: handshakeHeader, payload: [UInt8](repeating: 0, count: 32), key: directionKey(receiverIncarnation: nil),
                    packetNumber: 1))

        // 2. The peer answers, echoing challenge 0 to this incarnation: the channel takes the
        // peer's incarnation and answers (packet number 2) with its next challenge, 1, and the
        // peer's challenge 9 echoed.
        let answerHeader: [UInt8] =
            [0x49, 0x48, 0x02, 0x05, 0x01, 0x02, 0x03, 0x04, 0x00, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x03]
            + bytes(Self.receiverIncarnation.high) + bytes(Self.receiverIncarnation.low) + bytes(1) + bytes(0)
        let answerPayload = bytes(9) + incarnationBytes + bytes(0)
        var peerKey = [UInt8](repeating: 0, count: 32)
        let peerInput =
            Array("IKEHA-SYNCH-v2".utf8) + [0x01, 0x02, 0x03, 0x04, 0x00, 0x02, 0x00, 0x01]
            + bytes(Self.receiverIncarnation.high) + bytes(Self.receiverIncarnation.low) + [UInt8](repeating: 0, count: 16)
        #expect(crypto_generichash(&peerKey, 32, peerInput, UInt64(peerInput.count), Self.clusterKey, 32) == 0)
        var answer = [UInt8](repeating: 0, count: answerPayload.count + 16)
        var length: UInt64 = 0
        _ = crypto_aead_chacha20poly1305_ietf_encrypt(
            &answer, &length, answerPayload, UInt64(answerPayload.count), answerHeader, UInt64(answerHeader.count), nil,
            [0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1], peerKey)
        let actions = channel.receive(answerHeader + answer, now: Timestamp(nanoseconds: 2))
        #expect(actions.contains(.peerRestarted(ClusterMemberID(rawValue: 2), epoch: 3)))
        #expect(channel.incarnation(of: ClusterMemberID(rawValue: 2)) == Self.receiverIncarnation)
        let replyHeader: [UInt8] =
            [0x49, 0x48, 0x02, 0x05, 0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x07] + incarnationBytes
            + bytes(2) + bytes(0)
        let replyPayload = bytes(1) + bytes(Self.receiverIncarnation.high) + bytes(Self.receiverIncarnation.low) + bytes(9)
        #expect(
            actions.contains(
                .transmit(
                    to: ClusterMemberID(rawValue: 2),
                    datagram: seal(header: replyHeader, payload: replyPayload, key: directionKey(receiverIncarnation: nil), packetNumber: 2))))

        // 3. Data: a hello record (type 0001, length 9) and the protocol versions beside it (type
        // 0020: 2...4) under the key bound to both incarnations, packet number 3, flags sealed.
        let record = SyncRecord.hello(epoch: 7, capabilities: 0, needsResync: false)
        let sent = try channel.send([record], to: ClusterMemberID(rawValue: 2), now: Timestamp(nanoseconds: 3))
        let dataHeader: [UInt8] =
            [0x49, 0x48, 0x02, 0x01, 0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x07] + incarnationBytes
            + bytes(3) + bytes(0)
        let payload: [UInt8] = [0x00, 0x01, 0x00, 0x09, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0x00, 0x20, 0x00, 0x02, 0x02, 0x04]
        #expect(
            sent.actions
                == [
                    .transmit(
                        to: ClusterMemberID(rawValue: 2),
                        datagram: seal(
                            header: dataHeader, payload: payload, key: directionKey(receiverIncarnation: Self.receiverIncarnation),
                            packetNumber: 3))
                ])
    }

    /// The same first handshake on a cluster configured for AES-256-GCM: the flag 0x08 in the
    /// header, the direction key under the label "IKEHA-SYNCG-v2", AES-256-GCM with the same
    /// nonce and additional data.
    @Test(.enabled(if: SyncChannelCipher.aes256GCM.isAvailable, "needs a CPU with AES instructions (AES-NI and CLMUL)"))
    func anAES256GCMHandshakeMatchesTheDocumentedConstruction() throws {
        var configuration = SyncChannelConfiguration(
            clusterID: 0x0102_0304, member: ClusterMemberID(rawValue: 1), epoch: 7, key: try ChannelKey(bytes: Self.clusterKey),
            peers: [ClusterMemberID(rawValue: 2)])
        configuration.incarnation = Self.senderIncarnation
        configuration.cipher = .aes256GCM
        var channel = try SyncChannel(configuration: configuration)
        guard case .transmit(_, let handshake)? = channel.tick(now: Timestamp(nanoseconds: 1)).first else {
            Issue.record("no handshake")
            return
        }
        let incarnation = bytes(Self.senderIncarnation.high) + bytes(Self.senderIncarnation.low)
        let header: [UInt8] =
            [0x49, 0x48, 0x02, 0x0D, 0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x07] + incarnation + bytes(1) + bytes(0)
        let input = Array("IKEHA-SYNCG-v2".utf8) + [0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x00, 0x02] + incarnation + [UInt8](repeating: 0, count: 16)
        var key = [UInt8](repeating: 0, count: 32)
        #expect(crypto_generichash(&key, 32, input, UInt64(input.count), Self.clusterKey, 32) == 0)
        let payload = [UInt8](repeating: 0, count: 32)
        var sealed = [UInt8](repeating: 0, count: payload.count + 16)
        var length: UInt64 = 0
        _ = crypto_aead_aes256gcm_encrypt(
            &sealed, &length, payload, UInt64(payload.count), header, UInt64(header.count), nil, [0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1], key)
        #expect(handshake == header + sealed)
    }
}
