# Shared by scripts/interop.sh and scripts/cluster.sh: strongSwan's charon as the IKEv2
# initiator in a network namespace (after ../shared/reference/strongswan-peer), the checks
# read from its log, and the bookkeeping of what a harness started. Source it; it defines
# functions and uses PIDS, FAILURES and DIR.

PIDS=()
FAILURES=0
PSK=interop-test-only-psk-0123456789

say() { printf '[%s] %s\n' "$(date +%H:%M:%S.%3N)" "$*"; }
fail() { say "FAIL: $*"; FAILURES=$((FAILURES + 1)); }
pass() { say "PASS: $*"; }
skip() { echo "$(basename "$0"): skipped: $*"; exit 77; }

# Root, namespaces, TUN and the Debian packages (installed when missing), or exit 77.
require_machine() { # extra-packages...
    [ "$(id -u)" -eq 0 ] || skip "needs root (network namespaces, TUN)"
    command -v ip >/dev/null && ip netns list >/dev/null 2>&1 || skip "no network namespaces (iproute2)"
    [ -c /dev/net/tun ] || skip "no /dev/net/tun for charon's kernel-libipsec"
    "$HERE/scripts/ensure-debian-packages.sh" strongswan-charon strongswan-swanctl libcharon-extra-plugins \
        libstrongswan-extra-plugins iputils-ping "$@" || skip "Debian packages missing: strongswan-charon ... $*"
    [ -x /usr/lib/ipsec/charon ] || skip "no /usr/lib/ipsec/charon"
    [ -x "$GATEWAY" ] || { echo "$(basename "$0"): $GATEWAY not built (swift build -c release --product ikeha-gateway)"; exit 1; }
}

stop_pid() { # pid [signal]
    local pid=$1 signal=${2:-TERM}
    [ -d "/proc/$pid" ] || return 0
    kill "-$signal" "$pid" 2>/dev/null
    for _ in $(seq 100); do [ -d "/proc/$pid" ] || return 0; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null
}

stop_all() {
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    PIDS=()
}

wait_for() { # file pattern seconds
    for _ in $(seq $(( $3 * 20 ))); do grep -q -- "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    return 1
}

wait_for_count() { # file pattern count seconds
    for _ in $(seq $(( $4 * 20 ))); do [ "$(grep -c -- "$2" "$1" 2>/dev/null)" -ge "$3" ] && return 0; sleep 0.05; done
    return 1
}

# An event's realtime_ms from a member's events file: event_time FILE EVENT [MEMBER]
event_time() { sed -n "s/.*event=$2 member=${3:-[0-9]*} realtime_ms=\([0-9]*\).*/\1/p" "$1" | head -1; }

sw() { swanctl "$@" --uri "unix://$DIR/charon.vici"; }
charon_since() { tail -n +"$(( $1 + 1 ))" "$DIR/charon.log"; }
charon_lines() { wc -l < "$DIR/charon.log"; }
ike_spis() { sw --list-sas --ike gw | sed -n 's/.*IKEv2, \([0-9a-f]*_i\)[^0-9a-f]*\([0-9a-f]*_r\).*/\1 \2/p'; }

