public import IPsecHACore

/// Timing and membership of ``SegmentOwnership``. Every member of a cluster must use the same
/// values (except ``member``).
public struct SegmentOwnershipConfiguration: Sendable {
    /// This member.
    public let member: ClusterMemberID
    /// This member's incarnation: its synch channel epoch, new at every start.
    public let incarnation: UInt32
    /// Every member of the cluster, this one included, ascending.
    public let members: [ClusterMemberID]
    /// The cluster's segments.
    public let segments: ClusterSegments
    /// Time between two beacons to each peer.
    public var beaconInterval: Duration { .nanoseconds(Int64(clamping: beaconNanoseconds)) }
    /// How long an echoed beacon keeps this member's lease valid, from the time it was sent.
    public var leaseDuration: Duration { .nanoseconds(Int64(clamping: leaseNanoseconds)) }
    /// Silence after which a peer counts as down.
    public var failureTimeout: Duration { .nanoseconds(Int64(clamping: failureNanoseconds)) }
    /// The three timers in nanoseconds, for the machine's clock arithmetic.
    package let beaconNanoseconds: UInt64, leaseNanoseconds: UInt64, failureNanoseconds: UInt64
    /// Members (this one included) a member must count as up to serve or take segments.
    public let quorum: Int

    /// How long a member stays silent after it starts: long enough for its peers to declare
    /// its previous life down and take its segments over from their replicas of it.
    public var startupSilence: Duration { .nanoseconds(Int64(clamping: startupSilenceNanoseconds)) }
    /// ``startupSilence`` in nanoseconds (saturating).
    package var startupSilenceNanoseconds: UInt64 {
        let beacons = beaconNanoseconds.multipliedReportingOverflow(by: 4)
        let sum = failureNanoseconds.addingReportingOverflow(leaseNanoseconds)
        let total = sum.partialValue.addingReportingOverflow(beacons.partialValue)
        return beacons.overflow || sum.overflow || total.overflow ? .max : total.partialValue
    }

    /// A configuration. The default quorum is a majority for three members or more, and 1 for
    /// two (two members cannot tell a partition from a crash: see `Docs/LoadSharing.md`).
    /// Throws ``SegmentOwnershipError/invalidConfiguration(_:)`` unless `member` is among
    /// `members`, `failureTimeout` exceeds `leaseDuration` by at least a beacon interval (the
    /// margin that covers clock drift and a late tick), the lease lasts at least two beacon
    /// intervals, and the quorum is between 1 and the member count.
    public init(
        member: ClusterMemberID, incarnation: UInt32, members: [ClusterMemberID], segments: ClusterSegments,
        beaconInterval: Duration = .milliseconds(20), leaseDuration: Duration = .milliseconds(100), failureTimeout: Duration = .milliseconds(200),
        quorum: Int? = nil
    ) throws(SegmentOwnershipError) {
        let sorted = Array(Set(members)).sorted()
        guard sorted.contains(member), sorted.count == members.count else { throw .invalidConfiguration("member not among the members, or listed twice") }
        guard beaconInterval > .zero, leaseDuration >= beaconInterval * 2, failureTimeout >= leaseDuration + beaconInterval else {
            throw .invalidConfiguration("timers: need lease >= 2 beacons and failure timeout >= lease + 1 beacon")
        }
        let quorum = quorum ?? (sorted.count <= 2 ? 1 : sorted.count / 2 + 1)
        guard quorum >= 1, quorum <= sorted.count else { throw .invalidConfiguration("quorum \(quorum) of \(sorted.count)") }
        self.member = member
        self.incarnation = incarnation
        self.members = sorted
        self.segments = segments
        beaconNanoseconds = beaconInterval.nonNegativeNanoseconds
        leaseNanoseconds = leaseDuration.nonNegativeNanoseconds
        failureNanoseconds = failureTimeout.nonNegativeNanoseconds
        self.quorum = quorum
    }
}

/// Errors of ``SegmentOwnership``.
public struct SegmentOwnershipError: Error, Sendable, Hashable, CustomStringConvertible {
    // A struct over a private reason (swift-nio-ssh's pattern): reasons can be added later
    // without breaking a `switch` of the embedder's.
    private enum Reason: Sendable, Hashable {
        case invalidConfiguration(String)
    }
    private let reason: Reason

