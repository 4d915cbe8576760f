import ArgumentParser
import IPsecHACore

#if canImport(Glibc)
import Glibc
#endif

struct WireCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wire",
        abstract: "Build and read IKEv2 / RFC 6311 messages (in clear).",
        subcommands: [MessageIDSyncCommand.self, DecodeCommand.self]
    )
}

/// Parses hexadecimal text of at most `bytes` bytes into an integer.
func parseHex<T: FixedWidthInteger & UnsignedInteger>(_ text: String, as type: T.Type, name: String) throws -> T {
    let digits = text.hasPrefix("0x") || text.hasPrefix("0X") ? String(text.dropFirst(2)) : text
    guard !digits.isEmpty, digits.count <= MemoryLayout<T>.size * 2, let value = T(digits, radix: 16) else {
        throw ValidationError("\(name) must be at most \(MemoryLayout<T>.size * 2) hexadecimal digits")
    }
    return value
}

func hexString(_ bytes: [UInt8]) -> String {
    bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
}

/// `ikeha-demo wire message-id-sync`: the RFC 6311 message-ID sync INFORMATIONAL, in clear, as
/// one line of lowercase hex (and optionally as a UDP datagram to port 500 in a pcap file).
struct MessageIDSyncCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "message-id-sync",
        abstract: "Print an RFC 6311 message-ID sync INFORMATIONAL (header and plaintext payloads) as hex."
    )

    @Option(help: "Initiator SPI (hex, 8 bytes).") var ispi: String
    @Option(help: "Responder SPI (hex, 8 bytes).") var rspi: String
    @Option(help: "Nonce (hex, 4 bytes).") var nonce: String
    @Option(help: "EXPECTED_SEND_REQ_MESSAGE_ID.") var send: UInt32
    @Option(help: "EXPECTED_RECV_REQ_MESSAGE_ID.") var recv: UInt32
    @Flag(help: "Set the R flag (a response).") var response = false
    @Flag(name: .customLong("original-initiator"), help: "Set the I flag.") var originalInitiator = false
    @Option(name: .customLong("replay-delta"), help: "Add IPSEC_REPLAY_COUNTER_SYNC with this delta.") var replayDelta: UInt64?
    @Flag(help: "The replay-counter delta is 8 bytes (Child SAs use ESN).") var esn = false
    @Option(help: "Also write the message as a UDP datagram to port 500 in this pcap file.") var pcap: String?

    func validate() throws {
        if esn && replayDelta == nil { throw ValidationError("--esn goes with --replay-delta") }
    }

    func run() throws {
        let identifier = IKESAIdentifier(
            initiatorSPI: try parseHex(ispi, as: UInt64.self, name: "--ispi"),
            responderSPI: try parseHex(rspi, as: UInt64.self, name: "--rspi"))
        let replay = try replayDelta.map { delta throws in
            do {
                return try ReplayCounterSyncNotification(delta: delta, extendedSequenceNumbers: esn)
            } catch {
                throw ValidationError("--replay-delta must fit 4 bytes without --esn")
            }
        }
        let message = IKEMessage.messageIDSync(
            ikeSA: identifier, isOriginalInitiator: originalInitiator, isResponse: response,
            sync: MessageIDSyncNotification(
                nonce: try parseHex(nonce, as: UInt32.self, name: "--nonce"), expectedSendRequestID: send,
                expectedReceiveRequestID: recv),
            replayCounter: replay)
        let bytes = try message.encoded()
        print(hexString(bytes))
        if let pcap { try writePcap(udpPayload: bytes, to: pcap) }
    }
}

