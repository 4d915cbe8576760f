#!/usr/bin/env bash
# Builds the libFuzzer targets of FuzzTesting/ (AddressSanitizer on; the package's manifest adds
# the ikeha-fuzz target when IPSECHA_FUZZ=1, in a scratch path of its own) and runs each for the given
# number of seconds, starting from its kept corpus. New interesting inputs go to a scratch
# directory (copy the good ones into FuzzTesting/Corpus/TARGET by hand); a crash leaves its input
# in FuzzTesting/Artifacts/ and fails the run: add it to the corpus and a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
targets=(datagram sealed-payload sync-records ike-message replay-line ike-payloads gateway-ike gateway-esp xfrm-netlink)
flags=(-c debug --scratch-path .build/fuzz --sanitize=fuzzer --sanitize=address
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -use-ld=lld)
export IPSECHA_FUZZ=1
swift build "${flags[@]}" --product ikeha-fuzz
binary="$(swift build "${flags[@]}" --show-bin-path)/ikeha-fuzz"
cd FuzzTesting
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
mkdir -p Artifacts
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target" "Corpus/$target"
    echo "fuzzing $target for ${seconds}s"
    # The kept corpus is read only; every input it holds must pass.
    if ! IKEHA_FUZZ_TARGET="$target" "$binary" "$scratch/$target" "Corpus/$target" \
        -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="Artifacts/$target-" >"$scratch/$target.log" 2>&1; then
        tail -40 "$scratch/$target.log"
        echo "fuzz target $target failed; the input is in FuzzTesting/Artifacts/" >&2
        exit 1
    fi
    grep -E "^stat::number_of_executed_units|^stat::new_units_added" "$scratch/$target.log" | tr '\n' ' '
    echo
done
