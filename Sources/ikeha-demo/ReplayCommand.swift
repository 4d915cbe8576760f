import ArgumentParser
import IPsecHACore

/// `ikeha-demo replay`: the reference behaviour of an inbound anti-replay window, one packet per
/// line of standard input (see `ReplayReferenceDriver` for the exact contract).
struct ReplayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Run sequence numbers from standard input through an anti-replay window.",
        discussion: """
            Each input line is the sender's true 64-bit sequence number in decimal, optionally \
            followed by ' forged'. Only its low 32 bits reach the window. Each output line is \
            '<accept|replay|stale|fail> <inferred 64-bit number>'.
            """
    )

    @Option(name: .long, help: "Window size in packets (32 to 1048576).")
    var window: UInt32

    @Flag(name: .long, help: "Extended Sequence Numbers (64-bit counters, 32 bits on the wire).")
    var esn = false

    func run() throws {
        let replayWindow: ReplayWindow
        do {
            replayWindow = try ReplayWindow(size: window, extendedSequenceNumbers: esn)
        } catch {
            throw ValidationError("--window must be between \(ReplayWindow.minimumSize) and \(ReplayWindow.maximumSize)")
        }
        var driver = ReplayReferenceDriver(window: replayWindow)
        while let line = readLine(strippingNewline: true) {
            let answer: String
            do {
                answer = try driver.process(line: line[...])
            } catch {
                StandardError.write("ikeha-demo replay: \(error)\n")
                throw ExitCode(65)  // EX_DATAERR
            }
            print(answer)
        }
    }
}
