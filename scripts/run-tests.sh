#!/usr/bin/env bash
# Runs every test: unit tests, the engine's runc/CRIU tests, and the end-to-end tests
# against dockerd and containerd. Expects `make deps install images` to have run (make
# test does that). The end-to-end tests use unique names and ports, so they run in
# parallel threads; they spend their time waiting on the daemons, not on the 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
threads=${LIGHTWHALE_TEST_THREADS:-6}
# make test passes the build's target and flags, so the tests reuse `make install`'s build.
target=()
[ -n "${LIGHTWHALE_CARGO_TARGET:-}" ] && target=(--target "$LIGHTWHALE_CARGO_TARGET")
RUSTFLAGS="${LIGHTWHALE_RUSTFLAGS:-${RUSTFLAGS:-}}" \
  cargo test --release --workspace "${target[@]}" --no-fail-fast -- --test-threads="$threads"
echo "make test: all tests took $(( $(date +%s) - start )) s"
