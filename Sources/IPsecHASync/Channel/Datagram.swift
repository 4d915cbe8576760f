internal import CSodium
public import IPsecHACore

/// The fixed header of every synch datagram (32 bytes, big-endian), authenticated as the AEAD's
/// additional data when the datagram is sealed.
///
/// ```
///  0  magic 0x49 0x48 ("IH")    2  version (1)    3  flags
///  4  cluster ID (4)            8  sender member (2)    10  receiver member (2)
/// 12  sender's epoch (4)       16  packet number (8): every datagram, strictly increasing
/// 24  reliable sequence (8): 0 when the datagram carries no reliable records
/// ```
public struct DatagramHeader: Sendable, Hashable {
    /// Header length in bytes.
    public static let size = 32
    /// Protocol version this package speaks.
    public static let currentVersion: UInt8 = 1
    static let magic: (UInt8, UInt8) = (0x49, 0x48)

    /// Flag: the payload is sealed (ChaCha20-Poly1305-IETF); clear only in insecure test mode.
    public static let sealedFlag: UInt8 = 0x01
    /// Flag: the reliable stream restarts at this datagram's sequence number (after the sender
    /// could no longer retransmit something; a bulk resync follows).
    public static let streamResetFlag: UInt8 = 0x02

    /// Protocol version.
    public var version: UInt8 = currentVersion
    /// Flag bits (``sealedFlag``, ``streamResetFlag``).
    public var flags: UInt8
    /// The cluster this datagram belongs to; other clusters' datagrams are dropped.
    public var clusterID: UInt32
    /// The member that sent it.
    public var sender: ClusterMemberID
    /// The member it is for.
    public var receiver: ClusterMemberID
    /// The sender's epoch: new on every start of the sender, and on every key rotation.
    public var epoch: UInt32
    /// Unique per (sender, receiver, epoch): the nonce, and what the replay window checks.
    public var packetNumber: UInt64
    /// The reliable stream position of the records carried, or 0.
    public var reliableSequence: UInt64

    /// A header from its parts.
    public init(
        flags: UInt8, clusterID: UInt32, sender: ClusterMemberID, receiver: ClusterMemberID, epoch: UInt32,
        packetNumber: UInt64, reliableSequence: UInt64
    ) {
        self.flags = flags
        self.clusterID = clusterID
        self.sender = sender
        self.receiver = receiver
        self.epoch = epoch
        self.packetNumber = packetNumber
        self.reliableSequence = reliableSequence
    }

    func write(into writer: inout ByteWriter) {
        writer.write(Self.magic.0)
        writer.write(Self.magic.1)
        writer.write(version)
        writer.write(flags)
        writer.write(clusterID)
        writer.write(sender.rawValue)
        writer.write(receiver.rawValue)
        writer.write(epoch)
        writer.write(packetNumber)
        writer.write(reliableSequence)
    }

    static func read(_ bytes: ArraySlice<UInt8>) throws(SyncChannelError) -> DatagramHeader {
        let fields: (magic: (UInt8, UInt8), version: UInt8, header: DatagramHeader)
        do {
            fields = try ByteReader.reading(bytes) { (reader: inout ByteReader) throws(SyncCodecError) in
                let magic = (try reader.readUInt8(), try reader.readUInt8())
                let version = try reader.readUInt8()
                let header = DatagramHeader(
                    flags: try reader.readUInt8(), clusterID: try reader.readUInt32(),
                    sender: ClusterMemberID(rawValue: try reader.readUInt16()), receiver: ClusterMemberID(rawValue: try reader.readUInt16()),
                    epoch: try reader.readUInt32(), packetNumber: try reader.readUInt64(), reliableSequence: try reader.readUInt64())
                return (magic, version, header)
            }
        } catch {
            throw .tooShort(bytes.count)
        }
        guard fields.magic == magic else { throw .notSynchProtocol }
        guard fields.version == currentVersion else { throw .unsupportedVersion(fields.version) }
        var header = fields.header
        header.version = fields.version
        guard header.flags & ~(sealedFlag | streamResetFlag) == 0 else { throw .invalidHeader("flags \(header.flags)") }
        guard header.packetNumber > 0 else { throw .invalidHeader("packet number 0") }
        return header
    }
}

