/// Extended Sequence Number inference (RFC 4303 Appendix A2.2).
public enum ExtendedSequenceNumber {
    /// The full 64-bit sequence number a receiver infers from the low 32 bits on the wire,
    /// given its window top `T` and window size `W` (`W` at most 2^31).
    ///
    /// RFC 4303 states it in two cases. Case A (`Tl >= W - 1`, the window lies in one 2^32
    /// subspace): `Seql >= Bl` gives `Seqh = Th`, otherwise `Th + 1`. Case B (`Tl < W - 1`, the
    /// window spans two subspaces): `Seql >= Bl` gives `Seqh = Th - 1`, otherwise `Th`;
    /// `Bl = Tl - W + 1 mod 2^32`. Both cases say the same thing: the inferred number is the one
    /// with these low 32 bits among the 2^32 numbers that start at the window's bottom
    /// `B = T - W + 1`, which is how it is computed here, without branching on the case.
    ///
    /// Two corners the RFC leaves open are fixed: while the top is below `W - 1` (case B with
    /// `Th = 0`), `Seqh` stays 0 (as DPDK does) instead of underflowing; in case A with
    /// `Th = 2^32 - 1`, `Seqh` stays `Th`, since no sender can go past 2^64 - 1 (the number then
    /// lands below the window).
    @inlinable @inline(__always)
    public static func infer(wire seql: UInt32, top: UInt64, windowSize: UInt32) -> UInt64 {
        guard top >= UInt64(windowSize) &- 1 else { return UInt64(seql) }
        let bottom = top &- UInt64(windowSize) &+ 1
        let (sequenceNumber, overflow) = bottom.addingReportingOverflow(
            UInt64(seql &- UInt32(truncatingIfNeeded: bottom)))
        return overflow ? (top & 0xFFFF_FFFF_0000_0000) | UInt64(seql) : sequenceNumber
    }
}