    /// The configuration does not hold together; `why` says which rule it breaks.
    public static func invalidConfiguration(_ why: String) -> SegmentOwnershipError { SegmentOwnershipError(reason: .invalidConfiguration(why)) }

    public var description: String {
        switch reason {
        case .invalidConfiguration(let why): "invalid segment ownership configuration: \(why)"
        }
    }
}

/// What ``SegmentOwnership`` asks its owner to do.
public enum OwnershipAction: Sendable, Equatable {
    /// Send these records to a peer over the synch channel. When the channel refuses them
    /// (``SyncChannelError/sendQueueFull``), call ``SegmentOwnership/streamReset(to:)``: the
    /// claims are numbered, and a peer that never gets a number waits for it (without it, this
    /// member's lease is never renewed by that peer).
    case send([SyncRecord], to: ClusterMemberID)
    /// Start serving the IKE SAs and Child SAs of a segment. `previousOwner` held it before
    /// (nil: nobody, or this member after a lapse of its lease). `handedOver` says the previous
    /// owner stopped and handed it over (its last checkpoint is exact); otherwise it failed and
    /// the takeover plan applies to exactly the SAs of this segment. `previousOwner` is this
    /// member when it resumes its own segment after its lease lapsed: `handedOver` false then
    /// says a peer restarted meanwhile, so another member may have served the segment under a
    /// claim every member that knew of has forgotten; its SAs resume as after a blind takeover.
    case startServing(Segment, previousOwner: ClusterMemberID?, handedOver: Bool)
    /// Stop serving a segment now: send nothing on its SAs, answer no IKE message of its IKE
    /// SAs (the lease lapsed, or the segment was handed over or lost to a newer claim).
    case stopServing(Segment)
    /// A peer counts as up from now on (it was heard).
    case peerUp(ClusterMemberID)
    /// A peer counts as down from now on (silent for the failure timeout).
    case peerDown(ClusterMemberID)
}

/// Segment ownership for a load-sharing cluster (design, "Load sharing"): which member serves
/// which segment, handed over on purpose when members join and taken over when they fail,
/// with leases so that no two members serve a segment at the same time.
///
/// The machine is fed with records from the synch channel (``receive(_:from:now:)``) and the
/// time (``tick(now:)``), and returns actions. It rests on four rules:
/// - **Views.** A peer is up while it was heard within the failure timeout. Each beacon carries
///   the sender's view; the views are *agreed* when every peer that is up reports the same set.
/// - **Leases.** A member serves only while it sees a quorum and enough peers echoed one of its
///   beacons sent within the lease duration (``hasLease(now:)``: so many that any quorum that
///   could act without it holds one of them), each echo counting only after every claim that
///   peer had sent before it was processed (a member learns of a claim against it before its
///   lease can be renewed). A peer that declares it down stops echoing, so its lease from that
///   peer lapses a failure timeout minus a lease duration *before* that peer may act.
/// - **Claims.** Ownership changes only by versioned claims, sent reliably to every peer that
///   is up, relayed by each receiver, and given whole to a peer when it comes up. A member
///   moves segments only when the views have been agreed for a lease duration: then every
///   member computes the same `SegmentAssignment` (IPsecHACore) over the members that are up. An owner
///   hands a segment to the member the assignment names once that member is ready (it stops
///   first, then claims for the other: a gap, never an overlap). The member the assignment names
///   takes a segment whose owner is down (or that nobody owns), and starts serving it once every
///   peer that is up has processed its claim and a lease duration more has passed (a lease
///   renewed from a peer just before it learnt of the claim has then run out).
/// - **Restarts.** A member that starts stays silent (``SegmentOwnershipConfiguration/startupSilence``),
///   so that peers that still counted it as up declare it down and take its segments from
///   their replicas first; it then joins as a new, not yet ready member, and releases any
///   claim that still names a previous incarnation of it.
///
/// With a majority quorum, ownership stays unique across crashes, restarts, message loss, and
/// partitions that cut members off in both directions; see `Docs/LoadSharing.md` for the
/// argument, the one case a two-member cluster cannot decide, and the tests that check it.
public struct SegmentOwnership: Sendable {
    /// The configuration.
    public let configuration: SegmentOwnershipConfiguration
    /// Whether this member holds complete replicas of every other member's state, so that it
    /// may be handed segments and take over failed members' segments. Set by the owner.
    public var isReady = false