/// Seals and opens datagrams: ChaCha20-Poly1305-IETF under the key of the direction
/// (sender, receiver, epoch), the nonce built from the sender, the receiver and the packet
/// number, and the whole header as additional data. Without a key (insecure mode) payloads
/// travel in clear, marked as such, and a sealing receiver refuses them.
struct DatagramSealer {
    static let tagSize = 16
    private(set) var key: ChannelKey?
    /// The cluster key before the last rotation: datagrams of peers that have not rotated yet
    /// still open with it.
    private var previousKey: ChannelKey?
    /// Direction keys derived so far, at most a few per peer (current and previous epoch).
    private var derived: [UInt64: SecureBytes] = [:]
    private var derivedPrevious: [UInt64: SecureBytes] = [:]

    init(key: ChannelKey?) { self.key = key }

    /// Seals with `newKey` from now on; keeps opening with the old key too.
    mutating func rotate(to newKey: ChannelKey) {
        previousKey = key
        derivedPrevious = derived
        key = newKey
        derived = [:]
    }

    mutating func seal(_ header: DatagramHeader, payload: [UInt8]) throws(ChannelSecurityError) -> [UInt8] {
        var header = header
        guard let key else {
            var writer = ByteWriter(capacity: DatagramHeader.size + payload.count)
            header.flags &= ~DatagramHeader.sealedFlag
            header.write(into: &writer)
            writer.write(bytes: payload)
            return writer.bytes
        }
        header.flags |= DatagramHeader.sealedFlag
        var writer = ByteWriter(capacity: DatagramHeader.size)
        header.write(into: &writer)
        let directionKey = try self.directionKey(key, header)
        let total = DatagramHeader.size + payload.count + Self.tagSize
        return [UInt8](unsafeUninitializedCapacity: total) { buffer, initialized in
            let base = buffer.baseAddress!
            writer.copyBytes(to: UnsafeMutableRawPointer(base))
            var sealedLength: UInt64 = 0
            Self.withNonce(header) { nonce in
                directionKey.withUnsafeBytes { keyBytes in
                    _ = crypto_aead_chacha20poly1305_ietf_encrypt(
                        base + DatagramHeader.size, &sealedLength, payload, UInt64(payload.count),
                        base, UInt64(DatagramHeader.size), nil, nonce,
                        keyBytes.baseAddress!.assumingMemoryBound(to: UInt8.self))
                }
            }
            initialized = total
        }
    }

    /// The header and plaintext payload of a datagram, after authentication when sealed.
    mutating func open(_ datagram: [UInt8]) throws(SyncChannelError) -> (DatagramHeader, [UInt8]) {
        guard datagram.count >= DatagramHeader.size else { throw .tooShort(datagram.count) }
        let header = try DatagramHeader.read(datagram[0..<DatagramHeader.size])
        let sealed = header.flags & DatagramHeader.sealedFlag != 0
        guard let key else {
            guard !sealed else { throw .security(.noKey) }
            return (header, Array(datagram[DatagramHeader.size...]))
        }
        guard sealed else { throw .security(.authenticationFailed) }
        guard datagram.count >= DatagramHeader.size + Self.tagSize else { throw .tooShort(datagram.count) }
        do {
            if let plaintext = Self.decrypt(datagram, header, try Self.directionKey(key, header, cache: &derived)) {
                return (header, plaintext)
            }
            if let previousKey,
                let plaintext = Self.decrypt(datagram, header, try Self.directionKey(previousKey, header, cache: &derivedPrevious))
            {
                return (header, plaintext)
            }
        } catch {
            throw .security(error)
        }
        throw .security(.authenticationFailed)
    }

