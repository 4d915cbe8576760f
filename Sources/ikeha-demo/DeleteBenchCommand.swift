import ArgumentParser
import IPsecHACore
import IPsecHAGateway
import IPsecHATestKit
import Logging

/// `ikeha-demo bench delete`: an authenticated INFORMATIONAL with a Delete through the
/// reference gateway's responder, on a gateway holding many Child SAs (review H4: it copied
/// every Child SA per SPI named, 30 ms each at 100,000).
struct DeleteBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete",
        abstract: "Time a Delete through the IKEv2 responder with many Child SAs installed; the last line is name=value pairs."
    )

    @Option(name: .customLong("child-sas"), help: "Child SAs installed (two per IKE SA).")
    var childSAs = 100_000

    @Option(help: "SPIs the Delete names that no Child SA of the IKE SA has (16,000 fill a 64 KiB message).")
    var unknown = 16_000

    func validate() throws {
        guard childSAs >= 2, childSAs < 0x7000_0000, (0...16_000).contains(unknown) else {
            throw ValidationError("2 or more Child SAs below 2^30, 0 to 16,000 unknown SPIs")
        }
    }

    func run() throws {
        var random = SplitMix64(seed: 13)
        var state = GatewayState()
        var identifiers: [IKESAIdentifier] = []
        for index in 0..<childSAs / 2 {
            let sa = try SAFixtures.ikeSA(UInt64(index + 1), &random)
            _ = try state.createIKESA(sa)
            identifiers.append(sa.identifier)
        }
        for index in 0..<childSAs {
            _ = try state.createChildSA(SAFixtures.childSA(UInt32(0x1000 + index), parent: identifiers[index / 2], window: 64, &random))
        }
        let responder = IKEv2Responder(
            configuration: IKEResponderConfiguration(
                localIdentity: IKEIdentity("gateway@bench"), remoteIdentity: IKEIdentity("peer@bench"),
                preSharedKey: KeyMaterial(copying: Array("bench-only-pre-shared-key".utf8)), member: SAFixtures.member),
            logger: Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() }))
        let clock = ContinuousClock()
        var results: [(named: Int, milliseconds: Double)] = []
        // One IKE SA's two Child SAs deleted, first named alone, then behind `unknown` SPIs.
        for (round, junk) in [(0, 0), (1, unknown)] {
            let identifier = identifiers[round]
            guard let sa = state.ikeSAs[identifier] else { throw ValidationError("IKE SA \(identifier) missing") }
            let named = (0..<UInt32(junk)).map { 0x7000_0000 + $0 } + sa.childSAs.compactMap { state.childSA(inboundSPI: $0)?.outboundSPI }
            let header = IKEHeader(
                initiatorSPI: identifier.initiatorSPI, responderSPI: identifier.responderSPI, nextPayload: .none, exchangeType: .informational,
                flags: IKEHeader.initiatorFlag, messageID: 0, length: 0)
            let request = try EncryptedMessage.seal(
                header: header, payloads: [DeletePayload(protocolID: IKEProposal.esp, spis: named).payload], keyAndSalt: sa.keys.ei)
            var copy = responder
            let started = clock.now
            let outcome = copy.receive(request, from: sa.remote, on: sa.local, state: &state, now: .seconds(1))
            let elapsed = started.duration(to: clock.now).inSeconds * 1e3
            guard outcome.replies.count == 1, state.ikeSAs[identifier]?.childSAs.isEmpty == true else {
                throw ValidationError("the Delete did not delete the IKE SA's Child SAs")
            }
            results.append((named.count, elapsed))
        }
        for result in results {
            print("Delete naming \(result.named) SPIs, \(childSAs) Child SAs installed: \(result.milliseconds.formatted(decimals: 3)) ms")
        }
        print("delete_one_ms=\(results[0].milliseconds.formatted(decimals: 3)) delete_\(results[1].named)_ms=\(results[1].milliseconds.formatted(decimals: 3)) child_sas=\(childSAs)")
    }
}
