public import CIPsecHA
internal import IPsecHACore
internal import IPsecHASync

// MARK: Configuration and lifecycle

/// The longest interval the configuration takes (an hour): every duration then fits `Duration`
/// arithmetic with room to spare.
private let longestInterval: UInt64 = 3_600_000_000_000

/// `last_resort_takeover_ns` by default, and for 0 (the field was a zero `reserved` before).
private let defaultLastResortTakeover: UInt64 = 1_000_000_000

@c @implementation
public func ipsecha_config_init_size(_ config: UnsafeMutablePointer<ipsecha_config>?, _ size: Int) -> Int32 {
    guard let config else { return IPSECHA_E_NULL.rawValue }
    guard size == MemoryLayout<ipsecha_config>.size || size == IPSECHA_CONFIG_SIZE_WITHOUT_CIPHER else {
        return IPSECHA_E_STRUCT_SIZE.rawValue
    }
    // No further than the caller's size: a caller built against a smaller header has
    // something else of its own (on its stack, as often as not) right after the structure.
    var value = defaultConfiguration()
    value.struct_size = UInt32(size)
    withUnsafeBytes(of: &value) { UnsafeMutableRawPointer(config).copyMemory(from: $0.baseAddress!, byteCount: size) }
    return IPSECHA_OK.rawValue
}

@c @implementation
public func ipsecha_config_init(_ config: UnsafeMutablePointer<ipsecha_config>?) {
    _ = ipsecha_config_init_size(config, Int(IPSECHA_CONFIG_SIZE_WITHOUT_CIPHER))
}

/// `ipsecha_config`'s defaults, as the header documents them (`struct_size` is the caller's).
private func defaultConfiguration() -> ipsecha_config {
    var value = ipsecha_config()
    value.epoch = 1
    value.data_plane = IPSECHA_DATA_PLANE_USERSPACE.rawValue
    value.checkpoint_interval_ns = 50_000_000
    value.checkpoint_packets = 4_096
    value.heartbeat_interval_ns = 50_000_000
    value.miss_count = 3
    value.inbound_policy = IPSECHA_INBOUND_CONSERVATIVE.rawValue
    value.release_deadline_ns = 2_000_000_000
    value.maximum_datagram_size = 1_400
    value.sync_cipher = IPSECHA_SYNC_CIPHER_CHACHA20_POLY1305.rawValue
    value.last_resort_takeover_ns = defaultLastResortTakeover
    return value
}

@c @implementation
public func ipsecha_sync_cipher_available(_ cipher: UInt32) -> Int32 {
    (try? syncCipher(cipher))?.isAvailable == true ? 1 : 0
}

/// The channel's cipher for C's `ipsecha_sync_cipher` value.
private func syncCipher(_ value: UInt32) throws(CAPIFailure) -> SyncChannelCipher {
    switch ipsecha_sync_cipher(value) {
    case IPSECHA_SYNC_CIPHER_CHACHA20_POLY1305: .chacha20Poly1305
    case IPSECHA_SYNC_CIPHER_AES256_GCM: .aes256GCM
    default: throw CAPIFailure(IPSECHA_E_INVALID_ARGUMENT, "unknown sync_cipher \(value)")
    }
}

/// A caller's `ipsecha_config`: this header's, or one built against the header before
/// `sync_cipher` (its size then says so; the four bytes where the field now lies were its
/// tail padding, whatever they hold, and it gets ChaCha20-Poly1305).
func readConfiguration(_ pointer: UnsafePointer<ipsecha_config>?) throws(CAPIFailure) -> ipsecha_config {
    guard let pointer else { throw CAPIFailure(IPSECHA_E_NULL, "config is NULL") }
    let size = UnsafeRawPointer(pointer).loadUnaligned(as: UInt32.self)
    guard size == IPSECHA_CONFIG_SIZE_WITHOUT_CIPHER else { return try readStructure(pointer, "config") }
    var value = ipsecha_config()
    withUnsafeMutableBytes(of: &value) { $0.copyMemory(from: UnsafeRawBufferPointer(start: pointer, count: Int(size))) }
    value.sync_cipher = IPSECHA_SYNC_CIPHER_CHACHA20_POLY1305.rawValue
    return value
}

