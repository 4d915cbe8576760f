public import IPsecHACore

extension SyncRecord {
    /// The record that carries a state change to the standbys.
    public init(_ change: StateChange) {
        switch change {
        case .policyInstalled(let policy, let position): self = .policyUpsert(policy, position: UInt32(clamping: position))
        case .policyRemoved(let id): self = .policyDelete(id)
        case .ikeSACreated(let sa), .ikeSAUpdated(let sa): self = .ikeSAUpsert(sa)
        case .ikeSADeleted(let identifier): self = .ikeSADelete(identifier)
        case .messageIDsUpdated(let identifier, let generation, let snapshot):
            self = .messageIDUpdate(identifier, generation: generation, snapshot)
        case .childSACreated(let sa), .childSAUpdated(let sa): self = .childSAUpsert(sa)
        case .childSADeleted(let spi): self = .childSADelete(inboundSPI: spi)
        case .countersAdvanced(let checkpoint, let generation):
            self = .counterCheckpoints([CounterCheckpointEntry(checkpoint: checkpoint, generation: generation, packetsPerSecond: 0)])
        }
    }
}

/// The active member's side of replication: turns the gateway state's changes into records for
/// every standby, and streams a bulk resync to a standby that joins, restarts or lost more than
/// the channel could repair.
///
/// Tickets let the caller hold an IKE message until the standbys have acknowledged the state
/// it depends on (synchronous replication); ignoring them gives asynchronous replication.
public struct Replicator {
    /// A bulk resync being streamed to one standby, as the channel's buffer lets it.
    ///
    /// It reads a snapshot of the state taken when it began (copy-on-write: free until the
    /// active member changes its own state) and makes each record when it is sent, so that a
    /// resync of hundreds of thousands of SAs never holds them all as records at once.
    struct Resync {
        let id: UInt32
        let snapshot: GatewayState
        /// IKE SAs in identifier order (by dictionary index, so that none is hashed again) and
        /// Child SAs in slot order: the same history gives the same stream. (IKE SA by IKE SA,
        /// each followed by its Child SAs, was tried: reading the Child SAs out of slot order
        /// cost the sender more than the standby saved.)
        let ikeSAs: [Dictionary<IKESAIdentifier, IKESA>.Index]
        let childSlots: [ChildSASlot]
        /// Records of changes made since the snapshot, sent after the resync's end.
        var appended: [SyncRecord] = []
        /// Position of the next record to send.
        var next = 0

        init(id: UInt32, snapshot: GatewayState) {
            self.id = id
            self.snapshot = snapshot
            let table = snapshot.ikeSAs
            ikeSAs = table.indices.sorted { table.keys[$0] < table.keys[$1] }
            var slots: [ChildSASlot] = []
            slots.reserveCapacity(snapshot.childSACount)
            snapshot.forEachChildSACounters { slots.append($0.slot) }
            childSlots = slots
        }

        /// Begin, policies, IKE SAs, Child SAs, end, then the appended records.
        var count: Int { snapshot.spd.policies.count + ikeSAs.count + childSlots.count + 2 + appended.count }

        func records(_ positions: Range<Int>) -> [SyncRecord] { positions.map(record(at:)) }

        func record(at position: Int) -> SyncRecord {
            var offset = position
            let policies = snapshot.spd.policies
            if offset == 0 {
                return .resyncBegin(
                    id: id, scope: .everything, ikeSAs: UInt32(ikeSAs.count), childSAs: UInt32(childSlots.count),
                    policies: UInt32(policies.count))
            }
            offset -= 1
            if offset < policies.count { return .policyUpsert(policies[offset], position: UInt32(offset)) }
            offset -= policies.count
            if offset < ikeSAs.count { return .ikeSAUpsert(snapshot.ikeSAs.values[ikeSAs[offset]]) }
            offset -= ikeSAs.count
            if offset < childSlots.count { return .childSAUpsert(snapshot[childSlots[offset]]!) }
            offset -= childSlots.count
            if offset == 0 {
                return .resyncEnd(
                    id: id, ikeSAs: UInt32(ikeSAs.count), childSAs: UInt32(childSlots.count), policies: UInt32(policies.count))
            }
            return appended[offset - 1]
        }
    }

