// The C ABI of ClusterMember: include/ipsecha.h (target CIPsecHA) declares every function and
// structure, and each function here is its `@c @implementation`, which the compiler checks
// against the header's declaration. Public so that the symbols are exported from
// libipsecha.so; no Swift program imports this module.
internal import CIPsecHA
internal import Glibc
internal import IPsecHACore
internal import IPsecHASync

/// What a C caller holds as `ipsecha_member *`: the member, the last takeover's plan, and the
/// buffers behind the pointers the C side was handed (valid until its next non-const call).
final class MemberHandle {
    var member: ClusterMember
    let dataPlane: ipsecha_data_plane
    /// The plan of the last ``ClusterMemberAction/tookOver(_:rekey:)``, read entry by entry.
    var plan: TakeoverPlan?
    var datagram = HandedOut<UInt8>()
    var rekeySPIs = HandedOut<UInt32>()
    var reason = HandedOut<CChar>()
    var lastError = HandedOut<CChar>()

    init(member: ClusterMember, dataPlane: ipsecha_data_plane) {
        self.member = member
        self.dataPlane = dataPlane
        _ = lastError.store([], terminator: 0)
    }

    /// The handle behind a C pointer (nil for NULL). Unretained: the C side owns the one
    /// reference, from `ipsecha_member_create` to `ipsecha_member_destroy`.
    static func from(_ pointer: OpaquePointer?) -> MemberHandle? {
        pointer.map { Unmanaged<MemberHandle>.fromOpaque(UnsafeRawPointer($0)).takeUnretainedValue() }
    }

    /// Whether the member is active, or why not, for the calls only an active member takes.
    func requireActive() throws(CAPIFailure) {
        guard member.isActive else { throw CAPIFailure(IPSECHA_E_NOT_ACTIVE, "not the active member: a standby's state comes from the active member") }
    }

    /// For the calls of one data-plane shape only.
    func require(_ shape: ipsecha_data_plane, for call: String) throws(CAPIFailure) {
        guard dataPlane == shape else {
            throw CAPIFailure(IPSECHA_E_DATA_PLANE, "\(call) is for a member whose data plane is \(shape == IPSECHA_DATA_PLANE_USERSPACE ? "userspace" : "observed")")
        }
    }
}

/// A buffer the member owns and hands out to C: grown as needed, freed with the member, and
/// overwritten by the next value, which is what the header's ownership rule promises.
struct HandedOut<Element: BitwiseCopyable>: ~Copyable {
    private var storage = UnsafeMutablePointer<Element>.allocate(capacity: 1)
    private var capacity = 1

    /// What was stored last.
    var pointer: UnsafePointer<Element> { UnsafePointer(storage) }

    /// Copies `elements` (then `terminator`, if any) into the buffer.
    mutating func store(_ elements: some Collection<Element>, terminator: Element? = nil) -> UnsafePointer<Element> {
        let needed = elements.count + (terminator == nil ? 0 : 1)
        if needed > capacity {
            storage.deallocate()
            capacity = max(needed, capacity * 2)
            storage = .allocate(capacity: capacity)
        }
        var index = 0
        for element in elements {
            storage[index] = element
            index += 1
        }
        if let terminator { storage[index] = terminator }
        return UnsafePointer(storage)
    }

    deinit { storage.deallocate() }
}

extension HandedOut where Element == CChar {
    /// `text` as a NUL-terminated C string (any NUL inside cut it short in C, harmlessly).
    mutating func store(text: String) -> UnsafePointer<CChar> {
        store(text.utf8.map { CChar(bitPattern: $0) }, terminator: 0)
    }
}

/// A refusal on its way to C: the status the call returns and the sentence
/// `ipsecha_member_last_error` gives.
struct CAPIFailure: Error {
    var status: ipsecha_status
    var message: String

    init(_ status: ipsecha_status, _ message: String) {
        self.status = status
        self.message = message
    }

    /// A state change the member refused, by the header's codes.
    init(_ error: ClusterMemberError) {
        guard let state = error.stateError else {
            self.init(IPSECHA_E_NOT_ACTIVE, "\(error)")
            return
        }
        self.init(state)
    }

