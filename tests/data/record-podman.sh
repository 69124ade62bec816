#!/usr/bin/env bash
# Records the Podman answers in this directory (podman-*.http) from the private Podman service
# of tests/env.sh (podman-up first). Each file is what `curl --raw -i` read until Podman closed
# the connection: head, chunk framing and all. Re-recording changes timestamps and ids, so the
# tests that read these files say what they expect from each.
set -euo pipefail
cd "$(dirname "$0")"
SOCK=${CLD_PODMAN_DIR:-/tmp/cld-podman}/podman.sock
P=(podman --url "unix://$SOCK")
RUN=(run -d --network none --ulimit nofile=20000:20000 --ulimit nproc=4096:4096)
LOGS="follow=1&stdout=1&stderr=1&timestamps=1"

get() { # get PATH FILE
  curl -s --raw -i -N --unix-socket "$SOCK" -H 'Connection: close' "http://docker$1" -o "$2"
}

"${P[@]}" rm -f -t 0 rec-split rec-tty rec-burst >/dev/null 2>&1 || true
get /_ping podman-ping.http

# A line written in two parts a second apart, with stderr and whole lines around it.
SPLIT='echo hello; echo err >&2; printf "P line "; sleep 1; echo 3; echo done'
id=$("${P[@]}" "${RUN[@]}" --name rec-split cld-busybox sh -c "$SPLIT")
get "/v4.3.1/libpod/containers/$id/logs?$LOGS" podman-split.http # followed live to the end
get "/v1.41/containers/$id/logs?$LOGS" podman-split-compat.http
# Resumed at the second of the line's last part: its first part is before `since`.
last=$(grep -a -o '[0-9T:-]*Z 3' podman-split.http | cut -d' ' -f1)
get "/v4.3.1/libpod/containers/$id/logs?$LOGS&since=$(date -u -d "$last - 1 sec" +%Y-%m-%dT%H:%M:%S).999999999Z" podman-split-since.http

# The same with a TTY: the compat endpoint writes entries raw, the libpod one frames them.
id=$("${P[@]}" "${RUN[@]}" -t --name rec-tty cld-busybox sh -c "$SPLIT")
get "/v1.41/containers/$id/logs?$LOGS" podman-tty-compat.http
get "/v4.3.1/libpod/containers/$id/logs?$LOGS" podman-tty.http

# 50 lines and 5 stderr lines within one second, then a resume at that second.
id=$("${P[@]}" "${RUN[@]}" --name rec-burst cld-busybox sh -c \
  'i=0; while [ $i -lt 50 ]; do i=$((i+1)); echo "n $i"; [ $((i % 10)) = 0 ] && echo "e $i" >&2; done; true')
"${P[@]}" wait rec-burst >/dev/null
get "/v4.3.1/libpod/containers/$id/logs?$LOGS" podman-burst.http
first=$(grep -a -o '[0-9T:-]*Z n 1$' podman-burst.http | head -n 1 | cut -d' ' -f1)
get "/v4.3.1/libpod/containers/$id/logs?$LOGS&since=$(date -u -d "$first - 1 sec" +%Y-%m-%dT%H:%M:%S).999999999Z" podman-burst-since.http
get "/v1.41/events?since=$(date -u -d '-1 min' +%s)&until=$(date -u -d '+2 sec' +%s)&filters=%7B%22type%22%3A%5B%22container%22%5D%7D" podman-events.http

"${P[@]}" rm -f -t 0 rec-split rec-tty rec-burst >/dev/null
