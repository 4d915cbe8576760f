import IPsecHACore

/// Appends big-endian integers and byte strings to a growing buffer: the encoding side of
/// the synch protocol. It writes through a pointer into memory it owns (no copy-on-write check
/// per byte) and hands out the result as an array at the end.
struct ByteWriter: ~Copyable {
    private var base: UnsafeMutableRawPointer
    private var capacity: Int
    private(set) var count = 0

    init(capacity: Int = 256) {
        self.capacity = max(capacity, 16)
        base = .allocate(byteCount: self.capacity, alignment: 8)
    }

    deinit { base.deallocate() }

    /// The bytes written so far.
    var bytes: [UInt8] { [UInt8](UnsafeRawBufferPointer(start: base, count: count)) }

    /// Calls `body` with the bytes written so far, in place.
    func withBytes<Result>(_ body: (UnsafeRawBufferPointer) -> Result) -> Result {
        body(UnsafeRawBufferPointer(start: base, count: count))
    }

    /// The bytes written before `offset`.
    func bytes(upTo offset: Int) -> [UInt8] {
        [UInt8](UnsafeRawBufferPointer(start: base, count: min(max(offset, 0), count)))
    }

    /// Forgets what was written from `offset` on.
    mutating func truncate(to offset: Int) { count = min(count, max(offset, 0)) }

    /// Forgets what was written before `offset`, moving the rest to the start.
    mutating func removeFirst(_ offset: Int) {
        let removed = min(max(offset, 0), count)
        // copyMemory is a memmove: the regions may overlap.
        base.copyMemory(from: base + removed, byteCount: count - removed)
        count -= removed
    }

    @inline(__always)
    private mutating func reserve(_ extra: Int) {
        guard count + extra > capacity else { return }
        var newCapacity = capacity * 2
        while newCapacity < count + extra { newCapacity *= 2 }
        let newBase = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 8)
        newBase.copyMemory(from: base, byteCount: count)
        base.deallocate()
        base = newBase
        capacity = newCapacity
    }

    // Inlined: a field read or written is a few instructions; a call costs as much again.
    @inline(__always)
    mutating func write(_ value: UInt8) { writeInteger(value) }
    @inline(__always)
    mutating func write(_ value: UInt16) { writeInteger(value) }
    @inline(__always)
    mutating func write(_ value: UInt32) { writeInteger(value) }
    @inline(__always)
    mutating func write(_ value: UInt64) { writeInteger(value) }
    @inline(__always)
    mutating func write(_ value: Bool) { writeInteger(UInt8(value ? 1 : 0)) }

    @inline(__always)
    mutating func write(bytes other: UnsafeRawBufferPointer) {
        reserve(other.count)
        if let source = other.baseAddress { (base + count).copyMemory(from: source, byteCount: other.count) }
        count += other.count
    }

    @inline(__always)
    mutating func write(bytes other: [UInt8]) {
        other.withUnsafeBytes { write(bytes: $0) }
    }

    @inline(__always)
    private mutating func writeInteger<T: FixedWidthInteger>(_ value: T) {
        reserve(MemoryLayout<T>.size)
        (base + count).storeBytes(of: value.bigEndian, as: T.self)
        count += MemoryLayout<T>.size
    }

    /// Writes an unsigned LEB128 variable-length integer: 7 bits a byte, low bits first, the
    /// high bit set on every byte but the last (1 to 10 bytes).
    @inline(__always)
    mutating func writeVarint(_ value: UInt64) {
        withReservedCursor(10) { $0.writeVarint(value) }
    }

    /// Runs `body` with a cursor into at least `capacity` free bytes (one capacity check for a
    /// run of small fields instead of one per field); `body` must not write more than that.
    @inline(__always)
    mutating func withReservedCursor(_ capacity: Int, _ body: (inout WriteCursor) -> Void) {
        reserve(capacity)
        var cursor = WriteCursor(pointer: base + count)
        body(&cursor)
        let written = cursor.pointer - (base + count)
        // Past the reservation, memory is already overwritten: stop rather than go on with it.
        precondition(written <= capacity, "wrote \(written) bytes into a reservation of \(capacity)")
        count += written
    }

    /// Overwrites a 16-bit value written earlier at `offset` (a length filled in afterwards).
    mutating func patch(_ value: UInt16, at offset: Int) {
        (base + offset).storeBytes(of: value.bigEndian, as: UInt16.self)
    }

    /// Writes a length-prefixed (16-bit) block whose content `body` writes.
    mutating func writeBlock(_ body: (inout ByteWriter) throws(SyncCodecError) -> Void) throws(SyncCodecError) {
        let start = count
        write(UInt16(0))
        try body(&self)
        let length = count - start - 2
        guard length <= Int(UInt16.max) else { throw .recordTooLarge(length) }
        patch(UInt16(length), at: start)
    }
}

