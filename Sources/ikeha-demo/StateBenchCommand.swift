import ArgumentParser
import IPsecHACore
import IPsecHATestKit

/// `ikeha-demo bench state`: SAD lookup by inbound SPI, SPD cache lookup by five-tuple, and the
/// memory an IKE SA and a Child SA take, on a populated `GatewayState`.
struct StateBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "state",
        abstract: "Time SAD and SPD cache lookups and measure memory per SA; the last line is name=value pairs."
    )

    @Option(name: .customLong("child-sas"), help: "Child SAs to install (each with a replay window of --window packets).")
    var childSAs = 1_000_000

    @Option(name: .customLong("ike-sas"), help: "IKE SAs to install (the Child SAs are spread over them).")
    var ikeSAs = 100_000

    @Option(help: "Flows in the SPD cache.")
    var flows = 100_000

    @Option(help: "Lookups to time in each loop.")
    var lookups = 5_000_000

    @Option(help: "Replay window size of every Child SA.")
    var window: UInt32 = 1024

    func validate() throws {
        guard ikeSAs >= 1, childSAs >= 1, flows >= 1, lookups >= 1 else { throw ValidationError("counts must be positive") }
        guard childSAs < 0x7000_0000, ikeSAs <= childSAs else { throw ValidationError("need --ike-sas <= --child-sas < 2^30") }
    }

    func run() throws {
        var random = SplitMix64(seed: 7)
        var state = GatewayState()

        let before = residentMemoryBytes() ?? 0
        var ikeIdentifiers: [IKESAIdentifier] = []
        ikeIdentifiers.reserveCapacity(ikeSAs)
        for index in 0..<ikeSAs {
            let sa = try SAFixtures.ikeSA(UInt64(index + 1), &random)
            _ = try state.createIKESA(sa)
            ikeIdentifiers.append(sa.identifier)
        }
        let afterIKE = residentMemoryBytes() ?? 0

        // Inbound SPIs as a gateway would draw them: random, distinct, above the reserved range.
        var spis = Set<UInt32>(minimumCapacity: childSAs)
        while spis.count < childSAs { spis.insert(UInt32(truncatingIfNeeded: random.next()) | 0x100) }
        var installed = Array(spis)
        spis = []
        let afterSPIs = residentMemoryBytes() ?? 0
        for (index, spi) in installed.enumerated() {
            _ = try state.createChildSA(
                SAFixtures.childSA(spi, parent: ikeIdentifiers[index % ikeSAs], window: window, &random))
        }
        let afterChild = residentMemoryBytes() ?? 0
        let bytesPerIKE = Double(afterIKE - before) / Double(ikeSAs)
        let bytesPerChild = Double(afterChild - afterSPIs) / Double(childSAs)
        print("installed \(ikeSAs) IKE SAs and \(childSAs) Child SAs (replay window \(window))")

        // SAD lookups in random order.
        installed.shuffle(using: &random)
        let probes = (0..<lookups).map { installed[$0 % installed.count] }
        installed = []
        let spiRate = measureRate(count: lookups) {
            probes.withUnsafeBufferPointer { sadLookups(state, $0) }
        }
        print("SAD lookup by inbound SPI: \(Int(spiRate)) per second over \(state.childSACount) Child SAs")

        // SPD cache: one PROTECT policy for everything, one Child SA, `flows` cached flows.
        var gateway = try SAFixtures.protectingEverything(spdCacheCapacity: flows, window: window, &random)
        let packets = (0..<flows).map { index in
            FiveTuple(
                localAddress: IPAddress(ipv4: 0x0A00_0000 | UInt32(index >> 8)),
                remoteAddress: IPAddress(ipv4: 0xC633_6400 | UInt32(index & 0xFF)),
                ipProtocol: 17, localPort: 4500, remotePort: UInt16(truncatingIfNeeded: random.next()))
        }
        for packet in packets { _ = gateway.outboundDecision(for: packet) }
        let flowProbes = (0..<lookups).map { _ in packets[Int(random.next() % UInt64(packets.count))] }
        let hitsBefore = gateway.spdCacheStatistics.hits
        let cacheRate = measureRate(count: lookups) {
            flowProbes.withUnsafeBufferPointer { cacheLookups(&gateway, $0) }
        }
        var decisions = [SPDCacheDecision](repeating: .discard(nil), count: 256)
        let burstRate = measureRate(count: lookups) {
            flowProbes.withUnsafeBufferPointer { probes in
                decisions.withUnsafeMutableBufferPointer { burstLookups(&gateway, probes, $0) }
            }
        }
        let hits = gateway.spdCacheStatistics.hits - hitsBefore
        print("SPD cache lookup by five-tuple: \(Int(cacheRate)) per second one by one, \(Int(burstRate)) per second in bursts of 256, over \(gateway.spdCacheCount) flows (\(hits) hits of \(2 * lookups))")
        print(
            "memory: \(Int(bytesPerChild)) bytes per Child SA, \(Int(bytesPerIKE)) bytes per IKE SA (resident set growth; "
                + "inline \(MemoryLayout<ChildSA?>.stride) and \(MemoryLayout<IKESA>.stride) bytes)")
        print(
            "child_sa_lookups_per_second=\(Int(spiRate)) spd_cache_lookups_per_second=\(Int(cacheRate)) spd_cache_burst_lookups_per_second=\(Int(burstRate)) "
                + "bytes_per_child_sa=\(Int(bytesPerChild)) bytes_per_ike_sa=\(Int(bytesPerIKE))")
    }
}

extension Duration {
    /// The duration in seconds, as a floating-point number.
    var inSeconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

/// Runs `body` once and returns `count` divided by the seconds it took.
func measureRate(count: Int, _ body: () -> Int) -> Double {
    let clock = ContinuousClock()
    let start = clock.now
    let checksum = body()
    let elapsed = start.duration(to: clock.now)
    let seconds = elapsed.inSeconds
    // Use the checksum so the loop cannot be optimised away.
    return checksum == Int.min ? 0 : Double(count) / seconds
}

@inline(never)
func sadLookups(_ state: GatewayState, _ spis: UnsafeBufferPointer<UInt32>) -> Int {
    var checksum = 0
    for spi in spis {
        if let slot = state.slot(forInboundSPI: spi) { checksum &+= slot.index } else { checksum &-= 1 }
    }
    return checksum
}

@inline(never)
func cacheLookups(_ state: inout GatewayState, _ packets: UnsafeBufferPointer<FiveTuple>) -> Int {
    var checksum = 0
    for packet in packets {
        if case .protect = state.outboundDecision(for: packet) { checksum &+= 1 }
    }
    return checksum
}

@inline(never)
func burstLookups(
    _ state: inout GatewayState, _ packets: UnsafeBufferPointer<FiveTuple>, _ decisions: UnsafeMutableBufferPointer<SPDCacheDecision>
) -> Int {
    var checksum = 0
    var start = 0
    while start < packets.count {
        let burst = UnsafeBufferPointer(rebasing: packets[start..<min(start + decisions.count, packets.count)])
        state.outboundDecisions(for: burst, into: decisions)
        for index in 0..<burst.count { if case .protect = decisions[index] { checksum &+= 1 } }
        start += burst.count
    }
    return checksum
}
