public import CIPsecHA
internal import IPsecHACore
internal import IPsecHASync

@c @implementation
public func ipsecha_child_sa_counters_init(_ counters: UnsafeMutablePointer<ipsecha_child_sa_counters>?) {
    guard let counters else { return }
    counters.pointee = ipsecha_child_sa_counters()
    counters.pointee.struct_size = structSize(ipsecha_child_sa_counters.self)
}

/// The active member's Child SA slot for `spi`, for the userspace data plane's calls.
private func userspaceSlot(_ handle: MemberHandle, _ spi: UInt32, _ call: String) throws(CAPIFailure) -> ChildSASlot {
    try handle.require(IPSECHA_DATA_PLANE_USERSPACE, for: call)
    try handle.requireActive()
    guard let slot = handle.member.state.slot(forInboundSPI: spi) else { throw CAPIFailure(IPSECHA_E_UNKNOWN_CHILD_SA, "no Child SA with inbound SPI \(spi)") }
    return slot
}

@c @implementation
public func ipsecha_outbound_sequence_number(
    _ member: OpaquePointer?, _ inboundSPI: UInt32, _ bytes: UInt64, _ sequenceNumber: UnsafeMutablePointer<UInt64>?,
    _ rekeyDue: UnsafeMutablePointer<Int32>?
) -> Int32 {
    call(member) { handle throws(CAPIFailure) in
        guard let sequenceNumber else { throw CAPIFailure(IPSECHA_E_NULL, "sequence_number is NULL") }
        let slot = try userspaceSlot(handle, inboundSPI, "ipsecha_outbound_sequence_number")
        let taken = handle.member.packetPath { state -> Result<OutboundSequenceNumber?, SequenceCounterError> in
            Result { () throws(SequenceCounterError) in try state.nextOutboundSequenceNumber(at: slot, bytes: bytes) }
        }
        switch taken {
        case .success(let number?)?:
            sequenceNumber.pointee = number.value
            rekeyDue?.pointee = number.rekeyDue ? 1 : 0
        case .failure(let error)?:
            throw CAPIFailure(IPSECHA_E_SEQUENCE_EXHAUSTED, "Child SA \(inboundSPI): \(error); rekey it")
        case .success(nil)?, nil:
            throw CAPIFailure(IPSECHA_E_UNKNOWN_CHILD_SA, "no Child SA with inbound SPI \(inboundSPI)")
        }
    }
}

@c @implementation
public func ipsecha_inbound_check(
    _ member: OpaquePointer?, _ inboundSPI: UInt32, _ wire: UInt32, _ sequenceNumber: UnsafeMutablePointer<UInt64>?
) -> Int32 {
    readingCall(member) { handle throws(CAPIFailure) in
        guard let sequenceNumber else { throw CAPIFailure(IPSECHA_E_NULL, "sequence_number is NULL") }
        let slot = try userspaceSlot(handle, inboundSPI, "ipsecha_inbound_check")
        switch handle.member.state.checkInbound(wire: wire, at: slot) {
        case .fresh(let value)?: sequenceNumber.pointee = value
        case .replayed(let value)?:
            sequenceNumber.pointee = value
            throw CAPIFailure(IPSECHA_E_REPLAYED, "sequence number \(value) was seen")
        case .stale(let value)?:
            sequenceNumber.pointee = value
            throw CAPIFailure(IPSECHA_E_STALE, "sequence number \(value) is below the window")
        case nil: throw CAPIFailure(IPSECHA_E_UNKNOWN_CHILD_SA, "no Child SA with inbound SPI \(inboundSPI)")
        }
    }
}

@c @implementation
public func ipsecha_inbound_commit(_ member: OpaquePointer?, _ inboundSPI: UInt32, _ sequenceNumber: UInt64, _ bytes: UInt64) -> Int32 {
    call(member) { handle throws(CAPIFailure) in
        let slot = try userspaceSlot(handle, inboundSPI, "ipsecha_inbound_commit")
        let refusal = handle.member.packetPath { state -> ReplayWindowRejection? in
            do throws(ReplayWindowRejection) {
                try state.commitInbound(sequenceNumber, bytes: bytes, at: slot)
                return nil
            } catch {
                return error
            }
        }
        switch refusal {
        case nil, nil?: break
        case .replayed??: throw CAPIFailure(IPSECHA_E_REPLAYED, "sequence number \(sequenceNumber) was seen")
        case .stale??: throw CAPIFailure(IPSECHA_E_STALE, "sequence number \(sequenceNumber) is below the window")
        case .beyondSequenceSpace??: throw CAPIFailure(IPSECHA_E_INVALID_ARGUMENT, "sequence number \(sequenceNumber) is beyond the Child SA's sequence space")
        }
    }
}