/// A ``ClusterMemberConfiguration`` from C's, every field checked.
func memberConfiguration(_ config: ipsecha_config) throws(CAPIFailure) -> (ClusterMemberConfiguration, ipsecha_data_plane) {
    func invalid(_ message: String) -> CAPIFailure { CAPIFailure(IPSECHA_E_INVALID_ARGUMENT, message) }
    guard config.member_id != 0, config.active_member_id != 0 else { throw invalid("member IDs start at 1") }
    let peers = try buffer(config.peer_ids, config.peer_count, limit: 64, "peer_ids").map(ClusterMemberID.init(rawValue:))
    guard !peers.isEmpty else { throw invalid("a member needs at least one peer") }
    let me = ClusterMemberID(rawValue: config.member_id)
    guard !peers.contains(me), Set(peers).count == peers.count, !peers.contains(ClusterMemberID(rawValue: 0)) else {
        throw invalid("peer_ids must be distinct, not 0, and not this member")
    }
    let active = ClusterMemberID(rawValue: config.active_member_id)
    guard active == me || peers.contains(active) else { throw invalid("active_member_id is neither this member nor a peer") }
    let keyBytes = try buffer(config.cluster_key, config.cluster_key_length, limit: 1_024, "cluster_key")
    let key: ChannelKey
    do { key = try ChannelKey(bytes: keyBytes) } catch { throw CAPIFailure(IPSECHA_E_KEY, "cluster key: \(error)") }
    let dataPlane = ipsecha_data_plane(config.data_plane)
    guard dataPlane == IPSECHA_DATA_PLANE_USERSPACE || dataPlane == IPSECHA_DATA_PLANE_OBSERVED else { throw invalid("unknown data_plane \(config.data_plane)") }
    for (name, value) in [("checkpoint_interval_ns", config.checkpoint_interval_ns), ("heartbeat_interval_ns", config.heartbeat_interval_ns)] {
        guard value >= 1_000_000, value <= longestInterval else { throw invalid("\(name) must be 1 ms to 1 hour, not \(value)") }
    }
    guard config.release_deadline_ns <= longestInterval else { throw invalid("release_deadline_ns is over an hour") }
    guard config.checkpoint_packets >= 1 else { throw invalid("checkpoint_packets must be at least 1") }
    guard (1...1_000).contains(config.miss_count) else { throw invalid("miss_count must be 1 to 1,000") }
    guard SyncChannelConfiguration.supportedDatagramSizes.contains(Int(config.maximum_datagram_size)) else { throw invalid("maximum_datagram_size must be 512 to 65,507") }
    let lastResort = config.last_resort_takeover_ns == 0 ? defaultLastResortTakeover : config.last_resort_takeover_ns
    guard lastResort == IPSECHA_LAST_RESORT_NEVER || (1_000_000...longestInterval).contains(lastResort) else {
        throw invalid("last_resort_takeover_ns must be 1 ms to 1 hour or IPSECHA_LAST_RESORT_NEVER, not \(lastResort)")
    }
    let cipher = try syncCipher(config.sync_cipher)
    guard cipher.isAvailable else { throw invalid("sync_cipher \(cipher) does not run on this CPU") }
    let inbound: InboundTakeoverPolicy
    switch ipsecha_inbound_policy(config.inbound_policy) {
    case IPSECHA_INBOUND_CONSERVATIVE: inbound = .conservative
    case IPSECHA_INBOUND_REPLAY_COUNTER_SYNC: inbound = .replayCounterSyncWhereNegotiated
    case IPSECHA_INBOUND_PERMISSIVE_UNSAFE: inbound = .permissiveUnsafe
    default: throw invalid("unknown inbound_policy \(config.inbound_policy)")
    }

    var channel = SyncChannelConfiguration(clusterID: config.cluster_id, member: me, epoch: config.epoch, key: key, peers: peers)
    channel.heartbeatInterval = .nanoseconds(Int64(config.heartbeat_interval_ns))
    channel.maximumDatagramSize = Int(config.maximum_datagram_size)
    channel.cipher = cipher
    var configuration = ClusterMemberConfiguration(channel: channel, activeMember: active)
    configuration.checkpoints = CounterCheckpointPolicy(packets: config.checkpoint_packets, interval: .nanoseconds(Int64(config.checkpoint_interval_ns)))
    configuration.takeover = TakeoverPolicy(minimumAdvance: config.checkpoint_packets, inbound: inbound)
    configuration.missCount = UInt64(config.miss_count)
    configuration.followsVRRP = config.follows_vrrp != 0
    configuration.releaseDeadline = config.release_deadline_ns == 0 ? nil : .nanoseconds(Int64(config.release_deadline_ns))
    configuration.lastResortTakeover = lastResort == IPSECHA_LAST_RESORT_NEVER ? nil : .nanoseconds(Int64(lastResort))
    return (configuration, dataPlane)
}

