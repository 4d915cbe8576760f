public import IPsecHACore
public import Logging

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
    /// What one standby still has to be sent, as the channel's buffer lets it: a bulk resync
    /// followed by the records of changes made since its snapshot, or only such records (a
    /// backlog) when the buffer was full for a moment.
    ///
    /// A resync reads a snapshot of the state taken when it began (copy-on-write: free until
    /// the active member changes its own state) and makes each record when it is sent, so that
    /// a resync of hundreds of thousands of SAs never holds them all as records at once.
    struct Pending {
        let id: UInt32
        /// Nil for a backlog.
        let snapshot: GatewayState?
        /// IKE SAs and Child SAs in slot order: the same history gives the same stream. (IKE SA
        /// by IKE SA, each followed by its Child SAs, was tried: reading the Child SAs out of
        /// slot order cost the sender more than the standby saved.)
        let ikeSAs: [Int]
        let childSlots: [ChildSASlot]
        /// Records of changes made since the snapshot (or queued in a backlog), sent after the
        /// resync's end.
        var appended: [SyncRecord] = []
        /// Counter checkpoints made meanwhile, the latest of each Child SA (by inbound SPI):
        /// they go out once everything before them has (``flushCheckpoints()``).
        /// Queued whole, the checkpoints of a busy state during a long resync took more memory
        /// than the state (every Child SA with traffic, about every 50 ms); coalesced they take
        /// at most one entry per Child SA. Later in the stream than they were made is safe: a
        /// checkpoint older than a record of its Child SA that follows is refused as stale by
        /// its generation, one of a Child SA deleted meanwhile as unknown.
        var checkpoints: [CounterCheckpointEntry] = []
        var checkpointPositions: [UInt32: Int] = [:]
        /// Position of the next record to send.
        var next = 0
        /// Snapshot records skipped as too large for a datagram, left out of the counts the
        /// resync's end announces (the standby checks them before it calls itself ready).
        var skipped: (policies: UInt32, ikeSAs: UInt32, childSAs: UInt32) = (0, 0, 0)

        /// A resync of `snapshot`.
        init(id: UInt32, snapshot: GatewayState) {
            self.id = id
            self.snapshot = snapshot
            ikeSAs = snapshot.ikeSAs.occupiedSlots
            childSlots = snapshot.occupiedChildSASlots
        }

        /// A backlog of `records`.
        init(backlog records: [SyncRecord]) {
            id = 0
            snapshot = nil
            ikeSAs = []
            childSlots = []
            appended = records
        }

        /// Notes that the record at `position` is skipped.
        mutating func skip(_ position: Int) {
            guard let snapshot, position > 0 else { return }
            let policies = snapshot.spd.policies.count
            if position <= policies {
                skipped.policies += 1
            } else if position <= policies + ikeSAs.count {
                skipped.ikeSAs += 1
            } else if position <= policies + ikeSAs.count + childSlots.count {
                skipped.childSAs += 1
            }
        }

        /// Begin, policies, IKE SAs, Child SAs and end of a resync: 0 for a backlog.
        var snapshotCount: Int {
            guard let snapshot else { return 0 }
            return snapshot.spd.policies.count + ikeSAs.count + childSlots.count + 2
        }

        var count: Int { snapshotCount + appended.count }

        /// Records not yet sent that a later resync would make good (those of the snapshot are
        /// made again from the state when they are needed).
        var unsentAppended: Int { count - max(next, snapshotCount) }

        /// Whether anything is left to send.
        var isDone: Bool { next >= count && checkpoints.isEmpty }

        /// Takes in checkpoints, keeping the latest of each Child SA.
        mutating func coalesce(_ entries: [CounterCheckpointEntry]) {
            for entry in entries {
                let spi = entry.checkpoint.inboundSPI
                if let position = checkpointPositions[spi] {
                    checkpoints[position] = entry
                } else {
                    checkpointPositions[spi] = checkpoints.count
                    checkpoints.append(entry)
                }
            }
        }

        /// Appends the coalesced checkpoints as records, behind what waits already.
        mutating func flushCheckpoints() {
            guard !checkpoints.isEmpty else { return }
            appended += Replicator.batches(checkpoints)
            checkpoints = []
            checkpointPositions = [:]
        }

        /// Packs the records at `positions`: resync begin, the snapshot's policies, IKE SAs and
        /// Child SAs, resync end, then the appended records. The SAs are encoded straight from
        /// the snapshot, without a record (a copy of the SA) in between.
        func pack(_ positions: Range<Int>, into packer: inout PayloadPacker) throws(SyncChannelError) {
            guard let snapshot else {
                for position in positions { try packer.append(appended[position]) }
                return
            }
            let policies = snapshot.spd.policies
            let counts = (ikeSAs: UInt32(ikeSAs.count), childSAs: UInt32(childSlots.count), policies: UInt32(policies.count))
            var selectors = StateEncoding.SelectorCache()
            for position in positions {
                var offset = position
                if offset == 0 {
                    try packer.append(
                        .resyncBegin(id: id, scope: .everything, ikeSAs: counts.ikeSAs, childSAs: counts.childSAs, policies: counts.policies))
                    continue
                }
                offset -= 1
                if offset < policies.count {
                    try packer.append(.policyUpsert(policies[offset], position: UInt32(offset)))
                    continue
                }
                offset -= policies.count
                if offset < ikeSAs.count {
                    let slot = ikeSAs[offset]
                    try packer.append { (writer: inout ByteWriter) throws(SyncCodecError) in
                        try snapshot.ikeSAs.withUnsafeIKESA(inSlot: slot) { (sa) throws(SyncCodecError) in
                            try SyncRecord.encodeUpsert(ofIKESAAt: sa, into: &writer)
                        }
                    }
                    continue
                }
                offset -= ikeSAs.count
                if offset < childSlots.count {
                    let slot = childSlots[offset]
                    try packer.append { (writer: inout ByteWriter) throws(SyncCodecError) in
                        try snapshot.withUnsafeChildSA(at: slot) { (sa) throws(SyncCodecError) in
                            try SyncRecord.encodeUpsert(ofChildSAAt: sa, into: &writer, selectors: &selectors)
                        }
                    }
                    continue
                }
                offset -= childSlots.count
                try packer.append(
                    offset == 0
                        ? .resyncEnd(
                            id: id, ikeSAs: counts.ikeSAs - skipped.ikeSAs, childSAs: counts.childSAs - skipped.childSAs,
                            policies: counts.policies - skipped.policies)
                        : appended[offset - 1])
            }
        }

        /// Forgets what was sent, so that a standby that never quite catches up does not keep
        /// every record it was ever sent: a resync whose snapshot part went out becomes a
        /// backlog of the rest (releasing its snapshot), a backlog drops its sent records.
        mutating func compact() {
            if snapshot != nil, next >= snapshotCount {
                var backlog = Pending(backlog: Array(appended[(next - snapshotCount)...]))
                (backlog.checkpoints, backlog.checkpointPositions) = (checkpoints, checkpointPositions)
                self = backlog
            } else if snapshot == nil, next > 0 {
                appended.removeFirst(next)
                next = 0
            }
        }
    }

    /// The standbys replicated to.
    public let standbys: [ClusterMemberID]
    private var pending: [ClusterMemberID: Pending] = [:]
    /// Standbys owed a bulk resync that waits for room in the channel's buffer to them
    /// (``pump(state:channel:now:)``): the changes behind a resync passed ``backlogLimit``
    /// while the buffer was full. Nothing is queued for them meanwhile (the resync's snapshot,
    /// taken when it starts, holds every change), and no snapshot is held.
    private var owedResyncs: Set<ClusterMemberID> = []
    /// The ticket of the last datagram sent from each standby's latest resync or backlog.
    private var resyncCompletions: [ClusterMemberID: SyncTicket] = [:]
    private var nextResyncID: UInt32 = 1
    /// At most this many records wait for one standby (a backlog, or the changes made during a
    /// resync), or an eighth as many as the state has SAs and policies when that is more
    /// (``backlogCapacity(for:)``); one more starts a fresh resync from the current state
    /// instead, which replaces them. Memory stays bounded when a standby cannot keep up; the
    /// operator sees ``backlogOverflows`` and ``resyncsStarted`` climb. When the changes behind
    /// such a resync overflow too while the channel's buffer to the standby is full (a standby
    /// that is gone, or not there yet), the next resync is owed instead and starts once the
    /// buffer has room: a snapshot taken then would hold the whole state for nothing, and the
    /// active member's next change would copy it all (with a standby away, every
    /// ``backlogLimit`` records cost a copy of the state: quadratic).
    public let backlogLimit: Int

    /// How many records may wait for one standby while the active member holds `state`:
    /// ``backlogLimit``, or an eighth of the state's SAs and policies when that is more. A
    /// resync that overflows starts again from the beginning, so a fixed limit made a large
    /// state's resync endless: a million IKE SAs with two Child SAs each take about ten seconds
    /// to send, and rekeying them hourly makes about 3,000 records a second, 30,000 during
    /// it. Each record is about one SA's worth, so an eighth of the state bounds their memory
    /// by about an eighth of the state's.
    public func backlogCapacity(for state: GatewayState) -> Int {
        max(backlogLimit, (state.ikeSAs.count + state.childSACount + state.spd.policies.count) / 8)
    }
    /// A standby's requests for a full resync (a hello that needs one, a request for
    /// everything) are taken at most once this often (1 s by default); earlier ones are refused
    /// and counted (``resyncRequestsRefused``). A joining standby repeats its hello until it is
    /// ready, so it is served within this time; a member that asks in a loop costs at most one
    /// resync of the state each interval.
    public var minimumResyncRequestInterval: Duration = .seconds(1)
    /// Requests for named IKE SAs (at most 256 each) answered per standby per second (16 by
    /// default: 4,096 IKE SAs); beyond, a request counts as one for a full resync, which the
    /// interval above bounds. Honest standbys ask for few: only records about IKE SAs they do
    /// not hold make them ask.
    public var namedResyncRequestsPerSecond = 16
    private struct RequestLimit {
        var lastFullResync: Timestamp?
        var namedWindowStart = Timestamp(nanoseconds: 0)
        var namedInWindow = 0
    }
    private var requestLimits: [ClusterMemberID: RequestLimit] = [:]
    /// Bulk resyncs started so far.
    public private(set) var resyncsStarted = 0
    /// Resync requests refused by the limits above.
    public private(set) var resyncRequestsRefused = 0
    /// Times records were queued because the channel's buffer to a standby was full.
    public private(set) var backlogsStarted = 0
    /// Times a standby's queued records passed ``backlogLimit`` (each started a resync).
    public private(set) var backlogOverflows = 0
    /// Records skipped because they do not fit one datagram (a Child SA with keys far longer
    /// than any transform's): the standby lacks what they describe, which beats stalling every
    /// later change behind them. Selector counts are bounded at creation
    /// (`ChildSA.maximumSelectors`) so that real SAs never get here.
    public private(set) var recordsTooLarge = 0
    /// Where skipped records are reported (error level).
    public var logger = Logger(label: "ipsecha.sync.replicator")

    /// A replicator for these standbys.
    public init(standbys: [ClusterMemberID], backlogLimit: Int = 16_384) {
        self.standbys = standbys
        self.backlogLimit = max(backlogLimit, 1)
    }

    /// Whether a bulk resync to `standby` is still being streamed.
    public func isResyncing(_ standby: ClusterMemberID) -> Bool { pending[standby]?.snapshot != nil }

    /// Whether records for `standby` wait to be sent: a resync is being streamed, a backlog
    /// waits for room in the channel's buffer, or a resync is owed (``backlogLimit``). Such a
    /// standby gets no tickets; hold what depends on it until ``hasCaughtUp(_:channel:)``.
    public func isCatchingUp(_ standby: ClusterMemberID) -> Bool { pending[standby] != nil || owedResyncs.contains(standby) }

    /// Whether a bulk resync of `standby` waits for room in the channel's buffer to it
    /// (``backlogLimit``); ``pump(state:channel:now:)`` starts it.
    public func isResyncOwed(_ standby: ClusterMemberID) -> Bool { owedResyncs.contains(standby) }

    /// Records of changes that wait for `standby`, behind a resync or in a backlog (at most
    /// ``backlogCapacity(for:)``), the coalesced counter checkpoints counting as one.
    public func waitingRecords(for standby: ClusterMemberID) -> Int {
        pending[standby].map { $0.unsentAppended + ($0.checkpoints.isEmpty ? 0 : 1) } ?? 0
    }

    /// Whether a standby holds everything replicated so far that it did not get a ticket for:
    /// nothing waits for it (``isCatchingUp(_:)`` is false), and it acknowledged the last
    /// datagram of its latest resync or backlog. Synchronous replication holds an IKE message
    /// for a standby that was catching up when the change was made until this is true, since
    /// ``replicate(_:state:channel:now:)`` gives no ticket for such a standby.
    public func hasCaughtUp(_ standby: ClusterMemberID, channel: SyncChannel) -> Bool {
        guard !isCatchingUp(standby) else { return false }
        return resyncCompletions[standby].map(channel.isAcknowledged) ?? true
    }

    /// Sends the records of `changes` to every standby. A standby that is catching up
    /// (``isCatchingUp(_:)``) gets them after what waits for it; when the channel's buffer to a
    /// standby is full they wait in a backlog that ``pump(channel:now:)`` sends as the buffer
    /// frees (a full buffer is a moment of loss or load, which a resync would only prolong:
    /// the resync itself fills the buffer). Past ``backlogLimit`` the standby is resynced from
    /// `state` (which must already include the changes). Returns one ticket per standby that
    /// got the records now.
    public mutating func replicate(
        _ changes: [StateChange], state: GatewayState, channel: inout SyncChannel, now: Timestamp
    ) -> (tickets: [SyncTicket], actions: [SyncChannelAction]) {
        replicate(records: Self.records(for: changes), state: state, channel: &channel, now: now)
    }

    /// `records` to every standby; for one catching up, `checkpoints` (the entries of the
    /// records, when they are counter checkpoints) wait coalesced instead.
    private mutating func replicate(
        records: [SyncRecord], coalescing checkpoints: [CounterCheckpointEntry] = [], state: GatewayState, channel: inout SyncChannel,
        now: Timestamp
    ) -> (tickets: [SyncTicket], actions: [SyncChannelAction]) {
        guard !records.isEmpty else { return ([], []) }
        var tickets: [SyncTicket] = []
        var actions: [SyncChannelAction] = []
        for standby in standbys {
            if !checkpoints.isEmpty, pending[standby] != nil {
                pending[standby]!.coalesce(checkpoints)
                continue
            }
            let sent = replicate(records: records, to: standby, state: state, channel: &channel, now: now)
            if let ticket = sent.ticket { tickets.append(ticket) }
            actions += sent.actions
        }
        return (tickets, actions)
    }

    private mutating func replicate(
        records: [SyncRecord], to standby: ClusterMemberID, state: GatewayState, channel: inout SyncChannel, now: Timestamp
    ) -> (ticket: SyncTicket?, actions: [SyncChannelAction]) {
        if owedResyncs.contains(standby) {
            // The resync's snapshot will hold these changes (`state` includes them).
            return (nil, channel.reliableCapacity(to: standby) > 0 ? startResync(of: standby, from: state, channel: &channel, now: now) : [])
        }
        if pending[standby] != nil {
            return (nil, enqueue(records, for: standby, state: state, channel: &channel, now: now))
        }
        do {
            return try channel.send(records, to: standby, now: now)
        } catch .sendQueueFull {
            backlogsStarted += 1
            pending[standby] = Pending(backlog: records)
            return (nil, [])
        } catch .codec(.recordTooLarge) where records.count > 1 {
            // One of them cannot go: the others, one by one.
            var ticket: SyncTicket?
            var actions: [SyncChannelAction] = []
            for (index, record) in records.enumerated() {
                guard pending[standby] == nil else {
                    actions += enqueue(Array(records[index...]), for: standby, state: state, channel: &channel, now: now)
                    break
                }
                let sent = replicate(records: [record], to: standby, state: state, channel: &channel, now: now)
                ticket = sent.ticket ?? ticket
                actions += sent.actions
            }
            return (ticket, actions)
        } catch .codec(.recordTooLarge) {
            skipTooLarge(for: standby)
            return (nil, [])
        } catch {
            return (nil, startResync(of: standby, from: state, channel: &channel, now: now))
        }
    }

    private mutating func skipTooLarge(for standby: ClusterMemberID) {
        recordsTooLarge += 1
        logger.error(
            "synch record larger than a datagram skipped: the standby lacks the SA it describes",
            metadata: ["standby": "\(standby.rawValue)"])
    }

    /// Queues records behind what already waits for `standby`, or resyncs it past the limit.
    private mutating func enqueue(
        _ records: [SyncRecord], for standby: ClusterMemberID, state: GatewayState, channel: inout SyncChannel, now: Timestamp
    ) -> [SyncChannelAction] {
        guard pending[standby]!.unsentAppended + records.count <= backlogCapacity(for: state) else {
            backlogOverflows += 1
            if pending[standby]!.snapshot != nil, channel.reliableCapacity(to: standby) == 0 {
                // A resync that has not been able to send overflows: another now would not
                // move either.
                pending[standby] = nil
                owedResyncs.insert(standby)
                return []
            }
            return startResync(of: standby, from: state, channel: &channel, now: now)
        }
        pending[standby]!.appended += records
        return []
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
    /// A standby that is catching up (``isCatchingUp(_:)``) gets the latest checkpoint of each
    /// Child SA once what waits before has gone: the checkpoints of a whole state, at most, wait
    /// for it, not every checkpoint made meanwhile.
    public mutating func replicate(
        checkpoints: [CounterCheckpointEntry], state: GatewayState, channel: inout SyncChannel, now: Timestamp
    ) -> (tickets: [SyncTicket], actions: [SyncChannelAction]) {
        replicate(records: Self.batches(checkpoints), coalescing: checkpoints, state: state, channel: &channel, now: now)
    }

    /// Counter checkpoint records for `entries`, in order: a record per
    /// ``checkpointsPerRecord``, which the channel splits at entry boundaries into records that
    /// fill its datagrams (entries are mostly far smaller than their largest encoding, about 25
    /// bytes against 79, so they are sized by encoding them, once).
    public static func batches(_ entries: [CounterCheckpointEntry]) -> [SyncRecord] {
        guard entries.count > checkpointsPerRecord else { return entries.isEmpty ? [] : [.counterCheckpoints(entries)] }
        return stride(from: 0, to: entries.count, by: checkpointsPerRecord).map { start in
            .counterCheckpoints(Array(entries[start..<min(start + checkpointsPerRecord, entries.count)]))
        }
    }

    /// The most checkpoints in one record: at most 16 datagrams of the default size, about 5
    /// as entries usually are. A record goes into the channel's retransmission buffer whole,
    /// so one that needs more datagrams than the buffer holds never goes; one record for a
    /// scan's checkpoints did at a few hundred thousand Child SAs with traffic, and stopped
    /// replication until a resync.
    public static let checkpointsPerRecord = 256

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
        requestLimits[standby, default: RequestLimit()].lastFullResync = now
        owedResyncs.remove(standby)
        channel.resetStream(to: standby)
        pending[standby] = Pending(id: id, snapshot: state)
        return pump(channel: &channel, now: now)
    }

    /// Answers a standby's request for particular IKE SAs: each is sent whole with its Child SAs,
    /// or as deleted when the active member no longer has it. Requests for more than 256 IKE SAs
    /// count as a request for a full resync, under its rate limit
    /// (``minimumResyncRequestInterval``); when the channel's buffer is full they wait like any
    /// other records.
    public mutating func resync(
        _ identifiers: [IKESAIdentifier], of standby: ClusterMemberID, from state: GatewayState,
        channel: inout SyncChannel, now: Timestamp
    ) -> [SyncChannelAction] {
        guard identifiers.count <= 256 else { return requestFullResync(of: standby, from: state, channel: &channel, now: now) }
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
        return replicate(records: records, to: standby, state: state, channel: &channel, now: now).actions
    }

    /// A full resync a standby asked for, unless one started less than the interval ago.
    private mutating func requestFullResync(
        of standby: ClusterMemberID, from state: GatewayState, channel: inout SyncChannel, now: Timestamp
    ) -> [SyncChannelAction] {
        if let last = requestLimits[standby]?.lastFullResync, now < last + minimumResyncRequestInterval {
            resyncRequestsRefused += 1
            return []
        }
        return startResync(of: standby, from: state, channel: &channel, now: now)
    }

    /// Starts the resyncs owed (``backlogLimit``) whose channel buffer has room now, from
    /// `state`, and sends as much of every pending resync and backlog as the channel's buffers
    /// take. Call it regularly (every tick).
    public mutating func pump(state: GatewayState, channel: inout SyncChannel, now: Timestamp) -> [SyncChannelAction] {
        var actions: [SyncChannelAction] = []
        for standby in owedResyncs.sorted() where channel.reliableCapacity(to: standby) > 0 {
            actions += startResync(of: standby, from: state, channel: &channel, now: now)
        }
        return actions + pump(channel: &channel, now: now)
    }

    /// Sends as much of every pending resync and backlog as the channel's buffers take; a
    /// resync owed (``isResyncOwed(_:)``) waits for ``pump(state:channel:now:)``, or for the
    /// next records replicated to its standby, to start.
    public mutating func pump(channel: inout SyncChannel, now: Timestamp) -> [SyncChannelAction] {
        var actions: [SyncChannelAction] = []
        for standby in pending.keys.sorted() {
            var resync = pending[standby]!
            // Records of a few hundred bytes each: about four per datagram at the default size.
            while channel.reliableCapacity(to: standby) > 0 {
                if resync.next >= resync.count { resync.flushCheckpoints() }
                guard resync.next < resync.count else { break }
                let batchEnd = min(resync.next + 64, resync.count)
                var end = batchEnd
                while end > resync.next {
                    let positions = resync.next..<end
                    do {
                        let sent = try channel.sendReliable(to: standby, now: now) { (packer: inout PayloadPacker) throws(SyncChannelError) in
                            try resync.pack(positions, into: &packer)
                        }
                        actions += sent.actions
                        if let ticket = sent.ticket { resyncCompletions[standby] = ticket }
                        break
                    } catch .codec(.recordTooLarge) where positions.count == 1 {
                        // Retried, it would stop the resync here for good.
                        resync.skip(resync.next)
                        skipTooLarge(for: standby)
                        break
                    } catch {
                        end = resync.next + (end - resync.next) / 2
                    }
                }
                if end == resync.next { break }
                resync.next = end
            }
            if resync.isDone {
                pending[standby] = nil
            } else {
                resync.compact()
                pending[standby] = resync
            }
        }
        return actions
    }

    /// Reacts to what the channel reported or delivered on the active member: a standby that
    /// says hello needing a resync, asks for one, restarted, or whose stream broke is resynced
    /// (wholly, or only the IKE SAs it named). Requests are rate-limited
    /// (``minimumResyncRequestInterval``, ``namedResyncRequestsPerSecond``); a broken stream
    /// is not (the channel reports it once per restart of the peer).
    public mutating func handle(
        _ action: SyncChannelAction, state: GatewayState, channel: inout SyncChannel, now: Timestamp
    ) -> [SyncChannelAction] {
        switch action {
        case .resyncNeeded(let standby):
            return startResync(of: standby, from: state, channel: &channel, now: now)
        case .deliver(let standby, let records):
            guard standbys.contains(standby), pending[standby]?.snapshot == nil else { return [] }
            var named: [IKESAIdentifier] = []
            for record in records {
                switch record {
                case .hello(_, _, true), .resyncRequest(.everything):
                    return requestFullResync(of: standby, from: state, channel: &channel, now: now)
                case .resyncRequest(.ikeSAs(let identifiers)):
                    named += identifiers
                default:
                    break
                }
            }
            guard !named.isEmpty else { return [] }
            var limit = requestLimits[standby, default: RequestLimit()]
            if now.nanoseconds &- limit.namedWindowStart.nanoseconds >= 1_000_000_000 {
                limit.namedWindowStart = now
                limit.namedInWindow = 0
            }
            limit.namedInWindow += 1
            requestLimits[standby] = limit
            guard limit.namedInWindow <= namedResyncRequestsPerSecond else {
                return requestFullResync(of: standby, from: state, channel: &channel, now: now)
            }
            return resync(named, of: standby, from: state, channel: &channel, now: now)
        default:
            return []
        }
    }
}

