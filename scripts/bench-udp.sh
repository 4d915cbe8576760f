#!/usr/bin/env bash
# The bulk resync and the checkpoint stream over a real transport: two `ikeha-demo member`
# processes on loopback UDP (UDPSyncTransport), the active member holding IKE_SAS IKE SAs
# (default 100,000) with two Child SAs each, the standby starting empty. Prints the standby's
# resync time (from its first resync record to ready) and the in-memory figure of `bench sync`
# for the same state beside it, then the checkpoints a second the standby applies once ready.
# DATAGRAM_SIZE sets both members' largest synch datagram (default 1,400; loopback carries up to
# 65,507 unfragmented, a link with jumbo frames 8,972).
# Each process has a core of its own here, as members do in a cluster. Stops both processes by
# their IDs.
set -euo pipefail
cd "$(dirname "$0")/.."
IKE_SAS=${IKE_SAS:-100000}
DATAGRAM_SIZE=${DATAGRAM_SIZE:-1400}
swift build -c release --product ikeha-demo >/dev/null
demo=.build/release/ikeha-demo
scratch="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$scratch"
}
trap cleanup EXIT
head -c 32 /dev/urandom >"$scratch/key"
chmod 600 "$scratch/key"
# Below Linux's ephemeral range (32768-60999 by default): no socket bound to port 0 takes it.
base=$((20000 + RANDOM % 10000))
active_port=$base
standby_port=$((base + 1))
# The kernel grants a socket's receive buffer up to net.core.rmem_max: UDPSyncTransport asks
# for 4 MiB; with a stock Debian's 208 KiB the standby's socket drops datagrams in bursts
# (counted below as RcvbufErrors) and the channel repairs each loss.
rmem_max=$(cat /proc/sys/net/core/rmem_max 2>/dev/null || echo unknown)
echo "net.core.rmem_max=$rmem_max (the transport asks for 4194304)"
receive_errors() { awk '/^Udp:/ && $2 ~ /^[0-9]+$/ { print $6 }' /proc/net/snmp 2>/dev/null || echo 0; }
for cipher in chacha20-poly1305 aes-256-gcm; do
    errors_before=$(receive_errors)
    "$demo" member --id 1 --active --listen "127.0.0.1:$active_port" --peer "2=127.0.0.1:$standby_port" --key-file "$scratch/key" \
        --ike-sas "$IKE_SAS" --packets-per-second 10 --status-interval-ms 0 --duration-ms 120000 --cipher "$cipher" --datagram-size "$DATAGRAM_SIZE" \
        >"$scratch/active-$cipher" 2>"$scratch/active-$cipher.err" &
    active=$!
    pids+=("$active")
    # The standby only once the active member runs its loop (its first line): building a large
    # state takes it seconds, and a standby that hears nobody for a second takes over as the
    # last resort.
    for _ in $(seq 1 1200); do
        [ -s "$scratch/active-$cipher" ] && break
        kill -0 "$active" 2>/dev/null || break
        sleep 0.1
    done
    "$demo" member --id 2 --listen "127.0.0.1:$standby_port" --peer "1=127.0.0.1:$active_port" --key-file "$scratch/key" \
        --status-interval-ms 500 --duration-ms 120000 --cipher "$cipher" --datagram-size "$DATAGRAM_SIZE" >"$scratch/standby-$cipher" 2>"$scratch/standby-$cipher.err" &
    standby=$!
    pids+=("$standby")
    for _ in $(seq 1 1200); do
        grep -q '^ready' "$scratch/standby-$cipher" && break
        kill -0 "$standby" 2>/dev/null || break
        sleep 0.1
    done
    # Then the checkpoint stream: every Child SA moves 10 packets a second, so each is
    # checkpointed about every 100 ms, 20 a second per IKE SA offered; the standby's status
    # lines (every 500 ms) count what it applied.
    grep -q '^ready' "$scratch/standby-$cipher" && sleep 3.5
    kill "$active" "$standby" 2>/dev/null || true
    wait "$active" "$standby" 2>/dev/null || true
    line=$(grep '^ready' "$scratch/standby-$cipher" || true)
    if [ -z "$line" ]; then
        echo "the standby did not become ready over UDP ($cipher):" >&2
        tail -n 5 "$scratch/standby-$cipher.err" "$scratch/active-$cipher.err" >&2
        exit 1
    fi
    ms=$(sed -n 's/.*resync_ms=\([0-9]*\).*/\1/p' <<<"$line")
    memory=$("$demo" bench sync --checkpoints 1 --ike-sas "$IKE_SAS" --child-sas $((2 * IKE_SAS)) --trials 1 --cipher "$cipher" 2>/dev/null | tail -1 |
        tr ' ' '\n' | sed -n 's/^resync_standby_seconds=//p')
    echo "bulk resync of $IKE_SAS IKE SAs and $((2 * IKE_SAS)) Child SAs, $cipher: over loopback UDP between two processes $ms ms" \
        "(datagrams up to $DATAGRAM_SIZE bytes); in memory (1,400 bytes), the standby's share $(awk -v s="$memory" 'BEGIN { printf "%d", s * 1000 }') ms"
    # The last 3 s of status lines once ready: applied records over time (the first ready
    # line still counts the resync's records).
    stream=$(grep -a 'standby ready' "$scratch/standby-$cipher.err" | sed -n 's/.*t_ms=\([0-9]*\) applied=\([0-9]*\).*/\1 \2/p' | tail -n 7 |
        awk 'NR == 1 { t = $1; a = $2 } END { if (NR > 1 && $1 > t) printf "%d", ($2 - a) * 1000 / ($1 - t); else print "n/a" }')
    echo "checkpoint stream over loopback UDP, $cipher: the standby applied $stream checkpoints a second, of $((20 * IKE_SAS)) offered;" \
        "datagrams the kernel dropped for a full receive buffer (on this machine, during both): $(( $(receive_errors) - errors_before ))"
    echo "udp_resync_ms_${cipher//-/_}=$ms memory_resync_standby_ms_${cipher//-/_}=$(awk -v s="$memory" 'BEGIN { printf "%d", s * 1000 }')" \
        "udp_checkpoints_per_second_${cipher//-/_}=$stream udp_checkpoints_offered_per_second=$((20 * IKE_SAS))"
done
