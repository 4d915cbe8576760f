#!/usr/bin/env bash
# Load sharing on real processes: three members of the reference gateway
# (--load-sharing-segments), each in its own network namespace, share the cluster address
# 10.97.0.10 and one MAC on a bridge that floods their frames to all three; each member's kernel
# drops, with nftables rules the member keeps (NFTablesSteering), the IKE and ESP of the segments
# it does not serve. Six charon initiators, each in its own namespace with its own address, bring
# up an IKE SA and a Child SA each and ping through them at 50 a second.
#
# Then member 2 is killed with SIGKILL: its segments must move to the others within the lease
# time, every one of its peers keep its IKE SA (same SPIs) and get answers again, charon log no
# "ESP sequence number verification failed", the other members' peers lose nothing. Member 2 is
# restarted: it must rejoin and get segments back by handover, again without replay drops.
# Prints per peer: pings lost, the first reply after the kill, the member before and after.
#
# Needs root, network namespaces, /dev/net/tun, nftables and Debian's strongSwan (installed when
# missing and root; otherwise exit 77). Traffic stays inside the namespaces made here; they and
# every process started here are removed at exit, by process ID.
set -uo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
GATEWAY=${GATEWAY:-$HERE/.build/release/ikeha-gateway}
source "$HERE/scripts/lib/strongswan-peer.sh"
require_machine nftables
command -v nft >/dev/null || skip "no nft (nftables)"
BASE=$(mktemp -d /tmp/ikeha-load-sharing.XXXXXX)
DIR=$BASE
ID=$$
NS_BR=ikeha-ls-br-$ID
MEMBERS=(1 2 3)
PEERS=(1 2 3 4 5 6)
CLUSTER_IP=10.97.0.10 CLUSTER_MAC=02:00:5e:00:61:0a GATEWAY_INNER=10.99.2.1 SEGMENTS=16
member_ns() { echo "ikeha-ls-m$1-$ID"; }
peer_ns() { echo "ikeha-ls-p$1-$ID"; }
peer_dir() { echo "$BASE/peer$1"; }

teardown() {
    stop_all
    for m in "${MEMBERS[@]}"; do ip netns del "$(member_ns "$m")" 2>/dev/null; done
    for p in "${PEERS[@]}"; do ip netns del "$(peer_ns "$p")" 2>/dev/null; done
    ip netns del "$NS_BR" 2>/dev/null
}
trap 'teardown; [ "$FAILURES" -gt 0 ] || [ -n "${KEEP_LOGS:-}" ] || rm -rf "$BASE"' EXIT

# The bridge, the members behind one MAC (no learning on their ports: frames to it flood to
# all), and the peers; charon's configuration for each peer.
setup() {
    ip netns add "$NS_BR"
    ip -n "$NS_BR" link add br0 type bridge
    ip -n "$NS_BR" link set br0 up
    for m in "${MEMBERS[@]}"; do
        local ns
        ns=$(member_ns "$m")
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip link add "lsm$m-$ID" netns "$NS_BR" type veth peer name eth0 netns "$ns"
        ip -n "$NS_BR" link set "lsm$m-$ID" master br0 up
        ip netns exec "$NS_BR" bridge link set dev "lsm$m-$ID" learning off flood on
        ip -n "$ns" link set eth0 address $CLUSTER_MAC
        ip -n "$ns" addr add $CLUSTER_IP/24 dev eth0
        # The synch channel between members: an address of each on the same link.
        ip -n "$ns" addr add "10.97.1.$m/24" dev eth0
        ip -n "$ns" link set eth0 up
    done
    for p in "${PEERS[@]}"; do
        local ns dir
        ns=$(peer_ns "$p") dir=$(peer_dir "$p")
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
        ip link add "lsp$p-$ID" netns "$NS_BR" type veth peer name eth0 netns "$ns"
        ip -n "$NS_BR" link set "lsp$p-$ID" master br0 up
        ip -n "$ns" addr add "10.97.0.$((100 + p))/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" addr add "10.98.$p.1/32" dev lo
        mkdir -p "$dir"
        DIR=$dir write_charon_config "10.97.0.$((100 + p))" $CLUSTER_IP "10.98.$p.1" $GATEWAY_INNER
    done
    DIR=$BASE
    cp "$(peer_dir 1)/psk" "$BASE/psk"
    cp "$(peer_dir 1)/sync.key" "$BASE/sync.key"
}

