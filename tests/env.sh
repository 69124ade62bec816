#!/usr/bin/env bash
# The test environment of container-logd: Debian packages, a private Docker engine and a
# private Podman service, each with a busybox image, torn down afterwards. Used by `make test`,
# `make demo`, `make bench` and the Rust test harness (tests/util). Every subcommand is
# idempotent.
#
#   tests/env.sh deps         install what the tests need (apt), as root
#   tests/env.sh up           start the private engine (if not answering) and build the image
#   tests/env.sh stop         stop the private engine, keeping its containers and images
#   tests/env.sh down         stop the private engine (and, without CLD_ENGINE_DIR, the Podman
#                             service), remove their state
#   CLD_ENGINE_DIR=DIR        a second private engine of its own (socket DIR/docker.sock)
#   tests/env.sh host         print the DOCKER_HOST of the private engine
#   tests/env.sh podman-up    start the private Podman service (Docker API on DIR/podman.sock,
#                             storage under DIR) and build the image
#   tests/env.sh podman-down  stop it and remove its containers and state
#   tests/env.sh podman-host  print its DOCKER_HOST
#   CLD_PODMAN_DIR=DIR        its directory (default /tmp/cld-podman)
set -euo pipefail

ENGINE_DIR=${CLD_ENGINE_DIR:-/tmp/cld-engine}
SOCK=$ENGINE_DIR/docker.sock
IMAGE=${CLD_TEST_IMAGE:-cld-busybox}
PODMAN_DIR=${CLD_PODMAN_DIR:-/tmp/cld-podman}
PODMAN_SOCK=$PODMAN_DIR/podman.sock
PACKAGES=(docker.io podman mosquitto mosquitto-clients busybox-static curl openssl chromium systemd)

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

# The busybox image's root file system as a tar file: Debian's busybox-static, linked as the
# commands the tests use. Prints the tar file's path (in a temporary directory).
busybox_tar() {
  local root
  root=$(mktemp -d)
  mkdir -p "$root/rootfs/bin"
  cp /bin/busybox "$root/rootfs/bin/busybox"
  for l in sh echo sleep seq yes cat printf head tr kill true false date; do
    ln -s busybox "$root/rootfs/bin/$l"
  done
  tar -C "$root/rootfs" -cf "$root/bb.tar" .
  echo "$root/bb.tar"
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
    local tarball
    tarball=$(busybox_tar)
    DOCKER_HOST="unix://$SOCK" docker import -c 'ENV PATH=/bin' "$tarball" "$IMAGE" >/dev/null
    rm -rf "$(dirname "$tarball")"
  fi
}

ping_podman() {
  curl -sf --max-time 2 --unix-socket "$PODMAN_SOCK" http://podman/_ping >/dev/null 2>&1
}

# The podman CLI as a client of the private service (remote mode: the service owns the state).
podman_cli() {
  podman --url "unix://$PODMAN_SOCK" "$@"
}

# A rootful Podman service of our own: its own storage (--root, --runroot, --tmpdir), no
# systemd (cgroupfs, events in a file), the Docker API on a socket under PODMAN_DIR.
podman_up() {
  mkdir -p "$PODMAN_DIR"
  exec 8>"$PODMAN_DIR/.lock"
  flock 8
  if ! ping_podman; then
    rm -f "$PODMAN_SOCK"
    # The service must outlive this script: setsid detaches it from our session, and it runs in
    # / (conmon needs the service's working directory; a clone that started it may be gone).
    (cd / && exec setsid podman --root "$PODMAN_DIR/root" --runroot "$PODMAN_DIR/runroot" \
      --tmpdir "$PODMAN_DIR/tmp" --cgroup-manager=cgroupfs --events-backend=file \
      --log-level=warn system service --time=0 "unix://$PODMAN_SOCK" \
      >"$PODMAN_DIR/podman.log" 2>&1 </dev/null 8>&-) &
    echo $! >"$PODMAN_DIR/podman.pid"
    for _ in $(seq 1 150); do
      ping_podman && break
      sleep 0.2
    done
    ping_podman || { echo "private podman did not start; see $PODMAN_DIR/podman.log" >&2; tail -n 20 "$PODMAN_DIR/podman.log" >&2; exit 1; }
  fi
  if ! podman_cli image exists "$IMAGE" 2>/dev/null; then
    local tarball
    tarball=$(busybox_tar)
    podman_cli import -c 'ENV PATH=/bin' "$tarball" "$IMAGE" >/dev/null
    rm -rf "$(dirname "$tarball")"
  fi
}

# Ends the process of a pid file: SIGTERM, up to SECONDS to go, then SIGKILL.
stop_pidfile() {
  [ -f "$1" ] || return 0
  local pid
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 $(($2 * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

podman_down() {
  [ -d "$PODMAN_DIR" ] || return 0
  if ping_podman; then
    podman_cli rm -f -a -t 0 >/dev/null 2>&1 || true
  fi
  stop_pidfile "$PODMAN_DIR/podman.pid" 10
  grep -o " ${PODMAN_DIR}[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$PODMAN_DIR"
}

# Stops the engine but keeps its data, as a crash or an upgrade of the engine would.
stop() {
  stop_pidfile "$ENGINE_DIR/dockerd.pid" 15
}

down() {
  [ -d "$ENGINE_DIR" ] || return 0
  if ping_engine; then
    local ids
    ids=$(DOCKER_HOST="unix://$SOCK" docker ps -aq 2>/dev/null || true)
    [ -z "$ids" ] || DOCKER_HOST="unix://$SOCK" docker rm -f $ids >/dev/null 2>&1 || true
  fi
  stop_pidfile "$ENGINE_DIR/dockerd.pid" 10
  # Mounts left by an engine that died hard would make rm fail.
  grep -o " ${ENGINE_DIR}[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$ENGINE_DIR"
}

case "${1:-}" in
  deps) shift; deps "$@" ;;
  up) up ;;
  stop) stop ;;
  # A test's own engine (CLD_ENGINE_DIR) goes alone; the shared one takes Podman with it.
  down) down; [ -n "${CLD_ENGINE_DIR:-}" ] || podman_down ;;
  host) echo "unix://$SOCK" ;;
  podman-up) podman_up ;;
  podman-down) podman_down ;;
  podman-host) echo "unix://$PODMAN_SOCK" ;;
  *) echo "usage: $0 deps|up|stop|down|host|podman-up|podman-down|podman-host" >&2; exit 2 ;;
esac