/// What the active member knows of a standby, most urgent first.
public enum StandbyStatus: String, Sendable, Hashable, CustomStringConvertible {
    /// Not heard for four heartbeats (the channel is renewing its handshake): it may be gone,
    /// and nothing it holds is fresh.
    case silent
    /// A bulk resync is being streamed to it.
    case resyncing
    /// Records wait for room in the channel's buffer to it, or a bulk resync that replaces
    /// them does (``Replicator/isResyncOwed(_:)``).
    case catchingUp = "catching-up"
    /// An acknowledgement has been outstanding for more than three heartbeats.
    case lagging
    /// It acknowledged recent state: a takeover now would lose nothing replicated.
    case current

    public var description: String { rawValue }
}

extension Replicator {
    /// What is known of `standby` at `now`: ``StandbyStatus/current`` only when it is heard,
    /// caught up, and nothing has waited for its acknowledgement longer than three heartbeats.
    public func status(of standby: ClusterMemberID, channel: SyncChannel, now: Timestamp) -> StandbyStatus {
        if !channel.isEstablished(with: standby) { return .silent }
        if isResyncing(standby) { return .resyncing }
        if isCatchingUp(standby) { return .catchingUp }
        if channel.replicationLagNanoseconds(to: standby, now: now) > 3 * channel.configuration.heartbeatIntervalNanoseconds { return .lagging }
        return .current
    }
}
