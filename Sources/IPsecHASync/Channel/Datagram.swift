public import IPsecHACore

/// The fixed header of every synch datagram (48 bytes, big-endian), authenticated as the AEAD's
/// additional data when the datagram is sealed.
///
/// ```
///  0  magic 0x49 0x48 ("IH")    2  version (2)    3  flags
///  4  cluster ID (4)            8  sender member (2)    10  receiver member (2)
/// 12  sender's epoch (4)       16  sender's incarnation (16)
/// 32  packet number (8): every datagram, strictly increasing per (sender incarnation, receiver)
/// 40  reliable sequence (8): 0 when the datagram carries no reliable records
/// ```
public struct DatagramHeader: Sendable, Hashable {
    /// Header length in bytes.
    public static let size = 48
    /// Protocol version this package speaks.
    public static let currentVersion: UInt8 = 2
    static let magic: (UInt8, UInt8) = (0x49, 0x48)

    /// Flag: the payload is sealed (ChaCha20-Poly1305-IETF, or AES-256-GCM with
    /// ``aes256GCMFlag``); clear only in insecure test mode.
    public static let sealedFlag: UInt8 = 0x01
    /// Flag: sealed with AES-256-GCM (``SyncChannelCipher/aes256GCM``), not ChaCha20-Poly1305.
    public static let aes256GCMFlag: UInt8 = 0x08
    /// Flag: the reliable stream restarts at this datagram's sequence number (after the sender
    /// could no longer retransmit something; a bulk resync follows).
    public static let streamResetFlag: UInt8 = 0x02
    /// Flag: a handshake, sealed under the sender's handshake key (bound to the sender's
    /// incarnation only); its payload is a ``ChannelHandshake``, not records.
    public static let handshakeFlag: UInt8 = 0x04

    /// Protocol version.
    public var version: UInt8 = currentVersion
    /// Flag bits (``sealedFlag``, ``streamResetFlag``, ``handshakeFlag``, ``aes256GCMFlag``).
    public var flags: UInt8
    /// The cluster this datagram belongs to; other clusters' datagrams are dropped.
    public var clusterID: UInt32
    /// The member that sent it.
    public var sender: ClusterMemberID
    /// The member it is for.
    public var receiver: ClusterMemberID
    /// The sender's epoch (its role epoch, ``ClusterRole/epoch``). Carried for operators and
    /// captures; the channel's keys, nonces and replay checks do not depend on it.
    public var epoch: UInt32
    /// The run of the sender's channel that sealed the datagram.
    public var senderIncarnation: ChannelIncarnation
    /// Unique per (sender incarnation, receiver): part of the nonce, and what the replay window
    /// checks.
    public var packetNumber: UInt64
    /// The reliable stream position of the records carried, or 0.
    public var reliableSequence: UInt64

    /// A header from its parts.
    public init(
        flags: UInt8, clusterID: UInt32, sender: ClusterMemberID, receiver: ClusterMemberID, epoch: UInt32,
        senderIncarnation: ChannelIncarnation, packetNumber: UInt64, reliableSequence: UInt64
    ) {
        self.flags = flags
        self.clusterID = clusterID
        self.sender = sender
        self.receiver = receiver
        self.epoch = epoch
        self.senderIncarnation = senderIncarnation
        self.packetNumber = packetNumber
        self.reliableSequence = reliableSequence
    }

    /// Whether this is a handshake datagram.
    public var isHandshake: Bool { flags & Self.handshakeFlag != 0 }

    func write(into writer: inout ByteWriter) {
        writer.withReservedCursor(Self.size) { write(into: &$0) }
    }

    /// Exactly ``size`` bytes: the sealer writes the header straight into the datagram.
    func write(into cursor: inout WriteCursor) {
        cursor.write(Self.magic.0)
        cursor.write(Self.magic.1)
        cursor.write(version)
        cursor.write(flags)
        cursor.write(clusterID)
        cursor.write(sender.rawValue)
        cursor.write(receiver.rawValue)
        cursor.write(epoch)
        cursor.write(senderIncarnation.high)
        cursor.write(senderIncarnation.low)
        cursor.write(packetNumber)
        cursor.write(reliableSequence)
    }

