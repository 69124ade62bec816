#!/usr/bin/env bash
# Builds the adapters measurement, starts a private mosquitto on 127.0.0.1, measures the `client`
# and `raw` modes (callgrind twice each, QoS 1 and 0; native runs for threads, peak RSS, CPU and
# syscalls, with perf stat if it works), prints the table and stops the broker. See README.md.
#
#   bench/adapters/run.sh            N=20000 messages per run
#   N=50000 bench/adapters/run.sh    other N; ADAPTERS_PORT=PORT to pick the broker's port
#
# Everything it writes goes to bench/adapters/results/ (ignored by git).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
N=${N:-20000}
N_CPU=${N_CPU:-$((N * 10))}     # the native run that CPU time and msgs/s are read from
STEP_TIMEOUT=${STEP_TIMEOUT:-600} # seconds, any one measured command
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
bin=$CARGO_TARGET_DIR/release/adapters
out=$here/results
mkdir -p "$out"

for tool in cargo mosquitto valgrind callgrind_annotate ss; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool is missing (apt-get install -y mosquitto valgrind iproute2)" >&2; exit 1; }
done

perf=no
if command -v perf >/dev/null && perf stat -x, -e raw_syscalls:sys_enter -o /dev/null true 2>/dev/null; then perf=yes; fi

echo "== build" >&2
(cd "$here" && { cargo build --release --offline 2>&1 || cargo build --release 2>&1; } | tail -n 2) >&2

listening() { ss -Hltn "sport = :$1" | grep -q .; }
port=${ADAPTERS_PORT:-}
if [ -z "$port" ]; then
    for _ in $(seq 50); do
        port=$((20000 + RANDOM % 20000))
        listening "$port" || break
    done
fi
listening "$port" && { echo "run.sh: port $port is taken" >&2; exit 1; }
export ADAPTERS_PORT=$port

