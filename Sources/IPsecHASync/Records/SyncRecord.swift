public import IPsecHACore

/// An inclusive range of reliable sequence numbers, as acknowledgements carry them.
public struct SequenceRange: Sendable, Hashable, CustomStringConvertible {
    /// The first number.
    public var lower: UInt64
    /// The last number (at least `lower`).
    public var upper: UInt64

    /// A range from `lower` through `upper`.
    public init(_ lower: UInt64, _ upper: UInt64) {
        self.lower = lower
        self.upper = upper
    }

    public var description: String { lower == upper ? "\(lower)" : "\(lower)-\(upper)" }
}

/// What a resync request asks for.
public enum ResyncScope: Sendable, Hashable {
    /// Everything the sender holds.
    case everything
    /// These IKE SAs with their Child SAs.
    case ikeSAs([IKESAIdentifier])
}

/// One record of the synch protocol (see `Docs/SyncProtocol.md` for the wire format).
public enum SyncRecord: Sendable, Equatable {
    /// A member announces itself: its epoch, capabilities, and whether it needs a bulk resync.
    case hello(epoch: UInt32, capabilities: UInt32, needsResync: Bool)
    /// Liveness, and the highest reliable sequence number sent so far (tail-loss detection).
    case heartbeat(highestSequence: UInt64, sentAt: Timestamp)
    /// Everything up to `cumulative` arrived, plus these ranges above it.
    case acknowledgement(cumulative: UInt64, selective: [SequenceRange])
    /// These ranges are missing: send them again.
    case negativeAcknowledgement([SequenceRange])
    /// An IKE SA, whole (created or changed).
    indirect case ikeSAUpsert(IKESA)
    /// An IKE SA was deleted.
    case ikeSADelete(IKESAIdentifier)
    /// A Child SA, whole (created or changed).
    indirect case childSAUpsert(ChildSA)
    /// A Child SA was deleted.
    case childSADelete(inboundSPI: UInt32)
    /// An IKE SA's message-ID windows changed (and only they).
    indirect case messageIDUpdate(IKESAIdentifier, generation: UInt64, IKEMessageIDSnapshot)
    /// An exchange on an IKE SA began (in flight until finished).
    case exchangeStarted(IKESAIdentifier, messageID: UInt32, initiatedHere: Bool)
    /// An exchange on an IKE SA completed.
    case exchangeFinished(IKESAIdentifier, messageID: UInt32, initiatedHere: Bool)
    /// An SPD entry inserted at a position (the decorrelated policy that SPD cache entries derive from).
    indirect case policyUpsert(SecurityPolicy, position: UInt32)
    /// An SPD entry removed.
    case policyDelete(SecurityPolicyID)
    /// Counter checkpoints of many Child SAs.
    case counterCheckpoints([CounterCheckpointEntry])
    /// A standby asks for state again.
    case resyncRequest(ResyncScope)
    /// A bulk resync starts: the receiver drops what it holds in that scope. The counts say
    /// how many SAs and policies follow, so that the receiver sizes its tables once.
    case resyncBegin(id: UInt32, scope: ResyncScope, ikeSAs: UInt32, childSAs: UInt32, policies: UInt32)
    /// A bulk resync ended; the counts let the receiver check it got everything.
    case resyncEnd(id: UInt32, ikeSAs: UInt32, childSAs: UInt32, policies: UInt32)
    /// An IKE SA moves to another member.
    case ownershipChange(IKESAIdentifier, owner: ClusterMemberID, generation: UInt64)
    /// A load-sharing member's periodic beacon to one peer (``SegmentOwnership``).
    case ownershipBeacon(OwnershipBeacon)
    /// Segment ownership claims from the sender's `incarnation`, numbered per recipient within
    /// it so that the recipient can say how far it got (``OwnershipBeacon/claimsProcessed``).
    case segmentClaims(incarnation: UInt32, sequence: UInt64, [SegmentClaim])
    /// The synch protocol versions the sender speaks (``SyncProtocolVersion``), beside each
    /// hello; a member of the previous release (version 2) sends none and skips it.
    case protocolVersions(oldest: UInt8, newest: UInt8)
    /// An IKE or ESP datagram that reached the sender for the receiver, the active member
    /// (``ClusterMember/relay(_:to:now:)``): during a switchover, until the cluster address
    /// moved. Version 3 and later.
    case relayedDatagram(RelayedDatagram)
    /// The longest round trip the sender measured recently to the receiver, from a reliable
    /// datagram's first transmission to its acknowledgement (``SyncChannel/roundTrip(to:)``),
    /// beside each heartbeat: a standby sizes a takeover's staleness margin from the active
    /// member's. Version 4 and later.
    case synchDelay(roundTrip: Duration)
    /// A record of a type this version does not know, kept as received (skipped by receivers).
    case unknown(type: UInt16, value: [UInt8])