/// Where ``ByteWriter/withReservedCursor(_:_:)`` writes: a pointer into reserved space.
struct WriteCursor {
    var pointer: UnsafeMutableRawPointer

    @inline(__always)
    mutating func write(_ value: UInt8) {
        pointer.storeBytes(of: value, as: UInt8.self)
        pointer += 1
    }

    /// One byte, 1 or 0, as `ByteWriter` writes a `Bool`.
    @inline(__always)
    mutating func write(_ value: Bool) { write(UInt8(value ? 1 : 0)) }

    @inline(__always)
    mutating func write(_ value: UInt16) {
        pointer.storeBytes(of: value.bigEndian, toByteOffset: 0, as: UInt16.self)
        pointer += 2
    }

    @inline(__always)
    mutating func write(_ value: UInt32) {
        pointer.storeBytes(of: value.bigEndian, toByteOffset: 0, as: UInt32.self)
        pointer += 4
    }

    @inline(__always)
    mutating func write(bytes: UnsafeRawBufferPointer) {
        if let source = bytes.baseAddress { pointer.copyMemory(from: source, byteCount: bytes.count) }
        pointer += bytes.count
    }

    @inline(__always)
    mutating func write(_ value: UInt64) {
        pointer.storeBytes(of: value.bigEndian, toByteOffset: 0, as: UInt64.self)
        pointer += 8
    }

    /// As ``ByteWriter/writeVarint(_:)``: at most 10 bytes.
    @inline(__always)
    mutating func writeVarint(_ value: UInt64) {
        var remaining = value
        while remaining >= 0x80 {
            pointer.storeBytes(of: UInt8(truncatingIfNeeded: remaining) | 0x80, as: UInt8.self)
            pointer += 1
            remaining &>>= 7
        }
        pointer.storeBytes(of: UInt8(remaining), as: UInt8.self)
        pointer += 1
    }
}

/// Reads big-endian integers from received bytes, never past their end: every read that would
/// go past it throws ``SyncCodecError/truncated``, so malformed input cannot crash the decoder.
///
/// It reads through the bytes' address, one bounds check per field instead of a collection
/// access per byte; so it exists only inside ``reading(_:_:)``, which holds the bytes for it.
/// Never keep a reader, or bytes it returned, beyond that call.
struct ByteReader {
    private let buffer: UnsafeRawBufferPointer
    private(set) var position: Int
    private let end: Int

    private init(_ buffer: UnsafeRawBufferPointer, from start: Int = 0, to end: Int? = nil) {
        self.buffer = buffer
        position = start
        self.end = end ?? buffer.count
    }

    /// Runs `body` with a reader over `bytes`.
    static func reading<Result>(
        _ bytes: ArraySlice<UInt8>, _ body: (inout ByteReader) throws(SyncCodecError) -> Result
    ) throws(SyncCodecError) -> Result {
        let outcome = bytes.withUnsafeBytes { buffer -> Swift.Result<Result, SyncCodecError> in
            var reader = ByteReader(buffer)
            do throws(SyncCodecError) { return .success(try body(&reader)) } catch { return .failure(error) }
        }
        return try outcome.get()
    }

    var remaining: Int { end &- position }
    var isAtEnd: Bool { position == end }

    @inline(__always)
    mutating func readUInt8() throws(SyncCodecError) -> UInt8 {
        guard position < end else { throw .truncated }
        defer { position &+= 1 }
        return buffer[position]
    }

    // Inlined: a field read or written is a few instructions; a call costs as much again.
    @inline(__always)
    mutating func readUInt16() throws(SyncCodecError) -> UInt16 { try readInteger() }
    @inline(__always)
    mutating func readUInt32() throws(SyncCodecError) -> UInt32 { try readInteger() }
    @inline(__always)
    mutating func readUInt64() throws(SyncCodecError) -> UInt64 { try readInteger() }

    @inline(__always)
    mutating func readBool() throws(SyncCodecError) -> Bool {
        switch try readUInt8() {
        case 0: return false
        case 1: return true
        case let other: throw .invalidValue("boolean \(other)")
        }
    }

