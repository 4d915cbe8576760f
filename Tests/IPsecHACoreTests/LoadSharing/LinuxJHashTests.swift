import IPsecHACore
import Testing

/// `LinuxJHash` and `SegmentHash.nftablesJHash` against the kernel: the expected segments were
/// read from nftables on Linux 6.18 (`meta mark set jhash ip saddr mod 16 seed 0x5eed1234`, one
/// ping from each source address in a network namespace, the mark read from per-mark rule
/// counters; the same with `ip6 saddr`). IPv6's 16 bytes take jhash's 12-byte loop as well as
/// its tail, IPv4's 4 bytes the tail alone.
@Suite("Load sharing: the kernel's jhash, as nftables computes it")
struct LinuxJHashTests {
    static let seed: UInt64 = 0x5eed_1234

    @Test(arguments: [
        ("10.50.7.14", 8), ("10.50.14.27", 8), ("10.50.21.40", 1), ("10.50.28.53", 3), ("10.50.35.66", 4), ("10.50.42.79", 15),
        ("10.50.56.105", 0), ("10.50.70.131", 6), ("10.50.77.144", 13), ("10.50.84.157", 10), ("10.50.105.196", 14),
        ("10.50.112.209", 11), ("10.50.119.222", 5), ("10.50.154.37", 2), ("10.50.175.76", 9), ("10.50.196.115", 12),
        ("fd00:25:0:5::38f", 4), ("fd00:4a:0:a::71e", 1), ("fd00:6f:0:f::aad", 10), ("fd00:94:0:14::e3c", 0), ("fd00:b9:0:19::11cb", 7),
    ])
    func peerAddressesLandInTheSegmentNftablesComputes(address: String, segment: UInt16) throws {
        let segments = try ClusterSegments(count: 16, key: .peerAddress, seed: Self.seed, hash: .nftablesJHash)
        #expect(segments.segment(peer: try IPAddress(address), initiatorSPI: 1) == Segment(rawValue: segment))
    }

    @Test func theSeedsHighBitsAndTheInitiatorSPIsByteOrderAreWhatTheKernelSees() throws {
        let low = try ClusterSegments(count: 64, key: .initiatorSPI, seed: Self.seed, hash: .nftablesJHash)
        let high = try ClusterSegments(count: 64, key: .initiatorSPI, seed: 0xffff_0000_0000_0000 | Self.seed, hash: .nftablesJHash)
        let spi: UInt64 = 0x0102_0304_0506_0708
        let expected = LinuxJHash.scale(LinuxJHash.hash([1, 2, 3, 4, 5, 6, 7, 8], seed: 0x5eed_1234), to: 64)
        #expect(low.segment(peer: IPAddress(ipv4: 1), initiatorSPI: spi) == Segment(rawValue: UInt16(expected)))
        #expect(high.segment(peer: IPAddress(ipv4: 1), initiatorSPI: spi) == low.segment(peer: IPAddress(ipv4: 1), initiatorSPI: spi))
    }

    @Test func scalingMultipliesAndEveryLengthHashes() {
        #expect(LinuxJHash.scale(0xffff_ffff, to: 16) == 15)
        #expect(LinuxJHash.scale(0x1000_0000, to: 16) == 1)
        #expect(LinuxJHash.scale(0, to: 16) == 0)
        // Every length from 0 to 40 bytes hashes, and a changed byte changes the hash.
        for length in 0...40 {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            let hash = LinuxJHash.hash(bytes, seed: 7)
            if length > 0 {
                var changed = bytes
                changed[length - 1] ^= 1
                #expect(LinuxJHash.hash(changed, seed: 7) != hash)
            }
        }
        #expect(LinuxJHash.hash([UInt8](), seed: 7) == 0xdead_beef &+ 7)
    }
}
