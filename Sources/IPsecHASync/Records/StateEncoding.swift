import IPsecHACore

/// Binary encodings of the state model's values inside synch records (big-endian; layouts in
/// `Docs/SyncProtocol.md`). Readers validate through the state model's own initialisers, so a
/// decoded value is always one the model accepts.
enum StateEncoding {
    static let none64 = UInt64.max

    // MARK: Small values

    static func write(_ identifier: IKESAIdentifier, into w: inout ByteWriter) {
        w.withReservedCursor(identifierSize) { write(identifier, into: &$0) }
    }

    /// Exactly ``identifierSize`` bytes.
    static func write(_ identifier: IKESAIdentifier, into cursor: inout WriteCursor) {
        cursor.write(identifier.initiatorSPI)
        cursor.write(identifier.responderSPI)
    }

    static let identifierSize = 16

    static func readIdentifier(_ r: inout ByteReader) throws(SyncCodecError) -> IKESAIdentifier {
        IKESAIdentifier(initiatorSPI: try r.readUInt64(), responderSPI: try r.readUInt64())
    }

    static func write(ranges: [SequenceRange], into w: inout ByteWriter) throws(SyncCodecError) {
        guard ranges.count <= 255 else { throw .recordTooLarge(ranges.count) }
        w.write(UInt8(ranges.count))
        for range in ranges {
            w.write(range.lower)
            w.write(range.upper)
        }
    }

    static func readRanges(_ r: inout ByteReader) throws(SyncCodecError) -> [SequenceRange] {
        let count = Int(try r.readUInt8())
        var ranges: [SequenceRange] = []
        for _ in 0..<count {
            let range = SequenceRange(try r.readUInt64(), try r.readUInt64())
            guard range.lower <= range.upper, range.lower > 0 else { throw .invalidValue("sequence range \(range)") }
            ranges.append(range)
        }
        return ranges
    }

    static func write(_ scope: ResyncScope, into w: inout ByteWriter) throws(SyncCodecError) {
        switch scope {
        case .everything:
            w.write(UInt8(0))
        case .ikeSAs(let identifiers):
            guard identifiers.count <= Int(UInt16.max) else { throw .recordTooLarge(identifiers.count) }
            w.write(UInt8(1))
            w.write(UInt16(identifiers.count))
            for identifier in identifiers { write(identifier, into: &w) }
        }
    }

    static func readScope(_ r: inout ByteReader) throws(SyncCodecError) -> ResyncScope {
        switch try r.readUInt8() {
        case 0: return .everything
        case 1:
            let count = Int(try r.readUInt16())
            guard r.remaining >= count * 16 else { throw .truncated }
            var identifiers: [IKESAIdentifier] = []
            for _ in 0..<count { identifiers.append(try readIdentifier(&r)) }
            return .ikeSAs(identifiers)
        case let other: throw .invalidValue("resync scope \(other)")
        }
    }

    /// The smallest and the largest encoding of a checkpoint entry.
    static let checkpointEntrySizes = (minimum: 4 + 8, maximum: 4 + 7 * 10 + 5)

    /// A checkpoint entry: the inbound SPI (4), then generation, outbound last sent, inbound
    /// top, inbound bytes, inbound packets, outbound bytes, outbound packets and packets per
    /// second as variable-length integers (the counters are mostly small, and every byte here is
    /// sealed and opened once per checkpoint).
    static func write(_ entry: CounterCheckpointEntry, into w: inout ByteWriter) {
        let checkpoint = entry.checkpoint
        w.withReservedCursor(checkpointEntrySizes.maximum) { cursor in
            cursor.write(checkpoint.inboundSPI)
            cursor.writeVarint(entry.generation)
            cursor.writeVarint(checkpoint.outbound.lastSent)
            cursor.writeVarint(checkpoint.inbound.highestAuthenticatedSequenceNumber)
            cursor.writeVarint(checkpoint.usage.inboundBytes)
            cursor.writeVarint(checkpoint.usage.inboundPackets)
            cursor.writeVarint(checkpoint.usage.outboundBytes)
            cursor.writeVarint(checkpoint.usage.outboundPackets)
            cursor.writeVarint(UInt64(entry.packetsPerSecond))
        }
    }

