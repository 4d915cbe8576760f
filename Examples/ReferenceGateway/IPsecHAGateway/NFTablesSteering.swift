public import IPsecHACore

/// Load sharing without a process in the packet path: every member of the cluster receives every
/// packet for the cluster address (one MAC address for all of them, flooded by the switch or
/// bridge), and the kernel of each member drops, before any socket sees them, the packets of the
/// segments it does not serve. The rules are nftables': IKE by the segment of its key, computed
/// by nftables' `jhash` exactly as `ClusterSegments` computes it with
/// `SegmentHash.nftablesJHash`; ESP (in UDP or not) by the segment field of its SPI
/// (`SPILayout`), and a duplicated Child SA's by its member field. When the member gains or
/// loses segments, ``update(serving:)`` replaces the rules in one nftables transaction.
///
/// No `meta mark` is used (the computed value is looked up directly), so marks of other rules
/// survive.
public struct NFTablesSteering: Sendable, Hashable {
    /// The table this member owns; ``ruleset(serving:)`` replaces it whole.
    public let table: String
    /// The address the cluster shares: only packets to it are steered.
    public let clusterAddress: IPAddress
    /// The cluster's SPI layout (and with it its segments, which must hash with
    /// `SegmentHash.nftablesJHash`).
    public let layout: SPILayout
    /// This member: its duplicated Child SAs' ESP is its own, whatever the segments.
    public let member: ClusterMemberID

    /// Steering for `member`; nil when the layout's segments are not hashed as nftables hashes
    /// (`SegmentHash.nftablesJHash`): no rule could steer IKE then.
    public init?(table: String = "ikeha_steering", clusterAddress: IPAddress, layout: SPILayout, member: ClusterMemberID) {
        guard layout.segments.hash == .nftablesJHash else { return nil }
        self.table = table
        self.clusterAddress = clusterAddress
        self.layout = layout
        self.member = member
    }

    private var segments: ClusterSegments { layout.segments }
    private var shift: Int { 32 - layout.segmentBits }
    /// The SPI's segment field.
    private var segmentMask: UInt32 { UInt32(truncatingIfNeeded: (1 << layout.segmentBits) - 1) << UInt32(shift) }
    /// The SPI's segment and member fields.
    private var segmentAndMemberMask: UInt32 { segmentMask | UInt32(truncatingIfNeeded: (1 << layout.memberBits) - 1) << UInt32(layout.randomBits) }
    /// A duplicated Child SA allocated by this member: the all-ones segment field and its ID.
    private var duplicatedValue: UInt32 { segmentMask | UInt32(member.rawValue) << UInt32(layout.randomBits) }

    private static func hex(_ value: UInt32) -> String { "0x" + String(value, radix: 16) }

    /// `jhash` of what IKE's segment is keyed by, `offset` bits into the UDP header (64: the IKE
    /// header on port 500; 96: after the non-ESP marker on 4500).
    private func ikeHash(ikeHeaderAt offset: Int) -> String {
        let key: String
        switch segments.key {
        case .peerAddress: key = clusterAddress.family == .ipv4 ? "ip saddr" : "ip6 saddr"
        case .initiatorSPI: key = "@th,\(offset),64"
        }
        return "jhash \(key) mod \(segments.count) seed \(Self.hex(UInt32(truncatingIfNeeded: segments.seed)))"
    }

    /// The table, created anew with the rules for `serving` (an `nft -f` script: one transaction).
    public func ruleset(serving: [Segment]) -> String {
        """
        table inet \(table)
        delete table inet \(table)
        table inet \(table) {
            chain steer {
                type filter hook prerouting priority raw; policy accept;
            }
        }

        """ + update(serving: serving)
    }

    /// Replaces the rules with those for `serving` (an `nft -f` script: one transaction, so that
    /// no packet sees half of it). The segments are anonymous sets inside the rules, not named
    /// sets: a named set would need a type, and nftables 1.0 has none that holds `jhash`'s
    /// value (a host-order integer) and still lists; a payload-typed set holds big-endian values
    /// and would never match it.
    public func update(serving: [Segment]) -> String {
        let valid = Array(Set(serving.filter { Int($0.rawValue) < segments.count })).sorted()
        let destination = clusterAddress.family == .ipv4 ? "ip daddr" : "ip6 daddr"
        var rules = ["\(destination) != \(clusterAddress) accept"]
        if !valid.isEmpty {
            let hashes = "{ " + valid.map { String($0.rawValue) }.joined(separator: ", ") + " }"
            let prefixes = "{ " + valid.map { Self.hex(UInt32($0.rawValue) << UInt32(shift)) }.joined(separator: ", ") + " }"
            rules += [
                "udp dport 500 \(ikeHash(ikeHeaderAt: 64)) \(hashes) accept",
                "udp dport 4500 @th,64,32 0 \(ikeHash(ikeHeaderAt: 96)) \(hashes) accept",
                // The non-ESP marker (0) is IKE's, whatever segment 0's prefix is.
                "udp dport 4500 @th,64,32 != 0 @th,64,32 & \(Self.hex(segmentMask)) \(prefixes) accept",
                "meta l4proto esp @th,0,32 & \(Self.hex(segmentMask)) \(prefixes) accept",
            ]
        }
        // A duplicated Child SA allocated by this member is its own, whoever serves the segment.
        let duplicated = "\(Self.hex(segmentAndMemberMask)) \(Self.hex(duplicatedValue)) accept"
        rules += [
            "udp dport 4500 @th,64,32 != 0 @th,64,32 & \(duplicated)",
            "meta l4proto esp @th,0,32 & \(duplicated)",
            "udp dport { 500, 4500 } drop",
            "meta l4proto esp drop",
        ]
        return "flush chain inet \(table) steer\n" + rules.map { "add rule inet \(table) steer \($0)\n" }.joined()
    }

    /// Removes the table (at exit: the member no longer receives anything).
    public var removal: String { "delete table inet \(table)\n" }
}
