/// The keys of one direction of a Child SA: the encryption key, then the integrity key (none
/// with AEAD), held together in one ``KeyMaterial`` in the order RFC 7296 section 2.17 takes
/// them from KEYMAT.
public struct ChildSAKeys: Sendable, Equatable {
    /// Encryption key followed by integrity key.
    public let material: KeyMaterial
    /// Length of the encryption key at the start of ``material``.
    public let encryptionKeyLength: Int

    /// Keys from an encryption key and an optional integrity key.
    public init(encryption: KeyMaterial, integrity: KeyMaterial? = nil) {
        encryptionKeyLength = encryption.count
        let total = encryption.count + (integrity?.count ?? 0)
        material = KeyMaterial(count: total) { destination in
            encryption.withUnsafeBytes { destination.copyMemory(from: $0) }
            integrity?.withUnsafeBytes {
                UnsafeMutableRawBufferPointer(rebasing: destination[encryption.count...]).copyMemory(from: $0)
            }
        }
    }

    /// Keys from material that holds the encryption key followed by the integrity key.
    /// Throws ``ChildSAError/invalidKeyLayout`` when `encryptionKeyLength` exceeds the material.
    public init(material: KeyMaterial, encryptionKeyLength: Int) throws(ChildSAError) {
        guard (0...material.count).contains(encryptionKeyLength) else { throw .invalidKeyLayout }
        self.material = material
        self.encryptionKeyLength = encryptionKeyLength
    }

    /// The encryption key.
    public var encryptionKey: KeyMaterial { material.extracting(0..<encryptionKeyLength) }
    /// The integrity key, if there is one.
    public var integrityKey: KeyMaterial? {
        material.count > encryptionKeyLength ? material.extracting(encryptionKeyLength..<material.count) : nil
    }
}

/// A Child SA pair (ESP or AH, RFC 7296 section 1.3): the inbound SA this gateway receives on
/// and the outbound SA it sends on, with their selectors, keys, counters and lifetime.
///
/// Equality compares what members replicate: every field, with the inbound replay window
/// compared by its size, ESN flag and checkpoint (its top), not by the bitmap below the top,
/// which stays on the member that receives the traffic.
public struct ChildSA: Sendable, Equatable {
    // Swift lays stored properties out in declaration order. First, within the first 120 bytes,
    // what the takeover plan and counter checkpoints read, and the counters every packet
    // moves: a standby's plan streams through every Child SA, and at a million IKE SAs that is
    // bound by the memory read, so these share two or three cache lines instead of four or
    // five (the plan at a million IKE SAs: 90 ms before, 49 ms after).
    /// The SPI peers put in packets to this gateway (chosen here; the SAD's key).
    public let inboundSPI: UInt32
    /// The SPI this gateway puts in packets to the peer (chosen by the peer).
    public var outboundSPI: UInt32
    /// ESP or AH.
    public var ipsecProtocol: IPsecProtocol
    /// Tunnel or transport.
    public var mode: IPsecMode
    /// The cluster member that sends on this SA.
    public var owner: ClusterMemberID
    /// The request ID linking the SA to the policy that asked for it (as PF_KEY / XFRM do).
    public var requestID: UInt32
    /// The IKE SA that created (or last rekeyed) this Child SA.
    public var parent: IKESAIdentifier
    /// Bumped on every replicated change; a replica never applies an older one. ``GatewayState``
    /// sets it on every change it makes; decoders of replicated records set it from the wire.
    public var generation: UInt64
    /// The outbound sequence number counter.
    public var outboundCounter: OutboundSequenceCounter
    /// The inbound anti-replay window.
    public var inboundWindow: ReplayWindow
    /// Soft and hard lifetimes and the traffic counted so far (the traffic first).
    public var lifetime: ChildSALifetime
    /// The SPD entry the SA serves, if any.
    public var policy: SecurityPolicyID?
    /// Negotiated algorithms.
    public var transforms: ChildSATransforms
    /// Selectors of this side's traffic.
    public var localSelectors: [TrafficSelector]
    /// Selectors of the peer's traffic.
    public var remoteSelectors: [TrafficSelector]
    /// Keys that protect traffic to this gateway.
    public var inboundKeys: ChildSAKeys
    /// Keys that protect traffic to the peer.
    public var outboundKeys: ChildSAKeys

