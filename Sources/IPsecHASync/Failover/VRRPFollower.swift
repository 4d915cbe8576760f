public import IPsecHACore

/// A VRRP instance's state as keepalived reports it on its notify FIFO (`notify_fifo` in
/// `global_defs`), one line per transition: `INSTANCE "VI_1" MASTER 150`.
public enum VRRPState: String, Sendable, Hashable, CustomStringConvertible {
    /// This host holds the virtual address.
    case master = "MASTER"
    /// Another host holds it (or nobody yet).
    case backup = "BACKUP"
    /// keepalived found this host unfit (an interface down, a failed check): no address here.
    case fault = "FAULT"
    /// keepalived is stopping: it removed the address.
    case stop = "STOP"

    public var description: String { rawValue }

    /// The state a notify-FIFO line reports for `instance`, or nil for other lines: other
    /// instances, groups, and `MASTER_RX_LOWER_PRI` (the master heard a lower-priority advert:
    /// it is still master, nothing changes).
    public init?(notifyFIFOLine line: some StringProtocol, instance: String) {
        let words = line.split(separator: " ")
        guard words.count >= 3, words[0] == "INSTANCE", words[1] == "\"\(instance)\"" else { return nil }
        guard let state = VRRPState(rawValue: String(words[2])) else { return nil }
        self = state
    }
}

/// The rule that joins keepalived's decision (who holds the virtual address) and the synch
/// channel's failure detector (is the active member still talking), for one member.
///
/// keepalived decides; the detector is a second opinion that never overrides it:
///
/// | this member | keepalived says | the synch channel says | decision |
/// |---|---|---|---|
/// | standby | MASTER | anything | take over (if the old active still sends heartbeats this is a split brain: the new, higher epoch wins, and the old active steps down when it hears it) |
/// | standby | BACKUP, FAULT, STOP, nothing yet | active silent | hold back: the address is elsewhere, or this host is unfit; taking over would answer from an address this host does not hold |
/// | active | BACKUP, FAULT, STOP | anything | step down: another member holds the address (or will); stop sending and rejoin as a standby |
/// | active | MASTER (again) | anything | stay |
///
/// Without keepalived (``VRRPFollower`` not used) the detector alone decides.
public struct VRRPFollower: Sendable {
    /// What a member must do.
    public enum Decision: Sendable, Hashable {
        /// Nothing changes.
        case stay
        /// Promote this member (``ClusterRole/promote(_:newEpoch:completeCopy:)`` with the reason given).
        case takeOver(PromotionReason)
        /// Stop acting as the active member and rejoin as a standby.
        case stepDown(String)
        /// The detector says the active member is dead but keepalived has not moved the address
        /// here: do not take over. Reported once per silence.
        case holdBack(String)
    }

    /// The last state keepalived reported; nil before the first line.
    public private(set) var state: VRRPState?
    private var heldBack = false

    /// A follower that has heard nothing from keepalived yet.
    public init() {}

    /// Takes a state from keepalived and says what to do about it.
    public mutating func heard(_ state: VRRPState, isActive: Bool) -> Decision {
        self.state = state
        switch (state, isActive) {
        case (.master, false):
            heldBack = false
            return .takeOver(.external("keepalived: MASTER"))
        case (.master, true):
            return .stay
        case (_, true):
            return .stepDown("keepalived: \(state)")
        case (_, false):
            return .stay
        }
    }

    /// The failure detector's opinion (``ClusterRoleEvent/activeMemberFailed(_:)``) on a standby.
    public mutating func activeMemberSilent(_ member: ClusterMemberID) -> Decision {
        if state == .master { return .takeOver(.external("keepalived: MASTER")) }
        guard !heldBack else { return .stay }
        heldBack = true
        return .holdBack("active member \(member) silent on the synch channel, keepalived says \(state.map(\.description) ?? "nothing yet"): not taking over")
    }

    /// The active member was heard again after a silence: a later silence is reported again.
    public mutating func activeMemberHeard() { heldBack = false }
}
