# Makefile of container-logd: builds, tests, cross-compiles for the Raspberry Pi, packages and
# installs. Every variable can be overridden: make CARGO=cargo-1.80 PREFIX=/usr DESTDIR=/tmp/root
#
#   make / make build   release binary for this machine
#   make run            runs the agent against this machine's engine, data under ./data
#   make demo           tests/demo.sh
#   make test           installs missing test tools (as root), fmt + clippy + every test
#   make bench          bench/run.sh
#   make fuzz           every fuzz target FUZZ_SECS (30) seconds from its seed corpus (fuzz/run.sh)
#   make fuzz-corpus    rewrites the seed corpus fuzz/corpus from tests/data
#   make deb            container-logd_<version>_<arch>.deb for this machine
#   make armv7 armv6 aarch64   static Pi binaries (packaging/cross.sh)
#   make arm-check      runs the Pi binaries under qemu (and a real ARMv7 session)
#   make unit-check     systemd-analyze verify + security score of the unit
#   make systemd-check  the .deb under a real systemd (PID 1 in systemd-nspawn), as root
#   make systemd-check-armhf   the same for the armhf .deb, under qemu-user (slow)
#   make deb-armhf deb-arm64   .debs from the armv7 and aarch64 binaries
#   make install        installs binary, unit and settings under $(DESTDIR)$(PREFIX)
#   make clean          removes build output (never ./data)

CARGO ?= cargo
DESTDIR ?=
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR ?= /lib/systemd/system
INSTALL ?= install

CARGO_DEB_VERSION ?= 3.8.0
CARGO_FUZZ_VERSION ?= 0.13.2
TARGET_DIR ?= $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),target)
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
HOST_ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEB_DIR ?= $(TARGET_DIR)/debian
DEB ?= $(DEB_DIR)/container-logd_$(VERSION)_$(HOST_ARCH).deb
DEB_ARMHF ?= $(DEB_DIR)/container-logd_$(VERSION)_armhf.deb
DEB_ARM64 ?= $(DEB_DIR)/container-logd_$(VERSION)_arm64.deb

# `make run` settings; ARGS go to the agent, e.g. make run ARGS=check
RUN_DATA ?= ./data
ARGS ?=
# Extra arguments for `cargo test`, e.g. make test TEST_ARGS='packaging'
TEST_ARGS ?=
# `make fuzz`: seconds per target, targets run at once, which targets (empty: all).
FUZZ_SECS ?= 30
FUZZ_JOBS ?= 1
FUZZ_TARGETS ?=

ARMV7 := armv7-unknown-linux-gnueabihf
ARMV6 := arm-unknown-linux-gnueabi
AARCH64 := aarch64-unknown-linux-gnu

.PHONY: all build run demo test lint bench fuzz fuzz-corpus cargo-fuzz deb deb-armhf deb-arm64 cargo-deb \
	armv7 armv6 aarch64 arm arm-check unit-check systemd-check systemd-check-armhf \
	install uninstall clean

all: build

build:
	$(CARGO) build --release --locked

run:
	mkdir -p $(RUN_DATA)/logs $(RUN_DATA)/state
	LOG_DIR=$(RUN_DATA)/logs STATE_DIR=$(RUN_DATA)/state $(CARGO) run --release --locked -- $(ARGS)

demo:
	tests/demo.sh

bench:
	bench/run.sh

# Root on Debian: tests/env.sh deps installs what is missing. The .deb is built first and handed
# to tests/packaging.rs; the private engine the tests start is stopped whatever their outcome,
# and the tests' exit status is kept.
test:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		tests/env.sh deps; \
	else \
		echo "make test: not root on Debian, skipping tests/env.sh deps"; \
	fi
	$(CARGO) fmt --check
	$(CARGO) fmt --check --manifest-path fuzz/Cargo.toml
	$(CARGO) clippy --all-targets --locked -- -D warnings
	$(MAKE) deb
	status=0; \
	CARGO_DEB_PATH="$(abspath $(DEB))" $(CARGO) test --locked $(TEST_ARGS) || status=$$?; \
	tests/env.sh down || echo "make test: tests/env.sh down failed"; \
	exit $$status

lint:
	$(CARGO) fmt --check
	$(CARGO) fmt --check --manifest-path fuzz/Cargo.toml
	$(CARGO) clippy --all-targets --locked -- -D warnings

