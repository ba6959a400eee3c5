# lightwhale: two commands on a fresh machine.
#   make demo   set up everything, then show a container running (and, later, sleeping) under lightwhale
#   make test   set up everything, then run every test against the real stack
SHELL := /bin/bash
PREFIX ?= /usr/local
CARGO ?= cargo
SHIM := containerd-shim-lightwhale-v2
RELEASE_BIN := target/release/$(SHIM)

.PHONY: all build deps install images test test-unit lint demo bench clean uninstall

all: build

build:
	$(CARGO) build --release --workspace

deps:
	bash scripts/install-deps.sh

# containerd finds shims by name on its PATH: containerd-shim-<name>-<version>.
install: build
	install -D -m 0755 $(RELEASE_BIN) $(DESTDIR)$(PREFIX)/bin/$(SHIM)
	install -D -m 0755 target/release/lightwhale $(DESTDIR)$(PREFIX)/bin/lightwhale
	install -D -m 0755 target/release/lightwhale-criu-tar $(DESTDIR)$(PREFIX)/libexec/lightwhale/criu-helpers/tar
	install -d -m 0755 $(DESTDIR)$(PREFIX)/share/lightwhale/criu-profiles
	install -m 0644 criu-profiles/*.conf $(DESTDIR)$(PREFIX)/share/lightwhale/criu-profiles/

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/$(SHIM) $(DESTDIR)$(PREFIX)/bin/lightwhale
	rm -rf $(DESTDIR)$(PREFIX)/share/lightwhale $(DESTDIR)$(PREFIX)/libexec/lightwhale

images:
	bash scripts/make-test-images.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

# Unit tests need no root; the integration tests drive runc, CRIU, containerd and dockerd.
test-unit:
	$(CARGO) test --release --workspace --lib --bins

test: deps install images
	bash scripts/run-tests.sh

# Measurements, side by side in one run (QUICK=1: fewer samples, no 256 MiB case).
bench: deps install images
	python3 bench/measure.py $(if $(QUICK),--quick)

demo: deps install images
	bash scripts/demo.sh

clean:
	$(CARGO) clean
