public import CIPsecHA
internal import IPsecHACore
internal import IPsecHASync

// MARK: From C's structures to the state's values

/// The longest key the C structures take: far above any IKEv2 transform's, small enough that
/// a wrong length is caught before it reads far.
private let longestIKEKeys = 1_024
private let longestChildSAKey = 512

/// An address from a C structure's family and 16 bytes.
private func address(_ family: UInt8, _ bytes: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8), _ name: String) throws(CAPIFailure) -> IPAddress {
    let all = withUnsafeBytes(of: bytes) { Array($0) }
    do {
        switch family {
        case 4: return try IPAddress(bytes: all.prefix(4))
        case 6: return try IPAddress(bytes: all)
        default: throw CAPIFailure(IPSECHA_E_INVALID_ARGUMENT, "\(name): address family \(family) is neither 4 nor 6")
        }
    } catch let failure as CAPIFailure {
        throw failure
    } catch {
        throw CAPIFailure(IPSECHA_E_INVALID_ARGUMENT, "\(name): \(error)")
    }
}

private func invalid(_ message: String) -> CAPIFailure { CAPIFailure(IPSECHA_E_INVALID_ARGUMENT, message) }

/// An IKE SA from C's description, owned by `owner`.
func ikeSA(_ sa: ipsecha_ike_sa, owner: ClusterMemberID) throws(CAPIFailure) -> IKESA {
    let keyBytes = try buffer(sa.keys, sa.keys_length, limit: longestIKEKeys, "keys")
    let lengths = withUnsafeBytes(of: sa.key_lengths) { Array($0.bindMemory(to: Int.self)) }
    guard lengths.allSatisfy({ $0 >= 0 && $0 <= longestIKEKeys }) else { throw invalid("key_lengths: each is at most \(longestIKEKeys)") }
    let keys: IKEKeys
    do { keys = try IKEKeys(packed: KeyMaterial(copying: keyBytes), lengths: lengths) } catch {
        throw invalid("key_lengths add up to \(lengths.reduce(0, +)), keys_length is \(keyBytes.count)")
    }
    let messageIDs: IKEMessageIDWindows
    do {
        messageIDs = try IKEMessageIDWindows(
            resumingAt: sa.next_request_id, expecting: sa.next_expected_request_id, peerWindowSize: max(sa.peer_window_size, 1),
            localWindowSize: max(sa.local_window_size, 1))
    } catch {
        throw invalid("message IDs: \(error)")
    }
    let transforms = IKETransforms(
        encryption: EncryptionAlgorithm(rawValue: sa.encryption), encryptionKeyLength: sa.encryption_key_bits == 0 ? nil : sa.encryption_key_bits,
        prf: PseudorandomFunction(rawValue: sa.prf), integrity: IntegrityAlgorithm(rawValue: sa.integrity),
        keyExchange: KeyExchangeMethod(rawValue: sa.key_exchange))
    let extensions = IKEExtensions(
        messageIDSync: sa.extensions & IPSECHA_IKE_MESSAGE_ID_SYNC != 0, replayCounterSync: sa.extensions & IPSECHA_IKE_REPLAY_COUNTER_SYNC != 0,
        childSAsUseExtendedSequenceNumbers: sa.extensions & IPSECHA_IKE_CHILD_SA_ESN != 0)
    do {
        return try IKESA(
            identifier: IKESAIdentifier(initiatorSPI: sa.initiator_spi, responderSPI: sa.responder_spi),
            isOriginalInitiator: sa.original_initiator != 0,
            local: Endpoint(address: try address(sa.address_family, sa.local_address, "local_address"), port: sa.local_port, udpEncapsulation: sa.udp_encapsulation != 0),
            remote: Endpoint(address: try address(sa.address_family, sa.remote_address, "remote_address"), port: sa.remote_port, udpEncapsulation: sa.udp_encapsulation != 0),
            transforms: transforms, keys: keys, messageIDs: messageIDs, extensions: extensions, owner: owner)
    } catch let failure as CAPIFailure {
        throw failure
    } catch {
        throw invalid("IKE SA: \(error)")
    }
}

