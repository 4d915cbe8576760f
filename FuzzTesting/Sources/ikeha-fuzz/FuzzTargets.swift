import IPsecHACore
@testable import IPsecHASync

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
    /// Authenticated datagrams: the input is the payload of a datagram correctly sealed by the
    /// peer, so that the record decoder behind the authentication is reached.
    case sealedPayload = "sealed-payload"
    /// Synch records (type-length-value).
    case syncRecords = "sync-records"
    /// IKEv2 messages in clear: header, payload chain, Notify, RFC 6311 notifications.
    case ikeMessage = "ike-message"
    /// Lines of the reference CLI `ikeha-demo replay`.
    case replayLine = "replay-line"

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

func receivingChannel() -> SyncChannel {
    try! SyncChannel(configuration: SyncChannelConfiguration(clusterID: 7, member: standby, epoch: 1, key: clusterKey, peers: [active]))
}

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
    guard bytes.count >= 9 else { return }
    var sealer = DatagramSealer(key: clusterKey)
    let packetNumber = UInt64(bytes[0]) | 1
    let header = DatagramHeader(
        flags: bytes[1] & DatagramHeader.streamResetFlag, clusterID: 7, sender: active, receiver: standby, epoch: 1,
        packetNumber: packetNumber, reliableSequence: UInt64(bytes[2]))
    let payload = Array(bytes[3...])
    guard let datagram = try? sealer.seal(header, payload: payload), datagram.count <= 1_400 else { return }
    var channel = receivingChannel()
    let actions = channel.receive(datagram, now: Timestamp(nanoseconds: 1_000))
    if (try? SyncRecord.decodeAll(payload[...])) == nil {
        // Authentic but malformed: refused before any state changed.
        expectUntouched(channel, after: actions)
    } else {
        precondition(channel.statistics.datagramsReceived == 1, "an authentic, well-formed datagram was not taken")
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

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = start.map { Array(UnsafeBufferPointer(start: $0, count: count)) } ?? []
    switch FuzzTarget.selected {
    case .datagram: fuzzDatagram(bytes)
    case .sealedPayload: fuzzSealedPayload(bytes)
    case .syncRecords: fuzzSyncRecords(bytes)
    case .ikeMessage: fuzzIKEMessage(bytes)
    case .replayLine: fuzzReplayLines(bytes)
    }
    return 0
}
