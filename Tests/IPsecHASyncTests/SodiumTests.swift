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