    /// Whether the record must be delivered reliably (in order, retransmitted when lost).
    public var isReliable: Bool {
        switch self {
        case .hello, .heartbeat, .acknowledgement, .negativeAcknowledgement, .ownershipBeacon, .protocolVersions, .relayedDatagram, .synchDelay, .unknown: false
        default: true
        }
    }
}

/// An IKE or ESP datagram one member received for another (``SyncRecord/relayedDatagram(_:)``).
public struct RelayedDatagram: Sendable, Hashable {
    /// Where it came from (the peer's address and port).
    public var remote: Endpoint
    /// The cluster address's port it reached (500 or 4500).
    public var localPort: UInt16
    /// The UDP payload, as received.
    public var bytes: [UInt8]

    public init(remote: Endpoint, localPort: UInt16, bytes: [UInt8]) {
        self.remote = remote
        self.localPort = localPort
        self.bytes = bytes
    }
}

/// Record type codes. The high bit marks a record a receiver must understand: a datagram with
/// an unknown critical record is rejected whole, an unknown non-critical one is skipped.
enum SyncRecordType: UInt16 {
    case hello = 0x0001
    case heartbeat = 0x0002
    case acknowledgement = 0x0003
    case negativeAcknowledgement = 0x0004
    case ikeSAUpsert = 0x8010
    case ikeSADelete = 0x8011
    case childSAUpsert = 0x8012
    case childSADelete = 0x8013
    case messageIDUpdate = 0x8014
    case exchangeStarted = 0x0015
    case exchangeFinished = 0x0016
    case policyUpsert = 0x8017
    case policyDelete = 0x8018
    case counterCheckpoints = 0x8019
    case resyncRequest = 0x001A
    case resyncBegin = 0x801B
    case resyncEnd = 0x801C
    case ownershipChange = 0x801D
    case segmentClaims = 0x801E
    case ownershipBeacon = 0x001F
    case protocolVersions = 0x0020
    case relayedDatagram = 0x0021
    case synchDelay = 0x0022

    static let criticalBit: UInt16 = 0x8000
}

