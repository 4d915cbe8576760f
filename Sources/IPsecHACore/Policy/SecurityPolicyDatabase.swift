/// The Security Policy Database: an ordered list of policies, searched first to last
/// (RFC 4301 section 4.4.1). A packet that matches no entry is discarded, as if the SPD ended
/// with a catch-all DISCARD.
public struct SecurityPolicyDatabase: Sendable, Hashable {
    /// The policies, in search order.
    public private(set) var policies: [SecurityPolicy] = []
    /// Bumped on every change, so that caches built from an older SPD can tell.
    public private(set) var version: UInt64 = 0

    /// An empty SPD.
    public init() {}

    /// Inserts `policy` at `position` (the end by default). Throws when its ID is taken, the
    /// position is outside the list, or it has more than ``ChildSA/maximumSelectors`` selectors
    /// (its replication record must fit one synch datagram).
    public mutating func insert(_ policy: SecurityPolicy, at position: Int? = nil) throws(SecurityPolicyError) {
        guard !policies.contains(where: { $0.id == policy.id }) else { throw .duplicateID(policy.id) }
        let selectors = policy.localSelectors.count + policy.remoteSelectors.count
        guard selectors <= ChildSA.maximumSelectors else { throw .tooManySelectors(selectors) }
        let index = position ?? policies.count
        guard (0...policies.count).contains(index) else { throw .positionOutOfRange(index) }
        policies.insert(policy, at: index)
        version &+= 1
    }

    /// Removes the policy named `id` and returns it. Throws when there is none.
    @discardableResult
    public mutating func remove(_ id: SecurityPolicyID) throws(SecurityPolicyError) -> SecurityPolicy {
        guard let index = policies.firstIndex(where: { $0.id == id }) else { throw .unknownID(id) }
        version &+= 1
        return policies.remove(at: index)
    }

    /// The policy named `id`.
    public func policy(_ id: SecurityPolicyID) -> SecurityPolicy? {
        policies.first { $0.id == id }
    }

    /// The first policy that matches `packet`, walking the list in order (no cache).
    public func firstMatch(for packet: FiveTuple) -> SecurityPolicy? {
        policies.first { $0.matches(packet) }
    }
}

/// Errors changing the SPD.
public enum SecurityPolicyError: Error, Sendable, Hashable {
    /// A policy with this ID exists already.
    case duplicateID(SecurityPolicyID)
    /// More selectors, both sides together, than ``ChildSA/maximumSelectors``.
    case tooManySelectors(Int)
    /// No policy has this ID.
    case unknownID(SecurityPolicyID)
    /// The insertion position is outside the list.
    case positionOutOfRange(Int)
}
