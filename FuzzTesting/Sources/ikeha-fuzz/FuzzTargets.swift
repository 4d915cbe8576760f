import IPsecHACore
import Logging
@testable import IPsecHAGateway
@testable import IPsecHASync
import IPsecHAXFRM

#if canImport(Glibc)
import Glibc
#endif

/// The decoders of network input, one fuzz target each; `IKEHA_FUZZ_TARGET` names the one a
/// run exercises. Each target asserts, beside "no crash", what must hold for any input: bad
/// input is refused with a typed error and changes nothing; what decodes encodes back to the
/// same value.
enum FuzzTarget: String, CaseIterable {
    /// Datagrams as they arrive on the synch port, with no key: all must be dropped untouched.
    case datagram
    /// Sequences of authenticated datagrams to one channel: the input is cut into datagrams
    /// (packet number, reliable sequence, flags and payload each taken from it, extremes
    /// included) correctly sealed by the peer, so that the record decoder and the reliability
    /// state behind the authentication are reached.
    case sealedPayload = "sealed-payload"
    /// Synch records (type-length-value).
    case syncRecords = "sync-records"
    /// IKEv2 messages in clear: header, payload chain, Notify, RFC 6311 notifications.
    case ikeMessage = "ike-message"
    /// Lines of the reference CLI `ikeha-demo replay`.
    case replayLine = "replay-line"
    /// The reference gateway's payload parsers (the first byte picks one): SA, KE, ID, AUTH,
    /// TS, Delete; what parses encodes back to the same value.
    case ikePayloads = "ike-payloads"
    /// IKE messages (after the non-ESP marker) to the reference gateway's responder holding an
    /// established IKE SA: nothing unauthenticated may change its state.
    case gatewayIKE = "gateway-ike"
    /// ESP packets to the reference gateway's data plane: nothing unauthenticated may change
    /// the Child SA.
    case gatewayESP = "gateway-esp"
    /// Datagrams from an XFRM netlink socket: async events (NEWAE), SAs (NEWSA, as GETSA
    /// answers and dumps carry them) and deletion notices (DELSA); what decodes encodes back to
    /// the same value.
    case xfrmNetlink = "xfrm-netlink"

