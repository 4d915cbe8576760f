public import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What the test targets share to run the package's harness scripts and binaries as child
/// processes (no product: only the tests depend on it).
public enum Harness {
    /// The package's root directory.
    public static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The build directory of the running tests: where the package's executables are.
    public static func executable(_ name: String) -> URL {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent(name)
    }

    /// Runs `executable` to its end, standard output and error together.
    public static func run(
        _ executable: URL, _ arguments: [String], environment: [String: String] = [:], in directory: URL? = nil
    ) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        if let directory { process.currentDirectoryURL = directory }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, text)
    }

    /// Runs one of the package's scripts with bash from the package root and prints what it
    /// said; nil when it skipped (exit 77: something it needs is missing, as its message says).
    public static func script(_ path: String, _ arguments: [String] = [], environment: [String: String] = [:]) throws -> (status: Int32, output: String)? {
        let (status, text) = try run(
            URL(fileURLWithPath: "/bin/bash"), [packageRoot.appendingPathComponent(path).path] + arguments, environment: environment, in: packageRoot)
        print(text.trimmingCharacters(in: .whitespacesAndNewlines))
        return status == 77 ? nil : (status, text)
    }
}

/// A child process that runs while the test goes on, its standard output and error collected
/// as they come.
public final class RunningProcess: @unchecked Sendable {
    public let process = Process()
    private let lock = NSLock()
    private var outputBuffer = ""
    private var errorBuffer = ""

    public init(_ executable: URL, _ arguments: [String]) throws {
        process.executableURL = executable
        process.arguments = arguments
        let output = Pipe()
        let error = Pipe()
        process.standardOutput = output
        process.standardError = error
        output.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self, !data.isEmpty else { return }
            self.lock.withLock { self.outputBuffer += String(decoding: data, as: UTF8.self) }
        }
        error.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self, !data.isEmpty else { return }
            self.lock.withLock { self.errorBuffer += String(decoding: data, as: UTF8.self) }
        }
        try process.run()
    }

    /// Standard output so far.
    public var output: String { lock.withLock { outputBuffer } }
    /// Standard output's lines so far.
    public var lines: [String] { output.split(separator: "\n").map(String.init) }
    /// Standard error's lines so far.
    public var errorLines: [String] { lock.withLock { errorBuffer.split(separator: "\n").map(String.init) } }

    /// Waits up to `seconds` for a line of standard output that satisfies `matches`.
    public func waitForLine(seconds: Double, _ matches: (String) -> Bool) -> String? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let line = lines.last(where: matches) { return line }
            if !process.isRunning { return lines.last(where: matches) }
            usleep(10_000)
        }
        return nil
    }

    /// SIGKILL, and waits for the end.
    public func kill() {
        if process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}
