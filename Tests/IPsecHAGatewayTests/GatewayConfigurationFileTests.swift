import Foundation
import IPsecHAGateway
import IPsecHATestSupport
import Testing

/// `ikeha-gateway --config`: a YAML file of the gateway's options, every error with its line.
@Suite("The gateway's configuration file")
struct GatewayConfigurationFileTests {
    @Test func optionsFlagsAndRepeatedOptionsBecomeArguments() throws {
        let file = try GatewayConfigurationFile(
            path: "m.yaml",
            contents: """
                # a comment
                member: 1
                active: true
                announce-checkpoints: false
                sync-peer: ["2=10.0.0.2:4510", "3=10.0.0.3:4510"]
                local-id: gateway@example
                vrrp-instance: "yes"
                segment-seed: 0x10
                """)
        #expect(
            file.arguments == [
                "--member", "1", "--active", "--sync-peer", "2=10.0.0.2:4510", "--sync-peer", "3=10.0.0.3:4510",
                "--local-id", "gateway@example", "--vrrp-instance", "yes", "--segment-seed", "0x10",
            ])
        #expect(file.entries.map(\.line) == [2, 3, 5, 6, 7, 8])
        #expect(try GatewayConfigurationFile(path: "empty.yaml", contents: "# nothing\n").arguments.isEmpty)
    }

    @Test(arguments: [
        ("member: [1\n", 2, "did not find expected"),
        ("member: 1\n- 2\n", 2, "expected key"),
        ("- member\n", 1, "must be a mapping"),
        ("member: 1\nmember: 2\n", 2, "given again (first on line 1)"),
        ("member: 1\nSync_Peer: x\n", 2, "long name without the dashes"),
        ("member: 1\n\nsync-peer: {a: b}\n", 3, "not a mapping"),
        ("member:\n", 1, "no value"),
        ("config: other.yaml\n", 1, "do not include others"),
        ("sync-peer: []\n", 1, "an empty sequence"),
        ("sync-peer: [[a]]\n", 1, "a sequence of plain values"),
    ])
    func errorsNameTheLine(contents: String, line: Int, text: String) {
        #expect {
            try GatewayConfigurationFile(path: "bad.yaml", contents: contents)
        } throws: { error in
            guard let error = error as? GatewayConfigurationError else { return false }
            return error.line == line && error.message.contains(text) && error.description.hasPrefix("bad.yaml:\(line):")
        }
    }

    /// The option parser's and the gateway's errors about an option the file set name the
    /// file's line; the command line's own options are not blamed on the file.
    @Test func laterErrorsAboutAnOptionNameItsLine() throws {
        let file = try GatewayConfigurationFile(path: "m.yaml", contents: "member: 1\nmiss-count: x\nsync-peer: [\"2=a\"]\n")
        #expect(file.explain("The value 'x' is invalid for '--miss-count <miss-count>'")?.description == "m.yaml:2: The value 'x' is invalid for '--miss-count <miss-count>'")
        #expect(file.explain("--sync-peer: expected host:port, got a")?.line == 3)
        #expect(file.explain("--sync-peer-extra is not an option") == nil, "a longer option's name is not this one")
        #expect(file.explain("The value 'x' is invalid for '--miss-count <miss-count>'", commandLine: ["--miss-count", "x"]) == nil)
        #expect(file.explain("Missing expected argument '--psk-file <psk-file>'") == nil)
    }

    /// The real thing: the gateway binary reads the file and reports its mistakes by line.
    @Test func theGatewayReportsTheLineOfABadOption() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ikeha-config-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("member.yaml").path
        func run(_ contents: String, _ arguments: [String] = []) throws -> (Int32, String) {
            try Data(contents.utf8).write(to: URL(fileURLWithPath: path))
            return try Harness.run(Harness.executable("ikeha-gateway"), ["--config", path] + arguments)
        }
        let complete = """
            member: 1
            cluster-address: 192.0.2.1
            inner-address: 10.0.0.1
            remote-subnet: 10.1.0.0/16
            local-id: a
            remote-id: b
            psk-file: /nonexistent/psk
            sync-listen: 127.0.0.1:4000
            sync-peer: ["2=127.0.0.1:4001"]
            sync-key-file: /nonexistent/key

            """
        var (status, text) = try run(complete + "miss-count: lots\n")
        #expect(status != 0 && text.contains("\(path):11: The value 'lots' is invalid for '--miss-count"), "\(text)")
        (status, text) = try run(complete + "frobnicate: 3\n")
        #expect(status != 0 && text.contains("\(path):11: Unknown option '--frobnicate'"), "\(text)")
        (status, text) = try run(complete)
        #expect(status != 0 && text.contains("\(path):7: --psk-file: cannot open /nonexistent/psk"), "\(text)")
        (status, text) = try run(complete, ["--psk-file", "/nonexistent/other"])
        #expect(status != 0 && text.contains("--psk-file: cannot open /nonexistent/other") && !text.contains("\(path):7"), "the command line overrides the file: \(text)")
        (status, text) = try run("member: [1\n")
        #expect(status != 0 && text.contains("\(path):2:1: did not find expected"), "\(text)")
    }
}
