import Foundation
import IPsecHATestSupport
import Testing

/// The package against the real kernel of a Debian VM under qemu (scripts/kernel-vm.sh): the
/// XFRM codec and socket (`scripts/xfrm-kernel.sh`) and a failover with the kernel's ESP
/// against strongSwan (`scripts/interop-kernel.sh`). Skipped, saying why, without root, qemu or
/// debootstrap. Serialized: the two share the VM image, built by the first.
@Suite(.serialized) struct KernelXFRMTests {
    /// Runs a harness; nil when it was skipped (exit 77).
    static func run(_ script: String) throws -> (status: Int32, output: String)? { try Harness.script(script) }

    /// The counters IPsecHAXFRM writes are the ones the kernel then holds, as iproute2 reports
    /// them, both halves of ESN counters included; deleting an SA reports the counters it ended
    /// with, from the kernel's deletion notice.
    @Test func countersWrittenWithNEWAEAreTheKernelsAsIproute2ReadsThem() throws {
        guard let (status, text) = try Self.run("scripts/xfrm-kernel.sh") else { return }
        #expect(status == 0)
        let lines = text.split(separator: "\n").map(String.init)
        func result(after marker: String) -> String? { lines.drop { $0 != marker }.dropFirst().first }
        #expect(result(after: "== esn before") == "RESULT kind=esn outbound=0 inbound=0 bitmap_words=4 bitmap0=0")
        #expect(result(after: "== esn set") == "RESULT kind=esn outbound=4294968296 inbound=4294967400 bitmap_words=4 bitmap0=4294967295")
        #expect(result(after: "== legacy set") == "RESULT kind=legacy outbound=1000 inbound=900 bitmap_words=1 bitmap0=4294967295")
        #expect(result(after: "== missing")?.hasSuffix("errno 3") == true, "ESRCH for an SA the kernel does not hold")
        // Deleted, the SAs' last counters come from the kernel's deletion notices, and they are gone.
        #expect(result(after: "== esn delete") == "RESULT kind=esn outbound=4294968296 inbound=4294967400 bitmap_words=4 bitmap0=4294967295")
        #expect(result(after: "== esn gone")?.hasSuffix("errno 3") == true)
        #expect(result(after: "== legacy delete") == "RESULT kind=legacy outbound=1000 inbound=900 bitmap_words=1 bitmap0=4294967295")
        #expect(result(after: "== delete missing")?.hasSuffix("errno 3") == true)
        // What the kernel holds, in iproute2's words: 2^32 + 1000 sent, 2^32 + 104 received.
        #expect(text.contains("seq-hi 0x1, seq 0x68, oseq-hi 0x1, oseq 0x3e8"))
        #expect(text.contains("anti-replay context: seq 0x384, oseq 0x3e8, bitmap 0xffffffff"))
    }

    /// charon with the kernel's ESP keeps its IKE SA and its traffic across the crash of the
    /// member whose kernel served it; the peer's kernel counts no replay or ICV drop. Without
    /// the counter advance it does. Once with the address moved by the member's takeover
    /// command, once by keepalived; then a planned switchover (SIGUSR1) with the kernel's last
    /// counters handed over exactly, and its negative control (the kernel left sending: replay
    /// drops at the peer); a takeover of 1,000 Child SAs is installed and verified.
    @Test func strongSwanWithKernelESPSeesNoReplayAcrossAMemberCrash() throws {
        guard let (status, text) = try Self.run("scripts/interop-kernel.sh") else { return }
        #expect(status == 0, "interop-kernel.sh failed")
        #expect(text.contains("PASS: the peer's /proc/net/xfrm_stat: no new XfrmInStateSeqError"))
        #expect(text.contains("PASS: charon processed the message-ID sync"))
        #expect(text.contains("PASS: Child SA rekey by charon against B"))
        #expect(text.contains("PASS: negative control: the peer's kernel dropped"))
        #expect(text.contains("keepalived made B MASTER"), "the keepalived variant ran")
        #expect(text.components(separatedBy: "PASS: the peer's /proc/net/xfrm_stat: no new").count == 4, "with and without keepalived, and the switchover")
        // The planned switchover: exact counters from A's deleted SAs, and its negative control.
        #expect(text.contains("PASS: B resumed every Child SA with no advance"))
        #expect(text.contains("PASS: charon logged no replay rejection and no message-ID sync"))
        #expect(text.contains("PASS: A's kernel holds no SA after handing over"))
        #expect(text.contains("PASS: negative control: the peer's kernel dropped") && text.contains("A's kernel sent past the counters handed over"))
        #expect(text.contains("RESULT batch child_sas=1000") && text.contains("verified=1000 missing=0"))
    }
}