/// Traffic selectors from a C array.
private func selectors(_ pointer: UnsafePointer<ipsecha_traffic_selector>?, _ count: Int, _ name: String) throws(CAPIFailure) -> [TrafficSelector] {
    var result: [TrafficSelector] = []
    for selector in try buffer(pointer, count, limit: ChildSA.maximumSelectors, name) {
        do {
            result.append(
                try TrafficSelector(
                    startAddress: try address(selector.address_family, selector.start_address, name),
                    endAddress: try address(selector.address_family, selector.end_address, name), ipProtocol: selector.ip_protocol,
                    startPort: selector.start_port, endPort: selector.end_port))
        } catch let failure as CAPIFailure {
            throw failure
        } catch {
            throw invalid("\(name): \(error)")
        }
    }
    return result
}

/// One direction's keys of a Child SA.
private func childSAKeys(
    _ encryption: UnsafePointer<UInt8>?, _ encryptionLength: Int, _ integrity: UnsafePointer<UInt8>?, _ integrityLength: Int, _ name: String
) throws(CAPIFailure) -> ChildSAKeys {
    let encryptionKey = try buffer(encryption, encryptionLength, limit: longestChildSAKey, "\(name)_encryption_key")
    let integrityKey = try buffer(integrity, integrityLength, limit: longestChildSAKey, "\(name)_integrity_key")
    return ChildSAKeys(encryption: KeyMaterial(copying: encryptionKey), integrity: integrityKey.isEmpty ? nil : KeyMaterial(copying: integrityKey))
}

/// A Child SA from C's description, installed at `now` and owned by `owner`.
func childSA(_ sa: ipsecha_child_sa, owner: ClusterMemberID, now: Timestamp) throws(CAPIFailure) -> ChildSA {
    func limit(_ value: UInt64) -> UInt64? { value == 0 ? nil : value }
    let esn = sa.extended_sequence_numbers != 0
    let inboundKeys = try childSAKeys(
        sa.inbound_encryption_key, sa.inbound_encryption_key_length, sa.inbound_integrity_key, sa.inbound_integrity_key_length, "inbound")
    let outboundKeys = try childSAKeys(
        sa.outbound_encryption_key, sa.outbound_encryption_key_length, sa.outbound_integrity_key, sa.outbound_integrity_key_length, "outbound")
    let local = try selectors(sa.local_selectors, sa.local_selector_count, "local_selectors")
    let remote = try selectors(sa.remote_selectors, sa.remote_selector_count, "remote_selectors")
    do {
        return try ChildSA(
            inboundSPI: sa.inbound_spi, outboundSPI: sa.outbound_spi, mode: sa.transport_mode != 0 ? .transport : .tunnel,
            localSelectors: local, remoteSelectors: remote,
            transforms: ChildSATransforms(
                encryption: EncryptionAlgorithm(rawValue: sa.encryption), encryptionKeyLength: sa.encryption_key_bits == 0 ? nil : sa.encryption_key_bits,
                integrity: IntegrityAlgorithm(rawValue: sa.integrity)),
            inboundKeys: inboundKeys, outboundKeys: outboundKeys,
            outboundCounter: try OutboundSequenceCounter(extendedSequenceNumbers: esn),
            inboundWindow: try ReplayWindow(size: sa.replay_window_size, extendedSequenceNumbers: esn),
            lifetime: try ChildSALifetime(
                soft: LifetimeLimits(seconds: limit(sa.soft_seconds), bytes: limit(sa.soft_bytes), packets: limit(sa.soft_packets)),
                hard: LifetimeLimits(seconds: limit(sa.hard_seconds), bytes: limit(sa.hard_bytes), packets: limit(sa.hard_packets)), installedAt: now),
            requestID: sa.request_id, parent: IKESAIdentifier(initiatorSPI: sa.ike_initiator_spi, responderSPI: sa.ike_responder_spi),
            owner: owner)
    } catch {
        throw invalid("Child SA: \(error)")
    }
}

// MARK: Changes