tmp=$(mktemp -d /tmp/adapters-bench.XXXXXX)
broker=
cleanup() {
    if [ -n "$broker" ] && kill -0 "$broker" 2>/dev/null; then
        kill "$broker" 2>/dev/null || true
        wait "$broker" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$tmp/mosquitto.conf"
timeout 3600 mosquitto -c "$tmp/mosquitto.conf" >"$out/mosquitto.log" 2>&1 &
broker=$!
for _ in $(seq 50); do listening "$port" && break; sleep 0.1; done
listening "$port" || { echo "run.sh: mosquitto did not start, see $out/mosquitto.log" >&2; exit 1; }
echo "== mosquitto on 127.0.0.1:$port (pid $broker), N=$N" >&2

# The value of key=... in the program's last line.
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" "$1" | tail -n 1; }
total_ir() { sed -n 's/^summary: *//p' "$1"; }

callgrind() { # MODE N QOS TAG
    local f=$out/callgrind.$1.q$3.$4.out
    timeout "$STEP_TIMEOUT" valgrind --tool=callgrind --callgrind-out-file="$f" \
        "$bin" "$1" "$2" "$3" >"$out/callgrind.$1.q$3.$4.log" 2>&1 \
        || { echo "run.sh: callgrind $* failed, see $out/callgrind.$1.q$3.$4.log" >&2; exit 1; }
    total_ir "$f"
}

rows=()
for qos in 1 0; do
    for mode in client raw; do
        echo "== $mode QoS $qos" >&2
        ir1=$(callgrind "$mode" "$N" "$qos" run1)
        ir2=$(callgrind "$mode" "$N" "$qos" run2)
        ir0=$(callgrind "$mode" 0 "$qos" fixed)
        callgrind_annotate "$out/callgrind.$mode.q$qos.run1.out" >"$out/annotate.$mode.q$qos.txt" 2>/dev/null
        callgrind_annotate --inclusive=yes "$out/callgrind.$mode.q$qos.run1.out" \
            >"$out/annotate-inclusive.$mode.q$qos.txt" 2>/dev/null

        # Native: threads after the last ack and VmHWM at N; CPU and rate at N_CPU.
        timeout "$STEP_TIMEOUT" "$bin" "$mode" "$N" "$qos" >"$out/native.$mode.q$qos.log"
        # CPU (all threads, user+sys) and syscalls: perf stat if it works, else /usr/bin/time;
        # the median of 3 runs at N_CPU, by CPU time.
        for i in 1 2 3; do
            f=$out/cpu.$mode.q$qos.$i
            if [ "$perf" = yes ]; then
                timeout "$STEP_TIMEOUT" perf stat -x, -e task-clock,raw_syscalls:sys_enter -o "$f.perf" \
                    "$bin" "$mode" "$N_CPU" "$qos" >"$f.log"
                awk -F, -v n="$N_CPU" '$3=="task-clock" {c = $1 * 1000 / n} $3 ~ /sys_enter/ {s = $1 / n}
                    END {printf "%.2f %.2f\n", c, s}' "$f.perf" >"$f.fig"
            else
                timeout "$STEP_TIMEOUT" /usr/bin/time -f 'cpu_s=%U+%S' -o "$f.time" \
                    "$bin" "$mode" "$N_CPU" "$qos" >"$f.log"
                awk -F'[=+]' -v n="$N_CPU" '/^cpu_s=/ {printf "%.2f -\n", ($2 + $3) * 1e6 / n}' "$f.time" >"$f.fig"
            fi
            echo "$(cat "$f.fig") $(field "$f.log" msgs_per_s)"
        done | sort -n | sed -n 2p >"$out/cpu.$mode.q$qos.median"
        read -r cpu sys rate <"$out/cpu.$mode.q$qos.median"

        rows+=("$(awk -v m="$mode" -v q="$qos" -v n="$N" -v a="$ir1" -v b="$ir2" -v z="$ir0" \
            -v t="$(field "$out/native.$mode.q$qos.log" threads)" \
            -v h="$(field "$out/native.$mode.q$qos.log" vmhwm_kib)" \
            -v c="$cpu" -v r="$rate" -v s="$sys" \
            'BEGIN { d = (b - a) / a * 100; if (d < 0) d = -d;
                     printf "| %-6s | %d | %7.0f | %7.0f | %5.2f %% | %7.0f | %9.0f | %7s | %6s | %7s | %6s | %8s |",
                       m, q, a / n, b / n, d, (a - z) / n, z, t, h, s, c, r }')")
    done
done

echo
echo "N=$N messages of 430 bytes, one topic, window 192; Ir = callgrind instructions of the whole program (all threads)."
echo "fixed Ir = the same program with N=0 (start, connect, disconnect). CPU µs/msg (user+sys, all threads), syscalls/msg and msgs/s:"
echo "native, N=$N_CPU, median of 3 runs by CPU (perf stat task-clock and raw_syscalls:sys_enter: $perf)."
echo
echo "| mode   | QoS | Ir/msg run 1 | Ir/msg run 2 | runs differ | Ir/msg without fixed | fixed Ir | threads | VmHWM KiB | syscalls/msg | CPU µs/msg | msgs/s |"
echo "|--------|-----|-------------:|-------------:|------------:|---------------------:|---------:|--------:|----------:|-------------:|-----------:|-------:|"
for r in "${rows[@]}"; do echo "$r"; done
echo
for qos in 1 0; do
    for mode in client raw; do
        echo "Top 5 functions by own Ir, $mode QoS $qos (run 1):"
        awk '/^-+$/ {dash++; next} dash >= 6 && NF && n < 5 {print "  " $0; n++}' \
            "$out/annotate.$mode.q$qos.txt" \
            | sed -E 's# \[/[^]]*\]$##; s#\./[^ ]*/([^/ ]+\.[cS]):#\1:#; s#/rustc/[0-9a-f]+/library/##' | cut -c1-150
    done
done
