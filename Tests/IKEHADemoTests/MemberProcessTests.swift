import Foundation
import IPsecHATestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// An `ikeha-demo member` process of this build.
typealias MemberProcess = RunningProcess

extension RunningProcess {
    convenience init(_ arguments: [String]) throws {
        try self.init(Harness.executable("ikeha-demo"), ["member"] + arguments)
    }
}

@Suite("Two member processes over UDP on loopback")
struct MemberProcessTests {
    /// A key file (mode 600, removed by the caller), a standby and an active member with 100
    /// IKE SAs on loopback ports from `base`, both given `extra`.
    static func startPair(base: Int, extra: [String] = []) throws -> (keyPath: String, standby: MemberProcess, active: MemberProcess) {
        let keyPath = try keyFile(base: base)
        return (keyPath, try standby(base: base, keyPath: keyPath, extra: extra), try MemberProcess([
            "--id", "1", "--listen", "127.0.0.1:\(base)", "--peer", "2=127.0.0.1:\(base + 1)", "--key-file", keyPath, "--active",
            "--ike-sas", "100", "--duration-ms", "30000", "--status-interval-ms", "200",
        ] + extra))
    }

    /// A loopback port base of its own for each test (`slot` 0 to 3) in this process: below
    /// Linux's ephemeral range (32768-60999 by default), which other tests' sockets bound to
    /// port 0 draw from while these run.
    static func portBase(slot: Int) -> Int { 10_000 + slot * 2_000 + Int(getpid() % 1_000) * 2 }

    static func standby(base: Int, keyPath: String, extra: [String] = []) throws -> MemberProcess {
        try MemberProcess([
            "--id", "2", "--listen", "127.0.0.1:\(base + 1)", "--peer", "1=127.0.0.1:\(base)", "--key-file", keyPath, "--duration-ms", "30000",
            "--status-interval-ms", "200",
        ] + extra)
    }

    static func keyFile(base: Int) throws -> String {
        let keyPath = FileManager.default.temporaryDirectory.appendingPathComponent("ikeha-key-\(getpid())-\(base)").path
        var key = [UInt8](repeating: 0, count: 32)
        for index in key.indices { key[index] = UInt8.random(in: 0...255) }
        try Data(key).write(to: URL(fileURLWithPath: keyPath))
        #expect(chmod(keyPath, 0o600) == 0, "members refuse a key file others can read")
        return keyPath
    }

    @Test func theStandbyTakesOverWhenTheActiveIsKilled() throws {
        let (keyPath, standby, active) = try Self.startPair(base: Self.portBase(slot: 0))
        defer { try? FileManager.default.removeItem(atPath: keyPath) }
        defer { standby.kill() }
        defer { active.kill() }
        let ready = try #require(standby.waitForLine(seconds: 20) { $0.hasPrefix("ready") }, "the standby became ready")
        #expect(ready.hasPrefix("ready ike_sas=100 child_sas=200 resync_ms="), "\(ready)")
        // Let counters move and checkpoints be acknowledged, then kill the active member.
        _ = active.waitForLine(seconds: 5) { line in line.hasPrefix("acknowledged") && !line.hasSuffix("last_sent=0") }
        usleep(300_000)
        // The status lines say what each member is doing.
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline, !active.errorLines.contains(where: { $0.contains("standby=current") }) { usleep(10_000) }
        let activeStatus = try #require(active.errorLines.last { $0.hasPrefix("member 1 active") }, "\(active.errorLines)")
        #expect(activeStatus.contains("ike_sas=100 child_sas=200") && activeStatus.contains("standby=current"), "\(activeStatus)")
        let standbyStatus = try #require(standby.errorLines.last { $0.hasPrefix("member 2 standby") }, "\(standby.errorLines)")
        #expect(standbyStatus.contains("standby ready ike_sas=100 child_sas=200"), "\(standbyStatus)")
        active.kill()
        let acknowledged = try #require(active.lines.last { $0.hasPrefix("acknowledged") })
        let lastAcknowledged = try #require(acknowledged.split(separator: "=").last.flatMap { UInt64($0) })
        let reportLine = try #require(standby.waitForLine(seconds: 10) { $0.hasPrefix("{") }, "the standby took over")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(reportLine.utf8)) as? [String: Any])
        // It noticed within a few heartbeats, planned every SA, resumed every Child SA, and
        // lost nothing the active member had seen acknowledged.
        #expect((report["detected_after_silence_ms"] as? Int).map { $0 >= 150 && $0 < 1_000 } == true, "\(reportLine)")
        #expect(report["plan_ike_sas"] as? Int == 100 && report["plan_child_sas"] as? Int == 200 && report["resumed"] as? Int == 200, "\(reportLine)")
        let replicated = try #require(report["replica_last_sent"] as? Int)
        let resumeAfter = try #require(report["resume_after"] as? Int)
        #expect(UInt64(replicated) >= lastAcknowledged, "acknowledged \(lastAcknowledged), replicated \(replicated)")
        #expect(resumeAfter > replicated, "the counter resumes beyond what was replicated")
        // By what the measured rate says, not by the advance for an SA never measured (2^30).
        #expect(resumeAfter - replicated < 1 << 30, "resumes \(resumeAfter - replicated) beyond")
        standby.kill()
    }