/// Runs `body` as one replicated change of the member behind `pointer` and stores its token.
/// Every argument is converted before `body` runs, so that a bad one changes nothing.
private func change(
    _ pointer: OpaquePointer?, now: UInt64, token: UnsafeMutablePointer<UInt64>?,
    _ body: (MemberHandle) throws(CAPIFailure) -> (inout GatewayState, inout [StateChange]) throws(GatewayStateError) -> Void
) -> Int32 {
    call(pointer) { handle throws(CAPIFailure) in
        let mutation = try body(handle)
        do throws(ClusterMemberError) {
            let issued = try handle.member.update(now: Timestamp(nanoseconds: now)) { state, changes throws(GatewayStateError) in
                try mutation(&state, &changes)
            }
            token?.pointee = issued.value
        } catch {
            throw CAPIFailure(error)
        }
    }
}

private func identifier(_ initiator: UInt64, _ responder: UInt64) -> IKESAIdentifier {
    IKESAIdentifier(initiatorSPI: initiator, responderSPI: responder)
}

@c @implementation
public func ipsecha_ike_sa_init(_ sa: UnsafeMutablePointer<ipsecha_ike_sa>?) {
    guard let sa else { return }
    sa.pointee = ipsecha_ike_sa()
    sa.pointee.struct_size = structSize(ipsecha_ike_sa.self)
    sa.pointee.address_family = 4
    sa.pointee.local_port = 500
    sa.pointee.remote_port = 500
    sa.pointee.peer_window_size = 1
    sa.pointee.local_window_size = 1
}

@c @implementation
public func ipsecha_ike_sa_create(_ member: OpaquePointer?, _ sa: UnsafePointer<ipsecha_ike_sa>?, _ now: UInt64, _ token: UnsafeMutablePointer<UInt64>?) -> Int32 {
    change(member, now: now, token: token) { handle throws(CAPIFailure) in
        let value = try ikeSA(try readStructure(sa, "sa"), owner: handle.member.configuration.channel.member)
        return { state, changes throws(GatewayStateError) in changes += try state.createIKESA(value) }
    }
}

@c @implementation
public func ipsecha_ike_sa_update_message_ids(
    _ member: OpaquePointer?, _ initiatorSPI: UInt64, _ responderSPI: UInt64, _ nextRequestID: UInt64, _ nextExpectedRequestID: UInt64,
    _ now: UInt64, _ token: UnsafeMutablePointer<UInt64>?
) -> Int32 {
    change(member, now: now, token: token) { _ in
        let sa = identifier(initiatorSPI, responderSPI)
        return { state, changes throws(GatewayStateError) in
            guard let windows = state.ikeSAs[sa]?.messageIDs else { throw .unknownIKESA(sa) }
            let resumed: IKEMessageIDWindows
            do throws(IKEMessageIDError) {
                resumed = try IKEMessageIDWindows(
                    resumingAt: nextRequestID, expecting: nextExpectedRequestID, peerWindowSize: windows.requests.peerWindowSize,
                    localWindowSize: windows.responses.windowSize)
            } catch {
                throw .messageIDs(error)
            }
            changes += try state.updateMessageIDs(of: sa) { $0 = resumed }
        }
    }
}

@c @implementation
public func ipsecha_ike_sa_exchange(
    _ member: OpaquePointer?, _ initiatorSPI: UInt64, _ responderSPI: UInt64, _ messageID: UInt32, _ initiatedHere: Int32, _ finished: Int32,
    _ now: UInt64, _ token: UnsafeMutablePointer<UInt64>?
) -> Int32 {
    call(member) { handle throws(CAPIFailure) in
        let sa = identifier(initiatorSPI, responderSPI)
        try handle.requireActive()
        guard handle.member.state.ikeSAs.contains(sa) else { throw CAPIFailure(.unknownIKESA(sa)) }
        do throws(ClusterMemberError) {
            let issued = try handle.member.replicateExchange(
                of: sa, messageID: messageID, initiatedHere: initiatedHere != 0, finished: finished != 0, now: Timestamp(nanoseconds: now))
            token?.pointee = issued.value
        } catch {
            throw CAPIFailure(error)
        }
    }
}

@c @implementation
public func ipsecha_ike_sa_rekey(
    _ member: OpaquePointer?, _ oldInitiatorSPI: UInt64, _ oldResponderSPI: UInt64, _ newSA: UnsafePointer<ipsecha_ike_sa>?, _ now: UInt64,
    _ token: UnsafeMutablePointer<UInt64>?
) -> Int32 {
    change(member, now: now, token: token) { handle throws(CAPIFailure) in
        let value = try ikeSA(try readStructure(newSA, "new_sa"), owner: handle.member.configuration.channel.member)
        return { state, changes throws(GatewayStateError) in changes += try state.rekeyIKESA(identifier(oldInitiatorSPI, oldResponderSPI), to: value) }
    }
}

