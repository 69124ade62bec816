#!/usr/bin/env bash
# Instructions per log line of the whole agent, start-up included: one container of the private
# engine (tests/env.sh) holds a backlog of N lines of 100 bytes (`yes LINE | head -n N`); the
# agent (SINCE=all, files on, QoS 1) reads it under callgrind and publishes it to its own
# mosquitto on a free loopback port, where a `mosquitto_sub` subscriber counts the lines; once
# all have arrived the agent is stopped with SIGTERM and callgrind's total is divided by N.
# A second, native run of the same backlog gives Threads and VmHWM of /proc/PID/status at the
# end (callgrind's own memory would hide the agent's).
#
#   bench/instructions.sh BINARY             MQTT_BATCH=false (default) or true, N=30000,
#                                            MQTT_VERSION=3.1.1 (default) or 5
#   MQTT_BATCH=true bench/instructions.sh target/release/container-logd
#
# Prints `key=value` lines (instructions, instructions_per_line, threads, vmhwm_kib, ...).
# Everything it starts (broker, subscriber, agent, container) is stopped and its temporary
# directory removed on every exit; every wait is bounded (TIMEOUT seconds each, default 900).
set -euo pipefail

bin=$(realpath "${1:?usage: bench/instructions.sh BINARY}")
here=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-30000}
BATCH=${MQTT_BATCH:-false}
VERSION=${MQTT_VERSION:-3.1.1}
TIMEOUT=${TIMEOUT:-900}
MARK=cld-bench-line
# 100 bytes: the marker, a space and filler.
LINE="$MARK $(printf '%*s' $((100 - ${#MARK} - 1)) '' | tr ' ' x)"

for tool in mosquitto mosquitto_sub valgrind docker ss; do
    command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is missing" >&2; exit 1; }
done
"$here/tests/env.sh" up >&2
export DOCKER_HOST=$("$here/tests/env.sh" host)

tmp=$(mktemp -d /tmp/cld-instructions.XXXXXX)
name=cld-bench-$$-$RANDOM
pids=()
cleanup() {
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        timeout 10 tail --pid="$p" -f /dev/null 2>/dev/null || kill -9 "$p" 2>/dev/null || true
    done
    timeout 60 docker rm -f "$name" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

listening() { ss -Hltn "sport = :$1" | grep -q .; }
free_port() {
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 20000))
        listening "$p" || { echo "$p"; return; }
    done
    echo "instructions.sh: no free port" >&2
    exit 1
}

# Waits until the command succeeds, at most TIMEOUT seconds.
wait_until() {
    local end=$((SECONDS + TIMEOUT))
    until "$@"; do
        [ $SECONDS -lt $end ] || { echo "instructions.sh: timed out waiting for: $*" >&2; return 1; }
        sleep 0.5
    done
}

# The container and its backlog.
timeout 120 docker run -d --name "$name" cld-busybox \
    sh -c "yes '$LINE' | head -n $N; exec sleep 3600" >/dev/null
backlog() { [ "$(timeout 60 docker logs "$name" 2>&1 | grep -c "$MARK")" -ge "$N" ]; }
wait_until backlog

# The broker.
port=$(free_port)
# No limit on a subscriber's queue: mosquitto drops QoS 1 messages beyond 1000 queued for a
# subscriber that falls behind, which a fast agent makes happen.
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n' \
    "$port" >"$tmp/mosquitto.conf"
timeout "$TIMEOUT" mosquitto -c "$tmp/mosquitto.conf" >"$tmp/mosquitto.log" 2>&1 &
pids+=($!)
wait_until listening "$port"

# One run of the agent: $1 is a label, the rest the command line before the binary.
run_once() {
    local label=$1
    shift
    local dir=$tmp/$label
    mkdir -p "$dir"
    timeout "$TIMEOUT" mosquitto_sub -h 127.0.0.1 -p "$port" -q 1 -i "sub-$label-$$" \
        -t 'container-manager/logs/#' >"$dir/sub.out" 2>"$dir/sub.err" &
    local sub=$!
    pids+=($sub)
    sleep 0.5
    env -i PATH="$PATH" HOME="$dir" \
        DOCKER_HOST="$DOCKER_HOST" CONTAINERS_INCLUDE="$name" SINCE=all \
        LOG_DIR="$dir/logs" STATE_DIR="$dir/state" LOG_FILE_PERSISTENCE=true \
        API_LISTEN="127.0.0.1:$(free_port)" LOG_LEVEL=warn \
        MQTT_BROKER="mqtt://127.0.0.1:$port" MQTT_CLIENT_ID="logd-$label-$$" MQTT_QOS=1 \
        MQTT_BATCH="$BATCH" MQTT_VERSION="$VERSION" \
        timeout "$TIMEOUT" "$@" "$bin" run >"$dir/agent.log" 2>&1 &
    local agent=$!
    pids+=($agent)
    arrived() { [ "$(grep -o "$MARK" "$dir/sub.out" | wc -l)" -ge "$N" ]; }
    wait_until arrived
    # The process is the agent itself (`timeout` execs nothing: its child is the agent).
    local child
    child=$(pgrep -P "$agent" | head -n 1)
    grep -E '^(Threads|VmHWM):' "/proc/$child/status" >"$dir/status" || true
    kill -TERM "$child"
    timeout 120 tail --pid="$child" -f /dev/null || { echo "instructions.sh: the agent did not stop" >&2; return 1; }
    wait "$agent" || true
    kill "$sub" 2>/dev/null || true
}

run_once callgrind valgrind --tool=callgrind --callgrind-out-file="$tmp/callgrind/cg.out"
total=$(grep -E '^(summary|totals):' "$tmp/callgrind/cg.out" | head -n 1 | awk '{print $2}')
[ -n "${KEEP_CG:-}" ] && cp "$tmp/callgrind/cg.out" "$KEEP_CG"
run_once native
threads=$(awk '/^Threads:/ {print $2}' "$tmp/native/status")
vmhwm=$(awk '/^VmHWM:/ {print $2}' "$tmp/native/status")
delivered=$(grep -o "$MARK" "$tmp/callgrind/sub.out" | wc -l)

echo "binary=$bin"
echo "mqtt_version=$VERSION mqtt_batch=$BATCH lines=$N delivered_under_callgrind=$delivered"
echo "instructions=$total"
echo "instructions_per_line=$((total / N))"
echo "threads=$threads"
echo "vmhwm_kib=$vmhwm"