    /// The standbys replicated to.
    public let standbys: [ClusterMemberID]
    private var resyncs: [ClusterMemberID: Resync] = [:]
    /// The ticket of the last datagram of each standby's latest resync, the records appended to
    /// it included.
    private var resyncCompletions: [ClusterMemberID: SyncTicket] = [:]
    private var nextResyncID: UInt32 = 1
    /// Bulk resyncs started so far.
    public private(set) var resyncsStarted = 0

    /// A replicator for these standbys.
    public init(standbys: [ClusterMemberID]) { self.standbys = standbys }

    /// Whether a bulk resync to `standby` is still being streamed.
    public func isResyncing(_ standby: ClusterMemberID) -> Bool { resyncs[standby] != nil }

    /// Whether a standby holds everything replicated so far that it did not get a ticket for:
    /// it is not being resynced, and it acknowledged the end of its latest resync (with the
    /// records that changes made during it appended). Synchronous replication holds an IKE
    /// message for a standby that was resyncing when the change was made until this is true,
    /// since ``replicate(_:state:channel:now:)`` gives no ticket for such a standby.
    public func hasCaughtUp(_ standby: ClusterMemberID, channel: SyncChannel) -> Bool {
        guard resyncs[standby] == nil else { return false }
        return resyncCompletions[standby].map(channel.isAcknowledged) ?? true
    }

    /// Sends the records of `changes` to every standby. A standby being resynced gets them
    /// after its resync; a standby whose buffer is full is resynced from `state` (which must
    /// already include the changes). Returns one ticket per standby that got the records now.
    public mutating func replicate(
        _ changes: [StateChange], state: GatewayState, channel: inout SyncChannel, now: Timestamp
    ) -> (tickets: [SyncTicket], actions: [SyncChannelAction]) {
        replicate(records: Self.records(for: changes), state: state, channel: &channel, now: now)
    }

    private mutating func replicate(
        records: [SyncRecord], state: GatewayState, channel: inout SyncChannel, now: Timestamp
    ) -> (tickets: [SyncTicket], actions: [SyncChannelAction]) {
        guard !records.isEmpty else { return ([], []) }
        var tickets: [SyncTicket] = []
        var actions: [SyncChannelAction] = []
        for standby in standbys {
            if resyncs[standby] != nil {
                resyncs[standby]!.appended += records
                continue
            }
            do {
                let sent = try channel.send(records, to: standby, now: now)
                if let ticket = sent.ticket { tickets.append(ticket) }
                actions += sent.actions
            } catch {
                actions += startResync(of: standby, from: state, channel: &channel, now: now)
            }
        }
        return (tickets, actions)
    }

    /// Tells the standbys that an exchange on an IKE SA started (`finished` false) or finished,
    /// so that a takeover knows what was in flight. Send it before the request leaves (started)
    /// and once the exchange completed (finished).
    public mutating func replicateExchange(
        of identifier: IKESAIdentifier, messageID: UInt32, initiatedHere: Bool, finished: Bool,
        state: GatewayState, channel: inout SyncChannel, now: Timestamp
    ) -> (tickets: [SyncTicket], actions: [SyncChannelAction]) {
        let record: SyncRecord =
            finished
            ? .exchangeFinished(identifier, messageID: messageID, initiatedHere: initiatedHere)
            : .exchangeStarted(identifier, messageID: messageID, initiatedHere: initiatedHere)
        return replicate(records: [record], state: state, channel: &channel, now: now)
    }

    /// Sends counter checkpoints (from ``CounterCheckpointScheduler``) to every standby, batched.
    public mutating func replicate(
        checkpoints: [CounterCheckpointEntry], state: GatewayState, channel: inout SyncChannel, now: Timestamp
    ) -> (tickets: [SyncTicket], actions: [SyncChannelAction]) {
        replicate(records: Self.batches(checkpoints), state: state, channel: &channel, now: now)
    }

    /// Counter checkpoint records for `entries`, in order: one record, which the channel splits
    /// at entry boundaries into records that fill its datagrams (entries are mostly far smaller
    /// than their largest encoding, about 25 bytes against 79, so they are sized by encoding
    /// them, once).
    public static func batches(_ entries: [CounterCheckpointEntry]) -> [SyncRecord] {
        entries.isEmpty ? [] : [.counterCheckpoints(entries)]
    }

