public import IPsecHACore

/// Why an ESP packet was dropped. Nothing changes for any of them: a packet changes the
/// Child SA's replay window only once it has authenticated.
public enum ESPPacketError: Error, Sendable, Hashable {
    /// Shorter than SPI, sequence number, IV, trailer and tag.
    case truncated(Int)
    /// No Child SA has this inbound SPI.
    case unknownSPI(UInt32)
    /// The sequence number was seen already (RFC 4303 section 3.4.3).
    case replayed(UInt64)
    /// The sequence number is below the replay window.
    case stale(UInt64)
    /// The ICV did not verify.
    case integrityCheckFailed(UInt32)
    /// The padding or next-header field is not what RFC 4303 section 2.4 allows.
    case invalidTrailer
    /// The inner packet is not IPv4 or lies outside the Child SA's traffic selectors.
    case outsideSelectors
    /// The outbound counter is exhausted: the Child SA must be rekeyed.
    case counterExhausted(UInt32)
}

/// The reference gateway's userspace ESP (RFC 4303) with ChaCha20-Poly1305 (RFC 7634), in
/// tunnel mode, as carried in UDP on port 4500 (RFC 3948): the packet paths of the embedding
/// guide. Inbound: the replay check before the ICV, the commit after it. Outbound: the next
/// sequence number from the Child SA's counter, which is also the IV.
public enum ESPDataPlane {
    /// The bytes of ESP around the payload: SPI, sequence number, IV; the tag.
    static let headerLength = 16

    /// Decrypts an ESP packet for one of the state's Child SAs and returns the inner IP packet,
    /// the Child SA's inbound SPI, and its slot (for the reply on the same pair, without a
    /// second lookup). The window moves only for a packet that authenticates.
    public static func decapsulate(
        _ packet: ArraySlice<UInt8>, state: inout GatewayState
    ) throws(ESPPacketError) -> (inner: [UInt8], inboundSPI: UInt32, slot: ChildSASlot) {
        guard packet.count >= headerLength + 2 + IKECrypto.tagLength else { throw .truncated(packet.count) }
        let bytes = Array(packet)
        let spi = UInt32(bigEndianBytes: bytes[0..<4])
        let wire = UInt32(bigEndianBytes: bytes[4..<8])
        guard let slot = state.slot(forInboundSPI: spi), let sa = state[slot], let verdict = state.checkInbound(wire: wire, at: slot) else {
            throw .unknownSPI(spi)
        }
        let sequenceNumber: UInt64
        switch verdict {
        case .fresh(let value): sequenceNumber = value
        case .replayed(let value): throw .replayed(value)
        case .stale(let value): throw .stale(value)
        }
        let iv = UInt64(bigEndianBytes: bytes[8..<16])
        guard let plaintext = IKECrypto.open(
            bytes[headerLength...], aad: additionalData(spi: spi, sequenceNumber, extended: sa.extendedSequenceNumbers), iv: iv,
            keyAndSalt: sa.inboundKeys.encryptionKey)
        else { throw .integrityCheckFailed(spi) }
        let nextHeader = plaintext[plaintext.count - 1]
        let padLength = Int(plaintext[plaintext.count - 2])
        guard nextHeader == 4, padLength + 2 <= plaintext.count,
            plaintext[(plaintext.count - 2 - padLength)..<(plaintext.count - 2)].enumerated().allSatisfy({ $0.element == UInt8($0.offset + 1) })
        else { throw .invalidTrailer }
        let inner = Array(plaintext[..<(plaintext.count - 2 - padLength)])
        guard let tuple = IPv4Packet.fiveTuple(inner, inbound: true), sa.selectorsCover(tuple) else { throw .outsideSelectors }
        do { try state.commitInbound(sequenceNumber, bytes: UInt64(inner.count), at: slot) } catch {
            throw .replayed(sequenceNumber)
        }
        return (inner, spi, slot)
    }

    /// Encrypts an inner IP packet on the Child SA in `slot` with its next sequence number.
    ///
    /// The IV is the 64-bit sequence number: RFC 7634 needs an IV that never repeats under the
    /// key, and a sequence number never repeats under the key across failovers either, since
    /// that is the invariant the takeover plan's counter advance defends.
    public static func encapsulate(_ inner: [UInt8], slot: ChildSASlot, state: inout GatewayState) throws(ESPPacketError) -> [UInt8] {
        guard let sa = state[slot] else { throw .unknownSPI(0) }
        let number: OutboundSequenceNumber
        do {
            guard let next = try state.nextOutboundSequenceNumber(at: slot, bytes: UInt64(inner.count)) else { throw ESPPacketError.unknownSPI(sa.inboundSPI) }
            number = next
        } catch {
            throw .counterExhausted(sa.inboundSPI)
        }
        // Pad so that payload, padding, pad length and next header end on 4 bytes.
        let padLength = (4 - (inner.count + 2) % 4) % 4
        var plaintext = inner
        for index in 0..<padLength { plaintext.append(UInt8(index + 1)) }
        plaintext += [UInt8(padLength), 4]
        var packet: [UInt8] = []
        packet.reserveCapacity(headerLength + plaintext.count + IKECrypto.tagLength)
        packet.appendBigEndian(sa.outboundSPI)
        packet.appendBigEndian(number.wire)
        packet.appendBigEndian(number.value)
        packet += IKECrypto.seal(
            plaintext, aad: additionalData(spi: sa.outboundSPI, number.value, extended: sa.extendedSequenceNumbers), iv: number.value,
            keyAndSalt: sa.outboundKeys.encryptionKey)
        return packet
    }