# charon's configuration in DIR: initiator from LOCAL to REMOTE (the cluster address),
# protecting LOCAL_TS <-> REMOTE_TS; DPD after 1 s idle, no MOBIKE.
# With KERNEL_ESP=1, charon's ESP runs in the kernel (kernel-netlink, plain ESP) instead of
# kernel-libipsec's ESP in UDP.
write_charon_config() { # local remote local_ts remote_ts
    local ipsec_backend="kernel-libipsec kernel-netlink" encap=yes
    if [ -n "${KERNEL_ESP:-}" ]; then ipsec_backend=kernel-netlink; encap=no; fi
    mkdir -p "$DIR/swanctl/"{x509,x509ca,private,rsa,ecdsa,pkcs8,pkcs12,x509aa,x509ocsp,x509crl,x509ac,pubkey,bliss}
    cat > "$DIR/strongswan.conf" <<CONF
charon {
    load_modular = no
    load = random nonce drbg kdf aes sha1 sha2 hmac gcm chapoly curve25519 pem pkcs1 x509 pubkey $ipsec_backend socket-default vici updown
    port = 500
    port_nat_t = 4500
    retransmit_tries = 5
    retransmit_timeout = 1.0
    plugins { vici { socket = unix://$DIR/charon.vici } }
    filelog {
        main {
            path = $DIR/charon.log
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
    cat > "$DIR/swanctl/swanctl.conf" <<CONF
connections {
    gw {
        version = 2
        local_addrs = $1
        remote_addrs = $2
        encap = $encap
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
                local_ts = $3/32
                remote_ts = $4/32
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
    # The gateway refuses secrets that group or others can read.
    (umask 077 && printf '%s' "$PSK" > "$DIR/psk" && head -c 32 /dev/urandom > "$DIR/sync.key")
}

# charon in namespace NS with a private /run (its pid file is fixed); its PID joins PIDS.
start_charon() { # ns
    ip netns exec "$1" unshare -m --propagation private sh -c "
        mount -t tmpfs -o size=1m,mode=755 tmpfs /run &&
        STRONGSWAN_CONF=$DIR/strongswan.conf exec /usr/lib/ipsec/charon" > "$DIR/charon.stdout" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 200); do [ -S "$DIR/charon.vici" ] && break; sleep 0.025; done
    [ -S "$DIR/charon.vici" ] || { cat "$DIR/charon.stdout"; return 1; }
    sw --load-all --file "$DIR/swanctl/swanctl.conf" > "$DIR/swanctl-load.log" 2>&1
}

# A gateway member in namespace NS; its PID joins PIDS and goes to DIR/memberID.pid.
# Renders Examples/ikeha-gateway/member.yaml (GATEWAY_CONFIG_TEMPLATE elsewhere) into
# DIR/memberID.yaml. VRRP_FIFO, VRRP_TRACK_FILE, VRRP_PRIORITY_FILE and METRICS_LISTEN fill their lines when set;
# the lines of those left empty are dropped.
gateway_config() { # id cluster-address inner remote-subnet sync-listen sync-peer
    local drop=() name
    for name in VRRP_FIFO VRRP_TRACK_FILE VRRP_PRIORITY_FILE METRICS_LISTEN; do
        if [ -n "${!name:-}" ]; then drop+=(-e "s|@$name@|${!name}|"); else drop+=(-e "/@$name@/d"); fi
    done
    sed -e "s|@MEMBER@|$1|" -e "s|@CLUSTER_ADDRESS@|$2|" -e "s|@INNER_ADDRESS@|$3|" -e "s|@REMOTE_SUBNET@|$4|" \
        -e "s|@SYNC_LISTEN@|$5|" -e "s|@SYNC_PEER@|$6|" -e "s|@DIR@|$DIR|g" "${drop[@]}" \
        "${GATEWAY_CONFIG_TEMPLATE:-$HERE/Examples/ikeha-gateway/member.yaml}" > "$DIR/member$1.yaml"
}

# The systemd unit's ExecStart (Examples/ikeha-gateway/ikeha-gateway@.service, GATEWAY_UNIT
# elsewhere) for member ID, with this build's binary and DIR for /etc/ikeha-gateway.
unit_command() { # id
    sed -n 's/^ExecStart=//p' "${GATEWAY_UNIT:-$HERE/Examples/ikeha-gateway/ikeha-gateway@.service}" |
        sed -e "s|/usr/local/bin/ikeha-gateway|$GATEWAY|" -e "s|/etc/ikeha-gateway|$DIR|g" -e "s|%i|member$1|g"
}

# A member as the systemd unit starts it, with its rendered configuration file; extra
# arguments (the command line overrides the file) after it.
start_member() { # ns id cluster-address inner remote-subnet sync-listen sync-peer args...
    local ns=$1 id=$2; shift 2
    gateway_config "$id" "$1" "$2" "$3" "$4" "$5"
    shift 5
    local command
    read -r -a command <<< "$(unit_command "$id")"
    ip netns exec "$ns" "${command[@]}" "$@" > "$DIR/member$id.events" 2> "$DIR/member$id.log" &
    PIDS+=($!)
    echo $! > "$DIR/member$id.pid"
}

# Brings up the IKE SA and Child SA; prints the SPIs. Fails the scenario when charon cannot.
initiate() {
    if ! sw --initiate --ike gw --child net --timeout 10 > "$DIR/initiate.log" 2>&1; then
        fail "charon could not bring up the IKE SA"
        grep -E "IKE|ENC|CFG" "$DIR/charon.log" | tail -20
        return 1
    fi
    SPIS_BEFORE=$(ike_spis)
    say "IKE SA: $SPIS_BEFORE; $(sw --list-sas --ike gw | grep -E 'INSTALLED' | head -1 | sed 's/^ *//')"
}

# Pings from NS to ADDRESS into DIR/ping.log, nominally 100 a second; PING_PID.
# PING_INTERVAL (s) is ping's -i: mind that iputils' ping rounds its timer, so that here -i 0.01
# sends about 63 a second and -i 0.009 about 110; ping_rate says what was sent.
start_ping() { # ns address
    ip netns exec "$1" ping -D -i "${PING_INTERVAL:-0.01}" -W 1 "$2" > "$DIR/ping.log" 2>&1 &
    PING_PID=$!
    PIDS+=($PING_PID)
}

stop_ping() { # prints "sent answered lost"
    kill -INT "$PING_PID" 2>/dev/null; wait "$PING_PID" 2>/dev/null
    local summary sent answered
    for _ in $(seq 20); do
        summary=$(grep -E "packets transmitted" "$DIR/ping.log")
        [ -n "$summary" ] && break
        sleep 0.05
    done
    sent=$(echo "$summary" | sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p')
    answered=$(echo "$summary" | sed -n 's/.* \([0-9]*\) received.*/\1/p')
    if [ -z "$sent" ]; then
        # No summary (a CI run printed "0 sent" once): counted from the replies, up to the last
        # one answered (what went unanswered after it is not known).
        answered=$(grep -c "bytes from" "$DIR/ping.log")
        sent=$(sed -n 's/.*icmp_seq=\([0-9]*\).*/\1/p' "$DIR/ping.log" | sort -n | tail -1)
        echo "stop_ping: ping printed no summary; counted from its replies" >&2
    fi
    echo "${sent:-0} ${answered:-0} $(( ${sent:-0} - ${answered:-0} ))"
}

# Pings sent a second, from the first and last replies' sequence numbers and times.
ping_rate() {
    awk -F'[][ =]' '/bytes from/ { for (i = 1; i <= NF; i++) if ($i == "icmp_seq") seq = $(i + 1); t = $2
        if (!first) { first = 1; t0 = t; s0 = seq } t1 = t; s1 = seq }
        END { if (t1 > t0) printf "%d", (s1 - s0) / (t1 - t0); else print 0 }' "$DIR/ping.log"
}

# What strongSwan must show after member B took over: B's ESP accepted (no replay
# rejections), the message-ID sync processed, a liveness check and a Child SA rekey against B,
# traffic on the new Child SA, the same IKE SA. LOG_AT: charon's log length at the kill.
check_strongswan_after_failover() { # log_at first_reply_ms ping-ns gateway-inner
    local log_at=$1 first_reply=$2 ns=$3 inner=$4
    local after
    after=$(charon_since "$log_at")
    local replays
    replays=$(echo "$after" | grep -c "ESP sequence number verification failed")
    if [ -n "$first_reply" ]; then pass "charon accepted B's ESP: the first reply after the kill left B ${first_reply} ms after it"
    else fail "no ping was answered by B"; fi
    if [ -n "$first_reply" ] && [ "$replays" -eq 0 ]; then pass "charon logged no 'ESP sequence number verification failed' for B's packets"
    else fail "charon rejected $replays of B's packets as replays"; echo "$after" | grep -A2 "verification failed" | head -6; fi
    if echo "$after" | grep -q "responder requested MID sync"; then
        pass "charon processed the message-ID sync: $(echo "$after" | grep "responder requested MID sync" | head -1 | sed 's/^ *//')"
        echo "$after" | grep -E "parsed INFORMATIONAL request 0|generating INFORMATIONAL response 0" | head -2 | sed 's/^/    /'
    else fail "no 'responder requested MID sync' in charon's log"; fi
    # Idle: charon's 1 s DPD runs against B. Up to 15 s, not a fixed wait: under emulation with
    # the rest of the suite running, a DPD round can take several seconds.
    local dpd="" waited
    for waited in $(seq 30); do
        dpd=$(charon_since "$log_at" | grep -E "generating INFORMATIONAL request [1-9][0-9]* \[ \]" | tail -1)
        [ -n "$dpd" ] && charon_since "$log_at" | grep -qE "parsed INFORMATIONAL response [1-9][0-9]* \[ \]" && break
        sleep 0.5
    done
    if [ -n "$dpd" ] && charon_since "$log_at" | grep -qE "parsed INFORMATIONAL response [1-9][0-9]* \[ \]"; then
        pass "liveness check by charon answered by B: $(echo "$dpd" | sed 's/^ *//')"
    else fail "no liveness check answered after the failover"; fi
    local rekey_at
    rekey_at=$(charon_lines)
    if sw --rekey --child net > "$DIR/rekey.log" 2>&1 && sleep 1 &&
        charon_since "$rekey_at" | grep -qE "CHILD_SA net\{[0-9]+\} established"; then
        pass "Child SA rekey by charon against B: $(charon_since "$rekey_at" | grep -E "CHILD_SA net\{[0-9]+\} established" | head -1 | sed 's/^ *//')"
    else fail "the Child SA rekey against B failed"; charon_since "$rekey_at" | tail -8; fi
    if ip netns exec "$ns" ping -c 5 -i 0.1 -W 1 "$inner" > "$DIR/ping-after-rekey.log" 2>&1; then
        pass "traffic on the rekeyed Child SA: $(grep 'packets transmitted' "$DIR/ping-after-rekey.log")"
    else fail "no traffic after the rekey"; fi
    local spis_after
    spis_after=$(ike_spis)
    if [ -n "$SPIS_BEFORE" ] && [ "$SPIS_BEFORE" = "$spis_after" ] && sw --list-sas --ike gw | grep -q ESTABLISHED; then
        pass "swanctl --list-sas: the same IKE SA ($spis_after) ESTABLISHED after the failover"
    else fail "IKE SA before ($SPIS_BEFORE) and after ($spis_after) differ or is not established"; fi
}

# The negative control without the counter advance: charon must reject B's packets.
check_replays_rejected() { # log_at
    local after replays
    after=$(charon_since "$1")
    replays=$(echo "$after" | grep -c "ESP sequence number verification failed")
    if [ "$replays" -gt 0 ]; then
        pass "negative control: charon rejected $replays of B's packets as replays without the counter advance"
        echo "$after" | grep -A2 "ESP sequence number verification failed" | head -3 | sed 's/^/    /'
    else fail "negative control did not fail: charon accepted B's reused sequence numbers"; fi
}

# With A dead while charon's CREATE_CHILD_SA was in flight and no message-ID sync: report.
report_in_flight_without_sync() { # log_at
    say "B's plan for the IKE SA: $(grep event=ike_sa_takeover "$DIR/member2.events" | sed 's/.*classification=//')"
    say "with A dead while charon's CREATE_CHILD_SA was in flight and no message-ID sync, charon's log says:"
    charon_since "$1" | grep -E "retransmit|CREATE_CHILD_SA|INFORMATIONAL|giving up|deleting|establish|rekey" | head -12 | sed 's/^/    /'
    sleep 4
    say "B's log about it:"
    grep -E "CREATE_CHILD_SA|Child SA|dropped|window" "$DIR/member2.log" | head -8 | sed 's/^/    /'
    say "swanctl --list-sas afterwards:"
    sw --list-sas | grep -E "gw:|net:|INSTALLED|REKEYED" | sed 's/^/    /'
}

# Member options that leave about 30 ESP packets beyond what B knows when A dies 300 ms after
# a checkpoint, so that the replay checks can fail (with 20 ms checkpoints there may be none).
LAG=(--checkpoint-ms 1000 --checkpoint-packets 100000 --takeover-minimum-advance 16)

# Waits for A's next checkpoint event and 300 ms more.
after_next_checkpoint() {
    local count
    count=$(grep -c event=checkpoint "$DIR/member1.events")
    wait_for_count "$DIR/member1.events" event=checkpoint $((count + 1)) 3 || fail "A sent no checkpoint"
    sleep 0.3
}

# charon rekeys the IKE SA against member A (RFC 7296 section 2.18); SPIS_BEFORE becomes the new
# IKE SA's SPIs, so that the failover checks look for that one after the takeover.
rekey_ike_sa() { # scenario
    local at old
    old=$(ike_spis)
    at=$(charon_lines)
    sw --rekey --ike gw > "$DIR/ike-rekey.log" 2>&1
    sleep 1
    local rekeyed
    rekeyed=$(charon_since "$at" | grep -E "IKE_SA gw\[[0-9]+\] rekeyed between" | head -1 | sed 's/^ *//')
    SPIS_BEFORE=$(ike_spis)
    if [ -n "$rekeyed" ] && [ -n "$SPIS_BEFORE" ] && [ "$SPIS_BEFORE" != "$old" ]; then
        pass "IKE SA rekeyed by charon against A ($old -> $SPIS_BEFORE): $rekeyed"
    else
        fail "$1: the IKE SA rekey against A failed"; charon_since "$at" | tail -10; return 1
    fi
}

# Members up, the SAs up, pings running for two seconds, then member 1 dies: by itself when
# charon's rekey request arrives (scenario no-message-id-sync: that exchange is in flight), or
# otherwise at once, or 300 ms after its next checkpoint when CHECKPOINT is yes; KILL (a
# function) finishes it either way. Sets LOG_AT (charon's log length before) and KILLED_AT (ms).
start_and_kill() { # scenario kill-function checkpoint
    local scenario=$1 kill_member=$2 checkpoint=$3
    wait_for "$DIR/member1.events" "event=active" 5 || { fail "$scenario: member 1 did not start"; cat "$DIR/member1.log"; return 1; }
    wait_for "$DIR/member2.events" "event=standby_ready" 10 || { fail "$scenario: member 2 never became a ready standby"; return 1; }
    initiate || return 1
    start_ping "$NS_P" "$GATEWAY_INNER"
    sleep 2
    if [ "$scenario" = ike-rekey ]; then rekey_ike_sa "$scenario" || return 1; fi
    LOG_AT=$(charon_lines)
    if [ "$scenario" = no-message-id-sync ]; then
        sw --rekey --child net > "$DIR/rekey-crash.log" 2>&1 &
        PIDS+=($!)
        wait_for "$DIR/member1.events" "event=crash_injected" 5 || fail "$scenario: member 1 did not see the rekey request"
        KILLED_AT=$(event_time "$DIR/member1.events" crash_injected)
    else
        [ "$checkpoint" = yes ] && after_next_checkpoint
        KILLED_AT=$(date +%s%3N)
    fi
    $kill_member
    local checkpoint
    checkpoint=$(grep event=checkpoint "$DIR/member1.events" | tail -1 | sed -n 's/.*last_sent=/last_sent=/p')
    say "member 1 killed at $KILLED_AT${checkpoint:+; its last checkpoint: $checkpoint}"
}

# Waits for member 2's takeover (and its message-ID sync), lets the pings run two seconds
# more, stops them and says how many were lost. Sets FIRST_REPLY: ms from the kill to member
# 2's first ESP reply, by its own event (a reply from member 1 may still be on its way then),
# and LOST_AT_100: the pings lost, scaled to 100 a second.
after_kill() { # scenario
    wait_for "$DIR/member2.events" "event=takeover" 5 || fail "$1: member 2 did not take over"
    [ "$1" = no-message-id-sync ] || wait_for "$DIR/member2.events" "event=mid_sync_done" 5 || fail "$1: the message-ID sync was not answered"
    sleep 2
    local pings first
    read -r -a pings <<< "$(stop_ping)"
    first=$(event_time "$DIR/member2.events" first_esp_reply 2)
    FIRST_REPLY=${first:+$((first - KILLED_AT))}
    local rate
    rate=$(ping_rate)
    say "pings: ${pings[0]} sent, ${pings[1]} answered, ${pings[2]} lost ($rate a second); member 2's first reply ${FIRST_REPLY:-never} ms after the kill"
    # The traffic lost across the crash, as time and as pings at 100 a second.
    LOST_AT_100=""
    if [ "$rate" -gt 0 ]; then
        LOST_AT_100=$(( (pings[2] * 100 + rate / 2) / rate ))
        say "FIGURE crash_loss scenario=$1 pings_lost=${pings[2]} ping_rate=$rate gap_ms=$(( pings[2] * 1000 / rate )) lost_at_100_per_s=$LOST_AT_100"
    fi
    say "member 2: $(grep event=takeover "$DIR/member2.events" | cut -d' ' -f4-)"
    grep event=child_sa_takeover "$DIR/member2.events" | sed 's/^/    /'
}

# The verdicts of a scenario, from charon's log since the kill.
judge() { # scenario
    case $1 in
        failover | ike-rekey) check_strongswan_after_failover "$LOG_AT" "$FIRST_REPLY" "$NS_P" "$GATEWAY_INNER" ;;
        no-counter-advance) check_replays_rejected "$LOG_AT" ;;
        no-message-id-sync) report_in_flight_without_sync "$LOG_AT" ;;
    esac
}
