import ArgumentParser
import IPsecHACore
import IPsecHAGateway
import IPsecHASync
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// `ikeha-gateway`: one member of an IKEv2/IPsec cluster, built on the package; the
/// reference gateway that `scripts/interop.sh` runs against strongSwan.
///
/// The active member (`--active`) binds UDP 500 and 4500 on the cluster address, answers
/// IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA and INFORMATIONAL as responder, answers pings to
/// `--inner-address` through ESP, and replicates every IKE change (synchronously: a response
/// leaves once the standby acknowledged what it changed) and the ESP counters (checkpoints)
/// to its peer. The standby applies what it receives; when the active member falls silent
/// it takes over: binds the ports, applies the takeover plan, and sends an RFC 6311 message-ID
/// sync on every IKE SA that negotiated it.
///
/// With `--vrrp-fifo`, keepalived decides instead (`VRRPFollower`): the standby binds the ports
/// on the virtual address from the start (IP_FREEBIND: it receives once keepalived adds the
/// address), takes over on MASTER and never on the synch channel's silence alone; an active
/// member told BACKUP, FAULT or STOP steps down and rejoins as a standby.
///
/// SIGUSR1 on the active member hands the active role over to the standby with exact state (a
/// planned switchover: no counter jump, no packet refused; behind keepalived, with
/// `--vrrp-priority-file`, the new active member's keepalived takes the address by preemption
/// while the old member relays what still reaches it, so that no packet is lost either); SIGTERM does the same, then exits
/// once the standby acknowledged everything (at most 2 s); on a standby SIGTERM exits at once.
/// SIGHUP re-reads `--sync-key-file` and seals the synch channel under that key (a cluster-key
/// rotation: standbys first, then the active member, which refuses while a standby is still
/// heard under the current key).
///
/// With `--load-sharing-segments N`, every member is active (load sharing, `Docs/LoadSharing.md`):
/// the IKE SAs fall into N segments by the hash of the peer's address or the initiator's SPI, the
/// members own segments by lease and take over those of a member that fails, and each member's
/// kernel drops the packets of the segments it does not serve (`--steering nftables`: the
/// members share the cluster address and one MAC, and the switch floods their frames to all of
/// them). Inbound SPIs carry their segment, so that ESP is steered by its SPI.
///
/// With `--data-plane xfrm`, ESP runs in the Linux kernel of the member's network namespace:
/// the gateway installs each negotiated Child SA's two kernel SAs and its policies (plain ESP,
/// tunnel mode), learns the counters from the kernel's async events and GETAE sweeps, and on
/// takeover installs every Child SA with the plan's counters before it says it took over.
///
/// Events go to standard output as `event=NAME key=value ...` lines with `realtime_ms`, the
/// wall clock in milliseconds; the log goes to standard error.
@main
struct GatewayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ikeha-gateway",
        abstract: "One member of an IKEv2/IPsec cluster (the package's reference gateway)."
    )

    @Option(help: "A YAML file of these options by their long names (member: 1, sync-peer: [...], active: true); the command line overrides it. Examples/ikeha-gateway/ has one.")
    var config: String?
    @Option(help: "This member's ID (1 to 15).") var member: UInt16
    @Flag(help: "Start as the active member.") var active = false
    @Option(name: .customLong("cluster-address"), help: "The IPv4 address peers talk to.") var clusterAddress: String
    @Option(name: .customLong("inner-address"), help: "The inner IPv4 address this gateway answers pings for.") var innerAddress: String
    @Option(name: .customLong("remote-subnet"), help: "The peer's inner traffic, as address/length.") var remoteSubnet: String
    @Option(name: .customLong("local-id"), help: "This gateway's IKE identity.") var localID: String
    @Option(name: .customLong("remote-id"), help: "The peer's IKE identity.") var remoteID: String
    @Option(name: .customLong("psk-file"), help: "A file holding the pre-shared key: 16 to 1,024 bytes (one trailing newline ignored), mode 600, owned by this user.") var pskFile: String
    @Option(name: .customLong("sync-listen"), help: "Synch channel: local UDP host:port.") var syncListen: String
    @Option(name: .customLong("sync-peer"), help: "Synch channel: another member, id=host:port (once per member; one without load sharing).") var syncPeer: [String]
    @Option(name: .customLong("sync-key-file"), help: "The cluster key: a file of 32 bytes, mode 600, owned by this user.") var syncKeyFile: String
    @Option(name: .customLong("sync-cipher"), help: "The synch channel's AEAD, the same on every member: chacha20-poly1305 or aes-256-gcm.")
    var syncCipher = "chacha20-poly1305"
    @Option(name: .customLong("sync-datagram-size"), help: "The largest synch datagram, the same on every member: 512 to 65,507 bytes; above 1,400 only on a link whose MTU carries it (jumbo frames), or IP fragments it.")
    var syncDatagramSize = 1_400
    @Option(name: .customLong("checkpoint-packets"), help: "Checkpoint a Child SA's counters every this many packets.") var checkpointPackets: UInt64 = 64
    @Option(name: .customLong("checkpoint-ms"), help: "...or every this many milliseconds, whichever comes first.") var checkpointMs: UInt64 = 20
    @Option(name: .customLong("takeover-minimum-advance"), help: "The least a takeover moves counters and windows (default: --checkpoint-packets).") var takeoverMinimumAdvance: UInt64?
    @Option(name: .customLong("staleness-margin-ms"), help: "Added to a checkpoint's age when sizing the advance while the synch channel's delay is not measured (the takeover policy's staleness margin).") var stalenessMarginMs: UInt64 = 200
    @Option(name: .customLong("measured-margin-floor-ms"), help: "With the synch channel's round trip measured, the margin is that round trip, at least this.") var measuredMarginFloorMs: UInt64 = 2
    @Flag(name: .customLong("fixed-staleness-margin"), help: "Always use --staleness-margin-ms, never the measured round trip.") var fixedStalenessMargin = false
    @Flag(name: .customLong("announce-checkpoints"), help: "Print an event for every counter checkpoint sent (for the interop harness).") var announceCheckpoints = false
    @Flag(name: .customLong("no-counter-advance"), help: "NEGATIVE CONTROL, unsafe: on takeover resume ESP counters at the last checkpoint.") var noCounterAdvance = false
    @Flag(name: .customLong("switchover-leaves-kernel-running"), help: "NEGATIVE CONTROL, unsafe: a planned switchover with --data-plane xfrm hands over the counters last read while the kernel goes on sending.") var switchoverLeavesKernelRunning = false
    @Flag(name: .customLong("no-message-id-sync"), help: "NEGATIVE CONTROL: on takeover send no RFC 6311 message-ID sync.") var noMessageIDSync = false
    @Option(name: .customLong("crash-on-exchange"), help: "FAULT INJECTION: exit at once, without answering, when a request of this exchange (e.g. CREATE_CHILD_SA) arrives.") var crashOnExchange: String?
    @Option(name: .customLong("vrrp-fifo"), help: "keepalived's notify FIFO: follow its MASTER / BACKUP / FAULT / STOP for this member's role.") var vrrpFIFO: String?
    @Option(name: .customLong("vrrp-track-file"), help: "keepalived's track_file for this member's readiness: 0 while keepalived may elect it (active, a complete copy, or the last resort), 1 otherwise; with weight 0 in keepalived.conf a member that is not a complete copy stays in FAULT.") var vrrpTrackFile: String?
    @Option(name: .customLong("vrrp-priority-file"), help: "keepalived's track_file for this member's role: 1 while it is active, 0 otherwise; with a positive weight in keepalived.conf the active member has the higher priority, so that after a switchover the address moves to the new active member by preemption, without a gap.") var vrrpPriorityFile: String?
    @Option(name: .customLong("vrrp-instance"), help: "The VRRP instance to follow on the FIFO.") var vrrpInstance = "VI_1"
    @Option(name: .customLong("data-plane"), help: "userspace (ESP in UDP, answered by this process) or xfrm (the kernel's ESP in this network namespace; needs CAP_NET_ADMIN).") var dataPlane = "userspace"
    @Option(name: .customLong("miss-count"), help: "Heartbeat intervals (50 ms) of silence before the standby declares the active member failed.") var missCount: UInt64 = 3
    @Option(name: .customLong("takeover-command"), help: "A shell command run on takeover after the kernel holds the plan's counters and before any IKE message leaves: where no keepalived moves the cluster address, this moves it (e.g. ip addr add ...; arping -U ...).") var takeoverCommand: String?
    @Option(name: .customLong("load-sharing-segments"), help: "Load sharing: every member active, the IKE SAs in this many segments (1 to 4096), the same on every member.") var loadSharingSegments: Int?
    @Option(name: .customLong("segment-key"), help: "Load sharing: a segment is the hash of the peer-address or the initiator-spi.") var segmentKey = "peer-address"
    @Option(name: .customLong("segment-seed"), help: "Load sharing: the segment hash's seed (32 bits, nftables' jhash seed), the same on every member.") var segmentSeed: UInt32 = 0x1ce5_eed5
    @Option(name: .customLong("steering"), help: "Load sharing: nftables (this member's kernel drops the packets of segments it does not serve; needs nft and CAP_NET_ADMIN) or none.") var steering = "nftables"
    @Option(name: .customLong("max-ike-sas-per-peer-address"), help: "IKE SAs one peer address may hold (a NAT hides many peers behind one).") var maxIKESAsPerPeerAddress = 4
    @Flag(name: .customLong("no-steering-on-takeover"), help: "NEGATIVE CONTROL: load sharing's steering rules do not follow segments taken over from a failed member.") var noSteeringOnTakeover = false
    @Option(name: .customLong("metrics-listen"), help: "Serve Prometheus metrics at http://host:port/metrics (off by default; Docs/Operations.md lists them).") var metricsListen: String?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error.") var logLevel: String = "info"

    /// The file of `--config` goes in front of the command line; an error about an option the
    /// file set names the file and the line.
    static func main() {
        let commandLine = Array(CommandLine.arguments.dropFirst())
        var file: GatewayConfigurationFile?
        do {
            if let path = configurationPath(in: commandLine) { file = try GatewayConfigurationFile.read(path) }
            let command = try parse((file?.arguments ?? []) + commandLine)
            try command.run()
        } catch {
            if exitCode(for: error) != .success, let explained = file?.explain(message(for: error), commandLine: commandLine) {
                exit(withError: explained)
            }
            exit(withError: error)
        }
    }

    static func configurationPath(in arguments: [String]) -> String? {
        for (index, argument) in arguments.enumerated() {
            if argument == "--config", index + 1 < arguments.count { return arguments[index + 1] }
            if argument.hasPrefix("--config=") { return String(argument.dropFirst("--config=".count)) }
        }
        return nil
    }

    func run() throws {
        // Every IKE and ESP key and the PSK are in this process's memory: no core file may
        // hold them, whatever the host's default (review L3).
        var noCore = rlimit(rlim_cur: 0, rlim_max: 0)
        if setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &noCore) != 0 {
            throw GatewayError.configuration("cannot disable core dumps (setrlimit RLIMIT_CORE)")
        }
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        // Before any thread starts, so that none of them takes SIGTERM's default action.
        let signals = try OperatorSignals()
        var gateway = try ReferenceGateway(options: self, signals: signals)
        try gateway.run()
    }
}