@c @implementation
public func ipsecha_member_create(_ config: UnsafePointer<ipsecha_config>?, _ memberOut: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard let memberOut else { return IPSECHA_E_NULL.rawValue }
    memberOut.pointee = nil
    bootstrapLogging()
    do throws(CAPIFailure) {
        let (configuration, dataPlane) = try memberConfiguration(try readConfiguration(config))
        let member: ClusterMember
        do { member = try ClusterMember(configuration: configuration) } catch { throw CAPIFailure(IPSECHA_E_INVALID_ARGUMENT, "\(error)") }
        memberOut.pointee = OpaquePointer(Unmanaged.passRetained(MemberHandle(member: member, dataPlane: dataPlane)).toOpaque())
        return IPSECHA_OK.rawValue
    } catch {
        return error.status.rawValue
    }
}

@c @implementation
public func ipsecha_member_destroy(_ member: OpaquePointer?) {
    guard let member else { return }
    Unmanaged<MemberHandle>.fromOpaque(UnsafeRawPointer(member)).release()
}

// MARK: Inputs

@c @implementation
public func ipsecha_receive(_ member: OpaquePointer?, _ datagram: UnsafePointer<UInt8>?, _ length: Int, _ now: UInt64) -> Int32 {
    call(member) { handle throws(CAPIFailure) in
        let bytes = try buffer(datagram, length, limit: 65_535, "datagram")
        guard !bytes.isEmpty else { throw CAPIFailure(IPSECHA_E_INVALID_ARGUMENT, "an empty datagram") }
        handle.member.receive(Array(bytes), now: Timestamp(nanoseconds: now))
    }
}

@c @implementation
public func ipsecha_tick(_ member: OpaquePointer?, _ now: UInt64) -> Int32 {
    call(member) { handle in handle.member.tick(now: Timestamp(nanoseconds: now)) }
}

@c @implementation
public func ipsecha_next_deadline(_ member: OpaquePointer?, _ deadline: UnsafeMutablePointer<UInt64>?) -> Int32 {
    readingCall(member) { handle throws(CAPIFailure) in
        guard let deadline else { throw CAPIFailure(IPSECHA_E_NULL, "deadline_ns is NULL") }
        deadline.pointee = handle.member.nextDeadline.nanoseconds
    }
}

@c @implementation
public func ipsecha_signal_member(_ member: OpaquePointer?, _ signal: UInt32, _ reason: UnsafePointer<CChar>?, _ now: UInt64) -> Int32 {
    call(member) { handle throws(CAPIFailure) in
        let text = reasonText(reason)
        let decision: ClusterMemberSignal
        switch ipsecha_signal(signal) {
        case IPSECHA_SIGNAL_VRRP_MASTER: decision = .vrrp(.master)
        case IPSECHA_SIGNAL_VRRP_BACKUP: decision = .vrrp(.backup)
        case IPSECHA_SIGNAL_VRRP_FAULT: decision = .vrrp(.fault)
        case IPSECHA_SIGNAL_VRRP_STOP: decision = .vrrp(.stop)
        case IPSECHA_SIGNAL_TAKE_OVER: decision = .takeOver(reason: text.isEmpty ? "operator" : text)
        case IPSECHA_SIGNAL_STEP_DOWN: decision = .stepDown(reason: text.isEmpty ? "operator" : text)
        case IPSECHA_SIGNAL_SWITCH_OVER:
            do throws(ClusterMemberError) {
                try handle.member.switchOver(now: Timestamp(nanoseconds: now))
            } catch {
                throw CAPIFailure(error == .notActive ? IPSECHA_E_NOT_ACTIVE : IPSECHA_E_STATE, "\(error)")
            }
            return
        default: throw CAPIFailure(IPSECHA_E_INVALID_ARGUMENT, "unknown signal \(signal)")
        }
        handle.member.signal(decision, now: Timestamp(nanoseconds: now))
    }
}

