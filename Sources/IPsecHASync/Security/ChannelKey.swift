internal import CSodium

/// The cluster's synch-channel key: 32 secret bytes every member shares (distributed by the
/// operator, like a VRRP or conntrackd secret), from which each direction of each member pair
/// gets its own key per epoch (`crypto_kdf_derive_from_key`, context "IKEHASYN"). Held in
/// `sodium_malloc` memory; printed as its length only.
public struct ChannelKey: Sendable, CustomStringConvertible {
    /// The length of a cluster key: 32 bytes.
    public static let byteCount = 32

    let secret: SecureBytes

    /// A cluster key from 32 bytes. Throws when the length is wrong.
    public init(bytes: some Collection<UInt8>) throws(ChannelSecurityError) {
        guard bytes.count == Self.byteCount else { throw .invalidKeyLength(bytes.count) }
        let array = Array(bytes)
        do {
            secret = try SecureBytes(count: Self.byteCount) { destination in
                array.withUnsafeBytes { destination.copyMemory(from: $0) }
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
        defer { sodium_memzero(&bytes, bytes.count) }
        return try ChannelKey(bytes: bytes)
    }

    /// The key that seals datagrams from `sender` to `receiver` in `epoch`.
    func directionKey(epoch: UInt32, sender: UInt16, receiver: UInt16) throws(ChannelSecurityError) -> SecureBytes {
        let subkeyID = UInt64(epoch) << 32 | UInt64(sender) << 16 | UInt64(receiver)
        let context: [CChar] = Array("IKEHASYN".utf8CString.prefix(8))
        var failed = false
        let key: SecureBytes
        do {
            key = try SecureBytes(count: Int(crypto_aead_chacha20poly1305_ietf_keybytes())) { destination in
                secret.withUnsafeBytes { master in
                    failed =
                        crypto_kdf_derive_from_key(
                            destination.baseAddress!.assumingMemoryBound(to: UInt8.self), destination.count, subkeyID,
                            context, master.baseAddress!.assumingMemoryBound(to: UInt8.self)) != 0
                }
            }
        } catch {
            throw .sodium(error)
        }
        if failed { throw .keyDerivationFailed }
        return key
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
    /// `crypto_kdf_derive_from_key` failed.
    case keyDerivationFailed
    /// The datagram's tag did not verify: forged, corrupted, or sealed under another key.
    case authenticationFailed
    /// The datagram was received before (same sender, epoch and packet number), or is older
    /// than the replay window.
    case replayed(UInt64)
    /// The channel has no key and insecure mode was not chosen.
    case noKey
}