@c @implementation
public func ipsecha_observe_counters(
    _ member: OpaquePointer?, _ counters: UnsafePointer<ipsecha_child_sa_counters>?, _ count: Int, _ refused: UnsafeMutablePointer<Int>?
) -> Int32 {
    call(member) { handle throws(CAPIFailure) in
        try handle.require(IPSECHA_DATA_PLANE_OBSERVED, for: "ipsecha_observe_counters")
        try handle.requireActive()
        // A bound that keeps count * stride far from overflow; a kernel has no more SAs.
        var observed: [ChildSACounterCheckpoint] = []
        for (index, entry) in try buffer(counters, count, limit: 1 << 24, "counters").enumerated() {
            guard entry.struct_size == structSize(ipsecha_child_sa_counters.self) else {
                throw CAPIFailure(IPSECHA_E_STRUCT_SIZE, "counters[\(index)].struct_size is \(entry.struct_size), not \(structSize(ipsecha_child_sa_counters.self))")
            }
            observed.append(
                ChildSACounterCheckpoint(
                    inboundSPI: entry.inbound_spi, outbound: OutboundCounterCheckpoint(lastSent: entry.outbound_last_sent),
                    inbound: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: entry.inbound_highest),
                    usage: ChildSAUsage(
                        inboundBytes: entry.inbound_bytes, inboundPackets: entry.inbound_packets, outboundBytes: entry.outbound_bytes,
                        outboundPackets: entry.outbound_packets)))
        }
        do throws(ClusterMemberError) {
            let skipped = try handle.member.observeCounters(observed)
            refused?.pointee = skipped.count
        } catch {
            throw CAPIFailure(error)
        }
    }
}

@c @implementation
public func ipsecha_set_counter_report_interval(_ member: OpaquePointer?, _ intervalNanoseconds: UInt64) -> Int32 {
    call(member) { handle throws(CAPIFailure) in
        try handle.require(IPSECHA_DATA_PLANE_OBSERVED, for: "ipsecha_set_counter_report_interval")
        guard intervalNanoseconds <= 3_600_000_000_000 else {
            throw CAPIFailure(IPSECHA_E_INVALID_ARGUMENT, "interval_ns \(intervalNanoseconds) is more than an hour")
        }
        handle.member.counterReportInterval = .nanoseconds(Int64(intervalNanoseconds))
    }
}

@c @implementation
public func ipsecha_child_sa_counters_get(
    _ member: OpaquePointer?, _ inboundSPI: UInt32, _ counters: UnsafeMutablePointer<ipsecha_child_sa_counters>?
) -> Int32 {
    readingCall(member) { handle throws(CAPIFailure) in
        guard let counters else { throw CAPIFailure(IPSECHA_E_NULL, "counters is NULL") }
        _ = try readStructure(UnsafePointer(counters), "counters")
        guard let checkpoint = handle.member.state.childSA(inboundSPI: inboundSPI)?.counterCheckpoint else {
            throw CAPIFailure(IPSECHA_E_UNKNOWN_CHILD_SA, "no Child SA with inbound SPI \(inboundSPI)")
        }
        var value = ipsecha_child_sa_counters()
        value.struct_size = structSize(ipsecha_child_sa_counters.self)
        value.inbound_spi = inboundSPI
        value.outbound_last_sent = checkpoint.outbound.lastSent
        value.inbound_highest = checkpoint.inbound.highestAuthenticatedSequenceNumber
        value.inbound_bytes = checkpoint.usage.inboundBytes
        value.inbound_packets = checkpoint.usage.inboundPackets
        value.outbound_bytes = checkpoint.usage.outboundBytes
        value.outbound_packets = checkpoint.usage.outboundPackets
        counters.pointee = value
    }
}
