import Foundation
import IPsecHACore
import IPsecHASync
import Testing

/// The Spin models (Models/, checked by `make model-check`) take their constants from the
/// code; these fail when the code's change and the models' do not follow.
@Suite("Model constants follow the code")
struct ModelConstantsTests {
    static func defines(_ model: String) throws -> [String: Int] {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Models/\(model)")
        var values: [String: Int] = [:]
        for line in try String(contentsOf: url, encoding: .utf8).split(separator: "\n") {
            let words = line.split(separator: " ", omittingEmptySubsequences: true)
            if words.count == 3, words[0] == "#define", let value = Int(words[2]) { values[String(words[1])] = value }
        }
        return values
    }

    @Test func segmentLeases() throws {
        let model = try Self.defines("segment-leases.pml")
        let configuration = try SegmentOwnershipConfiguration(
            member: ClusterMemberID(rawValue: 1), incarnation: 1, members: [ClusterMemberID(rawValue: 1), ClusterMemberID(rawValue: 2)],
            segments: ClusterSegments(count: 4, seed: 1))
        #expect(model["BEACON_MS"].map { Duration.milliseconds($0) } == configuration.beaconInterval)
        #expect(model["LEASE_MS"].map { Duration.milliseconds($0) } == configuration.leaseDuration)
        #expect(model["FAILURE_MS"].map { Duration.milliseconds($0) } == configuration.failureTimeout)
        let silence = configuration.failureTimeout + configuration.leaseDuration + configuration.beaconInterval * (model["SILENCE_BEACONS"] ?? 0)
        #expect(silence == configuration.startupSilence, "the startup silence: failure + lease + SILENCE_BEACONS beacons")
    }

    @Test func clusterRole() throws {
        let model = try Self.defines("cluster-role.pml")
        #expect(model["RANK_SPAN"].map(UInt32.init) == ClusterMember.epochRankMask + 1)
    }
}
