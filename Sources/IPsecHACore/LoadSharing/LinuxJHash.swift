/// The Linux kernel's `jhash` (Bob Jenkins' lookup3, `include/linux/jhash.h`) and the scaling
/// nftables' `jhash ... mod N` applies to it (`reciprocal_scale`): what the kernel computes for
/// a rule such as `jhash ip saddr mod 64 seed 0x5eed`, so that a member can tell which segment
/// nftables steers a packet to without asking the kernel. Not cryptographic: with a secret seed
/// it only keeps a peer from choosing addresses that crowd one segment.
public enum LinuxJHash {
    /// The kernel's `JHASH_INITVAL`.
    static let initialValue: UInt32 = 0xdead_beef

    /// `jhash(key, length, seed)` over `bytes` as they lie in memory (for a packet field:
    /// network order). Words are read little-endian, as the kernel reads them on x86 and arm64.
    public static func hash(_ bytes: some Collection<UInt8>, seed: UInt32) -> UInt32 {
        var key = ArraySlice(bytes)
        var a = initialValue &+ UInt32(truncatingIfNeeded: key.count) &+ seed
        var b = a
        var c = a
        func word(_ slice: ArraySlice<UInt8>, _ offset: Int) -> UInt32 {
            let base = slice.startIndex + offset
            return UInt32(slice[base]) | UInt32(slice[base + 1]) << 8 | UInt32(slice[base + 2]) << 16 | UInt32(slice[base + 3]) << 24
        }
        while key.count > 12 {
            a &+= word(key, 0)
            b &+= word(key, 4)
            c &+= word(key, 8)
            mix(&a, &b, &c)
            key = key.dropFirst(12)
        }
        guard !key.isEmpty else { return c }
        // The tail, up to 12 bytes, added byte by byte into a, b and c, as the kernel's switch
        // falls through.
        for (index, byte) in key.enumerated() {
            let shifted = UInt32(byte) << UInt32(8 * (index % 4))
            switch index / 4 {
            case 0: a &+= shifted
            case 1: b &+= shifted
            default: c &+= shifted
            }
        }
        final(&a, &b, &c)
        return c
    }

    /// `reciprocal_scale(hash, count)`: the hash scaled to 0..<count by multiplication, as
    /// nftables' `mod` does (not a remainder).
    public static func scale(_ hash: UInt32, to count: UInt32) -> UInt32 {
        UInt32(truncatingIfNeeded: (UInt64(hash) &* UInt64(count)) >> 32)
    }

    private static func rotate(_ value: UInt32, _ count: UInt32) -> UInt32 { value << count | value >> (32 - count) }

    private static func mix(_ a: inout UInt32, _ b: inout UInt32, _ c: inout UInt32) {
        a &-= c; a ^= rotate(c, 4); c &+= b
        b &-= a; b ^= rotate(a, 6); a &+= c
        c &-= b; c ^= rotate(b, 8); b &+= a
        a &-= c; a ^= rotate(c, 16); c &+= b
        b &-= a; b ^= rotate(a, 19); a &+= c
        c &-= b; c ^= rotate(b, 4); b &+= a
    }

    private static func final(_ a: inout UInt32, _ b: inout UInt32, _ c: inout UInt32) {
        c ^= b; c &-= rotate(b, 14)
        a ^= c; a &-= rotate(c, 11)
        b ^= a; b &-= rotate(a, 25)
        c ^= b; c &-= rotate(b, 16)
        a ^= c; a &-= rotate(c, 4)
        b ^= a; b &-= rotate(a, 14)
        c ^= b; c &-= rotate(b, 24)
    }
}