    private var table: [SegmentClaim]
    private var peers: [ClusterMemberID: Peer] = [:]
    /// When this member started.
    public let startedAt: Timestamp
    private var lastBeacon: Timestamp?
    /// What was last reported as served (for the start / stop actions).
    private var reportedServing: Set<Segment> = []
    /// Segments this member took and may serve once each listed peer processed the claims
    /// record of that sequence number, and a lease duration more has passed (so that a lease a
    /// member renewed from a peer before that peer learnt of the claim has run out).
    private var awaitingConfirmation: [Segment: Confirmation] = [:]

    struct Confirmation: Sendable {
        var waits: [ClusterMemberID: UInt64]
        var completedAt: Timestamp?
    }
    /// How each segment this member holds came to it.
    private var acquired: [Segment: (previousOwner: ClusterMemberID?, handedOver: Bool)] = [:]
    /// For each segment of its own this member stopped serving (its lease lapsed), the
    /// incarnation of each peer at that moment.
    private var incarnationsAtStop: [Segment: [ClusterMemberID: UInt32?]] = [:]
    private var agreement: (view: [ClusterMemberID], since: Timestamp)?
    private var assignment: SegmentAssignment?

    struct Peer: Sendable {
        var lastHeard: Timestamp?
        var incarnation: UInt32?
        /// The peer's clock: the latest beacon time heard, echoed back.
        var latestSentAt: Timestamp?
        /// This member's clock: the latest own beacon time the peer echoed, once every claim
        /// the peer had sent before it was processed here.
        var echo: Timestamp?
        /// An echo waiting for the claims record of this sequence number to be processed.
        var pendingEcho: (echo: Timestamp, claimsSent: UInt64)?
        var up: [ClusterMemberID] = []
        var ready = false
        var isUp = false
        /// Claims records this member sent the peer, and processed from it.
        var claimsSent: UInt64 = 0
        var claimsProcessed: UInt64 = 0
        /// What the peer reported it processed of our claims records.
        var reportedProcessed: UInt64 = 0
        var needsFullTable = false
    }

    /// A member starting at `now`, owning nothing, silent for the startup silence.
    public init(configuration: SegmentOwnershipConfiguration, now: Timestamp) {
        self.configuration = configuration
        table = configuration.segments.all.map { SegmentClaim(segment: $0, owner: nil, version: 0) }
        startedAt = now
        for member in configuration.members where member != configuration.member { peers[member] = Peer() }
    }

    // MARK: Queries

    /// The claim held for a segment (nil for a segment the cluster does not have).
    public func claim(of segment: Segment) -> SegmentClaim? {
        Int(segment.rawValue) < table.count ? table[Int(segment.rawValue)] : nil
    }

    /// Whether this member serves `segment` at `now`: it owns it, holds a valid lease, and
    /// every peer processed the claim that gave it the segment. Ask before every decision
    /// that only an owner may take (the lease is checked at `now`, not at the last tick).
    public func isServing(_ segment: Segment, now: Timestamp) -> Bool {
        guard let claim = claim(of: segment), isMine(claim) else { return false }
        return hasLease(now: now) && isConfirmed(segment, now: now)
    }

    /// The segments this member serves at `now`.
    public func servedSegments(now: Timestamp) -> [Segment] {
        guard hasLease(now: now) else { return [] }
        return table.filter { isMine($0) && isConfirmed($0.segment, now: now) }.map(\.segment)
    }

    /// The member that owns the Child SA with this inbound SPI, as this member knows it (nil for
    /// an SPI outside the layout, or a segment nobody owns): inbound ESP steering.
    public func owner(ofInboundSPI spi: UInt32, layout: SPILayout) -> ClusterMemberID? {
        switch layout.steering(ofSPI: spi) {
        case .segment(let segment): claim(of: segment)?.owner
        case .member(let member): member
        case nil: nil
        }
    }

