public import IPsecHACore
public import IPsecHASync
internal import NIOConcurrencyHelpers
public import NIOCore
internal import NIOPosix

/// A `SyncTransport` over UDP sockets (SwiftNIO): one bound socket per member, peers by
/// address. Received datagrams from the configured peers' addresses (and from nowhere else)
/// wait in a queue bounded in datagrams and in bytes until the channel's owner calls
/// ``receive(now:)``; sends are fire-and-forget, as the transport contract says (the synch
/// channel above authenticates, orders and retransmits).
public struct UDPSyncTransport: SyncTransport, Sendable {
    /// The member this transport belongs to.
    public let member: ClusterMemberID
    /// The address the socket is bound to (with the port the system chose for port 0).
    public let localAddress: SocketAddress
    /// The largest datagram carried (the channel's default is 1,400 bytes).
    public static let maximumDatagramSize = SyncChannelConfiguration.supportedDatagramSizes.upperBound
    /// Datagrams held for ``receive(now:)`` at most; more are dropped (and counted).
    public static let queueLimit = 65_536
    /// Bytes held for ``receive(now:)`` at most (16 MiB): 65,536 datagrams of 64 KiB would be
    /// 4 GiB from anybody who can reach the port (review L7).
    public static let queueByteLimit = 16 << 20
    /// The socket's receive buffer asked for (4 MiB; the kernel grants at most
    /// `net.core.rmem_max`, 208 KiB on a stock Debian). The channel sends up to
    /// `SyncChannelConfiguration.retransmitBufferLimit` datagrams before an acknowledgement, and
    /// the checkpoint stream comes in bursts at each scan: together they overflowed the
    /// default buffer, and the kernel dropped more datagrams than it delivered (the synch
    /// channel then repaired each loss).
    public static let receiveBufferBytes: Int32 = 4 << 20
    /// What one read takes from the socket: any UDP payload. NIO's datagram channel reads into
    /// 2,048 bytes unless told otherwise, and cut every longer datagram to that length (the
    /// synch channel may be configured for datagrams up to ``maximumDatagramSize``; a cut one
    /// never authenticates). NIO keeps the buffer and reuses it for the next read.
    static let readBufferBytes = 65_536

    private let channel: any Channel
    private let peers: [ClusterMemberID: SocketAddress]
    private let inbox: Inbox