# cargo-fuzz, pinned, installed only when missing (about 70 s to build here).
cargo-fuzz:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || \
		$(CARGO) install --locked cargo-fuzz@$(CARGO_FUZZ_VERSION)

# The fuzz targets (fuzz/README.md), on stable Rust; fails on a crash, a mismatch with a
# reference copy or a hang. Never grows fuzz/corpus.
fuzz: cargo-fuzz
	CARGO="$(CARGO)" FUZZ_SECS=$(FUZZ_SECS) FUZZ_JOBS=$(FUZZ_JOBS) fuzz/run.sh $(FUZZ_TARGETS)

fuzz-corpus:
	python3 fuzz/seed_corpus.py

# cargo-deb, pinned, installed only when missing.
cargo-deb:
	@$(CARGO) deb --version >/dev/null 2>&1 || \
		$(CARGO) install --locked cargo-deb@$(CARGO_DEB_VERSION)

deb: cargo-deb
	$(CARGO) deb --locked --output $(DEB)

deb-armhf: cargo-deb armv7
	$(CARGO) deb --target $(ARMV7) --no-build --no-strip --output $(DEB_ARMHF)

deb-arm64: cargo-deb aarch64
	$(CARGO) deb --target $(AARCH64) --no-build --no-strip --output $(DEB_ARM64)

armv7:
	CARGO=$(CARGO) packaging/cross.sh $(ARMV7)

armv6:
	CARGO=$(CARGO) packaging/cross.sh $(ARMV6)

aarch64:
	CARGO=$(CARGO) packaging/cross.sh $(AARCH64)

arm: armv7 armv6 aarch64

# systemd-analyze verify and the offline security score of the unit (needs a built binary).
unit-check:
	TARGET_DIR=$(TARGET_DIR) packaging/check-unit.sh

# The .deb installed with apt in a Debian bookworm machine booted with systemd as PID 1
# (systemd-nspawn, private network): READY, journald priorities, watchdog, seccomp under a
# workload, upgrade, purge, no engine or no engine group. Root; about 1 minute, the first run 2
# (it debootstraps the machine's root file system into $(TARGET_DIR)/systemd-check/).
systemd-check: deb
	TARGET_DIR=$(TARGET_DIR) DEB=$(DEB) packaging/systemd-check.sh $(HOST_ARCH)

# The same checks for the armhf .deb, every armhf binary run by qemu-user (binfmt_misc), with
# the private engine of tests/env.sh as the engine. About 2 minutes, the first run 6 (plus the
# ARM cross build if it is not there: about 5 minutes here, 10 on a cold cargo cache).
systemd-check-armhf: deb-armhf
	TARGET_DIR=$(TARGET_DIR) DEB=$(DEB_ARMHF) packaging/systemd-check.sh armhf

# Checks whichever Pi binaries have been built (make armv7 arm-check checks one), then runs a
# short real session of the ARMv7 one against a private engine and broker.
arm-check:
	TARGET_DIR=$(TARGET_DIR) packaging/qemu-check.sh
	@if [ -x $(TARGET_DIR)/$(ARMV7)/release/container-logd ]; then \
		TARGET_DIR=$(TARGET_DIR) packaging/qemu-session.sh; \
	fi

install: build
	$(INSTALL) -D -m 755 $(TARGET_DIR)/release/container-logd $(DESTDIR)$(BINDIR)/container-logd
	$(INSTALL) -d $(DESTDIR)$(UNITDIR)
	sed 's|^ExecStart=/usr/bin/container-logd|ExecStart=$(BINDIR)/container-logd|' \
		etc/container-logd.service > $(DESTDIR)$(UNITDIR)/container-logd.service
	chmod 644 $(DESTDIR)$(UNITDIR)/container-logd.service
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/default/container-logd ]; then \
		echo "keeping $(DESTDIR)$(SYSCONFDIR)/default/container-logd"; \
	else \
		$(INSTALL) -D -m 644 etc/default/container-logd $(DESTDIR)$(SYSCONFDIR)/default/container-logd; \
	fi
	@echo "then: adduser --system --group --no-create-home container-logd;" \
		"systemctl daemon-reload; systemctl enable --now container-logd"

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/container-logd $(DESTDIR)$(UNITDIR)/container-logd.service

clean:
	$(CARGO) clean
