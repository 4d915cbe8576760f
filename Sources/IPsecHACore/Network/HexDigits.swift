extension FixedWidthInteger where Self: UnsignedInteger {
    /// The value in lower-case hexadecimal, zero-padded to the type's width (8 digits for a
    /// 32-bit SPI, 16 for an IKE SPI), as strongSwan and tshark print SPIs.
    public var paddedHexDigits: String {
        let digits = String(self, radix: 16)
        return String(repeating: "0", count: MemoryLayout<Self>.size * 2 - digits.count) + digits
    }
}
