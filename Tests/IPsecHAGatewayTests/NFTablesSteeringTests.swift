import Foundation
import IPsecHACore
import Testing

@testable import IPsecHAGateway

/// `NFTablesSteering` in the kernel: its rules loaded by `nft` in a network namespace made here,
/// packets sent to the cluster address from 48 source addresses in a second one (IKE on 500 and
/// 4500, ESP in UDP and ESP itself with SPIs of every segment and duplicated Child SAs' of this
/// member and another), and what passed the
/// rules recorded by a probe chain behind them. What passes must be exactly what
/// `ClusterSegments` and `SPILayout` say this member serves, before and after an update of the
/// sets. Needs root, `ip`, `nft` (nftables) and python3 (the packet sender); skipped otherwise,
/// saying what is missing. The namespaces are removed at the end.
@Suite(.serialized) struct NFTablesSteeringTests {
    static let cluster = IPAddress(ipv4: 0xC000_020A)  // 192.0.2.10
    static let sources = (100..<148).map { IPAddress(ipv4: 0xC000_0200 | UInt32($0)) }
    static let me = ClusterMemberID(rawValue: 2)

    @Test func rulesRenderTheLayoutsMasksAndTheSegments() throws {
        let layout = try SPILayout(segments: ClusterSegments(count: 16, key: .peerAddress, seed: 0x5eed_1234, hash: .nftablesJHash))
        let steering = try #require(NFTablesSteering(clusterAddress: Self.cluster, layout: layout, member: Self.me))
        let rules = steering.ruleset(serving: [Segment(rawValue: 3), Segment(rawValue: 1), Segment(rawValue: 99)])
        #expect(rules.contains("udp dport 500 jhash ip saddr mod 16 seed 0x5eed1234 { 1, 3 } accept"))
        // 16 segments take 5 bits (31 marks duplicated Child SAs), member IDs 4: 0xf8000000, 0x07800000.
        #expect(rules.contains("udp dport 4500 @th,64,32 != 0 @th,64,32 & 0xf8000000 { 0x8000000, 0x18000000 } accept"))
        #expect(rules.contains("@th,64,32 & 0xff800000 0xf9000000 accept"))
        #expect(NFTablesSteering(clusterAddress: Self.cluster, layout: try SPILayout(segments: ClusterSegments(count: 16, seed: 1)), member: Self.me) == nil)
        let bySPI = try SPILayout(segments: ClusterSegments(count: 64, key: .initiatorSPI, seed: 0x1_0000_00ab, hash: .nftablesJHash))
        let ike = try #require(NFTablesSteering(clusterAddress: Self.cluster, layout: bySPI, member: Self.me)).ruleset(serving: [])
        #expect(!ike.contains("jhash"), "nothing served: no rule accepts IKE")
        let served = try #require(NFTablesSteering(clusterAddress: Self.cluster, layout: bySPI, member: Self.me)).update(serving: [Segment(rawValue: 7)])
        #expect(served.contains("udp dport 500 jhash @th,64,64 mod 64 seed 0xab { 7 } accept"))
        #expect(served.contains("udp dport 4500 @th,64,32 0 jhash @th,96,64 mod 64 seed 0xab { 7 } accept"))
    }