    /// SPI and sequence number, with the high 32 bits in between under ESN (RFC 7634 section 2.1).
    static func additionalData(spi: UInt32, _ sequenceNumber: UInt64, extended: Bool) -> [UInt8] {
        var aad: [UInt8] = []
        aad.appendBigEndian(spi)
        if extended { aad.appendBigEndian(UInt32(truncatingIfNeeded: sequenceNumber >> 32)) }
        aad.appendBigEndian(UInt32(truncatingIfNeeded: sequenceNumber))
        return aad
    }
}

/// Just enough IPv4 (RFC 791) and ICMP (RFC 792) for a gateway that answers pings for its own
/// inner address.
public enum IPv4Packet {
    /// The packet's addresses, protocol and ports (0 for protocols without ports) from the
    /// gateway's point of view: for an `inbound` packet the destination is local.
    public static func fiveTuple(_ packet: [UInt8], inbound: Bool) -> FiveTuple? {
        guard packet.count >= 20, packet[0] >> 4 == 4 else { return nil }
        let headerLength = Int(packet[0] & 0x0F) * 4
        guard headerLength >= 20, packet.count >= headerLength else { return nil }
        let source = IPAddress(ipv4: UInt32(bigEndianBytes: packet[12..<16]))
        let destination = IPAddress(ipv4: UInt32(bigEndianBytes: packet[16..<20]))
        let ipProtocol = packet[9]
        var sourcePort: UInt16 = 0
        var destinationPort: UInt16 = 0
        if ipProtocol == 6 || ipProtocol == 17, packet.count >= headerLength + 4 {
            sourcePort = UInt16(bigEndianBytes: packet[headerLength..<headerLength + 2])
            destinationPort = UInt16(bigEndianBytes: packet[headerLength + 2..<headerLength + 4])
        }
        return inbound
            ? FiveTuple(localAddress: destination, remoteAddress: source, ipProtocol: ipProtocol, localPort: destinationPort, remotePort: sourcePort)
            : FiveTuple(localAddress: source, remoteAddress: destination, ipProtocol: ipProtocol, localPort: sourcePort, remotePort: destinationPort)
    }

    /// The echo reply to an ICMP echo request addressed to `address`; nil for anything else.
    public static func echoReply(to packet: [UInt8], for address: IPAddress) -> [UInt8]? {
        guard packet.count >= 28, packet[0] >> 4 == 4, packet[9] == 1 else { return nil }
        let headerLength = Int(packet[0] & 0x0F) * 4
        let totalLength = Int(UInt16(bigEndianBytes: packet[2..<4]))
        guard headerLength >= 20, totalLength <= packet.count, totalLength >= headerLength + 8,
            IPAddress(ipv4: UInt32(bigEndianBytes: packet[16..<20])) == address, packet[headerLength] == 8, packet[headerLength + 1] == 0
        else { return nil }
        var reply = Array(packet[..<totalLength])
        // Swap the addresses, fresh TTL, header checksum again.
        reply.replaceSubrange(12..<16, with: packet[16..<20])
        reply.replaceSubrange(16..<20, with: packet[12..<16])
        reply[8] = 64
        reply[10] = 0
        reply[11] = 0
        let headerSum = reply[0..<headerLength].internetChecksum
        reply[10] = UInt8(headerSum >> 8)
        reply[11] = UInt8(headerSum & 0xFF)
        // Echo reply: type 0, the rest echoed, ICMP checksum again.
        reply[headerLength] = 0
        reply[headerLength + 2] = 0
        reply[headerLength + 3] = 0
        let icmpSum = reply[headerLength...].internetChecksum
        reply[headerLength + 2] = UInt8(icmpSum >> 8)
        reply[headerLength + 3] = UInt8(icmpSum & 0xFF)
        return reply
    }
}

extension FixedWidthInteger {
    /// A value from big-endian bytes (as many as the type has).
    init(bigEndianBytes bytes: ArraySlice<UInt8>) {
        self = bytes.reduce(Self.zero) { $0 << 8 | Self($1) }
    }
}
