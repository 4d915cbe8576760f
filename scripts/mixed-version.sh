#!/usr/bin/env bash
# A rolling upgrade's mixed cluster, with the previous release built from git history: a member
# process (`ikeha-demo member`, 100 IKE SAs, 200 Child SAs, 1,000 packets a second each) of
# the previous release and one of this build, over UDP on loopback, through a bulk resync and
# a takeover in each direction:
#   1. previous release active, this build the standby: resynced, the active killed, takeover;
#   2. this build active, the previous release the standby: the same the other way.
# Checked each time: the standby became a complete copy (100 IKE SAs, 200 Child SAs), took
# over every SA, resumed every Child SA beyond what it held, and this build says it speaks
# synch protocol 2 with the previous release (SyncProtocolVersion).
#
# The previous release is the commit in scripts/previous-release; its build is kept in
# .build-previous/ (built once per commit, a few minutes). Exit 77 when the commit is not in
# this clone (a shallow clone). DEMO: this build's ikeha-demo (default .build/debug).
set -uo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
DEMO=${DEMO:-$HERE/.build/debug/ikeha-demo}
PREVIOUS=$(tr -d '[:space:]' < "$HERE/scripts/previous-release")
OUT=$HERE/.build-previous
FAILURES=0
say() { printf '[%s] %s\n' "$(date +%H:%M:%S.%3N)" "$*"; }
fail() { say "FAIL: $*"; FAILURES=$((FAILURES + 1)); }
pass() { say "PASS: $*"; }

[ -x "$DEMO" ] || { echo "mixed-version: $DEMO not built (swift build --product ikeha-demo)"; exit 1; }
if ! git -C "$HERE" cat-file -e "$PREVIOUS^{commit}" 2>/dev/null; then
    echo "mixed-version: skipped: the previous release $PREVIOUS is not in this clone (shallow?)"; exit 77
fi

# The previous release's ikeha-demo, from its own sources and its own build folder.
OLD=$OUT/$PREVIOUS/build/debug/ikeha-demo
if [ ! -x "$OLD" ]; then
    say "building the previous release ($PREVIOUS) in $OUT/$PREVIOUS"
    rm -rf "$OUT/$PREVIOUS"
    mkdir -p "$OUT/$PREVIOUS/src"
    git -C "$HERE" archive "$PREVIOUS" | tar -x -C "$OUT/$PREVIOUS/src"
    if ! swift build --package-path "$OUT/$PREVIOUS/src" --scratch-path "$OUT/$PREVIOUS/build" --product ikeha-demo \
        > "$OUT/$PREVIOUS/build.log" 2>&1; then
        tail -20 "$OUT/$PREVIOUS/build.log"
        echo "mixed-version: FAIL: the previous release did not build"; exit 1
    fi
fi

WORK=$(mktemp -d /tmp/ikeha-mixed.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    [ "$FAILURES" -gt 0 ] || [ -n "${KEEP_LOGS:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
(umask 077 && head -c 32 /dev/urandom > "$WORK/key")

wait_for() { # file pattern seconds
    for _ in $(seq $(( $3 * 20 ))); do grep -q -- "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    return 1
}

field() { sed -n "s/.*\"$2\": \([0-9]*\).*/\1/p" "$1" | head -1; } # file json-key

# A takeover from ACTIVE's binary to STANDBY's binary; NEW names the one of this build.
takeover() { # label active-binary standby-binary new(active|standby) base-port
    local label=$1 active=$2 standby=$3 new=$4 base=$5 dir=$WORK/$1
    mkdir -p "$dir"
    say "=== $label ==="
    "$standby" member --id 2 --listen 127.0.0.1:$((base + 1)) --peer 1=127.0.0.1:$base --key-file "$WORK/key" \
        --duration-ms 60000 --status-interval-ms 200 > "$dir/standby.out" 2> "$dir/standby.err" &
    local standby_pid=$!
    PIDS+=($standby_pid)
    "$active" member --id 1 --listen 127.0.0.1:$base --peer 2=127.0.0.1:$((base + 1)) --key-file "$WORK/key" --active \
        --ike-sas 100 --duration-ms 60000 --status-interval-ms 200 > "$dir/active.out" 2> "$dir/active.err" &
    local active_pid=$!
    PIDS+=($active_pid)
    if wait_for "$dir/standby.out" "^ready ike_sas=100 child_sas=200" 30; then
        pass "$label: the standby is a complete copy: $(grep '^ready' "$dir/standby.out" | head -1)"
    else
        fail "$label: the standby never became ready: $(tail -2 "$dir/standby.err" | tr '\n' ' ')"; return
    fi
    sleep 1
    local status=$dir/$new.err
    if grep -q "protocol=2 " "$status"; then pass "$label: this build speaks synch protocol 2 with the previous release"
    else fail "$label: this build's status does not say protocol=2: $(tail -1 "$status")"; fi
    { kill -KILL "$active_pid"; wait "$active_pid"; } 2>/dev/null
    if ! wait_for "$dir/standby.out" "^{" 10; then fail "$label: the standby did not take over: $(tail -2 "$dir/standby.err" | tr '\n' ' ')"; return; fi
    local report=$dir/standby.out plan resumed held resume
    plan=$(field "$report" plan_ike_sas) resumed=$(field "$report" resumed)
    held=$(field "$report" replica_last_sent) resume=$(field "$report" resume_after)
    if [ "$plan" = 100 ] && [ "$resumed" = 200 ] && [ "$resume" -gt "$held" ]; then
        pass "$label: the standby took over all 100 IKE SAs and resumed all 200 Child SAs (first counter: held $held, resumes after $resume)"
    else fail "$label: takeover report: $(grep '^{' "$report")"; fi
    { kill -KILL "$standby_pid"; wait "$standby_pid"; } 2>/dev/null
}

# Below Linux's ephemeral range (32768-60999 by default): no socket bound to port 0 takes it.
BASE=$((24000 + $$ % 1000 * 4))
takeover "previous release active, this build takes over" "$OLD" "$DEMO" standby "$BASE"
takeover "this build active, the previous release takes over" "$DEMO" "$OLD" active $((BASE + 2))

if [ "$FAILURES" -gt 0 ]; then say "$FAILURES check(s) failed; logs in $WORK"; exit 1; fi
say "all checks passed (previous release $PREVIOUS)"