start_ls_member() { # id
    local m=$1 peers=()
    for other in "${MEMBERS[@]}"; do [ "$other" = "$m" ] || peers+=(--sync-peer "$other=10.97.1.$other:4510"); done
    ip netns exec "$(member_ns "$m")" "$GATEWAY" --member "$m" --cluster-address $CLUSTER_IP --inner-address $GATEWAY_INNER \
        --remote-subnet 10.98.0.0/16 --local-id gateway@interop --remote-id peer@interop --psk-file "$BASE/psk" \
        --sync-listen "10.97.1.$m:4510" "${peers[@]}" --sync-key-file "$BASE/sync.key" --load-sharing-segments $SEGMENTS \
        >> "$BASE/member$m.events" 2>> "$BASE/member$m.log" &
    PIDS+=($!)
    echo $! > "$BASE/member$m.pid"
}

# The segments a member serves now, from its last steering event.
served_by() { grep "event=steering" "$BASE/member$1.events" | tail -1 | sed -n 's/.* segments=\([0-9,]*\).*/\1/p'; }

# Which member serves a peer's IKE SA now: the one whose latest event about it (established
# there, or adopted with its segment) is the latest; "none" if no member says.
member_of() { # initiator-spi (hex, no _i)
    local spi=$1
    for m in "${MEMBERS[@]}"; do
        grep -E "event=(ike_sa_established|ike_sa_takeover) .*ike_sa=\"$spi" "$BASE/member$m.events" 2>/dev/null |
            sed -n "s/.*realtime_ms=\([0-9]*\).*/\1 $m/p" | tail -1
    done | sort -n | tail -1 | awk '{ print $2 } END { if (NR == 0) print "none" }'
}

