import Foundation
import IPsecHACore
import Testing

/// The `ikeha-demo` executable built beside this test bundle.
func runDemo(_ arguments: [String], input: String = "") throws -> (status: Int32, output: String, error: String) {
    let buildDirectory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
    let process = Process()
    process.executableURL = buildDirectory.appendingPathComponent("ikeha-demo")
    process.arguments = arguments
    let stdin = Pipe()
    let stdout = Pipe()
    let stderr = Pipe()
    process.standardInput = stdin
    process.standardOutput = stdout
    process.standardError = stderr
    try process.run()
    stdin.fileHandleForWriting.write(Data(input.utf8))
    try stdin.fileHandleForWriting.close()
    let output = stdout.fileHandleForReading.readDataToEndOfFile()
    let error = stderr.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: output, as: UTF8.self), String(decoding: error, as: UTF8.self))
}

@Suite("ikeha-demo reference CLI")
struct ReferenceCLITests {
    @Test func replayPrintsAVerdictPerLine() throws {
        let input = "1\n2\n2\n3 forged\n0\n100\n4294967296\n"
        let plain = try runDemo(["replay", "--window", "32"], input: input)
        #expect(plain.status == 0)
        #expect(plain.output == "accept 1\naccept 2\nreplay 2\nfail 3\nstale 0\naccept 100\nstale 0\n")
        let esn = try runDemo(["replay", "--window", "32", "--esn"], input: input)
        #expect(esn.output == "accept 1\naccept 2\nreplay 2\nfail 3\nstale 0\naccept 100\naccept 4294967296\n")
    }

    @Test func malformedLineStopsWithItsLineNumber() throws {
        let result = try runDemo(["replay", "--window", "64"], input: "5\n6\nseven\n8\n")
        #expect(result.status != 0)
        #expect(result.output == "accept 5\naccept 6\n")
        #expect(result.error.contains("line 3"))
    }

    @Test func windowOutsideTheRangeIsAUsageError() throws {
        let result = try runDemo(["replay", "--window", "16"])
        #expect(result.status != 0)
        #expect(result.error.contains("--window"))
    }

    @Test(arguments: ["inorder", "jitter", "replay"], [false, true])
    func benchCountsWhatTheWindowAccepts(pattern: String, esn: Bool) throws {
        let result = try runDemo(
            ["bench", "replay", "--window", "64", "--pattern", pattern, "--count", "5000"] + (esn ? ["--esn"] : []))
        #expect(result.status == 0)
        // The same packets through the reference driver, built independently from the pattern text.
        var random = SplitMix64(seed: 42)
        let base: UInt64 = esn ? 0xFFFF_0000 : 0
        var driver = ReplayReferenceDriver(window: try ReplayWindow(size: 64, extendedSequenceNumbers: esn))
        var accepted = 0
        for i in 0..<UInt64(5000) {
            let number: UInt64
            switch pattern {
            case "inorder": number = base + 1 + i
            case "jitter": number = base + 1 + i + random.next() % 32
            default: number = base + 1 + i / 2
            }
            if case .accept = driver.apply(ReplayReferencePacket(trueSequenceNumber: number, forged: false)) {
                accepted += 1
            }
        }
        let line = result.output.trimmingCharacters(in: .newlines)
        #expect(line.hasPrefix("accepted=\(accepted) ns_per_op="), "\(line)")
    }

    @Test func walkthroughCarriesTheCountersAcrossTheCrash() throws {
        let result = try runDemo(["walkthrough"])
        #expect(result.status == 0)
        #expect(result.output.contains("peer: rejected 0 of 5000 packets"))
        #expect(result.output.contains(", 0 accepted"))
        #expect(result.output.hasSuffix("walkthrough: ok\n"))
    }
}

@Suite("ikeha-demo bench state")
struct StateBenchCLITests {
    @Test func lastLineIsNameValuePairs() throws {
        let result = try runDemo([
            "bench", "state", "--child-sas", "3000", "--ike-sas", "300", "--flows", "500", "--lookups", "20000",
        ])
        #expect(result.status == 0, "\(result.error)")
        let last = try #require(result.output.split(separator: "\n").last)
        let pairs = Dictionary(uniqueKeysWithValues: last.split(separator: " ").map { pair in
            let parts = pair.split(separator: "=")
            return (String(parts[0]), Double(parts[1]) ?? -1)
        })
        #expect(Set(pairs.keys) == [
            "child_sa_lookups_per_second", "spd_cache_lookups_per_second", "spd_cache_burst_lookups_per_second",
            "bytes_per_child_sa", "bytes_per_ike_sa",
        ])
        #expect(pairs.values.allSatisfy { $0 > 0 })
        #expect(result.output.contains("(40000 hits of 40000)"))
    }

    /// `bench sync` stopped at "setup did not complete" once the channel sent data only to an
    /// established peer: its back-to-back channels never finished their handshake.
    @Test func benchSyncRunsAndItsLastLineIsNameValuePairs() throws {
        let result = try runDemo([
            "bench", "sync", "--checkpoints", "20000", "--checkpoint-sas", "500", "--ike-sas", "200", "--child-sas", "400", "--trials", "2",
        ])
        #expect(result.status == 0, "\(result.error)")
        let last = try #require(result.output.split(separator: "\n").last)
        for key in ["checkpoints_per_second=", "resync_seconds=", "tail_loss_detection_heartbeats_max="] {
            #expect(last.contains(key), "\(last)")
        }
    }

    @Test func simulateReportsTheRunAsJSONAndFailsWhenAnInvariantBreaks() throws {
        let safe = try runDemo(["simulate", "--ike-sas", "20", "--duration-ms", "800", "--new-ike-sas-per-second", "0", "--json"])
        #expect(safe.status == 0)
        for key in [
            "\"seed\": 1", "\"ike_sas\": 20", "\"child_sas\": 40", "\"esp_packets_sent\"", "\"sequence_numbers_reused\": 0",
            "\"legit_packets_rejected_by_peer\": 0", "\"replays_accepted\": 0", "\"ike_sas_survived\"", "\"ike_sas_lost\"",
            "\"ike_sas_resynced_via_rfc6311\"", "\"missed_sync_detected\"", "\"missed_sync_detection_ms_max\"", "\"takeover_ms\"",
            "\"invariants_held\": true",
        ] {
            #expect(safe.output.contains(key), "\(key) in \(safe.output)")
        }
        let picture = FileManager.default.temporaryDirectory.appendingPathComponent("failover-\(getpid()).svg").path
        defer { try? FileManager.default.removeItem(atPath: picture) }
        #expect(try runDemo(["simulate", "--ike-sas", "10", "--duration-ms", "600", "--plot", picture]).status == 0)
        let svg = try String(contentsOfFile: picture, encoding: .utf8)
        #expect(svg.hasPrefix("<svg") && svg.contains("<polyline") && svg.contains("takeover: advance"))
        let unsafe = try runDemo(["simulate", "--ike-sas", "40", "--duration-ms", "1500", "--inbound-policy", "permissive"])
        #expect(unsafe.status != 0)
        #expect(unsafe.output.contains("INVARIANT VIOLATED"))
    }
}
