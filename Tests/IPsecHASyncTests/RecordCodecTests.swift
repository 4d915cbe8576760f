import IPsecHACore
@testable import IPsecHASync
import Testing

@Suite("Synch records: codec")
struct RecordCodecTests {
    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func randomRecordsRoundTrip(seed: UInt64) throws {
        var generator = RecordGenerator(seed: seed)
        for _ in 0..<500 {
            let record = generator.record()
            let bytes = try record.encoded()
            let decoded = try SyncRecord.decodeAll(bytes[...])
            #expect(decoded == [record])
        }
    }

    @Test(arguments: [1_400, 300, 160] as [Int])
    func checkpointRecordsAreSplitToFillButNeverOverflowADatagram(maximumDatagramSize: Int) throws {
        var random = SplitMix64(seed: UInt64(maximumDatagramSize))
        let entries = (0..<500).map { index in
            // Counters from 1 to 10 bytes long, so that entries differ in size.
            let shift = random.next() % 64
            return CounterCheckpointEntry(
                checkpoint: ChildSACounterCheckpoint(
                    inboundSPI: UInt32(0x1000 + index), outbound: OutboundCounterCheckpoint(lastSent: random.next() >> shift),
                    inbound: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: random.next() >> (63 - shift)),
                    usage: ChildSAUsage(inboundBytes: random.next() >> shift, inboundPackets: 0, outboundBytes: random.next(), outboundPackets: 1)),
                generation: random.next() >> shift, packetsPerSecond: UInt32(truncatingIfNeeded: random.next() >> shift))
        }
        let key = try ChannelKey.generate()
        let (active, standby) = (ClusterMemberID(rawValue: 1), ClusterMemberID(rawValue: 2))
        var configuration = SyncChannelConfiguration(clusterID: 1, member: active, epoch: 1, key: key, peers: [standby])
        configuration.maximumDatagramSize = maximumDatagramSize
        var sender = try SyncChannel(configuration: configuration)
        configuration.member = standby
        configuration.peers = [active]
        var receiver = try SyncChannel(configuration: configuration)
        let now = establish(&sender, &receiver, now: Timestamp.seconds(1))
        var delivered: [CounterCheckpointEntry] = []
        var datagrams = 0
        for case .transmit(_, let datagram) in try sender.send(Replicator.batches(entries), to: standby, now: now).actions {
            datagrams += 1
            #expect(datagram.count <= maximumDatagramSize)
            for case .deliver(_, let records) in receiver.receive(datagram, now: now) {
                for case .counterCheckpoints(let batch) in records { delivered += batch }
            }
        }
        #expect(delivered == entries, "every entry once, in order")
        // Filled: each datagram but the last leaves less room than the largest entry takes.
        let usable = sender.maximumPayload - 6 - StateEncoding.checkpointEntrySizes.maximum
        let encoded = try entries.reduce(0) { try $0 + SyncRecord.counterCheckpoints([$1]).encoded().count - 6 }
        #expect(datagrams <= encoded / usable + 1)
    }

    @Test func childSAsWithTheSelectorsOfTheOneBeforeShareThemAndTheOthersDecodeTheirOwn() throws {
        var generator = RecordGenerator(seed: 11)
        let (x, y) = ([generator.selector(.ipv4)], [generator.selector(.ipv6), generator.selector(.ipv6)])
        // x x y x: hits, a miss that replaces the remembered list, a miss back.
        let childSAs = [x, x, y, x].map { selectors in
            var sa = generator.childSA()
            sa.localSelectors = selectors
            sa.remoteSelectors = x
            return sa
        }
        let bytes = try childSAs.flatMap { try SyncRecord.childSAUpsert($0).encoded() }
        var cache = StateEncoding.SelectorCache()
        let decoded = try SyncRecord.decodeAll(bytes[...], cache: &cache)
        #expect(decoded == childSAs.map(SyncRecord.childSAUpsert))
        let local = decoded.compactMap { record -> [TrafficSelector]? in
            if case .childSAUpsert(let sa) = record { sa.localSelectors } else { nil }
        }
        func storage(_ selectors: [TrafficSelector]) -> UnsafePointer<TrafficSelector>? { selectors.withUnsafeBufferPointer(\.baseAddress) }
        #expect(storage(local[0]) == storage(local[1]), "equal to the one before: shared")
        #expect(storage(local[2]) != storage(local[1]) && storage(local[3]) != storage(local[1]), "decoded again after a different one")
        // The cache outlives the datagram: the next one's first Child SA shares too.
        let next = try SyncRecord.decodeAll(try SyncRecord.childSAUpsert(childSAs[3]).encoded()[...], cache: &cache)
        guard case .childSAUpsert(let again) = next.first else { Issue.record("not a Child SA"); return }
        #expect(storage(again.localSelectors) == storage(local[3]))
    }

    @Test func severalRecordsDecodeInOrder() throws {
        var generator = RecordGenerator(seed: 9)
        let records = (0..<20).map { _ in generator.record() }
        let bytes = try records.flatMap { try $0.encoded() }
        #expect(try SyncRecord.decodeAll(bytes[...]) == records)
    }

    @Test func everyTruncationIsATypedError() throws {
        var generator = RecordGenerator(seed: 10)
        for _ in 0..<60 {
            let bytes = try generator.record().encoded()
            for length in 0..<bytes.count where length > 0 {
                #expect(throws: SyncCodecError.self) { try SyncRecord.decodeAll(bytes[0..<length]) }
            }
        }
    }

    @Test func randomCorruptionNeverCrashes() throws {
        var generator = RecordGenerator(seed: 11)
        var rejected = 0
        for _ in 0..<3_000 {
            var bytes = try generator.record().encoded()
            for _ in 0..<(1 + generator.next(4)) {
                bytes[Int(generator.next(UInt64(bytes.count)))] ^= UInt8(1 + generator.next(255))
            }
            do { _ = try SyncRecord.decodeAll(bytes[...]) } catch { rejected += 1 }
        }
        #expect(rejected > 1_000)
    }

    @Test func unknownRecordsAreSkippedUnlessCritical() throws {
        let skipped: [UInt8] = [0x01, 0x23, 0x00, 0x02, 0xAB, 0xCD]
        let heartbeat = try SyncRecord.heartbeat(highestSequence: 5, sentAt: Timestamp(nanoseconds: 6)).encoded()
        #expect(try SyncRecord.decodeAll((skipped + heartbeat)[...]) == [
            .unknown(type: 0x0123, value: [0xAB, 0xCD]), .heartbeat(highestSequence: 5, sentAt: Timestamp(nanoseconds: 6)),
        ])
        let critical: [UInt8] = [0x81, 0x23, 0x00, 0x00]
        #expect(throws: SyncCodecError.unknownCriticalRecord(0x8123)) { try SyncRecord.decodeAll((heartbeat + critical)[...]) }
    }

    /// Every counter, time and limit at its largest: the longest varints, which the encoder must
    /// have reserved room for.
    @Test func childSAWithTheLargestCountersRoundTrips() throws {
        var generator = RecordGenerator(seed: 13)
        let model = generator.childSA()
        let most = UInt64.max - 1
        var sa = try ChildSA(
            inboundSPI: model.inboundSPI, outboundSPI: model.outboundSPI, ipsecProtocol: .esp, mode: .tunnel,
            localSelectors: model.localSelectors, remoteSelectors: model.remoteSelectors, transforms: model.transforms,
            inboundKeys: model.inboundKeys, outboundKeys: model.outboundKeys,
            outboundCounter: try OutboundSequenceCounter(extendedSequenceNumbers: true, lastSent: UInt64.max, softLimit: UInt64.max),
            inboundWindow: try ReplayWindow(
                size: ReplayWindow.maximumSize, extendedSequenceNumbers: true,
                restoringFrom: ReplayWindowCheckpoint(highestAuthenticatedSequenceNumber: UInt64.max), policy: .permissiveUnsafe),
            lifetime: try ChildSALifetime(
                soft: LifetimeLimits(seconds: most, bytes: most, packets: most), hard: LifetimeLimits(seconds: most, bytes: most, packets: most),
                installedAt: Timestamp(nanoseconds: UInt64.max),
                usage: ChildSAUsage(inboundBytes: .max, inboundPackets: .max, outboundBytes: .max, outboundPackets: .max)),
            requestID: UInt32.max, policy: SecurityPolicyID(rawValue: UInt32.max), parent: model.parent, owner: model.owner)
        sa.generation = UInt64.max
        let record = SyncRecord.childSAUpsert(sa)
        let bytes = try record.encoded()
        #expect(try SyncRecord.decodeAll(bytes[...]) == [record])
    }

    /// An IKE SA's keys are written from their packed bytes in one pass: each must still come
    /// back whole and in its place, at every length up to the largest a record carries, also
    /// after a key was replaced on its own (the keys repacked); one byte more is refused.
    @Test func ikeSAKeysOfEveryLengthRoundTripAndALongerOneIsRefused() throws {
        var generator = RecordGenerator(seed: 14)
        var sa = generator.ikeSA()
        sa.keys = IKEKeys(
            d: generator.key(0), ai: generator.key(1), ar: generator.key(StateEncoding.maximumKeyLength), ei: generator.key(36),
            er: generator.key(17), pi: generator.key(0), pr: generator.key(64))
        #expect(try SyncRecord.decodeAll(SyncRecord.ikeSAUpsert(sa).encoded()[...]) == [.ikeSAUpsert(sa)])
        sa.keys.ei = generator.key(5)
        #expect(try SyncRecord.decodeAll(SyncRecord.ikeSAUpsert(sa).encoded()[...]) == [.ikeSAUpsert(sa)])
        sa.keys.pi = generator.key(StateEncoding.maximumKeyLength + 1)
        #expect(throws: SyncCodecError.recordTooLarge(StateEncoding.maximumKeyLength + 1)) { try SyncRecord.ikeSAUpsert(sa).encoded() }
    }

    /// A bulk resync writes Child SAs with one cache of the selector lists written last: the
    /// bytes must be those of each SA encoded alone, whether a list is the same array as the
    /// one before, an equal copy, another list, or a new array made after the cached one's
    /// owner was released.
    @Test func cachedSelectorEncodingsAreTheSAsOwn() throws {
        var generator = RecordGenerator(seed: 15)
        var cache = StateEncoding.SelectorCache()
        var previous = generator.childSA()
        for round in 0..<400 {
            var sa = generator.childSA()
            switch round % 5 {
            case 0: (sa.localSelectors, sa.remoteSelectors) = (previous.localSelectors, previous.remoteSelectors)
            case 1: sa.localSelectors = Array(previous.localSelectors)
            case 2: sa.remoteSelectors = previous.remoteSelectors
            case 3: sa.localSelectors = []
            default: break
            }
            var together = ByteWriter()
            try withUnsafePointer(to: sa) { (pointer) throws(SyncCodecError) in
                try SyncRecord.encodeUpsert(ofChildSAAt: pointer, into: &together, selectors: &cache)
            }
            #expect(together.bytes == (try SyncRecord.childSAUpsert(sa).encoded()), "round \(round)")
            previous = sa
        }
    }

    @Test func invalidStateIsRefusedByTheModel() throws {
        var generator = RecordGenerator(seed: 12)
        var bytes = try SyncRecord.childSAUpsert(generator.childSA()).encoded()
        // Inbound SPI (first 4 bytes of the value, after type and length) set to 1: reserved.
        bytes[4...7] = [0, 0, 0, 1]
        #expect(throws: SyncCodecError.self) { try SyncRecord.decodeAll(bytes[...]) }
    }
}