    /// The plaintext, or nil when the tag does not verify under `directionKey`.
    private static func decrypt(_ datagram: [UInt8], _ header: DatagramHeader, _ directionKey: SecureBytes) -> [UInt8]? {
        var result: Int32 = -1
        // Not zero-filled first: libsodium writes every byte, or fails and nothing is returned.
        let plaintext = [UInt8](unsafeUninitializedCapacity: datagram.count - DatagramHeader.size - tagSize) { plaintext, initialized in
            var plaintextLength: UInt64 = 0
            result = datagram.withUnsafeBufferPointer { buffer in
                withNonce(header) { nonce in
                    directionKey.withUnsafeBytes { keyBytes in
                        crypto_aead_chacha20poly1305_ietf_decrypt(
                            plaintext.baseAddress, &plaintextLength, nil, buffer.baseAddress! + DatagramHeader.size,
                            UInt64(buffer.count - DatagramHeader.size), buffer.baseAddress, UInt64(DatagramHeader.size), nonce,
                            keyBytes.baseAddress!.assumingMemoryBound(to: UInt8.self))
                    }
                }
            }
            initialized = result == 0 ? Int(plaintextLength) : 0
        }
        return result == 0 ? plaintext : nil
    }

    private mutating func directionKey(_ key: ChannelKey, _ header: DatagramHeader) throws(ChannelSecurityError) -> SecureBytes {
        try Self.directionKey(key, header, cache: &derived)
    }

    private static func directionKey(
        _ key: ChannelKey, _ header: DatagramHeader, cache: inout [UInt64: SecureBytes]
    ) throws(ChannelSecurityError) -> SecureBytes {
        let id = UInt64(header.epoch) << 32 | UInt64(header.sender.rawValue) << 16 | UInt64(header.receiver.rawValue)
        if let cached = cache[id] { return cached }
        let derivedKey = try key.directionKey(epoch: header.epoch, sender: header.sender.rawValue, receiver: header.receiver.rawValue)
        // Bounded: only headers naming configured members, this cluster and a current or newer
        // epoch get here (SyncChannel checks that first), and the cache is emptied wholesale.
        if cache.count >= 64 { cache.removeAll() }
        cache[id] = derivedKey
        return derivedKey
    }

    /// Calls `body` with the 12-byte nonce of `header` (sender, receiver, packet number), kept
    /// on the stack.
    private static func withNonce<Result>(_ header: DatagramHeader, _ body: (UnsafePointer<UInt8>) -> Result) -> Result {
        withUnsafeTemporaryAllocation(byteCount: 12, alignment: 8) { nonce in
            let base = nonce.baseAddress!
            base.storeBytes(of: header.sender.rawValue.bigEndian, toByteOffset: 0, as: UInt16.self)
            base.storeBytes(of: header.receiver.rawValue.bigEndian, toByteOffset: 2, as: UInt16.self)
            base.storeBytes(of: header.packetNumber.bigEndian, toByteOffset: 4, as: UInt64.self)
            return body(base.assumingMemoryBound(to: UInt8.self))
        }
    }
}

/// Why the synch channel dropped a datagram or refused an operation. A dropped datagram changes
/// no state.
public enum SyncChannelError: Error, Sendable, Hashable {
    /// Shorter than a header (and a tag, when sealed).
    case tooShort(Int)
    /// Longer than the configured maximum datagram size.
    case tooLong(Int)
    /// Not a synch datagram (wrong magic).
    case notSynchProtocol
    /// A protocol version this member does not speak.
    case unsupportedVersion(UInt8)
    /// A header field out of range.
    case invalidHeader(String)
    /// Another cluster's datagram.
    case wrongCluster(UInt32)
    /// A datagram for another member, or from a member not configured as a peer (or from itself).
    case unknownMember(ClusterMemberID)
    /// Authentication, replay or key problems.
    case security(ChannelSecurityError)
    /// The payload's records do not decode.
    case codec(SyncCodecError)
    /// The records to send do not fit the retransmission buffer and its queue: replication must
    /// fall back to a resync.
    case sendQueueFull
}