    final class Inbox: ChannelInboundHandler, Sendable {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        struct State {
            var datagrams: [[UInt8]] = []
            var bytes = 0
            var dropped = 0
            var refused = 0
            /// The peers' addresses: datagrams from anywhere else are refused unread.
            var sources: Set<SocketAddress> = []
        }
        let state = NIOLockedValueBox(State())
        /// True while datagrams may wait: what ``UDPSyncTransport/wait(until:)`` sleeps on.
        let arrived = ConditionLock(value: false)

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let envelope = unwrapInboundIn(data)
            let length = envelope.data.readableBytes
            state.withLockedValue { state in
                guard state.sources.contains(envelope.remoteAddress) else {
                    state.refused += 1
                    return
                }
                guard state.datagrams.count < UDPSyncTransport.queueLimit, state.bytes + length <= UDPSyncTransport.queueByteLimit,
                    let bytes = envelope.data.getBytes(at: envelope.data.readerIndex, length: length)
                else {
                    state.dropped += 1
                    return
                }
                state.datagrams.append(bytes)
                state.bytes += length
            }
            arrived.lock()
            arrived.unlock(withValue: true)
        }
    }

    /// Binds a UDP socket for `member` at `host`:`port` (0: any free port) on `group`, sending
    /// to `peers`.
    public static func bind(
        member: ClusterMemberID, host: String, port: Int, peers: [ClusterMemberID: SocketAddress], group: any EventLoopGroup
    ) async throws -> UDPSyncTransport {
        let inbox = Inbox()
        let channel = try await DatagramBootstrap(group: group)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(receiveBufferBytes))
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: readBufferBytes))
            .channelInitializer { channel in channel.pipeline.addHandler(inbox) }
            .bind(host: host, port: port).get()
        guard let local = channel.localAddress else { throw SyncTransportError.unreachable(member) }
        return UDPSyncTransport(member: member, localAddress: local, channel: channel, peers: peers, inbox: inbox)
    }

    private init(member: ClusterMemberID, localAddress: SocketAddress, channel: any Channel, peers: [ClusterMemberID: SocketAddress], inbox: Inbox) {
        self.member = member
        self.localAddress = localAddress
        self.channel = channel
        self.peers = peers
        self.inbox = inbox
        inbox.state.withLockedValue { $0.sources = Set(peers.values) }
    }

    /// The socket's receive buffer as the kernel granted it (`SO_RCVBUF`; Linux reports twice
    /// what it reserved for data): below ``receiveBufferBytes`` where `net.core.rmem_max` is
    /// lower, which an embedder may want to log at start.
    public func grantedReceiveBufferBytes() async throws -> Int {
        Int(try await channel.getOption(.socketOption(.so_rcvbuf)).get())
    }

    /// This transport with another set of peer addresses.
    public func with(peers: [ClusterMemberID: SocketAddress]) -> UDPSyncTransport {
        UDPSyncTransport(member: member, localAddress: localAddress, channel: channel, peers: peers, inbox: inbox)
    }

    public mutating func send(_ datagram: [UInt8], to member: ClusterMemberID, now: Timestamp) throws(SyncTransportError) {
        channel.writeAndFlush(try envelope(datagram, to: member), promise: nil)
    }

    /// `datagram` addressed to `member`; refused when too large or to a member without an address.
    private func envelope(_ datagram: [UInt8], to member: ClusterMemberID) throws(SyncTransportError) -> AddressedEnvelope<ByteBuffer> {
        guard datagram.count <= Self.maximumDatagramSize else { throw .tooLarge(datagram.count) }
        guard let address = peers[member] else { throw .unreachable(member) }
        return AddressedEnvelope(remoteAddress: address, data: channel.allocator.buffer(bytes: datagram))
    }

    /// The datagrams handed to the event loop in one task, written and flushed together (NIO
    /// then sends them with one `sendmmsg`): one wake-up of the event loop for a member's turn
    /// instead of one per datagram. Datagrams too large or to an unknown member are skipped.
    public mutating func send(contentsOf datagrams: [(to: ClusterMemberID, datagram: [UInt8])], now: Timestamp) {
        let envelopes = datagrams.compactMap { to, datagram in try? envelope(datagram, to: to) }
        guard !envelopes.isEmpty else { return }
        let channel = self.channel
        channel.eventLoop.execute {
            for envelope in envelopes { channel.write(envelope, promise: nil) }
            channel.flush()
        }
    }

    public mutating func receive(now: Timestamp) -> [[UInt8]] {
        inbox.state.withLockedValue { state in
            guard !state.datagrams.isEmpty else { return [] }
            // Taken whole, the inbox starting afresh: emptying it while the caller still held
            // its buffer allocated a new one of the same capacity at every call, with datagrams
            // or without.
            var taken: [[UInt8]] = []
            swap(&taken, &state.datagrams)
            state.bytes = 0
            return taken
        }
    }

    /// Blocks the calling thread until a datagram is waiting or the monotonic clock reaches
    /// `deadline`, whichever comes first: the sleep of a member's loop between its
    /// `nextDeadline`s, so that it neither polls nor answers late. May return early (a datagram
    /// that ``receive(now:)`` already took); the caller then simply finds nothing.
    public func wait(until deadline: Timestamp) {
        let now = Timestamp.monotonicNow()
        guard deadline > now else { return }
        let seconds = Double(deadline.nanoseconds - now.nanoseconds) / 1e9
        if inbox.arrived.lock(whenValue: true, timeoutSeconds: seconds) { inbox.arrived.unlock(withValue: false) }
    }

    /// Datagrams dropped because the queue was full.
    public var dropped: Int { inbox.state.withLockedValue { $0.dropped } }

    /// Datagrams refused because they came from an address that is not a peer's.
    public var refused: Int { inbox.state.withLockedValue { $0.refused } }

    /// Closes the socket.
    public func close() async throws { try await channel.close() }
}