    static let selected: FuzzTarget = {
        guard let name = getenv("IKEHA_FUZZ_TARGET").map({ String(cString: $0) }) else {
            fatalError("set IKEHA_FUZZ_TARGET to one of: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let target = FuzzTarget(rawValue: name) else { fatalError("unknown IKEHA_FUZZ_TARGET \(name)") }
        return target
    }()
}

/// The cluster key both fuzzed channels use (fixed: inputs must reproduce).
let clusterKey = try! ChannelKey(bytes: (0..<32).map { UInt8($0) })
let active = ClusterMemberID(rawValue: 1)
let standby = ClusterMemberID(rawValue: 2)

let activeIncarnation = ChannelIncarnation(high: 1, low: 1)!
let standbyIncarnation = ChannelIncarnation(high: 2, low: 2)!

func receivingChannel() -> SyncChannel {
    var configuration = SyncChannelConfiguration(clusterID: 7, member: standby, epoch: 1, key: clusterKey, peers: [active])
    configuration.incarnation = standbyIncarnation
    return try! SyncChannel(configuration: configuration)
}

/// The standby's channel once the handshake with the active member (``activeIncarnation``)
/// is done, made once: each input starts from a copy. (Unchecked: libFuzzer calls the target
/// from one thread, and the value is only read, copied, after it is made.)
nonisolated(unsafe) let establishedChannel: SyncChannel = {
    var configuration = SyncChannelConfiguration(clusterID: 7, member: active, epoch: 1, key: clusterKey, peers: [standby])
    configuration.incarnation = activeIncarnation
    var sender = try! SyncChannel(configuration: configuration)
    var receiver = receivingChannel()
    for tick in 1...20 where !(sender.isEstablished(with: standby) && receiver.isEstablished(with: active)) {
        let now = Timestamp(nanoseconds: UInt64(tick) * 100_000_000)
        var toReceiver = sender.tick(now: now)
        var toSender = receiver.tick(now: now)
        while !toReceiver.isEmpty || !toSender.isEmpty {
            let (forReceiver, forSender) = (toReceiver, toSender)
            (toReceiver, toSender) = ([], [])
            for case .transmit(_, let datagram) in forReceiver { toSender += receiver.receive(datagram, now: now) }
            for case .transmit(_, let datagram) in forSender { toReceiver += sender.receive(datagram, now: now) }
        }
    }
    precondition(receiver.isEstablished(with: active), "the fuzzed channel's handshake did not complete")
    return receiver
}()

/// Refused input changes nothing: no delivery, nothing counted as received, the peer unheard.
func expectUntouched(_ channel: SyncChannel, after actions: [SyncChannelAction]) {
    for action in actions {
        guard case .dropped = action else { fatalError("a refused datagram produced \(action)") }
    }
    precondition(channel.statistics.datagramsReceived == 0, "a refused datagram was counted as received")
    precondition(channel.lastHeard(from: active) == nil, "a refused datagram refreshed the peer")
}

func fuzzDatagram(_ bytes: [UInt8]) {
    var channel = receivingChannel()
    let actions = channel.receive(bytes, now: Timestamp(nanoseconds: 1_000))
    // Without the key nobody can seal: every input is refused.
    expectUntouched(channel, after: actions)
}

func fuzzSealedPayload(_ bytes: [UInt8]) {
    var channel = establishedChannel
    var sealer = DatagramSealer(key: clusterKey)
    var input = bytes[...]
    // Each datagram: packet number (8), reliable sequence (8), flags (1), payload length (1),
    // payload. Every value is reachable, the largest ones included.
    while input.count >= 18 {
        func take(_ count: Int) -> ArraySlice<UInt8> {
            defer { input = input.dropFirst(count) }
            return input.prefix(count)
        }
        let packetNumber = take(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let reliableSequence = take(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let flags = take(1).first! & DatagramHeader.streamResetFlag
        let payload = Array(take(Int(take(1).first!)))
        let header = DatagramHeader(
            flags: flags, clusterID: 7, sender: active, receiver: standby, epoch: 1, senderIncarnation: activeIncarnation,
            packetNumber: max(packetNumber, 1), reliableSequence: reliableSequence)
        guard let datagram = try? sealer.seal(header, payload: payload, receiverIncarnation: standbyIncarnation) else { continue }
        let received = channel.statistics.datagramsReceived
        let actions = channel.receive(datagram, now: Timestamp(nanoseconds: 10_000_000_000))
        if (try? SyncRecord.decodeAll(payload[...])) == nil {
            // Authentic but malformed: refused before any state changed.
            precondition(actions.allSatisfy { if case .dropped = $0 { true } else { false } }, "a malformed datagram acted: \(actions)")
            precondition(channel.statistics.datagramsReceived == received, "a malformed datagram was counted as received")
        }
        _ = channel.tick(now: Timestamp(nanoseconds: 10_100_000_000))
    }
}

func fuzzSyncRecords(_ bytes: [UInt8]) {
    guard let records = try? SyncRecord.decodeAll(bytes[...]) else { return }
    for record in records {
        guard case .unknown = record else {
            let again = try! SyncRecord.decodeAll(try! record.encoded()[...])
            precondition(again == [record], "\(record) did not survive encoding")
            continue
        }
    }
}

func fuzzIKEMessage(_ bytes: [UInt8]) {
    guard let message = try? IKEMessage(decoding: bytes) else { return }
    let again = try! IKEMessage(decoding: try! message.encoded())
    precondition(again == message, "an IKE message did not survive encoding")
    guard let notifications = try? message.notifications() else { return }
    for notify in notifications {
        switch notify.type {
        case .messageIDSync: _ = try? MessageIDSyncNotification(notify)
        case .replayCounterSync: _ = try? ReplayCounterSyncNotification(notify)
        default: break
        }
    }
}

func fuzzReplayLines(_ bytes: [UInt8]) {
    var driver = ReplayReferenceDriver(window: try! ReplayWindow(size: 64, extendedSequenceNumbers: bytes.first.map { $0 & 1 == 1 } ?? false))
    // The first byte chooses ESN; the rest is the lines.
    for line in String(decoding: bytes.dropFirst(), as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false) {
        guard (try? driver.process(line: line)) != nil else { return }
    }
}

func fuzzIKEPayloads(_ bytes: [UInt8]) {
    guard let selector = bytes.first else { return }
    let body = Array(bytes.dropFirst())
    switch selector % 6 {
    case 0:
        guard let sa = try? SecurityAssociationPayload(body: body) else { return }
        precondition(try! SecurityAssociationPayload(body: sa.body) == sa, "an SA payload did not survive encoding")
    case 1: _ = try? KeyExchangePayload(body: body)
    case 2: _ = try? IKEIdentity(body: body)
    case 3: _ = try? AuthenticationPayload(body: body)
    case 4:
        guard let ts = try? TrafficSelectorPayload(body: body) else { return }
        precondition(try! TrafficSelectorPayload(body: ts.body) == ts, "a TS payload did not survive encoding")
    default:
        guard let delete = try? DeletePayload(body: body) else { return }
        precondition(try! DeletePayload(body: delete.payload.body) == delete, "a Delete payload did not survive encoding")
    }
}

/// A gateway state holding one established IKE SA (initiator SPI 1, responder SPI 2) and one
/// Child SA (inbound SPI 0x1000), with fixed keys: inputs reproduce.
let gatewayState: GatewayState = {
    var state = GatewayState()
    let local = IPAddress(ipv4: 0x0A63_0201)
    let remote = IPAddress(ipv4: 0x0A63_0101)
    _ = try! state.installPolicy(SecurityPolicy(
        id: SecurityPolicyID(rawValue: 1), localSelectors: [TrafficSelector(address: local)], remoteSelectors: [TrafficSelector(address: remote)],
        action: .protect(ProtectionSettings(extendedSequenceNumbers: false))))
    func key(_ count: Int, _ seed: UInt8) -> KeyMaterial { KeyMaterial(copying: (0..<count).map { UInt8(truncatingIfNeeded: $0) &+ seed }) }
    let ike = IKESAIdentifier(initiatorSPI: 1, responderSPI: 2)
    _ = try! state.createIKESA(try! IKESA(
        identifier: ike, isOriginalInitiator: false,
        local: Endpoint(address: IPAddress(ipv4: 0x0A63_0002), port: 4500, udpEncapsulation: true),
        remote: Endpoint(address: IPAddress(ipv4: 0x0A63_0001), port: 4500, udpEncapsulation: true),
        transforms: IKEv2Responder.ikeTransforms,
        keys: IKEKeys(d: key(32, 1), ai: key(0, 0), ar: key(0, 0), ei: key(36, 2), er: key(36, 3), pi: key(32, 4), pr: key(32, 5)),
        messageIDs: try! IKEMessageIDWindows(resumingAt: 0, expecting: 2, peerWindowSize: 1, localWindowSize: 1),
        extensions: IKEExtensions(messageIDSync: true), owner: active))
    _ = try! state.createChildSA(try! ChildSA(
        inboundSPI: 0x1000, outboundSPI: 0x2000, localSelectors: [TrafficSelector(address: local)], remoteSelectors: [TrafficSelector(address: remote)],
        transforms: ChildSATransforms(encryption: .chacha20Poly1305, integrity: .none),
        inboundKeys: ChildSAKeys(encryption: key(36, 6)), outboundKeys: ChildSAKeys(encryption: key(36, 7)),
        outboundCounter: try! OutboundSequenceCounter(extendedSequenceNumbers: false),
        inboundWindow: try! ReplayWindow(size: 128, extendedSequenceNumbers: false),
        lifetime: try! ChildSALifetime(soft: LifetimeLimits(seconds: 10), hard: LifetimeLimits(seconds: 20), installedAt: Timestamp(nanoseconds: 0)),
        parent: ike, owner: active))
    return state
}()

func fuzzGatewayIKE(_ bytes: [UInt8]) {
    var state = gatewayState
    var responder = IKEv2Responder(
        configuration: IKEResponderConfiguration(
            localIdentity: IKEIdentity("gateway@fuzz"), remoteIdentity: IKEIdentity("peer@fuzz"), preSharedKey: KeyMaterial(copying: Array("fuzz-only-pre-shared-key".utf8)),
            member: active),
        logger: Logger(label: "fuzz", factory: { _ in SwiftLogNoOpLogHandler() }))
    let outcome = responder.receive(
        bytes, from: Endpoint(address: IPAddress(ipv4: 0x0A63_0001), port: 4500), on: Endpoint(address: IPAddress(ipv4: 0x0A63_0002), port: 4500),
        state: &state, now: Timestamp(nanoseconds: 1_000))
    // Without the keys only an IKE_SA_INIT can be answered, and it changes no state.
    precondition(state == gatewayState && outcome.changes.isEmpty, "an unauthenticated IKE message changed the state")
    precondition(state.ikeSAs == gatewayState.ikeSAs, "an unauthenticated IKE message changed an IKE SA")
}

func fuzzGatewayESP(_ bytes: [UInt8]) {
    var state = gatewayState
    var packet = bytes
    // Most inputs name the Child SA, so that the replay check and the ICV are reached.
    if packet.count >= 4, packet[0] & 1 == 0 { packet.replaceSubrange(0..<4, with: [0, 0, 0x10, 0]) }
    precondition((try? ESPDataPlane.decapsulate(packet[...], state: &state)) == nil, "a forged ESP packet was accepted")
    precondition(state.childSA(inboundSPI: 0x1000) == gatewayState.childSA(inboundSPI: 0x1000), "a forged ESP packet changed the Child SA")
}

func fuzzXFRMNetlink(_ bytes: [UInt8]) {
    guard let messages = try? Netlink.messages(in: bytes) else { return }
    for message in messages {
        if message.header.type == .deleteSA {
            // A deletion notice: its counters name the SA of its header, whatever else it holds.
            if let event = try? XFRMAsyncEvent(deletionNotice: message.payload) {
                precondition((try? XFRMAsyncEvent(deletionNotice: message.payload)) == event, "a deletion notice decoded two ways")
                precondition(event.flags == [.replayValues, .lifetimeValues] && event.lifetime != nil, "a deletion notice without its counters")
            }
        } else if message.header.type == .newSA, let state = try? XFRMState(payload: message.payload) {
            let again = try! Netlink.messages(in: state.encode(sequence: 0))
            precondition((try? XFRMState(payload: again[0].payload)) == state, "an XFRM SA did not survive its own encoding")
        } else if let event = try? XFRMAsyncEvent(payload: message.payload) {
            let again = try! Netlink.messages(in: event.encode(type: .newAsyncEvent, flags: [], sequence: 0))
            precondition((try? XFRMAsyncEvent(payload: again[0].payload)) == event, "an XFRM event did not survive its own encoding")
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = start.map { Array(UnsafeBufferPointer(start: $0, count: count)) } ?? []
    switch FuzzTarget.selected {
    case .datagram: fuzzDatagram(bytes)
    case .sealedPayload: fuzzSealedPayload(bytes)
    case .syncRecords: fuzzSyncRecords(bytes)
    case .ikeMessage: fuzzIKEMessage(bytes)
    case .replayLine: fuzzReplayLines(bytes)
    case .ikePayloads: fuzzIKEPayloads(bytes)
    case .gatewayIKE: fuzzGatewayIKE(bytes)
    case .gatewayESP: fuzzGatewayESP(bytes)
    case .xfrmNetlink: fuzzXFRMNetlink(bytes)
    }
    return 0
}
