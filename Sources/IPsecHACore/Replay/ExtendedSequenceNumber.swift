/// Extended Sequence Number inference (RFC 4303 Appendix A2.2).
public enum ExtendedSequenceNumber {
    /// The full 64-bit sequence number a receiver infers from the low 32 bits on the wire,
    /// given its window top `T` and window size `W` (`W` at most 2^31).
    ///
    /// Case A (`Tl >= W - 1`, the window lies in one 2^32 subspace): `Seql >= Bl` gives
    /// `Seqh = Th`, otherwise `Th + 1`. Case B (`Tl < W - 1`, the window spans two subspaces):
    /// `Seql >= Bl` gives `Seqh = Th - 1`, otherwise `Th`; `Bl = Tl - W + 1 mod 2^32`.
    ///
    /// Two corners the RFC leaves open are fixed here: in case B with `Th = 0`, `Seqh` stays 0
    /// (as DPDK does) instead of underflowing; in case A with `Th = 2^32 - 1`, `Seqh` stays
    /// `Th`, since no sender can go past 2^64 - 1 (the number then lands below the window).
    @inlinable
    public static func infer(wire seql: UInt32, top: UInt64, windowSize: UInt32) -> UInt64 {
        let tl = UInt32(truncatingIfNeeded: top)
        let th = UInt32(truncatingIfNeeded: top &>> 32)
        let bl = tl &- windowSize &+ 1
        let seqh: UInt32
        if tl >= windowSize &- 1 {
            seqh = seql >= bl || th == .max ? th : th &+ 1
        } else {
            seqh = seql >= bl ? (th == 0 ? 0 : th &- 1) : th
        }
        return UInt64(seqh) &<< 32 | UInt64(seql)
    }
}
