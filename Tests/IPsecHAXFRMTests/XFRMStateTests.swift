import IPsecHAXFRM
import Testing

@Suite("XFRM SAs (NEWSA / UPDSA / GETSA): encoding and decoding")
struct XFRMStateTests {
    static let state = XFRMState(
        sa: XFRMSAIdentifier(destination: XFRMAddress(ipv4: 0xC000_0201), spi: 0xC001_0203), source: XFRMAddress(ipv4: 0xC633_6401),
        requestID: 7, flags: XFRMState.extendedSequenceNumbersFlag,
        aead: XFRMAEADAlgorithm(name: XFRMAEADAlgorithm.chaCha20Poly1305, key: (0..<36).map { UInt8($0) }),
        encapsulation: XFRMEncapsulation(sourcePort: 4500, destinationPort: 4500),
        replay: XFRMExtendedReplayState(outboundLastSent: 0x2_0000_0010, inboundTop: 5, replayWindow: 1024))

    /// Offsets from `linux/xfrm.h` on x86_64 (checked with offsetof): the SPI at 72 of the
    /// payload, family 212, mode 214, window 215, flags 216, 224 bytes in all; then the
    /// attributes.
    @Test func aNewSAHasTheKernelsLayout() throws {
        let bytes = Self.state.encode(sequence: 3)
        let payload = Array(bytes.dropFirst(16))
        #expect(Array(bytes[4..<8]) == [0x10, 0, 0x05, 0x06], "NEWSA, REQUEST | ACK | EXCL | CREATE")
        #expect(Array(payload[56..<60]) == [192, 0, 2, 1] && Array(payload[72..<76]) == [0xC0, 0x01, 0x02, 0x03] && payload[76] == 50)
        #expect(Array(payload[80..<84]) == [198, 51, 100, 1], "source")
        #expect(payload[212] == 2 && payload[214] == 1 && payload[215] == 0 && payload[216] == 128, "AF_INET, tunnel, ESN")
        #expect(Array(payload[208..<212]) == [7, 0, 0, 0], "reqid")
        #expect(Array(payload[224..<228]) == [112, 0, 18, 0], "XFRMA_ALG_AEAD: 4 + 72 + 36")
        #expect(Array(payload[228..<257]) == Array("rfc7539esp(chacha20,poly1305)".utf8))
        #expect(Array(payload[292..<296]) == [32, 1, 0, 0] && Array(payload[296..<300]) == [128, 0, 0, 0], "288 key bits, 128 ICV bits")
        #expect(Array(payload[336..<344]) == [28, 0, 4, 0, 2, 0, 0x11, 0x94], "XFRMA_ENCAP: ESP in UDP from port 4500")
        let messages = try Netlink.messages(in: bytes)
        let decoded = try XFRMState(payload: messages[0].payload)
        #expect(decoded == Self.state)
        #expect(decoded.replay.map { UInt64($0.outboundHigh) << 32 | UInt64($0.outbound) } == 0x2_0000_0010)
        #expect(!"\(Self.state.aead!)".contains("0, 1, 2"), "the key is never printed")
    }

