import IPsecHACore
import IPsecHASync
import Testing

@Suite("libsodium")
struct SodiumTests {
    @Test func initialisesAndReportsItsVersion() throws {
        try Sodium.initialize()
        try Sodium.initialize()
        #expect(Sodium.version.split(separator: ".").count == 3)
    }

    @Test func randomNumbersAreNotRepeated() throws {
        var generator = try SodiumRandomNumberGenerator()
        var values = Set<UInt64>()
        for _ in 0..<1_000 { values.insert(generator.next()) }
        // 1000 draws of 64 bits collide with probability about 2^-44.
        #expect(values.count == 1_000)
        var bytes = [UInt8](repeating: 0, count: 64)
        bytes.withUnsafeMutableBytes { generator.fill($0) }
        #expect(bytes.contains { $0 != 0 })
    }
}

@Suite("Steered SPIs from libsodium's randombytes")
struct SodiumSPIAllocationTests {
    @Test func spisFromTheSecureGeneratorKeepTheirLayout() throws {
        var generator = try SodiumRandomNumberGenerator()
        let layout = try SPILayout(segments: ClusterSegments(count: 256, seed: 1), memberBits: 4)
        var drawn: Set<UInt32> = []
        for index in 0..<512 {
            let segment = Segment(rawValue: UInt16(index % 256))
            let member = ClusterMemberID(rawValue: UInt16(index % 16))
            let spi = try layout.allocate(segment: segment, member: member, using: &generator) { drawn.contains($0) }
            #expect(layout.steering(ofSPI: spi) == .segment(segment) && layout.allocatingMember(ofSPI: spi) == member)
            drawn.insert(spi)
        }
        // 20 random bits each: the low bits are not constant.
        #expect(Set(drawn.map { $0 & 0xFFFFF }).count > 500)
    }
}
