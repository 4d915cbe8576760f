import CSodium
import IPsecHACore
import IPsecHASync
import Testing

/// The sealing described in `Docs/SyncProtocol.md`, computed here directly with libsodium,
/// gives the same bytes as the channel: an independent implementation following the document
/// interoperates.
@Suite("Sealing as documented")
struct SealingKnownAnswerTests {
    @Test func datagramMatchesTheDocumentedConstruction() throws {
        let clusterKey = (0..<32).map { UInt8($0) }
        var channel = try SyncChannel(
            configuration: SyncChannelConfiguration(
                clusterID: 0x0102_0304, member: ClusterMemberID(rawValue: 1), epoch: 7, key: try ChannelKey(bytes: clusterKey),
                peers: [ClusterMemberID(rawValue: 2)]))
        let record = SyncRecord.hello(epoch: 7, capabilities: 0, needsResync: false)
        let sent = try channel.send([record], to: ClusterMemberID(rawValue: 2), now: Timestamp(nanoseconds: 1))
        guard case .transmit(_, let datagram) = try #require(sent.actions.first) else {
            Issue.record("no datagram")
            return
        }

        // Header: magic, version 1, flags sealed, cluster, sender 1, receiver 2, epoch 7, packet 1, reliable 0.
        let header: [UInt8] =
            [0x49, 0x48, 0x01, 0x01, 0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x07]
            + [0, 0, 0, 0, 0, 0, 0, 1] + [0, 0, 0, 0, 0, 0, 0, 0]
        // Direction key: BLAKE2b KDF, subkey id = epoch << 32 | sender << 16 | receiver, context "IKEHASYN".
        var directionKey = [UInt8](repeating: 0, count: 32)
        let context: [CChar] = Array("IKEHASYN".utf8CString.prefix(8))
        #expect(crypto_kdf_derive_from_key(&directionKey, 32, UInt64(7) << 32 | 1 << 16 | 2, context, clusterKey) == 0)
        // Nonce: sender (2), receiver (2), packet number (8).
        let nonce: [UInt8] = [0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1]
        // Payload: the record, type 0001, length 9, epoch, capabilities, needs resync.
        let payload: [UInt8] = [0x00, 0x01, 0x00, 0x09, 0, 0, 0, 7, 0, 0, 0, 0, 0]
        var sealed = [UInt8](repeating: 0, count: payload.count + 16)
        var sealedLength: UInt64 = 0
        _ = crypto_aead_chacha20poly1305_ietf_encrypt(
            &sealed, &sealedLength, payload, UInt64(payload.count), header, UInt64(header.count), nil, nonce, directionKey)
        #expect(datagram == header + sealed)
    }
}
