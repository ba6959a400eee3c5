# lightwhale: two commands on a fresh machine.
#   make demo   set up everything, then show a container running (and, later, sleeping) under lightwhale
#   make test   set up everything, then run every test against the real stack
SHELL := /bin/bash
PREFIX ?= /usr/local
CARGO ?= cargo
SHIM := containerd-shim-lightwhale-v2
HOST_TRIPLE := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
# A non-PIE shim keeps its relocated read-only data in the shared file mapping instead of
# 450 KiB of private copy-on-write pages per shim: one shim per sleeping container makes
# that count (docs/design.md, "What a sleeping container costs"). Built with an explicit
# --target so the flag reaches our binaries, not the host's proc-macros; the tests build
# the same way (make test), sharing the compiled dependencies.
export LIGHTWHALE_CARGO_TARGET := $(HOST_TRIPLE)
export LIGHTWHALE_RUSTFLAGS := -C relocation-model=static
OUT := target/$(HOST_TRIPLE)/release
# CRIU starts the tar stand-in once per tmpfs on every wake: linked statically it skips
# the dynamic loader, 0.2 ms a start (its own target dir keeps the flags apart).
CRIU_TAR := target/static/$(HOST_TRIPLE)/release/lightwhale-criu-tar
CRIU_ACTION := target/static/$(HOST_TRIPLE)/release/lightwhale-criu-action

.PHONY: all build deps bench-deps install images installer-image test test-unit lint demo bench soak clean uninstall

all: build

build:
	RUSTFLAGS="$(LIGHTWHALE_RUSTFLAGS)" $(CARGO) build --release --workspace --target $(HOST_TRIPLE)
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release -p lightwhale-runtime-hooks \
	  --target $(HOST_TRIPLE) --target-dir target/static

deps:
	bash scripts/install-deps.sh

# containerd finds shims by name on its PATH: containerd-shim-<name>-<version>.
install: build
	install -D -m 0755 $(OUT)/$(SHIM) $(DESTDIR)$(PREFIX)/bin/$(SHIM)
	install -D -m 0755 $(OUT)/lightwhale $(DESTDIR)$(PREFIX)/bin/lightwhale
	install -D -m 0755 $(OUT)/lightwhale-cri $(DESTDIR)$(PREFIX)/bin/lightwhale-cri
	install -D -m 0755 $(CRIU_TAR) $(DESTDIR)$(PREFIX)/libexec/lightwhale/criu-helpers/tar
	install -D -m 0755 $(CRIU_ACTION) $(DESTDIR)$(PREFIX)/libexec/lightwhale/criu-helpers/action
	install -d -m 0755 $(DESTDIR)$(PREFIX)/share/lightwhale/criu-profiles
	install -m 0644 criu-profiles/*.conf $(DESTDIR)$(PREFIX)/share/lightwhale/criu-profiles/

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/$(SHIM) $(DESTDIR)$(PREFIX)/bin/lightwhale $(DESTDIR)$(PREFIX)/bin/lightwhale-cri
	rm -rf $(DESTDIR)$(PREFIX)/share/lightwhale $(DESTDIR)$(PREFIX)/libexec/lightwhale

images:
	bash scripts/make-test-images.sh

# The node installer's image, built offline FROM scratch (deploy/node/Dockerfile): the
# binaries above, this host's CRIU with its libraries, and deploy/node/lightwhale-node;
# tagged lightwhale/node-installer:dev and :<version> (deploy/kubernetes/daemonset.yaml).
installer-image: build
	bash deploy/node/build-image.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	python3 scripts/check-workspace.py

# Without root: unit tests, and the engine's state machine against a fake runtime. The
# tests that need the real stack are #[ignore]d there (reported as ignored, not passed).
test-unit:
	$(CARGO) test --release --workspace

test: deps install images
	bash scripts/run-tests.sh

# Measurements, side by side in one run (QUICK=1: fewer samples, no 1 GiB case, N=10).
bench-deps:
	bash scripts/install-deps.sh --bench

bench: bench-deps install images
	/usr/bin/python3 bench/measure.py $(if $(QUICK),--quick)

# Soak: CYCLES forced sleep/wake cycles of one stateful service under a steady client load;
# fails on any failed request, lost state, or growth of the shim's fds, threads, memory or
# the host's mounts after warm-up (CI: python3 scripts/soak.py --cycles 50).
CYCLES ?= 1000
soak: install images
	/usr/bin/python3 scripts/soak.py --cycles $(CYCLES)

demo: deps install images
	bash scripts/demo.sh

clean:
	$(CARGO) clean
