public import IPsecHACore

/// Why a member became the active one.
public enum PromotionReason: Sendable, Hashable, CustomStringConvertible {
    /// The synch channel's failure detector declared the active member dead.
    case activeMemberSilent(ClusterMemberID)
    /// An external system decided (a VRRP / keepalived transition, an operator).
    case external(String)
    /// No member said it was active or a ready standby for this long: the cluster has no
    /// complete copy left (every member restarted, or the active member died while the only
    /// standby was resyncing), and this member serves what it holds, which may be nothing.
    case noCompleteCopy(silentFor: Duration)
    /// The active member handed its role over (``ClusterMember/switchOver(to:now:)``): it
    /// stopped, and this member holds its exact state.
    case switchOver(from: ClusterMemberID)

    public var description: String {
        switch self {
        case .switchOver(let member): "planned switchover from \(member)"
        case .activeMemberSilent(let member): "active \(member) silent on the synch channel"
        case .external(let source): "external decision: \(source)"
        case .noCompleteCopy(let silence): "no active member or ready standby for \(silence): serving what this member holds"
        }
    }
}

/// What the role machine reports to its owner.
public enum ClusterRoleEvent: Sendable, Hashable {
    /// The active member has not been heard for the configured number of heartbeat intervals.
    case activeMemberFailed(ClusterMemberID)
    /// This member is now active: compute and apply the takeover plan.
    case promoted(PromotionReason)
    /// Another member claims to be active with a newer epoch (split brain): this member is a
    /// standby again and must stop sending on the SAs it took over.
    case steppedDown(newerActive: ClusterMemberID, epoch: UInt32)
}

/// Failure detection and promotion for one member (design, "Failover", step 1).
///
/// A standby declares the active member failed when nothing was heard from it for
/// `heartbeatInterval x missCount`; the owner then promotes (``promote(_:newEpoch:completeCopy:)``), or promotes
/// at once when an external system decides. Active members say so in their hellos
/// (``activeCapability``); a member that is active and hears another active member with a newer
/// epoch (or the same epoch and a higher member ID) steps down: epochs decide split brains,
/// after completeness (``incompleteCopyCapability``).
public struct ClusterRole: Sendable {
    /// The hello capability bit an active member sets.
    public static let activeCapability: UInt32 = 0x1
    /// The hello capability bit of a member that stepped down from the active role and is not
    /// a ready standby yet: it may have sent on the SAs the receiver holds (a split brain that
    /// healed), so the active member must move its outbound counters past anything that member
    /// could have used (the reference gateway jumps them by 2^30; see
    /// ``reassertionDue(afterHelloFrom:epoch:capabilities:now:)``).
    public static let steppedDownCapability: UInt32 = 0x2
    /// The hello capability bit of an active member that took over without a complete copy
    /// (``PromotionReason/noCompleteCopy(silentFor:)``, or an external decision on a standby
    /// still resyncing). Completeness decides before epochs: an active member with a complete
    /// copy never steps down for one without, and one without steps down for any with, so
    /// that a partition that healed after a last-resort takeover keeps the state that is whole.
    public static let incompleteCopyCapability: UInt32 = 0x8
    /// Reassertions at most this often (10 s): each moves every outbound counter by 2^30, a
    /// key holder sending hellos with ever new epochs burnt that much per Child SA with each
    /// (review M2, L8), and a real split brain does not heal twice in ten seconds.
    public static let minimumReassertionInterval: UInt64 = 10_000_000_000

    /// Whether this member is the active one.
    public private(set) var isActive: Bool
    /// Whether this active member took over without a complete copy (see
    /// ``incompleteCopyCapability``).
    public private(set) var servesIncompleteCopy = false
    /// This member.
    public let member: ClusterMemberID
    /// This member's epoch (as in its synch channel).
    public private(set) var epoch: UInt32
    /// The member this one believes is active, if another.
    public private(set) var activeMember: ClusterMemberID?
    /// Heartbeat interval of the synch channel, in nanoseconds.
    public var heartbeatInterval: Duration { .nanoseconds(Int64(clamping: heartbeatNanoseconds)) }
    private let heartbeatNanoseconds: UInt64
    /// Intervals without a word from the active member before it is declared failed.
    public let missCount: UInt64
    private var failureReported = false
    /// Epochs of stepped-down members already answered by a reassertion (at most 64 kept).
    private var reassertedEpochs: Set<UInt32> = []
    private var lastReassertion: Timestamp?

    /// A member in its initial role.
    public init(member: ClusterMemberID, epoch: UInt32, isActive: Bool, activeMember: ClusterMemberID?, heartbeatInterval: Duration = .milliseconds(50), missCount: UInt64 = 3) {
        self.member = member
        self.epoch = epoch
        self.isActive = isActive
        self.activeMember = isActive ? nil : activeMember
        heartbeatNanoseconds = heartbeatInterval.nonNegativeNanoseconds
        self.missCount = max(missCount, 1)
    }

