/// One change to a ``GatewayState``, in the order it happened: what replication sends to the
/// standbys. Applying every change of a state, in order, to an empty state rebuilds an equal
/// state (``GatewayState/apply(_:)``).
public enum StateChange: Sendable, Equatable {
    /// A policy was inserted into the SPD at this position.
    indirect case policyInstalled(SecurityPolicy, position: Int)
    /// A policy was removed from the SPD.
    case policyRemoved(SecurityPolicyID)
    /// An IKE SA was created (generation 1).
    indirect case ikeSACreated(IKESA)
    /// An IKE SA changed; the record is the whole new value.
    indirect case ikeSAUpdated(IKESA)
    /// Only the message-ID windows of an IKE SA changed (the commonest change, once per exchange),
    /// at this generation.
    case messageIDsUpdated(IKESAIdentifier, generation: UInt64, IKEMessageIDSnapshot)
    /// An IKE SA was deleted (its Child SAs were deleted just before, each with its own change).
    case ikeSADeleted(IKESAIdentifier)
    /// A Child SA was installed (generation 1).
    indirect case childSACreated(ChildSA)
    /// A Child SA changed; the record is the whole new value.
    indirect case childSAUpdated(ChildSA)
    /// A Child SA was deleted.
    case childSADeleted(inboundSPI: UInt32)
    /// The per-packet counters of a Child SA were checkpointed.
    case countersAdvanced(ChildSACounterCheckpoint, generation: UInt64)
}

/// Errors changing a ``GatewayState``, or applying a replicated change to one. None of them
/// changes anything.
public enum GatewayStateError: Error, Sendable, Hashable {
    /// An IKE SA with this identifier exists already.
    case ikeSAExists(IKESAIdentifier)
    /// No IKE SA has this identifier.
    case unknownIKESA(IKESAIdentifier)
    /// A Child SA already uses this inbound SPI.
    case spiInUse(UInt32)
    /// No Child SA has this inbound SPI.
    case unknownChildSA(UInt32)
    /// A Child SA's parent IKE SA does not exist.
    case unknownParent(IKESAIdentifier)
    /// A Child SA names a policy the SPD does not have.
    case unknownPolicy(SecurityPolicyID)
    /// An update tried to change the SA's identifier (SPIs); rekeying creates a new SA instead.
    case identifierChanged
    /// A replicated record not newer than the one held (invariant: never apply an older record).
    case staleChange(held: UInt64, received: UInt64)
    /// The SPD refused the change.
    case policy(SecurityPolicyError)
    /// The replicated counters do not fit the Child SA.
    case childSA(ChildSAError)
    /// Replicated message-ID windows that no real window could have produced.
    case messageIDs(IKEMessageIDError)
}
