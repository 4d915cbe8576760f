import Foundation
import IPsecHATestSupport
import Testing

/// A rolling upgrade's mixed cluster with the real previous release: `scripts/mixed-version.sh`
/// builds it from git history (the commit in `scripts/previous-release`) and runs its member
/// beside this build's through a bulk resync and a takeover in each direction. Skipped (with
/// the script's message) when that commit is not in the clone.
@Suite("A member of the previous release beside one of this build")
struct MixedVersionTests {
    @Test func aMixedClusterResyncsAndTakesOverBothWays() throws {
        guard let (status, text) = try Harness.script("scripts/mixed-version.sh", environment: ["DEMO": Harness.executable("ikeha-demo").path])
        else { return }
        #expect(status == 0, "mixed-version.sh failed")
        for direction in ["previous release active, this build takes over", "this build active, the previous release takes over"] {
            #expect(text.contains("PASS: \(direction): the standby is a complete copy"))
            #expect(text.contains("PASS: \(direction): this build speaks synch protocol 2 with the previous release"))
            #expect(text.contains("PASS: \(direction): the standby took over all 100 IKE SAs and resumed all 200 Child SAs"))
        }
    }
}
