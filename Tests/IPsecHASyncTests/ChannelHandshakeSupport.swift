import IPsecHACore
@testable import IPsecHASync

/// Runs the handshake between two channels over a perfect network (ticking both every
/// millisecond from `now`) until each holds the other's incarnation and data flows; returns the
/// time reached. Records delivered on the way go to `delivered` (receiver, records); every other
/// action is dropped.
func establish(
    _ a: inout SyncChannel, _ b: inout SyncChannel, now start: Timestamp = Timestamp(nanoseconds: 1),
    delivered: (ClusterMemberID, [SyncRecord]) -> Void = { _, _ in }
) -> Timestamp {
    var now = start
    var toA: [[UInt8]] = []
    var toB: [[UInt8]] = []
    let aID = a.configuration.member
    let bID = b.configuration.member
    func route(_ actions: [SyncChannelAction], toA: inout [[UInt8]], toB: inout [[UInt8]]) {
        for action in actions {
            switch action {
            case .transmit(let to, let datagram): if to == aID { toA.append(datagram) } else { toB.append(datagram) }
            case .deliver(let from, let records): delivered(from == aID ? bID : aID, records)
            default: break
            }
        }
    }
    for _ in 0..<200 where !(a.isEstablished(with: bID) && b.isEstablished(with: aID)) {
        route(a.tick(now: now), toA: &toA, toB: &toB)
        route(b.tick(now: now), toA: &toA, toB: &toB)
        while !toA.isEmpty || !toB.isEmpty {
            let forA = toA
            let forB = toB
            toA = []
            toB = []
            for datagram in forA { route(a.receive(datagram, now: now), toA: &toA, toB: &toB) }
            for datagram in forB { route(b.receive(datagram, now: now), toA: &toA, toB: &toB) }
        }
        now = Timestamp(nanoseconds: now.nanoseconds + 1_000_000)
    }
    return now
}
