#!/usr/bin/env bash
# The .deb under a real systemd: boots a Debian bookworm machine with systemd as PID 1 in
# systemd-nspawn (private network: no traffic leaves it), installs the package with apt and
# prints one line per check, ✓ or ✗; exits 1 if any is ✗.
#
#   packaging/systemd-check.sh          amd64: the .deb of `make deb`, dockerd inside the machine
#   packaging/systemd-check.sh armhf    the .deb of `make deb-armhf`, run under qemu-user
#                                       (binfmt_misc); the engine is the host's private one of
#                                       tests/env.sh, its socket bound in
#
# Checks, in order: an install before the engine runs returns at once and the service is READY
# and says it waits for the engine; it follows the engine once it comes; journald priorities;
# a workload (a container's lines reach the log files and mosquitto) with seccomp made to kill
# (SystemCallErrorNumber=kill) so a filtered call cannot go unseen; the watchdog restarts a
# stopped agent; the README's `container-logd check` recipe; an upgrade keeps an edited settings
# file and restarts the service; purge cleans up; a host without an engine group gets a message
# instead of a restart loop.
#
# The debootstrapped root file system is cached in TARGET_DIR/systemd-check/ (the first run
# takes a few minutes more); the machine and its unpacked root are removed on exit. Root only.
# DEB=path overrides the package; MIRROR=url the Debian mirror (default: apt's own).
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:-$(dpkg --print-architecture)}
case "$arch" in amd64 | armhf) ;; *) echo "usage: $0 [amd64|armhf]" >&2 && exit 2 ;; esac
target_dir=${TARGET_DIR:-${CARGO_TARGET_DIR:-target}}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
deb=${DEB:-$target_dir/debian/container-logd_${version}_$arch.deb}
suite=bookworm
cache=$(mkdir -p "$target_dir/systemd-check" && cd "$target_dir/systemd-check" && pwd)
tarball=$cache/$suite-$arch.tar.gz
engine_dir= # armhf: the directory of tests/env.sh's private engine socket
packages=systemd,systemd-sysv,dbus,mosquitto,mosquitto-clients,curl,ca-certificates,procps,adduser
[ "$arch" = amd64 ] && packages=$packages,docker.io
unit=container-logd
health=http://127.0.0.1:7780/api/v1/health
t0=$SECONDS

fails=0
ok() { echo "✓ $*"; }
bad() {
    echo "✗ $*"
    fails=$((fails + 1))
}
note() { echo "  $*"; }
indent() { sed 's/^/    /'; }

# --- the host: tools, binfmt, the cached root file system -------------------------------------

