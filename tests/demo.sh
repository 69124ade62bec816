#!/usr/bin/env bash
# `make demo`: container-logd at work from nothing. A private engine and broker, three chatty
# demo containers with balena-style labels (app 1001: web, worker, db; one with a TTY), the
# agent, and the commands to watch it all live. Ctrl-C stops and removes everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

MQTT_PORT=${DEMO_MQTT_PORT:-18830}
API=${DEMO_API:-127.0.0.1:7780}
WORK=$(mktemp -d /tmp/cld-demo.XXXXXX)
# An engine of the demo's own, so the demo never disturbs the tests' engine.
export CLD_ENGINE_DIR=${CLD_ENGINE_DIR:-/tmp/cld-demo-engine}
if [ "$(id -u)" = 0 ]; then tests/env.sh deps; fi
tests/env.sh up
export DOCKER_HOST
DOCKER_HOST=$(tests/env.sh host)

pids=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "demo: stopping"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  docker rm -f demo-web demo-worker demo-db >/dev/null 2>&1 || true
  tests/env.sh down
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$MQTT_PORT" >"$WORK/mosquitto.conf"
mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
pids+=($!)

cargo build --release --locked
labels() { echo "-l io.balena.app-id=1001 -l io.balena.service-name=$1 -l io.balena.service-id=$2"; }
docker rm -f demo-web demo-worker demo-db >/dev/null 2>&1 || true
# shellcheck disable=SC2046
docker run -d --name demo-web --network none $(labels web 1) cld-busybox sh -c '
  i=0; while true; do i=$((i+1)); echo "GET /index.html 200 ${i}ms";
  [ $((i % 7)) = 0 ] && echo "WARN slow response: $((i * 3))ms";
  [ $((i % 23)) = 0 ] && echo "ERROR upstream timeout on /api/orders" >&2; sleep 1; done' >/dev/null
# shellcheck disable=SC2046
docker run -d -t --name demo-worker --network none $(labels worker 2) cld-busybox sh -c '
  i=0; while true; do i=$((i+1)); echo "level=info msg=\"job $i done\"";
  [ $((i % 5)) = 0 ] && echo "level=warn msg=\"job $i retried\""; sleep 2; done' >/dev/null
# shellcheck disable=SC2046
docker run -d --name demo-db --network none $(labels db 3) cld-busybox sh -c '
  i=0; while true; do i=$((i+1)); echo "{\"level\":\"info\",\"msg\":\"checkpoint $i\"}";
  [ $((i % 4)) = 0 ] && echo "{\"level\":\"error\",\"msg\":\"deadlock detected\"}" >&2; sleep 3; done' >/dev/null

mkdir -p "$WORK/logs" "$WORK/state"
MQTT_BROKER="mqtt://127.0.0.1:$MQTT_PORT" API_LISTEN="$API" LOG_DIR="$WORK/logs" STATE_DIR="$WORK/state" \
  SINCE=all target/release/container-logd &
pids+=($!)

cat <<EOT

container-logd is running on a private engine with three demo containers (app 1001).

  watch everything:   mosquitto_sub -h 127.0.0.1 -p $MQTT_PORT -t 'container-manager/logs/#' -v
  one service:        mosquitto_sub -h 127.0.0.1 -p $MQTT_PORT -t 'container-manager/logs/1001/web/+' -v
  errors only:        mosquitto_sub -h 127.0.0.1 -p $MQTT_PORT -t 'container-manager/logs/+/+/error'
  the API:            curl -s 'http://$API/api/v1/logs?appId=1001&level=warn&limit=5'
  health:             curl -s http://$API/api/v1/health
  the files:          ls $WORK/logs/1001

Ctrl-C stops the demo and removes what it started.
EOT
wait