    /// The members this one counts as up at the last tick, itself included, ascending.
    public var up: [ClusterMemberID] {
        ([configuration.member] + peers.filter(\.value.isUp).map(\.key)).sorted()
    }

    /// Whether the lease is valid at `now`: this member sees a quorum, and holds fresh echoes
    /// from enough of the peers it counts as up that every view a taker could act on (a quorum
    /// without this member) contains one of them: members minus quorum of them, or all when
    /// fewer are up. With a majority quorum one member's failure then costs the others nothing;
    /// with two members (quorum 1) a member needs its peer's echoes until it declares it down.
    public func hasLease(now: Timestamp) -> Bool {
        let upPeers = peers.values.filter(\.isUp)
        guard upPeers.count + 1 >= configuration.quorum else { return false }
        let needed = min(configuration.members.count - configuration.quorum, upPeers.count)
        let fresh = upPeers.filter { peer in
            guard let echo = peer.echo, now.nanoseconds >= echo.nanoseconds else { return false }
            return now.nanoseconds - echo.nanoseconds < configuration.leaseNanoseconds
        }
        return fresh.count >= needed
    }

    private func isMine(_ claim: SegmentClaim) -> Bool {
        claim.owner == configuration.member && claim.incarnation == configuration.incarnation
    }

    private func isConfirmed(_ segment: Segment, now: Timestamp) -> Bool {
        guard let confirmation = awaitingConfirmation[segment] else { return true }
        guard let completed = confirmation.completedAt else { return false }
        return now.nanoseconds >= completed.nanoseconds + configuration.leaseNanoseconds
    }

    /// Whether every peer a confirmation waits for that is up processed the claim, and a
    /// quorum with this member did. A peer that went down unprocessed is not waited for, but
    /// does not count either: the previous owner's lease needs an echo from one of any
    /// quorum's complement, and only an echo from a member that processed the claim tells it
    /// of the claim. (Counting the silent peers let a taker among four members serve once a
    /// partition healed while the previous owner renewed its lease from a peer that had not
    /// heard of the claim: torture seed 1380.)
    private func isProcessedEverywhere(_ confirmation: Confirmation) -> Bool {
        var processed = 1
        for (member, sequence) in confirmation.waits {
            guard let peer = peers[member] else { continue }
            if peer.reportedProcessed >= sequence {
                processed += 1
            } else if peer.isUp {
                return false
            }
        }
        return processed >= configuration.quorum
    }

    // MARK: Events

    /// A peer's channel restarted (a new epoch): forget what was known of its progress, and
    /// give it the whole table again.
    public mutating func peerRestarted(_ member: ClusterMemberID) {
        guard peers[member] != nil else { return }
        peers[member]!.claimsProcessed = 0
        peers[member]!.reportedProcessed = 0
        peers[member]!.echo = nil
        peers[member]!.pendingEcho = nil
        peers[member]!.latestSentAt = nil
        peers[member]!.needsFullTable = true
    }

    /// The channel's stream to `member` was reset (``SyncChannel/resetStream(to:)``, which a
    /// bulk resync does), or it refused a send of claims: claims in flight to it were dropped,
    /// so give it the whole table again (under a newer number, which supersedes the lost ones).
    public mutating func streamReset(to member: ClusterMemberID) {
        peers[member]?.needsFullTable = true
    }

    /// Takes an ownership record delivered by the channel from `member`; other records are
    /// ignored.
    /// Received claim versions and beacon times at or above this are refused.
    static let valueCeiling: UInt64 = 1 << 62

