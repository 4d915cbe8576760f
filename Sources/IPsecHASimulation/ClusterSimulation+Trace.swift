import IPsecHACore
import IPsecHASync
import IPsecHATestKit

// The trace (JSON lines) and the capture of the outside link.
extension ClusterSimulation {
    var micros: UInt64 { (now.nanoseconds - min(now.nanoseconds, runStart)) / 1_000 }

    func name(_ index: Int?) -> String { index.map { "member-\(members[$0].id.rawValue)" } ?? "cluster" }

    /// One ESP line, after the `child_sa` line of its receiving direction the first time.
    mutating func traceESP(src: String, dst: String, spi: UInt32, seq: UInt64, forged: Bool, verdict: String, receiver: String) {
        capture?(micros, OutsideLinkCapture.esp(spi: spi, sequenceNumber: seq, fromPeer: receiver == "cluster"))
        guard let trace else { return }
        if declared.insert("\(receiver):\(spi)").inserted {
            trace("{\"kind\":\"child_sa\",\"spi\":\(spi),\"receiver\":\"\(receiver)\",\"window\":\(configuration.replayWindow),\"esn\":true}")
        }
        trace("{\"kind\":\"esp\",\"t\":\(micros),\"src\":\"\(src)\",\"dst\":\"\(dst)\",\"spi\":\(spi),\"seq\":\(seq),\"forged\":\(forged),\"verdict\":\"\(verdict)\"}")
    }

    /// An IKE message's trace line and capture.
    func traceIKE(_ line: IKELine, verdict: String) {
        traceIKE(src: line.src, dst: line.dst, line.ikeSA, mid: line.mid, exchange: line.exchange, response: line.response, verdict: verdict)
        guard let capture else { return }
        let fromPeer = line.src == "peer"
        var messages: [IPsecHACore.IKEMessage] = []
        switch line.exchange {
        case "IKE_AUTH" where !line.response:
            // The simulation makes an IKE SA in one step: its request is IKE_SA_INIT's, its
            // answer IKE_SA_INIT's response and the IKE_AUTH exchange.
            messages = [OutsideLinkCapture.ikeSAInit(line.ikeSA, isResponse: false)]
        case "IKE_AUTH":
            messages = [
                OutsideLinkCapture.ikeSAInit(line.ikeSA, isResponse: true),
                OutsideLinkCapture.encryptedIKEMessage(line.ikeSA, exchange: .ikeAuth, messageID: 1, fromOriginalInitiator: true, isResponse: false),
                OutsideLinkCapture.encryptedIKEMessage(line.ikeSA, exchange: .ikeAuth, messageID: 1, fromOriginalInitiator: false, isResponse: true),
            ]
        default:
            // The peer initiated every IKE SA: its messages carry the I flag.
            messages = [
                OutsideLinkCapture.encryptedIKEMessage(
                    line.ikeSA, exchange: line.exchange == "CREATE_CHILD_SA" ? .createChildSA : .informational, messageID: line.mid,
                    fromOriginalInitiator: fromPeer, isResponse: line.response)
            ]
        }
        for (index, message) in messages.enumerated() {
            // IKE_AUTH's request comes from the peer, between the cluster's two responses.
            let peerSends = messages.count == 3 ? index == 1 : fromPeer
            if let packet = try? OutsideLinkCapture.ike(message, fromPeer: peerSends) { capture(micros, packet) }
        }
    }

    func traceIKE(src: String, dst: String, _ identifier: IKESAIdentifier, mid: UInt32, exchange: String, response: Bool, verdict: String) {
        trace?(
            "{\"kind\":\"ike\",\"t\":\(micros),\"src\":\"\(src)\",\"dst\":\"\(dst)\",\"ispi\":\"\(identifier.initiatorSPI.paddedHexDigits)\",\"rspi\":\"\(identifier.responderSPI.paddedHexDigits)\",\"mid\":\(mid),\"exchange\":\"\(exchange)\",\"response\":\(response),\"verdict\":\"\(verdict)\"}")
    }

    /// The IKE line of a message: who sent it to whom, and what it is.
    typealias IKELine = (src: String, dst: String, ikeSA: IKESAIdentifier, mid: UInt32, exchange: String, response: Bool)

    func describe(_ message: IKEMessage) -> IKELine {
        let cluster = name(active)
        switch message {
        case .establish(let spi): return ("peer", cluster, IKESAIdentifier(initiatorSPI: spi, responderSPI: 0), 1, "IKE_AUTH", false)
        case .established(let identifier, _): return (cluster, "peer", identifier, 1, "IKE_AUTH", true)
        case .peerRequest(let identifier, let mid, let kind): return ("peer", cluster, identifier, mid, kind == .liveness ? "INFORMATIONAL" : "CREATE_CHILD_SA", false)
        case .clusterResponse(let identifier, let mid, let child, let ike):
            return (cluster, "peer", identifier, mid, child == nil && ike == nil ? "INFORMATIONAL" : "CREATE_CHILD_SA", true)
        case .peerDeleteIKESA(let identifier): return ("peer", cluster, identifier, 0, "INFORMATIONAL", false)
        case .clusterRequest(let identifier, let mid): return (cluster, "peer", identifier, mid, "INFORMATIONAL", false)
        case .peerResponse(let identifier, let mid): return ("peer", cluster, identifier, mid, "INFORMATIONAL", true)
        }
    }

    func traceIKE(_ message: IKEMessage, verdict: String) {
        guard trace != nil || capture != nil else { return }
        traceIKE(describe(message), verdict: verdict)
    }
}
