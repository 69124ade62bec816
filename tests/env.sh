#!/usr/bin/env bash
# The test environment of container-logd: Debian packages, a private Docker engine with a
# busybox image, torn down afterwards. Used by `make test`, `make demo`, `make bench` and the
# Rust test harness (tests/util). Every subcommand is idempotent.
#
#   tests/env.sh deps    install what the tests need (apt), as root
#   tests/env.sh up      start the private engine (if not answering) and build the image
#   tests/env.sh stop    stop the private engine, keeping its containers and images
#   tests/env.sh down    stop the private engine and remove its state
#   CLD_ENGINE_DIR=DIR   a second private engine of its own (socket DIR/docker.sock)
#   tests/env.sh host    print the DOCKER_HOST of the private engine
set -euo pipefail

ENGINE_DIR=${CLD_ENGINE_DIR:-/tmp/cld-engine}
SOCK=$ENGINE_DIR/docker.sock
IMAGE=${CLD_TEST_IMAGE:-cld-busybox}
PACKAGES=(docker.io mosquitto mosquitto-clients busybox-static curl openssl chromium systemd)

ping_engine() {
  curl -sf --max-time 2 --unix-socket "$SOCK" http://docker/_ping >/dev/null 2>&1
}

deps() {
  local missing=()
  for p in "${PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' 2>/dev/null | head -n 1)" ]; then
      apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

up() {
  mkdir -p "$ENGINE_DIR"
  exec 9>"$ENGINE_DIR/.lock"
  flock 9
  if ! ping_engine; then
    rm -f "$SOCK"
    # The engine must outlive this script: setsid detaches it from our session.
    setsid dockerd -H "unix://$SOCK" --data-root "$ENGINE_DIR/data" --exec-root "$ENGINE_DIR/exec" \
      --pidfile "$ENGINE_DIR/dockerd.pid" --iptables=false --ip-masq=false --bridge=none \
      --log-level=warn >"$ENGINE_DIR/dockerd.log" 2>&1 </dev/null 9>&- &
    for _ in $(seq 1 150); do
      ping_engine && break
      sleep 0.2
    done
    ping_engine || { echo "private engine did not start; see $ENGINE_DIR/dockerd.log" >&2; tail -n 20 "$ENGINE_DIR/dockerd.log" >&2; exit 1; }
  fi
  if ! DOCKER_HOST="unix://$SOCK" docker image inspect "$IMAGE" >/dev/null 2>&1; then
    local root
    root=$(mktemp -d)
    mkdir -p "$root/rootfs/bin"
    cp /bin/busybox "$root/rootfs/bin/busybox"
    for l in sh echo sleep seq yes cat printf head tr kill true false date; do
      ln -s busybox "$root/rootfs/bin/$l"
    done
    tar -C "$root/rootfs" -cf "$root/bb.tar" .
    DOCKER_HOST="unix://$SOCK" docker import -c 'ENV PATH=/bin' "$root/bb.tar" "$IMAGE" >/dev/null
    rm -rf "$root"
  fi
}

# Stops the engine but keeps its data, as a crash or an upgrade of the engine would.
stop() {
  [ -f "$ENGINE_DIR/dockerd.pid" ] || return 0
  local pid
  pid=$(cat "$ENGINE_DIR/dockerd.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

down() {
  [ -d "$ENGINE_DIR" ] || return 0
  if ping_engine; then
    local ids
    ids=$(DOCKER_HOST="unix://$SOCK" docker ps -aq 2>/dev/null || true)
    [ -z "$ids" ] || DOCKER_HOST="unix://$SOCK" docker rm -f $ids >/dev/null 2>&1 || true
  fi
  if [ -f "$ENGINE_DIR/dockerd.pid" ]; then
    local pid
    pid=$(cat "$ENGINE_DIR/dockerd.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  # Mounts left by an engine that died hard would make rm fail.
  grep -o " $ENGINE_DIR[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$ENGINE_DIR"
}

case "${1:-}" in
  deps) shift; deps "$@" ;;
  up) up ;;
  stop) stop ;;
  down) down ;;
  host) echo "unix://$SOCK" ;;
  *) echo "usage: $0 deps|up|stop|down|host" >&2; exit 2 ;;
esac
