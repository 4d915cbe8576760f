#!/usr/bin/env bash
# Times `ikeha-demo bench replay` (release) against the plain C RFC 6479 ring in
# Benchmarks/reference-c on the same patterns, RUNS interleaved pairs of runs, and prints one
# table: each side's best time, and the median over the pairs of Swift's time over C's.
# The goal (issue 2): Swift within 1.25x of C for W=1024 with ESN and W=64 without, judged on
# that median: this host drifts between a fast and a slow phase for seconds at a time, so the
# two best times often come from different phases, while the two runs of a pair share one.
# Exits non-zero if a ratio misses the goal or the two disagree on the accepted count.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-10000000}
RUNS=${RUNS:-7}
GOAL=${GOAL:-1.25}
CC=${CC:-cc}

swift build -c release --product ikeha-demo >/dev/null
"$CC" -O2 -o Benchmarks/reference-c/replay_ring Benchmarks/reference-c/replay_ring.c
swift_bin=.build/release/ikeha-demo
c_bin=Benchmarks/reference-c/replay_ring

# One run: prints "accepted ns_per_op".
run_once() {
    local out acc
    out=$("$@")
    acc=${out#accepted=}
    echo "${acc%% *} ${out##*ns_per_op=}"
}

min() { awk "BEGIN{print ($1 < $2) ? $1 : $2}"; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

status=0
printf '%-22s %-8s %12s %10s %10s %7s %6s\n' configuration pattern accepted swift_ns c_ns ratio goal
# swift_ns, c_ns: best of RUNS; ratio: median of the RUNS paired ratios.
for config in "1024 --esn" "64"; do
    set -- $config
    window=$1; esn=${2:-}
    for pattern in inorder jitter replay; do
        args=(--window "$window" $esn --pattern "$pattern" --count "$COUNT")
        s_ns=1e9; c_ns=1e9; ratios=""
        for _ in $(seq "$RUNS"); do
            read -r s_acc s_run < <(run_once "$swift_bin" bench replay "${args[@]}"); s_ns=$(min "$s_run" "$s_ns")
            read -r c_acc c_run < <(run_once "$c_bin" "${args[@]}"); c_ns=$(min "$c_run" "$c_ns")
            ratios+="$(awk "BEGIN{print $s_run / $c_run}") "
        done
        ratio=$(awk "BEGIN{printf \"%.2f\", $(median <<< "$ratios")}")
        verdict=ok
        awk "BEGIN{exit !($ratio <= $GOAL)}" || { verdict=MISS; status=1; }
        [ "$s_acc" = "$c_acc" ] || { verdict=DIFFER; status=1; }
        printf '%-22s %-8s %12s %10s %10s %7s %6s\n' "W=$window${esn:+ ESN}" "$pattern" "$s_acc" "$s_ns" "$c_ns" "$ratio" "$verdict"
    done
done
# Instructions per packet in the measured loop only (valgrind's callgrind): unlike time, the
# same on every run, so it shows the code's cost apart from this machine's noise.
if command -v valgrind >/dev/null; then
    count_loop() { # function-pattern command... -> instructions in that function
        local pattern=$1; shift
        valgrind --tool=callgrind --toggle-collect="$pattern" --callgrind-out-file=/dev/null "$@" 2>&1 |
            awk '/Collected/ {print $4}'
    }
    # valgrind 3.19 cannot read this toolchain's debug information ("possibly corrupted
    # debuginfo"): count on a copy without it (the symbols stay).
    counted_bin=$(mktemp)
    trap 'rm -f "$counted_bin"' EXIT
    cp "$swift_bin" "$counted_bin"
    strip --strip-debug "$counted_bin"
    chmod +x "$counted_bin"
    echo
    printf '%-22s %-8s %18s %14s %7s\n' configuration pattern swift_instr/pkt c_instr/pkt ratio
    for config in "1024 --esn" "64"; do
        set -- $config
        window=$1; esn=${2:-}
        for pattern in inorder jitter replay; do
            args=(--window "$window" $esn --pattern "$pattern" --count 1000000)
            s_ir=$(count_loop '*checkAndCommit*' "$counted_bin" bench replay "${args[@]}")
            c_ir=$(count_loop 'run*' "$c_bin" "${args[@]}")
            printf '%-22s %-8s %18.1f %14.1f %7.2f\n' "W=$window${esn:+ ESN}" "$pattern" \
                "$(awk "BEGIN{print $s_ir / 1000000}")" "$(awk "BEGIN{print $c_ir / 1000000}")" \
                "$(awk "BEGIN{print $s_ir / $c_ir}")"
        done
    done
fi
exit $status