    /// The next `count` bytes, valid as long as the reader is.
    mutating func readBytes(_ count: Int) throws(SyncCodecError) -> UnsafeRawBufferPointer {
        guard count >= 0, remaining >= count else { throw .truncated }
        defer { position &+= count }
        return UnsafeRawBufferPointer(rebasing: buffer[position..<position &+ count])
    }

    /// Reads an unsigned LEB128 variable-length integer written by ``ByteWriter/writeVarint(_:)``.
    /// Refuses encodings longer than 10 bytes, values beyond 64 bits, and non-minimal encodings
    /// (a trailing zero byte), so that every value has exactly one encoding.
    @inline(__always)
    mutating func readVarint() throws(SyncCodecError) -> UInt64 {
        guard position < end else { throw .truncated }
        let first = buffer[position]
        if first < 0x80 {
            position &+= 1
            return UInt64(first)
        }
        var index = position &+ 1
        var value = UInt64(first & 0x7F)
        var shift: UInt64 = 7
        // Bytes 2 to 9 carry 7 bits each; only the 10th can overflow 64 bits, so only it is
        // checked for that.
        while shift < 63 {
            guard index < end else { throw .truncated }
            let byte = buffer[index]
            index &+= 1
            value |= UInt64(byte & 0x7F) &<< shift
            if byte < 0x80 {
                guard byte != 0 else { throw .invalidValue("non-minimal varint") }
                position = index
                return value
            }
            shift &+= 7
        }
        guard index < end else { throw .truncated }
        let last = buffer[index]
        guard last <= 1 else { throw .invalidValue("varint beyond 64 bits") }
        guard last == 1 else { throw .invalidValue("non-minimal varint") }
        position = index &+ 1
        return value | 1 &<< 63
    }

    /// A varint that must fit 32 bits.
    @inline(__always)
    mutating func readVarint32() throws(SyncCodecError) -> UInt32 {
        let value = try readVarint()
        guard let narrow = UInt32(exactly: value) else { throw .invalidValue("varint \(value) beyond 32 bits") }
        return narrow
    }

    /// Reads a 16-bit length and returns a reader over exactly that many bytes.
    mutating func readBlock() throws(SyncCodecError) -> ByteReader {
        let length = Int(try readUInt16())
        guard remaining >= length else { throw .truncated }
        defer { position &+= length }
        return ByteReader(buffer, from: position, to: position &+ length)
    }

    /// Throws unless every byte was consumed.
    func expectEnd() throws(SyncCodecError) {
        guard isAtEnd else { throw .trailingBytes(remaining) }
    }

    @inline(__always)
    private mutating func readInteger<T: FixedWidthInteger>() throws(SyncCodecError) -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { throw .truncated }
        defer { position &+= size }
        return T(bigEndian: buffer.loadUnaligned(fromByteOffset: position, as: T.self))
    }
}

/// Why bytes received on the synch channel could not be decoded. Decoding never changes state.
public enum SyncCodecError: Error, Sendable, Hashable {
    /// The input ends before the structure does.
    case truncated
    /// Bytes left over after a structure that must fill its block.
    case trailingBytes(Int)
    /// A field holds a value the format does not allow.
    case invalidValue(String)
    /// A record type marked critical (high bit) that this version does not know.
    case unknownCriticalRecord(UInt16)
    /// A record whose encoding exceeds 65,535 bytes.
    case recordTooLarge(Int)
    /// A structure the state model refused (for instance a Child SA with a reserved SPI).
    case invalidState(String)
}

extension UnsafeRawBufferPointer {
    /// Whether this buffer holds the same bytes as `other`, which has the same count. Eight bytes
    /// at a time, the last word overlapping the one before it: the decoder compares a cached
    /// selector list's encoding (15 bytes for one IPv4 selector) for every Child SA it reads, and
    /// a byte loop cost about 60 instructions a list there (elementsEqual's generic iteration ten
    /// times as much).
    @inline(__always)
    func hasSameBytes(as other: UnsafeRawBufferPointer) -> Bool {
        precondition(count == other.count)
        guard count >= 8 else {
            for index in 0..<count where self[index] != other[index] { return false }
            return true
        }
        var offset = 0
        while offset < count &- 8 {
            if loadUnaligned(fromByteOffset: offset, as: UInt64.self) != other.loadUnaligned(fromByteOffset: offset, as: UInt64.self) {
                return false
            }
            offset &+= 8
        }
        return loadUnaligned(fromByteOffset: count &- 8, as: UInt64.self)
            == other.loadUnaligned(fromByteOffset: count &- 8, as: UInt64.self)
    }
}
