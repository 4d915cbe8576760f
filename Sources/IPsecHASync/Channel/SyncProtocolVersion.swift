/// Versions of the synch protocol's records, as members of different releases negotiate them
/// during a rolling upgrade (`Docs/SyncProtocol.md`, "Versions").
///
/// The datagram header's version byte (2) is the framing and the sealing, which every release
/// keeps; what changes between releases is the set of records and fields. Each member says
/// which versions it speaks in a ``SyncRecord/protocolVersions(oldest:newest:)`` record beside
/// each hello; a member of the previous release sends none (it skips the record, as any
/// unknown non-critical one), and is taken to speak version 2. Two members speak the newest
/// version both know; a record or field that a version added goes only to peers speaking it.
public enum SyncProtocolVersion {
    /// The release before negotiation: every record of this package's first rounds. It sends no
    /// protocol-versions record.
    public static let previousRelease: UInt8 = 2
    /// This release: version 3's records and the synch delay.
    public static let current: UInt8 = 4
    /// The first version with ``SyncRecord/relayedDatagram(_:)``.
    public static let relayedDatagrams: UInt8 = 3
    /// The first version with ``SyncRecord/synchDelay(roundTrip:)``.
    public static let synchDelay: UInt8 = 4
    /// What this release speaks.
    public static let supported: ClosedRange<UInt8> = previousRelease...current
}

/// What this member knows of the protocol a peer speaks (``SyncChannel/protocolVersion(with:)``).
public enum SyncPeerProtocol: Sendable, Hashable, CustomStringConvertible {
    /// Nothing authentic heard from the peer yet.
    case notHeard
    /// The version both speak: the newest both know.
    case speaking(UInt8)
    /// The peer speaks only versions this member does not (it announced these): a member two
    /// releases apart. Upgrade through a release that speaks both.
    case incompatible(peer: ClosedRange<UInt8>)

    /// What a member speaking `mine` and a peer speaking `theirs` speak together: the newest
    /// version both know, or nothing.
    init(mine: ClosedRange<UInt8>, theirs: ClosedRange<UInt8>) {
        let newest = min(mine.upperBound, theirs.upperBound)
        self = newest >= max(mine.lowerBound, theirs.lowerBound) ? .speaking(newest) : .incompatible(peer: theirs)
    }

    public var description: String {
        switch self {
        case .notHeard: "not heard"
        case .speaking(let version): "version \(version)"
        case .incompatible(let versions): "incompatible (the peer speaks \(versions.lowerBound)...\(versions.upperBound))"
        }
    }
}
