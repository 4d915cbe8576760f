internal import IPsecHACore


/// The cluster's synch-channel key: 32 secret bytes every member shares (distributed by the
/// operator, like a VRRP or conntrackd secret), from which each direction between two running
/// members gets its own key: keyed BLAKE2b over the cluster ID, both member IDs and both
/// members' ``ChannelIncarnation``s. Held in `sodium_malloc` memory; printed as its length only.
public struct ChannelKey: Sendable, CustomStringConvertible {
    /// The length of a cluster key: 32 bytes.
    public static let byteCount = 32

    let secret: KeyMaterial

    /// A cluster key from 32 bytes. Throws when the length is wrong.
    public init(bytes: some Collection<UInt8>) throws(ChannelSecurityError) {
        guard bytes.count == Self.byteCount else { throw .invalidKeyLength(bytes.count) }
        do {
            // Byte by byte into guarded memory: no intermediate copy is left behind unwiped.
            secret = try SodiumPrimitives.guardedKey(count: Self.byteCount) { destination in
                for (index, byte) in bytes.enumerated() { destination[index] = byte }
            }
        } catch {
            throw .sodium(error)
        }
    }

    /// A new random cluster key from libsodium's generator.
    public static func generate() throws(ChannelSecurityError) -> ChannelKey {
        var bytes = [UInt8](repeating: 0, count: byteCount)
        do {
            var generator = try SodiumRandomNumberGenerator()
            bytes.withUnsafeMutableBytes { generator.fill($0) }
        } catch {
            throw .sodium(error)
        }
        defer { bytes.withUnsafeMutableBytes { SodiumPrimitives.wipe($0) } }
        return try ChannelKey(bytes: bytes)
    }

    /// The key that seals datagrams in the direction `context` names, in `sodium_malloc` memory.
    func directionKey(_ context: DirectionKeyContext) throws(ChannelSecurityError) -> KeyMaterial {
        var failed = false
        let key: KeyMaterial
        do {
            key = try SodiumPrimitives.guardedKey(count: Self.byteCount) { destination in
                failed = !derive(context, into: destination.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        } catch {
            throw .sodium(error)
        }
        if failed { throw .keyDerivationFailed }
        return key
    }

    /// Calls `body` with the direction key of `context` in a stack buffer that is zeroed after:
    /// for trial opens of handshakes, which an attacker can send with any incarnation, so that
    /// no guarded allocation is made for a key that may never authenticate anything.
    func withDirectionKey<Result>(
        _ context: DirectionKeyContext, _ body: (UnsafePointer<UInt8>) -> Result
    ) throws(ChannelSecurityError) -> Result {
        let result: Result? = withUnsafeTemporaryAllocation(byteCount: Self.byteCount, alignment: 16) { buffer in
            let base = buffer.baseAddress!.assumingMemoryBound(to: UInt8.self)
            defer { SodiumPrimitives.wipe(buffer) }
            guard derive(context, into: base) else { return nil }
            return body(base)
        }
        guard let result else { throw .keyDerivationFailed }
        return result
    }

    /// BLAKE2b-256 keyed with the cluster key over the label and the context (54 bytes, laid
    /// out in `Docs/SyncProtocol.md`).
    private func derive(_ context: DirectionKeyContext, into destination: UnsafeMutablePointer<UInt8>) -> Bool {
        var message = ByteWriter(capacity: DirectionKeyContext.encodedSize)
        context.write(into: &message)
        return message.withBytes { input in
            secret.withUnsafeBytes { master in
                SodiumPrimitives.blake2b(into: UnsafeMutableRawBufferPointer(start: destination, count: Self.byteCount), input: input, key: master)
            }
        }
    }

    public var description: String { "ChannelKey(32 bytes, redacted)" }
}

/// Errors of the synch channel's security layer. A datagram that fails any check is dropped
/// without touching any state.
public enum ChannelSecurityError: Error, Sendable, Hashable {
    /// A cluster key must be 32 bytes.
    case invalidKeyLength(Int)
    /// libsodium failed.
    case sodium(SodiumError)
    /// The direction key could not be derived (libsodium's `crypto_generichash` failed).
    case keyDerivationFailed
    /// The datagram's tag did not verify: forged, corrupted, or sealed under another key.
    case authenticationFailed
    /// The datagram was received before (same sender incarnation and packet number), or is
    /// older than the replay window.
    case replayed(UInt64)
    /// Data from an incarnation of the sender that no handshake established (an earlier run of
    /// the sender, data sealed for an earlier run of this member, or a forgery): dropped unopened.
    case unknownIncarnation
    /// The channel has no key and insecure mode was not chosen.
    case noKey
    /// The datagram was sealed with another cipher than this member's
    /// (``SyncChannelConfiguration/cipher``): the cluster's members are configured apart.
    case cipherMismatch(SyncChannelCipher)
    /// The configured cipher does not run on this CPU (``SyncChannelCipher/isAvailable``).
    case cipherUnavailable(SyncChannelCipher)
}

/// What a direction key is derived from: the cluster, the two members, and the incarnations of
/// both (the receiver's is all zero for a handshake key, which the sender
/// uses before it knows the receiver's).
struct DirectionKeyContext: Hashable {
    /// One label per cipher, so that no direction key serves two ciphers.
    static let label: [UInt8] = Array("IKEHA-SYNCH-v2".utf8)
    static let aes256GCMLabel: [UInt8] = Array("IKEHA-SYNCG-v2".utf8)
    static let encodedSize = 14 + 4 + 2 + 2 + 16 + 16

    var clusterID: UInt32
    var sender: UInt16
    var receiver: UInt16
    var senderIncarnation: ChannelIncarnation
    var receiverIncarnation: ChannelIncarnation
    var cipher: SyncChannelCipher = .chacha20Poly1305

    func write(into writer: inout ByteWriter) {
        writer.write(bytes: cipher == .aes256GCM ? Self.aes256GCMLabel : Self.label)
        writer.write(clusterID)
        writer.write(sender)
        writer.write(receiver)
        writer.write(senderIncarnation.high)
        writer.write(senderIncarnation.low)
        writer.write(receiverIncarnation.high)
        writer.write(receiverIncarnation.low)
    }
}
