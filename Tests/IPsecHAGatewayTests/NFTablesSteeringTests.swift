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

    /// What the peers send: IKE on 500 and 4500 from every source, and ESP in UDP and ESP itself
    /// on an SPI of every segment and two duplicated Child SAs' (this member's and member 3's).
    struct Traffic {
        var initiatorSPIs: [UInt64]
        var spis: [UInt32]
        var duplicated: [UInt32]

        init(layout: SPILayout, duplicatedBy members: [ClusterMemberID]) throws {
            var random = SplitMix64(seed: 5)
            initiatorSPIs = NFTablesSteeringTests.sources.map { _ in random.next() | 1 }
            spis = try layout.segments.all.map { try layout.allocate(segment: $0, member: ClusterMemberID(rawValue: 1), using: &random) { _ in false } }
            duplicated = try members.map { try layout.allocateDuplicated(member: $0, using: &random) { _ in false } }
        }

        var datagrams: [(source: IPAddress, port: Int, payload: [UInt8])] {
            var datagrams: [(source: IPAddress, port: Int, payload: [UInt8])] = []
            for (source, spi) in zip(NFTablesSteeringTests.sources, initiatorSPIs) {
                let ikeHeader = (0..<8).map { UInt8(truncatingIfNeeded: spi >> (56 - 8 * $0)) } + [UInt8](repeating: 0, count: 20)
                datagrams.append((source, 500, ikeHeader))
                datagrams.append((source, 4500, [0, 0, 0, 0] + ikeHeader))
            }
            for spi in spis + duplicated {
                let esp = (0..<4).map { UInt8(truncatingIfNeeded: spi >> (24 - 8 * $0)) } + [0, 0, 0, 1] + [UInt8](repeating: 0xab, count: 24)
                datagrams.append((NFTablesSteeringTests.sources[0], 4500, esp))
                datagrams.append((NFTablesSteeringTests.sources[1], 0, esp))  // ESP itself, IP protocol 50
            }
            return datagrams
        }

        /// What a member serving `segments` must take: IKE sources, and SPIs as nft prints them.
        func expected(serving segments: [Segment], duplicated own: UInt32?, layout: SPILayout) -> (ike: Set<String>, spis: Set<String>) {
            let ike = zip(NFTablesSteeringTests.sources, initiatorSPIs).filter { segments.contains(layout.segments.segment(peer: $0.0, initiatorSPI: $0.1)) }
            let spis = spis.filter { layout.segment(ofSPI: $0).map(segments.contains) ?? false } + (own.map { [$0] } ?? [])
            return (Set(ike.map(\.0.description)), Set(spis.map { "0x" + String($0, radix: 16) }))
        }
    }

    /// Whether member `index` took exactly `expected`.
    static func check(_ harness: Namespaces, member index: Int, _ expected: (ike: Set<String>, spis: Set<String>), _ label: String) throws {
        #expect(try harness.seen("seen500", member: index) == expected.ike, "IKE on 500, \(label)")
        #expect(try harness.seen("seen4500", member: index) == expected.ike, "IKE on 4500, \(label)")
        #expect(try harness.seen("seenspi", member: index) == expected.spis, "ESP in UDP, \(label)")
        #expect(try harness.seen("seenesp", member: index) == expected.spis, "ESP, \(label)")
    }

    @Test(arguments: [SegmentKey.peerAddress, .initiatorSPI])
    func theKernelPassesExactlyTheServedSegments(key: SegmentKey) throws {
        guard let harness = try Namespaces.make() else { return }
        defer { harness.remove() }
        let layout = try SPILayout(segments: ClusterSegments(count: 16, key: key, seed: 0x5eed_1234, hash: .nftablesJHash))
        let steering = try #require(NFTablesSteering(clusterAddress: Self.cluster, layout: layout, member: Self.me))
        let traffic = try Traffic(layout: layout, duplicatedBy: [Self.me, ClusterMemberID(rawValue: 3)])
        for (step, served) in [[1, 3, 4, 9, 15], [0, 2, 3, 10]].enumerated() {
            let segments = served.map { Segment(rawValue: UInt16($0)) }
            try harness.nft(step == 0 ? steering.ruleset(serving: segments) : steering.update(serving: segments))
            try harness.nft(Namespaces.probe)
            try harness.send(traffic.datagrams, to: Self.cluster)
            let expected = traffic.expected(serving: segments, duplicated: traffic.duplicated[0], layout: layout)
            try Self.check(harness, member: 0, expected, "step \(step)")
            #expect(!expected.ike.isEmpty && expected.ike.count < Self.sources.count, "the sample spreads over the segments")
        }
    }

    /// Three members behind one MAC address, the segments split between them: every packet is
    /// taken by exactly the member that serves its segment (a duplicated Child SA's by the member
    /// that allocated it), and after a move of segments by the new one.
    @Test func threeMembersBehindOneMACEachTakeTheirOwnSegments() throws {
        guard let harness = try Namespaces.make(members: 3) else { return }
        defer { harness.remove() }
        let layout = try SPILayout(segments: ClusterSegments(count: 16, key: .peerAddress, seed: 0xc0ff_ee00, hash: .nftablesJHash))
        let ids = (1...3).map { ClusterMemberID(rawValue: UInt16($0)) }
        let traffic = try Traffic(layout: layout, duplicatedBy: ids)
        let steerings = try ids.map { try #require(NFTablesSteering(clusterAddress: Self.cluster, layout: layout, member: $0)) }
        // Member 1's segments go to the others, as after its failure.
        let splits: [[[Int]]] = [[Array(0..<5), Array(5..<11), Array(11..<16)], [[], Array(0..<11), Array(11..<16)]]
        for (step, split) in splits.enumerated() {
            for (index, served) in split.enumerated() {
                let segments = served.map { Segment(rawValue: UInt16($0)) }
                try harness.nft(step == 0 ? steerings[index].ruleset(serving: segments) : steerings[index].update(serving: segments), member: index)
                try harness.nft(Namespaces.probe, member: index)
            }
            try harness.send(traffic.datagrams, to: Self.cluster)
            var taken: [String] = []
            for (index, served) in split.enumerated() {
                let expected = traffic.expected(serving: served.map { Segment(rawValue: UInt16($0)) }, duplicated: traffic.duplicated[index], layout: layout)
                try Self.check(harness, member: index, expected, "member \(index + 1), step \(step)")
                taken += try harness.seen("seen500", member: index)
            }
            #expect(taken.count == Self.sources.count && Set(taken).count == Self.sources.count, "every IKE packet taken once, step \(step)")
        }
    }
}