    @Test(arguments: [SegmentKey.peerAddress, .initiatorSPI])
    func theKernelPassesExactlyTheServedSegments(key: SegmentKey) throws {
        guard let harness = try Namespaces.make() else { return }
        defer { harness.remove() }
        let layout = try SPILayout(segments: ClusterSegments(count: 16, key: key, seed: 0x5eed_1234, hash: .nftablesJHash))
        let steering = try #require(NFTablesSteering(clusterAddress: Self.cluster, layout: layout, member: Self.me))
        var random = SplitMix64(seed: 5)
        let initiatorSPIs = Self.sources.map { _ in random.next() | 1 }
        let spis = try layout.segments.all.map { try layout.allocate(segment: $0, member: ClusterMemberID(rawValue: 1), using: &random) { _ in false } }
        let duplicated = [
            try layout.allocateDuplicated(member: Self.me, using: &random) { _ in false },
            try layout.allocateDuplicated(member: ClusterMemberID(rawValue: 3), using: &random) { _ in false },
        ]

        for (step, served) in [[1, 3, 4, 9, 15], [0, 2, 3, 10]].enumerated() {
            let segments = served.map { Segment(rawValue: UInt16($0)) }
            try harness.nft(step == 0 ? steering.ruleset(serving: segments) : steering.update(serving: segments))
            try harness.nft(Namespaces.probe)
            var datagrams: [(source: IPAddress, port: Int, payload: [UInt8])] = []
            for (source, spi) in zip(Self.sources, initiatorSPIs) {
                let ikeHeader = (0..<8).map { UInt8(truncatingIfNeeded: spi >> (56 - 8 * $0)) } + [UInt8](repeating: 0, count: 20)
                datagrams.append((source, 500, ikeHeader))
                datagrams.append((source, 4500, [0, 0, 0, 0] + ikeHeader))
            }
            for spi in spis + duplicated {
                let esp = (0..<4).map { UInt8(truncatingIfNeeded: spi >> (24 - 8 * $0)) } + [0, 0, 0, 1] + [UInt8](repeating: 0xab, count: 24)
                datagrams.append((Self.sources[0], 4500, esp))
                datagrams.append((Self.sources[1], 0, esp))  // ESP itself, IP protocol 50
            }
            try harness.send(datagrams, to: Self.cluster)

            let expectedIKE = Set(zip(Self.sources, initiatorSPIs).filter { segments.contains(layout.segments.segment(peer: $0.0, initiatorSPI: $0.1)) }.map(\.0))
            let expectedSPIs = Set(spis.filter { layout.segment(ofSPI: $0).map(segments.contains) ?? false } + [duplicated[0]])
            #expect(try harness.seen("seen500") == Set(expectedIKE.map(\.description)), "IKE on 500, step \(step)")
            #expect(try harness.seen("seen4500") == Set(expectedIKE.map(\.description)), "IKE on 4500, step \(step)")
            #expect(try harness.seen("seenspi") == Set(expectedSPIs.map { "0x" + String($0, radix: 16) }), "ESP in UDP, step \(step)")
            #expect(try harness.seen("seenesp") == Set(expectedSPIs.map { "0x" + String($0, radix: 16) }), "ESP, step \(step)")
            #expect(!expectedIKE.isEmpty && expectedIKE.count < Self.sources.count, "the sample spreads over the segments")
        }
    }
}

/// Two network namespaces joined by a veth pair: the member's ("m", with the cluster address)
/// and the peers' ("p", with the source addresses).
struct Namespaces {
    let member: String
    let peers: String

    /// Records what passed the steering rules: a chain at a later priority adds each packet's
    /// source address or SPI to a set.
    static let probe = """
        table inet probe
        delete table inet probe
        table inet probe {
            set seen500 { type ipv4_addr; flags dynamic; }
            set seen4500 { type ipv4_addr; flags dynamic; }
            set seenspi { typeof @th,64,32; flags dynamic; }
            set seenesp { typeof @th,0,32; flags dynamic; }
            chain record {
                type filter hook prerouting priority 0; policy accept;
                udp dport 500 add @seen500 { ip saddr }
                udp dport 4500 @th,64,32 0 add @seen4500 { ip saddr }
                udp dport 4500 @th,64,32 != 0 add @seenspi { @th,64,32 }
                meta l4proto esp add @seenesp { @th,0,32 }
            }
        }

        """

