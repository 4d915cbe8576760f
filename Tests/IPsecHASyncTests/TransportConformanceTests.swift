import Foundation
import IPsecHACore
import IPsecHASimulation
import IPsecHASync
import IPsecHASyncNIO
import NIOPosix
import Testing

/// Both transports the package ships pass the conformance check a new backend would run
/// (`SyncTransportConformance`).
@Suite("Transport conformance")
struct TransportConformanceTests {
    @Test func theInMemoryNetworkWithFaults() throws {
        var faults = NetworkFaults()
        faults.loss = 0.2
        faults.duplication = 0.05
        faults.jitter = 3_000_000
        let network = InMemorySyncNetwork(faults: faults, seed: 40)
        var active = network.transport(for: ClusterMemberID(rawValue: 1))
        var standby = network.transport(for: ClusterMemberID(rawValue: 2))
        var now: UInt64 = 1_000_000_000
        let outcome = try SyncTransportConformance.run(
            active: &active, standby: &standby, clock: { Timestamp(nanoseconds: now) }, pause: { now += 1_000_000 })
        #expect(outcome.converged)
        #expect(outcome.ikeSAs == 24)
        #expect(outcome.retransmissions > 0, "the faults were repaired")
    }

    @Test func udpSocketsOnLoopback() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let activeID = ClusterMemberID(rawValue: 1)
        let standbyID = ClusterMemberID(rawValue: 2)
        let first = try await UDPSyncTransport.bind(member: activeID, host: "127.0.0.1", port: 0, peers: [:], group: group)
        let second = try await UDPSyncTransport.bind(member: standbyID, host: "127.0.0.1", port: 0, peers: [:], group: group)
        var active = first.with(peers: [standbyID: second.localAddress])
        var standby = second.with(peers: [activeID: first.localAddress])
        let origin = ContinuousClock.now
        func elapsed() -> Timestamp {
            let (seconds, attoseconds) = origin.duration(to: .now).components
            return Timestamp(nanoseconds: 1_000_000_000 + UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000))
        }
        let outcome = try SyncTransportConformance.run(active: &active, standby: &standby, clock: elapsed, pause: { usleep(500) })
        #expect(outcome.converged)
        #expect(outcome.ikeSAs == 24)
        try await first.close()
        try await second.close()
        try await group.shutdownGracefully()
    }
}
