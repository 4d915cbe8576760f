import IPsecHACore
import Testing

@Suite("Reference-behaviour driver (ikeha-demo replay)")
struct ReplayReferenceDriverTests {
    @Test func answersEachLineWithVerdictAndInferredNumber() throws {
        var driver = ReplayReferenceDriver(window: try ReplayWindow(size: 64, extendedSequenceNumbers: true))
        let lines = ["5", "5", "6 forged", "6", "0", "300", "100", "4294967296\r"]
        let answers = try lines.map { line throws(ReplayReferenceLineError) in try driver.process(line: line[...]) }
        #expect(answers == ["accept 5", "replay 5", "fail 6", "accept 6", "stale 0", "accept 300", "fail 4294967396",
            "accept 4294967296"])
        #expect(driver.lineCount == 8)
    }

    static let malformed: [(String, ReplayReferenceLineError.Reason)] = [
        ("", .notADecimalNumber), ("abc", .notADecimalNumber), ("-1", .notADecimalNumber), ("+1", .notADecimalNumber),
        ("1 2", .unexpectedFields), ("1 forged extra", .unexpectedFields), ("1  forged", .unexpectedFields),
        ("1 Forged", .unexpectedFields), (" 1", .unexpectedFields), ("18446744073709551616", .numberTooLarge),
        ("1\u{0}", .notADecimalNumber),
    ]

    @Test(arguments: malformed)
    func malformedLinesNameTheirLineNumberAndChangeNothing(line: String, reason: ReplayReferenceLineError.Reason) throws {
        var driver = ReplayReferenceDriver(window: try ReplayWindow(size: 32, extendedSequenceNumbers: false))
        _ = try driver.process(line: "10")
        let before = driver.window.top
        #expect(throws: ReplayReferenceLineError(lineNumber: 2, reason: reason)) { try driver.process(line: line[...]) }
        #expect(driver.window.top == before)
        #expect(ReplayReferenceLineError(lineNumber: 2, reason: reason).description.hasPrefix("line 2: "))
    }

    @Test func largestNumberParses() throws {
        let packet = try ReplayReferencePacket(parsing: "18446744073709551615 forged", lineNumber: 1)
        #expect(packet == ReplayReferencePacket(trueSequenceNumber: .max, forged: true))
    }
}