    /// UPDPOLICY, DELPOLICY and DELSA in the kernel's layouts (`struct xfrm_userpolicy_info`
    /// 168 bytes, `xfrm_user_tmpl` 64, `xfrm_userpolicy_id` 64, `xfrm_usersa_id` 24); what the
    /// kernel itself makes of them is checked in the VM (scripts/xfrm-kernel.sh).
    @Test func policiesAndDeletionsHaveTheKernelsLayout() {
        let selector = XFRMSelector(
            destination: XFRMAddress(ipv4: 0x0A63_0101), source: XFRMAddress(ipv4: 0x0A63_0201), destinationPort: 0, destinationPortMask: 0, sourcePort: 0,
            sourcePortMask: 0, family: 2, destinationPrefixLength: 32, sourcePrefixLength: 24, upperLayerProtocol: 0, interfaceIndex: 0, user: 0)
        let template = XFRMTemplate(destination: XFRMAddress(ipv4: 0x0A63_0001), source: XFRMAddress(ipv4: 0x0A63_0002), requestID: 9)
        let policy = XFRMPolicy(selector: selector, direction: .outbound, template: template, priority: 0x0102)
        let bytes = policy.encode(sequence: 4)
        #expect(bytes.count == 16 + 168 + 4 + 64 && Array(bytes[0..<8]) == [252, 0, 0, 0, 0x19, 0, 0x05, 0], "UPDPOLICY, REQUEST | ACK")
        let payload = Array(bytes.dropFirst(16))
        #expect(Array(payload[0..<4]) == [10, 99, 1, 1] && Array(payload[16..<20]) == [10, 99, 2, 1] && payload[42] == 32 && payload[43] == 24)
        #expect(Array(payload[152..<156]) == [2, 1, 0, 0] && payload[160] == 1, "priority, direction out")
        #expect(Array(payload[168..<172]) == [68, 0, 5, 0], "XFRMA_TMPL: 4 + 64")
        let tmpl = Array(payload[172...])
        #expect(Array(tmpl[0..<4]) == [10, 99, 0, 1] && tmpl[20] == 50 && tmpl[24] == 2 && Array(tmpl[28..<32]) == [10, 99, 0, 2])
        #expect(Array(tmpl[44..<48]) == [9, 0, 0, 0] && tmpl[48] == 1 && Array(tmpl[52..<64]) == Array(repeating: 0xFF, count: 12), "reqid, tunnel, any algorithm")
        let deletion = XFRMPolicy.encodeDeletion(selector: selector, direction: .inbound, sequence: 5)
        #expect(deletion.count == 16 + 64 && deletion[4] == 0x14 && deletion[16 + 60] == 0)
        let sa = XFRMSAIdentifier(destination: XFRMAddress(ipv4: 0x0A63_0002), spi: 0xC001_0203).encodeDeletion(sequence: 6)
        #expect(sa.count == 16 + 24 && sa[4] == 0x11 && Array(sa[32..<36]) == [0xC0, 0x01, 0x02, 0x03] && sa[36] == 2 && sa[38] == 50)
    }

    /// Bad input is refused typed: every truncation, a key length that contradicts the
    /// attribute, random corruptions (decode or throw, never trap; what decodes round-trips).
    @Test func malformedSAsAreTypedErrorsAndNothingTraps() throws {
        let payload = Self.state.encode(sequence: 1)[16...]
        // (Cut right after the fixed part or after a whole attribute, it is a valid shorter SA.)
        for cut in 0..<payload.count where ![XFRMState.fixedSize, 336, 364].contains(cut) {
            #expect(throws: XFRMCodecError.self) { _ = try XFRMState(payload: payload.prefix(cut)) }
        }
        var badKey = Array(payload)
        badKey[292 - 16 + 16] = 0x21
        #expect(throws: XFRMCodecError.self) { _ = try XFRMState(payload: badKey[...]) }
        // The fuzzer's first find: an algorithm name that is not ASCII decoded to replacement
        // characters and came back different from its own encoding. It is refused now.
        var notASCII = Array(payload)
        notASCII[228 + 29] = 0xFF
        #expect(throws: XFRMCodecError.self) { _ = try XFRMState(payload: notASCII[...]) }
        var noTerminator = Array(payload)
        for index in 228..<292 { noTerminator[index] = 0x41 }
        #expect(throws: XFRMCodecError.self) { _ = try XFRMState(payload: noTerminator[...]) }
        var seed: UInt64 = 1
        var decoded = 0
        for _ in 0..<20_000 {
            var bytes = Array(payload)
            for _ in 0..<3 {
                seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                bytes[Int(seed >> 33) % bytes.count] = UInt8(truncatingIfNeeded: seed >> 17)
            }
            guard let state = try? XFRMState(payload: bytes[...]) else { continue }
            decoded += 1
            #expect(try XFRMState(payload: Netlink.messages(in: state.encode(sequence: 0))[0].payload) == state)
        }
        #expect(decoded > 0)
    }
}
