#if canImport(Glibc)
import Glibc
#endif

/// The process's resident set size in bytes, from /proc/self/statm (Linux); nil elsewhere.
func residentMemoryBytes() -> Int? {
    #if canImport(Glibc)
    let descriptor = open("/proc/self/statm", O_RDONLY)
    guard descriptor >= 0 else { return nil }
    defer { close(descriptor) }
    var buffer = [UInt8](repeating: 0, count: 128)
    let length = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
    guard length > 0 else { return nil }
    let fields = String(decoding: buffer[0..<length], as: UTF8.self).split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return nil }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    #else
    return nil
    #endif
}

/// Minor page faults the process has taken so far (first touches of fresh memory among them),
/// from getrusage; nil where that is not available.
func minorPageFaults() -> Int? {
    #if canImport(Glibc)
    var usage = rusage()
    guard getrusage(RUSAGE_SELF.rawValue, &usage) == 0 else { return nil }
    return usage.ru_minflt
    #else
    return nil
    #endif
}

/// The process's CPU time so far in seconds, in user space and in the kernel (page faults and
/// the zeroing of fresh pages among it), from getrusage; nil where that is not available.
func processorTimes() -> (user: Double, system: Double)? {
    #if canImport(Glibc)
    var usage = rusage()
    guard getrusage(RUSAGE_SELF.rawValue, &usage) == 0 else { return nil }
    func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
    return (seconds(usage.ru_utime), seconds(usage.ru_stime))
    #else
    return nil
    #endif
}