@Suite("Variable-length integers")
struct VarintTests {
    @Test(arguments: [0, 1, 127, 128, 300, 16_383, 16_384, 1 << 32, UInt64.max - 1, UInt64.max] as [UInt64])
    func roundTrip(value: UInt64) throws {
        var writer = ByteWriter()
        writer.writeVarint(value)
        let bytes = writer.bytes
        #expect(bytes.count == max(1, (64 - value.leadingZeroBitCount + 6) / 7))
        let decoded = try ByteReader.reading(bytes[...]) { (reader: inout ByteReader) throws(SyncCodecError) in
            let value = try reader.readVarint()
            try reader.expectEnd()
            return value
        }
        #expect(decoded == value)
    }

    @Test(arguments: [
        [0x80], [0xFF, 0xFF], [0x80, 0x00], [0x81, 0x80, 0x00],
        [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02],
        [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
    ] as [[UInt8]])
    func malformedEncodingsAreRefused(bytes: [UInt8]) {
        #expect(throws: SyncCodecError.self) {
            try ByteReader.reading(bytes[...]) { (reader: inout ByteReader) throws(SyncCodecError) in try reader.readVarint() }
        }
    }

    /// LEB128 as the protocol defines it, written plainly: what the reader and the writer
    /// (tuned for speed) must agree with.
    static func referenceEncoding(_ value: UInt64) -> [UInt8] {
        var bytes: [UInt8] = []
        var remaining = value
        repeat {
            bytes.append(UInt8(remaining & 0x7F) | (remaining >= 0x80 ? 0x80 : 0))
            remaining >>= 7
        } while remaining > 0
        return bytes
    }