    /// The namespaces, or nil (the test skipped) without root or a tool.
    static func make() throws -> Namespaces? {
        guard getuid() == 0 else {
            print("SKIP: the nftables steering test needs root (network namespaces)")
            return nil
        }
        let missing = ["ip", "nft", "python3"].filter { tool in
            !["/usr/sbin", "/usr/bin", "/sbin", "/bin"].contains { FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)") }
        }
        guard missing.isEmpty else {
            print("SKIP: the nftables steering test needs \(missing.joined(separator: ", ")) (Debian: iproute2, nftables, python3)")
            return nil
        }
        let id = "\(getpid())-\(Int.random(in: 0..<1_000_000))"
        let harness = Namespaces(member: "ikeha-steer-m-\(id)", peers: "ikeha-steer-p-\(id)")
        let (vm, vp) = ("ism\(id.suffix(6))", "isp\(id.suffix(6))")
        do {
            try run("ip", "netns", "add", harness.member)
            try run("ip", "netns", "add", harness.peers)
            try run("ip", "link", "add", vm, "netns", harness.member, "type", "veth", "peer", "name", vp, "netns", harness.peers)
            try run("ip", "-n", harness.member, "addr", "add", "192.0.2.10/24", "dev", vm)
            for source in NFTablesSteeringTests.sources { try run("ip", "-n", harness.peers, "addr", "add", "\(source)/24", "dev", vp) }
            for (namespace, device) in [(harness.member, vm), (harness.peers, vp)] {
                try run("ip", "-n", namespace, "link", "set", device, "up")
                try run("ip", "-n", namespace, "link", "set", "lo", "up")
            }
            // The cluster address's MAC known before the burst: while ARP resolves, the kernel
            // queues a few packets per neighbour and drops the oldest.
            try run("ip", "netns", "exec", harness.peers, "ping", "-c", "1", "-W", "2", "192.0.2.10")
        } catch {
            harness.remove()
            throw error
        }
        return harness
    }

    func remove() {
        _ = try? Self.run("ip", "netns", "del", member)
        _ = try? Self.run("ip", "netns", "del", peers)
    }

    func nft(_ script: String) throws { try Self.run("ip", "netns", "exec", member, "nft", "-f", "-", input: script) }

    /// Sends each datagram from its source address (python3 in the peers' namespace): UDP to
    /// `port`, or for port 0 an IP packet of protocol 50 (ESP); then waits for the last to arrive.
    func send(_ datagrams: [(source: IPAddress, port: Int, payload: [UInt8])], to destination: IPAddress) throws {
        let sender = """
            import socket, sys
            for line in sys.stdin:
                source, port, payload = line.split()
                if port == "0":
                    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
                else:
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((source, 0))
                s.sendto(bytes.fromhex(payload), ("\(destination)", int(port)))
                s.close()
            """
        let lines = datagrams.map { "\($0.source) \($0.port) \($0.payload.map { String(format: "%02x", $0) }.joined())" }.joined(separator: "\n")
        try Self.run("ip", "netns", "exec", peers, "python3", "-c", sender, input: lines + "\n")
        Thread.sleep(forTimeInterval: 0.3)
    }

    /// The elements of a probe set, as nft prints them.
    func seen(_ set: String) throws -> Set<String> {
        let listing = try Self.run("ip", "netns", "exec", member, "nft", "list", "set", "inet", "probe", set)
        guard let start = listing.range(of: "elements = {"), let end = listing[start.upperBound...].firstIndex(of: "}") else { return [] }
        return Set(listing[start.upperBound..<end].split(separator: ",").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.filter { !$0.isEmpty })
    }

    @discardableResult
    static func run(_ arguments: String..., input: String? = nil) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        let stdin = Pipe()
        if input != nil { process.standardInput = stdin }
        try process.run()
        if let input {
            stdin.fileHandleForWriting.write(Data(input.utf8))
            try stdin.fileHandleForWriting.close()
        }
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw CommandFailure(command: arguments.joined(separator: " "), output: text) }
        return text
    }

    struct CommandFailure: Error, CustomStringConvertible {
        var command: String
        var output: String
        var description: String { "\(command) failed: \(output)" }
    }
}
