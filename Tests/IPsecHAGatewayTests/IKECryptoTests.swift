import IPsecHACore
import Testing

@testable import IPsecHAGateway

/// Published test vectors for every primitive of the gateway's proposal set.
@Suite struct IKECryptoTests {
    static func bytes(_ hex: String) -> [UInt8] {
        var result: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            result.append(UInt8(hex[index..<next], radix: 16)!)
            index = next
        }
        return result
    }

    static func hex(_ bytes: [UInt8]) -> String {
        bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }

    /// FIPS 180-2 appendix A and the empty string.
    @Test func sha1() {
        #expect(Self.hex(IKECrypto.sha1(Array("abc".utf8))) == "a9993e364706816aba3e25717850c26c9cd0d89d")
        #expect(Self.hex(IKECrypto.sha1([])) == "da39a3ee5e6b4b0d3255bfef95601890afd80709")
        #expect(
            Self.hex(IKECrypto.sha1(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)))
                == "84983e441c3bd26ebaae4aa1f95129e5e54670f1")
    }

    /// RFC 4231 test cases 1 and 6 (a key longer than the block).
    @Test func hmacSHA256() {
        #expect(
            Self.hex(IKECrypto.prf(key: [UInt8](repeating: 0x0B, count: 20), Array("Hi There".utf8)))
                == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        #expect(
            Self.hex(IKECrypto.prf(key: KeyMaterial(copying: [UInt8](repeating: 0xAA, count: 131)), Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8)))
                == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
    }

    /// prf+ is T1 | T2 | ... with Tn = prf(K, Tn-1 | S | n), cut to the length asked for.
    @Test func prfPlus() {
        let key = KeyMaterial(copying: Array(0..<32))
        let seed = Array("seed".utf8)
        let t1 = IKECrypto.prf(key: key, seed, [1])
        let t2 = IKECrypto.prf(key: key, t1, seed, [2])
        let t3 = IKECrypto.prf(key: key, t2, seed, [3])
        let output = IKECrypto.prfPlus(key: key, seed: seed, count: 70).withUnsafeBytes { Array($0) }
        #expect(output == Array((t1 + t2 + t3).prefix(70)))
    }

    /// RFC 7748 section 6.1.
    @Test func x25519() throws {
        let alice = IKECrypto.X25519KeyPair(secret: KeyMaterial(copying: Self.bytes("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")))
        let bob = IKECrypto.X25519KeyPair(secret: KeyMaterial(copying: Self.bytes("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")))
        #expect(Self.hex(alice.publicKey) == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        #expect(Self.hex(bob.publicKey) == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        let shared = try alice.sharedSecret(with: bob.publicKey).withUnsafeBytes { Array($0) }
        #expect(Self.hex(shared) == "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
        #expect(try bob.sharedSecret(with: alice.publicKey).withUnsafeBytes { Array($0) } == shared)
        // A low-order point gives the all-zero secret: refused (RFC 8031 section 2).
        #expect(throws: IKEProtocolError.self) { try alice.sharedSecret(with: [UInt8](repeating: 0, count: 32)) }
        #expect(throws: IKEProtocolError.self) { try alice.sharedSecret(with: [1, 2, 3]) }
    }

    /// RFC 8439 section 2.8.2, with the nonce split as RFC 7634 does: salt 07000000, IV
    /// 4041424344454647.
    @Test func chacha20Poly1305() {
        let key = KeyMaterial(copying: Self.bytes("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f") + Self.bytes("07000000"))
        let plaintext = Array("Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".utf8)
        let aad = Self.bytes("50515253c0c1c2c3c4c5c6c7")
        let sealed = IKECrypto.seal(plaintext, aad: aad, iv: 0x4041_4243_4445_4647, keyAndSalt: key)
        #expect(Self.hex(Array(sealed.prefix(16))) == "d31a8d34648e60db7b86afbc53ef7ec2")
        #expect(Self.hex(Array(sealed.suffix(16))) == "1ae10b594f09e26a7e902ecbd0600691")
        #expect(IKECrypto.open(sealed[...], aad: aad, iv: 0x4041_4243_4445_4647, keyAndSalt: key) == plaintext)
        var tampered = sealed
        tampered[5] ^= 1
        #expect(IKECrypto.open(tampered[...], aad: aad, iv: 0x4041_4243_4445_4647, keyAndSalt: key) == nil)
        #expect(IKECrypto.open(sealed[...], aad: aad + [0], iv: 0x4041_4243_4445_4647, keyAndSalt: key) == nil)
    }
}