    init(_ error: GatewayStateError) {
        let status: ipsecha_status
        switch error {
        case .ikeSAExists, .spiInUse: status = IPSECHA_E_EXISTS
        case .unknownIKESA, .unknownParent: status = IPSECHA_E_UNKNOWN_IKE_SA
        case .unknownChildSA: status = IPSECHA_E_UNKNOWN_CHILD_SA
        case .childSA, .messageIDs, .policy, .unknownPolicy, .identifierChanged: status = IPSECHA_E_INVALID_ARGUMENT
        case .staleChange: status = IPSECHA_E_STATE
        }
        self.init(status, "the change failed: \(error)")
    }
}

// MARK: Calls

/// Runs a call on the member behind `pointer`: IPSECHA_E_NULL for NULL, the failure's status
/// (kept for `ipsecha_member_last_error`) when `body` throws, IPSECHA_OK otherwise.
func call(_ pointer: OpaquePointer?, _ body: (MemberHandle) throws(CAPIFailure) -> Void) -> Int32 {
    guard let handle = MemberHandle.from(pointer) else { return IPSECHA_E_NULL.rawValue }
    do throws(CAPIFailure) {
        try body(handle)
        return IPSECHA_OK.rawValue
    } catch {
        _ = handle.lastError.store(text: error.message)
        return error.status.rawValue
    }
}

/// ``call(_:_:)`` for the calls the header declares const: the failure is only returned, so
/// that what `ipsecha_member_last_error` handed out stays as it was.
func readingCall(_ pointer: OpaquePointer?, _ body: (MemberHandle) throws(CAPIFailure) -> Void) -> Int32 {
    guard let handle = MemberHandle.from(pointer) else { return IPSECHA_E_NULL.rawValue }
    do throws(CAPIFailure) {
        try body(handle)
        return IPSECHA_OK.rawValue
    } catch {
        return error.status.rawValue
    }
}

/// A caller's structure, after its `struct_size` (read alone first, so that a smaller
/// structure is never read past its end) says it has this ABI's layout.
func readStructure<Structure>(_ pointer: UnsafePointer<Structure>?, _ name: String) throws(CAPIFailure) -> Structure {
    guard let pointer else { throw CAPIFailure(IPSECHA_E_NULL, "\(name) is NULL") }
    try checkSize(UnsafeRawPointer(pointer), Structure.self, name)
    return pointer.pointee
}

/// Stores `value` into a caller's output structure, after the same check of its size.
func writeStructure<Structure>(_ value: Structure, to pointer: UnsafeMutablePointer<Structure>?, _ name: String) throws(CAPIFailure) {
    guard let pointer else { throw CAPIFailure(IPSECHA_E_NULL, "\(name) is NULL") }
    try checkSize(UnsafeRawPointer(pointer), Structure.self, name)
    pointer.pointee = value
}

private func checkSize<Structure>(_ pointer: UnsafeRawPointer, _: Structure.Type, _ name: String) throws(CAPIFailure) {
    let size = pointer.loadUnaligned(as: UInt32.self)
    guard size == MemoryLayout<Structure>.size else {
        throw CAPIFailure(IPSECHA_E_STRUCT_SIZE, "\(name).struct_size is \(size); this library (ABI \(IPSECHA_ABI_VERSION)) knows \(MemoryLayout<Structure>.size)")
    }
}

/// The structure's own size, as its `struct_size` field holds it.
func structSize<Structure>(_: Structure.Type) -> UInt32 { UInt32(MemoryLayout<Structure>.size) }

/// A caller's buffer of `count` elements, refused when NULL with a count, or longer than `limit`.
func buffer<Element>(_ pointer: UnsafePointer<Element>?, _ count: Int, limit: Int, _ name: String) throws(CAPIFailure) -> UnsafeBufferPointer<Element> {
    guard count >= 0, count <= limit else { throw CAPIFailure(IPSECHA_E_INVALID_ARGUMENT, "\(name): \(count) is more than \(limit)") }
    if count == 0 { return UnsafeBufferPointer(start: nil, count: 0) }
    guard let pointer else { throw CAPIFailure(IPSECHA_E_NULL, "\(name) is NULL with a length of \(count)") }
    return UnsafeBufferPointer(start: pointer, count: count)
}