    /// The capabilities to put in this member's hellos.
    public var capabilities: UInt32 {
        guard isActive else { return 0 }
        return Self.activeCapability | (servesIncompleteCopy ? Self.incompleteCopyCapability : 0)
    }

    /// Takes a hello from another member.
    public mutating func heardHello(from peer: ClusterMemberID, epoch peerEpoch: UInt32, capabilities: UInt32) -> [ClusterRoleEvent] {
        guard capabilities & Self.activeCapability != 0, peer != member else { return [] }
        if isActive {
            let peerIncomplete = capabilities & Self.incompleteCopyCapability != 0
            let peerWins =
                peerIncomplete != servesIncompleteCopy
                ? servesIncompleteCopy
                : peerEpoch > epoch || (peerEpoch == epoch && peer.rawValue > member.rawValue)
            guard peerWins else { return [] }
            isActive = false
            servesIncompleteCopy = false
            activeMember = peer
            failureReported = false
            return [.steppedDown(newerActive: peer, epoch: peerEpoch)]
        }
        activeMember = peer
        failureReported = false
        return []
    }

    /// Whether this active member must reassert itself, on a hello with `capabilities` from
    /// `peer` at `epoch` at `now`: the peer stepped down from the active role (a healed split
    /// brain), this member has not answered that epoch yet, and it has not reasserted within
    /// ``minimumReassertionInterval``. When true, the reassertion is counted as done.
    public mutating func reassertionDue(afterHelloFrom peer: ClusterMemberID, epoch peerEpoch: UInt32, capabilities: UInt32, now: Timestamp) -> Bool {
        guard isActive, peer != member, capabilities & Self.steppedDownCapability != 0, !reassertedEpochs.contains(peerEpoch),
            lastReassertion.map({ now.nanoseconds &- $0.nanoseconds >= Self.minimumReassertionInterval }) ?? true
        else { return false }
        if reassertedEpochs.count >= 64 { reassertedEpochs.removeAll() }
        reassertedEpochs.insert(peerEpoch)
        lastReassertion = now
        return true
    }

    /// Checks the active member's liveness: `lastHeard` is when anything authentic last came
    /// from it (``SyncChannel/lastHeard(from:)``), nil if never.
    public mutating func tick(now: Timestamp, lastHeard: Timestamp?) -> [ClusterRoleEvent] {
        guard !isActive, let active = activeMember, !failureReported else { return [] }
        let silence = heartbeatNanoseconds.multipliedReportingOverflow(by: missCount)
        let limit = silence.overflow ? UInt64.max : silence.partialValue
        guard let heard = lastHeard else { return [] }
        guard now.nanoseconds > heard.nanoseconds, now.nanoseconds - heard.nanoseconds >= limit else { return [] }
        failureReported = true
        return [.activeMemberFailed(active)]
    }

    /// Moves this active member to a newer epoch after a healed split brain (after
    /// ``reassertionDue(afterHelloFrom:epoch:capabilities:now:)``), above the other member's,
    /// keeping what it remembers of earlier reassertions. Throws unless active and newer.
    public mutating func reassert(newEpoch: UInt32) throws(ClusterRoleError) {
        guard isActive else { throw .notActive }
        guard newEpoch > epoch else { throw .epochNotNewer(current: epoch, proposed: newEpoch) }
        epoch = newEpoch
    }

    /// Makes this active member a standby on an external decision (keepalived, an operator),
    /// with no active member known until one says hello. Throws unless active.
    public mutating func stepDown() throws(ClusterRoleError) {
        guard isActive else { throw .notActive }
        isActive = false
        servesIncompleteCopy = false
        activeMember = nil
        failureReported = false
    }

    /// Makes this member active (after a failure was reported, or when an external system
    /// decides). The new epoch must be above the current one, so that a split brain resolves
    /// in favour of the newest active member; rotate the synch channel to it too. Without
    /// `completeCopy` the hellos say so (``incompleteCopyCapability``).
    public mutating func promote(_ reason: PromotionReason, newEpoch: UInt32, completeCopy: Bool = true) throws(ClusterRoleError) -> [ClusterRoleEvent] {
        guard !isActive else { throw .alreadyActive }
        guard newEpoch > epoch else { throw .epochNotNewer(current: epoch, proposed: newEpoch) }
        isActive = true
        servesIncompleteCopy = !completeCopy
        epoch = newEpoch
        activeMember = nil
        failureReported = false
        return [.promoted(reason)]
    }
}

/// Errors of ``ClusterRole``.
public enum ClusterRoleError: Error, Sendable, Hashable {
    /// This member is active already.
    case alreadyActive
    /// Only an active member reasserts itself.
    case notActive
    /// A promotion must move to a newer epoch.
    case epochNotNewer(current: UInt32, proposed: UInt32)
}
