import ArgumentParser
import IPsecHACore
import IPsecHASync
import IPsecHATestKit
import Logging

/// `ikeha-demo walkthrough` (the default): one IKE SA and one Child SA carried across the crash
/// of the active member, through the whole package.
///
/// The active member sends ESP to the peer and receives ESP from it; its gateway state is
/// replicated to a standby over the sealed synch channel on a lossy in-memory network, with
/// counter checkpoints every `--checkpoint-every` packets or 50 ms and one IKE exchange every
/// 100 ms. It crashes at a moment drawn from `--seed`; the standby notices the silence, promotes
/// itself, computes its takeover plan and applies it; the walkthrough then checks what the peer
/// and an attacker see.
struct WalkthroughCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "walkthrough",
        abstract: "Carry ESP counters and IKE message IDs across a member crash (the default demo)."
    )

    @Option(help: "Packets between two counter checkpoints.")
    var checkpointEvery: UInt64 = 1_000

    @Option(help: "Seed of the run (the crash moment, the packet counts, the network's faults).")
    var seed: UInt64 = 2026

    @Option(help: "Inbound replay window size.")
    var window: UInt32 = 1_024

    @Option(help: "Loss on the synch link, in percent.")
    var loss: Double = 10

    func validate() throws {
        guard checkpointEvery >= 1, checkpointEvery <= 1 << 20 else {
            throw ValidationError("--checkpoint-every must be between 1 and 2^20")
        }
        guard (0...50).contains(loss) else { throw ValidationError("--loss must be between 0 and 50") }
    }

    func run() throws {
        var random = SplitMix64(seed: seed)
        var faults = NetworkFaults()
        faults.loss = loss / 100
        faults.jitter = .milliseconds(2)
        // Routine channel logs (records asked for again) would drown the story: warnings only.
        var pair = try ReplicationPair(seed: seed, faults: faults) { $0.logger.logLevel = .warning }
        guard try pair.settle() else { throw ValidationError("the standby did not become ready") }
        print("ikeha-demo walkthrough: an active member and a standby, synch channel sealed with ChaCha20-Poly1305, \(Int(loss))% loss")

        // One IKE SA (RFC 6311 negotiated) and one ESN Child SA, replicated to the standby.
        var ike = try SAFixtures.ikeSA(1, &random)
        ike.extensions = IKEExtensions(messageIDSync: true, replayCounterSync: true)
        _ = try pair.replicate(try pair.state.createIKESA(ike))
        let child = try SAFixtures.childSA(0xC000_1000, parent: ike.identifier, window: window, &random)
        _ = try pair.replicate(try pair.state.createChildSA(child))
        let slot = try require(pair.state.slot(forInboundSPI: child.inboundSPI), "Child SA installed")

        // The peer: its own window for our traffic, its own counter toward us.
        var peerInbound = ReplayReferenceDriver(window: try ReplayWindow(size: window, extendedSequenceNumbers: true))
        var peerOutbound = try OutboundSequenceCounter(extendedSequenceNumbers: true)
        var captured: [UInt64] = []
        var scheduler = CounterCheckpointScheduler(policy: CounterCheckpointPolicy(packets: checkpointEvery, interval: .milliseconds(50)))
        let crashAfter = 300 + random.next() % 700  // milliseconds
        print("active member: about 10,000 ESP packets/s each way, an IKE exchange every 100 ms; it will crash after \(crashAfter) ms")

        // IKE exchanges are replicated synchronously: the request leaves only once the standby
        // acknowledged the state it depends on, so the peer never sees an ID the standby lacks.
        var exchanges = 0
        var peerExpectsRequest: UInt64 = ike.messageIDs.requests.nextMessageID
        var pending: (request: UInt32, tickets: [SyncTicket], sent: Bool)?
        for millisecond in 1...crashAfter {
            for _ in 0..<(random.next() % 20) {
                guard let sent = try pair.state.nextOutboundSequenceNumber(at: slot, bytes: 1_200) else { break }
                _ = peerInbound.apply(ReplayReferencePacket(trueSequenceNumber: sent.value, forged: false))
                let received = try peerOutbound.next()
                if case .fresh(let number) = pair.state.checkInbound(wire: received.wire, at: slot), number == received.value {
                    try pair.state.commitInbound(number, bytes: 1_200, at: slot)
                }
                if random.next() % 50 == 0 { captured.append(received.value) }
            }
            let channel = pair.activeChannel
            if let exchange = pending, exchange.tickets.allSatisfy({ channel.isAcknowledged($0) }) {
                if !exchange.sent {
                    // The liveness check goes out, the peer answers at once.
                    peerExpectsRequest = UInt64(exchange.request) + 1
                    var tickets = try pair.replicate(
                        try pair.state.updateMessageIDs(of: ike.identifier) { try? $0.requests.receiveResponse(exchange.request) })
                    tickets += pair.replicator.replicateExchange(
                        of: ike.identifier, messageID: exchange.request, initiatedHere: true, finished: true, state: pair.state,
                        channel: &pair.activeChannel, now: pair.now
                    ).tickets
                    pending = (exchange.request, tickets, true)
                    exchanges += 1
                } else {
                    pending = nil
                }
            } else if pending == nil, millisecond % 100 == 0 {
                var request: UInt32 = 0
                let changes = try pair.state.updateMessageIDs(of: ike.identifier) { request = (try? $0.requests.nextRequestID()) ?? 0 }
                var tickets = pair.replicator.replicateExchange(
                    of: ike.identifier, messageID: request, initiatedHere: true, finished: false, state: pair.state,
                    channel: &pair.activeChannel, now: pair.now
                ).tickets
                tickets += try pair.replicate(changes)
                pending = (request, tickets, false)
            }
            _ = try pair.replicate(checkpoints: scheduler.takeDueCheckpoints(from: &pair.state, now: pair.now))
            try pair.run(for: 1_000_000)
        }
        let crashed = pair.state.childSA(inboundSPI: child.inboundSPI)!
        print("active member: crashed after \(exchanges) IKE exchanges; last outbound sequence number \(crashed.outboundCounter.lastSent), "
            + "standby's copy \(pair.replica.state.childSA(inboundSPI: child.inboundSPI)?.outboundCounter.lastSent ?? 0)")

        // The standby notices the silence and takes over.
        pair.network.faults.partitions = [[1, 2]]
        var role = ClusterRole(
            member: ReplicationPair.standbyID, epoch: 1, isActive: false, activeMember: ReplicationPair.activeID)
        let crashedAt = pair.now
        var detected = false
        while !detected {
            try pair.run(for: 1_000_000)
            detected = !role.tick(now: pair.now, lastHeard: pair.standbyChannel.lastHeard(from: ReplicationPair.activeID)).isEmpty
        }
        _ = try role.promote(.activeMemberSilent(ReplicationPair.activeID), newEpoch: 2)
        print("standby: active member silent for \((pair.now.nanoseconds - crashedAt.nanoseconds) / 1_000_000) ms: promoted itself")
        let plan = pair.replica.takeoverPlan(now: pair.now)
        let childPlan = try require(plan.childSAs.first, "a plan for the Child SA")
        let ikePlan = try require(plan.ikeSAs.first, "a plan for the IKE SA")
        print("plan, Child SA: advance \(childPlan.advance) (\(childPlan.reason))")
        print("plan, IKE SA: \(ikePlan.classification), \(ikePlan.reason)")

        // Apply the plan: the new active member's counters and window.
        let standbyCopy = pair.replica.state.childSA(inboundSPI: child.inboundSPI)!
        guard case .resume(let resumeAfter) = childPlan.outbound, case .restore(let policy) = childPlan.inbound else {
            throw ValidationError("the plan asks for a rekey")
        }
        var newOutbound = try OutboundSequenceCounter(extendedSequenceNumbers: true, lastSent: resumeAfter)
        var newInbound = ReplayReferenceDriver(
            window: try ReplayWindow(
                size: window, extendedSequenceNumbers: true, restoringFrom: standbyCopy.inboundWindow.checkpoint, policy: policy))

        var peerRejected = 0
        for _ in 0..<5_000 {
            let sent = try newOutbound.next()
            if case .accept = peerInbound.apply(ReplayReferencePacket(trueSequenceNumber: sent.value, forged: false)) {} else { peerRejected += 1 }
        }
        let replaysAccepted = captured.filter {
            if case .accept = newInbound.apply(ReplayReferencePacket(trueSequenceNumber: $0, forged: false)) { true } else { false }
        }.count
        var dropped = 0
        var accepted = 0
        for _ in 0..<(childPlan.advance + 1_000) {
            let received = try peerOutbound.next()
            if case .accept = newInbound.apply(ReplayReferencePacket(trueSequenceNumber: received.value, forged: false)) {
                accepted += 1
            } else {
                dropped += 1
            }
        }
        print("peer: rejected \(peerRejected) of 5000 packets from the new active member (sequence numbers never reused)")
        print("attacker: replayed \(captured.count) captured packets, \(replaysAccepted) accepted")
        print("peer -> cluster: \(dropped) packets dropped inside the conservative advance, then \(accepted) accepted")
        let ikeOK: Bool
        switch ikePlan.messageIDs {
        case .exact(let next, _):
            ikeOK = next == peerExpectsRequest
            print("IKE: next request uses message ID \(next), \(ikeOK ? "the ID the peer expects" : "WRONG: the peer expects \(peerExpectsRequest)")")
        case .messageIDSync:
            // Both sides of RFC 6311: the new active member proposes, the peer (which has sent no
            // request of its own here) answers, both adopt the agreed values.
            let memberWindows = pair.replica.state.ikeSAs[ike.identifier]!.messageIDs
            var initiator = MessageIDSyncInitiator()
            let request = try initiator.start(windows: memberWindows, nonce: UInt32(truncatingIfNeeded: random.next()))
            var peerSide = MessageIDSyncPeer()
            let peerWindows = try IKEMessageIDWindows(
                resumingAt: 0, expecting: peerExpectsRequest, peerWindowSize: 1, localWindowSize: 1)
            guard case .respond(let response, let peerAdopted, _) = peerSide.process(request, replayCounter: nil, windows: peerWindows) else {
                print("IKE: the peer dropped the message-ID sync: WRONG")
                throw ExitCode.failure
            }
            let adopted = try initiator.receive(response, windows: memberWindows)
            ikeOK = adopted.requests.nextMessageID == peerAdopted.responses.nextExpectedMessageID
                && adopted.requests.nextMessageID >= peerExpectsRequest
            print("IKE: RFC 6311 message-ID sync: proposed send \(request.expectedSendRequestID), the peer answered; "
                + "next request \(adopted.requests.nextMessageID)\(ikeOK ? ", which the peer now expects" : ": WRONG")")
        default:
            ikeOK = true
            print("IKE: \(ikePlan.reason)")
        }
        guard peerRejected == 0, replaysAccepted == 0, ikeOK else {
            print("walkthrough: FAILED")
            throw ExitCode.failure
        }
        print("walkthrough: ok")
    }

    private func require<T>(_ value: T?, _ what: String) throws -> T {
        guard let value else { throw ValidationError("missing: \(what)") }
        return value
    }
}