    static func read(_ bytes: ArraySlice<UInt8>) throws(SyncChannelError) -> DatagramHeader {
        let fields: (magic: (UInt8, UInt8), version: UInt8, header: DatagramHeader?)
        do {
            fields = try ByteReader.reading(bytes) { (reader: inout ByteReader) throws(SyncCodecError) in
                let magic = (try reader.readUInt8(), try reader.readUInt8())
                let version = try reader.readUInt8()
                let flags = try reader.readUInt8()
                let clusterID = try reader.readUInt32()
                let sender = ClusterMemberID(rawValue: try reader.readUInt16())
                let receiver = ClusterMemberID(rawValue: try reader.readUInt16())
                let epoch = try reader.readUInt32()
                let incarnation = ChannelIncarnation(high: try reader.readUInt64(), low: try reader.readUInt64())
                let packetNumber = try reader.readUInt64()
                let reliableSequence = try reader.readUInt64()
                return (
                    magic, version,
                    incarnation.map {
                        DatagramHeader(
                            flags: flags, clusterID: clusterID, sender: sender, receiver: receiver, epoch: epoch,
                            senderIncarnation: $0, packetNumber: packetNumber, reliableSequence: reliableSequence)
                    }
                )
            }
        } catch {
            throw .tooShort(bytes.count)
        }
        guard fields.magic == magic else { throw .notSynchProtocol }
        guard fields.version == currentVersion else { throw .unsupportedVersion(fields.version) }
        guard var header = fields.header else { throw .invalidHeader("incarnation 0") }
        header.version = fields.version
        guard header.flags & ~(sealedFlag | streamResetFlag | handshakeFlag | aes256GCMFlag) == 0 else { throw .invalidHeader("flags \(header.flags)") }
        guard header.flags & aes256GCMFlag == 0 || header.flags & sealedFlag != 0 else { throw .invalidHeader("a cipher named for a datagram in clear") }
        guard header.packetNumber > 0 else { throw .invalidHeader("packet number 0") }
        if header.isHandshake {
            guard header.reliableSequence == 0, header.flags & streamResetFlag == 0 else {
                throw .invalidHeader("handshake with a reliable sequence or a stream reset")
            }
        }
        return header
    }
}

/// The payload of a handshake datagram (32 bytes): the sender's challenge to the receiver, and
/// the receiver's incarnation and challenge as the sender last heard them (zero when none).
///
/// A member takes a peer's incarnation as current only from a handshake that echoes the
/// member's own incarnation and its current challenge to that peer; it then moves to a new
/// challenge. A recorded handshake therefore never installs an incarnation again, and a
/// restarted member, with a new incarnation, answers nothing recorded before it started.
public struct ChannelHandshake: Sendable, Hashable {
    /// Encoded length.
    public static let size = 32
    /// The sender's current challenge to the receiver.
    public var challenge: UInt64
    /// The receiver's incarnation as the sender last heard it, if any.
    public var echoedIncarnation: ChannelIncarnation?
    /// The receiver's challenge the sender last heard (meaningful with an echoed incarnation).
    public var echoedChallenge: UInt64

    /// A handshake from its parts.
    public init(challenge: UInt64, echoedIncarnation: ChannelIncarnation?, echoedChallenge: UInt64) {
        self.challenge = challenge
        self.echoedIncarnation = echoedIncarnation
        self.echoedChallenge = echoedChallenge
    }

    var encoded: [UInt8] {
        var writer = ByteWriter(capacity: Self.size)
        writer.write(challenge)
        let echoed = echoedIncarnation ?? .none
        writer.write(echoed.high)
        writer.write(echoed.low)
        writer.write(echoedChallenge)
        return writer.bytes
    }

    static func decode(_ bytes: [UInt8]) throws(SyncChannelError) -> ChannelHandshake {
        guard bytes.count == size else { throw .codec(bytes.count < size ? .truncated : .trailingBytes(bytes.count - size)) }
        do {
            return try ByteReader.reading(bytes[...]) { (reader: inout ByteReader) throws(SyncCodecError) in
                ChannelHandshake(
                    challenge: try reader.readUInt64(),
                    echoedIncarnation: ChannelIncarnation(high: try reader.readUInt64(), low: try reader.readUInt64()),
                    echoedChallenge: try reader.readUInt64())
            }
        } catch {
            throw .codec(error)
        }
    }
}

