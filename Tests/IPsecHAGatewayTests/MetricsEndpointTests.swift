import Foundation
import IPsecHATestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `ikeha-gateway --metrics-listen`: two gateway processes on loopback, scraped over HTTP as
/// Prometheus would, before and after a planned switchover (SIGUSR1). The active member and
/// the one that takes over bind UDP 500 and 4500 on a loopback address: root only (CI runs as
/// root); elsewhere the test says so and is skipped.
@Suite("The gateway's Prometheus endpoint")
struct MetricsEndpointTests {
    @Test func anOperatorScrapesTheRoleReadinessAndASwitchover() throws {
        guard getuid() == 0 else {
            print("skipped: the gateway binds UDP 500 and 4500 (needs root)")
            return
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ikeha-metrics-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let psk = directory.appendingPathComponent("psk").path, key = directory.appendingPathComponent("key").path
        try Data("metrics-test-pre-shared-key".utf8).write(to: URL(fileURLWithPath: psk))
        try Data((0..<32).map { _ in UInt8.random(in: 0...255) }).write(to: URL(fileURLWithPath: key))
        #expect(chmod(psk, 0o600) == 0 && chmod(key, 0o600) == 0)
        // A loopback address of its own, so that no other test's port 500 is in the way.
        let cluster = "127.0.\(UInt8(getpid() % 200 + 20)).1"
        let base = 42_000 + Int(getpid() % 2_000)
        func member(_ id: Int, active: Bool) throws -> GatewayProcess {
            try GatewayProcess([
                "--member", "\(id)", "--cluster-address", cluster, "--inner-address", "10.99.0.1", "--remote-subnet", "10.99.1.0/24",
                "--local-id", "gw.test", "--remote-id", "peer.test", "--psk-file", psk, "--sync-key-file", key,
                "--sync-listen", "127.0.0.1:\(base + id)", "--sync-peer", "\(3 - id)=127.0.0.1:\(base + 3 - id)",
                "--metrics-listen", "127.0.0.1:0",
            ] + (active ? ["--active"] : []))
        }
        let standby = try member(2, active: false)
        defer { standby.kill() }
        let active = try member(1, active: true)
        defer { active.kill() }
        let activeMetrics = try #require(active.metricsPort(), "\(active.output) \(active.errorLines.suffix(5))")
        let standbyMetrics = try #require(standby.metricsPort(), "\(standby.output) \(standby.errorLines.suffix(5))")

        #expect(waitFor { Self.value(of: #"ipsecha_member_readiness{state="complete-copy"}"#, at: standbyMetrics) == 1 }, "\(standby.output) \(standby.errorLines.suffix(5))")
        #expect(Self.value(of: "ipsecha_member_active", at: activeMetrics) == 1)
        #expect(Self.value(of: "ipsecha_member_active", at: standbyMetrics) == 0)
        #expect(Self.value(of: "ipsecha_member_electable", at: standbyMetrics) == 1)
        #expect(waitFor { Self.value(of: #"ipsecha_sync_standby_current{peer="2"}"#, at: activeMetrics) == 1 })
        #expect((Self.value(of: "ipsecha_sync_datagrams_sent", at: activeMetrics) ?? 0) > 0)

        kill(active.process.processIdentifier, SIGUSR1)
        #expect(waitFor { Self.value(of: "ipsecha_member_active", at: standbyMetrics) == 1 }, "\(standby.output) \(standby.errorLines.suffix(5))")
        #expect(Self.value(of: #"ipsecha_member_promotions{reason="switchover"}"#, at: standbyMetrics) == 1)
        #expect(waitFor { Self.value(of: "ipsecha_member_active", at: activeMetrics) == 0 })
        #expect(Self.value(of: "ikeha_gateway_switchovers", at: activeMetrics) == 1)
        #expect(Self.value(of: "ipsecha_member_step_downs", at: activeMetrics) == 1)
        #expect(Self.value(of: "ikeha_gateway_message_id_syncs_sent", at: standbyMetrics) ?? 0 == 0)

        // Only GET and HEAD of /metrics.
        #expect(Self.request("GET /other HTTP/1.1", port: activeMetrics).hasPrefix("HTTP/1.1 404"))
        #expect(Self.request("POST /metrics HTTP/1.1", port: activeMetrics).hasPrefix("HTTP/1.1 405"))
        #expect(Self.request("GET /metrics HTTP/1.1", port: activeMetrics).contains("Content-Type: text/plain; version=0.0.4"))
    }

    func waitFor(seconds: Double = 5, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(50_000)
        }
        return condition()
    }

    /// A sample's value in the text format: `name{labels} value`, labels as given.
    static func value(of sample: String, at port: Int) -> Double? {
        let body = request("GET /metrics HTTP/1.1", port: port)
        for line in body.split(separator: "\n") where line.hasPrefix(sample + " ") {
            return Double(line.dropFirst(sample.count + 1).prefix { $0 != " " })
        }
        return nil
    }

    /// One HTTP/1.1 request on a new connection to 127.0.0.1:`port`; the whole response.
    static func request(_ requestLine: String, port: Int) -> String {
        let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard socket >= 0 else { return "" }
        defer { close(socket) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { return "" }
        let text = requestLine + "\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        _ = text.withCString { send(socket, $0, strlen($0), 0) }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = recv(socket, &chunk, chunk.count, 0)
            if count <= 0 { break }
            response += chunk[0..<count]
        }
        return String(decoding: response, as: UTF8.self)
    }
}

/// An `ikeha-gateway` of this build.
typealias GatewayProcess = RunningProcess

extension RunningProcess {
    convenience init(_ arguments: [String]) throws {
        try self.init(Harness.executable("ikeha-gateway"), arguments)
    }

    /// The port of `event=metrics_listening address=[IPv4]127.0.0.1/127.0.0.1:PORT`, within 10 s.
    func metricsPort() -> Int? {
        waitForLine(seconds: 10) { $0.hasPrefix("event=metrics_listening") }
            .flatMap { line in line.split(separator: ":").last.flatMap { Int($0.prefix { $0.isNumber }) } }
    }
}