main() {
    setup
    for m in "${MEMBERS[@]}"; do start_ls_member "$m"; done
    # Every segment served once the members' startup silence and first leases are over.
    local settled=""
    for _ in $(seq 100); do
        local all=""
        for m in "${MEMBERS[@]}"; do all="$all,$(served_by "$m")"; done
        if [ "$(echo "$all" | tr ',' '\n' | grep -c .)" -eq $SEGMENTS ]; then settled=yes; break; fi
        sleep 0.1
    done
    if [ -n "$settled" ]; then
        pass "the members serve every segment once: $(for m in "${MEMBERS[@]}"; do printf 'member %s {%s} ' "$m" "$(served_by "$m")"; done)"
    else
        fail "the segments never settled"; for m in "${MEMBERS[@]}"; do tail -5 "$BASE/member$m.log"; done; return
    fi

    for p in "${PEERS[@]}"; do
        DIR=$(peer_dir "$p")
        start_charon "$(peer_ns "$p")" || { fail "charon $p did not start"; return; }
        if ! initiate; then fail "peer $p: no IKE SA"; return; fi
        echo "$SPIS_BEFORE" > "$DIR/spis.before"
        ip netns exec "$(peer_ns "$p")" ping -D -i 0.02 -W 1 $GATEWAY_INNER > "$DIR/ping.log" 2>&1 &
        PIDS+=($!)
        echo $! > "$DIR/ping.pid"
    done
    DIR=$BASE
    sleep 3
    declare -A before after
    for p in "${PEERS[@]}"; do
        local spi
        spi=$(cut -d_ -f1 < "$(peer_dir "$p")/spis.before")
        before[$p]=$(member_of "$spi")
    done
    say "peers per member before: $(for p in "${PEERS[@]}"; do printf 'peer %s -> member %s; ' "$p" "${before[$p]}"; done)"
    local victim=2
    local victims_peers=0
    for p in "${PEERS[@]}"; do [ "${before[$p]}" = "$victim" ] && victims_peers=$((victims_peers + 1)); done
    [ "$victims_peers" -gt 0 ] || say "note: member $victim serves none of the peers"
    local log_at=()
    for p in "${PEERS[@]}"; do log_at[$p]=$(wc -l < "$(peer_dir "$p")/charon.log"); done
    local kill_ms
    kill_ms=$(date +%s%3N)
    kill -KILL "$(cat "$BASE/member$victim.pid")"
    say "member $victim killed"
    sleep 4
    for p in "${PEERS[@]}"; do
        local dir spi first
        dir=$(peer_dir "$p")
        spi=$(cut -d_ -f1 < "$dir/spis.before")
        after[$p]=$(member_of "$spi")
        first=$(awk -v kill="$kill_ms" '/bytes from/ { gsub(/[\[\]]/, "", $1); if ($1 * 1000 > kill) { printf "%d", $1 * 1000 - kill; exit } }' "$dir/ping.log")
        local replays
        replays=$(tail -n +"$(( ${log_at[$p]} + 1 ))" "$dir/charon.log" | grep -c "ESP sequence number verification failed")
        local spis_now
        spis_now=$(DIR=$dir ike_spis)
        if [ "$spis_now" = "$(cat "$dir/spis.before")" ] && [ -n "$first" ] && [ "$replays" -eq 0 ]; then
            pass "peer $p: same IKE SA, answered ${first} ms after the kill, no replay rejection (member ${before[$p]} -> ${after[$p]})"
        else
            fail "peer $p: IKE SA '$spis_now' (was '$(cat "$dir/spis.before")'), first reply '${first:-none}', $replays replay rejections"
        fi
    done
    say "segments now: $(for m in 1 3; do printf 'member %s {%s} ' "$m" "$(served_by "$m")"; done)"
    # When the survivors started serving the victim's segments, and their kernels steered them.
    local moved
    moved=$(for m in 1 3; do grep "event=segment_started .*previous_owner=$victim handed_over=false" "$BASE/member$m.events"; done |
        sed -n 's/.*realtime_ms=\([0-9]*\) segment=\([0-9]*\).*/\1 \2/p' | sort -n)
    if [ -n "$moved" ]; then
        local last_ms
        last_ms=$(echo "$moved" | tail -1 | cut -d' ' -f1)
        pass "member $victim's $(echo "$moved" | wc -l) segments taken over $((last_ms - kill_ms)) ms after the kill at the latest"
        say "FIGURE segments_moved=$(echo "$moved" | wc -l) takeover_ms=$((last_ms - kill_ms)) nft_us=$(for m in 1 3; do grep 'event=steering' "$BASE/member$m.events" | tail -1 | sed -n 's/.*nft_us=\([0-9]*\).*/\1/p'; done | tr '\n' ',')"
    else
        fail "no segment of member $victim was taken over"
    fi

    # The restart: member 2 rejoins and gets segments back by handover.
    local restart_log=()
    for p in "${PEERS[@]}"; do restart_log[$p]=$(wc -l < "$(peer_dir "$p")/charon.log"); done
    start_ls_member $victim
    if wait_for_count "$BASE/member$victim.events" "event=segment_started" 1 15; then
        sleep 2
        pass "member $victim rejoined and serves {$(served_by $victim)}: $(grep -c 'handed_over=true' "$BASE/member$victim.events") segments handed over"
    else
        fail "member $victim got no segment back after its restart"; tail -5 "$BASE/member$victim.log"
    fi
    sleep 2
    for p in "${PEERS[@]}"; do
        local dir replays sent answered
        dir=$(peer_dir "$p")
        replays=$(tail -n +"$(( ${restart_log[$p]} + 1 ))" "$dir/charon.log" | grep -c "ESP sequence number verification failed")
        kill -INT "$(cat "$dir/ping.pid")" 2>/dev/null
        sleep 0.1
        sent=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' "$dir/ping.log")
        answered=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' "$dir/ping.log")
        if [ "$replays" -eq 0 ]; then pass "peer $p: no replay rejection after the restart"; else fail "peer $p: $replays replay rejections after the restart"; fi
        say "FIGURE peer=$p member_before=${before[$p]} member_after_kill=${after[$p]} member_now=$(member_of "$(cut -d_ -f1 < "$dir/spis.before")") pings_sent=${sent:-0} pings_lost=$(( ${sent:-0} - ${answered:-0} ))"
    done
}

main
say "$FAILURES check(s) failed; logs in $BASE"
[ "$FAILURES" -eq 0 ]
