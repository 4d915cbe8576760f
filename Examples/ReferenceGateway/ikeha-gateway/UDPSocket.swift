import IPsecHACore
import IPsecHASync

#if canImport(Glibc)
import Glibc
#endif

/// A non-blocking IPv4 UDP socket for IKE (port 500) and IKE + ESP-in-UDP (port 4500).
final class UDPSocket {
    let descriptor: Int32
    let local: Endpoint
    // Reused by every receive: the loop asks each socket once a millisecond, mostly in vain.
    private var buffer = [UInt8](repeating: 0, count: 65_536)

    /// Binds `address:port`. Throws a readable error when the address is not here or the
    /// port is taken.
    /// With `freeBind`, the address need not be here yet (IP_FREEBIND): a standby behind
    /// keepalived binds the virtual address early and receives once it arrives; and, where the
    /// process may (CAP_NET_ADMIN), sends from it before (IP_TRANSPARENT): the replies to what a
    /// switchover's former active member relays while the address moves.
    init(address: IPAddress, port: UInt16, freeBind: Bool = false) throws(GatewayError) {
        let descriptor = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard descriptor >= 0 else { throw .system("socket", errno) }
        var on: Int32 = 1
        setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        if freeBind {
            setsockopt(descriptor, Int32(IPPROTO_IP), IP_FREEBIND, &on, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(descriptor, Int32(IPPROTO_IP), Self.ipTransparent, &on, socklen_t(MemoryLayout<Int32>.size))
        }
        var socketAddress = Self.socketAddress(address, port)
        let bound = withUnsafePointer(to: &socketAddress) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else {
            let error = errno
            close(descriptor)
            throw .system("bind \(address):\(port)", error)
        }
        _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
        self.descriptor = descriptor
        self.local = Endpoint(address: address, port: port, udpEncapsulation: port == 4500)
    }

    deinit { close(descriptor) }

    /// IP_TRANSPARENT (linux/in.h), which Glibc's module does not export.
    static let ipTransparent: Int32 = 19

    /// The next datagram waiting, with its source; nil when none waits.
    func receive() -> (bytes: [UInt8], from: Endpoint)? {
        var source = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let count = buffer.withUnsafeMutableBytes { bytes in
            withUnsafeMutablePointer(to: &source) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(descriptor, bytes.baseAddress, bytes.count, 0, $0, &length) }
            }
        }
        guard count >= 0 else { return nil }
        let address = IPAddress(ipv4: UInt32(bigEndian: source.sin_addr.s_addr))
        return (Array(buffer[..<count]), Endpoint(address: address, port: UInt16(bigEndian: source.sin_port), udpEncapsulation: local.port == 4500))
    }

    /// Sends `bytes` to `destination`; a failure is returned, not thrown: UDP may drop anyway.
    @discardableResult
    func send(_ bytes: [UInt8], to destination: Endpoint) -> Int32? {
        var socketAddress = Self.socketAddress(destination.address, destination.port)
        let sent = bytes.withUnsafeBytes { bytes in
            withUnsafePointer(to: &socketAddress) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(descriptor, bytes.baseAddress, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        return sent < 0 ? errno : nil
    }

    private static func socketAddress(_ address: IPAddress, _ port: UInt16) -> sockaddr_in {
        var socketAddress = sockaddr_in()
        socketAddress.sin_family = sa_family_t(AF_INET)
        socketAddress.sin_port = port.bigEndian
        socketAddress.sin_addr.s_addr = UInt32(truncatingIfNeeded: address.low).bigEndian
        return socketAddress
    }
}

/// Waits until one of `sockets` can be read, or `milliseconds` pass.
func waitForInput(_ descriptors: [Int32], milliseconds: Int32) {
    guard !descriptors.isEmpty else {
        usleep(UInt32(milliseconds) * 1_000)
        return
    }
    var fds = descriptors.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
    _ = poll(&fds, nfds_t(fds.count), milliseconds)
}

/// Errors of the gateway process.
enum GatewayError: Error, CustomStringConvertible {
    case system(String, Int32)
    case configuration(String)

    var description: String {
        switch self {
        case .system(let call, let code): "\(call): \(String(cString: strerror(code)))"
        case .configuration(let text): text
        }
    }
}

/// keepalived's notify FIFO, read without blocking: the states of one VRRP instance.
final class VRRPNotifyFIFO {
    let path: String
    let instance: String
    private var descriptor: Int32 = -1
    private var pending: [UInt8] = []
    private var buffer = [UInt8](repeating: 0, count: 4_096)

    init(path: String, instance: String) {
        self.path = path
        self.instance = instance
    }

    deinit { if descriptor >= 0 { close(descriptor) } }

    /// The states reported since the last call (keepalived buffers lines until a reader comes).
    func read() -> [VRRPState] {
        if descriptor < 0 {
            descriptor = open(path, O_RDONLY | O_NONBLOCK)
            if descriptor < 0 { return [] }
        }
        while true {
            let count = Glibc.read(descriptor, &buffer, buffer.count)
            if count <= 0 { break }
            pending += buffer[..<count]
        }
        var states: [VRRPState] = []
        while let newline = pending.firstIndex(of: 10) {
            let line = String(decoding: pending[..<newline], as: UTF8.self)
            pending.removeSubrange(...newline)
            if let state = VRRPState(notifyFIFOLine: line, instance: instance) { states.append(state) }
        }
        return states
    }
}

/// keepalived's `track_file` for this member's readiness (`--vrrp-track-file`): 0 while
/// keepalived may elect it (``ClusterMemberReadiness/isElectable``), 1 otherwise. With
/// `weight 0` in keepalived.conf a 1 holds the instance in FAULT: never MASTER. Written to a
/// temporary file and renamed over the old one, so that keepalived (inotify) never reads half.
struct VRRPTrackFile {
    let path: String
    /// What the file holds (0 or 1), nil before the first write.
    private(set) var value: Int?
    /// Whether the last write failed (logged once, tried again each turn).
    var failing = false

    init(path: String) { self.path = path }

    /// Writes `value` (0 or 1) if it changed, replacing the file whole (keepalived reads it on
    /// inotify and must never see it half written); false when that failed (errno says why).
    mutating func update(_ value: Int) -> Bool {
        guard value != self.value else { return true }
        let temporary = path + ".tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { return false }
        let text: [UInt8] = [value == 0 ? 0x30 : 0x31, 0x0A]
        let written = text.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        close(descriptor)
        guard written == text.count, rename(temporary, path) == 0 else { return false }
        self.value = value
        return true
    }
}

/// SIGTERM and SIGUSR1, blocked and taken without waiting (sigtimedwait with no timeout):
/// the loop handles them between datagrams, with no handler running in the middle of it.
struct OperatorSignals {
    private var set = sigset_t()

    /// Blocks the signals for this thread and the threads it starts (call it before any).
    init() throws {
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGUSR1)
        sigaddset(&set, SIGHUP)
        let status = pthread_sigmask(SIG_BLOCK, &set, nil)
        guard status == 0 else { throw GatewayError.system("pthread_sigmask", status) }
    }

    /// The signals pending since the last call, in order.
    func read() -> [Int32] {
        var signals: [Int32] = []
        var pending = set
        var info = siginfo_t()
        var none = timespec(tv_sec: 0, tv_nsec: 0)
        while true {
            let signal = sigtimedwait(&pending, &info, &none)
            if signal <= 0 { break }
            signals.append(signal)
        }
        return signals
    }
}
