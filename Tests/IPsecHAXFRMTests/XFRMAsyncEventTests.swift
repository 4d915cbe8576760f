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

    /// The kernel's notice of a deleted SA as `xfrm_notify_sa` lays it out: `xfrm_usersa_id`,
    /// then `XFRMA_SA` (the SA whole, lifetime counters inside), then the SA's other attributes
    /// (its key and replay state among them). `attributes` replaces the latter.
    static func deletionNotice(of state: XFRMState, attributes: [(UInt16, [UInt8])]? = nil, sequence: UInt32 = 9) throws -> [UInt8] {
        let encoded = state.encode(sequence: 0)
        let info = Array(encoded[16..<(16 + XFRMState.fixedSize)])
        func attribute(_ type: UInt16, _ payload: [UInt8]) -> [UInt8] {
            let length = 4 + payload.count
            return [UInt8(length & 0xFF), UInt8(length >> 8), UInt8(type & 0xFF), UInt8(type >> 8)] + payload
                + Array(repeating: 0, count: (4 - length % 4) % 4)
        }
        var body = state.sa.destination.bytes + withUnsafeBytes(of: state.sa.spi.bigEndian) { Array($0) }
        body += [UInt8(state.sa.family & 0xFF), UInt8(state.sa.family >> 8), state.sa.ipsecProtocol, 0]
        body += attribute(XFRMAsyncEvent.saAttribute, info)
        // The SA's own attributes, as NEWSA carries them after xfrm_usersa_info.
        let own = try Netlink.attributes(in: encoded[(16 + XFRMState.fixedSize)...]).map { ($0.type, $0.payload) }
        for (type, payload) in attributes ?? own { body += attribute(type, payload) }
        let length = 16 + body.count
        return withUnsafeBytes(of: UInt32(length).littleEndian) { Array($0) } + [0x11, 0, 0, 0] + withUnsafeBytes(of: sequence.littleEndian) { Array($0) }
            + [0, 0, 0, 0] + body
    }

    static func deletedState(replay: XFRMExtendedReplayState? = nil) -> XFRMState {
        XFRMState(
            sa: sa, source: source, current: XFRMLifetimeCurrent(bytes: 90_000, packets: 120, addTime: 1, useTime: 2), requestID: 4,
            flags: XFRMState.extendedSequenceNumbersFlag,
            aead: XFRMAEADAlgorithm(name: XFRMAEADAlgorithm.aesGCM, key: Array(repeating: 0x5A, count: 36), icvBits: 128),
            replay: replay ?? XFRMExtendedReplayState(outboundLastSent: 0x1_0000_0120, inboundTop: 0x2_0000_0007, replayWindow: 64))
    }

    /// A deletion notice reads as the counters the SA ended with: both 64-bit counters, the
    /// window, the lifetime counters, the source; the key is skipped.
    @Test func aDeletionNoticeGivesTheCountersTheSAEndedWith() throws {
        let state = Self.deletedState()
        let messages = try Netlink.messages(in: try Self.deletionNotice(of: state))
        #expect(messages.count == 1 && messages[0].header.type == .deleteSA && messages[0].header.sequence == 9)
        let event = try XFRMAsyncEvent(deletionNotice: messages[0].payload)
        #expect(event.sa == Self.sa && event.source == Self.source && event.requestID == 4)
        #expect(event.replay?.outboundLastSent == 0x1_0000_0120 && event.replay?.inboundTop == 0x2_0000_0007)
        #expect(event.lifetime == XFRMLifetimeCurrent(bytes: 90_000, packets: 120, addTime: 1, useTime: 2))
        // A 32-bit SA with a small window: XFRMA_REPLAY_VAL.
        let legacy = try Netlink.messages(in: try Self.deletionNotice(of: state, attributes: [(10, [0x10, 0, 0, 0, 0x0C, 0, 0, 0, 0xFF, 0, 0, 0])]))
        #expect(try XFRMAsyncEvent(deletionNotice: legacy[0].payload).replay == .legacy(outboundLastSent: 16, inboundTop: 12, bitmap: 0xFF))
        // Without a replay attribute: the lifetime counters only.
        let bare = try Netlink.messages(in: try Self.deletionNotice(of: state, attributes: []))
        let noReplay = try XFRMAsyncEvent(deletionNotice: bare[0].payload)
        #expect(noReplay.replay == nil && noReplay.lifetime?.packets == 120)
    }

    /// Bad notices are typed errors: every truncation, no `XFRMA_SA`, an `XFRMA_SA` of another
    /// SA or of the wrong size.
    @Test func malformedDeletionNoticesAreTypedErrors() throws {
        let state = Self.deletedState()
        let payload = try Netlink.messages(in: try Self.deletionNotice(of: state))[0].payload
        for cut in 0..<payload.count where cut != 24 + 4 + XFRMState.fixedSize {
            // Cut right after XFRMA_SA it is a notice without the SA's other attributes.
            if cut > 24 + 4 + XFRMState.fixedSize, (try? Netlink.attributes(in: payload.prefix(cut)[(payload.startIndex + 24)...])) != nil { continue }
            #expect(throws: XFRMCodecError.self, "cut at \(cut)") { _ = try XFRMAsyncEvent(deletionNotice: payload.prefix(cut)) }
        }
        var noSA = try Netlink.messages(in: try Self.deletionNotice(of: state))[0].payload
        noSA[noSA.startIndex + 26] = 99  // XFRMA_SA's type
        #expect(throws: XFRMCodecError.self) { _ = try XFRMAsyncEvent(deletionNotice: noSA) }
        var another = state
        another.sa.spi = 0xB002
        let mismatched = Array(try Self.deletionNotice(of: state).prefix(16 + 24)) + Array(try Self.deletionNotice(of: another).dropFirst(16 + 24))
        #expect(throws: XFRMCodecError.self) { _ = try XFRMAsyncEvent(deletionNotice: mismatched[16...]) }
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