    /// The value and length of the varint at the start of `bytes`, or nil where the reader must
    /// refuse it (truncated, longer than 10 bytes, beyond 64 bits, not minimal).
    static func referenceDecoding(_ bytes: ArraySlice<UInt8>) -> (value: UInt64, count: Int)? {
        var value: UInt64 = 0
        for (offset, byte) in bytes.prefix(10).enumerated() {
            let group = UInt64(byte & 0x7F)
            if offset == 9, group > 1 { return nil }
            value |= group << (7 * offset)
            if byte < 0x80 { return byte == 0 && offset > 0 ? nil : (value, offset + 1) }
        }
        return nil
    }

    /// Every length from 1 to 10 bytes at its bounds, and random values: the same bytes as the
    /// reference, decoded back with bytes behind them and at the very end of the bytes, and a
    /// field written after a varint intact.
    @Test func varintsAgreeWithTheReference() throws {
        var random = SplitMix64(seed: 77)
        var values: [UInt64] = [0, 1, 0x7F, .max - 1, .max]
        for bits in stride(from: 7, through: 63, by: 7) { values += [1 << bits, (1 << bits) - 1, (1 << bits) + 1] }
        for _ in 0..<2_000 { values.append(random.next() >> (random.next() % 64)) }
        for value in values {
            var writer = ByteWriter()
            writer.writeVarint(value)
            writer.write(UInt32(0xA5A5_A5A5))
            let bytes = writer.bytes
            let expected = Self.referenceEncoding(value)
            #expect(Array(bytes.dropLast(4)) == expected && Array(bytes.suffix(4)) == [0xA5, 0xA5, 0xA5, 0xA5], "\(value)")
            for tail in [bytes[...], bytes.dropLast(4)] {
                let decoded = try ByteReader.reading(tail) { (reader: inout ByteReader) throws(SyncCodecError) in
                    (try reader.readVarint(), reader.position)
                }
                #expect(decoded.0 == value && decoded.1 == expected.count, "\(value)")
            }
        }
    }

