public import IPsecHACore
import Metrics

/// Publishes a ``ClusterMember``'s role, readiness and state to swift-metrics, beside the synch
/// channel's counters (``SyncMetricsReporter``, whose metrics it reports too): what an operator
/// watches during a switchover, an upgrade or a failover (`Docs/Operations.md`).
///
/// Call ``report(_:now:)`` from the embedder's loop, every turn or every second: counters add
/// what changed since the last report, gauges take the member's value.
///
/// | metric | kind | meaning |
/// |---|---|---|
/// | `ipsecha_member_active` | gauge | 1 while the member serves (active, or load sharing), else 0 |
/// | `ipsecha_member_readiness` | gauge, per `state` | 1 for the member's ``ClusterMember/readiness`` (`active`, `complete-copy`, `last-resort`, `resyncing`, `incomplete`), 0 for the others |
/// | `ipsecha_member_electable` | gauge | 1 when keepalived may elect the member (``ClusterMemberReadiness/isElectable``) |
/// | `ipsecha_member_epoch` | gauge | the synch channel's epoch (rises at every takeover and restart) |
/// | `ipsecha_member_ike_sas` | gauge | IKE SAs the member holds (served, or its copy) |
/// | `ipsecha_member_child_sas` | gauge | Child SAs the member holds |
/// | `ipsecha_member_promotions` | counter, per `reason` | times the member became active: `switchover`, `failure` (the active member fell silent), `external` (keepalived, an operator), `last-resort` |
/// | `ipsecha_member_step_downs` | counter | times the member left the active role (a switchover, keepalived, a newer active member) |
/// | `ipsecha_member_replies_released_at_deadline` | counter | held IKE replies sent without the standbys' acknowledgement |
public struct ClusterMemberMetrics {
    private var sync: SyncMetricsReporter
    private let active = Gauge(label: "ipsecha_member_active")
    private let electable = Gauge(label: "ipsecha_member_electable")
    private let epoch = Gauge(label: "ipsecha_member_epoch")
    private let ikeSAs = Gauge(label: "ipsecha_member_ike_sas")
    private let childSAs = Gauge(label: "ipsecha_member_child_sas")
    private let readiness: [(ClusterMemberReadiness, Gauge)] = ClusterMemberReadiness.allCases.map {
        ($0, Gauge(label: "ipsecha_member_readiness", dimensions: [("state", $0.rawValue)]))
    }
    private let promotionsByReason: [String: Counter] = Dictionary(
        uniqueKeysWithValues: ["switchover", "failure", "external", "last-resort"].map {
            ($0, Counter(label: "ipsecha_member_promotions", dimensions: [("reason", $0)]))
        })
    private let stepDowns = Counter(label: "ipsecha_member_step_downs")
    private let repliesReleasedAtDeadline = Counter(label: "ipsecha_member_replies_released_at_deadline")
    private var last = (promotions: 0, stepDowns: 0, released: 0)

    /// A reporter for a member with these peers; the metrics are created in the bootstrapped
    /// backend (or the task's, under `withMetricsFactory`).
    public init(peers: [ClusterMemberID]) {
        sync = SyncMetricsReporter(peers: peers)
    }

    /// Adds what changed since the last report and sets the gauges.
    public mutating func report(_ member: ClusterMember, now: Timestamp) {
        switch member.lifecycle {
        case .active(let serving): sync.report(channel: member.channel, replicator: serving.replicator, now: now)
        case .sharing(let sharing): sync.report(channel: member.channel, replicator: sharing.replicator, now: now)
        case .standby(let standby): sync.report(channel: member.channel, replica: standby.replica, now: now)
        case .moving: break
        }
        active.record(member.isActive ? 1 : 0)
        let current = member.readiness
        for (state, gauge) in readiness { gauge.record(state == current ? 1 : 0) }
        electable.record(current.isElectable ? 1 : 0)
        epoch.record(Double(member.channel.configuration.epoch))
        let state = member.state
        ikeSAs.record(Double(state.ikeSAs.count))
        childSAs.record(Double(state.childSACount))
        if member.promotions > last.promotions, let reason = member.lastPromotion {
            promotionsByReason[Self.label(of: reason)]?.increment(by: Int64(member.promotions - last.promotions))
        }
        if member.stepDowns > last.stepDowns { stepDowns.increment(by: Int64(member.stepDowns - last.stepDowns)) }
        if member.tokensReleasedAtDeadline > last.released {
            repliesReleasedAtDeadline.increment(by: Int64(member.tokensReleasedAtDeadline - last.released))
        }
        last = (member.promotions, member.stepDowns, member.tokensReleasedAtDeadline)
    }

    static func label(of reason: PromotionReason) -> String {
        switch reason {
        case .switchOver: "switchover"
        case .activeMemberSilent: "failure"
        case .external: "external"
        case .noCompleteCopy: "last-resort"
        }
    }
}
