#!/usr/bin/env bash
# A short real session of the ARMv7 Pi binary under qemu-arm-static (Cortex-A7, as a Pi 2/3/
# Zero 2): against the private test engine and a private mosquitto, a labelled container's
# lines must arrive on MQTT and in the files. Starts and stops everything it uses.
# Usage: packaging/qemu-session.sh [BINARY]   (default: the `make armv7` output)
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${TARGET_DIR:-${CARGO_TARGET_DIR:-target}}
bin=${1:-$target_dir/armv7-unknown-linux-gnueabihf/release/container-logd}
[ -x "$bin" ] || { echo "qemu-session: no binary at $bin (run make armv7)" >&2; exit 1; }

work=$(mktemp -d /tmp/cld-qemu.XXXXXX)
export CLD_ENGINE_DIR=/tmp/cld-qemu-engine
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  tests/env.sh down || true
  rm -rf "$work"
}
trap cleanup EXIT
tests/env.sh up
export DOCKER_HOST
DOCKER_HOST=$(tests/env.sh host)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
api=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" >"$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
sleep 0.5
mosquitto_sub -h 127.0.0.1 -p "$port" -q 1 -v -t 'container-manager/logs/#' >"$work/sub.txt" &
pids+=($!)

MQTT_BROKER="mqtt://127.0.0.1:$port" API_LISTEN="127.0.0.1:$api" LOG_DIR="$work/logs" STATE_DIR="$work/state" \
  CONTAINERS_INCLUDE='qemu-*' timeout 120 qemu-arm-static -cpu cortex-a7 "$bin" >"$work/agent.log" 2>&1 &
agent=$!
pids+=($agent)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$api/api/v1/health" >/dev/null && break; sleep 0.2; done

docker rm -f qemu-web >/dev/null 2>&1 || true
docker run -d --name qemu-web --network none -l io.balena.app-id=1001 -l io.balena.service-name=web \
  cld-busybox sh -c 'echo "hello from the pi"; echo "ERROR pi trouble" >&2; exec sleep 30' >/dev/null

ok=0
for _ in $(seq 1 100); do
  if grep -q 'container-manager/logs/1001/web/error .*pi trouble' "$work/sub.txt" 2>/dev/null \
    && grep -q 'container-manager/logs/1001/web/info .*hello from the pi' "$work/sub.txt" \
    && grep -q 'hello from the pi' "$work/logs/1001/web.log" 2>/dev/null; then
    ok=1
    break
  fi
  sleep 0.2
done
docker rm -f qemu-web >/dev/null 2>&1 || true
kill -TERM "$agent" 2>/dev/null || true
wait "$agent" 2>/dev/null || true
if [ "$ok" = 1 ]; then
  echo "qemu-session: ok: the ARMv7 binary under qemu delivered a container's lines to MQTT and to its files"
  grep 'container-manager/logs/1001/web/' "$work/sub.txt" | head -n 2
else
  echo "qemu-session: FAIL; agent log:" >&2
  cat "$work/agent.log" >&2
  echo "subscriber saw:" >&2
  cat "$work/sub.txt" >&2
  exit 1
fi
