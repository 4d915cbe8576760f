import IPsecHACore
import IPsecHASync
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus

/// `--metrics-listen`: the member's metrics (``ClusterMemberMetrics``, the synch channel's, and
/// the gateway's own below) in Prometheus's text format at `GET /metrics`, on an address the
/// operator chooses; nothing is served without the option.
///
/// | metric | kind | meaning |
/// |---|---|---|
/// | `ikeha_gateway_switchovers` | counter | planned switchovers this member started (SIGUSR1, SIGTERM) |
/// | `ikeha_gateway_key_rotations` | counter | cluster-key rotations this member made (SIGHUP) |
/// | `ikeha_gateway_datagrams_relayed` | counter, per `direction` | IKE and ESP datagrams relayed during switchovers: `sent` by the member that handed over (they reached it while the address moved), `received` and handled by the new active member |
/// | `ikeha_gateway_datagrams_not_relayed` | counter | datagrams the member that handed over could not relay (a peer of the previous release, a datagram larger than a synch datagram) |
/// | `ikeha_gateway_message_id_syncs_sent` | counter | RFC 6311 message-ID syncs sent after takeovers |
/// | `ikeha_gateway_esp_replies` | counter | ESP packets answered |
/// | `ikeha_gateway_esp_dropped` | counter, per `reason` | ESP packets dropped (replays, failed integrity, unknown SPIs...) |
struct GatewayMetrics {
    let registry: PrometheusCollectorRegistry
    private var member: ClusterMemberMetrics
    private let switchovers: Metrics.Counter
    private let keyRotations: Metrics.Counter
    private let relayedSent: Metrics.Counter
    private let relayedReceived: Metrics.Counter
    private let notRelayed: Metrics.Counter
    private let messageIDSyncsSent: Metrics.Counter
    private let espReplies: Metrics.Counter
    private var espDropped: [String: Metrics.Counter] = [:]
    private var lastReport: Timestamp?
    /// How often the member's gauges are refreshed: a scrape every few seconds sees them at
    /// most this old, and the loop does not pay for them every millisecond.
    static let reportInterval = Duration.milliseconds(100)

    /// Bootstraps swift-metrics with a Prometheus registry (once per process).
    init(peers: [ClusterMemberID]) {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        self.registry = registry
        // Made after the bootstrap: made before, they would count into swift-metrics' no-op backend.
        member = ClusterMemberMetrics(peers: peers)
        switchovers = Metrics.Counter(label: "ikeha_gateway_switchovers")
        keyRotations = Metrics.Counter(label: "ikeha_gateway_key_rotations")
        relayedSent = Metrics.Counter(label: "ikeha_gateway_datagrams_relayed", dimensions: [("direction", "sent")])
        relayedReceived = Metrics.Counter(label: "ikeha_gateway_datagrams_relayed", dimensions: [("direction", "received")])
        notRelayed = Metrics.Counter(label: "ikeha_gateway_datagrams_not_relayed")
        messageIDSyncsSent = Metrics.Counter(label: "ikeha_gateway_message_id_syncs_sent")
        espReplies = Metrics.Counter(label: "ikeha_gateway_esp_replies")
    }

    mutating func report(_ cluster: ClusterMember, now: Timestamp) {
        if let lastReport, now < lastReport + Self.reportInterval { return }
        lastReport = now
        member.report(cluster, now: now)
    }

    func switchedOver() { switchovers.increment() }
    func rotatedKey() { keyRotations.increment() }
    func relayedDatagram(sent: Bool) { (sent ? relayedSent : relayedReceived).increment() }
    func relayedDatagramRefused() { notRelayed.increment() }
    func sentMessageIDSync() { messageIDSyncsSent.increment() }
    func answeredESP() { espReplies.increment() }
    mutating func droppedESP(reason: String) {
        if espDropped[reason] == nil {
            espDropped[reason] = Metrics.Counter(label: "ikeha_gateway_esp_dropped", dimensions: [("reason", reason)])
        }
        espDropped[reason]?.increment()
    }
}

/// The HTTP side of `--metrics-listen`: one event loop of the gateway's, HTTP/1.1 from NIO's
/// parser, `GET` or `HEAD /metrics` answered, anything else refused; a connection idle for
/// 10 s is closed, so that forgotten scrapers hold no memory.
enum MetricsEndpoint {
    static let idleTimeout = TimeAmount.seconds(10)

    /// Binds `host:port` and serves `registry` there until the process exits; returns the
    /// address bound (port 0 picks one).
    static func start(host: String, port: Int, registry: PrometheusCollectorRegistry, group: any EventLoopGroup) throws -> SocketAddress {
        let channel = try ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 16)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: idleTimeout))
                    try channel.pipeline.syncOperations.addHandler(MetricsRequestHandler(registry: registry))
                }
            }
            .bind(host: host, port: port).wait()
        guard let address = channel.localAddress else { throw GatewayError.configuration("--metrics-listen: no local address after bind") }
        return address
    }
}

final class MetricsRequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let registry: PrometheusCollectorRegistry
    private var request: HTTPRequestHead?

    init(registry: PrometheusCollectorRegistry) { self.registry = registry }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): request = head
        case .body: break  // a scrape has none; whatever comes is not kept
        case .end:
            guard let head = request else { return }
            request = nil
            respond(to: head, context: context)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent { context.close(promise: nil) } else { context.fireUserInboundEventTriggered(event) }
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = head.uri.prefix { $0 != "?" }
        let (status, body): (HTTPResponseStatus, [UInt8])
        if head.method != .GET && head.method != .HEAD {
            (status, body) = (.methodNotAllowed, Array("GET /metrics only\n".utf8))
        } else if path != "/metrics" {
            (status, body) = (.notFound, Array("metrics are at /metrics\n".utf8))
        } else {
            (status, body) = (.ok, registry.emitToBuffer())
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: status == .ok ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: "\(body.count)")
        if status == .methodNotAllowed { headers.add(name: "Allow", value: "GET, HEAD") }
        let keepAlive = head.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD { context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil) }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
        }
    }
}
