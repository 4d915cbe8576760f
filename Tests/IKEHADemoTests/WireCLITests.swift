import Foundation
import Testing

@Suite("ikeha-demo wire")
struct WireCLITests {
    let arguments = [
        "wire", "message-id-sync", "--ispi", "1122334455667788", "--rspi", "99aabbccddeeff00", "--nonce", "deadbeef",
        "--send", "7", "--recv", "5",
    ]

    @Test func messageIDSyncPrintsTheWholeMessageAsHex() throws {
        let request = try runDemo(arguments + ["--original-initiator"])
        #expect(request.status == 0)
        #expect(request.output == "112233445566778899aabbccddeeff002920250800000000000000300000001400004026deadbeef0000000700000005\n")
        let response = try runDemo(arguments + ["--response", "--replay-delta", "4294967296", "--esn"])
        #expect(response.output
            == "112233445566778899aabbccddeeff00292025200000000000000040290000140000402"
            + "6deadbeef00000007000000050000001000004027" + "0000000100000000\n")
        #expect(try runDemo(arguments + ["--replay-delta", "4294967296"]).status != 0, "4 bytes without --esn")
        #expect(try runDemo(arguments + ["--esn"]).status != 0)
        #expect(try runDemo(Array(arguments.prefix(4)) + ["12345678901234567", "--rspi", "1", "--nonce", "1", "--send", "1", "--recv", "1"]).status != 0)
    }

    @Test func decodeDumpsAndRejects() throws {
        let hex = try runDemo(arguments + ["--response", "--replay-delta", "100"]).output.trimmingCharacters(in: .newlines)
        let dump = try runDemo(["wire", "decode", hex])
        #expect(dump.status == 0)
        #expect(dump.output.contains("INFORMATIONAL message ID 0"))
        #expect(dump.output.contains("N(IKEV2_MESSAGE_ID_SYNC) nonce 0xdeadbeef expected send 7 expected receive 5"))
        #expect(dump.output.contains("N(IPSEC_REPLAY_COUNTER_SYNC) delta 100 (4 bytes)"))
        let truncated = try runDemo(["wire", "decode", String(hex.dropLast(2))])
        #expect(truncated.status != 0)
        #expect(truncated.error.contains("malformed"))
        #expect(try runDemo(["wire", "decode", "xyz"]).status != 0)
    }

    /// Wireshark, an implementation nobody here wrote, reads the notifications as written.
    @Test func wiresharkReadsThePcap() throws {
        guard let tshark = try Self.tshark() else { return }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("ikeha-\(getpid()).pcap").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = try runDemo(arguments + ["--original-initiator", "--replay-delta", "100", "--pcap", path])
        #expect(result.status == 0)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tshark)
        process.arguments = [
            "-r", path, "-T", "fields", "-e", "isakmp.ispi", "-e", "isakmp.rspi", "-e", "isakmp.messageid",
            "-e", "isakmp.notify.msgtype", "-e", "isakmp.notify.data.ha.nonce_data",
            "-e", "isakmp.notify.data.ha.expected_send_req_message_id",
            "-e", "isakmp.notify.data.ha.expected_recv_req_message_id",
            "-e", "isakmp.notify.data.ha.incoming_ipsec_sa_delta_value",
        ]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = Pipe()
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let fields = text.trimmingCharacters(in: .newlines).split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
        #expect(fields == [
            "1122334455667788", "99aabbccddeeff00", "0x00000000", "16422,16423", "0xdeadbeef", "0x00000007", "0x00000005", "00000064",
        ])
    }

    /// tshark's path: installed with apt-get when running as root (CI), otherwise the test is
    /// skipped with a message saying what is missing.
    static func tshark() throws -> String? {
        let path = "/usr/bin/tshark"
        if FileManager.default.isExecutableFile(atPath: path) { return path }
        guard getuid() == 0 else {
            print("skipping the Wireshark check: tshark is not installed (apt-get install tshark, as root)")
            return nil
        }
        let install = Process()
        install.executableURL = URL(fileURLWithPath: "/bin/sh")
        install.arguments = ["-c", "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tshark >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tshark >/dev/null 2>&1)"]
        try install.run()
        install.waitUntilExit()
        guard FileManager.default.isExecutableFile(atPath: path) else {
            print("skipping the Wireshark check: apt-get could not install tshark")
            return nil
        }
        return path
    }
}
