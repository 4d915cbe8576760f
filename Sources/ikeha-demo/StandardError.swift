#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes all of `text` to a file descriptor at once, unbuffered (the C `stdout` and `stderr`
/// globals are not concurrency-safe to reference from Swift 6).
func writeUnbuffered(_ text: String, to descriptor: Int32) {
    var text = text
    text.withUTF8 { bytes in
        var offset = 0
        while offset < bytes.count {
            let written = Glibc.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
            if written <= 0 { return }
            offset += written
        }
    }
}

enum StandardError {
    /// Writes `text` to file descriptor 2, unbuffered.
    static func write(_ text: String) { writeUnbuffered(text, to: 2) }
}
