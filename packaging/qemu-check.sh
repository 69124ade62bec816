#!/usr/bin/env bash
# Runs each Raspberry Pi binary that `make armv7|armv6|aarch64` built under qemu user-mode
# emulation on the CPU it is meant for: checks it is static, prints its version and, once the
# agent has the subcommand, runs `check`. Also checks that the ARMv7 binary is refused by an
# ARMv6 CPU (Pi Zero/1), which proves the emulated CPU is really enforced.
# Needs qemu-user-static (apt-get install -y qemu-user-static). Fails if no binary was built.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${TARGET_DIR:-${CARGO_TARGET_DIR:-target}}

checked=0
failed=0

# run_one TRIPLE QEMU CPU
run_one() {
    local triple=$1 qemu=$2 cpu=$3
    local bin=$target_dir/$triple/release/container-logd
    [ -x "$bin" ] || return 0
    checked=$((checked + 1))
    if ! command -v "$qemu" >/dev/null; then
        echo "FAIL $triple: $qemu not found (apt-get install -y qemu-user-static)"
        failed=$((failed + 1))
        return 0
    fi
    if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
        echo "FAIL $triple: $bin is dynamically linked"
        failed=$((failed + 1))
        return 0
    fi
    local out
    if ! out=$(timeout 30 "$qemu" -cpu "$cpu" "$bin" --version 2>&1); then
        echo "FAIL $triple ($cpu): --version: $out"
        failed=$((failed + 1))
        return 0
    fi
    echo "ok   $triple ($cpu, $(stat -c %s "$bin") bytes): $out"
    if timeout 30 "$qemu" -cpu "$cpu" "$bin" --help 2>&1 | grep -qw check; then
        # Nothing is reachable in here: `check` must run and report, whatever its verdict.
        if out=$(MQTT_BROKER=off timeout 30 "$qemu" -cpu "$cpu" "$bin" check 2>&1); then
            echo "ok   $triple: check passed"
        else
            local rc=$?
            if [ "$rc" -ge 124 ]; then
                echo "FAIL $triple: check hung or crashed (exit $rc): $out"
                failed=$((failed + 1))
            else
                echo "ok   $triple: check ran and reported (exit $rc):"
            fi
            printf '%s\n' "$out" | sed 's/^/     /'
        fi
    fi
}

run_one armv7-unknown-linux-gnueabihf qemu-arm-static cortex-a7
run_one arm-unknown-linux-gnueabi qemu-arm-static arm1176
run_one aarch64-unknown-linux-gnu qemu-aarch64-static cortex-a53

armv7=$target_dir/armv7-unknown-linux-gnueabihf/release/container-logd
if [ -x "$armv7" ] && command -v qemu-arm-static >/dev/null; then
    # Run from an inner shell that reports the exit status, so the "Illegal instruction"
    # notice of the expected crash does not clutter the output.
    rc=$(bash -c 'timeout 30 qemu-arm-static -cpu arm1176 "$1" --version >/dev/null 2>&1; echo $?' \
        _ "$armv7" 2>/dev/null)
    if [ "$rc" = 0 ]; then
        echo "FAIL the ARMv7 binary ran on an ARMv6 CPU: the emulated CPU is not enforced"
        failed=$((failed + 1))
    else
        echo "ok   the ARMv7 binary is refused by an ARMv6 CPU, as it should be"
    fi
fi

if [ "$checked" -eq 0 ]; then
    echo "no Pi binary under $target_dir/*/release: run make armv7, armv6 or aarch64 first" >&2
    exit 1
fi
[ "$failed" -eq 0 ]
