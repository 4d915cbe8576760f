/// Backward-shift deletion in a linear-probing table (no tombstones): after emptying `hole`,
/// the entry at `next` (whose home bucket is `home`) moves into the hole when its home lies
/// cyclically at or before the hole, so that no probe sequence passing the hole is broken.
/// The SPI index and the SPD cache both delete this way.
@inline(__always)
func backwardShiftFills(hole: Int, next: Int, home: Int) -> Bool {
    (next > hole && (home <= hole || home > next)) || (next < hole && home <= hole && home > next)
}
