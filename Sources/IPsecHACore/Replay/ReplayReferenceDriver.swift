/// The reference behaviour of a receiver's anti-replay processing, one packet per text line:
/// what `ikeha-demo replay` runs, and what other tools compare their own windows against.
///
/// Each line is the sender's true 64-bit sequence number in decimal, optionally followed by a
/// space and the word `forged`. Only the low 32 bits reach the window, as on the wire. The
/// integrity check is modelled as passing when the inferred number equals the true one (with
/// ESN the ICV covers the high-order bits) and the line is not forged. The answer to each line
/// is `<verdict> <inferred number>`, the verdict being `accept` (window updated), `replay`,
/// `stale` or `fail` (replay check passed, integrity check failed, no update).
public struct ReplayReferenceDriver: Sendable {
    /// The window under test.
    public private(set) var window: ReplayWindow
    /// Lines processed so far; the number of the next line is this plus one.
    public private(set) var lineCount: Int = 0

    /// A driver around a fresh window.
    public init(window: ReplayWindow) { self.window = window }

    /// Processes one line (without its line terminator) and returns the answer line.
    /// A malformed line throws, naming its line number, and changes nothing but the line count.
    public mutating func process(line: Substring) throws(ReplayReferenceLineError) -> String {
        lineCount += 1
        let packet = try ReplayReferencePacket(parsing: line, lineNumber: lineCount)
        let verdict = apply(packet)
        return "\(verdict.word) \(verdict.sequenceNumber)"
    }

    /// Runs one packet through check, modelled integrity check and commit.
    public mutating func apply(_ packet: ReplayReferencePacket) -> ReplayReferenceVerdict {
        switch window.check(wire: UInt32(truncatingIfNeeded: packet.trueSequenceNumber)) {
        case .replayed(let inferred):
            return .replay(inferred)
        case .stale(let inferred):
            return .stale(inferred)
        case .fresh(let inferred):
            guard inferred == packet.trueSequenceNumber, !packet.forged else { return .fail(inferred) }
            do {
                try window.commit(inferred)
                return .accept(inferred)
            } catch .replayed {
                return .replay(inferred)
            } catch {
                return .stale(inferred)
            }
        }
    }
}

/// One input line of ``ReplayReferenceDriver``.
public struct ReplayReferencePacket: Sendable, Hashable {
    /// The sequence number the sender really used (only its low 32 bits are on the wire).
    public var trueSequenceNumber: UInt64
    /// Whether the packet fails its integrity check whatever its number.
    public var forged: Bool

    /// A packet from its parts.
    public init(trueSequenceNumber: UInt64, forged: Bool) {
        self.trueSequenceNumber = trueSequenceNumber
        self.forged = forged
    }

    /// Parses `<decimal>` or `<decimal> forged`; a trailing carriage return is ignored.
    public init(parsing line: Substring, lineNumber: Int) throws(ReplayReferenceLineError) {
        var text = line
        if text.last == "\r" { text = text.dropLast() }
        let fields = text.split(separator: " ", omittingEmptySubsequences: false)
        guard fields.count == 1 || (fields.count == 2 && fields[1] == "forged") else {
            throw ReplayReferenceLineError(lineNumber: lineNumber, reason: .unexpectedFields)
        }
        let digits = fields[0]
        guard !digits.isEmpty, digits.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
            throw ReplayReferenceLineError(lineNumber: lineNumber, reason: .notADecimalNumber)
        }
        guard let value = UInt64(digits) else {
            throw ReplayReferenceLineError(lineNumber: lineNumber, reason: .numberTooLarge)
        }
        trueSequenceNumber = value
        forged = fields.count == 2
    }
}

/// The answer of ``ReplayReferenceDriver`` to one packet, with the inferred sequence number.
public enum ReplayReferenceVerdict: Sendable, Hashable {
    /// Passed both checks; the window was updated.
    case accept(UInt64)
    /// Inside the window and already seen.
    case replay(UInt64)
    /// Below the window, or 0.
    case stale(UInt64)
    /// Passed the replay check, failed the integrity check; the window was not updated.
    case fail(UInt64)

    /// The word printed for this verdict.
    public var word: String {
        switch self {
        case .accept: "accept"
        case .replay: "replay"
        case .stale: "stale"
        case .fail: "fail"
        }
    }

    /// The inferred 64-bit sequence number.
    public var sequenceNumber: UInt64 {
        switch self {
        case .accept(let value), .replay(let value), .stale(let value), .fail(let value): value
        }
    }
}

/// A malformed input line of ``ReplayReferenceDriver``.
public struct ReplayReferenceLineError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What is wrong with a line.
    public enum Reason: Sendable, Hashable {
        /// The sequence number is not a non-empty run of decimal digits.
        case notADecimalNumber
        /// The number does not fit 64 bits.
        case numberTooLarge
        /// More than a number and the word `forged`, or another word.
        case unexpectedFields
    }

    /// The 1-based number of the offending line.
    public var lineNumber: Int
    /// What is wrong with it.
    public var reason: Reason

    /// An error for line `lineNumber`.
    public init(lineNumber: Int, reason: Reason) {
        self.lineNumber = lineNumber
        self.reason = reason
    }

    public var description: String {
        let text =
            switch reason {
            case .notADecimalNumber: "expected a decimal sequence number"
            case .numberTooLarge: "sequence number does not fit 64 bits"
            case .unexpectedFields: "expected '<sequence number>' or '<sequence number> forged'"
            }
        return "line \(lineNumber): \(text)"
    }
}