/// A reason from C: at most 256 bytes of a NUL-terminated string, or "" for NULL.
func reasonText(_ pointer: UnsafePointer<CChar>?) -> String {
    guard let pointer else { return "" }
    let length = strnlen(pointer, 256)
    return String(decoding: UnsafeRawBufferPointer(start: pointer, count: length), as: UTF8.self)
}

/// Static C strings: what the header calls static lives as long as the library. Each is
/// written once, when first used, and never again, so sharing them between threads is safe.
enum StaticText {
    nonisolated(unsafe) static let empty = StaticText.make("")
    nonisolated(unsafe) static let version = StaticText.make("0.2.0")

    /// The plan's reason for each IKE SA decision, made once.
    nonisolated(unsafe) static let ikeSATakeoverReasons: [IKESATakeoverReason: UnsafePointer<CChar>] = Dictionary(
        uniqueKeysWithValues: IKESATakeoverReason.allCases.map { ($0, make($0.description)) })

    nonisolated(unsafe) static let statusNames: [Int32: UnsafePointer<CChar>] = Dictionary(
        uniqueKeysWithValues: [
            (IPSECHA_OK, "IPSECHA_OK"), (IPSECHA_NO_ACTION, "IPSECHA_NO_ACTION"), (IPSECHA_E_NULL, "IPSECHA_E_NULL"),
            (IPSECHA_E_STRUCT_SIZE, "IPSECHA_E_STRUCT_SIZE"), (IPSECHA_E_INVALID_ARGUMENT, "IPSECHA_E_INVALID_ARGUMENT"),
            (IPSECHA_E_BUFFER_TOO_SMALL, "IPSECHA_E_BUFFER_TOO_SMALL"), (IPSECHA_E_NOT_ACTIVE, "IPSECHA_E_NOT_ACTIVE"),
            (IPSECHA_E_UNKNOWN_IKE_SA, "IPSECHA_E_UNKNOWN_IKE_SA"), (IPSECHA_E_UNKNOWN_CHILD_SA, "IPSECHA_E_UNKNOWN_CHILD_SA"),
            (IPSECHA_E_EXISTS, "IPSECHA_E_EXISTS"), (IPSECHA_E_STATE, "IPSECHA_E_STATE"), (IPSECHA_E_DATA_PLANE, "IPSECHA_E_DATA_PLANE"),
            (IPSECHA_E_KEY, "IPSECHA_E_KEY"), (IPSECHA_E_NOT_FOUND, "IPSECHA_E_NOT_FOUND"),
            (IPSECHA_E_SEQUENCE_EXHAUSTED, "IPSECHA_E_SEQUENCE_EXHAUSTED"), (IPSECHA_E_REPLAYED, "IPSECHA_E_REPLAYED"),
            (IPSECHA_E_STALE, "IPSECHA_E_STALE"),
        ].map { ($0.0.rawValue, make($0.1)) })
    nonisolated(unsafe) static let unknownStatus = StaticText.make("IPSECHA_E_UNKNOWN")

    /// A copy of `text` that is never freed.
    private static func make(_ text: String) -> UnsafePointer<CChar> { UnsafePointer(strdup(text)!) }
}

// MARK: Versions and names

@c @implementation
public func ipsecha_abi_version() -> UInt32 { UInt32(IPSECHA_ABI_VERSION) }

@c @implementation
public func ipsecha_version() -> UnsafePointer<CChar>? { StaticText.version }

@c @implementation
public func ipsecha_status_name(_ status: Int32) -> UnsafePointer<CChar>? { StaticText.statusNames[status] ?? StaticText.unknownStatus }

@c @implementation
public func ipsecha_member_last_error(_ member: OpaquePointer?) -> UnsafePointer<CChar>? {
    guard let handle = MemberHandle.from(member) else { return StaticText.empty }
    return handle.lastError.pointer
}