    /// The records for `changes`, with consecutive counter checkpoints batched.
    static func records(for changes: [StateChange]) -> [SyncRecord] {
        var records: [SyncRecord] = []
        var pending: [CounterCheckpointEntry] = []
        for change in changes {
            if case .countersAdvanced(let checkpoint, let generation) = change {
                pending.append(CounterCheckpointEntry(checkpoint: checkpoint, generation: generation, packetsPerSecond: 0))
                continue
            }
            records += batches(pending)
            pending = []
            records.append(SyncRecord(change))
        }
        return records + batches(pending)
    }

    /// Starts streaming everything in `state` to `standby`: the channel's stream to it is reset
    /// and the records go out as its buffer frees (``pump(channel:now:)``).
    public mutating func startResync(
        of standby: ClusterMemberID, from state: GatewayState, channel: inout SyncChannel, now: Timestamp
    ) -> [SyncChannelAction] {
        let id = nextResyncID
        nextResyncID &+= 1
        resyncsStarted += 1
        channel.resetStream(to: standby)
        resyncs[standby] = Resync(id: id, snapshot: state)
        return pump(channel: &channel, now: now)
    }

    /// Answers a standby's request for particular IKE SAs: each is sent whole with its Child SAs,
    /// or as deleted when the active member no longer has it. Requests for more than 256 IKE SAs,
    /// or that do not fit the channel's buffer, are answered with a full resync instead.
    public mutating func resync(
        _ identifiers: [IKESAIdentifier], of standby: ClusterMemberID, from state: GatewayState,
        channel: inout SyncChannel, now: Timestamp
    ) -> [SyncChannelAction] {
        guard identifiers.count <= 256 else { return startResync(of: standby, from: state, channel: &channel, now: now) }
        var records: [SyncRecord] = []
        for identifier in Set(identifiers).sorted() {
            guard let sa = state.ikeSAs[identifier] else {
                records.append(.ikeSADelete(identifier))
                continue
            }
            records.append(.ikeSAUpsert(sa))
            for spi in sa.childSAs {
                if let child = state.childSA(inboundSPI: spi) { records.append(.childSAUpsert(child)) }
            }
        }
        guard let sent = try? channel.send(records, to: standby, now: now) else {
            return startResync(of: standby, from: state, channel: &channel, now: now)
        }
        return sent.actions
    }

    /// Sends as much of every pending resync as the channel's buffers take.
    public mutating func pump(channel: inout SyncChannel, now: Timestamp) -> [SyncChannelAction] {
        var actions: [SyncChannelAction] = []
        for standby in resyncs.keys.sorted() {
            var resync = resyncs[standby]!
            // Records of a few hundred bytes each: about four per datagram at the default size.
            while resync.next < resync.count, channel.reliableCapacity(to: standby) > 0 {
                let batchEnd = min(resync.next + 64, resync.count)
                var end = batchEnd
                while end > resync.next {
                    if let sent = try? channel.send(resync.records(resync.next..<end), to: standby, now: now) {
                        actions += sent.actions
                        if let ticket = sent.ticket { resyncCompletions[standby] = ticket }
                        break
                    }
                    end = resync.next + (end - resync.next) / 2
                }
                if end == resync.next { break }
                resync.next = end
            }
            resyncs[standby] = resync.next < resync.count ? resync : nil
        }
        return actions
    }

    /// Reacts to what the channel reported or delivered on the active member: a standby that
    /// says hello needing a resync, asks for one, restarted, or whose stream broke is resynced
    /// (wholly, or only the IKE SAs it named).
    public mutating func handle(
        _ action: SyncChannelAction, state: GatewayState, channel: inout SyncChannel, now: Timestamp
    ) -> [SyncChannelAction] {
        switch action {
        case .resyncNeeded(let standby):
            return startResync(of: standby, from: state, channel: &channel, now: now)
        case .deliver(let standby, let records):
            guard standbys.contains(standby), resyncs[standby] == nil else { return [] }
            var named: [IKESAIdentifier] = []
            for record in records {
                switch record {
                case .hello(_, _, true), .resyncRequest(.everything):
                    return startResync(of: standby, from: state, channel: &channel, now: now)
                case .resyncRequest(.ikeSAs(let identifiers)):
                    named += identifiers
                default:
                    break
                }
            }
            return named.isEmpty ? [] : resync(named, of: standby, from: state, channel: &channel, now: now)
        default:
            return []
        }
    }
}