extension SyncRecord {
    /// Appends `type | length | value` to `writer`.
    func encode(into writer: inout ByteWriter) throws(SyncCodecError) {
        let type: UInt16
        switch self {
        case .hello: type = SyncRecordType.hello.rawValue
        case .heartbeat: type = SyncRecordType.heartbeat.rawValue
        case .acknowledgement: type = SyncRecordType.acknowledgement.rawValue
        case .negativeAcknowledgement: type = SyncRecordType.negativeAcknowledgement.rawValue
        case .ikeSAUpsert: type = SyncRecordType.ikeSAUpsert.rawValue
        case .ikeSADelete: type = SyncRecordType.ikeSADelete.rawValue
        case .childSAUpsert: type = SyncRecordType.childSAUpsert.rawValue
        case .childSADelete: type = SyncRecordType.childSADelete.rawValue
        case .messageIDUpdate: type = SyncRecordType.messageIDUpdate.rawValue
        case .exchangeStarted: type = SyncRecordType.exchangeStarted.rawValue
        case .exchangeFinished: type = SyncRecordType.exchangeFinished.rawValue
        case .policyUpsert: type = SyncRecordType.policyUpsert.rawValue
        case .policyDelete: type = SyncRecordType.policyDelete.rawValue
        case .counterCheckpoints: type = SyncRecordType.counterCheckpoints.rawValue
        case .resyncRequest: type = SyncRecordType.resyncRequest.rawValue
        case .resyncBegin: type = SyncRecordType.resyncBegin.rawValue
        case .resyncEnd: type = SyncRecordType.resyncEnd.rawValue
        case .ownershipChange: type = SyncRecordType.ownershipChange.rawValue
        case .ownershipBeacon: type = SyncRecordType.ownershipBeacon.rawValue
        case .protocolVersions: type = SyncRecordType.protocolVersions.rawValue
        case .relayedDatagram: type = SyncRecordType.relayedDatagram.rawValue
        case .synchDelay: type = SyncRecordType.synchDelay.rawValue
        case .segmentClaims: type = SyncRecordType.segmentClaims.rawValue
        case .unknown(let unknownType, _): type = unknownType
        }
        writer.write(type)
        try writer.writeBlock { (w: inout ByteWriter) throws(SyncCodecError) in
            switch self {
            case .hello(let epoch, let capabilities, let needsResync):
                w.write(epoch)
                w.write(capabilities)
                w.write(needsResync)
            case .heartbeat(let highest, let sentAt):
                w.write(highest)
                w.write(sentAt.nanoseconds)
            case .acknowledgement(let cumulative, let ranges):
                w.write(cumulative)
                try StateEncoding.write(ranges: ranges, into: &w)
            case .negativeAcknowledgement(let ranges):
                try StateEncoding.write(ranges: ranges, into: &w)
            case .ikeSAUpsert(let sa):
                try StateEncoding.write(sa, into: &w)
            case .ikeSADelete(let identifier):
                StateEncoding.write(identifier, into: &w)
            case .childSAUpsert(let sa):
                try StateEncoding.write(sa, into: &w)
            case .childSADelete(let spi):
                w.write(spi)
            case .messageIDUpdate(let identifier, let generation, let snapshot):
                StateEncoding.write(identifier, into: &w)
                w.writeVarint(generation)
                try StateEncoding.write(snapshot, into: &w)
            case .exchangeStarted(let identifier, let messageID, let initiatedHere),
                .exchangeFinished(let identifier, let messageID, let initiatedHere):
                StateEncoding.write(identifier, into: &w)
                w.write(messageID)
                w.write(initiatedHere)
            case .policyUpsert(let policy, let position):
                w.write(position)
                try StateEncoding.write(policy, into: &w)
            case .policyDelete(let id):
                w.write(id.rawValue)
            case .counterCheckpoints(let entries):
                guard entries.count <= Int(UInt16.max) else { throw .recordTooLarge(entries.count) }
                w.write(UInt16(entries.count))
                for entry in entries { StateEncoding.write(entry, into: &w) }
            case .resyncRequest(let scope):
                try StateEncoding.write(scope, into: &w)
            case .resyncBegin(let id, let scope, let ikeSAs, let childSAs, let policies):
                w.write(id)
                try StateEncoding.write(scope, into: &w)
                w.write(ikeSAs)
                w.write(childSAs)
                w.write(policies)
            case .resyncEnd(let id, let ikeSAs, let childSAs, let policies):
                w.write(id)
                w.write(ikeSAs)
                w.write(childSAs)
                w.write(policies)
            case .ownershipChange(let identifier, let owner, let generation):
                StateEncoding.write(identifier, into: &w)
                w.write(owner.rawValue)
                w.write(generation)
            case .ownershipBeacon(let beacon):
                try StateEncoding.write(beacon, into: &w)
            case .segmentClaims(let incarnation, let sequence, let claims):
                w.write(incarnation)
                w.write(sequence)
                try StateEncoding.write(claims: claims, into: &w)
            case .protocolVersions(let oldest, let newest):
                w.write(oldest)
                w.write(newest)
            case .relayedDatagram(let relayed):
                w.write(relayed.localPort)
                w.withReservedCursor(StateEncoding.endpointSize) { StateEncoding.write(relayed.remote, into: &$0) }
                w.write(bytes: relayed.bytes)
            case .synchDelay(let roundTrip):
                w.write(roundTrip.nonNegativeNanoseconds)
            case .unknown(_, let value):
                w.write(bytes: value)
            }
        }
    }