@c @implementation
public func ipsecha_ike_sa_undo_rekey(
    _ member: OpaquePointer?, _ initiatorSPI: UInt64, _ responderSPI: UInt64, _ now: UInt64, _ token: UnsafeMutablePointer<UInt64>?
) -> Int32 {
    let sa = identifier(initiatorSPI, responderSPI)
    return change(member, now: now, token: token) { handle throws(CAPIFailure) in
        // The state names the missing predecessor as an unknown parent; to C that is no
        // unknown IKE SA (this one exists) but a rekey that cannot be taken back.
        if let held = handle.member.state.ikeSAs[sa], held.rekeyedFrom.map({ !handle.member.state.ikeSAs.contains($0) }) ?? true {
            throw CAPIFailure(IPSECHA_E_STATE, "\(sa) was not made by a rekey whose predecessor still exists")
        }
        return { state, changes throws(GatewayStateError) in changes += try state.undoIKESARekey(sa) }
    }
}

@c @implementation
public func ipsecha_ike_sa_delete(
    _ member: OpaquePointer?, _ initiatorSPI: UInt64, _ responderSPI: UInt64, _ now: UInt64, _ token: UnsafeMutablePointer<UInt64>?
) -> Int32 {
    change(member, now: now, token: token) { _ in
        { state, changes throws(GatewayStateError) in changes += try state.deleteIKESA(identifier(initiatorSPI, responderSPI)) }
    }
}

@c @implementation
public func ipsecha_child_sa_init(_ sa: UnsafeMutablePointer<ipsecha_child_sa>?) {
    guard let sa else { return }
    sa.pointee = ipsecha_child_sa()
    sa.pointee.struct_size = structSize(ipsecha_child_sa.self)
    sa.pointee.replay_window_size = 64
}

@c @implementation
public func ipsecha_child_sa_create(_ member: OpaquePointer?, _ sa: UnsafePointer<ipsecha_child_sa>?, _ now: UInt64, _ token: UnsafeMutablePointer<UInt64>?) -> Int32 {
    change(member, now: now, token: token) { handle throws(CAPIFailure) in
        let value = try childSA(try readStructure(sa, "sa"), owner: handle.member.configuration.channel.member, now: Timestamp(nanoseconds: now))
        return { state, changes throws(GatewayStateError) in changes += try state.createChildSA(value) }
    }
}

@c @implementation
public func ipsecha_child_sa_rekey(
    _ member: OpaquePointer?, _ oldInboundSPI: UInt32, _ newSA: UnsafePointer<ipsecha_child_sa>?, _ now: UInt64, _ token: UnsafeMutablePointer<UInt64>?
) -> Int32 {
    change(member, now: now, token: token) { handle throws(CAPIFailure) in
        let value = try childSA(try readStructure(newSA, "new_sa"), owner: handle.member.configuration.channel.member, now: Timestamp(nanoseconds: now))
        if let old = handle.member.state.childSA(inboundSPI: oldInboundSPI), old.parent != value.parent {
            throw invalid("new_sa belongs to \(value.parent), the Child SA it replaces to \(old.parent)")
        }
        return { state, changes throws(GatewayStateError) in
            // The old one is checked first and deleted last, so that a failure changes nothing:
            // creating the new one is the only step that can fail.
            guard state.childSA(inboundSPI: oldInboundSPI) != nil else { throw .unknownChildSA(oldInboundSPI) }
            changes += try state.createChildSA(value)
            changes += try state.deleteChildSA(inboundSPI: oldInboundSPI)
        }
    }
}

@c @implementation
public func ipsecha_child_sa_delete(_ member: OpaquePointer?, _ inboundSPI: UInt32, _ now: UInt64, _ token: UnsafeMutablePointer<UInt64>?) -> Int32 {
    change(member, now: now, token: token) { _ in
        { state, changes throws(GatewayStateError) in changes += try state.deleteChildSA(inboundSPI: inboundSPI) }
    }
}
