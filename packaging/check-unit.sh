#!/usr/bin/env bash
# Checks etc/container-logd.service with systemd's own tools, without systemd running:
# `systemd-analyze verify` (syntax, directives, the ExecStart binary) and
# `systemd-analyze security --offline=yes` (the exposure score; fails above MAX_EXPOSURE, in tenths).
# usage: packaging/check-unit.sh [BINARY]   BINARY replaces /usr/bin/container-logd in ExecStart
# (default: the installed one if present, else the release build).
set -euo pipefail
cd "$(dirname "$0")/.."
# systemd counts the threshold in tenths of the printed score: 20 means 2.0.
max_exposure=${MAX_EXPOSURE:-20}
target_dir=${TARGET_DIR:-${CARGO_TARGET_DIR:-target}}

bin=${1:-}
if [ -z "$bin" ]; then
    if [ -x /usr/bin/container-logd ]; then bin=/usr/bin/container-logd; else bin=$target_dir/release/container-logd; fi
fi
if [ ! -x "$bin" ]; then
    echo "$0: no binary at $bin: run make build first" >&2
    exit 1
fi
bin=$(readlink -f "$bin")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|^ExecStart=/usr/bin/container-logd|ExecStart=$bin|" etc/container-logd.service \
    > "$tmp/container-logd.service"

systemd-analyze verify "$tmp/container-logd.service"
echo "verify: ok"
systemd-analyze security --offline=yes --threshold="$max_exposure" --no-pager \
    "$tmp/container-logd.service" | tail -n 1
