import Foundation
import IPsecHATestSupport
import Testing

/// The harnesses with a real peer, from the test suite: `scripts/interop.sh` (strongSwan across
/// a member crash, with its negative controls), `scripts/cluster.sh` (the same behind
/// keepalived, with a restart) and `scripts/load-sharing.sh` (three active members steered by
/// nftables, six strongSwan peers, a member lost and back). They need root, network namespaces, /dev/net/tun and Debian's
/// strongSwan and keepalived packages (which they install when root and missing); elsewhere
/// they say what is missing and the tests are skipped.
@Suite(.serialized) struct InteropTests {
    /// Runs a harness with the debug build of the gateway; nil when it was skipped (exit 77).
    static func run(_ script: String) throws -> (status: Int32, output: String)? {
        try Harness.script(script, environment: ["GATEWAY": Harness.executable("ikeha-gateway").path])
    }

    @Test func strongSwanKeepsItsIKESAAcrossAMemberCrash() throws {
        guard let (status, text) = try Self.run("scripts/interop.sh") else { return }
        #expect(status == 0, "interop.sh failed")
        #expect(text.contains("PASS: charon processed the message-ID sync"))
        #expect(text.contains("PASS: negative control: charon rejected"))
    }

    @Test func loadSharingSurvivesAMemberLostAndBack() throws {
        guard let (status, text) = try Self.run("scripts/load-sharing.sh") else { return }
        #expect(status == 0, "load-sharing.sh failed")
        #expect(text.contains("PASS: failover: the members serve every segment once"))
        #expect(text.contains("PASS: failover: member") && text.contains("segments taken over"))
        #expect(text.contains("rejoined and serves"))
        #expect(text.contains("PASS: initiator-spi: the 8 IKE SAs of one peer address are spread over"))
        #expect(text.contains("PASS: negative control: without the steering update"))
        #expect(text.contains("PASS: negative control: charon rejected"))
        #expect(!text.contains("FAIL:"))
    }

    @Test func keepalivedMovesTheAddressAndThePackageMovesTheState() throws {
        guard let (status, text) = try Self.run("scripts/cluster.sh") else { return }
        #expect(status == 0, "cluster.sh failed")
        #expect(text.contains("PASS: member 2 took over on keepalived's MASTER"))
        #expect(text.contains("PASS: member 1 rejoined as a standby through a bulk resync"))
        #expect(text.contains("PASS: negative control: charon rejected"))
        // The readiness check: a standby that is not a complete copy is not elected.
        #expect(text.contains("PASS: 800 ms after the kill member 2 has neither the address nor the active role"))
        // Planned switchovers: no replay rejection, no message-ID sync, SIGTERM hands over.
        #expect(text.contains("PASS: 10 planned switchovers"))
        #expect(text.contains("PASS: charon logged no replay rejection across the switchovers"))
        #expect(text.contains("PASS: no RFC 6311 message-ID sync was needed"))
        #expect(text.contains("PASS: SIGTERM: member 1 handed over and exited"))
        #expect(text.contains("pings over 10 switchovers:"))
        #expect(text.contains("PASS: at most 2 pings lost over 10 switchovers"))
        // The operator's view: both members' Prometheus endpoints scraped after the switchovers.
        #expect(text.contains("PASS: metrics scraped: member 1 active, member 2 complete-copy"))
        // The runbook's rolling upgrade and cluster-key rotation (Docs/Operations.md).
        #expect(text.contains("PASS: upgrade: member 1 restarted and is a complete copy again"))
        #expect(text.contains("PASS: upgrade: charon logged no replay rejection and no message-ID sync"))
        #expect(text.contains("PASS: rotate-key: the active member refused to go first"))
        #expect(text.contains("PASS: rotate-key: both members under the new key, no takeover"))
        #expect(text.contains("PASS: rotate-key: a switchover under the new key"))
    }
}
