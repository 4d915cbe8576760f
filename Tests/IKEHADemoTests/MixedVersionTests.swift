import Foundation
import Testing

/// A rolling upgrade's mixed cluster with the real previous release: `scripts/mixed-version.sh`
/// builds it from git history (the commit in `scripts/previous-release`) and runs its member
/// beside this build's through a bulk resync and a takeover in each direction. Skipped (with
/// the script's message) when that commit is not in the clone.
@Suite("A member of the previous release beside one of this build")
struct MixedVersionTests {
    @Test func aMixedClusterResyncsAndTakesOverBothWays() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let demo = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("ikeha-demo")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [root.appendingPathComponent("scripts/mixed-version.sh").path]
        process.environment = ProcessInfo.processInfo.environment.merging(["DEMO": demo.path]) { $1 }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        print(text)
        if process.terminationStatus == 77 { return }
        #expect(process.terminationStatus == 0, "mixed-version.sh failed")
        for direction in ["previous release active, this build takes over", "this build active, the previous release takes over"] {
            #expect(text.contains("PASS: \(direction): the standby is a complete copy"))
            #expect(text.contains("PASS: \(direction): this build speaks synch protocol 2 with the previous release"))
            #expect(text.contains("PASS: \(direction): the standby took over all 100 IKE SAs and resumed all 200 Child SAs"))
        }
    }
}