    /// Whether the pair uses Extended Sequence Numbers (both directions do, or neither).
    public var extendedSequenceNumbers: Bool { outboundCounter.extendedSequenceNumbers }

    /// The most traffic selectors a Child SA (or a policy) holds, both sides together: its
    /// replication record, keys included, then fits one synch datagram of the default size even
    /// with IPv6 selectors (38 bytes each), so it replicates and resyncs like any other.
    public static let maximumSelectors = 24

    /// A Child SA. Throws when an SPI is 0 to 255 (reserved by IANA, RFC 4303 section 2.1),
    /// when a selector list is empty, or when the counter and the window disagree on ESN.
    public init(
        inboundSPI: UInt32, outboundSPI: UInt32, ipsecProtocol: IPsecProtocol = .esp, mode: IPsecMode = .tunnel,
        localSelectors: [TrafficSelector], remoteSelectors: [TrafficSelector], transforms: ChildSATransforms,
        inboundKeys: ChildSAKeys, outboundKeys: ChildSAKeys,
        outboundCounter: OutboundSequenceCounter, inboundWindow: ReplayWindow, lifetime: ChildSALifetime,
        requestID: UInt32 = 0, policy: SecurityPolicyID? = nil, parent: IKESAIdentifier, owner: ClusterMemberID
    ) throws(ChildSAError) {
        guard inboundSPI > 255 else { throw .reservedSPI(inboundSPI) }
        guard outboundSPI > 255 else { throw .reservedSPI(outboundSPI) }
        guard !localSelectors.isEmpty, !remoteSelectors.isEmpty else { throw .emptySelectors }
        guard localSelectors.count + remoteSelectors.count <= Self.maximumSelectors else {
            throw .tooManySelectors(localSelectors.count + remoteSelectors.count)
        }
        guard outboundCounter.extendedSequenceNumbers == inboundWindow.extendedSequenceNumbers else {
            throw .extendedSequenceNumbersMismatch
        }
        self.inboundSPI = inboundSPI
        self.outboundSPI = outboundSPI
        self.ipsecProtocol = ipsecProtocol
        self.mode = mode
        self.localSelectors = localSelectors
        self.remoteSelectors = remoteSelectors
        self.transforms = transforms
        self.inboundKeys = inboundKeys
        self.outboundKeys = outboundKeys
        self.outboundCounter = outboundCounter
        self.inboundWindow = inboundWindow
        self.lifetime = lifetime
        self.requestID = requestID
        self.policy = policy
        self.parent = parent
        self.owner = owner
        self.generation = 0
    }

    /// True when the negotiated selectors cover `packet` (outbound: its local side against the
    /// local selectors; inbound after decapsulation likewise, as RFC 4301 section 5.2 checks).
    public func selectorsCover(_ packet: FiveTuple) -> Bool {
        packet.isCovered(local: localSelectors, remote: remoteSelectors)
    }

    /// The counters a member replicates every N packets or T milliseconds.
    public var counterCheckpoint: ChildSACounterCheckpoint {
        ChildSACounterCheckpoint(
            inboundSPI: inboundSPI, outbound: outboundCounter.checkpoint, inbound: inboundWindow.checkpoint,
            usage: lifetime.usage)
    }

    /// Takes over replicated counters: the outbound counter continues from the checkpoint, and
    /// the window moves its top to the checkpoint (``ReplayWindow/adoptPassively(_:)``: what it
    /// says below the top is unspecified). This is the passive copy a standby holds; a takeover
    /// rebuilds the window with a safe policy.
    /// Returns false, changing nothing, when `generation` is not above the one held.
    @inline(__always)
    mutating func adopt(_ checkpoint: ChildSACounterCheckpoint, ifNewerThanHeld generation: UInt64) throws(ChildSAError) -> Bool {
        guard generation > self.generation else { return false }
        let counter: OutboundSequenceCounter
        do {
            counter = try OutboundSequenceCounter(
                extendedSequenceNumbers: extendedSequenceNumbers, lastSent: checkpoint.outbound.lastSent,
                softLimit: outboundCounter.softLimit)
            try inboundWindow.adoptPassively(checkpoint.inbound)
        } catch {
            throw .checkpointOutsideSequenceSpace
        }
        outboundCounter = counter
        lifetime.usage = checkpoint.usage
        self.generation = generation
        return true
    }

