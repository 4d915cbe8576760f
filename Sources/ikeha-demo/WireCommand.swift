import ArgumentParser
import IPsecHACore
import IPsecHASimulation

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

/// Writes `udpPayload` as one IPv4/UDP datagram from the peer to the cluster on port 500 in a
/// pcap file (``OutsideLinkCapture``'s addresses and format).
func writePcap(udpPayload: [UInt8], to path: String) throws {
    let file = OutsideLinkCapture.fileHeader()
        + OutsideLinkCapture.record(
            OutsideLinkCapture.udp(udpPayload, fromPeer: true, port: OutsideLinkCapture.ikePort), atMicroseconds: 0)
    #if canImport(Glibc)
    guard let handle = fopen(path, "wb") else { throw ValidationError("cannot write \(path)") }
    defer { fclose(handle) }
    guard fwrite(file, 1, file.count, handle) == file.count else { throw ValidationError("cannot write \(path)") }
    #endif
}
