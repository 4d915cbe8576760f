import Foundation
import Testing

/// `scripts/interop.sh` from the test suite: strongSwan across a member crash, with its negative
/// controls. It needs root, network namespaces, /dev/net/tun and Debian's strongSwan packages
/// (which it installs when root and missing); elsewhere it says what is missing and the test
/// is skipped.
@Suite struct InteropTests {
    @Test func strongSwanKeepsItsIKESAAcrossAMemberCrash() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let binary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("ikeha-gateway")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [root.appendingPathComponent("scripts/interop.sh").path]
        process.environment = ProcessInfo.processInfo.environment.merging(["GATEWAY": binary.path]) { $1 }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        if process.terminationStatus == 77 {
            print(text.trimmingCharacters(in: .whitespacesAndNewlines))
            return
        }
        print(text)
        #expect(process.terminationStatus == 0, "interop.sh failed")
        #expect(text.contains("PASS: charon processed the message-ID sync"))
        #expect(text.contains("PASS: negative control: charon rejected"))
    }
}
