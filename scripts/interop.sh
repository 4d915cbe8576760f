#!/usr/bin/env bash
# Failover against a real IKEv2 peer: strongSwan's charon (initiator, kernel-libipsec) in one
# network namespace, two ikeha-gateway members sharing the cluster address in another. charon
# brings up an IKE SA and a Child SA with member A, pings through it at 100 per second, A is
# killed with SIGKILL, B takes over; then a liveness check and a Child SA rekey by charon.
# The verdicts are read from charon's own log and from swanctl (Docs/Interop.md).
#
# Scenarios: "failover" (must pass), "ike-rekey" (charon rekeys the IKE SA against A first; B
# must take over the new one; must pass), and the negative controls "no-counter-advance"
# (charon must reject B's ESP as replays) and "no-message-id-sync" (A dies with a
# CREATE_CHILD_SA in flight; what follows is reported). Usage: interop.sh [scenario ...];
# default: all four.
#
# Needs root, network namespaces, /dev/net/tun and Debian's strongSwan packages (installed
# when missing and root; otherwise exit 77). Traffic stays inside the namespaces made here;
# they and every process started here are removed at exit, by process ID.
set -uo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
GATEWAY=${GATEWAY:-$HERE/.build/release/ikeha-gateway}
source "$HERE/scripts/lib/strongswan-peer.sh"
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(failover ike-rekey no-counter-advance no-message-id-sync)
BASE=$(mktemp -d /tmp/ikeha-interop.XXXXXX)
NS_P=ikeha-peer-$$ NS_C=ikeha-cluster-$$
VETH_P=ikp$$ VETH_C=ikc$$
PEER_IP=10.99.0.1 CLUSTER_IP=10.99.0.2 PEER_INNER=10.99.1.1 GATEWAY_INNER=10.99.2.1
require_machine

teardown() {
    stop_all
    ip netns del "$NS_P" 2>/dev/null
    ip netns del "$NS_C" 2>/dev/null
}
trap 'teardown; [ "$FAILURES" -gt 0 ] || [ -n "${KEEP_LOGS:-}" ] || rm -rf "$BASE"' EXIT

setup() {
    mkdir -p "$DIR"
    ip netns add "$NS_P"; ip netns add "$NS_C"
    ip link add "$VETH_P" type veth peer name "$VETH_C"
    ip link set "$VETH_P" netns "$NS_P"; ip link set "$VETH_C" netns "$NS_C"
    for ns in "$NS_P" "$NS_C"; do
        # No IPv6: link-local DAD would make charon send MOBIKE updates (recipe, gotcha G1).
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
        ip -n "$ns" link set lo up
    done
    ip -n "$NS_P" addr add $PEER_IP/24 dev "$VETH_P"; ip -n "$NS_P" link set "$VETH_P" up
    ip -n "$NS_C" addr add $CLUSTER_IP/24 dev "$VETH_C"; ip -n "$NS_C" link set "$VETH_C" up
    ip -n "$NS_P" addr add $PEER_INNER/32 dev lo
    write_charon_config $PEER_IP $CLUSTER_IP $PEER_INNER $GATEWAY_INNER
    start_charon "$NS_P"
}

kill_member1() { kill -KILL "$(cat "$DIR/member1.pid")" 2>/dev/null; }

# Whether process PID runs with a core file size limit of 0 (it sets it as it starts).
core_dumps_disabled() { # pid
    for _ in $(seq 30); do
        grep -Eq "^Max core file size +0 +0 " "/proc/$1/limits" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

member() { # id listen-port peer-port args...
    local id=$1 port=$2 peer_port=$3; shift 3
    start_member "$NS_C" "$id" $CLUSTER_IP $GATEWAY_INNER $PEER_INNER/32 127.0.0.1:"$port" "$((3 - id))=127.0.0.1:$peer_port" "$@"
}

run_scenario() {
    local scenario=$1
    DIR=$BASE/$scenario
    say "=== scenario $scenario ==="
    setup || { fail "$scenario: setup"; teardown; return; }
    local a_args=("${LAG[@]}" --announce-checkpoints) b_args=("${LAG[@]}")
    case $scenario in
        no-counter-advance) b_args+=(--no-counter-advance) ;;
        no-message-id-sync) a_args=(--crash-on-exchange CREATE_CHILD_SA); b_args=(--no-message-id-sync) ;;
    esac
    member 1 7101 7102 --active "${a_args[@]}"
    member 2 7102 7101 "${b_args[@]}"
    # Keys live in the members' memory: neither may leave a core file (review L3).
    if core_dumps_disabled "$(cat "$DIR/member1.pid")"; then pass "$scenario: member 1 runs with core dumps disabled"
    else fail "$scenario: member 1 may write a core file: $(grep 'core file' "/proc/$(cat "$DIR/member1.pid")/limits")"; fi
    start_and_kill "$scenario" kill_member1 yes || { teardown; return; }
    after_kill "$scenario"
    judge "$scenario"
    teardown
}

for scenario in "${SCENARIOS[@]}"; do run_scenario "$scenario"; done
if [ "$FAILURES" -gt 0 ]; then
    say "$FAILURES check(s) failed; logs in $BASE (kept)"
    exit 1
fi
say "all checks passed"
