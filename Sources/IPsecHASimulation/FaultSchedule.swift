import IPsecHACore

/// Which member a fault strikes, resolved when the fault happens (so that a schedule drawn in
/// advance can say "the active member" after two takeovers).
public enum FaultTarget: Sendable, Hashable, CustomStringConvertible {
    /// The member with this ID (1 to the member count).
    case member(UInt16)
    /// The member that holds the cluster's address (the active one); none while nobody does.
    case active
    /// A running member that is not the active one, drawn from the run's seed.
    case standby
    /// The member that crashed most recently: for a restart, the most recent of those still
    /// down; for a crash, the most recent if it runs again (a member that dies during its resync).
    case lastCrashed

    public var description: String {
        switch self {
        case .member(let id): "\(id)"
        case .active: "active"
        case .standby: "standby"
        case .lastCrashed: "last"
        }
    }

    init(parsing text: Substring) throws(SimulationError) {
        switch text {
        case "active": self = .active
        case "standby": self = .standby
        case "last": self = .lastCrashed
        default:
            guard let id = UInt16(text), id >= 1 else { throw .invalid("fault target \"\(text)\": a member ID, active, standby or last") }
            self = .member(id)
        }
    }
}

/// One fault of a ``FaultSchedule``.
public enum SimulationFault: Sendable, Hashable, CustomStringConvertible {
    /// The member stops at once, with whatever it was doing; its state is gone.
    case crash(FaultTarget)
    /// A crashed member starts again, empty, at a newer epoch, and rejoins as a standby. With
    /// `clockReset` its monotonic clock starts again near zero, as after a reboot.
    case restart(FaultTarget, clockReset: Bool)
    /// The synch link is cut between the groups (both ways); members within a group still talk.
    /// A member in no group is cut off from every group.
    case partition([[UInt16]])
    /// Every partition and every per-direction loss ends; the delay is back to its default.
    case heal
    /// Synch datagrams from one member to another are lost with this probability (one
    /// direction: the other keeps its loss).
    case linkLoss(from: UInt16, to: UInt16, loss: Double)
    /// Every synch datagram takes this long more (the default is back with ``heal``).
    case syncDelay(milliseconds: UInt64)
    /// The external arbiter (keepalived-like VRRP) gives the address to this member, whatever
    /// the synch channel thinks: MASTER to it, BACKUP to the others.
    case vrrpMaster(FaultTarget)

    public var description: String {
        switch self {
        case .crash(let target): "crash=\(target)"
        case .restart(let target, let reset): "\(reset ? "reboot" : "restart")=\(target)"
        case .partition(let groups): "partition=" + groups.map { $0.map(String.init).joined(separator: "+") }.joined(separator: "/")
        case .heal: "heal"
        case .linkLoss(let from, let to, let loss): "loss=\(from)>\(to)~\(loss)"
        case .syncDelay(let milliseconds): "delay=\(milliseconds)"
        case .vrrpMaster(let target): "vrrp=\(target)"
        }
    }

    /// The kind, as the torture table counts faults.
    public var kind: String {
        switch self {
        case .crash: "crash"
        case .restart(_, let reset): reset ? "reboot" : "restart"
        case .partition: "partition"
        case .heal: "heal"
        case .linkLoss: "asymmetric loss"
        case .syncDelay: "long delay"
        case .vrrpMaster: "arbiter decision"
        }
    }
}

/// A fault at a time of the run.
public struct ScheduledFault: Sendable, Hashable, CustomStringConvertible {
    /// When, in milliseconds from the start of the run.
    public var atMs: UInt64
    /// What.
    public var fault: SimulationFault

    /// A fault at `atMs`.
    public init(atMs: UInt64, _ fault: SimulationFault) {
        self.atMs = atMs
        self.fault = fault
    }

    public var description: String { "\(atMs):\(fault)" }
}

/// The faults of one ``ClusterSimulation`` run, in time order: crashes of any member (the one
/// that just took over included), restarts and reboots, partitions of the synch link and their
/// heal, loss in one direction, long delays, and the decisions of an external arbiter that may
/// disagree with the synch channel.
///
/// Written as `TIME:FAULT` items separated by commas, TIME in milliseconds from the start:
/// `crash=T`, `restart=T`, `reboot=T` (a restart with the clock reset), `partition=1+3/2`
/// (groups separated by `/`, members by `+`), `heal`, `loss=1>2~0.5` (from member 1 to member 2),
/// `delay=MS`, `vrrp=T`; T a member ID, `active`, `standby` or `last` (the last crashed).
/// For example `300:crash=active,500:restart=last,900:partition=1/2,1300:heal`.
public struct FaultSchedule: Sendable, Hashable, CustomStringConvertible {
    /// The faults, in time order.
    public private(set) var faults: [ScheduledFault]

    /// A schedule of these faults (sorted by time; faults at the same time keep their order).
    public init(_ faults: [ScheduledFault]) {
        self.faults = faults.enumerated().sorted { ($0.element.atMs, $0.offset) < ($1.element.atMs, $1.offset) }.map(\.element)
    }

    /// Whether an external arbiter decides who is active (a `vrrp=` fault is in the schedule).
    public var hasArbiter: Bool { faults.contains { if case .vrrpMaster = $0.fault { true } else { false } } }

    public var description: String { faults.map(\.description).joined(separator: ",") }