@c @implementation
public func ipsecha_member_readiness(_ member: OpaquePointer?, _ readiness: UnsafeMutablePointer<UInt32>?, _ electable: UnsafeMutablePointer<UInt32>?) -> Int32 {
    readingCall(member) { handle throws(CAPIFailure) in
        guard let readiness, let electable else { throw CAPIFailure(IPSECHA_E_NULL, "readiness or electable is NULL") }
        let value = handle.member.readiness
        let code: ipsecha_readiness =
            switch value {
            case .active: IPSECHA_READINESS_ACTIVE
            case .completeCopy: IPSECHA_READINESS_COMPLETE_COPY
            case .lastResort: IPSECHA_READINESS_LAST_RESORT
            case .resyncing: IPSECHA_READINESS_RESYNCING
            case .incomplete: IPSECHA_READINESS_INCOMPLETE
            }
        readiness.pointee = code.rawValue
        electable.pointee = value.isElectable ? 1 : 0
    }
}

@c @implementation
public func ipsecha_member_status_init(_ status: UnsafeMutablePointer<ipsecha_member_status>?) {
    guard let status else { return }
    status.pointee = ipsecha_member_status()
    status.pointee.struct_size = structSize(ipsecha_member_status.self)
}

@c @implementation
public func ipsecha_member_status_get(_ member: OpaquePointer?, _ status: UnsafeMutablePointer<ipsecha_member_status>?) -> Int32 {
    readingCall(member) { handle throws(CAPIFailure) in
        let state = handle.member.state
        var value = ipsecha_member_status()
        value.struct_size = structSize(ipsecha_member_status.self)
        value.active = handle.member.isActive ? 1 : 0
        value.ready = handle.member.isReady ? 1 : 0
        value.resyncing = handle.member.isResyncing ? 1 : 0
        value.ike_sa_count = UInt64(state.ikeSAs.count)
        value.child_sa_count = UInt64(state.childSACount)
        try writeStructure(value, to: status, "status")
    }
}

// MARK: Actions

@c @implementation
public func ipsecha_action_init(_ action: UnsafeMutablePointer<ipsecha_action>?) {
    guard let action else { return }
    action.pointee = ipsecha_action()
    action.pointee.struct_size = structSize(ipsecha_action.self)
    action.pointee.reason = StaticText.empty
}

@c @implementation
public func ipsecha_next_action(_ member: OpaquePointer?, _ action: UnsafeMutablePointer<ipsecha_action>?) -> Int32 {
    var status = IPSECHA_OK.rawValue
    let result = call(member) { handle throws(CAPIFailure) in
        guard let action else { throw CAPIFailure(IPSECHA_E_NULL, "action is NULL") }
        // Checked before an action is taken from the member, so that a bad call loses none.
        _ = try readStructure(UnsafePointer(action), "action")
        guard let value = nextCAction(handle) else {
            status = IPSECHA_NO_ACTION.rawValue
            return
        }
        action.pointee = value
    }
    return result == IPSECHA_OK.rawValue ? status : result
}

