extension Collection where Element == UInt8 {
    /// The Internet checksum (RFC 1071) of these bytes: the ones' complement of the ones'
    /// complement sum of their 16-bit big-endian words, an odd last byte padded with zero. A
    /// header that carries its own checksum sums to 0 when it is intact.
    public var internetChecksum: UInt16 {
        var sum: UInt32 = 0
        var high: UInt8?
        for byte in self {
            if let first = high {
                sum += UInt32(first) << 8 | UInt32(byte)
                high = nil
            } else {
                high = byte
            }
        }
        if let last = high { sum += UInt32(last) << 8 }
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
        return ~UInt16(sum)
    }
}