    /// The active member said "standby=current" for a standby that had exited, and kept
    /// retransmitting to it; it says "silent" once four heartbeats went unanswered.
    @Test func theActiveMemberSaysWhenItsStandbyFellSilent() throws {
        let (keyPath, standby, active) = try Self.startPair(base: Self.portBase(slot: 1))
        defer { try? FileManager.default.removeItem(atPath: keyPath) }
        defer { active.kill() }
        _ = try #require(standby.waitForLine(seconds: 20) { $0.hasPrefix("ready") }, "the standby became ready")
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline, !active.errorLines.contains(where: { $0.contains("standby=current") }) { usleep(10_000) }
        #expect(active.errorLines.contains { $0.contains("standby=current") })
        standby.kill()
        let silentBy = Date().addingTimeInterval(3)
        while Date() < silentBy, !(active.errorLines.last?.contains("standby=silent") ?? false) { usleep(10_000) }
        #expect(active.errorLines.last?.contains("standby=silent") == true, "\(active.errorLines.suffix(3))")
    }

    /// Issue 20's scenario: the standby's machine "reboots" (the new process's epoch is far
    /// below the old one's, as a monotonic clock after a reboot) and it must rejoin within
    /// seconds. It stayed joining forever, the active member refusing its every datagram.
    @Test func aStandbyRestartedWithALowEpochRejoinsWithinSeconds() throws {
        let base = Self.portBase(slot: 2)
        let keyPath = try Self.keyFile(base: base)
        defer { try? FileManager.default.removeItem(atPath: keyPath) }
        let first = try Self.standby(base: base, keyPath: keyPath, extra: ["--epoch", "4000000001"])
        let active = try MemberProcess([
            "--id", "1", "--listen", "127.0.0.1:\(base)", "--peer", "2=127.0.0.1:\(base + 1)", "--key-file", keyPath, "--active",
            "--ike-sas", "100", "--duration-ms", "30000", "--status-interval-ms", "200", "--epoch", "4000000003",
        ])
        defer { active.kill() }
        _ = try #require(first.waitForLine(seconds: 20) { $0.hasPrefix("ready") }, "the first run became ready")
        first.kill()
        let restarted = try Self.standby(base: base, keyPath: keyPath, extra: ["--epoch", "1"])
        defer { restarted.kill() }
        let ready = restarted.waitForLine(seconds: 5) { $0.hasPrefix("ready") }
        #expect(ready?.hasPrefix("ready ike_sas=100 child_sas=200 resync_ms=") == true, "\(restarted.errorLines.suffix(3))")
    }

    /// Members configured for datagrams above 2,048 bytes (jumbo frames on the synch link)
    /// resync over UDP: the transport read at most 2,048 bytes of a datagram, so every larger
    /// one arrived cut, never authenticated, and the standby never became ready.
    @Test func membersConfiguredForJumboDatagramsResync() throws {
        let (keyPath, standby, active) = try Self.startPair(base: Self.portBase(slot: 3), extra: ["--datagram-size", "9000"])
        defer { try? FileManager.default.removeItem(atPath: keyPath) }
        defer { standby.kill() }
        defer { active.kill() }
        let ready = standby.waitForLine(seconds: 20) { $0.hasPrefix("ready") }
        #expect(ready?.hasPrefix("ready ike_sas=100 child_sas=200 resync_ms=") == true, "\(standby.errorLines.suffix(3))")
        // A size UDP cannot carry, or below what a record needs, is refused before any socket.
        for size in ["511", "65508"] {
            let (status, output) = try Harness.run(
                Harness.executable("ikeha-demo"),
                ["member", "--id", "2", "--listen", "127.0.0.1:0", "--peer", "1=127.0.0.1:1", "--key-file", keyPath, "--datagram-size", size])
            #expect(status != 0 && output.contains("--datagram-size must be 512 to 65,507"), "\(size): \(output)")
        }
    }
}
