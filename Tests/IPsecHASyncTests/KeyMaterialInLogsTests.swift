import Foundation
import IPsecHACore
import IPsecHASimulation
import IPsecHASync
import IPsecHATestKit
import InMemoryLogging
import Logging
import Testing

/// No key byte ever reaches a log line: a replication run at the most verbose level (a resync,
/// changes under loss, checkpoints, forgeries, a key rotation) is logged in memory and scanned
/// for every key it handled, in every way a key could be printed.
@Suite("Key material stays out of the logs")
struct KeyMaterialInLogsTests {
    /// The ways a careless description would print `bytes`.
    static func renderings(of bytes: [UInt8]) -> [String] {
        let prefix = Array(bytes.prefix(8))
        let lower = prefix.map { String(format: "%02x", $0) }
        return [
            lower.joined(), lower.joined().uppercased(), lower.joined(separator: " "), lower.joined(separator: ":"),
            "\(prefix)".dropLast().description, Data(bytes).base64EncodedString(), Data(prefix).base64EncodedString().replacingOccurrences(of: "=", with: ""),
        ]
    }

    @Test func aVerboseReplicationRunLogsNoKeyByte() throws {
        let handler = InMemoryLogHandler()
        let clusterKeyBytes = (0..<32).map { UInt8(truncatingIfNeeded: 0xA0 + $0 * 7) }
        let newKeyBytes = (0..<32).map { UInt8(truncatingIfNeeded: 0x31 + $0 * 13) }
        var faults = NetworkFaults()
        faults.loss = 0.3
        faults.jitter = .milliseconds(2)
        var pair = try ReplicationPair(seed: 70, faults: faults, key: try ChannelKey(bytes: clusterKeyBytes)) { configuration in
            var logger = Logger(label: "ipsecha.sync.channel", factory: { _ in handler })
            logger.logLevel = .trace
            configuration.logger = logger
        }
        var random = SplitMix64(seed: 71)
        for index in 0..<40 {
            let ike = try SAFixtures.ikeSA(UInt64(index + 1), &random)
            _ = try pair.state.createIKESA(ike)
            _ = try pair.state.createChildSA(SAFixtures.childSA(UInt32(0x5000 + index), parent: ike.identifier, window: 128, &random))
        }
        #expect(try pair.settle())
        var history = HistoryGenerator(seed: 72)
        for _ in 0..<200 {
            _ = try pair.replicate(try history.step(&pair.state))
            try pair.run(for: 2_000_000)
        }
        try pair.checkpointAll()
        let newKey = try ChannelKey(bytes: newKeyBytes)
        try pair.rotateStandby(toEpoch: 9, key: newKey)
        try pair.rotateActive(toEpoch: 9, key: newKey)
        pair.network.faults = NetworkFaults()
        #expect(try pair.settle())
        #expect(pair.replica.state == pair.state)

        let log = handler.entries.map { "\($0.level) \($0.message) \($0.metadata)" }.joined(separator: "\n")
        #expect(handler.entries.count > 10, "the run logged (\(handler.entries.count) lines)")
        var keys: [[UInt8]] = [clusterKeyBytes, newKeyBytes]
        for sa in pair.state.ikeSAs.values {
            for key in [sa.keys.d, sa.keys.ai, sa.keys.ar, sa.keys.ei, sa.keys.er, sa.keys.pi, sa.keys.pr] where key.count >= 8 {
                keys.append(key.withUnsafeBytes { Array($0) })
            }
        }
        for sa in pair.state.childSAs {
            keys.append(sa.inboundKeys.material.withUnsafeBytes { Array($0) })
            keys.append(sa.outboundKeys.material.withUnsafeBytes { Array($0) })
        }
        #expect(keys.count > 100)
        var leaks: [String] = []
        for key in keys {
            for rendering in Self.renderings(of: key) where log.contains(rendering) { leaks.append(rendering) }
        }
        #expect(leaks.isEmpty, "key bytes in the log: \(leaks.prefix(5))")
        // The scan finds a key that is printed (a control: a scan that cannot fail proves nothing).
        let planted = log + "\nnotice rekeyed [\"key\": \(keys[5])]"
        #expect(Self.renderings(of: keys[5]).contains { planted.contains($0) })
        // Descriptions redact, so that logging a record or a state by mistake leaks nothing.
        let described = "\(pair.state.ikeSAs.values.first!) \(pair.state.childSAs.first!) \(newKey)"
        #expect(Self.renderings(of: keys[2]).allSatisfy { !described.contains($0) })
    }

    /// The whole simulation (a peer, an attacker, synch loss, a crash, the takeover, a restart
    /// and its resync) with every channel logging at `trace`.
    @Test func aFullClusterSimulationLogsNoKeyByte() throws {
        let handler = InMemoryLogHandler()
        var logger = Logger(label: "ipsecha.sync.channel", factory: { _ in handler })
        logger.logLevel = .trace
        var configuration = SimulationConfiguration()
        configuration.ikeSAs = 30
        configuration.durationMs = 1_500
        configuration.crashAtMs = 600
        configuration.restartAfterMs = 300
        configuration.syncLoss = 0.2
        var simulation = try ClusterSimulation(configuration: configuration, channelLogger: logger)
        let report = try simulation.run()
        #expect(report.invariantsHeld && report.restartedMemberReady == true)
        let log = handler.entries.map { "\($0.level) \($0.message) \($0.metadata)" }.joined(separator: "\n")
        #expect(handler.entries.count > 10, "the run logged (\(handler.entries.count) lines)")
        var keys: [[UInt8]] = []
        for state in simulation.liveStates {
            for sa in state.ikeSAs.values {
                for key in [sa.keys.d, sa.keys.ei, sa.keys.er, sa.keys.pi, sa.keys.pr] where key.count >= 8 {
                    keys.append(key.withUnsafeBytes { Array($0) })
                }
            }
            for sa in state.childSAs {
                keys.append(sa.inboundKeys.material.withUnsafeBytes { Array($0) })
                keys.append(sa.outboundKeys.material.withUnsafeBytes { Array($0) })
            }
        }
        #expect(keys.count > 200)
        let leaks = keys.flatMap { key in Self.renderings(of: key).filter { log.contains($0) } }
        #expect(leaks.isEmpty, "key bytes in the log: \(leaks.prefix(5))")
    }
}
