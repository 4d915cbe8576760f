/// SplitMix64 (Steele, Lea and Flood, 2014): a tiny, fast, seedable generator.
///
/// The deterministic random source of this package's simulations, tests and benchmarks: the
/// same seed gives the same sequence on every machine. Not for keys or SPIs; those come from
/// the system's secure generator (`SodiumRandomNumberGenerator` in `IPsecHASync`).
public struct SplitMix64: RandomNumberGenerator, Sendable, Hashable {
    /// The generator's whole state.
    @inlinable public var state: UInt64 { storedState }
    @usableFromInline var storedState: UInt64

    /// A generator whose first output is derived from `seed`.
    public init(seed: UInt64) { storedState = seed }

    /// The next 64 random bits.
    @inlinable
    public mutating func next() -> UInt64 {
        storedState &+= 0x9E37_79B9_7F4A_7C15
        var z = storedState
        z = (z ^ (z &>> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z &>> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z &>> 31)
    }
}
