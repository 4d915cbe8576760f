import IPsecHACore
import Testing

@testable import IPsecHAGateway

/// ESP both ways between the gateway and the initiator's mirror of its Child SA.
@Suite struct ESPDataPlaneTests {
    /// An ICMP echo request from 10.99.1.1 to 10.99.2.1 with `payload`.
    static func echoRequest(sequence: UInt16, payload: [UInt8] = Array(0..<56)) -> [UInt8] {
        var icmp: [UInt8] = [8, 0, 0, 0, 0x12, 0x34, UInt8(sequence >> 8), UInt8(sequence & 0xFF)] + payload
        let icmpSum = icmp.internetChecksum
        icmp[2] = UInt8(icmpSum >> 8)
        icmp[3] = UInt8(icmpSum & 0xFF)
        var ip: [UInt8] = [0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 1, 0, 0, 10, 99, 1, 1, 10, 99, 2, 1]
        let total = ip.count + icmp.count
        ip[2] = UInt8(total >> 8)
        ip[3] = UInt8(total & 0xFF)
        let sum = ip.internetChecksum
        ip[10] = UInt8(sum >> 8)
        ip[11] = UInt8(sum & 0xFF)
        return ip + icmp
    }

    /// The gateway's state after IKE_AUTH, and the initiator's state holding the mirror.
    static func pair() throws -> (gateway: GatewayState, peer: GatewayState, peerSlot: ChildSASlot) {
        var fixture = try IKEv2ResponderTests.Fixture()
        _ = try fixture.establish()
        let child = try #require(fixture.state.childSAs.first)
        var peer = GatewayState()
        let ike = try #require(fixture.state.ikeSAs.values.first)
        _ = try peer.createIKESA(ike)
        _ = try peer.createChildSA(try fixture.initiator.mirror(of: child))
        return (fixture.state, peer, try #require(peer.slot(forInboundSPI: child.outboundSPI)))
    }

    @Test func pingThroughTheTunnelAndBack() throws {
        var (gateway, peer, peerSlot) = try Self.pair()
        let request = Self.echoRequest(sequence: 1)
        let packet = try ESPDataPlane.encapsulate(request, slot: peerSlot, state: &peer)
        // SPI, sequence number 1, IV = sequence number, then ciphertext and tag; 4-byte aligned.
        #expect(Array(packet[4..<8]) == [0, 0, 0, 1] && Array(packet[8..<16]) == [0, 0, 0, 0, 0, 0, 0, 1])
        #expect((packet.count - 16 - 16) % 4 == 0)
        let (inner, spi, decapsulatedSlot) = try ESPDataPlane.decapsulate(packet[...], state: &gateway)
        #expect(inner == request)
        let reply = try #require(IPv4Packet.echoReply(to: inner, for: IPAddress(ipv4: 0x0A63_0201)))
        #expect(reply[0..<20].internetChecksum == 0 && reply[20...].internetChecksum == 0)
        #expect(reply[20] == 0 && Array(reply[12..<16]) == [10, 99, 2, 1] && Array(reply[16..<20]) == [10, 99, 1, 1])
        #expect(Array(reply[24...]) == Array(request[24...]))
        let slot = try #require(gateway.slot(forInboundSPI: spi))
        #expect(decapsulatedSlot == slot)
        let back = try ESPDataPlane.encapsulate(reply, slot: slot, state: &gateway)
        #expect(try ESPDataPlane.decapsulate(back[...], state: &peer).inner == reply)
        // Not an echo request to us: no reply.
        #expect(IPv4Packet.echoReply(to: reply, for: IPAddress(ipv4: 0x0A63_0201)) == nil)
        #expect(IPv4Packet.echoReply(to: request, for: IPAddress(ipv4: 0x0A63_0202)) == nil)
    }

    @Test func replaysAndForgeriesChangeNothing() throws {
        var (gateway, peer, peerSlot) = try Self.pair()
        let first = try ESPDataPlane.encapsulate(Self.echoRequest(sequence: 1), slot: peerSlot, state: &peer)
        let second = try ESPDataPlane.encapsulate(Self.echoRequest(sequence: 2), slot: peerSlot, state: &peer)
        _ = try ESPDataPlane.decapsulate(second[...], state: &gateway)
        let spi = UInt32(bigEndianBytes: second[0..<4])
        #expect(throws: ESPPacketError.replayed(2)) { try ESPDataPlane.decapsulate(second[...], state: &gateway) }
        let afterReplay = gateway.childSA(inboundSPI: spi)
        var forged = first
        forged[20] ^= 1
        #expect(throws: ESPPacketError.integrityCheckFailed(spi)) { try ESPDataPlane.decapsulate(forged[...], state: &gateway) }
        // A forged high sequence number must not move the window either.
        var high = first
        high.replaceSubrange(4..<8, with: [0, 0, 0x10, 0])
        #expect(throws: ESPPacketError.integrityCheckFailed(spi)) { try ESPDataPlane.decapsulate(high[...], state: &gateway) }
        #expect(gateway.childSA(inboundSPI: spi) == afterReplay)
        #expect(gateway.childSA(inboundSPI: spi)?.inboundWindow.checkpoint.highestAuthenticatedSequenceNumber == 2)
        // Sequence number 1 arrives late, inside the window: accepted once.
        _ = try ESPDataPlane.decapsulate(first[...], state: &gateway)
        #expect(throws: ESPPacketError.truncated(10)) { try ESPDataPlane.decapsulate(first[..<10], state: &gateway) }
        var unknown = first
        unknown[0] ^= 0xFF
        #expect(throws: ESPPacketError.unknownSPI(UInt32(bigEndianBytes: unknown[0..<4]))) { try ESPDataPlane.decapsulate(unknown[...], state: &gateway) }
    }

    @Test func innerPacketsOutsideTheSelectorsAreDropped() throws {
        var (gateway, peer, peerSlot) = try Self.pair()
        var spoofed = Self.echoRequest(sequence: 1)
        spoofed.replaceSubrange(12..<16, with: [10, 99, 1, 9])  // a source the Child SA does not cover
        let packet = try ESPDataPlane.encapsulate(spoofed, slot: peerSlot, state: &peer)
        let spi = UInt32(bigEndianBytes: packet[0..<4])
        let before = gateway.childSA(inboundSPI: spi)
        #expect(throws: ESPPacketError.outsideSelectors) { try ESPDataPlane.decapsulate(packet[...], state: &gateway) }
        #expect(gateway.childSA(inboundSPI: spi) == before)
    }
}
