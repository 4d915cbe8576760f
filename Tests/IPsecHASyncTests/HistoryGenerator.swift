import IPsecHACore
import IPsecHASync

/// Random gateway histories for replication tests.
struct HistoryGenerator {
    var records: RecordGenerator
    var ikeSAs: [IKESAIdentifier] = []

    init(seed: UInt64) { records = RecordGenerator(seed: seed) }

    /// One random mutation of `state`, returning its changes.
    mutating func step(_ state: inout GatewayState) throws -> [StateChange] {
        let children = state.childSAs.map(\.inboundSPI)
        switch records.next(10) {
        case 0, 1:
            let sa = records.ikeSA()
            ikeSAs.append(sa.identifier)
            return try state.createIKESA(sa)
        case 2:
            guard let id = ikeSAs.randomElement(using: &records.random), state.ikeSAs[id] != nil else { return [] }
            if records.next(2) == 0 {
                return try state.updateMessageIDs(of: id) { windows in
                    if let request = try? windows.requests.nextRequestID() { try? windows.requests.receiveResponse(request) }
                    try? windows.responses.recordProcessed(UInt32(truncatingIfNeeded: windows.responses.nextExpectedMessageID))
                }
            }
            return try state.updateIKESA(id) { sa in
                sa.state = .established
                _ = try? sa.messageIDs.requests.nextRequestID()
            }
        case 3:
            guard records.next(4) == 0, let index = ikeSAs.indices.randomElement(using: &records.random) else { return [] }
            let id = ikeSAs.remove(at: index)
            return state.ikeSAs[id] == nil ? [] : try state.deleteIKESA(id)
        case 4, 5, 6:
            guard let parent = ikeSAs.randomElement(using: &records.random) else { return [] }
            var sa = records.childSA(parent: parent)
            sa.policy = nil
            guard state.childSA(inboundSPI: sa.inboundSPI) == nil else { return [] }
            return try state.createChildSA(sa)
        case 7:
            guard let spi = children.randomElement(using: &records.random) else { return [] }
            return try state.deleteChildSA(inboundSPI: spi)
        default:
            guard let spi = children.randomElement(using: &records.random), let slot = state.slot(forInboundSPI: spi) else { return [] }
            for _ in 0..<records.next(50) { _ = try? state.nextOutboundSequenceNumber(at: slot, bytes: 1_000) }
            return state.checkpointCounters(at: slot)
        }
    }
}