    /// Random bytes, mostly with high bits set so that long and malformed varints are common,
    /// read at every offset: the reader takes exactly what the reference takes, refuses exactly
    /// what it refuses, and a refused read leaves the position where it was.
    @Test func randomBytesDecodeAsTheReferenceSays() throws {
        var random = SplitMix64(seed: 78)
        for _ in 0..<3_000 {
            let count = Int(random.next() % 24)
            let bytes = (0..<count).map { _ -> UInt8 in
                let byte = UInt8(truncatingIfNeeded: random.next())
                return random.next() % 4 == 0 ? byte & 0x7F : byte | 0x80
            }
            for start in 0...count {
                let expected = Self.referenceDecoding(bytes[start...])
                let outcome = try ByteReader.reading(bytes[start...]) { (reader: inout ByteReader) -> (UInt64, Int)? in
                    let before = reader.position
                    guard let value = try? reader.readVarint() else { return reader.position == before ? nil : (0, -1) }
                    return (value, reader.position - before)
                }
                #expect(outcome?.0 == expected?.value && outcome?.1 == expected?.count, "\(bytes[start...])")
            }
        }
    }
}

@Suite("Byte comparison")
struct ByteComparisonTests {
    /// Every length up to a few words, equal and with one byte changed at each position (the
    /// selector cache's comparison: a missed difference hands a Child SA another one's selectors).
    @Test func buffersAreEqualExactlyWhenEveryByteIs() {
        var random = SplitMix64(seed: 79)
        for count in 0...40 {
            let bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            bytes.withUnsafeBytes { left in
                Array(bytes).withUnsafeBytes { right in #expect(left.hasSameBytes(as: right), "\(count) bytes") }
            }
            for position in 0..<count {
                var changed = bytes
                changed[position] ^= 1 << UInt8(random.next() % 8)
                bytes.withUnsafeBytes { left in
                    changed.withUnsafeBytes { right in
                        #expect(!left.hasSameBytes(as: right), "\(count) bytes, byte \(position) changed")
                    }
                }
            }
        }
    }
}
