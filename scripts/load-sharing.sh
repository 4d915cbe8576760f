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
# Scenarios: "failover" (above; must pass); "initiator-spi" (one peer address with eight IKE SAs,
# one charon with eight connections, as many peers behind one NAT address look: segments keyed by
# the initiator's SPI spread them over the members, which keying by the peer's address cannot;
# a member serving some of them is killed, and every one must keep its IKE SA without replay
# rejections); and the negative controls "no-steering-on-takeover" (the survivors' rules do not
# follow the moved segments: the lost member's peers must stay dark) and "no-counter-advance"
# (the adopted Child SAs resume at their checkpoints: charon must reject replays). Usage:
# load-sharing.sh [scenario ...]; default: all four.
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
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(failover initiator-spi no-steering-on-takeover no-counter-advance)
ROOT=$(mktemp -d /tmp/ikeha-load-sharing.XXXXXX)
BASE=$ROOT
DIR=$BASE
ID=$$
NS_BR=ikeha-ls-br-$ID
MEMBERS=(1 2 3)
PEERS=(1 2 3 4 5 6)
MEMBER_ARGS=()
CONNECTIONS=1
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
trap 'teardown; [ "$FAILURES" -gt 0 ] || [ -n "${KEEP_LOGS:-}" ] || rm -rf "$ROOT"' EXIT

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
        # More IKE SAs from this one address: gw2 ... each with its own inner address.
        for c in $(seq 2 $CONNECTIONS); do
            ip -n "$ns" addr add "10.98.$p.$c/32" dev lo
            sed -n '/^connections {/,/^}/p' "$dir/swanctl/swanctl.conf" | sed '1d;$d' |
                sed -e "s/^    gw {/    gw$c {\n        keyingtries = $c/" -e "s|local_ts = 10.98.$p.1/32|local_ts = 10.98.$p.$c/32|" > "$dir/gw$c.conf"
        done
        if [ "$CONNECTIONS" -gt 1 ]; then
            # unique = never: no INITIAL_CONTACT, which would tell the gateway the others are gone;
            # keyingtries differs, or charon would put every connection's Child SA in one IKE SA.
            { echo "connections {"; sed -n '/^connections {/,/^}/p' "$dir/swanctl/swanctl.conf" | sed '1d;$d'; cat "$dir"/gw[0-9]*.conf; echo "}"; sed -n '/^secrets/,$p' "$dir/swanctl/swanctl.conf"; } |
                sed 's/^        version = 2$/        version = 2\n        unique = never/' > "$dir/swanctl.multi"
            mv "$dir/swanctl.multi" "$dir/swanctl/swanctl.conf"
        fi
    done
    DIR=$BASE
    cp "$(peer_dir "${PEERS[0]}")/psk" "$BASE/psk"
    cp "$(peer_dir "${PEERS[0]}")/sync.key" "$BASE/sync.key"
}