    public mutating func receive(_ record: SyncRecord, from member: ClusterMemberID, now: Timestamp) -> [OwnershipAction] {
        guard peers[member] != nil else { return [] }
        switch record {
        case .ownershipBeacon(let beacon):
            guard admit(beacon.incarnation, from: member) else { return [] }
            // Times this far out (146 years in nanoseconds) are a forger's: taken, the largest
            // would shut the peer's genuine beacons out, or block lease renewal, for good.
            guard beacon.sentAt.nanoseconds < Self.valueCeiling, (beacon.echo?.nanoseconds ?? 0) < Self.valueCeiling else { return [] }
            if let latest = peers[member]!.latestSentAt, beacon.sentAt.nanoseconds <= latest.nanoseconds { return [] }
            // A beacon the peer sent before it heard of this incarnation speaks of a previous
            // one: its echo and its count of our claims mean nothing here. (Taken, and with
            // restarts inferred from falling counts, two members reset each other's counts in
            // turn, for ever, and neither got a lease again.)
            let current = beacon.recipientIncarnation == configuration.incarnation
            peers[member]!.lastHeard = now
            peers[member]!.latestSentAt = beacon.sentAt
            if current, let echo = beacon.echo {
                // The echo renews the lease only once the claims the peer sent before it are
                // processed: a member hears of a claim against it before its lease is renewed.
                if beacon.claimsSent <= peers[member]!.claimsProcessed {
                    renew(member, echo: echo)
                } else {
                    peers[member]!.pendingEcho = (echo, beacon.claimsSent)
                }
            }
            peers[member]!.up = beacon.up
            peers[member]!.ready = beacon.ready
            if current { peers[member]!.reportedProcessed = beacon.claimsProcessed }
            return updateView(now: now) + servingChanges(now: now)
        case .segmentClaims(let incarnation, let sequence, let claims):
            guard admit(incarnation, from: member) else { return [] }
            peers[member]!.claimsProcessed = sequence
            if let pending = peers[member]!.pendingEcho, pending.claimsSent <= sequence {
                peers[member]!.pendingEcho = nil
                renew(member, echo: pending.echo)
            }
            var news: [SegmentClaim] = []
            // A version near the largest would trap at the next move (version + 1): no genuine
            // claim gets there.
            for claim in claims where Int(claim.segment.rawValue) < table.count && claim.version < Self.valueCeiling {
                let held = table[Int(claim.segment.rawValue)]
                guard claim.supersedes(held) else {
                    // A claim at the version of this member's own takeover claim, which wins by
                    // the higher ID (two members took the segment over, each cut off from the
                    // other): its owner may have served the segment already, beyond the copy of
                    // the owner before. The SAs come from its replica instead (torture seed
                    // 122650 adopted them from the dead owner's, below the other's numbers).
                    if isMine(held), claim.version == held.version, let owner = claim.owner, owner != configuration.member,
                        let origin = acquired[claim.segment], !origin.handedOver, origin.previousOwner != configuration.member
                    {
                        acquired[claim.segment] = (owner, false)
                    }
                    continue
                }
                table[Int(claim.segment.rawValue)] = claim
                news.append(claim)
                if isMine(claim) {
                    acquired[claim.segment] = (held.owner, true)
                } else {
                    acquired[claim.segment] = nil
                    awaitingConfirmation[claim.segment] = nil
                }
            }
            var actions: [OwnershipAction] = []
            if !news.isEmpty { actions += broadcast(news, except: member) }
            return actions + servingChanges(now: now)
        default:
            return []
        }
    }

    /// Advances the machine to `now`: beacons, views, handovers and takeovers.
    public mutating func tick(now: Timestamp) -> [OwnershipAction] {
        var actions = updateView(now: now)
        let silent = now.nanoseconds < startedAt.nanoseconds + configuration.startupSilenceNanoseconds
        if !silent, lastBeacon.map({ now.nanoseconds >= $0.nanoseconds + configuration.beaconNanoseconds }) ?? true {
            lastBeacon = now
            let view = up
            // Echoes vouch for leases: only once this member holds the claims of every peer it
            // counts as up (each sends its whole table to a peer that comes up). Without this,
            // a restarted member's first echoes renewed an old owner's lease while the new
            // owner served (found by Models/segment-leases.pml).
            let vouches = peers.values.allSatisfy { !$0.isUp || $0.claimsProcessed > 0 }
            for (member, peer) in peers.sorted(by: { $0.key < $1.key }) {
                let beacon = OwnershipBeacon(
                    incarnation: configuration.incarnation, recipientIncarnation: peer.incarnation ?? 0, sentAt: now, echo: vouches ? peer.latestSentAt : nil, up: view, claimsSent: peer.claimsSent,
                    claimsProcessed: peer.claimsProcessed, ready: isReady)
                actions.append(.send([.ownershipBeacon(beacon)], to: member))
            }
        }
        // After the silence, a failure timeout of beacons before acting: every peer that can hear
        // this member has had the time to answer, so that it does not act on a view of one.
        let listening = now.nanoseconds < startedAt.nanoseconds + configuration.startupSilenceNanoseconds + configuration.failureNanoseconds
        if !silent { actions += releaseStaleClaims() }
        if !listening { actions += moveSegments(now: now) }
        return actions + servingChanges(now: now)
    }

