#if canImport(Glibc)
internal import Glibc

/// `struct sockaddr_nl`.
private struct NetlinkSocketAddress {
    var family: UInt16
    var padding: UInt16
    var portID: UInt32
    var groups: UInt32
}

/// A netlink socket to the kernel's XFRM (`NETLINK_XFRM`) in this process's network namespace:
/// requests with their answers matched by sequence number, and the async events of the
/// `XFRMNLGRP_AEVENTS` group. Needs `CAP_NET_ADMIN`. Not `Sendable`: one owner uses it.
public final class XFRMSocket {
    /// `XFRMNLGRP_AEVENTS`: the kernel's counter events (replay and timer thresholds).
    public static let asyncEventsGroup: UInt32 = 5
    /// `XFRMNLGRP_SA`: notices of SAs added, changed and deleted.
    static let saGroup: UInt32 = 3

    private let descriptor: Int32
    private var sequence: UInt32 = 0
    /// Async events that arrived while a request waited for its answer, in order.
    private var queuedEvents: [XFRMAsyncEvent] = []
    /// Times the kernel dropped events because this socket's buffer was full (`ENOBUFS`): the
    /// events lost are unknown, so the owner sweeps every SA with GETAE.
    public private(set) var eventOverruns = 0

    /// Opens the socket; with `subscribe`, it receives `XFRMNLGRP_AEVENTS`. Throws the errno
    /// (as ``XFRMCodecError/kernelRefused(errno:)``) when the kernel refuses.
    public init(subscribeToAsyncEvents subscribe: Bool = false) throws(XFRMCodecError) {
        let socketType = Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        let descriptor = socket(AF_NETLINK, socketType, 6 /* NETLINK_XFRM */)
        guard descriptor >= 0 else { throw .kernelRefused(errno: errno) }
        // `struct sockaddr_nl` (linux/netlink.h, which Glibc's module does not bring): family,
        // padding, port ID (0: the kernel assigns one), multicast groups as a bit mask.
        var address = NetlinkSocketAddress(family: UInt16(AF_NETLINK), padding: 0, portID: 0, groups: subscribe ? 1 << (Self.asyncEventsGroup - 1) : 0)
        let bound = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<NetlinkSocketAddress>.size)) }
        }
        // A request that the kernel never answers must not block its owner for good.
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        let timed = setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard bound == 0, timed == 0 else {
            let failure = errno
            close(descriptor)
            throw .kernelRefused(errno: failure)
        }
        self.descriptor = descriptor
    }

    deinit { close(descriptor) }

    /// The counters the kernel holds for `sa` (GETAE, with the replay and lifetime values).
    public func asyncEvent(of sa: XFRMSAIdentifier, source: XFRMAddress) throws(XFRMCodecError) -> XFRMAsyncEvent {
        let request = XFRMAsyncEvent(sa: sa, source: source, flags: [.replayValues, .lifetimeValues])
        let answer = try exchange(request.encode(type: .getAsyncEvent, flags: [.request], sequence: nextSequence()), expecting: .newAsyncEvent)
        return try XFRMAsyncEvent(payload: answer)
    }

    /// Sets `event`'s counters and thresholds on its SA (NEWAE with `NLM_F_REPLACE`) and waits
    /// for the kernel's acknowledgement.
    public func setAsyncEvent(_ event: XFRMAsyncEvent) throws(XFRMCodecError) {
        _ = try exchange(event.encode(type: .newAsyncEvent, flags: [.request, .replace, .acknowledge], sequence: nextSequence()), expecting: nil)
    }

    /// Installs `state` (NEWSA; it holds the key, so the message is wiped once sent). Throws
    /// `EEXIST` when the SA is there already.
    public func install(_ state: XFRMState) throws(XFRMCodecError) {
        var message = state.encode(sequence: nextSequence())
        defer { message.withUnsafeMutableBytes { _ = $0.initializeMemory(as: UInt8.self, repeating: 0) } }
        _ = try exchange(message, expecting: nil)
    }

    /// Adds `policy` or replaces the one with its selector and direction (UPDPOLICY).
    public func install(_ policy: XFRMPolicy) throws(XFRMCodecError) {
        _ = try exchange(policy.encode(sequence: nextSequence()), expecting: nil)
    }

    /// Deletes the SA `sa` (DELSA); `ESRCH` when there is none.
    public func delete(_ sa: XFRMSAIdentifier) throws(XFRMCodecError) {
        _ = try exchange(sa.encodeDeletion(sequence: nextSequence()), expecting: nil)
    }

    /// Deletes the SA `sa` (DELSA) and returns its counters as the deletion left them: read from
    /// the kernel's notice of the deletion (``XFRMAsyncEvent/init(deletionNotice:)``), which
    /// this socket receives by joining `XFRMNLGRP_SA` for the call. No packet can move them
    /// after the notice: the kernel numbers an outbound packet only under the SA's lock and
    /// only while the SA is alive. `ESRCH` when there is no such SA.
    public func deleteReportingCounters(_ sa: XFRMSAIdentifier) throws(XFRMCodecError) -> XFRMAsyncEvent {
        try setMembership(Self.saGroup, joined: true)
        defer { try? setMembership(Self.saGroup, joined: false) }
        var notice: XFRMAsyncEvent?
        var acknowledged = false
        // The notice goes out while the kernel handles the request, the acknowledgement after
        // it; other members of the group (the IKE stack deleting its own SAs) may come between.
        return try exchange(sa.encodeDeletion(sequence: nextSequence())) { type, payload throws(XFRMCodecError) in
            if type == .error {
                acknowledged = true
            } else if type == .deleteSA {
                let event = try XFRMAsyncEvent(deletionNotice: payload)
                if event.sa == sa { notice = event }
            }
            return acknowledged ? notice : nil
        }
    }

    /// Deletes the policy with `selector` and `direction` (DELPOLICY); `ENOENT` when there is none.
    public func deletePolicy(selector: XFRMSelector, direction: XFRMPolicyDirection) throws(XFRMCodecError) {
        _ = try exchange(XFRMPolicy.encodeDeletion(selector: selector, direction: direction, sequence: nextSequence()), expecting: nil)
    }

    /// The async events that have arrived, without waiting; those that came while a request
    /// waited first.
    public func receiveAsyncEvents() throws(XFRMCodecError) -> [XFRMAsyncEvent] {
        var events = queuedEvents
        queuedEvents = []
        while let datagram = try receive(wait: false) {
            for message in try Netlink.messages(in: datagram) where message.header.type == .newAsyncEvent {
                events.append(try XFRMAsyncEvent(payload: message.payload))
            }
        }
        return events
    }

    // MARK: Internals

    /// Joins or leaves a multicast group (`NETLINK_ADD_MEMBERSHIP` / `NETLINK_DROP_MEMBERSHIP`).
    private func setMembership(_ group: UInt32, joined: Bool) throws(XFRMCodecError) {
        var value = group
        // SOL_NETLINK, NETLINK_ADD_MEMBERSHIP and NETLINK_DROP_MEMBERSHIP (linux/netlink.h).
        let done = setsockopt(descriptor, 270, joined ? 1 : 2, &value, socklen_t(MemoryLayout<UInt32>.size))
        guard done == 0 else { throw .kernelRefused(errno: errno) }
    }

    private func nextSequence() -> UInt32 {
        sequence &+= 1
        return sequence
    }

    /// Sends `request` and returns the payload of the answer of type `expecting` (nil: an
    /// acknowledgement, whose payload is returned empty).
    private func exchange(_ request: [UInt8], expecting: NetlinkMessageType?) throws(XFRMCodecError) -> ArraySlice<UInt8> {
        try exchange(request) { type, payload throws(XFRMCodecError) in
            if type == .error { return expecting == nil ? [] : nil }
            if let expecting, type == expecting { return payload }
            throw .unexpectedType(type.rawValue)
        }
    }

    /// Sends `request` and hands each message the kernel answers with (its sequence number) to
    /// `take` until it returns a result; an acknowledgement comes as `.error` with an empty
    /// payload, a refusal is thrown as its errno. Events that arrive meanwhile are kept, other
    /// messages skipped; what was read is wiped (a deletion notice holds the SA's key).
    private func exchange<Answer>(
        _ request: [UInt8], _ take: (NetlinkMessageType, ArraySlice<UInt8>) throws(XFRMCodecError) -> Answer?
    ) throws(XFRMCodecError) -> Answer {
        let sent = request.withUnsafeBytes { send(descriptor, $0.baseAddress, $0.count, 0) }
        guard sent == request.count else { throw .kernelRefused(errno: errno) }
        let requestSequence = sequence
        // Answers come within the receive timeout; a socket busy with events reads a bounded
        // number of datagrams before it gives up.
        for _ in 0..<1_000 {
            guard var datagram = try receive(wait: true) else { throw .kernelRefused(errno: ETIMEDOUT) }
            defer { datagram.withUnsafeMutableBytes { _ = $0.initializeMemory(as: UInt8.self, repeating: 0) } }
            for message in try Netlink.messages(in: datagram) {
                if message.header.type == .newAsyncEvent, message.header.sequence != requestSequence {
                    queuedEvents.append(try XFRMAsyncEvent(payload: message.payload))
                    continue
                }
                guard message.header.sequence == requestSequence else { continue }
                var payload = message.payload
                if message.header.type == .error {
                    let code = try Netlink.errorCode(in: message.payload)
                    guard code == 0 else { throw .kernelRefused(errno: code) }
                    payload = []
                }
                if let answer = try take(message.header.type, payload) { return answer }
            }
        }
        throw .kernelRefused(errno: ETIMEDOUT)
    }

    /// One datagram, or nil when none waits (`wait` false). `ENOBUFS` is counted and the read
    /// goes on: the socket is usable, some events are lost.
    private func receive(wait: Bool) throws(XFRMCodecError) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, wait ? 0 : Int32(MSG_DONTWAIT)) }
            if count >= 0 {
                defer {
                    // A deletion notice carries the SA's key: no copy of it stays behind.
                    buffer.withUnsafeMutableBytes { _ = $0.prefix(count).initializeMemory(as: UInt8.self, repeating: 0) }
                }
                return Array(buffer.prefix(count))
            }
            switch errno {
            case EINTR: continue
            case ENOBUFS: eventOverruns += 1
            case EAGAIN: return nil
            case let failure: throw .kernelRefused(errno: failure)
            }
        }
    }
}
#endif