/// Network namespaces for steering: the peers' ("p", with the source addresses), a bridge's
/// ("b"), and one per member ("m1", ...), each member with the cluster address and one shared
/// MAC address on its bridge port. The bridge learns nothing on the members' ports, so frames
/// to the shared MAC flood to every member, as a switch floods a cluster's multicast MAC: each
/// member's kernel sees every packet, and its rules alone decide what it takes.
struct Namespaces {
    let peers: String
    let bridge: String
    let members: [String]

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

    /// The namespaces with `count` members, or nil (the test skipped) without root or a tool.
    static func make(members count: Int = 1) throws -> Namespaces? {
        guard getuid() == 0 else {
            print("SKIP: the nftables steering test needs root (network namespaces)")
            return nil
        }
        let missing = ["ip", "nft", "python3", "bridge"].filter { tool in
            !["/usr/sbin", "/usr/bin", "/sbin", "/bin"].contains { FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)") }
        }
        guard missing.isEmpty else {
            print("SKIP: the nftables steering test needs \(missing.joined(separator: ", ")) (Debian: iproute2, nftables, python3)")
            return nil
        }
        let id = String(Int.random(in: 100_000..<1_000_000))
        let harness = Namespaces(
            peers: "ikeha-steer-p-\(id)", bridge: "ikeha-steer-b-\(id)", members: (1...count).map { "ikeha-steer-m\($0)-\(id)" })
        do {
            for namespace in [harness.peers, harness.bridge] + harness.members {
                try run("ip", "netns", "add", namespace)
                try run("ip", "-n", namespace, "link", "set", "lo", "up")
            }
            try run("ip", "-n", harness.bridge, "link", "add", "br0", "type", "bridge")
            try run("ip", "-n", harness.bridge, "link", "set", "br0", "up")
            // port name in the bridge's namespace, the other end's namespace and name
            let ports = [("p\(id)", harness.peers, "eth0")] + harness.members.indices.map { ("m\($0)x\(id)", harness.members[$0], "eth0") }
            for (index, (port, namespace, device)) in ports.enumerated() {
                try run("ip", "link", "add", port, "netns", harness.bridge, "type", "veth", "peer", "name", device, "netns", namespace)
                try run("ip", "-n", harness.bridge, "link", "set", port, "master", "br0", "up")
                if index > 0 {
                    try run("ip", "-n", namespace, "link", "set", device, "address", "02:00:5e:00:02:0a")
                    try run("ip", "-n", namespace, "addr", "add", "192.0.2.10/24", "dev", device)
                    try run("ip", "netns", "exec", harness.bridge, "bridge", "link", "set", "dev", port, "learning", "off", "flood", "on")
                }
                try run("ip", "-n", namespace, "link", "set", device, "up")
            }
            for source in NFTablesSteeringTests.sources { try run("ip", "-n", harness.peers, "addr", "add", "\(source)/24", "dev", "eth0") }
            // The cluster address's MAC known before the burst: while ARP resolves, the kernel
            // queues a few packets per neighbour and drops the oldest.
            try run("ip", "-n", harness.peers, "neigh", "replace", "192.0.2.10", "lladdr", "02:00:5e:00:02:0a", "dev", "eth0", "nud", "permanent")
        } catch {
            harness.remove()
            throw error
        }
        return harness
    }

    func remove() {
        for namespace in [peers, bridge] + members { _ = try? Self.run("ip", "netns", "del", namespace) }
    }

    func nft(_ script: String, member: Int = 0) throws { try Self.run("ip", "netns", "exec", members[member], "nft", "-f", "-", input: script) }

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

    /// The elements of a probe set of a member, as nft prints them.
    func seen(_ set: String, member: Int = 0) throws -> Set<String> {
        let listing = try Self.run("ip", "netns", "exec", members[member], "nft", "list", "set", "inet", "probe", set)
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
