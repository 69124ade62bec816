#!/usr/bin/env bash
# Builds a static release binary of container-logd for one Raspberry Pi target:
#   packaging/cross.sh armv7-unknown-linux-gnueabihf   (Pi 2/3/4/Zero 2, 32-bit OS)
#   packaging/cross.sh arm-unknown-linux-gnueabi       (Pi Zero/1, ARMv6)
#   packaging/cross.sh aarch64-unknown-linux-gnu       (64-bit OS)
# Output: ${CARGO_TARGET_DIR:-target}/TRIPLE/release/container-logd, glibc linked statically
# (+crt-static), so it runs on any Pi OS release.
#
# Two ways to get a standard library for the target:
#   - rustup has it (`rustup target add TRIPLE`): plain `cargo build --target`;
#   - otherwise Debian's rustc-web with its matching rust-web-src builds std from source
#     (-Zbuild-std), for machines that cannot download rustup targets.
# Either way the C parts (ring) are compiled and everything linked with the Debian cross gcc.
set -euo pipefail

usage() {
    echo "usage: $0 armv7-unknown-linux-gnueabihf|arm-unknown-linux-gnueabi|aarch64-unknown-linux-gnu" >&2
    exit 2
}

[ $# -eq 1 ] || usage
triple=$1
case "$triple" in
armv7-unknown-linux-gnueabihf) gcc_prefix=arm-linux-gnueabihf apt_pkgs="gcc-arm-linux-gnueabihf libc6-dev-armhf-cross" ;;
arm-unknown-linux-gnueabi) gcc_prefix=arm-linux-gnueabi apt_pkgs="gcc-arm-linux-gnueabi libc6-dev-armel-cross" ;;
aarch64-unknown-linux-gnu) gcc_prefix=aarch64-linux-gnu apt_pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;;
*) usage ;;
esac

cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}

if ! command -v "$gcc_prefix-gcc" >/dev/null; then
    echo "$0: $gcc_prefix-gcc not found; install: apt-get install -y $apt_pkgs" >&2
    exit 1
fi

# cargo's per-target variables: upper case, '-' becomes '_'.
tvar=$(echo "$triple" | tr 'a-z-' 'A-Z_')
cvar=$(echo "$triple" | tr '-' '_')
export "CARGO_TARGET_${tvar}_LINKER=$gcc_prefix-gcc"
export "CARGO_TARGET_${tvar}_RUSTFLAGS=-C target-feature=+crt-static"
export "CC_${cvar}=$gcc_prefix-gcc"
export "AR_${cvar}=$gcc_prefix-ar"

build_args=(build --release --locked --target "$triple" --bin container-logd)

if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
    echo "cross.sh: $triple from rustup's standard library" >&2
    "$CARGO" "${build_args[@]}"
else
    debian_rustc=${DEBIAN_RUSTC:-/usr/bin/rustc}
    sysroot=$("$debian_rustc" --print sysroot 2>/dev/null || true)
    if [ -z "$sysroot" ] || [ ! -d "$sysroot/lib/rustlib/src/rust/library" ]; then
        echo "$0: no standard library for $triple: either 'rustup target add $triple'," >&2
        echo "    or apt-get install -y rustc-web rust-web-src (std is then built from source)" >&2
        exit 1
    fi
    echo "cross.sh: $triple with -Zbuild-std ($("$debian_rustc" --version))" >&2
    RUSTC=$debian_rustc RUSTC_BOOTSTRAP=1 \
        "$CARGO" "${build_args[@]}" -Zbuild-std=std,panic_abort
fi

bin=${CARGO_TARGET_DIR:-target}/$triple/release/container-logd
if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
    echo "$0: $bin is dynamically linked" >&2
    exit 1
fi
ls -l "$bin"
