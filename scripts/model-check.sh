#!/usr/bin/env bash
# The Promela models under Models/ checked with Spin: each model for 2 and 3 members, where
# its property must hold (no error in an exhaustive search within its bounds), and its
# deliberately broken variants, where Spin must find a counterexample (so the check can fail).
# Prints one line per run and a table; exits 1 when a model fails or a variant is not refuted.
#   Models/cluster-role.pml     at most one active member per epoch; two active members that
#                               processed each other's hellos never both stay active
#   Models/segment-leases.pml   at most one member serves a segment at any time (also for
#                               four members, by a bitstate search)
# Usage: model-check.sh. MODEL_DEPTH=4 also checks the leases with four faults (about 8 GB of
# memory and a minute and a half). Needs spin and a C compiler (`make model-check` installs
# them as root); exits 77 saying what is missing otherwise. Works in a temporary directory.
set -uo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
CC=${CC:-cc}
missing=()
command -v spin >/dev/null || missing+=(spin)
command -v "$CC" >/dev/null || missing+=(gcc)
if [ ${#missing[@]} -gt 0 ]; then
    echo "SKIP: model checking needs ${missing[*]} (apt-get install -y spin gcc)"
    exit 77
fi
WORK=$(mktemp -d /tmp/ipsecha-models.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
FAILURES=0
ROWS=()

# check MODEL MEMBERS EXPECT(holds|refuted) SEARCH(exhaustive|bitstate) [-DNAME...]
# (PAN_WIDTH: a bitstate search's table, 2^PAN_WIDTH bits; 26 unless set)
check() {
    local model=$1 members=$2 expect=$3 search=$4
    shift 4
    local dir="$WORK/$(basename "$model" .pml)-$members-$expect-$RANDOM"
    mkdir -p "$dir"
    cp "$HERE/Models/$model" "$dir/"
    local flags=(-DSAFETY -DMEMLIM=6000)
    if [ "$search" = bitstate ]; then flags+=(-DBITSTATE); else flags+=(-DCOLLAPSE); fi
    local started=$SECONDS
    if ! (cd "$dir" && spin -a -DN="$members" "$@" "$model" >spin.log 2>&1 && "$CC" -O2 -w "${flags[@]}" -o pan pan.c >cc.log 2>&1); then
        echo "FAIL: $model with $members members $*: spin or the compiler failed"
        cat "$dir"/spin.log "$dir"/cc.log 2>/dev/null | head -20
        FAILURES=$((FAILURES + 1))
        return
    fi
    (cd "$dir" && ./pan -m400000 -w"${PAN_WIDTH:-26}" >pan.log 2>&1)
    local errors states memory
    errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$dir/pan.log" | head -1)
    states=$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' "$dir/pan.log" | head -1)
    memory=$(sed -n 's/^ *\([0-9.]*\)\ttotal actual memory usage.*/\1/p' "$dir/pan.log" | head -1)
    local seconds=$((SECONDS - started))
    local outcome
    if [ -z "$errors" ]; then
        outcome="no result"
    elif [ "$errors" -eq 0 ]; then
        outcome=holds
    else
        outcome=refuted
    fi
    if grep -q "Search not completed\|max search depth too small" "$dir/pan.log" && [ "$outcome" = holds ]; then
        outcome="incomplete"
    fi
    local variant=${*:-as in the code}
    local line
    line=$(printf '%-20s %-8s %-34s %-12s %-10s %-12s %8s MB %4s s' "$model" "$members" "$variant" "$search" "$outcome" "$states" "$memory" "$seconds")
    ROWS+=("$line")
    if [ "$outcome" = "$expect" ]; then
        echo "PASS: $model, $members members, $variant: $outcome ($states states, ${seconds}s)"
    else
        echo "FAIL: $model, $members members, $variant: $outcome, expected $expect"
        grep -E "assertion violated|error" "$dir/pan.log" | head -5
        if [ "$outcome" = refuted ]; then
            echo "counterexample:"
            (cd "$dir" && spin -t -DN="$members" "$@" "$model" 2>&1 | tail -30)
        fi
        FAILURES=$((FAILURES + 1))
    fi
}

check cluster-role.pml 2 holds exhaustive
check cluster-role.pml 3 holds exhaustive
check cluster-role.pml 3 refuted exhaustive -DBROKEN_EPOCH
check cluster-role.pml 2 refuted exhaustive -DBROKEN_STEPDOWN
check segment-leases.pml 2 holds exhaustive
check segment-leases.pml 3 holds exhaustive
check segment-leases.pml 3 refuted exhaustive -DBROKEN_NO_MAJORITY
PAN_WIDTH=31 check segment-leases.pml 3 refuted bitstate -DBROKEN_VOUCH_UNINFORMED -DMAXEVENTS=4 -DHORIZON=40
# Four members, where the cluster can also split in two: a bitstate search (most, not all, of
# the states), and the confirmation that counted silent peers refuted.
PAN_WIDTH=28 check segment-leases.pml 4 holds bitstate
check segment-leases.pml 4 refuted bitstate -DBROKEN_SILENT_CONFIRM
if [ "${MODEL_DEPTH:-3}" -ge 4 ]; then
    check segment-leases.pml 3 holds exhaustive -DMAXEVENTS=4 -DHORIZON=40
fi

echo
printf '%-20s %-8s %-34s %-12s %-10s %-12s %11s %6s\n' model members variant search result states memory time
for row in "${ROWS[@]}"; do echo "$row"; done
echo
if [ "$FAILURES" -gt 0 ]; then
    echo "$FAILURES model check(s) failed"
    exit 1
fi
echo "every model holds, every broken variant refuted"