    // MARK: Internals

    /// The most claims one record carries: with its header, one record fits a datagram of the
    /// default size.
    static let claimsPerRecord = 64

    /// Whether to take a record from the peer's `incarnation`: a newer one than known means the
    /// peer restarted (its claims are numbered from 1 again), whether or not the channel said
    /// so first; an older one is a stale record of a previous life, ignored.
    private mutating func admit(_ incarnation: UInt32, from member: ClusterMemberID) -> Bool {
        if let known = peers[member]!.incarnation {
            guard incarnation >= known else { return false }
            if incarnation > known { peerRestarted(member) }
        }
        peers[member]!.incarnation = incarnation
        return true
    }

    private mutating func renew(_ member: ClusterMemberID, echo: Timestamp) {
        if echo.nanoseconds > (peers[member]!.echo?.nanoseconds ?? 0) { peers[member]!.echo = echo }
    }

    /// Marks peers up or down; gives a peer that came up (or restarted) the whole table.
    private mutating func updateView(now: Timestamp) -> [OwnershipAction] {
        var actions: [OwnershipAction] = []
        for member in peers.keys.sorted() {
            let peer = peers[member]!
            let isUp = peer.lastHeard.map { now.nanoseconds < $0.nanoseconds + configuration.failureNanoseconds } ?? false
            if isUp != peer.isUp {
                peers[member]!.isUp = isUp
                actions.append(isUp ? .peerUp(member) : .peerDown(member))
                if isUp { peers[member]!.needsFullTable = true }
            }
            if isUp, peers[member]!.needsFullTable {
                peers[member]!.needsFullTable = false
                // Even an empty table goes out as a record: its sequence number tells the peer
                // that whatever was dropped before it is superseded.
                actions += send(table.filter { $0.version > 0 }, to: member, evenIfEmpty: true)
            }
        }
        let view = up
        let agreed = peers.values.filter(\.isUp).allSatisfy { $0.up == view }
        if !agreed {
            agreement = nil
        } else if agreement?.view != view {
            agreement = (view, now)
        }
        return actions
    }

    /// Releases what the table says a previous incarnation of this member owns: nobody holds
    /// its SAs any more (the peers took over what they could while this member was silent).
    private mutating func releaseStaleClaims() -> [OwnershipAction] {
        var released: [SegmentClaim] = []
        for index in table.indices where table[index].owner == configuration.member && !isMine(table[index]) {
            table[index] = SegmentClaim(segment: table[index].segment, owner: nil, version: table[index].version + 1)
            released.append(table[index])
        }
        return broadcast(released, except: nil)
    }

