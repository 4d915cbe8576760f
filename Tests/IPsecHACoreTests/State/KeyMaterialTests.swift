import Glibc
import IPsecHACore
import Synchronization
import Testing

/// What the counting allocator below handed out and took back; C function pointers cannot
/// capture, so the tally is a global.
private let guardedLive = Atomic<Int>(0)
private let countingAllocator = GuardedAllocator(
    allocate: { count in
        guardedLive.add(1, ordering: .relaxed)
        return malloc(count)
    },
    release: { pointer in
        guardedLive.subtract(1, ordering: .relaxed)
        free(pointer)
    })
private let exhaustedAllocator = GuardedAllocator(allocate: { _ in nil }, release: { free($0) })

@Suite("Key material: views and packed IKE keys")
struct KeyMaterialTests {
    func key(_ byte: UInt8, _ count: Int) -> KeyMaterial { KeyMaterial(copying: (0..<count).map { byte &+ UInt8($0) }) }

    func bytes(_ key: KeyMaterial) -> [UInt8] { key.withUnsafeBytes { Array($0) } }

    @Test func slicesAreTheirBytesAndCompareByThem() {
        let whole = key(10, 64)
        let slice = whole.extracting(16..<48)
        #expect(slice.count == 32)
        #expect(bytes(slice) == Array(bytes(whole)[16..<48]))
        #expect(slice == key(26, 32))
        #expect(slice != key(26, 31) && slice != key(27, 32))
        #expect(slice.extracting(8..<12) == key(34, 4), "a slice of a slice")
        #expect(whole.extracting(60..<100).count == 4 && whole.extracting(70..<80).count == 0, "clamped")
        #expect("\(slice)" == "KeyMaterial(32 bytes, redacted)")
        // A shared slice holds the same bytes as a copied one.
        let shared = whole.sharingSlice(16..<48)
        #expect(shared == slice && bytes(shared) == bytes(slice))
        #expect(shared.sharingSlice(8..<12) == key(34, 4) && whole.sharingSlice(60..<100).count == 4)
    }

    @Test func guardedKeysLiveInTheAllocatorsMemoryUntilTheLastViewGoes() throws {
        let before = guardedLive.load(ordering: .relaxed)
        do {
            let guarded = try KeyMaterial.guarded(count: 32, allocator: countingAllocator) { bytes in
                for index in bytes.indices { bytes[index] = 10 &+ UInt8(index) }
            }
            #expect(guardedLive.load(ordering: .relaxed) == before + 1)
            #expect(guarded == key(10, 32) && "\(guarded)" == "KeyMaterial(32 bytes, redacted)")
            let view = guarded.sharingSlice(4..<8)
            _ = consume guarded
            #expect(view == key(14, 4), "a view keeps the guarded memory")
            #expect(guardedLive.load(ordering: .relaxed) == before + 1)
        }
        #expect(guardedLive.load(ordering: .relaxed) == before, "released once no value shares it")
        #expect(throws: GuardedAllocationError(count: 32)) {
            try KeyMaterial.guarded(count: 32, allocator: exhaustedAllocator) { _ in Issue.record("written without memory") }
        }
    }

    @Test func packedIKEKeysAreTheKeysTheyWereMadeOf() throws {
        let parts = [key(1, 32), key(2, 0), key(3, 32), key(4, 36), key(5, 36), key(6, 32), key(7, 32)]
        let keys = IKEKeys(d: parts[0], ai: parts[1], ar: parts[2], ei: parts[3], er: parts[4], pi: parts[5], pr: parts[6])
        #expect([keys.d, keys.ai, keys.ar, keys.ei, keys.er, keys.pi, keys.pr] == parts)

        let material = KeyMaterial(copying: parts.flatMap(bytes))
        let packed = try IKEKeys(packed: material, lengths: parts.map(\.count))
        #expect(packed == keys)

        var changed = packed
        changed.ei = key(9, 16)
        #expect(changed.ei == key(9, 16) && changed.er == parts[4] && changed.d == parts[0])
        #expect(changed != packed && packed.ei == parts[3], "a copy keeps its keys")

        #expect(throws: IKESAError.invalidKeyLayout) { try IKEKeys(packed: material, lengths: [32, 0, 32, 36, 36, 32]) }
        #expect(throws: IKESAError.invalidKeyLayout) { try IKEKeys(packed: material, lengths: [32, 0, 32, 36, 36, 32, 33]) }
        #expect(throws: IKESAError.invalidKeyLayout) { try IKEKeys(packed: material, lengths: [33, -1, 32, 36, 36, 32, 32]) }

        // The same bytes split elsewhere are other keys.
        let shifted = try IKEKeys(packed: material, lengths: [31, 1, 32, 36, 36, 32, 32])
        #expect(shifted != packed && shifted.d.count == 31 && shifted.ai.count == 1)
        // Keys packed in a view of a larger allocation (KEYMAT after other keys) read from
        // the view's start.
        let keymat = KeyMaterial(copying: bytes(key(8, 10)) + parts.flatMap(bytes))
        let inView = try IKEKeys(packed: keymat.sharingSlice(10..<keymat.count), lengths: parts.map(\.count))
        #expect(inView == keys && [inView.d, inView.ai, inView.ar, inView.ei, inView.er, inView.pi, inView.pr] == parts)
    }
}
