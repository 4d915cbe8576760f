public import IPsecHACore
public import IPsecHASync
public import IPsecHAXFRM

/// What ``XFRMDataPlane`` needs of the kernel: an SA's counters read (GETAE) and written (NEWAE).
/// `XFRMSocket` is the real one; tests give a table.
public protocol XFRMKernel {
    /// The counters the kernel holds for `sa`.
    mutating func asyncEvent(of sa: XFRMSAIdentifier, source: XFRMAddress) throws(XFRMCodecError) -> XFRMAsyncEvent
    /// Writes `event`'s counters to its SA.
    mutating func setAsyncEvent(_ event: XFRMAsyncEvent) throws(XFRMCodecError)
}

#if canImport(Glibc)
extension XFRMSocket: XFRMKernel {}
#endif

extension XFRMAddress {
    /// The XFRM form of `address`.
    public init(_ address: IPAddress) {
        switch address.family {
        case .ipv4:
            self.init(ipv4: UInt32(truncatingIfNeeded: address.low))
        case .ipv6:
            var bytes: [UInt8] = []
            for half in [address.high, address.low] { for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: half >> UInt64(shift))) } }
            self.init(bytes: bytes)!
        }
    }

    /// XFRM's family field for `address`.
    static func family(of address: IPAddress) -> UInt16 { address.family == .ipv4 ? ipv4Family : ipv6Family }
}

/// A cluster member's ESP in the Linux kernel: the counters live in the kernel's SAs
/// (`CounterKeeping.dataPlane`). Every Child SA is two kernel SAs: the inbound one (to this
/// gateway, the Child SA's inbound SPI) holds the replay window, the outbound one (to the peer,
/// its outbound SPI) the sequence counter. The IKE stack installs them (NEWSA); this reads their
/// counters for the checkpoints and, after a takeover, writes the plan's counters into both
/// directions (the receiver infers the ESN high bits, so one direction alone fails every ICV).
public struct XFRMDataPlane<Kernel: XFRMKernel>: ClusterDataPlane {
    /// The kernel.
    public var kernel: Kernel
    /// Child SAs whose kernel SAs were missing at the last read or write (ESRCH): installed
    /// later, or deleted meanwhile.
    public private(set) var missing: [UInt32] = []

    public var counterKeeping: CounterKeeping { .dataPlane }

    public init(kernel: Kernel) { self.kernel = kernel }

    /// The kernel SAs of a Child SA: inbound (to the local address) and outbound (to the peer).
    static func kernelSAs(of child: ChildSA, in state: GatewayState) -> (inbound: XFRMSAIdentifier, outbound: XFRMSAIdentifier, local: XFRMAddress, remote: XFRMAddress)? {
        guard let ike = state.ikeSAs[child.parent] else { return nil }
        let local = XFRMAddress(ike.local.address), remote = XFRMAddress(ike.remote.address)
        let family = XFRMAddress.family(of: ike.local.address)
        return (
            XFRMSAIdentifier(destination: local, spi: child.inboundSPI, family: family),
            XFRMSAIdentifier(destination: remote, spi: child.outboundSPI, family: family), local, remote
        )
    }

    public mutating func observedCounters(of state: GatewayState) throws(DataPlaneError) -> [ChildSACounterCheckpoint] {
        missing = []
        var observed: [ChildSACounterCheckpoint] = []
        for child in state.childSAs {
            guard let sas = Self.kernelSAs(of: child, in: state) else { continue }
            let inbound: XFRMAsyncEvent
            let outbound: XFRMAsyncEvent
            do {
                inbound = try kernel.asyncEvent(of: sas.inbound, source: sas.remote)
                outbound = try kernel.asyncEvent(of: sas.outbound, source: sas.local)
            } catch where error.kernelErrno == 3 /* ESRCH */ {
                missing.append(child.inboundSPI)
                continue
            } catch {
                throw DataPlaneError("GETAE of Child SA \(child.inboundSPI): \(error)")
            }
            observed.append(
                ChildSACounterCheckpoint(
                    inboundSPI: child.inboundSPI, outbound: OutboundCounterCheckpoint(lastSent: outbound.replay?.outboundLastSent ?? 0),
                    inbound: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: inbound.replay?.inboundTop ?? 0),
                    usage: ChildSAUsage(
                        inboundBytes: inbound.lifetime?.bytes ?? 0, inboundPackets: inbound.lifetime?.packets ?? 0,
                        outboundBytes: outbound.lifetime?.bytes ?? 0, outboundPackets: outbound.lifetime?.packets ?? 0)))
        }
        return observed
    }

    /// Writes every Child SA's counters from `state` (after a takeover: the plan's) into both of
    /// its kernel SAs: read, change the counters, write back (NEWAE must keep the SA's kind of
    /// replay state and bitmap length). The inbound window counts everything up to its top as
    /// seen, as the conservative restore does.
    public mutating func startServing(_ state: GatewayState) throws(DataPlaneError) {
        missing = []
        for child in state.childSAs {
            guard let sas = Self.kernelSAs(of: child, in: state) else { continue }
            do {
                var outbound = try kernel.asyncEvent(of: sas.outbound, source: sas.local)
                outbound.replay = outbound.replay.map { Self.moving($0, outboundTo: child.outboundCounter.lastSent) }
                var inbound = try kernel.asyncEvent(of: sas.inbound, source: sas.remote)
                inbound.replay = inbound.replay.map { Self.moving($0, inboundTo: child.inboundWindow.top) }
                for var event in [outbound, inbound] {
                    event.flags = [.replayValues]
                    event.lifetime = nil
                    try kernel.setAsyncEvent(event)
                }
            } catch where error.kernelErrno == 3 /* ESRCH */ {
                missing.append(child.inboundSPI)
            } catch {
                throw DataPlaneError("NEWAE of Child SA \(child.inboundSPI): \(error)")
            }
        }
    }

    /// Nothing to stop in the kernel: the cluster address moves away, and the SAs stay for the
    /// next takeover (their counters are rewritten then).
    public mutating func stopServing() {}

    static func moving(_ replay: XFRMReplayState, outboundTo lastSent: UInt64) -> XFRMReplayState {
        switch replay {
        case .legacy(_, let top, let bitmap):
            return .legacy(outboundLastSent: UInt32(truncatingIfNeeded: lastSent), inboundTop: top, bitmap: bitmap)
        case .extended(var state):
            state.outbound = UInt32(truncatingIfNeeded: lastSent)
            state.outboundHigh = UInt32(truncatingIfNeeded: lastSent >> 32)
            return .extended(state)
        }
    }

    static func moving(_ replay: XFRMReplayState, inboundTo top: UInt64) -> XFRMReplayState {
        switch replay {
        case .legacy(let outbound, _, _):
            return .legacy(outboundLastSent: outbound, inboundTop: UInt32(truncatingIfNeeded: top), bitmap: .max)
        case .extended(var state):
            state.inbound = UInt32(truncatingIfNeeded: top)
            state.inboundHigh = UInt32(truncatingIfNeeded: top >> 32)
            state.bitmap = state.bitmap.map { _ in .max }
            return .extended(state)
        }
    }
}
