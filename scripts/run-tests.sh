#!/usr/bin/env bash
# Runs every test: unit tests, the engine's state machine (fake runtime), the engine
# against runc and CRIU, and the end-to-end tests against dockerd and containerd.
# Expects `make deps install images` to have run (make test does that).
#
# The tests that need the real stack are #[ignore]d in the source, so that a plain
# `cargo test` on a machine without it reports them as ignored rather than passed; here
# they run (--include-ignored), and a run that ignored or skipped anything fails.
# The end-to-end tests use unique names and ports, so they run in parallel threads; they
# spend their time waiting on the daemons, not on the 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
threads=${LIGHTWHALE_TEST_THREADS:-6}
# make test passes the build's target and flags, so the tests reuse `make install`'s build.
target=()
[ -n "${LIGHTWHALE_CARGO_TARGET:-}" ] && target=(--target "$LIGHTWHALE_CARGO_TARGET")
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
RUSTFLAGS="${LIGHTWHALE_RUSTFLAGS:-${RUSTFLAGS:-}}" \
  cargo test --release --workspace "${target[@]}" --no-fail-fast -- \
  --include-ignored --test-threads="$threads" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
ignored=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^ignored/) n += $i } END { print n + 0 }' "$log")
passed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^passed/) n += $i } END { print n + 0 }' "$log")
echo "make test: $passed passed, $ignored ignored, in $(( $(date +%s) - start )) s"
if [ "$ignored" -ne 0 ]; then
  echo "make test: $ignored test(s) did not run; every test must run here" >&2
  exit 1
fi
exit "$status"