start_ls_member() { # id
    local m=$1 peers=()
    for other in "${MEMBERS[@]}"; do [ "$other" = "$m" ] || peers+=(--sync-peer "$other=10.97.1.$other:4510"); done
    ip netns exec "$(member_ns "$m")" "$GATEWAY" --member "$m" --cluster-address $CLUSTER_IP --inner-address $GATEWAY_INNER \
        --remote-subnet 10.98.0.0/16 --local-id gateway@interop --remote-id peer@interop --psk-file "$BASE/psk" \
        --sync-listen "10.97.1.$m:4510" "${peers[@]}" --sync-key-file "$BASE/sync.key" --load-sharing-segments $SEGMENTS "${MEMBER_ARGS[@]}" \
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

conn_name() { [ "$1" = 1 ] && echo gw || echo "gw$1"; }
# The SPIs of peer P's IKE SA of connection C ("initiator_i responder_r").
spis_of() { # peer connection
    DIR=$(peer_dir "$1") sw --list-sas --ike "$(conn_name "$2")" | sed -n 's/.*IKEv2, \([0-9a-f]*_i\)[^0-9a-f]*\([0-9a-f]*_r\).*/\1 \2/p'
}

# One scenario on a fresh topology: the members settle, the peers connect and ping, the member
# serving the most IKE SAs is killed, the checks of the scenario run, and (failover) it returns.
scenario() { # name
    local name=$1
    BASE=$ROOT/$name
    mkdir -p "$BASE"
    DIR=$BASE
    say "=== scenario $name ==="
    MEMBER_ARGS=() PEERS=(1 2 3 4 5 6) CONNECTIONS=1
    case $name in
    initiator-spi) MEMBER_ARGS=(--segment-key initiator-spi --max-ike-sas-per-peer-address 16) PEERS=(7) CONNECTIONS=8 ;;
    no-steering-on-takeover) MEMBER_ARGS=(--no-steering-on-takeover) ;;
    # Checkpoints 2 s apart, and the kill a second after one: the replicas' counters lag what
    # was sent by some fifty packets, which the adopted Child SAs then send again.
    no-counter-advance)
        MEMBER_ARGS=(--no-counter-advance --checkpoint-packets 100000 --checkpoint-ms 2000 --takeover-minimum-advance 64 --announce-checkpoints)
        ;;
    esac
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
        pass "$name: the members serve every segment once: $(for m in "${MEMBERS[@]}"; do printf 'member %s {%s} ' "$m" "$(served_by "$m")"; done)"
    else
        fail "$name: the segments never settled"; for m in "${MEMBERS[@]}"; do tail -5 "$BASE/member$m.log"; done; teardown; return
    fi

    local sas=()  # "peer:connection" of every IKE SA
    for p in "${PEERS[@]}"; do
        DIR=$(peer_dir "$p")
        start_charon "$(peer_ns "$p")" || { fail "$name: charon $p did not start"; teardown; return; }
        for c in $(seq 1 $CONNECTIONS); do
            if ! sw --initiate --ike "$(conn_name "$c")" --child net --timeout 10 > "$DIR/initiate$c.log" 2>&1; then
                fail "$name: peer $p connection $c: no IKE SA"; tail -5 "$DIR/charon.log"; teardown; return
            fi
            spis_of "$p" "$c" > "$DIR/spis$c.before"
            ip netns exec "$(peer_ns "$p")" ping -D -i 0.02 -W 1 -I "10.98.$p.$c" $GATEWAY_INNER > "$DIR/ping$c.log" 2>&1 &
            PIDS+=($!)
            echo $! > "$DIR/ping$c.pid"
            sas+=("$p:$c")
        done
    done
    DIR=$BASE
    sleep 3
    declare -A before after
    local sa p c
    for sa in "${sas[@]}"; do
        p=${sa%:*} c=${sa#*:}
        before[$sa]=$(member_of "$(cut -d_ -f1 < "$(peer_dir "$p")/spis$c.before")")
    done
    say "IKE SAs per member: $(for sa in "${sas[@]}"; do printf '%s -> %s; ' "$sa" "${before[$sa]}"; done)"
    local victim=1 most=0
    for m in "${MEMBERS[@]}"; do
        local n=0
        for sa in "${sas[@]}"; do [ "${before[$sa]}" = "$m" ] && n=$((n + 1)); done
        if [ $n -gt $most ]; then victim=$m most=$n; fi
    done
    if [ "$name" = initiator-spi ]; then
        local spread
        spread=$(for sa in "${sas[@]}"; do echo "${before[$sa]}"; done | sort -u | grep -vc none)
        if [ "$spread" -ge 2 ]; then pass "$name: the $CONNECTIONS IKE SAs of one peer address are spread over $spread members"
        else fail "$name: the $CONNECTIONS IKE SAs of one peer address all went to one member"; fi
    fi
    local log_at=()
    for p in "${PEERS[@]}"; do log_at[$p]=$(wc -l < "$(peer_dir "$p")/charon.log"); done
    if [ "$name" = no-counter-advance ]; then
        local checkpoints
        checkpoints=$(grep -c "event=checkpoint" "$BASE/member$victim.events")
        wait_for_count "$BASE/member$victim.events" "event=checkpoint" $((checkpoints + 1)) 5
        sleep 1
    fi
    local kill_ms
    kill_ms=$(date +%s%3N)
    kill -KILL "$(cat "$BASE/member$victim.pid")"
    say "member $victim, serving $most IKE SA(s), killed"
    # Without the advance, the peer's packets are dropped by the new owner's conservative
    # window for a while before its (repeated) sequence numbers reach charon.
    if [ "$name" = no-counter-advance ]; then sleep 7; else sleep 4; fi
    local dark=0 answered_victims=0 replays_total=0
    for sa in "${sas[@]}"; do
        p=${sa%:*} c=${sa#*:}
        local dir first replays spis_now
        dir=$(peer_dir "$p")
        after[$sa]=$(member_of "$(cut -d_ -f1 < "$dir/spis$c.before")")
        first=$(awk -v kill="$kill_ms" '/bytes from/ { gsub(/[\[\]]/, "", $1); if ($1 * 1000 > kill) { printf "%d", $1 * 1000 - kill; exit } }' "$dir/ping$c.log")
        replays=$(tail -n +"$(( ${log_at[$p]} + 1 ))" "$dir/charon.log" | grep -c "ESP sequence number verification failed")
        spis_now=$(spis_of "$p" "$c")
        if [ "${before[$sa]}" = "$victim" ]; then
            # Dark: no reply later than 200 ms after the kill (one the victim sent just before
            # it died may still arrive a few milliseconds after it).
            local late
            late=$(awk -v after="$((kill_ms + 200))" '/bytes from/ { gsub(/[\[\]]/, "", $1); if ($1 * 1000 > after) { print "yes"; exit } }' "$dir/ping$c.log")
            if [ -z "$late" ]; then dark=$((dark + 1)); else answered_victims=$((answered_victims + 1)); fi
            replays_total=$((replays_total + replays))
        fi
        case $name in
        failover | initiator-spi)
            if [ "$spis_now" = "$(cat "$dir/spis$c.before")" ] && [ -n "$first" ] && [ "$replays" -eq 0 ]; then
                pass "$name: IKE SA $sa: the same SPIs, answered ${first} ms after the kill, no replay rejection (member ${before[$sa]} -> ${after[$sa]})"
            else
                fail "$name: IKE SA $sa: SPIs '$spis_now' (were '$(cat "$dir/spis$c.before")'), first reply '${first:-none}', $replays replay rejections"
            fi
            ;;
        *)
            if [ "${before[$sa]}" != "$victim" ] && [ -z "$first" ]; then fail "$name: IKE SA $sa of a surviving member went dark"; fi
            ;;
        esac
    done
    case $name in
    no-steering-on-takeover)
        if [ "$most" -gt 0 ] && [ "$dark" -eq "$most" ]; then
            pass "negative control: without the steering update all $most IKE SA(s) of member $victim stayed dark"
        else fail "negative control did not fail: $answered_victims of member $victim's $most IKE SA(s) answered without the steering update"; fi
        ;;
    no-counter-advance)
        if [ "$replays_total" -gt 0 ]; then
            pass "negative control: charon rejected $replays_total packets as replays without the counter advance"
        else fail "negative control did not fail: no replay rejection without the counter advance"; fi
        ;;
    esac
    # When the survivors started serving the victim's segments.
    local moved
    moved=$(for m in "${MEMBERS[@]}"; do [ "$m" = "$victim" ] || grep "event=segment_started .*previous_owner=$victim handed_over=false" "$BASE/member$m.events"; done |
        sed -n 's/.*realtime_ms=\([0-9]*\) segment=\([0-9]*\).*/\1 \2/p' | sort -n)
    if [ -n "$moved" ]; then
        local last_ms
        last_ms=$(echo "$moved" | tail -1 | cut -d' ' -f1)
        if [ $((last_ms - kill_ms)) -lt 1000 ]; then pass "$name: member $victim's $(echo "$moved" | wc -l) segments taken over $((last_ms - kill_ms)) ms after the kill at the latest"
        else fail "$name: member $victim's segments taken over only $((last_ms - kill_ms)) ms after the kill"; fi
        say "FIGURE scenario=$name segments_moved=$(echo "$moved" | wc -l) takeover_ms=$((last_ms - kill_ms)) nft_us=$(for m in "${MEMBERS[@]}"; do [ "$m" = "$victim" ] || grep 'event=steering' "$BASE/member$m.events" | tail -1 | sed -n 's/.*nft_us=\([0-9]*\).*/\1/p'; done | tr '\n' ',')"
    else
        fail "$name: no segment of member $victim was taken over"
    fi

    if [ "$name" = failover ]; then
        # The restart: the victim rejoins and gets segments back by handover.
        local restart_log=()
        for p in "${PEERS[@]}"; do restart_log[$p]=$(wc -l < "$(peer_dir "$p")/charon.log"); done
        local started_before
        started_before=$(grep -c "event=segment_started" "$BASE/member$victim.events")
        start_ls_member "$victim"
        local back_ms=""
        if wait_for_count "$BASE/member$victim.events" "event=segment_started" $((started_before + 1)) 15; then
            back_ms=$(date +%s%3N)
            sleep 2
            pass "$name: member $victim rejoined and serves {$(served_by "$victim")}: $(grep -c 'handed_over=true' "$BASE/member$victim.events") segments handed over"
        else
            fail "$name: member $victim got no segment back after its restart"; tail -5 "$BASE/member$victim.log"
        fi
        sleep 2
        for p in "${PEERS[@]}"; do
            local replays
            replays=$(tail -n +"$(( ${restart_log[$p]} + 1 ))" "$(peer_dir "$p")/charon.log" | grep -c "ESP sequence number verification failed")
            if [ "$replays" -eq 0 ]; then pass "$name: peer $p: no replay rejection after the restart"; else fail "$name: peer $p: $replays replay rejections after the restart"; fi
            # Answered again after the handover (the conservative window's drops are over by
            # then): a peer dark after it has lost its segment's service, replays or not.
            local late=""
            [ -n "$back_ms" ] && late=$(awk -v after="$((back_ms + 2500))" '/bytes from/ { gsub(/[\[\]]/, "", $1); if ($1 * 1000 > after) { print "yes"; exit } }' "$(peer_dir "$p")/ping1.log")
            if [ -n "$late" ]; then pass "$name: peer $p: answered after the handover"; else fail "$name: peer $p: no answer after the handover"; fi
        done
    fi
    for sa in "${sas[@]}"; do
        p=${sa%:*} c=${sa#*:}
        local dir sent answered
        dir=$(peer_dir "$p")
        kill -INT "$(cat "$dir/ping$c.pid")" 2>/dev/null
        sleep 0.05
        sent=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' "$dir/ping$c.log")
        answered=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' "$dir/ping$c.log")
        say "FIGURE scenario=$name ike_sa=$sa member_before=${before[$sa]} member_after_kill=${after[$sa]} member_now=$(member_of "$(cut -d_ -f1 < "$dir/spis$c.before")") pings_sent=${sent:-0} pings_lost=$(( ${sent:-0} - ${answered:-0} ))"
    done
    teardown
}

for name in "${SCENARIOS[@]}"; do scenario "$name"; done
say "$FAILURES check(s) failed; logs in $ROOT"
[ "$FAILURES" -eq 0 ]