    /// Reads one record; unknown non-critical types come back as ``unknown(type:value:)``.
    static func decode(from reader: inout ByteReader, cache: inout StateEncoding.SelectorCache) throws(SyncCodecError) -> SyncRecord {
        let rawType = try reader.readUInt16()
        var r = try reader.readBlock()
        guard let type = SyncRecordType(rawValue: rawType) else {
            if rawType & SyncRecordType.criticalBit != 0 { throw .unknownCriticalRecord(rawType) }
            return .unknown(type: rawType, value: [UInt8](try r.readBytes(r.remaining)))
        }
        let record: SyncRecord
        switch type {
        case .hello:
            record = .hello(epoch: try r.readUInt32(), capabilities: try r.readUInt32(), needsResync: try r.readBool())
        case .heartbeat:
            record = .heartbeat(highestSequence: try r.readUInt64(), sentAt: Timestamp(nanoseconds: try r.readUInt64()))
        case .acknowledgement:
            record = .acknowledgement(cumulative: try r.readUInt64(), selective: try StateEncoding.readRanges(&r))
        case .negativeAcknowledgement:
            record = .negativeAcknowledgement(try StateEncoding.readRanges(&r))
        case .ikeSAUpsert:
            record = .ikeSAUpsert(try StateEncoding.readIKESA(&r))
        case .ikeSADelete:
            record = .ikeSADelete(try StateEncoding.readIdentifier(&r))
        case .childSAUpsert:
            record = .childSAUpsert(try StateEncoding.readChildSA(&r, cache: &cache))
        case .childSADelete:
            record = .childSADelete(inboundSPI: try r.readUInt32())
        case .messageIDUpdate:
            record = .messageIDUpdate(
                try StateEncoding.readIdentifier(&r), generation: try r.readVarint(), try StateEncoding.readSnapshot(&r))
        case .exchangeStarted:
            record = .exchangeStarted(try StateEncoding.readIdentifier(&r), messageID: try r.readUInt32(), initiatedHere: try r.readBool())
        case .exchangeFinished:
            record = .exchangeFinished(try StateEncoding.readIdentifier(&r), messageID: try r.readUInt32(), initiatedHere: try r.readBool())
        case .policyUpsert:
            let position = try r.readUInt32()
            record = .policyUpsert(try StateEncoding.readPolicy(&r), position: position)
        case .policyDelete:
            record = .policyDelete(SecurityPolicyID(rawValue: try r.readUInt32()))
        case .counterCheckpoints:
            let count = Int(try r.readUInt16())
            let sizes = StateEncoding.checkpointEntrySizes
            guard r.remaining >= count * sizes.minimum, r.remaining <= count * sizes.maximum else {
                throw .invalidValue("checkpoint batch length")
            }
            var entries: [CounterCheckpointEntry] = []
            entries.reserveCapacity(count)
            for _ in 0..<count { entries.append(try StateEncoding.readCheckpointEntry(&r)) }
            record = .counterCheckpoints(entries)
        case .resyncRequest:
            record = .resyncRequest(try StateEncoding.readScope(&r))
        case .resyncBegin:
            record = .resyncBegin(
                id: try r.readUInt32(), scope: try StateEncoding.readScope(&r), ikeSAs: try r.readUInt32(), childSAs: try r.readUInt32(),
                policies: try r.readUInt32())
        case .resyncEnd:
            record = .resyncEnd(id: try r.readUInt32(), ikeSAs: try r.readUInt32(), childSAs: try r.readUInt32(), policies: try r.readUInt32())
        case .ownershipChange:
            record = .ownershipChange(
                try StateEncoding.readIdentifier(&r), owner: ClusterMemberID(rawValue: try r.readUInt16()), generation: try r.readUInt64())
        case .ownershipBeacon:
            record = .ownershipBeacon(try StateEncoding.readBeacon(&r))
        case .segmentClaims:
            record = .segmentClaims(incarnation: try r.readUInt32(), sequence: try r.readUInt64(), try StateEncoding.readClaims(&r))
        case .protocolVersions:
            let oldest = try r.readUInt8(), newest = try r.readUInt8()
            guard oldest >= 1, oldest <= newest else { throw .invalidValue("protocol versions \(oldest)...\(newest)") }
            // A later version may append fields to this record: the versions stay readable.
            _ = try r.readBytes(r.remaining)
            record = .protocolVersions(oldest: oldest, newest: newest)
        case .relayedDatagram:
            let localPort = try r.readUInt16()
            let remote = try StateEncoding.readEndpoint(&r)
            guard !r.isAtEnd else { throw .invalidValue("an empty relayed datagram") }
            record = .relayedDatagram(RelayedDatagram(remote: remote, localPort: localPort, bytes: [UInt8](try r.readBytes(r.remaining))))
        case .synchDelay:
            record = .synchDelay(roundTrip: .nanoseconds(Int64(clamping: try r.readUInt64())))
        }
        try r.expectEnd()
        return record
    }
}