/// `ikeha-demo wire decode HEX`: a readable dump of an IKEv2 message in clear.
struct DecodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decode",
        abstract: "Print a readable dump of an IKEv2 message given as hex (header and plaintext payloads)."
    )

    @Argument(help: "The message as hexadecimal text.") var hex: String

    func run() throws {
        let digits = Array(hex.filter { !$0.isWhitespace })
        guard digits.count % 2 == 0, digits.allSatisfy(\.isHexDigit) else {
            throw ValidationError("the message must be an even number of hexadecimal digits")
        }
        let bytes = stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
        let message: IKEMessage
        do { message = try IKEMessage(decoding: bytes) } catch {
            StandardError.write("ikeha-demo wire decode: malformed IKEv2 message: \(error)\n")
            throw ExitCode(65)
        }
        let header = message.header
        print("IKEv2 \(header.exchangeType) message ID \(header.messageID) length \(header.length)")
        print("  SPIs \(IKESAIdentifier(initiatorSPI: header.initiatorSPI, responderSPI: header.responderSPI))")
        print("  flags\(header.isFromOriginalInitiator ? " I" : "")\(header.isResponse ? " R" : "")\(header.flags & ~(IKEHeader.initiatorFlag | IKEHeader.responseFlag) == 0 ? "" : " other 0x\(String(header.flags, radix: 16))")")
        for payload in message.payloads {
            guard payload.type == .notify else {
                print("  payload \(payload.type)\(payload.critical ? " critical" : ""), \(payload.body.count) bytes")
                continue
            }
            let notify: NotifyPayload
            do { notify = try NotifyPayload(body: payload.body) } catch {
                StandardError.write("ikeha-demo wire decode: malformed Notify payload: \(error)\n")
                throw ExitCode(65)
            }
            var line = "  N(\(notify.type))"
            do {
                switch notify.type {
                case .messageIDSync:
                    let sync = try MessageIDSyncNotification(notify)
                    line += " nonce 0x\(String(sync.nonce, radix: 16)) expected send \(sync.expectedSendRequestID) expected receive \(sync.expectedReceiveRequestID)"
                case .replayCounterSync:
                    let replay = try ReplayCounterSyncNotification(notify)
                    line += " delta \(replay.delta) (\(replay.extendedSequenceNumbers ? "8" : "4") bytes)"
                default:
                    if !notify.data.isEmpty { line += " data \(hexString(notify.data))" }
                }
            } catch {
                StandardError.write("ikeha-demo wire decode: malformed \(notify.type): \(error)\n")
                throw ExitCode(65)
            }
            print(line)
        }
    }
}

/// Writes `udpPayload` as one IPv4/UDP datagram from 192.0.2.1:500 to 192.0.2.2:500 in a pcap
/// file (link type raw IPv4).
func writePcap(udpPayload: [UInt8], to path: String) throws {
    var file: [UInt8] = []
    func little32(_ value: UInt32) { for shift in stride(from: 0, to: 32, by: 8) { file.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) } }
    func little16(_ value: UInt16) { file.append(UInt8(truncatingIfNeeded: value)); file.append(UInt8(value >> 8)) }
    little32(0xA1B2_C3D4)
    little16(2)
    little16(4)
    little32(0)
    little32(0)
    little32(65_535)
    little32(101)  // LINKTYPE_RAW: the packet starts with the IPv4 header
    var packet: [UInt8] = []
    let udpLength = UInt16(8 + udpPayload.count)
    let totalLength = 20 + udpLength
    packet += [0x45, 0x00, UInt8(totalLength >> 8), UInt8(truncatingIfNeeded: totalLength), 0, 0, 0x40, 0, 64, 17, 0, 0]
    packet += [192, 0, 2, 1, 192, 0, 2, 2]
    var sum: UInt32 = 0
    for index in stride(from: 0, to: 20, by: 2) { sum += UInt32(packet[index]) << 8 | UInt32(packet[index + 1]) }
    while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
    let checksum = ~UInt16(sum)
    packet[10] = UInt8(checksum >> 8)
    packet[11] = UInt8(truncatingIfNeeded: checksum)
    // UDP with checksum 0 (allowed over IPv4).
    packet += [0x01, 0xF4, 0x01, 0xF4, UInt8(udpLength >> 8), UInt8(truncatingIfNeeded: udpLength), 0, 0]
    packet += udpPayload
    little32(0)
    little32(0)
    little32(UInt32(packet.count))
    little32(UInt32(packet.count))
    file += packet
    #if canImport(Glibc)
    guard let handle = fopen(path, "wb") else { throw ValidationError("cannot write \(path)") }
    defer { fclose(handle) }
    guard fwrite(file, 1, file.count, handle) == file.count else { throw ValidationError("cannot write \(path)") }
    #endif
}