    /// Hands over and takes over segments, when the views have been agreed for a lease.
    private mutating func moveSegments(now: Timestamp) -> [OwnershipAction] {
        guard let agreement, now.nanoseconds >= agreement.since.nanoseconds + configuration.leaseNanoseconds, hasLease(now: now)
        else { return [] }
        if assignment?.members != agreement.view {
            assignment = try? SegmentAssignment(segments: configuration.segments, members: agreement.view)
        }
        guard let assignment else { return [] }
        let me = configuration.member
        var claims: [SegmentClaim] = []
        var taken: [Segment] = []
        for index in table.indices {
            let held = table[index]
            guard let target = assignment.owner(of: held.segment) else { continue }
            if isMine(held), target != me, peers[target]?.ready == true, let incarnation = peers[target]?.incarnation,
                awaitingConfirmation[held.segment] == nil
            {
                table[index] = SegmentClaim(segment: held.segment, owner: target, incarnation: incarnation, version: held.version + 1)
                acquired[held.segment] = nil
                claims.append(table[index])
            } else if target == me, held.owner.map({ !agreement.view.contains($0) }) ?? true, isReady || held.owner == nil {
                table[index] = SegmentClaim(
                    segment: held.segment, owner: me, incarnation: configuration.incarnation, version: held.version + 1)
                acquired[held.segment] = (held.owner, false)
                claims.append(table[index])
                taken.append(held.segment)
            }
        }
        guard !claims.isEmpty else { return [] }
        let actions = broadcast(claims, except: nil)
        for segment in taken {
            var waits: [ClusterMemberID: UInt64] = [:]
            for (member, peer) in peers where peer.isUp { waits[member] = peer.claimsSent }
            awaitingConfirmation[segment] = Confirmation(waits: waits)
        }
        return actions
    }

    /// Sends claims to every peer that is up (but `excluded`).
    private mutating func broadcast(_ claims: [SegmentClaim], except excluded: ClusterMemberID?) -> [OwnershipAction] {
        var actions: [OwnershipAction] = []
        for member in peers.keys.sorted() where member != excluded && peers[member]!.isUp {
            actions += send(claims, to: member)
        }
        return actions
    }

    /// Numbered claims records of at most ``claimsPerRecord`` claims each.
    private mutating func send(_ claims: [SegmentClaim], to member: ClusterMemberID, evenIfEmpty: Bool = false) -> [OwnershipAction] {
        guard !claims.isEmpty || evenIfEmpty else { return [] }
        var records: [SyncRecord] = []
        for start in stride(from: 0, to: max(claims.count, 1), by: Self.claimsPerRecord) {
            peers[member]!.claimsSent += 1
            records.append(.segmentClaims(incarnation: configuration.incarnation, sequence: peers[member]!.claimsSent, Array(claims[start..<min(start + Self.claimsPerRecord, claims.count)])))
        }
        return [.send(records, to: member)]
    }

    /// Start and stop actions for the segments whose serving changed since the last report.
    private mutating func servingChanges(now: Timestamp) -> [OwnershipAction] {
        for (segment, confirmation) in awaitingConfirmation {
            if confirmation.completedAt == nil, isProcessedEverywhere(confirmation) { awaitingConfirmation[segment]!.completedAt = now }
            if isConfirmed(segment, now: now) { awaitingConfirmation[segment] = nil }
        }
        let serving = Set(servedSegments(now: now))
        guard serving != reportedServing else { return [] }
        let stopped = reportedServing.subtracting(serving).sorted()
        let incarnations = peers.mapValues(\.incarnation)
        for segment in stopped { incarnationsAtStop[segment] = incarnations }
        var actions: [OwnershipAction] = stopped.map { .stopServing($0) }
        for segment in serving.subtracting(reportedServing).sorted() {
            var origin = acquired[segment] ?? (configuration.member, true)
            if origin.previousOwner == configuration.member, let atStop = incarnationsAtStop[segment],
                incarnations.contains(where: { atStop[$0.key] ?? nil != $0.value })
            {
                // A peer restarted since this member stopped: a claim of another member on the
                // segment, and its serving, may have been forgotten by every member that knew
                // (only the peers whose memory survived vouch, through their echoes, that this
                // member heard of every claim against it). Torture seed 415: a member cut off
                // resumed its own counters after the member that took its segment over, and
                // the one that confirmed the claim, had both restarted.
                origin.handedOver = false
            }
            incarnationsAtStop[segment] = nil
            actions.append(.startServing(segment, previousOwner: origin.previousOwner, handedOver: origin.handedOver))
            // Only the first start after an acquisition concerns the previous owner; a start
            // after a lapse of the lease resumes this member's own SAs.
            acquired[segment] = (configuration.member, true)
        }
        reportedServing = serving
        return actions
    }
}