extension SyncRecord {
    /// Appends a counter checkpoint record holding `entries` from `start` on, as many as keep
    /// `writer` within `limit` bytes (at most 65,535), and returns the index of the first entry
    /// left out: `start` when not even one fits, and then nothing is written.
    static func encodeCheckpoints(
        _ entries: [CounterCheckpointEntry], from start: Int, into writer: inout ByteWriter, limit: Int
    ) -> Int {
        let recordStart = writer.count
        guard limit - recordStart >= 6 + StateEncoding.checkpointEntrySizes.minimum else { return start }
        writer.write(SyncRecordType.counterCheckpoints.rawValue)
        let lengthAt = writer.count
        writer.write(UInt16(0))
        writer.write(UInt16(0))
        var index = start
        while index < entries.endIndex, index - start < Int(UInt16.max) {
            let before = writer.count
            StateEncoding.write(entries[index], into: &writer)
            if writer.count > limit {
                writer.truncate(to: before)
                break
            }
            index += 1
        }
        guard index > start else {
            writer.truncate(to: recordStart)
            return start
        }
        writer.patch(UInt16(writer.count - lengthAt - 2), at: lengthAt)
        writer.patch(UInt16(index - start), at: lengthAt + 2)
        return index
    }

    /// Appends the upsert record of `sa` (type, length, value), as ``encode(into:)`` would for
    /// ``ikeSAUpsert(_:)``, without building the record.
    static func encodeUpsert(ofIKESAAt sa: UnsafePointer<IKESA>, into writer: inout ByteWriter) throws(SyncCodecError) {
        writer.write(SyncRecordType.ikeSAUpsert.rawValue)
        try writer.writeBlock { (w: inout ByteWriter) throws(SyncCodecError) in try StateEncoding.write(ikeSAAt: sa, into: &w) }
    }

    /// Appends the upsert record of the Child SA at `sa`, as ``encode(into:)`` would for
    /// ``childSAUpsert(_:)``; `selectors` holds the encodings of the selector lists written last
    /// (a bulk resync keeps one for all its records).
    static func encodeUpsert(
        ofChildSAAt sa: UnsafePointer<ChildSA>, into writer: inout ByteWriter, selectors: inout StateEncoding.SelectorCache
    ) throws(SyncCodecError) {
        writer.write(SyncRecordType.childSAUpsert.rawValue)
        try writer.writeBlock { (w: inout ByteWriter) throws(SyncCodecError) in
            try StateEncoding.write(childSAAt: sa, into: &w, cache: &selectors)
        }
    }

    /// The record's bytes on the wire (type, length, value).
    public func encoded() throws(SyncCodecError) -> [UInt8] {
        // A checkpoint batch is sized up front: growing the buffer cost three copies for 50 entries.
        var capacity = 256
        if case .counterCheckpoints(let entries) = self { capacity = 8 + entries.count * StateEncoding.checkpointEntrySizes.maximum }
        var writer = ByteWriter(capacity: capacity)
        try encode(into: &writer)
        return writer.bytes
    }

    /// Decodes the records of a datagram payload, in order. Throws on any malformed record,
    /// so that a datagram is taken whole or not at all.
    public static func decodeAll(_ bytes: ArraySlice<UInt8>) throws(SyncCodecError) -> [SyncRecord] {
        var cache = StateEncoding.SelectorCache()
        return try decodeAll(bytes, cache: &cache)
    }

    /// As ``decodeAll(_:)``, reusing the selector arrays in `cache` (a channel keeps one).
    static func decodeAll(_ bytes: ArraySlice<UInt8>, cache: inout StateEncoding.SelectorCache) throws(SyncCodecError) -> [SyncRecord] {
        try ByteReader.reading(bytes) { (reader: inout ByteReader) throws(SyncCodecError) in
            var records: [SyncRecord] = []
            // A full datagram of SAs holds about five records: one allocation, not four growths.
            records.reserveCapacity(8)
            while !reader.isAtEnd { records.append(try decode(from: &reader, cache: &cache)) }
            return records
        }
    }
}