need_tools() {
    [ "$(id -u)" = 0 ] || { echo "$0: must run as root (debootstrap, systemd-nspawn)" >&2 && exit 1; }
    local make_deb=deb
    [ "$arch" = armhf ] && make_deb="deb-armhf"
    [ -f "$deb" ] || { echo "$0: no package at $deb: run make $make_deb first" >&2 && exit 1; }
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
    [ "$arch" = armhf ] && [ ! -e /usr/lib/binfmt.d/qemu-arm.conf ] && missing+=(qemu-user-static)
    if [ ${#missing[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q "${missing[@]}"
    fi
}

# qemu-arm for armhf binaries (and debootstrap's second stage), registered only if it is not;
# cleanup undoes what was done here.
registered_qemu=
mounted_binfmt=
register_qemu() {
    local fs=/proc/sys/fs/binfmt_misc
    if [ ! -e $fs/register ]; then
        mount -t binfmt_misc binfmt_misc $fs
        mounted_binfmt=$fs
    fi
    [ -e $fs/qemu-arm ] && return
    grep -v '^#' /usr/lib/binfmt.d/qemu-arm.conf | grep -m 1 . >$fs/register
    registered_qemu=$fs/qemu-arm
}

mirror() {
    local uri
    # shellcheck disable=SC2016 # apt's own format
    uri=$(apt-get indextargets --format '$(REPO_URI)' 'Created-By: Packages' 2>/dev/null |
        grep -v security | grep -m 1 '/debian/$' || true)
    echo "${MIRROR:-${uri:-http://deb.debian.org/debian/}}"
}

build_rootfs() {
    [ -f "$tarball" ] && return
    local build=$cache/build-$arch
    rm -rf "$build"
    echo "debootstrap $suite $arch (once; cached as $tarball)"
    timeout 1200 debootstrap --arch="$arch" --variant=minbase --include="$packages" \
        "$suite" "$build" "$(mirror)" >"$cache/debootstrap-$arch.log" 2>&1 ||
        { tail -n 20 "$cache/debootstrap-$arch.log" >&2 && exit 1; }
    tar -C "$build" --numeric-owner -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$build"
}

# --- the machine ------------------------------------------------------------------------------

root=
nspawn=
leader=
started_engine= # the private engine, when this run started it
cleanup() {
    if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then
        kill -TERM "$nspawn" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$nspawn" 2>/dev/null || break; sleep 1; done
    fi
    # The machine's init ends its whole PID namespace; under qemu-user it may not have heard
    # nspawn's request to power off, and would live on after nspawn.
    if [ -n "$leader" ]; then kill -KILL "$leader" 2>/dev/null || true; fi
    if [ -n "$nspawn" ]; then
        kill -KILL "$nspawn" 2>/dev/null || true
        wait "$nspawn" 2>/dev/null || true
    fi
    if [ -n "$root" ]; then
        # nspawn's mounts live in its own namespace; anything left under the root goes first.
        grep -o " ${root}[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n 1 umount -l || true
        rm -rf --one-file-system "$root"
    fi
    if [ -n "$registered_qemu" ]; then echo -1 >"$registered_qemu" || true; fi
    if [ -n "$mounted_binfmt" ]; then umount "$mounted_binfmt" || true; fi
    if [ -n "$started_engine" ]; then tests/env.sh down >/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs a command inside the machine, as root, within a deadline (default 60 s).
inside() {
    local limit=60
    if [ "$1" = -t ]; then limit=$2 && shift 2; fi
    timeout "$limit" nsenter --target "$leader" --all -- \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}

prepare_root() {
    root=$(mktemp -d "$cache/root-$arch.XXXXXX")
    tar -C "$root" -xzf "$tarball"
    echo cld-check >"$root/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\tcld-check\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
        >"$root/etc/hosts"
    ln -sf /dev/null "$root/etc/systemd/system/e2scrub_reap.service"
    mkdir -p "$root/etc/docker" "$root/root/debs"
    echo '{"iptables":false,"ip6tables":false,"bridge":"none","storage-driver":"vfs"}' \
        >"$root/etc/docker/daemon.json"
    cp "$deb" "$root/root/debs/container-logd.deb"
    bumped_deb "$root/root/debs/container-logd-bumped.deb"
    if [ "$arch" = armhf ]; then
        # The host engine's group, by number, so the socket bound in is readable by it.
        local gid
        gid=$(stat -c %g "$engine_dir/docker.sock")
        chroot "$root" groupadd --system --gid "$gid" docker
    fi
}

# The same package with a higher version: apt takes it as an upgrade.
bumped_deb() {
    local tmp
    tmp=$(mktemp -d)
    dpkg-deb -R "$deb" "$tmp/pkg"
    sed -i "s/^Version: .*/&+check1/" "$tmp/pkg/DEBIAN/control"
    dpkg-deb -b "$tmp/pkg" "$1" >/dev/null
    rm -rf "$tmp"
}

boot() {
    local binds=()
    [ "$arch" = armhf ] && binds=(--bind="$engine_dir:/run/engine")
    SYSTEMD_SECCOMP=0 SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn --boot --register=no \
        --keep-unit --capability=all --private-network --console=read-only -D "$root" \
        "${binds[@]}" >"$cache/nspawn-$arch.log" 2>&1 &
    nspawn=$!
    for _ in $(seq 1 100); do
        leader=$(pgrep -P "$nspawn" -x systemd || true)
        [ -n "$leader" ] && break
        sleep 0.2
    done
    [ -n "$leader" ] || { echo "$0: the machine did not start; see $cache/nspawn-$arch.log" >&2 && exit 1; }
    local state
    wait_for 60 system_answers || true
    state=$(inside -t 180 systemctl is-system-running --wait || true)
    note "machine up in $((SECONDS - t0)) s: systemd says $state"
}

# systemd in the machine answers on its bus (is-system-running --wait needs that first).
system_answers() { [ -n "$(inside systemctl is-system-running 2>/dev/null || true)" ]; }

# --- helpers for the checks -------------------------------------------------------------------

prop() { inside systemctl show -P "$1" "$unit"; }
active() { [ "$(inside systemctl is-active "$unit" || true)" = active ]; }
status_is() { [[ "$(prop StatusText)" == *"$1"* ]]; }
health_code() { inside curl -s -o /dev/null -w '%{http_code}' "$health" || true; }
health_is() { [ "$(health_code)" = "$1" ]; }
journal() { inside journalctl -q --no-pager -u "$unit" "$@"; }
now() { inside date +%s; }

# wait_for SECONDS COMMAND…: true as soon as COMMAND succeeds, false after SECONDS.
wait_for() {
    local until=$((SECONDS + $1))
    shift
    until "$@"; do
        [ $SECONDS -lt $until ] || return 1
        sleep 1
    done
}

# amd64: the machine's own dockerd, socket unit included (it would start dockerd on a connect).
# armhf: the host engine's socket, bound in at /run/engine, linked where DOCKER_HOST points.
engine_off() {
    if [ "$arch" = amd64 ]; then
        inside systemctl stop docker.socket docker.service
    else
        inside rm -f /run/docker.sock
    fi
}
engine_on() {
    if [ "$arch" = amd64 ]; then
        inside systemctl start docker.socket docker.service
    else
        inside ln -sf /run/engine/docker.sock /run/docker.sock
    fi
}
docker_cmd() {
    if [ "$arch" = amd64 ]; then
        inside docker "$@"
    else
        timeout 60 docker -H "unix://$engine_dir/docker.sock" "$@"
    fi
}

# apt-get install of a package file in the machine; prints apt's output, returns its status.
apt_install() {
    inside -t 180 apt-get install -y --no-install-recommends "$1" 2>&1
}

# --- the checks -------------------------------------------------------------------------------

check_install_before_engine() {
    engine_off
    local t=$SECONDS out rc=0
    out=$(apt_install /root/debs/container-logd.deb) || rc=$?
    local took=$((SECONDS - t))
    if [ $rc = 0 ] && [ $took -le 30 ]; then
        ok "install with no engine running: apt install returned 0 in $took s"
    else
        bad "install with no engine running: apt install returned $rc in $took s"
        echo "$out" | tail -n 8 | indent
    fi
    if active && status_is "waiting for the engine"; then
        ok "READY=1 without the engine: active, status \"$(prop StatusText)\""
    else
        bad "not ready without the engine: $(inside systemctl is-active $unit || true), status \"$(prop StatusText)\""
    fi
    local body
    body=$(inside curl -s "$health" || true)
    if health_is 503 && [[ $body == *'"connected":false'* ]]; then
        ok "health without the engine: 503, docker.connected false"
    else
        bad "health without the engine: $(health_code) $body"
    fi
}

check_engine_comes() {
    engine_on
    local t=$SECONDS
    if wait_for 60 health_is 200; then
        ok "the engine comes: followed after $((SECONDS - t)) s (health 200)"
    else
        bad "the engine came but health is still $(health_code) after 60 s"
    fi
    if active && wait_for 30 status_is "following" && [ "$(prop NRestarts)" = 0 ]; then
        ok "READY: active, NRestarts 0, status \"$(prop StatusText)\""
    else
        bad "READY: $(inside systemctl is-active $unit || true), NRestarts $(prop NRestarts), status \"$(prop StatusText)\""
    fi
}

check_journal_priorities() {
    local since
    since=$(now)
    inside systemctl restart mosquitto
    if wait_for 30 journal_warns "$since" >/dev/null; then
        ok "journald priority 4: \"$(journal_warns "$since" | head -n 1)\""
    else
        bad "no warning of the agent at priority 4 after a broker restart"
    fi
    local info warnings
    info=$(journal -p info..info)
    warnings=$(journal -p warning)
    if [[ $info == *'API listening'* ]] && [[ $warnings != *'API listening'* ]]; then
        ok "journald priority 6: info lines are not warnings"
    else
        bad "info lines are not at priority 6"
    fi
}
journal_warns() { journal -p warning..warning -o cat --since "@$1" | grep mqtt; }

# Seccomp's filtered calls fail silently with EPERM (SystemCallErrorNumber=EPERM): for the
# workload they kill instead, so a filtered call shows as SIGSYS, a restart and a kernel
# audit line (type=1326).
seccomp_kill() {
    local dir=/etc/systemd/system/$unit.service.d
    if [ "$1" = on ]; then
        inside sh -c "mkdir -p $dir && printf '[Service]\nSystemCallErrorNumber=kill\n' >$dir/seccomp-kill.conf"
    else
        inside rm -f "$dir/seccomp-kill.conf"
    fi
    inside systemctl daemon-reload
    inside systemctl restart "$unit"
    wait_for 60 health_is 200 || true
}

# A container image from the machine's own dash, sleep and libc: there is no registry here.
container_image() {
    if [ "$arch" = amd64 ]; then
        inside sh -c 'tar -chf - -C / usr/bin/dash usr/bin/sleep usr/lib/x86_64-linux-gnu/libc.so.6 \
            lib64/ld-linux-x86-64.so.2 | docker import - cld-sh >/dev/null'
        echo cld-sh /usr/bin/dash
    else
        echo cld-busybox sh # tests/env.sh builds it in the host engine
    fi
}

check_workload() {
    seccomp_kill on
    local pid restarts image name=cld-talker-$$
    pid=$(prop MainPID)
    restarts=$(prop NRestarts)
    dmesg_mark=$(dmesg 2>/dev/null | wc -l || echo 0)
    read -r -a image <<<"$(container_image)"
    inside systemd-run --quiet --unit=cld-sub sh -c \
        'exec mosquitto_sub -v -t "container-manager/logs/#" >/root/sub.txt 2>&1'
    # shellcheck disable=SC2016 # the container's shell expands it
    docker_cmd run -d --name "$name" --network none "${image[@]}" -c \
        'echo hello from the workload; i=0; while [ $i -lt 100 ]; do i=$((i+1)); echo "tick $i"; sleep 0.05; done; echo "warning: done" >&2; sleep 600' >/dev/null
    if wait_for 60 ticks_in 100 -r /var/lib/container-logd/logs >/dev/null; then
        ok "workload: all 100 tick lines of a container reach /var/lib/container-logd/logs"
    else
        bad "workload: $(ticks_in 0 -r /var/lib/container-logd/logs) of 100 tick lines in /var/lib/container-logd/logs"
    fi
    if wait_for 30 ticks_in 100 /root/sub.txt >/dev/null; then
        ok "workload: and mosquitto"
    else
        bad "workload: $(ticks_in 0 /root/sub.txt) of 100 tick lines on mosquitto"
    fi
    workload_more "$name"
    seccomp_verdict "$pid" "$restarts"
}

# ticks_in N [-r] PATH: prints how many tick lines PATH holds; true when N or more.
ticks_in() {
    local n
    n=$({ inside grep -ohs "${@:2}" -e '"tick [0-9]*"' || true; } | sort -u | wc -l)
    echo "$n"
    [ "$n" -ge "$1" ]
}

# More of the agent's paths under the filter: the API, SIGHUP, a container's end.
workload_more() {
    inside curl -sf "http://127.0.0.1:7780/api/v1/logs?q=tick&limit=5" >/dev/null || bad "API logs"
    inside curl -sf http://127.0.0.1:7780/metrics >/dev/null || bad "API metrics"
    inside systemctl kill -s HUP "$unit"
    wait_for 60 inside grep -qs 'warning: done' -r /var/lib/container-logd/logs || true
    docker_cmd rm -f "$1" >/dev/null
    sleep 3
}

# The detection itself: a unit whose filter kills on a harmless call (uname) shows up.
seccomp_probe() {
    inside systemd-run --wait --quiet --unit=cld-seccomp-probe -p SystemCallFilter=~uname \
        -p SystemCallErrorNumber=kill uname >/dev/null 2>&1 || true
    local j
    j=$(inside journalctl -q --no-pager -u cld-seccomp-probe)
    if [[ $j == *status=31/SYS* ]]; then
        note "seccomp detection works: a probe unit's filtered uname killed it (status=31/SYS$(probe_audit))"
    else
        bad "seccomp probe: a filtered call went unseen: $j"
    fi
}

probe_audit() {
    local kernel
    kernel=$(dmesg 2>/dev/null | grep 'type=1326' || true)
    if [[ $kernel == *'comm="uname"'* ]]; then
        echo ", and audit type=1326 in the kernel log"
    fi
}

seccomp_verdict() {
    local filter sys
    if [ "$(prop MainPID)" = "$1" ] && [ "$(prop NRestarts)" = "$2" ] && active; then
        ok "workload: the agent kept running through it (same process, no restart)"
    else
        bad "workload: MainPID $1 -> $(prop MainPID), NRestarts $2 -> $(prop NRestarts)"
    fi
    filter=$(inside sed -n 's/^Seccomp:[[:space:]]*//p' "/proc/$(prop MainPID)/status" || true)
    if [ "$arch" = armhf ]; then
        note "seccomp not checked: qemu-user applies no filter (the agent's Seccomp: ${filter:-?})"
        return
    fi
    sys=$(journal --since "-10min" | grep -Ec 'status=31/SYS|SIGSYS' || true)
    if [ "$filter" = 2 ] && [ "$sys" = 0 ] && [ -z "$(host_audit_lines)" ]; then
        ok "seccomp never fired: filter in force (Seccomp: 2, SystemCallErrorNumber=$(prop SystemCallErrorNumber), i.e. kill), no SIGSYS, no audit type=1326"
    else
        bad "seccomp: the agent's Seccomp: ${filter:-?}, SIGSYS lines $sys"
        host_audit_lines | indent
    fi
    seccomp_probe
}
# The kernel's audit lines for the agent (type=1326: seccomp) since the workload began.
host_audit_lines() {
    dmesg 2>/dev/null | tail -n +"$((dmesg_mark + 1))" | grep 'type=1326' | grep 'container-logd' || true
}
dmesg_mark=0

check_watchdog() {
    local pid restarts t=$SECONDS
    pid=$(prop MainPID)
    restarts=$(prop NRestarts)
    inside kill -STOP "$pid"
    if wait_for 90 restarted "$restarts" "$pid"; then
        ok "watchdog: a stopped agent (SIGSTOP) was restarted after $((SECONDS - t)) s (WatchdogSec=$(prop WatchdogUSec))"
    else
        bad "watchdog: no restart within 90 s of SIGSTOP (NRestarts $(prop NRestarts))"
    fi
    seccomp_kill off
}
restarted() { [ "$(prop NRestarts)" -gt "$1" ] && [ "$(prop MainPID)" != "$2" ] && active; }

# The README's recipe: `container-logd check` as the service's user, with its environment.
check_recipe() {
    local out rc=0
    # shellcheck disable=SC2016 # expanded inside the machine
    out=$(inside sh -c 'systemd-run --pipe --wait --quiet -p User=container-logd \
        -p "$(systemctl show -p Environment container-logd)" \
        -p EnvironmentFile=-/etc/default/container-logd container-logd check' 2>&1) || rc=$?
    if [ $rc = 0 ] && [ "$(grep -c '^✓ \(log\|state\) directory' <<<"$out")" = 2 ]; then
        ok "README recipe: container-logd check as the service sees it: all ✓"
    else
        bad "README recipe: exit $rc"
    fi
    printf '%s\n' "$out" | indent
}

check_upgrade() {
    inside sed -i 's/^#LOG_LEVEL=info$/LOG_LEVEL=debug/' /etc/default/$unit
    local inv out rc=0
    inv=$(prop InvocationID)
    out=$(apt_install /root/debs/container-logd-bumped.deb) || rc=$?
    local now_version
    now_version=$(inside dpkg-query -W -f "\${Version}" $unit)
    if [ $rc = 0 ] && [ "$now_version" = "$version+check1" ] && kept_edit &&
        [ "$(prop InvocationID)" != "$inv" ] && active; then
        ok "upgrade to $now_version: the edited settings file is kept, the service restarted"
    else
        bad "upgrade: apt $rc, version $now_version, edit kept: $(kept_edit && echo yes || echo no)"
        echo "$out" | tail -n 8 | indent
    fi
    inv=$(prop InvocationID)
    rc=0
    inside dpkg -i /root/debs/container-logd-bumped.deb >/dev/null 2>&1 || rc=$?
    if [ $rc = 0 ] && kept_edit && [ "$(prop InvocationID)" != "$inv" ] && active &&
        inside grep -qz '^LOG_LEVEL=debug$' "/proc/$(prop MainPID)/environ"; then
        ok "dpkg -i again: the edit is kept and in force (LOG_LEVEL=debug in the agent's environment), the service restarted"
    else
        bad "dpkg -i again: exit $rc, edit kept: $(kept_edit && echo yes || echo no)"
    fi
}
kept_edit() { inside grep -qx 'LOG_LEVEL=debug' /etc/default/$unit; }

check_purge() {
    local out rc=0
    out=$(inside -t 180 apt-get purge -y $unit 2>&1) || rc=$?
    local left=()
    for f in /var/lib/container-logd /etc/default/container-logd /usr/bin/container-logd; do
        inside test -e $f && left+=("$f")
    done
    if [ $rc = 0 ] && [ ${#left[@]} = 0 ] && [ "$(prop LoadState)" = not-found ]; then
        ok "purge removes /var/lib/container-logd, the settings file, the binary and the unit"
    else
        bad "purge: apt $rc, left: ${left[*]:-none}, unit $(prop LoadState)"
        echo "$out" | tail -n 5 | indent
    fi
    if inside getent passwd container-logd >/dev/null; then
        note "the container-logd user stays, as postrm says (Debian keeps system users)"
    fi
}

# A host with no engine group: the old unit (SupplementaryGroups=docker) looped on 216/GROUP.
check_no_engine_group() {
    engine_off
    inside gpasswd -d container-logd docker >/dev/null 2>&1 || true
    inside groupdel docker
    local since out rc=0
    since=$(now)
    out=$(apt_install /root/debs/container-logd.deb) || rc=$?
    if [ $rc = 0 ] && grep -q 'no engine group' <<<"$out"; then
        ok "install with no engine group: postinst says what to do"
        grep 'container-logd:' <<<"$out" | indent
    else
        bad "install with no engine group: apt $rc, no advice in its output"
    fi
    sleep 10
    if active && [ "$(prop NRestarts)" = 0 ] && ! journal --since "@$since" | grep -q '216/GROUP'; then
        ok "no engine group: no restart loop (active, NRestarts 0 after 10 s), status \"$(prop StatusText)\""
    else
        bad "no engine group: $(inside systemctl is-active $unit || true), NRestarts $(prop NRestarts)"
        journal --since "@$since" | tail -n 5 | indent
    fi
    engine_group_comes
}

# The engine and its group come later: reinstalling (as postinst advises) joins the group.
engine_group_comes() {
    if [ "$arch" = amd64 ]; then
        inside groupadd --system docker
    else
        inside groupadd --system --gid "$(stat -c %g "$engine_dir/docker.sock")" docker
    fi
    engine_on
    if wait_for 60 journal_hint; then
        ok "then the engine comes, its socket refusing the user: the journal says which group to join"
    else
        bad "the engine's socket refuses the user and the journal does not say what to do"
    fi
    inside dpkg -i /root/debs/container-logd.deb >/dev/null 2>&1 || true
    if wait_for 60 health_is 200 && [[ " $(inside id -nG container-logd) " == *" docker "* ]]; then
        ok "reinstalling (as postinst advised) joins the group, the engine is followed"
    else
        bad "after the group came and a reinstall: groups $(inside id -nG container-logd), health $(health_code)"
    fi
}

journal_hint() { [[ "$(journal -p err -o cat)" == *"adduser container-logd"* ]]; }

main() {
    need_tools
    [ "$arch" = armhf ] && register_qemu
    if [ "$arch" = armhf ]; then
        # Shared with the tests when they run: taken down at the end only if started here.
        local sock
        sock=$(tests/env.sh host | sed 's|^unix://||')
        if ! curl -sf --max-time 2 --unix-socket "$sock" http://docker/_ping >/dev/null 2>&1; then
            started_engine=1
        fi
        tests/env.sh up >/dev/null
        engine_dir=$(dirname "$sock")
    fi
    build_rootfs
    prepare_root
    boot
    check_install_before_engine
    check_engine_comes
    check_journal_priorities
    check_workload
    check_watchdog
    check_recipe
    check_upgrade
    check_purge
    check_no_engine_group
    echo "systemd-check $arch: $fails failed, in $((SECONDS - t0)) s"
    [ $fails = 0 ]
}

main