/// The member's next action in C's terms; load-sharing actions, which a member made through C
/// never produces (its configuration has no load sharing), are passed over, and so are
/// datagrams another member relayed during a switchover (the C API has no relay yet: they are
/// lost, as without relaying).
private func nextCAction(_ handle: MemberHandle) -> ipsecha_action? {
    while let action = handle.member.nextAction() {
        var value = ipsecha_action()
        value.struct_size = structSize(ipsecha_action.self)
        value.reason = StaticText.empty
        switch action {
        case .transmit(let peer, let datagram):
            value.kind = IPSECHA_ACTION_TRANSMIT.rawValue
            value.peer = peer.rawValue
            value.datagram = handle.datagram.store(datagram)
            value.datagram_length = datagram.count
        case .released(let token):
            value.kind = IPSECHA_ACTION_RELEASED.rawValue
            value.token = token.value
        case .becameReady:
            value.kind = IPSECHA_ACTION_BECAME_READY.rawValue
        case .countersCheckpointed(let entries):
            value.kind = IPSECHA_ACTION_COUNTERS_CHECKPOINTED.rawValue
            value.count = entries.count
        case .tookOver(let plan, let rekey):
            handle.plan = plan
            value.kind = IPSECHA_ACTION_TOOK_OVER.rawValue
            value.ike_sa_count = plan.ikeSAs.count
            value.child_sa_count = plan.childSAs.count
            value.rekey_spis = handle.rekeySPIs.store(rekey)
            value.rekey_count = rekey.count
        case .steppedDown(let reason):
            value.kind = IPSECHA_ACTION_STEPPED_DOWN.rawValue
            switch reason {
            case .newerActive(let other, let epoch): value.reason = handle.reason.store(text: "\(other) is active with the newer epoch \(epoch)")
            case .external(let text): value.reason = handle.reason.store(text: text)
            case .activeWithCompleteCopy(let other): value.reason = handle.reason.store(text: "\(other) is active with a complete copy, this member had none")
            }
        case .heldBack(let text):
            value.kind = IPSECHA_ACTION_HELD_BACK.rawValue
            value.reason = handle.reason.store(text: text)
        case .reasserted(let jump, let rekey):
            value.kind = IPSECHA_ACTION_REASSERTED.rawValue
            value.jump = jump
            value.rekey_spis = handle.rekeySPIs.store(rekey)
            value.rekey_count = rekey.count
        case .segmentStarted, .segmentStopped, .relayed:
            continue
        }
        return value
    }
    return nil
}

// MARK: The takeover plan

@c @implementation
public func ipsecha_ike_sa_takeover_init(_ entry: UnsafeMutablePointer<ipsecha_ike_sa_takeover>?) {
    guard let entry else { return }
    entry.pointee = ipsecha_ike_sa_takeover()
    entry.pointee.struct_size = structSize(ipsecha_ike_sa_takeover.self)
    entry.pointee.reason = StaticText.empty
}

@c @implementation
public func ipsecha_child_sa_takeover_init(_ entry: UnsafeMutablePointer<ipsecha_child_sa_takeover>?) {
    guard let entry else { return }
    entry.pointee = ipsecha_child_sa_takeover()
    entry.pointee.struct_size = structSize(ipsecha_child_sa_takeover.self)
}

/// Entry `index` of `entries`, or IPSECHA_E_NOT_FOUND.
private func planEntry<Entry>(_ entries: [Entry]?, _ index: Int) throws(CAPIFailure) -> Entry {
    guard let entries else { throw CAPIFailure(IPSECHA_E_NOT_FOUND, "no takeover yet") }
    guard index >= 0, index < entries.count else { throw CAPIFailure(IPSECHA_E_NOT_FOUND, "the plan has \(entries.count) entries, not \(index)") }
    return entries[index]
}