/// Seals and opens datagrams: the channel's cipher (ChaCha20-Poly1305-IETF or AES-256-GCM)
/// under the key of the direction (cluster, sender, receiver, both ends' incarnations, and the
/// cipher; the receiver's incarnation left out of handshake keys), the nonce built from the
/// sender, the receiver and the packet number, and the whole header as additional data.
/// Without a key (insecure mode) payloads travel in clear, marked as such, and a sealing
/// receiver refuses them.
struct DatagramSealer {
    static let tagSize = 16
    let cipher: SyncChannelCipher
    private(set) var key: ChannelKey?
    /// The cluster key before the last rotation, until it is retired: datagrams of peers that
    /// have not rotated yet still open with it.
    private(set) var previousKey: ChannelKey?
    /// Direction keys of data (and of this member's own handshakes): only for incarnations a
    /// handshake established, so at most a few per peer. Kept apart for sealing and opening,
    /// so that each side's last key stays in front (``DirectionKeyCache``).
    private var sealingKeys = DirectionKeyCache()
    private var openingKeys = DirectionKeyCache()
    private var previousOpeningKeys = DirectionKeyCache()
    /// The last datagram's plaintext, handed out as its payload and written over for the next
    /// datagram once the channel let go of it: a fresh array per datagram was a malloc and a
    /// free of about 1.4 KB, some 950 instructions each time.
    private var plaintext: [UInt8] = []

    init(key: ChannelKey?, cipher: SyncChannelCipher = .chacha20Poly1305) {
        self.key = key
        self.cipher = cipher
    }

    /// Seals with `newKey` from now on; keeps opening with the old key until
    /// ``retirePreviousKey()``.
    mutating func rotate(to newKey: ChannelKey) {
        previousKey = key
        previousOpeningKeys = openingKeys
        key = newKey
        sealingKeys = DirectionKeyCache()
        openingKeys = DirectionKeyCache()
    }

    /// Forgets the previous cluster key and its direction keys (their guarded memory is wiped
    /// as it is freed).
    mutating func retirePreviousKey() {
        previousKey = nil
        previousOpeningKeys = DirectionKeyCache()
    }

    func context(_ header: DatagramHeader, receiverIncarnation: ChannelIncarnation) -> DirectionKeyContext {
        DirectionKeyContext(
            clusterID: header.clusterID, sender: header.sender.rawValue, receiver: header.receiver.rawValue,
            senderIncarnation: header.senderIncarnation, receiverIncarnation: header.isHandshake ? .none : receiverIncarnation, cipher: cipher)
    }

    /// Seals `payload` under `header` for a receiver whose incarnation is `receiverIncarnation`
    /// (ignored for a handshake).
    mutating func seal(
        _ header: DatagramHeader, payload: [UInt8], receiverIncarnation: ChannelIncarnation
    ) throws(ChannelSecurityError) -> [UInt8] {
        var header = header
        guard let key else {
            var writer = ByteWriter(capacity: DatagramHeader.size + payload.count)
            header.flags &= ~DatagramHeader.sealedFlag
            header.write(into: &writer)
            writer.write(bytes: payload)
            return writer.bytes
        }
        header.flags |= DatagramHeader.sealedFlag
        if cipher == .aes256GCM { header.flags |= DatagramHeader.aes256GCMFlag } else { header.flags &= ~DatagramHeader.aes256GCMFlag }
        let directionKey = try sealingKeys.key(context(header, receiverIncarnation: receiverIncarnation), under: key)
        let cipher = self.cipher
        let total = DatagramHeader.size + payload.count + Self.tagSize
        return [UInt8](unsafeUninitializedCapacity: total) { buffer, initialized in
            let base = buffer.baseAddress!
            // Straight into the datagram: a writer of its own was an allocation per datagram.
            var cursor = WriteCursor(pointer: UnsafeMutableRawPointer(base))
            header.write(into: &cursor)
            Self.withNonce(header) { nonce in
                directionKey.withUnsafeBytes { keyBytes in
                    payload.withUnsafeBytes { plaintext in
                        SodiumPrimitives.seal(
                            into: base + DatagramHeader.size, plaintext: plaintext,
                            aad: UnsafeRawBufferPointer(start: base, count: DatagramHeader.size), nonce: nonce, key: keyBytes.baseAddress!,
                            cipher: cipher)
                    }
                }
            }
            initialized = total
        }
    }

