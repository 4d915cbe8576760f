internal import Glibc

/// Reads a secret (a cluster key, an IKE pre-shared key) from a file the way a gateway should:
/// only a regular file, not reached through a symbolic link, owned by the user the process runs
/// as and closed to group and others (`chmod 600`), of a length in the expected range (never
/// silently cut), into `sodium_malloc` memory that is wiped once the caller has copied what it
/// needs. A file that fails any check is refused with a ``SecretFileError`` that names it.
public enum SecretFile {
    /// Calls `body` with the secret in `path`, without one trailing newline (LF or CR LF) when
    /// `dropTrailingNewline` is set (a PSK typed into an editor), once the file passed every
    /// check and holds a number of bytes in `length`. The bytes are wiped when `body` returns:
    /// copy them into key storage (``ChannelKey``, `KeyMaterial`), not into an array.
    public static func read<Result>(
        _ path: String, length: ClosedRange<Int>, dropTrailingNewline: Bool = false,
        _ body: (UnsafeRawBufferPointer) throws -> Result
    ) throws -> Result {
        let descriptor = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        guard descriptor >= 0 else {
            let error = errno
            throw error == ELOOP ? SecretFileError.symbolicLink(path) : SecretFileError.cannotOpen(path, errno: error)
        }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw SecretFileError.cannotOpen(path, errno: errno) }
        guard status.st_mode & S_IFMT == S_IFREG else { throw SecretFileError.notARegularFile(path) }
        guard status.st_uid == geteuid() else { throw SecretFileError.ownedByAnotherUser(path, owner: status.st_uid) }
        guard status.st_mode & 0o077 == 0 else { throw SecretFileError.accessibleByOthers(path, mode: UInt32(status.st_mode & 0o777)) }

        // One byte more than the longest secret (two with a newline to drop), so that a longer
        // file is seen as such instead of cut.
        let capacity = length.upperBound + (dropTrailingNewline ? 3 : 1)
        try Sodium.initialize()
        guard let buffer = SodiumPrimitives.guardedAllocate(capacity) else { throw SodiumError.allocationFailed }
        defer { SodiumPrimitives.guardedFree(buffer) }
        var count = 0
        while count < capacity {
            let got = Glibc.read(descriptor, buffer + count, capacity - count)
            if got == 0 { break }
            if got < 0 {
                if errno == EINTR { continue }
                throw SecretFileError.readFailed(path, errno: errno)
            }
            count += got
        }
        let bytes = buffer.assumingMemoryBound(to: UInt8.self)
        if dropTrailingNewline, count > 0, bytes[count - 1] == 0x0A {
            count -= 1
            if count > 0, bytes[count - 1] == 0x0D { count -= 1 }
        }
        guard length.contains(count) else { throw SecretFileError.wrongLength(path, count: count, expected: length) }
        return try body(UnsafeRawBufferPointer(start: buffer, count: count))
    }
}

/// Why ``SecretFile`` refused a file.
public enum SecretFileError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The file could not be opened or examined (the `errno`).
    case cannotOpen(String, errno: Int32)
    /// The last component of the path is a symbolic link: whoever can write the directory can
    /// point it elsewhere.
    case symbolicLink(String)
    /// Not a regular file (a directory, a device, a FIFO).
    case notARegularFile(String)
    /// The file belongs to another user than the one the process runs as.
    case ownedByAnotherUser(String, owner: UInt32)
    /// Group or others may read or write the file (the permission bits): `chmod 600` it.
    case accessibleByOthers(String, mode: UInt32)
    /// The secret's length (after the dropped newline) is outside the expected range; an empty
    /// or short pre-shared key is as good as none, and a longer file is not silently cut.
    case wrongLength(String, count: Int, expected: ClosedRange<Int>)
    /// Reading failed (the `errno`).
    case readFailed(String, errno: Int32)

    public var description: String {
        switch self {
        case .cannotOpen(let path, let error): "cannot open \(path): \(String(cString: strerror(error)))"
        case .symbolicLink(let path): "\(path) is a symbolic link; name the file itself"
        case .notARegularFile(let path): "\(path) is not a regular file"
        case .ownedByAnotherUser(let path, let owner): "\(path) belongs to user \(owner), not to the user this process runs as (\(geteuid()))"
        case .accessibleByOthers(let path, let mode):
            "\(path) has mode \(String(mode, radix: 8)); group and others must have no access (chmod 600)"
        case .wrongLength(let path, let count, let expected):
            expected.count == 1
                ? "\(path) holds \(count) bytes; it must hold exactly \(expected.lowerBound)"
                : "\(path) holds \(count) bytes; it must hold \(expected.lowerBound) to \(expected.upperBound)"
        case .readFailed(let path, let error): "cannot read \(path): \(String(cString: strerror(error)))"
        }
    }
}

extension ChannelKey {
    /// The cluster key in `path`: exactly 32 bytes, in a file ``SecretFile`` accepts.
    public init(contentsOfFile path: String) throws {
        self = try SecretFile.read(path, length: Self.byteCount...Self.byteCount) { bytes throws(ChannelSecurityError) in
            try ChannelKey(bytes: bytes)
        }
    }
}