    public static func == (lhs: ChildSA, rhs: ChildSA) -> Bool {
        lhs.inboundSPI == rhs.inboundSPI && lhs.outboundSPI == rhs.outboundSPI
            && lhs.ipsecProtocol == rhs.ipsecProtocol && lhs.mode == rhs.mode
            && lhs.localSelectors == rhs.localSelectors && lhs.remoteSelectors == rhs.remoteSelectors
            && lhs.transforms == rhs.transforms && lhs.inboundKeys == rhs.inboundKeys
            && lhs.outboundKeys == rhs.outboundKeys && lhs.outboundCounter == rhs.outboundCounter
            && lhs.inboundWindow.size == rhs.inboundWindow.size
            && lhs.inboundWindow.extendedSequenceNumbers == rhs.inboundWindow.extendedSequenceNumbers
            && lhs.inboundWindow.checkpoint == rhs.inboundWindow.checkpoint
            && lhs.lifetime == rhs.lifetime && lhs.requestID == rhs.requestID && lhs.policy == rhs.policy
            && lhs.parent == rhs.parent && lhs.owner == rhs.owner && lhs.generation == rhs.generation
    }
}

/// The per-packet counters of a Child SA pair as replicated: outbound counter, inbound window
/// top, and lifetime usage.
public struct ChildSACounterCheckpoint: Sendable, Hashable, Codable {
    /// The Child SA, by inbound SPI.
    public var inboundSPI: UInt32
    /// The outbound counter.
    public var outbound: OutboundCounterCheckpoint
    /// The inbound window's top.
    public var inbound: ReplayWindowCheckpoint
    /// Traffic counted for the lifetime.
    public var usage: ChildSAUsage

    /// A checkpoint from its parts.
    public init(inboundSPI: UInt32, outbound: OutboundCounterCheckpoint, inbound: ReplayWindowCheckpoint, usage: ChildSAUsage) {
        self.inboundSPI = inboundSPI
        self.outbound = outbound
        self.inbound = inbound
        self.usage = usage
    }
}

/// One Child SA's counters in a checkpoint batch, with the packet rate measured since the
/// previous checkpoint (what a takeover grows its advance by).
public struct CounterCheckpointEntry: Sendable, Hashable {
    /// The counters.
    public var checkpoint: ChildSACounterCheckpoint
    /// The Child SA's generation after the checkpoint.
    public var generation: UInt64
    /// Packets per second, both directions, since the previous checkpoint.
    public var packetsPerSecond: UInt32

    /// An entry from its parts.
    public init(checkpoint: ChildSACounterCheckpoint, generation: UInt64, packetsPerSecond: UInt32) {
        self.checkpoint = checkpoint
        self.generation = generation
        self.packetsPerSecond = packetsPerSecond
    }
}

/// Errors building or changing a Child SA.
public enum ChildSAError: Error, Sendable, Hashable {
    /// SPIs 0 to 255 are reserved (RFC 4303 section 2.1).
    case reservedSPI(UInt32)
    /// A Child SA needs at least one selector on each side.
    case emptySelectors
    /// More selectors, both sides together, than ``ChildSA/maximumSelectors``.
    case tooManySelectors(Int)
    /// The outbound counter and the inbound window disagree on Extended Sequence Numbers.
    case extendedSequenceNumbersMismatch
    /// A soft lifetime limit is above the matching hard limit.
    case softLifetimeAboveHard
    /// A replicated checkpoint that does not fit the SA's sequence space.
    case checkpointOutsideSequenceSpace
    /// An encryption key length longer than the key material.
    case invalidKeyLayout
}