    /// Parses the written form (see the type's documentation); the error names the item.
    public init(parsing text: String) throws(SimulationError) {
        var faults: [ScheduledFault] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: true) {
            guard let colon = item.firstIndex(of: ":"), let at = UInt64(item[..<colon]) else {
                throw .invalid("fault \"\(item)\": TIME:FAULT, TIME in milliseconds")
            }
            let body = item[item.index(after: colon)...]
            let name = body.prefix { $0 != "=" }
            let argument = body.dropFirst(name.count + 1)
            let fault: SimulationFault
            switch name {
            case "crash": fault = .crash(try FaultTarget(parsing: argument))
            case "restart": fault = .restart(try FaultTarget(parsing: argument), clockReset: false)
            case "reboot": fault = .restart(try FaultTarget(parsing: argument), clockReset: true)
            case "vrrp": fault = .vrrpMaster(try FaultTarget(parsing: argument))
            case "heal" where argument.isEmpty: fault = .heal
            case "delay":
                guard let milliseconds = UInt64(argument), milliseconds <= 1_000 else { throw .invalid("fault \"\(item)\": delay=MS, up to 1000") }
                fault = .syncDelay(milliseconds: milliseconds)
            case "partition":
                let groups = argument.split(separator: "/").map { $0.split(separator: "+").compactMap { UInt16($0) } }
                guard groups.count >= 1, groups.allSatisfy({ !$0.isEmpty }), groups.joined().count == argument.split(whereSeparator: { "/+".contains($0) }).count
                else { throw .invalid("fault \"\(item)\": partition=1+2/3, member IDs in groups") }
                fault = .partition(groups)
            case "loss":
                let parts = argument.split(separator: "~")
                let ends = parts.first?.split(separator: ">") ?? []
                guard parts.count == 2, ends.count == 2, let from = UInt16(ends[0]), let to = UInt16(ends[1]), let loss = Double(parts[1]),
                    (0...1).contains(loss)
                else { throw .invalid("fault \"\(item)\": loss=FROM>TO~P, P from 0 to 1") }
                fault = .linkLoss(from: from, to: to, loss: loss)
            default:
                throw .invalid("fault \"\(item)\": crash, restart, reboot, partition, heal, loss, delay or vrrp")
            }
            faults.append(ScheduledFault(atMs: at, fault))
        }
        self.init(faults)
    }

    /// Checks the schedule against a run of `members` members lasting `durationMs`.
    func validate(members: Int, durationMs: UInt64) throws(SimulationError) {
        for scheduled in faults {
            guard scheduled.atMs < durationMs else { throw .invalid("fault \(scheduled) after the end of the run") }
            var ids: [UInt16] = []
            switch scheduled.fault {
            case .crash(.member(let id)), .restart(.member(let id), _), .vrrpMaster(.member(let id)): ids = [id]
            case .partition(let groups): ids = Array(groups.joined())
            case .linkLoss(let from, let to, _): ids = [from, to]
            default: break
            }
            guard ids.allSatisfy({ (1...UInt16(members)).contains($0) }) else { throw .invalid("fault \(scheduled) names a member the run does not have") }
        }
    }

    /// A schedule drawn from `seed` for a run of `members` members lasting `durationMs`: about
    /// `count` faults starting between a tenth of the run and half of it, every partition and
    /// loss healed and every crashed member restarted (some with a reboot) by 60% of it, so
    /// that the rest of the run shows how the cluster recovered; with `arbiter` the arbiter's
    /// decisions among them.
    public static func random(seed: UInt64, members: Int, durationMs: UInt64, count: Int, arbiter: Bool = false) -> FaultSchedule {
        var random = SplitMix64(seed: seed ^ 0xFA_017)
        let first = durationMs / 10, last = durationMs / 2
        func time() -> UInt64 { first + random.next() % max(1, last - first) }
        func member() -> UInt16 { UInt16(1 + random.next() % UInt64(members)) }
        var faults: [ScheduledFault] = []
        let latest = durationMs * 3 / 5
        func add(_ at: UInt64, _ fault: SimulationFault) { faults.append(ScheduledFault(atMs: min(at, latest), fault)) }
        for _ in 0..<count {
            let at = time()
            switch random.next() % (arbiter ? 8 : 7) {
            case 0, 1:
                // Crashes of the active member are the ones that matter most: half of them.
                add(at, .crash(random.next() % 2 == 0 ? .active : .standby))
                add(at + 50 + random.next() % 400, .restart(.lastCrashed, clockReset: random.next() % 3 == 0))
            case 2:
                // A partition that isolates one member from the others.
                let alone = member()
                let others = (1...UInt16(members)).filter { $0 != alone }
                add(at, .partition([[alone], others]))
                add(at + 20 + random.next() % 600, .heal)
            case 3:
                let from = member()
                var to = member()
                if to == from { to = from % UInt16(members) + 1 }
                add(at, .linkLoss(from: from, to: to, loss: [0.5, 0.9, 1.0][Int(random.next() % 3)]))
                add(at + 20 + random.next() % 600, .heal)
            case 4:
                add(at, .syncDelay(milliseconds: [20, 80, 200][Int(random.next() % 3)]))
                add(at + 50 + random.next() % 400, .heal)
            case 5:
                // The active member crashes, and whoever takes over crashes soon after.
                add(at, .crash(.active))
                let second = at + 150 + random.next() % 300
                add(second, .crash(.active))
                add(second + 10, .restart(.lastCrashed, clockReset: false))
                add(second + 100 + random.next() % 200, .restart(.lastCrashed, clockReset: true))
            case 6:
                // A standby dies while it is being resynced: crashed, restarted, crashed again
                // within its resync.
                add(at, .crash(.standby))
                add(at + 20, .restart(.lastCrashed, clockReset: false))
                add(at + 22 + random.next() % 10, .crash(.lastCrashed))
                add(at + 100 + random.next() % 200, .restart(.lastCrashed, clockReset: true))
            default:
                add(at, .vrrpMaster(random.next() % 2 == 0 ? .standby : .member(member())))
            }
        }
        return FaultSchedule(faults)
    }
}