    /// The plaintext payload of a datagram whose header was read, after authentication when
    /// sealed, and whether it opened only under the previous cluster key. `receiverIncarnation`
    /// is this member's. Handshake keys are derived on the stack for the trial and never kept:
    /// anyone can claim any incarnation in a handshake.
    mutating func open(
        _ datagram: [UInt8], _ header: DatagramHeader, receiverIncarnation: ChannelIncarnation
    ) throws(SyncChannelError) -> (payload: [UInt8], underPreviousKey: Bool) {
        let sealed = header.flags & DatagramHeader.sealedFlag != 0
        guard let key else {
            guard !sealed else { throw .security(.noKey) }
            return (Array(datagram[DatagramHeader.size...]), false)
        }
        guard sealed else { throw .security(.authenticationFailed) }
        let theirs: SyncChannelCipher = header.flags & DatagramHeader.aes256GCMFlag != 0 ? .aes256GCM : .chacha20Poly1305
        guard theirs == cipher else { throw .security(.cipherMismatch(theirs)) }
        guard datagram.count >= DatagramHeader.size + Self.tagSize else { throw .tooShort(datagram.count) }
        let context = context(header, receiverIncarnation: receiverIncarnation)
        let cipher = self.cipher
        // Out of the stored property while libsodium writes it, so that it stays unique.
        var plaintext: [UInt8] = []
        swap(&plaintext, &self.plaintext)
        defer { swap(&plaintext, &self.plaintext) }
        do throws(ChannelSecurityError) {
            if header.isHandshake {
                if try key.withDirectionKey(context, { Self.decrypt(datagram, header, $0, cipher, into: &plaintext) }) { return (plaintext, false) }
                if let previousKey, try previousKey.withDirectionKey(context, { Self.decrypt(datagram, header, $0, cipher, into: &plaintext) }) {
                    return (plaintext, true)
                }
            } else {
                if try Self.decrypt(datagram, header, openingKeys.key(context, under: key), cipher, into: &plaintext) { return (plaintext, false) }
                if let previousKey,
                    try Self.decrypt(datagram, header, previousOpeningKeys.key(context, under: previousKey), cipher, into: &plaintext)
                {
                    return (plaintext, true)
                }
            }
        } catch {
            throw .security(error)
        }
        throw .security(.authenticationFailed)
    }

    private static func decrypt(
        _ datagram: [UInt8], _ header: DatagramHeader, _ directionKey: KeyMaterial, _ cipher: SyncChannelCipher, into plaintext: inout [UInt8]
    ) -> Bool {
        directionKey.withUnsafeBytes { decrypt(datagram, header, $0.baseAddress!.assumingMemoryBound(to: UInt8.self), cipher, into: &plaintext) }
    }

    /// Whether the tag verifies under `directionKey`; `plaintext` then holds the payload (its
    /// count is the payload's either way). The array is written in place when no one else
    /// holds it, which is the case once the previous payload was decoded and dropped.
    private static func decrypt(
        _ datagram: [UInt8], _ header: DatagramHeader, _ directionKey: UnsafePointer<UInt8>, _ cipher: SyncChannelCipher,
        into plaintext: inout [UInt8]
    ) -> Bool {
        let count = datagram.count - DatagramHeader.size - tagSize
        if plaintext.count > count {
            plaintext.removeLast(plaintext.count - count)
        } else if plaintext.count < count {
            plaintext.append(contentsOf: repeatElement(0, count: count - plaintext.count))
        }
        return plaintext.withUnsafeMutableBytes { output in
            datagram.withUnsafeBytes { buffer in
                withNonce(header) { nonce in
                    SodiumPrimitives.open(
                        into: output.baseAddress, sealed: UnsafeRawBufferPointer(rebasing: buffer[DatagramHeader.size...]),
                        aad: UnsafeRawBufferPointer(rebasing: buffer[..<DatagramHeader.size]), nonce: nonce, key: directionKey, cipher: cipher)
                }
            }
        }
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

/// Direction keys derived from one cluster key, by context. The key used last is compared
/// first: a member seals, and opens, datagram after datagram for the same peer and
/// incarnations, and hashing the context for each cost about 750 instructions a datagram.
struct DirectionKeyCache {
    private var keys: [DirectionKeyContext: KeyMaterial] = [:]
    private var recent: (context: DirectionKeyContext, key: KeyMaterial)?

    /// The direction key of `context` under `clusterKey`, derived at the first use. Give one
    /// cache one cluster key: a rotation starts a new cache.
    mutating func key(_ context: DirectionKeyContext, under clusterKey: ChannelKey) throws(ChannelSecurityError) -> KeyMaterial {
        if let recent, recent.context == context { return recent.key }
        let key: KeyMaterial
        if let cached = keys[context] {
            key = cached
        } else {
            key = try clusterKey.directionKey(context)
            // Bounded: only incarnations a handshake established (SyncChannel checks the
            // header's incarnation before opening data), and the cache is emptied wholesale.
            if keys.count >= 64 { keys.removeAll() }
            keys[context] = key
        }
        recent = (context, key)
        return key
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
