import IPsecHAXFRM
import Testing

@Suite("XFRM async events (NEWAE / GETAE): encoding and decoding")
struct XFRMAsyncEventTests {
    static let sa = XFRMSAIdentifier(destination: XFRMAddress(ipv4: 0x0A00_0002), spi: 0xA001)
    static let source = XFRMAddress(ipv4: 0x0A00_0001)

    static func roundTrip(_ event: XFRMAsyncEvent, type: NetlinkMessageType = .newAsyncEvent) throws -> XFRMAsyncEvent {
        let bytes = event.encode(type: type, flags: [.request, .replace], sequence: 7)
        let messages = try Netlink.messages(in: bytes)
        #expect(messages.count == 1 && messages[0].header.type == type && messages[0].header.sequence == 7)
        #expect(messages[0].header.flags == [.request, .replace] && Int(messages[0].header.length) == bytes.count)
        return try XFRMAsyncEvent(payload: messages[0].payload)
    }

    /// The layout the kernel reads (checked against `xfrm_ae.c` of the VM recipe): header,
    /// `xfrm_aevent_id` with the SPI in network order, then XFRMA_REPLAY_ESN_VAL.
    @Test func aNewAEWithAnExtendedReplayStateHasTheKernelsLayout() throws {
        let replay = XFRMExtendedReplayState(outboundLastSent: 0x1_0000_0005, inboundTop: 0xFFFF_FFE0, replayWindow: 128)
        let event = XFRMAsyncEvent(sa: Self.sa, source: Self.source, flags: [.replayValues], replay: .extended(replay))
        let bytes = event.encode(type: .newAsyncEvent, flags: [.request, .replace], sequence: 1)
        #expect(bytes.count == 16 + 48 + 4 + 24 + 4 * 4)
        #expect(Array(bytes[4..<8]) == [0x1E, 0, 0x01, 0x01], "type NEWAE, flags REQUEST | REPLACE")
        #expect(Array(bytes[16..<20]) == [10, 0, 0, 2], "destination")
        #expect(Array(bytes[32..<36]) == [0, 0, 0xA0, 0x01], "the SPI in network order")
        #expect(bytes[36] == 2 && bytes[38] == 50, "AF_INET, ESP")
        #expect(Array(bytes[64..<68]) == [44, 0, 23, 0], "XFRMA_REPLAY_ESN_VAL, 44 bytes with its header")
        #expect(Array(bytes[68..<72]) == [4, 0, 0, 0], "bmp_len 4 words for 128 packets")
        #expect(Array(bytes[72..<76]) == [5, 0, 0, 0] && Array(bytes[80..<84]) == [1, 0, 0, 0], "oseq 5, oseq_hi 1")
        let decoded = try Self.roundTrip(event)
        #expect(decoded == event)
        #expect(decoded.replay?.outboundLastSent == 0x1_0000_0005 && decoded.replay?.inboundTop == 0xFFFF_FFE0)
    }

    @Test func everyAttributeSurvivesARoundTrip() throws {
        let legacy = XFRMAsyncEvent(
            sa: Self.sa, source: Self.source, flags: [.replayValues, .lifetimeValues, .causedByReplay], requestID: 9,
            replay: .legacy(outboundLastSent: 1_000, inboundTop: 990, bitmap: 0x1F), lifetime: XFRMLifetimeCurrent(bytes: 123_456, packets: 1_000),
            replayThreshold: 4, timerThreshold: 25)
        #expect(try Self.roundTrip(legacy) == legacy)
        #expect(legacy.replay?.outboundLastSent == 1_000)
        let query = XFRMAsyncEvent(sa: Self.sa, source: Self.source, flags: [.replayValues])
        #expect(try Self.roundTrip(query, type: .getAsyncEvent) == query)
    }

    /// Bad input from the kernel side is refused with a typed error, never a trap.
    @Test func malformedMessagesAreTypedErrors() throws {
        let event = XFRMAsyncEvent(
            sa: Self.sa, source: Self.source, replay: .extended(XFRMExtendedReplayState(outboundLastSent: 1, inboundTop: 1, replayWindow: 64)))
        let bytes = event.encode(type: .newAsyncEvent, flags: [], sequence: 1)
        // Every truncation of the datagram: the header's length no longer fits.
        for cut in 1..<bytes.count {
            #expect(throws: XFRMCodecError.self) { _ = try Netlink.messages(in: Array(bytes.prefix(cut))) }
        }
        // Every truncation of the payload: the fixed part or the attribute runs short (cut right
        // after the fixed part it is a valid event without attributes).
        let payload = bytes[16...]
        for cut in 0..<payload.count where cut != XFRMAsyncEvent.fixedSize {
            #expect(throws: XFRMCodecError.self) { _ = try XFRMAsyncEvent(payload: payload.prefix(cut)) }
        }
        // A bitmap length that contradicts the attribute, or exceeds any window.
        var wrongWords = bytes
        wrongWords[68] = 3
        #expect(throws: XFRMCodecError.self) { _ = try XFRMAsyncEvent(payload: wrongWords[16...]) }
        var hugeWords = bytes
        hugeWords[70] = 1
        #expect(throws: XFRMCodecError.self) { _ = try XFRMAsyncEvent(payload: hugeWords[16...]) }
        // An attribute shorter than its own header.
        var shortAttribute = bytes
        shortAttribute[64] = 2
        #expect(throws: XFRMCodecError.self) { _ = try XFRMAsyncEvent(payload: shortAttribute[16...]) }
    }

    /// Random bytes and random corruptions of a valid message: decoding throws or succeeds,
    /// and what decodes encodes back to a message that decodes to the same event.
    @Test func randomInputNeverTraps() throws {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        let valid = XFRMAsyncEvent(
            sa: Self.sa, source: Self.source, replay: .extended(XFRMExtendedReplayState(outboundLastSent: 77, inboundTop: 70, replayWindow: 96)),
            lifetime: XFRMLifetimeCurrent(bytes: 5, packets: 1), replayThreshold: 8
        ).encode(type: .newAsyncEvent, flags: [], sequence: 3)
        var decoded = 0
        for round in 0..<20_000 {
            var bytes = valid
            if round % 2 == 0 {
                for _ in 0..<(1 + next() % 4) { bytes[Int(next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: next()) }
            } else {
                bytes = (0..<Int(next() % 160)).map { _ in UInt8(truncatingIfNeeded: next()) }
            }
            guard let messages = try? Netlink.messages(in: bytes) else { continue }
            for message in messages {
                guard let event = try? XFRMAsyncEvent(payload: message.payload) else { continue }
                decoded += 1
                let again = try Netlink.messages(in: event.encode(type: .newAsyncEvent, flags: [], sequence: 0))
                #expect(try XFRMAsyncEvent(payload: again[0].payload) == event)
            }
        }
        #expect(decoded > 0, "some corruptions still decode")
    }

    @Test func aKernelErrorIsReadAsAPositiveErrno() throws {
        // NLMSG_ERROR with -EINVAL, then the request's header.
        var bytes: [UInt8] = [36, 0, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]
        bytes += [0xEA, 0xFF, 0xFF, 0xFF] + Array(repeating: 0, count: 16)
        let messages = try Netlink.messages(in: bytes)
        #expect(messages.count == 1 && messages[0].header.type == .error)
        #expect(try Netlink.errorCode(in: messages[0].payload) == 22)
        #expect(throws: XFRMCodecError.self) { _ = try Netlink.errorCode(in: [0, 0, 0, 0x80][...]) }
    }
}
