#!/usr/bin/env bash
# Failover against a real IKEv2 peer: strongSwan's charon (initiator, kernel-libipsec) in one
# network namespace, two ikeha-gateway members sharing the cluster address in another. charon
# brings up an IKE SA and a Child SA with member A, pings through it at 100 per second, A is
# killed with SIGKILL, B takes over; then a liveness check and a Child SA rekey by charon.
# The verdicts are read from charon's own log and from swanctl.
#
# Scenarios: "failover" (must pass), and the negative controls "no-counter-advance" (charon
# must reject B's ESP as replays) and "no-message-id-sync" (A dies with a CREATE_CHILD_SA in
# flight; what follows is reported). Usage: interop.sh [scenario ...]; default: all three.
#
# Needs root, network namespaces, /dev/net/tun and Debian's strongswan-charon,
# strongswan-swanctl, libcharon-extra-plugins, libstrongswan-extra-plugins, iputils-ping
# (installed when missing and root). Traffic stays inside the namespaces made here; they and
# every process started here are removed at exit, by process ID.
set -uo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
GATEWAY=${GATEWAY:-$HERE/.build/release/ikeha-gateway}
SCENARIOS=("${@:-failover no-counter-advance no-message-id-sync}")
read -r -a SCENARIOS <<< "${SCENARIOS[*]}"
BASE=$(mktemp -d /tmp/ikeha-interop.XXXXXX)
NS_P=ikeha-peer-$$ NS_C=ikeha-cluster-$$
VETH_P=ikp$$ VETH_C=ikc$$
PEER_IP=10.99.0.1 CLUSTER_IP=10.99.0.2 PEER_INNER=10.99.1.1 GATEWAY_INNER=10.99.2.1
PSK=interop-test-only-psk-0123456789
PIDS=()
FAILURES=0

say() { printf '[%s] %s\n' "$(date +%H:%M:%S.%3N)" "$*"; }
fail() { say "FAIL: $*"; FAILURES=$((FAILURES + 1)); }
pass() { say "PASS: $*"; }

