public import CIPsecHA
internal import Glibc
internal import Logging
internal import Synchronization

/// Where the library's log lines go, for every logger it made: a C function, or standard error.
/// swift-log is linked into libipsecha privately (only `ipsecha_*` is exported), so bootstrapping
/// its logging system here touches no other Swift code in the daemon.
struct CLogSink: @unchecked Sendable {
    // @unchecked: the context is the C caller's, handed back to its function as is.
    var function: ipsecha_log_function?
    var context: UnsafeMutableRawPointer?
    var minimum: Logger.Level
}

let logSink = Mutex(CLogSink(function: nil, context: nil, minimum: .info))
/// Whether the logging system was bootstrapped: once, before the first member or log function,
/// so that every member's loggers read the sink at each line (swift-log refuses a second
/// bootstrap, and a logger keeps the handler it was made with).
private let logBootstrap = Mutex(false)

func bootstrapLogging() {
    logBootstrap.withLock { bootstrapped in
        guard !bootstrapped else { return }
        LoggingSystem.bootstrap { CLogHandler(label: $0) }
        bootstrapped = true
    }
}

/// Forwards each line to the sink's function, or writes it to standard error.
struct CLogHandler: LogHandler {
    let label: String
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level {
        get { logSink.withLock { $0.minimum } }
        set {}
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let sink = logSink.withLock { $0 }
        guard event.level >= sink.minimum else { return }
        let details = metadata.merging(event.metadata ?? [:]) { $1 }.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        let message = ([event.message.description] + details).joined(separator: " ")
        guard let function = sink.function else {
            let line = "\(event.level) \(label): \(message)\n"
            _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
            return
        }
        let level = [Logger.Level.trace, .debug, .info, .notice, .warning, .error, .critical].firstIndex(of: event.level) ?? 2
        label.withCString { label in message.withCString { message in function(sink.context, Int32(level), label, message) } }
    }
}

@c @implementation
public func ipsecha_set_log_function(_ function: ipsecha_log_function?, _ context: UnsafeMutableRawPointer?, _ minimumLevel: Int32) -> Int32 {
    let levels: [Logger.Level] = [.trace, .debug, .info, .notice, .warning, .error, .critical]
    guard levels.indices.contains(Int(minimumLevel)) else { return IPSECHA_E_INVALID_ARGUMENT.rawValue }
    logSink.withLock { $0 = CLogSink(function: function, context: context, minimum: levels[Int(minimumLevel)]) }
    bootstrapLogging()
    return IPSECHA_OK.rawValue
}