    static func readCheckpointEntry(_ r: inout ByteReader) throws(SyncCodecError) -> CounterCheckpointEntry {
        let spi = try r.readUInt32()
        let generation = try r.readVarint()
        let outbound = OutboundCounterCheckpoint(lastSent: try r.readVarint())
        let inbound = ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: try r.readVarint())
        let usage = ChildSAUsage(
            inboundBytes: try r.readVarint(), inboundPackets: try r.readVarint(), outboundBytes: try r.readVarint(),
            outboundPackets: try r.readVarint())
        let rate = try r.readVarint32()
        return CounterCheckpointEntry(
            checkpoint: ChildSACounterCheckpoint(inboundSPI: spi, outbound: outbound, inbound: inbound, usage: usage),
            generation: generation, packetsPerSecond: rate)
    }

    // MARK: Addresses, selectors, keys

    /// The address's 4 or 16 bytes, big-endian, without building an array (at most 16 bytes).
    static func writeBytes(of address: IPAddress, into cursor: inout WriteCursor) {
        switch address.family {
        case .ipv4:
            cursor.write(UInt32(truncatingIfNeeded: address.low))
        case .ipv6:
            cursor.write(address.high)
            cursor.write(address.low)
        }
    }

    static func readAddress(_ r: inout ByteReader) throws(SyncCodecError) -> IPAddress {
        let family = try r.readUInt8()
        guard let kind = IPAddressFamily(rawValue: family) else { throw .invalidValue("address family \(family)") }
        return try readAddress(kind, &r)
    }

    static func readAddress(_ family: IPAddressFamily, _ r: inout ByteReader) throws(SyncCodecError) -> IPAddress {
        switch family {
        case .ipv4: IPAddress(ipv4: try r.readUInt32())
        case .ipv6: IPAddress(ipv6High: try r.readUInt64(), low: try r.readUInt64())
        }
    }

    /// At most ``endpointSize`` bytes.
    static func write(_ endpoint: Endpoint, into cursor: inout WriteCursor) {
        cursor.write(endpoint.address.family.rawValue)
        writeBytes(of: endpoint.address, into: &cursor)
        cursor.write(endpoint.port)
        cursor.write(endpoint.udpEncapsulation)
    }

    static let endpointSize = 1 + 16 + 2 + 1

    static func readEndpoint(_ r: inout ByteReader) throws(SyncCodecError) -> Endpoint {
        Endpoint(address: try readAddress(&r), port: try r.readUInt16(), udpEncapsulation: try r.readBool())
    }

    static func write(_ selectors: [TrafficSelector], into w: inout ByteWriter) throws(SyncCodecError) {
        guard selectors.count <= 255 else { throw .recordTooLarge(selectors.count) }
        w.write(UInt8(selectors.count))
        for selector in selectors {
            w.withReservedCursor(1 + 1 + 2 + 2 + 16 + 16) { cursor in
                cursor.write(selector.tsType)
                cursor.write(selector.ipProtocol)
                cursor.write(selector.startPort)
                cursor.write(selector.endPort)
                writeBytes(of: selector.startAddress, into: &cursor)
                writeBytes(of: selector.endAddress, into: &cursor)
            }
        }
    }

    /// As ``write(_:into:)``, for the list at `selectors` (read where it lies: passed by value
    /// out of a Child SA in the snapshot, the array was retained and released, about 45
    /// instructions a list); the cached encoding when `selectors` is the array encoded last
    /// (``SelectorCache``: Child SAs installed one after another often share their selector
    /// arrays, since ``GatewayState`` shares equal ones, and a bulk resync writes them in that
    /// order). The cache holds the array, so that its buffer cannot be freed and reused by
    /// another list while cached: the same buffer is then the same selectors.
    @inline(__always)
    static func write(
        selectorsAt selectors: UnsafePointer<[TrafficSelector]>, into w: inout ByteWriter, cache: inout SelectorCache.Entry
    ) throws(SyncCodecError) {
        // A list's encoding is never empty (it starts with the count).
        if !cache.encoding.isEmpty, selectors.pointee.count == cache.selectors.count,
            selectors.pointee.withUnsafeBufferPointer({ $0.baseAddress }) == cache.selectors.withUnsafeBufferPointer({ $0.baseAddress })
        {
            w.write(bytes: cache.encoding)
            return
        }
        let start = w.count
        try write(selectors.pointee, into: &w)
        cache.selectors = selectors.pointee
        cache.encoding.removeAll(keepingCapacity: true)
        w.withBytes { cache.encoding.append(contentsOf: $0[start...]) }
    }

    static func readSelectors(_ r: inout ByteReader) throws(SyncCodecError) -> [TrafficSelector] {
        let count = Int(try r.readUInt8())
        var selectors: [TrafficSelector] = []
        selectors.reserveCapacity(count)
        for _ in 0..<count {
            let type = try r.readUInt8()
            let family: IPAddressFamily
            switch type {
            case 7: family = .ipv4
            case 8: family = .ipv6
            default: throw .invalidValue("traffic selector type \(type)")
            }
            let proto = try r.readUInt8()
            let startPort = try r.readUInt16()
            let endPort = try r.readUInt16()
            let start = try readAddress(family, &r)
            let end = try readAddress(family, &r)
            do {
                selectors.append(
                    try TrafficSelector(startAddress: start, endAddress: end, ipProtocol: proto, startPort: startPort, endPort: endPort))
            } catch {
                throw .invalidState("traffic selector: \(error)")
            }
        }
        return selectors
    }

    /// The selector lists of the Child SA decoded (or encoded) last, with their encodings: a
    /// Child SA whose selectors encode to the same bytes gets the same arrays, neither decoded
    /// nor allocated again (Child SAs decoded one after another often share selectors: a bulk
    /// resync of a site's tunnels, a remote-access gateway's local side), and one whose lists
    /// are the same arrays is written from the encoding. A decoder's cache only ever holds
    /// lists that decoded and validated, so a datagram rejected later leaves nothing wrong in it.
    struct SelectorCache {
        struct Entry {
            var encoding: [UInt8] = []
            var selectors: [TrafficSelector] = []
        }
        var local = Entry()
        var remote = Entry()
    }

    /// As ``readSelectors(_:)``, through `cache`.
    static func readSelectors(_ r: inout ByteReader, cache: inout SelectorCache.Entry) throws(SyncCodecError) -> [TrafficSelector] {
        // A list's encoding delimits itself (its count, then each selector's type and fields):
        // bytes that begin with the cached list's encoding are that list, whatever follows.
        if !cache.encoding.isEmpty, r.remaining >= cache.encoding.count {
            var reader = r
            let next = try reader.readBytes(cache.encoding.count)
            if cache.encoding.withUnsafeBytes({ $0.hasSameBytes(as: next) }) {
                r = reader
                return cache.selectors
            }
        }
        let start = r
        let selectors = try readSelectors(&r)
        var reader = start
        cache = SelectorCache.Entry(encoding: [UInt8](try reader.readBytes(r.position - start.position)), selectors: selectors)
        return selectors
    }

    /// The longest key a record carries.
    static let maximumKeyLength = 1024

    @inline(__always)
    static func write(_ key: KeyMaterial, into w: inout ByteWriter) throws(SyncCodecError) {
        guard key.count <= maximumKeyLength else { throw .recordTooLarge(key.count) }
        w.write(UInt16(key.count))
        key.withUnsafeBytes { w.write(bytes: $0) }
    }

    /// A length-prefixed key's bytes, valid as long as the reader is.
    static func readKeyBytes(_ r: inout ByteReader) throws(SyncCodecError) -> UnsafeRawBufferPointer {
        let count = Int(try r.readUInt16())
        guard count <= maximumKeyLength else { throw .invalidValue("key length \(count)") }
        return try r.readBytes(count)
    }

    /// One allocation holding `parts` one after the other: the keys an SA keeps together.
    static func keyMaterial(concatenating parts: UnsafeBufferPointer<UnsafeRawBufferPointer>) -> KeyMaterial {
        KeyMaterial(count: parts.reduce(0) { $0 + $1.count }) { destination in
            var position = 0
            for part in parts {
                UnsafeMutableRawBufferPointer(rebasing: destination[position..<position + part.count]).copyMemory(from: part)
                position += part.count
            }
        }
    }

    /// The seven length-prefixed keys of an IKE SA, read into one allocation (``IKEKeys``
    /// holds views of it).
    static func readIKEKeys(_ r: inout ByteReader) throws(SyncCodecError) -> IKEKeys {
        // The parts and their lengths on the stack.
        try withUnsafeTemporaryAllocation(of: UnsafeRawBufferPointer.self, capacity: 7) { parts throws(SyncCodecError) in
            try withUnsafeTemporaryAllocation(of: Int.self, capacity: 7) { lengths throws(SyncCodecError) in
                for index in 0..<7 {
                    let part = try readKeyBytes(&r)
                    parts.initializeElement(at: index, to: part)
                    lengths.initializeElement(at: index, to: part.count)
                }
                do {
                    return try IKEKeys(packed: keyMaterial(concatenating: UnsafeBufferPointer(parts)), lengths: UnsafeBufferPointer(lengths))
                } catch {
                    throw .invalidValue("IKE SA keys")
                }
            }
        }
    }

    /// An optional value as a varint: 0 for none, otherwise the value plus one. `UInt64.max`
    /// means none too (no limit or time is that far), so that every value fits.
    @inline(__always)
    static func writeOptional(_ value: UInt64?, into cursor: inout WriteCursor) {
        guard let value, value != none64 else { return cursor.write(UInt8(0)) }
        cursor.writeVarint(value &+ 1)
    }

    @inline(__always)
    static func readOptional(_ r: inout ByteReader) throws(SyncCodecError) -> UInt64? {
        let value = try r.readVarint()
        return value == 0 ? nil : value &- 1
    }

    static func readTimestamp(_ r: inout ByteReader) throws(SyncCodecError) -> Timestamp? {
        try readOptional(&r).map { Timestamp(nanoseconds: $0) }
    }

    @inline(__always)
    static func write(_ limits: LifetimeLimits, into cursor: inout WriteCursor) {
        writeOptional(limits.seconds, into: &cursor)
        writeOptional(limits.bytes, into: &cursor)
        writeOptional(limits.packets, into: &cursor)
    }

    @inline(__always)
    static func readLimits(_ r: inout ByteReader) throws(SyncCodecError) -> LifetimeLimits {
        LifetimeLimits(seconds: try readOptional(&r), bytes: try readOptional(&r), packets: try readOptional(&r))
    }

    // MARK: Message IDs

    static func write(_ snapshot: IKEMessageIDSnapshot, into w: inout ByteWriter) throws(SyncCodecError) {
        let maximum = Int(IKERequestWindow.maximumOutstanding)
        guard snapshot.outstandingRequests.count <= maximum, snapshot.requestsProcessedAhead.count <= maximum else {
            throw .recordTooLarge(snapshot.outstandingRequests.count)
        }
        w.writeVarint(snapshot.nextRequestID)
        w.writeVarint(UInt64(snapshot.peerWindowSize))
        w.write(UInt16(snapshot.outstandingRequests.count))
        for id in snapshot.outstandingRequests { w.write(id) }
        w.writeVarint(snapshot.nextExpectedRequestID)
        w.writeVarint(UInt64(snapshot.localWindowSize))
        w.write(UInt16(snapshot.requestsProcessedAhead.count))
        for id in snapshot.requestsProcessedAhead { w.write(id) }
        w.write(snapshot.highestProcessedRequest != nil)
        w.write(snapshot.highestProcessedRequest ?? 0)
    }

    static func readSnapshot(_ r: inout ByteReader) throws(SyncCodecError) -> IKEMessageIDSnapshot {
        func readIDs(_ r: inout ByteReader) throws(SyncCodecError) -> [UInt32] {
            let count = Int(try r.readUInt16())
            guard count <= Int(IKERequestWindow.maximumOutstanding), r.remaining >= count * 4 else {
                throw .invalidValue("message ID list of \(count)")
            }
            var ids: [UInt32] = []
            for _ in 0..<count { ids.append(try r.readUInt32()) }
            return ids
        }
        let nextRequest = try r.readVarint()
        let peerWindow = try r.readVarint32()
        let outstanding = try readIDs(&r)
        let nextExpected = try r.readVarint()
        let localWindow = try r.readVarint32()
        let ahead = try readIDs(&r)
        let hasHighest = try r.readBool()
        let highest = try r.readUInt32()
        let snapshot = IKEMessageIDSnapshot(
            nextRequestID: nextRequest, peerWindowSize: peerWindow, outstandingRequests: outstanding,
            nextExpectedRequestID: nextExpected, localWindowSize: localWindow, requestsProcessedAhead: ahead,
            highestProcessedRequest: hasHighest ? highest : nil)
        do { _ = try IKEMessageIDWindows(restoringFrom: snapshot) } catch { throw .invalidState("message IDs: \(error)") }
        return snapshot
    }

    // MARK: IKE SA

    static func write(_ sa: IKESA, into w: inout ByteWriter) throws(SyncCodecError) {
        try withUnsafePointer(to: sa) { (sa) throws(SyncCodecError) in try write(ikeSAAt: sa, into: &w) }
    }

    /// Through the SA's address, as ``write(childSAAt:into:)``.
    static func write(ikeSAAt sa: UnsafePointer<IKESA>, into w: inout ByteWriter) throws(SyncCodecError) {
        // Everything before the message IDs under one capacity check: the identifier, the
        // generation's varint 10, 2 + 1 + 1, two endpoints, the transforms 10, two optional
        // times 10 each, the extensions 1 and the identifier rekeyed from.
        w.withReservedCursor(identifierSize + 10 + 4 + 2 * endpointSize + 10 + 20 + 1 + identifierSize) { cursor in
            write(sa.pointee.identifier, into: &cursor)
            cursor.writeVarint(sa.pointee.generation)
            cursor.write(sa.pointee.owner.rawValue)
            cursor.write(sa.pointee.isOriginalInitiator)
            cursor.write(sa.pointee.state.rawValue)
            write(sa.pointee.local, into: &cursor)
            write(sa.pointee.remote, into: &cursor)
            cursor.write(sa.pointee.transforms.encryption.rawValue)
            cursor.write(sa.pointee.transforms.encryptionKeyLength ?? 0)
            cursor.write(sa.pointee.transforms.prf.rawValue)
            cursor.write(sa.pointee.transforms.integrity.rawValue)
            cursor.write(sa.pointee.transforms.keyExchange.rawValue)
            writeOptional(sa.pointee.lifetime.rekeyAt?.nanoseconds, into: &cursor)
            writeOptional(sa.pointee.lifetime.reauthenticateAt?.nanoseconds, into: &cursor)
            let extensions = sa.pointee.extensions
            cursor.write(
                UInt8((extensions.messageIDSync ? 1 : 0) | (extensions.replayCounterSync ? 2 : 0)
                    | (extensions.childSAsUseExtendedSequenceNumbers ? 4 : 0) | (extensions.messageIDSyncAnswered ? 8 : 0)
                    | (sa.pointee.rekeyedFrom != nil ? 16 : 0)))
            if let rekeyedFrom = sa.pointee.rekeyedFrom { write(rekeyedFrom, into: &cursor) }
        }
        try write(sa.pointee.messageIDs.snapshot, into: &w)
        // Each key as `write(_:into:)` writes it (length, bytes), from the packed keys at once.
        try sa.pointee.keys.withPackedBytes { (packed, lengths) throws(SyncCodecError) in
            for length in lengths where length > maximumKeyLength { throw .recordTooLarge(length) }
            w.withReservedCursor(2 * lengths.count + packed.count) { cursor in
                var offset = 0
                for length in lengths {
                    cursor.write(UInt16(length))
                    cursor.write(bytes: UnsafeRawBufferPointer(rebasing: packed[offset..<offset + length]))
                    offset += length
                }
            }
        }
    }

    static func readIKESA(_ r: inout ByteReader) throws(SyncCodecError) -> IKESA {
        let identifier = try readIdentifier(&r)
        let generation = try r.readVarint()
        let owner = ClusterMemberID(rawValue: try r.readUInt16())
        let originalInitiator = try r.readBool()
        let rawState = try r.readUInt8()
        guard let state = IKESAState(rawValue: rawState) else { throw .invalidValue("IKE SA state \(rawState)") }
        let local = try readEndpoint(&r)
        let remote = try readEndpoint(&r)
        let encryption = EncryptionAlgorithm(rawValue: try r.readUInt16())
        let keyLength = try r.readUInt16()
        let transforms = IKETransforms(
            encryption: encryption, encryptionKeyLength: keyLength == 0 ? nil : keyLength,
            prf: PseudorandomFunction(rawValue: try r.readUInt16()), integrity: IntegrityAlgorithm(rawValue: try r.readUInt16()),
            keyExchange: KeyExchangeMethod(rawValue: try r.readUInt16()))
        let lifetime = IKESALifetime(rekeyAt: try readTimestamp(&r), reauthenticateAt: try readTimestamp(&r))
        let flags = try r.readUInt8()
        guard flags & ~31 == 0 else { throw .invalidValue("extension flags \(flags)") }
        let rekeyedFrom = flags & 16 != 0 ? try readIdentifier(&r) : nil
        let extensions = IKEExtensions(
            messageIDSync: flags & 1 != 0, replayCounterSync: flags & 2 != 0, childSAsUseExtendedSequenceNumbers: flags & 4 != 0,
            messageIDSyncAnswered: flags & 8 != 0)
        let snapshot = try readSnapshot(&r)
        let keys = try readIKEKeys(&r)
        do {
            var sa = try IKESA(
                identifier: identifier, isOriginalInitiator: originalInitiator, state: state, local: local, remote: remote,
                transforms: transforms, keys: keys,
                lifetime: lifetime, messageIDs: try IKEMessageIDWindows(restoringFrom: snapshot), extensions: extensions,
                owner: owner)
            sa.generation = generation
            sa.rekeyedFrom = rekeyedFrom
            return sa
        } catch {
            throw .invalidState("IKE SA: \(error)")
        }
    }

    // MARK: Child SA

    static func write(_ sa: ChildSA, into w: inout ByteWriter) throws(SyncCodecError) {
        var cache = SelectorCache()
        try withUnsafePointer(to: sa) { (sa) throws(SyncCodecError) in try write(childSAAt: sa, into: &w, cache: &cache) }
    }

    /// Through the SA's address: a bulk resync encodes each Child SA where its snapshot holds
    /// it (``GatewayState/withUnsafeChildSA(at:_:)``), and a `ChildSA` value there would be a
    /// copy, every reference in it retained and released.
    static func write(
        childSAAt sa: UnsafePointer<ChildSA>, into w: inout ByteWriter, cache: inout SelectorCache
    ) throws(SyncCodecError) {
        // The fixed head under one capacity check, as the counters below: the SPIs, protocol,
        // mode and ESN flag, the generation's varint, the owner, the request ID's varint, the
        // policy, the parent, the transforms.
        w.withReservedCursor(4 + 4 + 1 + 1 + 1 + 10 + 2 + 5 + 1 + 4 + identifierSize + 1 + 2 + 2 + 2 + 2) { cursor in
            cursor.write(sa.pointee.inboundSPI)
            cursor.write(sa.pointee.outboundSPI)
            cursor.write(sa.pointee.ipsecProtocol.rawValue)
            cursor.write(sa.pointee.mode.rawValue)
            cursor.write(sa.pointee.extendedSequenceNumbers)
            cursor.writeVarint(sa.pointee.generation)
            cursor.write(sa.pointee.owner.rawValue)
            cursor.writeVarint(UInt64(sa.pointee.requestID))
            cursor.write(sa.pointee.policy != nil)
            cursor.write(sa.pointee.policy?.rawValue ?? 0)
            write(sa.pointee.parent, into: &cursor)
            cursor.write(sa.pointee.transforms.encryption != nil)
            cursor.write(sa.pointee.transforms.encryption?.rawValue ?? 0)
            cursor.write(sa.pointee.transforms.encryptionKeyLength ?? 0)
            cursor.write(sa.pointee.transforms.integrity.rawValue)
            cursor.write(sa.pointee.transforms.keyExchange.rawValue)
        }
        try write(selectorsAt: sa.pointer(to: \.localSelectors)!, into: &w, cache: &cache.local)
        try write(selectorsAt: sa.pointer(to: \.remoteSelectors)!, into: &w, cache: &cache.remote)
        w.write(UInt16(sa.pointee.inboundKeys.encryptionKeyLength))
        try write(sa.pointee.inboundKeys.material, into: &w)
        w.write(UInt16(sa.pointee.outboundKeys.encryptionKeyLength))
        try write(sa.pointee.outboundKeys.material, into: &w)
        // Counters, limits and times under one capacity check: at most 10 bytes each, the
        // window size 5, the soft limit 8.
        w.withReservedCursor(13 * 10 + 5 + 8) { cursor in
            cursor.writeVarint(sa.pointee.outboundCounter.lastSent)
            // Fixed: the soft limit is usually near the top of the sequence space, where a
            // varint takes more than 8 bytes.
            cursor.write(sa.pointee.outboundCounter.softLimit)
            cursor.writeVarint(UInt64(sa.pointee.inboundWindow.size))
            cursor.writeVarint(sa.pointee.inboundWindow.top)
            write(sa.pointee.lifetime.soft, into: &cursor)
            write(sa.pointee.lifetime.hard, into: &cursor)
            cursor.writeVarint(sa.pointee.lifetime.installedAt.nanoseconds)
            let usage = sa.pointee.lifetime.usage
            cursor.writeVarint(usage.inboundBytes)
            cursor.writeVarint(usage.inboundPackets)
            cursor.writeVarint(usage.outboundBytes)
            cursor.writeVarint(usage.outboundPackets)
        }
    }

    static func readChildSA(_ r: inout ByteReader, cache: inout SelectorCache) throws(SyncCodecError) -> ChildSA {
        let inboundSPI = try r.readUInt32()
        let outboundSPI = try r.readUInt32()
        let (ipsecProtocol, mode) = try readProtocolAndMode(&r)
        let esn = try r.readBool()
        let generation = try r.readVarint()
        let owner = ClusterMemberID(rawValue: try r.readUInt16())
        let requestID = try r.readVarint32()
        let hasPolicy = try r.readBool()
        let policyID = try r.readUInt32()
        let parent = try readIdentifier(&r)
        let hasEncryption = try r.readBool()
        let encryption = try r.readUInt16()
        let keyLength = try r.readUInt16()
        let transforms = ChildSATransforms(
            encryption: hasEncryption ? EncryptionAlgorithm(rawValue: encryption) : nil,
            encryptionKeyLength: keyLength == 0 ? nil : keyLength, integrity: IntegrityAlgorithm(rawValue: try r.readUInt16()),
            keyExchange: KeyExchangeMethod(rawValue: try r.readUInt16()))
        let local = try readSelectors(&r, cache: &cache.local)
        let remote = try readSelectors(&r, cache: &cache.remote)
        // Both directions' keys into one allocation, as views of it.
        let inboundEncryptionLength = Int(try r.readUInt16())
        let inboundBytes = try readKeyBytes(&r)
        let outboundEncryptionLength = Int(try r.readUInt16())
        let outboundBytes = try readKeyBytes(&r)
        let inboundKeys: ChildSAKeys
        let outboundKeys: ChildSAKeys
        do {
            (inboundKeys, outboundKeys) = try withUnsafeTemporaryAllocation(of: UnsafeRawBufferPointer.self, capacity: 2) { parts in
                parts.initializeElement(at: 0, to: inboundBytes)
                parts.initializeElement(at: 1, to: outboundBytes)
                let both = keyMaterial(concatenating: UnsafeBufferPointer(parts))
                return (
                    try ChildSAKeys(material: both.sharingSlice(0..<inboundBytes.count), encryptionKeyLength: inboundEncryptionLength),
                    try ChildSAKeys(
                        material: both.sharingSlice(inboundBytes.count..<both.count), encryptionKeyLength: outboundEncryptionLength)
                )
            }
        } catch {
            throw .invalidValue("encryption key length")
        }
        let lastSent = try r.readVarint()
        let softLimit = try r.readUInt64()
        let windowSize = try r.readVarint32()
        let top = try r.readVarint()
        let soft = try readLimits(&r)
        let hard = try readLimits(&r)
        let installedAt = Timestamp(nanoseconds: try r.readVarint())
        let usage = ChildSAUsage(
            inboundBytes: try r.readVarint(), inboundPackets: try r.readVarint(), outboundBytes: try r.readVarint(),
            outboundPackets: try r.readVarint())
        do {
            var sa = try ChildSA(
                inboundSPI: inboundSPI, outboundSPI: outboundSPI, ipsecProtocol: ipsecProtocol, mode: mode,
                localSelectors: local, remoteSelectors: remote, transforms: transforms,
                inboundKeys: inboundKeys, outboundKeys: outboundKeys,
                outboundCounter: try OutboundSequenceCounter(extendedSequenceNumbers: esn, lastSent: lastSent, softLimit: softLimit),
                inboundWindow: try ReplayWindow(
                    passiveCopyAt: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: top), size: windowSize,
                    extendedSequenceNumbers: esn),
                lifetime: try ChildSALifetime(soft: soft, hard: hard, installedAt: installedAt, usage: usage),
                requestID: requestID, policy: hasPolicy ? SecurityPolicyID(rawValue: policyID) : nil, parent: parent,
                owner: owner)
            sa.generation = generation
            return sa
        } catch {
            throw .invalidState("Child SA: \(error)")
        }
    }

    static func readProtocolAndMode(_ r: inout ByteReader) throws(SyncCodecError) -> (IPsecProtocol, IPsecMode) {
        let rawProtocol = try r.readUInt8()
        let rawMode = try r.readUInt8()
        guard let ipsecProtocol = IPsecProtocol(rawValue: rawProtocol), let mode = IPsecMode(rawValue: rawMode) else {
            throw .invalidValue("protocol \(rawProtocol) mode \(rawMode)")
        }
        return (ipsecProtocol, mode)
    }

    // MARK: Policies

    static func write(_ policy: SecurityPolicy, into w: inout ByteWriter) throws(SyncCodecError) {
        w.write(policy.id.rawValue)
        switch policy.action {
        case .protect(let settings):
            w.write(UInt8(0))
            w.write(settings.ipsecProtocol.rawValue)
            w.write(settings.mode.rawValue)
            w.write(settings.extendedSequenceNumbers)
        case .bypass:
            w.write(UInt8(1))
        case .discard:
            w.write(UInt8(2))
        }
        w.write(policy.populateFromPacket.rawValue)
        try write(policy.localSelectors, into: &w)
        try write(policy.remoteSelectors, into: &w)
    }

    static func readPolicy(_ r: inout ByteReader) throws(SyncCodecError) -> SecurityPolicy {
        let id = SecurityPolicyID(rawValue: try r.readUInt32())
        let action: SecurityPolicyAction
        switch try r.readUInt8() {
        case 0:
            let (ipsecProtocol, mode) = try readProtocolAndMode(&r)
            action = .protect(ProtectionSettings(ipsecProtocol: ipsecProtocol, mode: mode, extendedSequenceNumbers: try r.readBool()))
        case 1: action = .bypass
        case 2: action = .discard
        case let other: throw .invalidValue("policy action \(other)")
        }
        let flags = try r.readUInt8()
        guard flags & ~0x1F == 0 else { throw .invalidValue("populate-from-packet flags \(flags)") }
        return SecurityPolicy(
            id: id, localSelectors: try readSelectors(&r), remoteSelectors: try readSelectors(&r), action: action,
            populateFromPacket: PopulateFromPacket(rawValue: flags))
    }
}
