import IPsecHACore
import IPsecHASync
import IPsecHATestKit
import IPsecHAXFRM
import IPsecHAXFRMDataPlane
import Testing

/// The kernel as a table of SAs: what GETAE reads and NEWAE writes, with ESRCH for the rest.
struct TableKernel: XFRMKernel {
    var sas: [XFRMSAIdentifier: XFRMAsyncEvent] = [:]
    var writes = 0

    mutating func asyncEvent(of sa: XFRMSAIdentifier, source: XFRMAddress) throws(XFRMCodecError) -> XFRMAsyncEvent {
        guard let event = sas[sa] else { throw .kernelRefused(errno: 3) }
        return event
    }

    mutating func setAsyncEvent(_ event: XFRMAsyncEvent) throws(XFRMCodecError) {
        guard var held = sas[event.sa] else { throw .kernelRefused(errno: 3) }
        held.replay = event.replay
        sas[event.sa] = held
        writes += 1
    }
}

@Suite("XFRMDataPlane: Child SA counters read from and written to kernel SAs")
struct XFRMDataPlaneTests {
    /// One IKE SA with an ESN Child SA and a 32-bit one whose window fits the legacy state, and
    /// a kernel that holds all four SAs with counters moved by traffic the package never saw.
    static func setUp() throws -> (GatewayState, TableKernel, esn: ChildSA, legacy: ChildSA) {
        var random = SplitMix64(seed: 31)
        let ike = try SAFixtures.ikeSA(1, remote: IPAddress(ipv4: 0xC633_6401), &random)
        let esn = try SAFixtures.childSA(0x5000, parent: ike.identifier, window: 128, &random)
        let legacy = try SAFixtures.childSA(0x5001, parent: ike.identifier, window: 32, extendedSequenceNumbers: false, &random)
        var state = GatewayState()
        _ = try state.createIKESA(ike)
        _ = try state.createChildSA(esn)
        _ = try state.createChildSA(legacy)
        let local = XFRMAddress(ike.local.address), remote = XFRMAddress(ike.remote.address)
        var kernel = TableKernel()
        func add(_ destination: XFRMAddress, _ spi: UInt32, _ source: XFRMAddress, _ replay: XFRMReplayState, packets: UInt64) {
            let sa = XFRMSAIdentifier(destination: destination, spi: spi)
            kernel.sas[sa] = XFRMAsyncEvent(sa: sa, source: source, replay: replay, lifetime: XFRMLifetimeCurrent(bytes: packets * 100, packets: packets))
        }
        add(local, esn.inboundSPI, remote, .extended(XFRMExtendedReplayState(outboundLastSent: 0, inboundTop: 0x1_0000_0040, replayWindow: 128)), packets: 70)
        add(remote, esn.outboundSPI, local, .extended(XFRMExtendedReplayState(outboundLastSent: 0x1_0000_0100, inboundTop: 0, replayWindow: 128)), packets: 260)
        add(local, legacy.inboundSPI, remote, .legacy(outboundLastSent: 0, inboundTop: 500, bitmap: 0b1011), packets: 500)
        add(remote, legacy.outboundSPI, local, .legacy(outboundLastSent: 900, inboundTop: 0, bitmap: 0), packets: 900)
        return (state, kernel, esn, legacy)
    }

    @Test func theKernelsCountersBecomeCheckpointsOfBothDirections() throws {
        let (state, kernel, esn, legacy) = try Self.setUp()
        var dataPlane = XFRMDataPlane(kernel: kernel)
        let observed = try dataPlane.observedCounters(of: state)
        let byInbound = Dictionary(uniqueKeysWithValues: observed.map { ($0.inboundSPI, $0) })
        #expect(byInbound[esn.inboundSPI]?.outbound.lastSent == 0x1_0000_0100 && byInbound[esn.inboundSPI]?.inbound.highestAuthenticatedSequenceNumber == 0x1_0000_0040)
        #expect(byInbound[legacy.inboundSPI]?.outbound.lastSent == 900 && byInbound[legacy.inboundSPI]?.inbound.highestAuthenticatedSequenceNumber == 500)
        #expect(byInbound[legacy.inboundSPI]?.usage.outboundPackets == 900 && byInbound[legacy.inboundSPI]?.usage.inboundPackets == 500)
        #expect(dataPlane.missing.isEmpty)
        // The state adopts them (forward only), so that checkpoints carry them.
        var adopted = state
        for checkpoint in observed { try adopted.observeCounters(checkpoint) }
        #expect(adopted.childSA(inboundSPI: esn.inboundSPI)?.outboundCounter.lastSent == 0x1_0000_0100)
    }

    /// After a takeover the plan's counters go into both kernel SAs of every Child SA, in the
    /// kind of replay state each SA has; the inbound windows count everything below their top
    /// as seen. A Child SA whose kernel SAs are missing is reported, not fatal.
    @Test func startServingWritesThePlansCountersIntoBothDirections() throws {
        var (state, kernel, esn, legacy) = try Self.setUp()
        _ = try state.updateChildSA(inboundSPI: esn.inboundSPI) {
            $0.outboundCounter = try! OutboundSequenceCounter(extendedSequenceNumbers: true, lastSent: 0x2_0000_0000)
        }
        _ = try state.updateChildSA(inboundSPI: legacy.inboundSPI) {
            $0.outboundCounter = try! OutboundSequenceCounter(extendedSequenceNumbers: false, lastSent: 5_000)
        }
        var random = SplitMix64(seed: 32)
        _ = try state.createChildSA(SAFixtures.childSA(0x5002, parent: esn.parent, window: 64, &random))
        var dataPlane = XFRMDataPlane(kernel: kernel)
        try dataPlane.startServing(state)
        kernel = dataPlane.kernel
        #expect(kernel.writes == 4 && dataPlane.missing == [0x5002])
        let ike = try #require(state.ikeSAs[esn.parent])
        let local = XFRMAddress(ike.local.address), remote = XFRMAddress(ike.remote.address)
        let esnOut = try #require(kernel.sas[XFRMSAIdentifier(destination: remote, spi: esn.outboundSPI)]?.replay)
        #expect(esnOut.outboundLastSent == 0x2_0000_0000)
        guard case .extended(let esnIn)? = kernel.sas[XFRMSAIdentifier(destination: local, spi: esn.inboundSPI)]?.replay else {
            Issue.record("the ESN SA lost its kind of replay state")
            return
        }
        #expect(UInt64(esnIn.inboundHigh) << 32 | UInt64(esnIn.inbound) == state.childSA(inboundSPI: esn.inboundSPI)!.inboundWindow.top)
        #expect(esnIn.bitmap.count == 4 && esnIn.bitmap.allSatisfy { $0 == .max }, "the bitmap length kept, everything below the top seen")
        guard case .legacy(let sent, _, _)? = kernel.sas[XFRMSAIdentifier(destination: remote, spi: legacy.outboundSPI)]?.replay,
            case .legacy(_, _, let bitmap)? = kernel.sas[XFRMSAIdentifier(destination: local, spi: legacy.inboundSPI)]?.replay
        else {
            Issue.record("the legacy SA lost its kind of replay state")
            return
        }
        #expect(sent == 5_000 && bitmap == .max)
    }
}
