import ArgumentParser
import IPsecHACore

/// `ikeha-demo walkthrough` (the default): one Child SA and its IKE SA carried across the crash
/// of the active member, with the counter primitives and checkpoints only.
///
/// The active member sends ESP to the peer and receives ESP from it, checkpointing both counters
/// every `--checkpoint-every` packets to the standby; it also replicates its IKE message-ID
/// windows after every exchange. It crashes at a random moment (from `--seed`), the standby
/// takes over from what it last received, and the walkthrough checks what a peer would see.
struct WalkthroughCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "walkthrough",
        abstract: "Carry ESP counters and IKE message IDs across a member crash (the default demo)."
    )

    @Option(help: "Packets between two counter checkpoints.")
    var checkpointEvery: UInt64 = 1_000

    @Option(help: "Seed of the run (the crash moment and the packet counts).")
    var seed: UInt64 = 2026

    @Option(help: "Inbound replay window size.")
    var window: UInt32 = 1_024

    func validate() throws {
        guard checkpointEvery >= 1, checkpointEvery <= 1 << 20 else {
            throw ValidationError("--checkpoint-every must be between 1 and 2^20")
        }
    }

    func run() throws {
        var random = SplitMix64(seed: seed)
        let esn = true

        // Active member: outbound counter, inbound window, IKE message IDs.
        var outbound = try OutboundSequenceCounter(extendedSequenceNumbers: esn)
        // Each receiver models the ICV as the reference driver does: it passes only for the
        // sender's true 64-bit number, which is how ESN rejects packets from an older subspace.
        var inbound = ReplayReferenceDriver(window: try ReplayWindow(size: window, extendedSequenceNumbers: esn))
        var ike = IKEMessageIDWindows()
        // The peer: its own inbound window for our traffic, its outbound counter toward us.
        var peerInbound = ReplayReferenceDriver(window: try ReplayWindow(size: window, extendedSequenceNumbers: esn))
        var peerOutbound = try OutboundSequenceCounter(extendedSequenceNumbers: esn)
        // What the standby holds: the last replicated checkpoints and snapshot.
        var standbyOutbound = outbound.checkpoint
        var standbyInbound = inbound.window.checkpoint
        var standbyIKE = ike.snapshot

        let crashAfter = 5_000 + random.next() % 20_000
        var capturedFromPeer: [UInt64] = []
        print("ikeha-demo walkthrough: one IKE SA, one ESN Child SA, checkpoint every \(checkpointEvery) packets")
        print("active member: sending and receiving ESP; it will crash after \(crashAfter) packets each way")

        for packet in 1...crashAfter {
            let sent = try outbound.next()
            _ = peerInbound.apply(ReplayReferencePacket(trueSequenceNumber: sent.value, forged: false))
            let received = try peerOutbound.next()
            _ = inbound.apply(ReplayReferencePacket(trueSequenceNumber: received.value, forged: false))
            if random.next() % 500 == 0 { capturedFromPeer.append(received.value) }
            if packet % 2_000 == 0 {
                // A liveness check from each side, replicated after the exchange.
                let request = try ike.requests.nextRequestID()
                try ike.requests.receiveResponse(request)
                try ike.responses.recordProcessed(UInt32(ike.responses.nextExpectedMessageID))
                standbyIKE = ike.snapshot
            }
            if packet % checkpointEvery == 0 {
                standbyOutbound = outbound.checkpoint
                standbyInbound = inbound.window.checkpoint
            }
        }
        print("active member: crashed; last outbound sequence number \(outbound.lastSent), "
            + "standby's checkpoint \(standbyOutbound.lastSent)")

        // Takeover: advance both counters past everything the old member may have used.
        let advance = 2 * checkpointEvery
        var newOutbound = try OutboundSequenceCounter(
            extendedSequenceNumbers: esn, restoringFrom: standbyOutbound, advance: advance)
        var newInbound = ReplayReferenceDriver(
            window: try ReplayWindow(
                size: window, extendedSequenceNumbers: esn, restoringFrom: standbyInbound,
                policy: .conservative(advance: advance)))
        var newIKE = try IKEMessageIDWindows(restoringFrom: standbyIKE)
        print("standby: took over; outbound resumes after \(newOutbound.lastSent), "
            + "inbound window top \(newInbound.window.top), next IKE request ID \(newIKE.requests.nextMessageID)")

        var peerRejected = 0
        for _ in 0..<5_000 {
            let sent = try newOutbound.next()
            if case .accept = peerInbound.apply(ReplayReferencePacket(trueSequenceNumber: sent.value, forged: false)) {
            } else {
                peerRejected += 1
            }
        }
        var replaysAccepted = 0
        for number in capturedFromPeer {
            if case .accept = newInbound.apply(ReplayReferencePacket(trueSequenceNumber: number, forged: false)) {
                replaysAccepted += 1
            }
        }
        var dropped = 0
        var accepted = 0
        for _ in 0..<(3 * checkpointEvery) {
            let received = try peerOutbound.next()
            if case .accept = newInbound.apply(ReplayReferencePacket(trueSequenceNumber: received.value, forged: false)) {
                accepted += 1
            } else {
                dropped += 1
            }
        }
        let request = try newIKE.requests.nextRequestID()
        let peerExpects = UInt32(ike.responses.highestProcessed.map { $0 + 1 } ?? 0)
        let ikeVerdict = request == UInt32(ike.requests.nextMessageID) ? "the ID the peer expects" : "WRONG"

        print("peer: rejected \(peerRejected) of 5000 packets from the new active member (sequence numbers never reused)")
        print("attacker: replayed \(capturedFromPeer.count) captured packets, \(replaysAccepted) accepted")
        print("peer -> cluster: \(dropped) packets dropped inside the conservative advance, then \(accepted) accepted")
        print("IKE: new active member's next request uses message ID \(request), \(ikeVerdict); "
            + "it expects the peer's next request at \(newIKE.responses.nextExpectedMessageID) (peer will send \(peerExpects))")
        guard peerRejected == 0, replaysAccepted == 0, ikeVerdict != "WRONG" else {
            print("walkthrough: FAILED")
            throw ExitCode.failure
        }
        print("walkthrough: ok")
    }
}