skip() { echo "interop: skipped: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root (network namespaces, TUN)"
command -v ip >/dev/null && ip netns list >/dev/null 2>&1 || skip "no network namespaces (iproute2)"
[ -c /dev/net/tun ] || skip "no /dev/net/tun for charon's kernel-libipsec"
"$HERE/scripts/ensure-debian-packages.sh" strongswan-charon strongswan-swanctl libcharon-extra-plugins \
    libstrongswan-extra-plugins iputils-ping || skip "strongSwan packages missing"
[ -x /usr/lib/ipsec/charon ] || skip "no /usr/lib/ipsec/charon"
[ -x "$GATEWAY" ] || { echo "interop: $GATEWAY not built (swift build -c release --product ikeha-gateway)"; exit 1; }

stop_pid() {
    local pid=$1 signal=${2:-TERM}
    [ -d "/proc/$pid" ] || return 0
    kill "-$signal" "$pid" 2>/dev/null
    for _ in $(seq 100); do [ -d "/proc/$pid" ] || return 0; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null
}

teardown() {
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    PIDS=()
    ip netns del "$NS_P" 2>/dev/null
    ip netns del "$NS_C" 2>/dev/null
}
trap 'teardown; rm -rf "$BASE"' EXIT

# ---- one scenario's world ---------------------------------------------------------------
setup() {
    local dir=$1
    mkdir -p "$dir/swanctl"
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

    cat > "$dir/strongswan.conf" <<CONF
charon {
    load_modular = no
    load = random nonce drbg kdf aes sha1 sha2 hmac gcm chapoly curve25519 pem pkcs1 x509 pubkey kernel-libipsec kernel-netlink socket-default vici updown
    port = 500
    port_nat_t = 4500
    retransmit_tries = 5
    retransmit_timeout = 1.0
    plugins { vici { socket = unix://$dir/charon.vici } }
    filelog {
        main {
            path = $dir/charon.log
            time_format = %H:%M:%S
            time_add_ms = yes
            ike_name = yes
            append = yes
            flush_line = yes
            default = 1
            ike = 1
            esp = 1
            enc = 1
            net = 1
            cfg = 1
            knl = 1
        }
    }
    syslog { }
}
CONF
    cat > "$dir/swanctl/swanctl.conf" <<CONF
connections {
    gw {
        version = 2
        local_addrs = $PEER_IP
        remote_addrs = $CLUSTER_IP
        encap = yes
        mobike = no
        proposals = chacha20poly1305-prfsha256-x25519
        dpd_delay = 1s
        local { auth = psk
                id = peer@interop }
        remote { auth = psk
                 id = gateway@interop }
        children {
            net {
                mode = tunnel
                local_ts = $PEER_INNER/32
                remote_ts = $GATEWAY_INNER/32
                esp_proposals = chacha20poly1305
                start_action = none
            }
        }
    }
}
secrets { ike-interop { id-a = peer@interop
                        id-b = gateway@interop
                        secret = "$PSK" } }
CONF
    mkdir -p "$dir/swanctl/"{x509,x509ca,private,rsa,ecdsa,pkcs8,pkcs12,x509aa,x509ocsp,x509crl,x509ac,pubkey,bliss}
    printf '%s' "$PSK" > "$dir/psk"
    head -c 32 /dev/urandom > "$dir/sync.key"
    ip netns exec "$NS_P" unshare -m --propagation private sh -c "
        mount -t tmpfs -o size=1m,mode=755 tmpfs /run &&
        STRONGSWAN_CONF=$dir/strongswan.conf exec /usr/lib/ipsec/charon" > "$dir/charon.stdout" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 200); do [ -S "$dir/charon.vici" ] && break; sleep 0.025; done
    [ -S "$dir/charon.vici" ] || { cat "$dir/charon.stdout"; return 1; }
    swanctl --load-all --file "$dir/swanctl/swanctl.conf" --uri "unix://$dir/charon.vici" > "$dir/swanctl-load.log" 2>&1
}

sw() { swanctl "$@" --uri "unix://$DIR/charon.vici"; }

start_member() { # id active? listen-port peer-port extra-args...
    local id=$1 role=$2 port=$3 peer_port=$4; shift 4
    local active_flag=()
    [ "$role" = active ] && active_flag=(--active)
    ip netns exec "$NS_C" "$GATEWAY" --member "$id" "${active_flag[@]}" --cluster-address $CLUSTER_IP \
        --inner-address $GATEWAY_INNER --remote-subnet $PEER_INNER/32 --local-id gateway@interop --remote-id peer@interop \
        --psk-file "$DIR/psk" --sync-listen 127.0.0.1:"$port" --sync-peer "$((3 - id))=127.0.0.1:$peer_port" \
        --sync-key-file "$DIR/sync.key" "$@" > "$DIR/member$id.events" 2> "$DIR/member$id.log" &
    PIDS+=($!)
    echo $! > "$DIR/member$id.pid"
}

wait_for() { # file pattern seconds
    for _ in $(seq $(( $3 * 20 ))); do grep -q -- "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    return 1
}

wait_for_count() { # file pattern count seconds
    for _ in $(seq $(( $4 * 20 ))); do [ "$(grep -c -- "$2" "$1" 2>/dev/null)" -ge "$3" ] && return 0; sleep 0.05; done
    return 1
}

charon_since() { tail -n +"$(( $1 + 1 ))" "$DIR/charon.log"; }

# ---- a scenario --------------------------------------------------------------------------
run_scenario() {
    local scenario=$1
    DIR=$BASE/$scenario
    say "=== scenario $scenario ==="
    setup "$DIR" || { fail "$scenario: setup"; teardown; return; }
    # For "failover" and its control the counters are checkpointed once a second and A dies
    # 300 ms after a checkpoint: about 30 of A's packets lie beyond what B knows, so that
    # both checks can fail (with the default 20 ms there may be none). They differ in one flag.
    local lag=(--checkpoint-ms 1000 --checkpoint-packets 100000 --takeover-minimum-advance 16)
    local a_args=("${lag[@]}" --announce-checkpoints)
    local b_args=("${lag[@]}")
    case $scenario in
        no-counter-advance) b_args+=(--no-counter-advance) ;;
        no-message-id-sync) a_args=(--crash-on-exchange CREATE_CHILD_SA); b_args=(--no-message-id-sync) ;;
    esac
    start_member 1 active 7101 7102 "${a_args[@]}"
    start_member 2 standby 7102 7101 "${b_args[@]}"
    wait_for "$DIR/member1.events" "event=active" 5 || { fail "$scenario: member A did not start"; cat "$DIR/member1.log"; teardown; return; }
    wait_for "$DIR/member2.events" "event=standby_ready" 10 || { fail "$scenario: member B never became a ready standby"; teardown; return; }

    if ! sw --initiate --ike gw --child net --timeout 10 > "$DIR/initiate.log" 2>&1; then
        fail "$scenario: charon could not bring up the IKE SA with member A"
        grep -E "IKE|ENC|CFG" "$DIR/charon.log" | tail -20
        teardown; return
    fi
    local sas_before
    sas_before=$(sw --list-sas --ike gw)
    local spis_before
    spis_before=$(echo "$sas_before" | sed -n 's/.*IKEv2, \([0-9a-f]*_i\)[^0-9a-f]*\([0-9a-f]*_r\).*/\1 \2/p')
    say "IKE SA with A: $spis_before; $(echo "$sas_before" | grep -E 'INSTALLED' | head -1 | sed 's/^ *//')"

    ip netns exec "$NS_P" ping -D -i 0.01 -W 1 $GATEWAY_INNER > "$DIR/ping.log" 2>&1 &
    local ping_pid=$!
    PIDS+=($ping_pid)
    sleep 2
    local log_at_kill
    log_at_kill=$(wc -l < "$DIR/charon.log")
    local killed_at
    if [ "$scenario" = no-message-id-sync ]; then
        # A dies by itself when charon's rekey request arrives: that exchange is in flight.
        sw --rekey --child net > "$DIR/rekey-crash.log" 2>&1 &
        PIDS+=($!)
        wait_for "$DIR/member1.events" "event=crash_injected" 5 || fail "$scenario: A did not see the rekey request"
        killed_at=$(sed -n 's/.*event=crash_injected member=1 realtime_ms=\([0-9]*\).*/\1/p' "$DIR/member1.events")
    else
        local checkpoints
        checkpoints=$(grep -c event=checkpoint "$DIR/member1.events")
        wait_for_count "$DIR/member1.events" event=checkpoint $((checkpoints + 1)) 3 || fail "$scenario: A sent no checkpoint"
        sleep 0.3
        killed_at=$(date +%s%3N)
        kill -KILL "$(cat "$DIR/member1.pid")"
        say "A's last checkpoint: $(grep event=checkpoint "$DIR/member1.events" | tail -1 | sed 's/.*last_sent=/last_sent=/')"
    fi
    say "member A killed at $killed_at"
    wait_for "$DIR/member2.events" "event=takeover" 5 || fail "$scenario: B did not take over"
    if [ "$scenario" != no-message-id-sync ]; then
        wait_for "$DIR/member2.events" "event=mid_sync_done" 5 || fail "$scenario: the message-ID sync was not answered"
    fi
    sleep 2
    kill -INT $ping_pid; wait $ping_pid 2>/dev/null
    local summary transmitted received first_reply
    summary=$(grep -E "packets transmitted" "$DIR/ping.log")
    transmitted=$(echo "$summary" | sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p')
    received=$(echo "$summary" | sed -n 's/.* \([0-9]*\) received.*/\1/p')
    # B's first ESP reply, by B's own clock line (a reply from A may still be on its way at the kill).
    local b_first
    b_first=$(sed -n 's/.*event=first_esp_reply member=2 realtime_ms=\([0-9]*\).*/\1/p' "$DIR/member2.events")
    [ -n "$b_first" ] && first_reply=$((b_first - killed_at)) || first_reply=""
    say "pings: $transmitted sent, $received answered, $((transmitted - received)) lost; first reply from B ${first_reply:-never} ms after the kill"
    say "B: $(grep event=takeover "$DIR/member2.events" | cut -d' ' -f4-)"
    grep event=child_sa_takeover "$DIR/member2.events" | sed 's/^/    /'

    local after
    after=$(charon_since "$log_at_kill")
    local replay_lines
    replay_lines=$(echo "$after" | grep -c "ESP sequence number verification failed")
    case $scenario in
        failover)
            if [ -n "$first_reply" ]; then pass "charon accepted B's ESP: the first ping reply after the kill came ${first_reply} ms after it"
            else fail "no ping was answered after the kill"; fi
            if [ -n "$first_reply" ] && [ "$replay_lines" -eq 0 ]; then pass "charon logged no 'ESP sequence number verification failed' for B's packets"
            else fail "charon rejected $replay_lines of B's packets as replays"; echo "$after" | grep -A2 "verification failed" | head -6; fi
            if echo "$after" | grep -q "responder requested MID sync"; then
                pass "charon processed the message-ID sync: $(echo "$after" | grep "responder requested MID sync" | head -1 | sed 's/^ *//')"
                echo "$after" | grep -E "parsed INFORMATIONAL request 0|generating INFORMATIONAL response 0" | head -2 | sed 's/^/    /'
            else fail "no 'responder requested MID sync' in charon's log"; fi
            sleep 3  # idle: charon's 1 s DPD runs against B
            local dpd
            dpd=$(charon_since "$log_at_kill" | grep -E "generating INFORMATIONAL request [1-9][0-9]* \[ \]" | tail -1)
            if [ -n "$dpd" ] && charon_since "$log_at_kill" | grep -qE "parsed INFORMATIONAL response [1-9][0-9]* \[ \]"; then
                pass "liveness check by charon answered by B: $(echo "$dpd" | sed 's/^ *//')"
            else fail "no liveness check answered after the failover"; fi
            local rekey_at
            rekey_at=$(wc -l < "$DIR/charon.log")
            if sw --rekey --child net > "$DIR/rekey.log" 2>&1 && sleep 1 &&
                charon_since "$rekey_at" | grep -qE "CHILD_SA net\{[0-9]+\} established"; then
                pass "Child SA rekey by charon against B: $(charon_since "$rekey_at" | grep -E "CHILD_SA net\{[0-9]+\} established" | head -1 | sed 's/^ *//')"
            else fail "the Child SA rekey against B failed"; charon_since "$rekey_at" | tail -8; fi
            if ip netns exec "$NS_P" ping -c 5 -i 0.1 -W 1 $GATEWAY_INNER > "$DIR/ping-after-rekey.log" 2>&1; then
                pass "traffic on the rekeyed Child SA: $(grep 'packets transmitted' "$DIR/ping-after-rekey.log")"
            else fail "no traffic after the rekey"; fi
            local spis_after
            spis_after=$(sw --list-sas --ike gw | sed -n 's/.*IKEv2, \([0-9a-f]*_i\)[^0-9a-f]*\([0-9a-f]*_r\).*/\1 \2/p')
            if [ -n "$spis_before" ] && [ "$spis_before" = "$spis_after" ] && sw --list-sas --ike gw | grep -q ESTABLISHED; then
                pass "swanctl --list-sas: the same IKE SA ($spis_after) ESTABLISHED after the failover"
            else fail "IKE SA before ($spis_before) and after ($spis_after) differ or is not established"; fi
            ;;
        no-counter-advance)
            if [ "$replay_lines" -gt 0 ]; then
                pass "negative control: charon rejected $replay_lines of B's packets as replays without the counter advance"
                echo "$after" | grep -A2 "ESP sequence number verification failed" | head -3 | sed 's/^/    /'
            else fail "negative control did not fail: charon accepted B's reused sequence numbers"; fi
            ;;
        no-message-id-sync)
            say "B's plan for the IKE SA: $(grep event=ike_sa_takeover "$DIR/member2.events" | sed 's/.*classification=//')"
            say "with A dead while charon's CREATE_CHILD_SA was in flight and no message-ID sync, charon's log says:"
            echo "$after" | grep -E "retransmit|CREATE_CHILD_SA|INFORMATIONAL|giving up|deleting|establish|rekey" | head -12 | sed 's/^/    /'
            sleep 4
            say "B's log about it:"
            grep -E "CREATE_CHILD_SA|Child SA|dropped|window" "$DIR/member2.log" | head -8 | sed 's/^/    /'
            say "swanctl --list-sas afterwards:"
            sw --list-sas | grep -E "gw:|net:|INSTALLED|REKEYED" | sed 's/^/    /'
            ;;
    esac
    cp "$DIR/charon.log" "$BASE/$scenario-charon.log"
    teardown
}

for scenario in "${SCENARIOS[@]}"; do run_scenario "$scenario"; done
if [ "$FAILURES" -gt 0 ]; then
    say "$FAILURES check(s) failed; logs in $BASE (kept)"
    trap 'teardown' EXIT
    exit 1
fi
say "all checks passed"
