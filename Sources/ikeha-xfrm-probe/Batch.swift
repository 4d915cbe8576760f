#if canImport(Glibc)
import IPsecHACore
import IPsecHASync
import IPsecHATestKit
import IPsecHAXFRM
import IPsecHAXFRMDataPlane

/// `ikeha-xfrm-probe batch N`: what a takeover of N Child SAs costs in the kernel. A standby
/// with nothing installed takes over: XFRMDataPlane installs every Child SA with the plan's
/// counters (two NEWSA and three UPDPOLICY each). Then a standby whose SAs are installed
/// already takes over: the counters rewritten (GETAE and NEWAE on both SAs of each). A sweep
/// reads every counter back. Prints `RESULT batch child_sas=N install_ms=T rewrite_ms=T
/// verified=N`.
func runBatch(count: Int) {
    var random = SplitMix64(seed: 6311)
    var state = GatewayState()
    do {
        let ike = try SAFixtures.ikeSA(1, remote: IPAddress(ipv4: 0xC633_6401), &random)
        _ = try state.createIKESA(ike)
        for index in 0..<count {
            var child = try SAFixtures.childSA(0x1000_0000 + UInt32(index), parent: ike.identifier, window: 128, &random)
            child.outboundCounter = try OutboundSequenceCounter(extendedSequenceNumbers: true, lastSent: 1_000 + UInt64(index))
            _ = try state.createChildSA(child)
        }
        var configuration = XFRMDataPlaneConfiguration()
        configuration.installsChildSAs = true
        var dataPlane = XFRMDataPlane(kernel: try XFRMSocket(), configuration: configuration)
        let clock = ContinuousClock()
        let installStarted = clock.now
        try dataPlane.startServing(state)
        let installed = clock.now - installStarted
        for child in state.childSAs {
            _ = try state.updateChildSA(inboundSPI: child.inboundSPI) {
                $0.outboundCounter = try! OutboundSequenceCounter(extendedSequenceNumbers: true, lastSent: $0.outboundCounter.lastSent + 0x1_0000_0000)
            }
        }
        let rewriteStarted = clock.now
        try dataPlane.startServing(state)
        let rewritten = clock.now - rewriteStarted
        let observed = try dataPlane.observedCounters(of: state, now: Timestamp(nanoseconds: 1))
        let verified = observed.filter { $0.outbound.lastSent == state.childSA(inboundSPI: $0.inboundSPI)?.outboundCounter.lastSent }.count
        func milliseconds(_ duration: Duration) -> Int { Int(duration / .milliseconds(1)) }
        print("RESULT batch child_sas=\(count) install_ms=\(milliseconds(installed)) rewrite_ms=\(milliseconds(rewritten)) verified=\(verified) missing=\(dataPlane.missing.count)")
    } catch {
        fail("\(error)")
    }
}
#endif
