#!/usr/bin/env bash
# bench/run.sh owns `make bench`: installs the test packages (as root on Debian), starts the
# private engine of tests/env.sh unless one already answers, builds the release binary, runs
# bench/bench.py, and stops what it started, whatever the outcome. Results: the table on stdout
# and target/bench/results.json. Knobs (environment): BENCH_IDLE_SECS (60), BENCH_LINES (100000),
# BENCH_CONTAINERS (1,4,20), BENCH_ONLY (phases), BENCH_AGENT (skip the build, use this binary),
# BENCH_AGENT_STATIC (with BENCH_AGENT: the static one), BENCH_STATIC=0 (no static build),
# BENCH_REPEAT (3 runs per throughput figure), BENCH_AGENT_SYMBOLS and BENCH_FLOOR (the
# instructions phase's binaries), BENCH_INSTR_LINES (30000), BENCH_INSTR_RUNS (2),
# BENCH_IDLE_CONTAINERS (20), BENCH_IDLE_NAIVE (20),
# BENCH_KEEP_TMP (keep the work directory), CLD_ENGINE_DIR (/tmp/cld-bench-engine).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CLD_ENGINE_DIR=${CLD_ENGINE_DIR:-/tmp/cld-bench-engine}
CARGO=${CARGO:-cargo}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$ROOT/target/bench/results.json
HOST=$(tests/env.sh host)
SOCK=${HOST#unix://}

started_engine=0
bench_pid=
cleanup() {
  local status=$?
  # A signal to this script alone still stops the measurements (they clean up after themselves).
  if [ -n "$bench_pid" ] && kill -0 "$bench_pid" 2>/dev/null; then
    kill -TERM "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
  fi
  # bench.py removes its own containers; this catches what a killed run left behind.
  if curl -sf --max-time 2 --unix-socket "$SOCK" http://docker/_ping >/dev/null 2>&1; then
    ids=$(DOCKER_HOST=$HOST docker ps -aq --filter label=cld-bench=1 2>/dev/null || true)
    [ -z "$ids" ] || DOCKER_HOST=$HOST docker rm -f $ids >/dev/null 2>&1 || true
  fi
  if [ "$started_engine" = 1 ]; then
    tests/env.sh down || echo "bench: tests/env.sh down failed" >&2
  fi
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  tests/env.sh deps valgrind
else
  echo "bench: not root on Debian, skipping tests/env.sh deps" >&2
fi
for tool in docker mosquitto mosquitto_sub mosquitto_pub curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done

if ! curl -sf --max-time 2 --unix-socket "$SOCK" http://docker/_ping >/dev/null 2>&1; then
  started_engine=1
fi
tests/env.sh up

if [ -n "${BENCH_AGENT:-}" ]; then
  AGENT=$BENCH_AGENT
else
  "$CARGO" build --release --locked
  AGENT=$TARGET_DIR/release/container-logd
fi

# The Pi gets static binaries (packaging/cross.sh): build this host's one the same way, for the
# idle and peak RSS beside the dynamically linked one (libc's pages count in RSS). BENCH_STATIC=0
# skips it.
STATIC=${BENCH_AGENT_STATIC:-}
# Only the idle and peak phases use it.
case ",${BENCH_ONLY:-idle}," in *,idle,* | *,peak,*) want_static=1 ;; *) want_static=0 ;; esac
if [ -z "${BENCH_AGENT:-}" ] && [ "${BENCH_STATIC:-1}" != 0 ] && [ "$want_static" = 1 ] \
  && [ "$(uname -m)" = x86_64 ]; then
  if CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    "$CARGO" build --release --locked --target x86_64-unknown-linux-gnu; then
    STATIC=$TARGET_DIR/x86_64-unknown-linux-gnu/release/container-logd
  else
    echo "bench: the static build failed; the RSS of the static build is left out" >&2
  fi
fi

# The instructions phase: the same release profile with line tables and symbols (for
# callgrind_annotate's function names), and the floor reader (examples/floor.rs), in a target
# directory of their own so that the shipped build stays as it is. BENCH_AGENT_SYMBOLS and
# BENCH_FLOOR name ready binaries instead. CLD_HOT_TEXT=0: valgrind names only functions in
# .text, so this build keeps the functions the agent runs there (build.rs).
SYMBOLS=${BENCH_AGENT_SYMBOLS:-}
FLOOR=${BENCH_FLOOR:-}
case ",${BENCH_ONLY:-instructions}," in
*,instructions,*)
  SYM_DIR=$TARGET_DIR/bench-symbols
  sym_build() {
    CLD_HOT_TEXT=0 CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_PROFILE_RELEASE_STRIP=none \
      "$CARGO" build --release --locked --target-dir "$SYM_DIR" "$@"
  }
  if [ -z "$SYMBOLS" ]; then
    if sym_build; then SYMBOLS=$SYM_DIR/release/container-logd
    else echo "bench: the build with symbols failed; no instructions phase" >&2; fi
  fi
  if [ -z "$FLOOR" ]; then
    if sym_build --features internals --example floor; then FLOOR=$SYM_DIR/release/examples/floor
    else echo "bench: the floor reader's build failed; no instructions phase" >&2; fi
  fi
  ;;
esac

# In the background and waited for, so that a signal reaches the traps at once.
ENGINE_PID=$(cat "$CLD_ENGINE_DIR/dockerd.pid" 2>/dev/null || echo 0)
python3 bench/bench.py --agent "$AGENT" --agent-static "$STATIC" --docker-host "$HOST" \
  --agent-symbols "$SYMBOLS" --floor "$FLOOR" --out "$OUT" --engine-pid "$ENGINE_PID" &
bench_pid=$!
wait "$bench_pid"
