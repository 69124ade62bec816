#!/usr/bin/env bash
# Builds the fuzz targets once and runs each (all of `cargo fuzz list`, or those named) for
# FUZZ_SECS seconds (default 30) from a copy of its seed corpus in a temporary directory, so
# fuzz/corpus is never grown; FUZZ_JOBS (default 1) targets at a time. Prints one line per
# target (executions, new inputs found) and fails if any target found a crash, a mismatch
# with a reference or a hang; the input is kept in fuzz/artifacts/<target>/ and the log's
# tail is printed.
#
#   fuzz/run.sh                      every target, 30 s each
#   FUZZ_SECS=300 fuzz/run.sh frames one target, 5 minutes
#
# Stable Rust: `--sanitizer none` keeps cargo-fuzz away from `-Zsanitizer=address` (nightly
# only); the targets are safe Rust, and `-Cdebug-assertions` (overflow checks included) stays.
set -euo pipefail
cd "$(dirname "$0")"

CARGO=${CARGO:-cargo}
secs=${FUZZ_SECS:-30}
jobs=${FUZZ_JOBS:-1}
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <($CARGO fuzz list)
fi

$CARGO fuzz build --sanitizer none
work=$(mktemp -d /tmp/cld-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT

# One target: its corpus copied into the work directory, which libFuzzer may grow.
run_one() {
    local t=$1 dir=$work/$1 status=0
    mkdir -p "$dir" artifacts/"$t"
    cp corpus/"$t"/* "$dir"/
    local seeds
    seeds=$(find "$dir" -type f | wc -l)
    $CARGO fuzz run --sanitizer none "$t" "$dir" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$work/$t.log" 2>&1 || status=$?
    local runs
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log" | tail -n 1)
    local found=$(($(find "$dir" -type f | wc -l) - seeds))
    if [ "$status" = 0 ]; then
        echo "$t: ok, ${runs:-?} executions in ${secs} s, $found new inputs"
    else
        echo "$t: FAILED (exit $status) after ${runs:-?} executions; the input is in fuzz/artifacts/$t/"
        tail -n 40 "$work/$t.log"
        return 1
    fi
}

failed=0
running=0
for t in "${targets[@]}"; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n || failed=1
        running=$((running - 1))
    fi
    run_one "$t" &
    running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
    wait -n || failed=1
    running=$((running - 1))
done
exit "$failed"