@c @implementation
public func ipsecha_takeover_ike_sa(_ member: OpaquePointer?, _ index: Int, _ entry: UnsafeMutablePointer<ipsecha_ike_sa_takeover>?) -> Int32 {
    readingCall(member) { handle throws(CAPIFailure) in
        guard let entry else { throw CAPIFailure(IPSECHA_E_NULL, "entry is NULL") }
        _ = try readStructure(UnsafePointer(entry), "entry")
        let decision = try planEntry(handle.plan?.ikeSAs, index)
        var value = ipsecha_ike_sa_takeover()
        value.struct_size = structSize(ipsecha_ike_sa_takeover.self)
        value.initiator_spi = decision.identifier.initiatorSPI
        value.responder_spi = decision.identifier.responderSPI
        switch decision.classification {
        case .certain: value.classification = IPSECHA_IKE_SA_CERTAIN.rawValue
        case .inFlight: value.classification = IPSECHA_IKE_SA_IN_FLIGHT.rawValue
        case .suspect: value.classification = IPSECHA_IKE_SA_SUSPECT.rawValue
        }
        switch decision.messageIDs {
        case .exact(let next, let expected):
            value.message_ids = IPSECHA_MESSAGE_IDS_EXACT.rawValue
            (value.next_request_id, value.next_expected_request_id) = (next, expected)
        case .messageIDSync(let send, let receive, let delta):
            value.message_ids = IPSECHA_MESSAGE_IDS_SYNC.rawValue
            (value.sync_send, value.sync_receive) = (send, receive)
            if let delta { (value.has_replay_counter_delta, value.replay_counter_delta) = (1, delta) }
        case .awaitPeerRetransmission(let next, let expected):
            value.message_ids = IPSECHA_MESSAGE_IDS_AWAIT_PEER_RETRANSMISSION.rawValue
            (value.next_request_id, value.next_expected_request_id) = (next, expected)
        case .deleteAndReestablish:
            value.message_ids = IPSECHA_MESSAGE_IDS_DELETE_AND_REESTABLISH.rawValue
        }
        if let old = decision.unconfirmedRekey {
            value.has_unconfirmed_rekey = 1
            (value.unconfirmed_rekey_initiator_spi, value.unconfirmed_rekey_responder_spi) = (old.initiatorSPI, old.responderSPI)
        }
        value.reason = StaticText.ikeSATakeoverReasons[decision.reason] ?? StaticText.empty
        entry.pointee = value
    }
}

@c @implementation
public func ipsecha_takeover_child_sa(_ member: OpaquePointer?, _ index: Int, _ entry: UnsafeMutablePointer<ipsecha_child_sa_takeover>?) -> Int32 {
    readingCall(member) { handle throws(CAPIFailure) in
        guard let entry else { throw CAPIFailure(IPSECHA_E_NULL, "entry is NULL") }
        _ = try readStructure(UnsafePointer(entry), "entry")
        let decision = try planEntry(handle.plan?.childSAs, index)
        var value = ipsecha_child_sa_takeover()
        value.struct_size = structSize(ipsecha_child_sa_takeover.self)
        value.inbound_spi = decision.inboundSPI
        value.ike_initiator_spi = decision.parent.initiatorSPI
        value.ike_responder_spi = decision.parent.responderSPI
        switch decision.outbound {
        case .resume(let lastSent): (value.outbound, value.outbound_last_sent) = (IPSECHA_OUTBOUND_RESUME.rawValue, lastSent)
        case .rekey: value.outbound = IPSECHA_OUTBOUND_REKEY.rawValue
        }
        switch decision.inbound {
        case .restore(.conservative(let advance)): (value.inbound, value.inbound_advance) = (IPSECHA_INBOUND_RESTORE_CONSERVATIVE.rawValue, advance)
        case .restore(.replayCounterSync(let delta)): (value.inbound, value.inbound_advance) = (IPSECHA_INBOUND_RESTORE_REPLAY_COUNTER_SYNC.rawValue, delta)
        case .restore(.permissiveUnsafe): value.inbound = IPSECHA_INBOUND_RESTORE_PERMISSIVE_UNSAFE.rawValue
        case .rekey: value.inbound = IPSECHA_INBOUND_REKEY.rawValue
        }
        value.advance = decision.advance
        if let age = decision.reason.checkpointAge {
            (value.has_checkpoint_age, value.checkpoint_age_ns) = (1, UInt64(max(age.saturatingNanoseconds, 0)))
        }
        if let rate = decision.reason.packetsPerSecond { (value.has_packets_per_second, value.packets_per_second) = (1, rate) }
        value.suspect = decision.reason.suspect ? 1 : 0
        entry.pointee = value
    }
}
