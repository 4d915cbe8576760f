#if canImport(Glibc)
import Glibc
import IPsecHAXFRM
import Testing

/// The socket against this machine's kernel: XFRM over netlink answers even where ESP itself is
/// missing (the VM scenario of issue 22 covers real SAs).
@Suite("XFRM netlink socket against the running kernel", .enabled(if: geteuid() == 0, "needs root (CAP_NET_ADMIN) for NETLINK_XFRM: skipped"))
struct XFRMSocketTests {
    /// GETAE and NEWAE on an SA that does not exist: the kernel's errno (ESRCH) comes back as a
    /// typed refusal, matched to the request by its sequence number.
    @Test func theKernelsRefusalOfAnUnknownSAIsTyped() throws {
        let socket = try XFRMSocket(subscribeToAsyncEvents: true)
        let sa = XFRMSAIdentifier(destination: XFRMAddress(ipv4: 0xC000_02FE), spi: 0xDEAD_BEEF)
        let source = XFRMAddress(ipv4: 0xC000_02FD)
        do {
            _ = try socket.asyncEvent(of: sa, source: source)
            Issue.record("an SA that does not exist answered")
        } catch {
            #expect(error.kernelErrno == ESRCH, "\(error)")
        }
        let write = XFRMAsyncEvent(
            sa: sa, source: source, replay: .extended(XFRMExtendedReplayState(outboundLastSent: 1_000, inboundTop: 900, replayWindow: 64)))
        do {
            try socket.setAsyncEvent(write)
            Issue.record("NEWAE on an SA that does not exist was accepted")
        } catch {
            #expect(error.kernelErrno == ESRCH, "\(error)")
        }
        #expect(try socket.receiveAsyncEvents().isEmpty)
        #expect(socket.eventOverruns == 0)
    }
}
#endif
