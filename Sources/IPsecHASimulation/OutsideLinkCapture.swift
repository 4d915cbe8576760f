public import IPsecHACore

/// The packets of the outside link (between the cluster and the peer) as IPv4 datagrams, and
/// the classic pcap file format that holds them, for `tshark` and Wireshark.
///
/// The cluster has one address (a tight cluster: whichever member is active answers on it), the
/// peer another. IKE_SA_INIT travels on UDP 500; everything after it on UDP 4500 (RFC 3948):
/// IKE behind the four-byte non-ESP marker, ESP directly. The ESP packets carry the SPI and the
/// low 32 bits of the sequence number as the sender used them, then an 8-byte IV, an opaque
/// payload and a 16-byte ICV laid out as RFC 7634 (ChaCha20-Poly1305) does; the payload is not
/// sealed, since the simulation has no traffic to protect. IKE messages after IKE_SA_INIT
/// carry one opaque SK payload (RFC 7296 section 3.14), except RFC 6311's message-ID sync,
/// which is written in clear as the package's codec encodes it.
public enum OutsideLinkCapture {
    /// The cluster's address (192.0.2.10, documentation range).
    public static let clusterAddress: [UInt8] = [192, 0, 2, 10]
    /// The peer's address (198.51.100.7, documentation range).
    public static let peerAddress: [UInt8] = [198, 51, 100, 7]
    /// The IKE port, and the NAT-traversal port that carries IKE and ESP after IKE_SA_INIT.
    public static let ikePort: UInt16 = 500, natTraversalPort: UInt16 = 4500
    /// pcap's link type for raw IP packets (LINKTYPE_RAW).
    public static let linkTypeRaw: UInt32 = 101

    /// The 24-byte pcap file header (microsecond timestamps, little-endian).
    public static func fileHeader() -> [UInt8] {
        var bytes: [UInt8] = []
        append(UInt32(0xA1B2_C3D4), littleEndianTo: &bytes)
        append(UInt16(2), littleEndianTo: &bytes)
        append(UInt16(4), littleEndianTo: &bytes)
        append(UInt32(0), littleEndianTo: &bytes)  // time zone
        append(UInt32(0), littleEndianTo: &bytes)  // accuracy
        append(UInt32(65_535), littleEndianTo: &bytes)  // snapshot length
        append(linkTypeRaw, littleEndianTo: &bytes)
        return bytes
    }

    /// One pcap record: the packet at `microseconds` since the epoch of the capture.
    public static func record(_ packet: [UInt8], atMicroseconds microseconds: UInt64) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(16 + packet.count)
        append(UInt32(truncatingIfNeeded: microseconds / 1_000_000), littleEndianTo: &bytes)
        append(UInt32(microseconds % 1_000_000), littleEndianTo: &bytes)
        append(UInt32(packet.count), littleEndianTo: &bytes)
        append(UInt32(packet.count), littleEndianTo: &bytes)
        return bytes + packet
    }

    /// An ESP-in-UDP packet (RFC 3948) on port 4500.
    public static func esp(spi: UInt32, sequenceNumber: UInt64, fromPeer: Bool) -> [UInt8] {
        var esp: [UInt8] = []
        esp.appendBigEndian(spi)
        esp.appendBigEndian(UInt32(truncatingIfNeeded: sequenceNumber))
        // RFC 7634: an 8-byte IV the sender never repeats under a key; the full sequence number is one.
        esp.appendBigEndian(sequenceNumber)
        // Payload, padding, pad length and next header (4: IPv4), then the ICV.
        esp += [UInt8](repeating: 0, count: 14) + [0, 4] + [UInt8](repeating: 0, count: 16)
        return udp(esp, fromPeer: fromPeer, port: natTraversalPort)
    }

    /// An IKE message: on port 500 when it is IKE_SA_INIT, else on port 4500 behind the non-ESP
    /// marker.
    public static func ike(_ message: IPsecHACore.IKEMessage, fromPeer: Bool) throws(IKEWireError) -> [UInt8] {
        let encoded = try message.encoded()
        if message.header.exchangeType == .ikeSAInit { return udp(encoded, fromPeer: fromPeer, port: ikePort) }
        return udp([0, 0, 0, 0] + encoded, fromPeer: fromPeer, port: natTraversalPort)
    }

    /// An encrypted IKE message: the header and one opaque SK payload (IV, body, ICV).
    public static func encryptedIKEMessage(
        _ identifier: IKESAIdentifier, exchange: IKEExchangeType, messageID: UInt32, fromOriginalInitiator: Bool, isResponse: Bool
    ) -> IPsecHACore.IKEMessage {
        var flags: UInt8 = 0
        if fromOriginalInitiator { flags |= IKEHeader.initiatorFlag }
        if isResponse { flags |= IKEHeader.responseFlag }
        var iv: [UInt8] = []
        iv.appendBigEndian(UInt64(messageID) << 1 | (isResponse ? 1 : 0))
        return IPsecHACore.IKEMessage(
            header: IKEHeader(
                initiatorSPI: identifier.initiatorSPI, responderSPI: identifier.responderSPI, nextPayload: .encrypted,
                exchangeType: exchange, flags: flags, messageID: messageID, length: 0),
            payloads: [IKEPayload(type: .encrypted, body: iv + [UInt8](repeating: 0, count: 32))])
    }

    /// An IKE_SA_INIT message (no payloads: the simulation does not model the key exchange).
    public static func ikeSAInit(_ identifier: IKESAIdentifier, isResponse: Bool) -> IPsecHACore.IKEMessage {
        IPsecHACore.IKEMessage(
            header: IKEHeader(
                initiatorSPI: identifier.initiatorSPI, responderSPI: isResponse ? identifier.responderSPI : 0, nextPayload: .none,
                exchangeType: .ikeSAInit, flags: isResponse ? IKEHeader.responseFlag : IKEHeader.initiatorFlag, messageID: 0, length: 0),
            payloads: [])
    }

    /// An IPv4/UDP datagram between the cluster and the peer (UDP checksum 0, as RFC 3948
    /// allows for IPv4).
    public static func udp(_ payload: [UInt8], fromPeer: Bool, port: UInt16) -> [UInt8] {
        let source = fromPeer ? peerAddress : clusterAddress
        let destination = fromPeer ? clusterAddress : peerAddress
        let total = 20 + 8 + payload.count
        var packet: [UInt8] = [0x45, 0]
        packet.appendBigEndian(UInt16(total))
        packet += [0, 0, 0x40, 0, 64, 17, 0, 0]  // identification, don't fragment, TTL, UDP, checksum
        packet += source + destination
        let checksum = packet.internetChecksum
        packet[10] = UInt8(checksum >> 8)
        packet[11] = UInt8(checksum & 0xFF)
        packet.appendBigEndian(port)
        packet.appendBigEndian(port)
        packet.appendBigEndian(UInt16(8 + payload.count))
        packet += [0, 0]
        return packet + payload
    }

    static func append<Value: FixedWidthInteger>(_ value: Value, littleEndianTo bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
    }
}
