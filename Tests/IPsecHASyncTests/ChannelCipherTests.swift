import IPsecHACore
@testable import IPsecHASync
import Testing

/// The two AEADs of the synch channel: known answers from their specifications, a cluster on
/// each, and members configured apart refusing each other's datagrams with a typed error.
@Suite("Synch channel ciphers: ChaCha20-Poly1305 and AES-256-GCM")
struct ChannelCipherTests {
    static func bytes(_ hex: String) -> [UInt8] {
        let digits = Array(hex.utf8)
        return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(decoding: digits[$0..<$0 + 2], as: UTF8.self), radix: 16)! }
    }

    static func hex(_ bytes: some Sequence<UInt8>) -> String {
        bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }

    /// Seals with the channel's primitive, checks the result, and that it opens, and that a
    /// flipped bit or other additional data does not.
    static func expectKnownAnswer(
        _ cipher: SyncChannelCipher, key: String, nonce: String, aad: String, plaintext: [UInt8], sealed expected: String
    ) {
        let key = bytes(key), nonce = bytes(nonce), aad = bytes(aad)
        var sealed = [UInt8](repeating: 0, count: plaintext.count + SodiumPrimitives.aeadTagLength)
        sealed.withUnsafeMutableBytes { output in
            plaintext.withUnsafeBytes { plain in
                aad.withUnsafeBytes { SodiumPrimitives.seal(into: output.baseAddress!, plaintext: plain, aad: $0, nonce: nonce, key: key, cipher: cipher) }
            }
        }
        #expect(hex(sealed) == expected)
        func opens(_ sealed: [UInt8], _ aad: [UInt8]) -> [UInt8]? {
            var opened = [UInt8](repeating: 0, count: sealed.count - SodiumPrimitives.aeadTagLength + 1)
            let verified = opened.withUnsafeMutableBytes { output in
                sealed.withUnsafeBytes { sealed in
                    aad.withUnsafeBytes { SodiumPrimitives.open(into: output.baseAddress, sealed: sealed, aad: $0, nonce: nonce, key: key, cipher: cipher) }
                }
            }
            return verified ? Array(opened.dropLast()) : nil
        }
        #expect(opens(sealed, aad) == plaintext)
        var tampered = sealed
        tampered[5] ^= 1
        #expect(opens(tampered, aad) == nil)
        #expect(opens(sealed, aad + [0]) == nil)
    }

    /// RFC 8439 section 2.8.2.
    @Test func chacha20Poly1305KnownAnswer() {
        let plaintext = Array("Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".utf8)
        Self.expectKnownAnswer(
            .chacha20Poly1305, key: "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f", nonce: "070000004041424344454647",
            aad: "50515253c0c1c2c3c4c5c6c7", plaintext: plaintext,
            sealed: "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b"
                + "1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
                + "3ff4def08e4b7a9de576d26586cec64b6116" + "1ae10b594f09e26a7e902ecbd0600691")
    }

    /// The GCM specification's test case 16 (McGrew and Viega): AES-256, a 96-bit IV, 20 bytes
    /// of additional data, a partial last block.
    @Test(.enabled(if: SyncChannelCipher.aes256GCM.isAvailable, "needs a CPU with AES instructions (AES-NI and CLMUL)"))
    func aes256GCMKnownAnswer() {
        Self.expectKnownAnswer(
            .aes256GCM, key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", nonce: "cafebabefacedbaddecaf888",
            aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            plaintext: Self.bytes(
                "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"),
            sealed: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
                + "76fc6ece0f4e1768cddf8853bb2d551b")
    }

    static func channels(_ first: SyncChannelCipher, _ second: SyncChannelCipher) throws -> (SyncChannel, SyncChannel) {
        let key = try ChannelKey.generate()
        let one = ClusterMemberID(rawValue: 1), two = ClusterMemberID(rawValue: 2)
        var a = SyncChannelConfiguration(clusterID: 5, member: one, epoch: 1, key: key, peers: [two])
        a.cipher = first
        var b = SyncChannelConfiguration(clusterID: 5, member: two, epoch: 1, key: key, peers: [one])
        b.cipher = second
        return (try SyncChannel(configuration: a), try SyncChannel(configuration: b))
    }

    @Test(
        .enabled(if: SyncChannelCipher.aes256GCM.isAvailable, "needs a CPU with AES instructions (AES-NI and CLMUL)"),
        arguments: SyncChannelCipher.allCases)
    func aClusterOnEitherCipherReplicates(cipher: SyncChannelCipher) throws {
        var (a, b) = try Self.channels(cipher, cipher)
        let now = establish(&a, &b)
        #expect(a.isEstablished(with: b.configuration.member) && b.isEstablished(with: a.configuration.member))
        let hello = SyncRecord.hello(epoch: 3, capabilities: 0, needsResync: false)
        let sent = try a.send([hello], to: b.configuration.member, now: now).actions
        let datagrams = sent.compactMap { if case .transmit(_, let datagram) = $0 { datagram } else { nil } }
        #expect(!datagrams.isEmpty)
        for datagram in datagrams {
            #expect(datagram[3] & DatagramHeader.sealedFlag != 0)
            #expect((datagram[3] & DatagramHeader.aes256GCMFlag != 0) == (cipher == .aes256GCM))
            let delivered = b.receive(datagram, now: now).contains { if case .deliver(_, let records) = $0 { records == [hello] } else { false } }
            #expect(delivered)
        }
    }

    /// Members configured with different ciphers never establish: each drops the other's
    /// datagrams with a typed error (counted, logged once), without trying to open them; and a
    /// ChaCha20-Poly1305 datagram relabelled as AES-256-GCM does not open (the direction keys
    /// differ per cipher, and so does the algorithm).
    @Test(.enabled(if: SyncChannelCipher.aes256GCM.isAvailable, "needs a CPU with AES instructions (AES-NI and CLMUL)"))
    func membersConfiguredApartRefuseEachOther() throws {
        var (a, b) = try Self.channels(.chacha20Poly1305, .aes256GCM)
        let now = Timestamp(nanoseconds: 1)
        let fromA = a.tick(now: now).compactMap { if case .transmit(_, let datagram) = $0 { datagram } else { nil } }
        let handshake = try #require(fromA.first)
        #expect(b.receive(handshake, now: now) == [.dropped(.security(.cipherMismatch(.chacha20Poly1305)))])
        #expect(b.statistics.cipherMismatches == 1)
        var relabelled = handshake
        relabelled[3] |= DatagramHeader.aes256GCMFlag
        #expect(b.receive(relabelled, now: now) == [.dropped(.security(.authenticationFailed))])
        _ = establish(&a, &b)
        #expect(!a.isEstablished(with: b.configuration.member) && !b.isEstablished(with: a.configuration.member))
    }

    /// The sealer keeps the direction key it used last in front of its table: a key comes
    /// back for its own context only, whatever was asked before it.
    @Test func directionKeysComeBackForTheirOwnContextOnly() throws {
        let clusterKey = try ChannelKey.generate()
        let first = try #require(ChannelIncarnation(high: 1, low: 1))
        let second = try #require(ChannelIncarnation(high: 1, low: 2))
        let toTwo = DirectionKeyContext(clusterID: 9, sender: 1, receiver: 2, senderIncarnation: first, receiverIncarnation: second)
        var toThree = toTwo
        toThree.receiver = 3
        var laterRun = toTwo
        laterRun.receiverIncarnation = first
        var underAES = toTwo
        underAES.cipher = .aes256GCM
        let contexts = [toTwo, toThree, laterRun, underAES]
        let expected = try contexts.map { try clusterKey.directionKey($0) }
        for a in expected.indices {
            for b in expected.indices where b != a { #expect(expected[a] != expected[b]) }
        }
        var cache = DirectionKeyCache()
        for index in [0, 0, 1, 0, 2, 3, 1, 3, 3, 2] {
            #expect(try cache.key(contexts[index], under: clusterKey) == expected[index])
        }
    }

    /// The opener writes each plaintext into one array it keeps: a payload the channel (or
    /// anyone) still holds is never written over by a later datagram, whatever their lengths,
    /// and a datagram that fails to open leaves the held payloads as they were.
    @Test(
        .enabled(if: SyncChannelCipher.aes256GCM.isAvailable, "needs a CPU with AES instructions (AES-NI and CLMUL)"),
        arguments: SyncChannelCipher.allCases)
    func payloadsStayIntactWhileLaterDatagramsOpen(cipher: SyncChannelCipher) throws {
        let key = try ChannelKey.generate()
        let sender = try #require(ChannelIncarnation(high: 1, low: 1)), receiver = try #require(ChannelIncarnation(high: 2, low: 2))
        var sealer = DatagramSealer(key: key, cipher: cipher), opener = DatagramSealer(key: key, cipher: cipher)
        var random = SplitMix64(seed: 26)
        let payloads = [1_000, 10, 500, 0, 1_300, 1_300].map { count in (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) } }
        /// Datagram `number` with `payload`, sealed, and its header as the receiver reads it.
        func sealed(_ payload: [UInt8], number: UInt64) throws -> (datagram: [UInt8], claimed: DatagramHeader) {
            let header = DatagramHeader(
                flags: 0, clusterID: 5, sender: ClusterMemberID(rawValue: 1), receiver: ClusterMemberID(rawValue: 2), epoch: 1,
                senderIncarnation: sender, packetNumber: number, reliableSequence: number)
            let datagram = try sealer.seal(header, payload: payload, receiverIncarnation: receiver)
            return (datagram, try DatagramHeader.read(datagram[0..<DatagramHeader.size]))
        }
        var held: [[UInt8]] = []
        for (index, payload) in payloads.enumerated() {
            var (datagram, claimed) = try sealed(payload, number: UInt64(index + 1))
            let opened = try opener.open(datagram, claimed, receiverIncarnation: receiver)
            #expect(opened.payload == payload, "payload \(index + 1)")
            #expect(!opened.underPreviousKey)
            held.append(opened.payload)
            datagram[DatagramHeader.size] ^= 1
            #expect(throws: SyncChannelError.security(.authenticationFailed)) { try opener.open(datagram, claimed, receiverIncarnation: receiver) }
            let intact = held == Array(payloads[...index])
            #expect(intact, "a payload handed out changed when datagram \(index + 1) was opened")
        }
        // With every payload dropped, the array is the opener's alone again: written in place,
        // shorter, then longer.
        held.removeAll()
        for (number, payload) in [(100, payloads[1]), (101, payloads[4]), (102, payloads[2])] {
            let (datagram, claimed) = try sealed(payload, number: UInt64(number))
            let opened = try opener.open(datagram, claimed, receiverIncarnation: receiver).payload
            #expect(opened == payload, "datagram \(number)")
        }
    }

    @Test func aCipherNamedForADatagramInClearIsRefused() throws {
        let header = DatagramHeader(
            flags: DatagramHeader.aes256GCMFlag, clusterID: 5, sender: ClusterMemberID(rawValue: 1), receiver: ClusterMemberID(rawValue: 2),
            epoch: 1, senderIncarnation: ChannelIncarnation(high: 1, low: 1)!, packetNumber: 1, reliableSequence: 0)
        var writer = ByteWriter(capacity: DatagramHeader.size)
        header.write(into: &writer)
        #expect(throws: SyncChannelError.invalidHeader("a cipher named for a datagram in clear")) { try DatagramHeader.read(writer.bytes[...]) }
    }
}
