import Foundation
import Yams

/// A configuration file that says what the command line would: a YAML mapping of the gateway's
/// long option names (without the dashes) to their values, one option per key.
///
/// ```yaml
/// member: 1
/// active: true                 # a flag: true sets it, false leaves it out
/// cluster-address: 192.0.2.1
/// sync-peer: ["2=10.0.0.2:4510"]   # a repeated option: a sequence
/// ```
///
/// The file becomes arguments in front of the command line's (``arguments``), so that the
/// command line overrides what the file says for an option that takes one value, and adds to
/// a repeated one. Every error names the file and the line: YAML's own (with the column),
/// keys and values of the wrong shape, and (``explain(_:commandLine:)``) the errors the option parser and
/// the gateway report later about an option the file set.
public struct GatewayConfigurationFile: Sendable {
    /// One key of the file.
    public struct Entry: Sendable, Hashable {
        /// The option's long name, without the dashes.
        public let key: String
        /// The values, in order: one for an option, several for a repeated one, none for a flag.
        public let values: [String]
        /// Whether the key is a flag that is set (`true`); false for options.
        public let isFlag: Bool
        /// The key's line in the file, from 1.
        public let line: Int
    }

    /// The file's path, as given.
    public let path: String
    /// The keys that say something, in the file's order (a flag set to `false` is left out).
    public let entries: [Entry]
    /// The largest file read: a configuration is a few hundred bytes; a mistake is not read
    /// whole into memory.
    public static let maximumSize = 1 << 20

    /// Parses `contents`, read from `path` (for the messages).
    public init(path: String, contents: String) throws(GatewayConfigurationError) {
        self.path = path
        let root: Node?
        do {
            // No implicit types: `yes`, `on` or `0x10` stay the text they are; the option
            // parser reads the values as the command line's.
            root = try Yams.compose(yaml: contents, .basic)
        } catch let error as YamlError {
            throw Self.error(path: path, from: error, contents: contents)
        } catch {
            throw GatewayConfigurationError(path: path, line: nil, message: "\(error)")
        }
        guard let root else {
            entries = []
            return
        }
        guard let mapping = root.mapping else {
            throw GatewayConfigurationError(path: path, line: root.mark?.line, message: "the file must be a mapping of option names to values")
        }
        var entries: [Entry] = []
        // A key given twice never gets here: Yams refuses the mapping (see error(path:from:contents:)).
        for (keyNode, valueNode) in mapping {
            let line = keyNode.mark?.line ?? 0
            guard let key = keyNode.scalar?.string, Self.isOptionName(key) else {
                throw GatewayConfigurationError(path: path, line: line, message: "a key is an option's long name without the dashes (like sync-peer)")
            }
            guard key != "config" else {
                throw GatewayConfigurationError(path: path, line: line, message: "config: configuration files do not include others")
            }
            switch valueNode {
            case .scalar(let scalar) where scalar.style == .plain && (scalar.string == "true" || scalar.string == "false"):
                if scalar.string == "true" { entries.append(Entry(key: key, values: [], isFlag: true, line: line)) }
            case .scalar(let scalar) where scalar.style == .plain && scalar.string.isEmpty:
                throw GatewayConfigurationError(path: path, line: line, message: "\(key): no value")
            case .scalar(let scalar):
                entries.append(Entry(key: key, values: [scalar.string], isFlag: false, line: line))
            case .sequence(let sequence):
                var values: [String] = []
                for item in sequence {
                    guard let value = item.scalar?.string else {
                        throw GatewayConfigurationError(path: path, line: item.mark?.line ?? line, message: "\(key): a sequence of plain values")
                    }
                    values.append(value)
                }
                guard !values.isEmpty else { throw GatewayConfigurationError(path: path, line: line, message: "\(key): an empty sequence") }
                entries.append(Entry(key: key, values: values, isFlag: false, line: line))
            case .mapping, .alias:
                throw GatewayConfigurationError(path: path, line: line, message: "\(key): a value or a sequence of values, not a mapping")
            }
        }
        self.entries = entries
    }

    /// Reads and parses the file at `path`.
    public static func read(_ path: String) throws(GatewayConfigurationError) -> GatewayConfigurationFile {
        let data: Data
        do {
            let attributes = try FileManager.default.attributesOfItem(atPath: path)
            if let size = attributes[.size] as? Int, size > maximumSize {
                throw GatewayConfigurationError(path: path, line: nil, message: "larger than \(maximumSize) bytes")
            }
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch let error as GatewayConfigurationError {
            throw error
        } catch {
            throw GatewayConfigurationError(path: path, line: nil, message: "cannot read: \(error.localizedDescription)")
        }
        guard let contents = String(data: data, encoding: .utf8) else {
            throw GatewayConfigurationError(path: path, line: nil, message: "not UTF-8")
        }
        return try GatewayConfigurationFile(path: path, contents: contents)
    }

    /// The command-line arguments the file stands for.
    public var arguments: [String] {
        entries.flatMap { entry in entry.isFlag ? ["--\(entry.key)"] : entry.values.flatMap { ["--\(entry.key)", $0] } }
    }

    /// `message` (from the option parser or the gateway) with the file and line of the option
    /// it names, when the file set that option and `commandLine` did not; nil otherwise.
    public func explain(_ message: String, commandLine: [String] = []) -> GatewayConfigurationError? {
        for entry in entries where Self.mentions(message, option: entry.key) {
            if commandLine.contains(where: { $0 == "--\(entry.key)" || $0.hasPrefix("--\(entry.key)=") }) { continue }
            return GatewayConfigurationError(path: path, line: entry.line, message: message)
        }
        return nil
    }

    static func mentions(_ message: String, option key: String) -> Bool {
        var rest = message[...]
        while let range = rest.range(of: "--\(key)") {
            let next = rest[range.upperBound...].first
            if next.map({ !($0.isLetter || $0.isNumber || $0 == "-") }) ?? true { return true }
            rest = rest[range.upperBound...]
        }
        return false
    }

    static func isOptionName(_ key: String) -> Bool {
        guard let first = key.unicodeScalars.first, ("a"..."z").contains(first) else { return false }
        return key.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" }
    }

    static func error(path: String, from error: YamlError, contents: String) -> GatewayConfigurationError {
        switch error {
        case .duplicatedKeysInMapping(let duplicates, let context):
            // Yams points at the mapping; the operator needs the line of the key given again.
            let key = duplicates.first ?? ""
            let lines = contents.split(separator: "\n", omittingEmptySubsequences: false).enumerated()
                .filter { $0.element.hasPrefix("\(key):") }.map { $0.offset + 1 }
            return GatewayConfigurationError(
                path: path, line: lines.count >= 2 ? lines[1] : context.mark.line,
                message: "\(key): given again\(lines.isEmpty ? "" : " (first on line \(lines[0]))"); a repeated option takes a sequence")
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
            return GatewayConfigurationError(path: path, line: mark.line, column: mark.column, message: problem)
        default:
            return GatewayConfigurationError(path: path, line: nil, message: "\(error)")
        }
    }
}

/// An error in a configuration file, with where it is: `path:line[:column]: message`.
public struct GatewayConfigurationError: Error, Sendable, Hashable, CustomStringConvertible {
    public let path: String
    /// From 1; nil when the error is about the whole file.
    public let line: Int?
    public var column: Int?
    public let message: String

    public init(path: String, line: Int?, column: Int? = nil, message: String) {
        self.path = path
        self.line = line
        self.column = column
        self.message = message
    }

    public var description: String {
        var location = path
        if let line { location += ":\(line)" }
        if let column { location += ":\(column)" }
        return "\(location): \(message)"
    }
}
