#!/usr/bin/env bash
# Runs every test: unit tests, the engine's state machine (fake runtime), the engine
# against runc and CRIU, the end-to-end tests against dockerd and containerd, and a
# 50-cycle soak. Expects `make deps install images` to have run (make test does that).
#
# The tests that need the real stack are #[ignore]d in the source, so that a plain
# `cargo test` on a machine without it reports them as ignored rather than passed; here
# they run (--include-ignored), and a run that ignored or skipped anything fails.
#
# Each test binary runs on its own, and what lightwhale keeps on the node (checkpoint
# images, live status files) is listed before and after it: a binary that leaves any of
# it behind fails the run, naming what it left. Within a binary the end-to-end tests use
# unique names and ports and run in parallel threads (they wait on the daemons, not on
# the 2 cores); cargo never runs two binaries at once, which node.rs relies on (it
# restarts the daemons).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
threads=${LIGHTWHALE_TEST_THREADS:-6}
# make test passes the build's target and flags, so the tests reuse `make install`'s build.
target=()
[ -n "${LIGHTWHALE_CARGO_TARGET:-}" ] && target=(--target "$LIGHTWHALE_CARGO_TARGET")
export RUSTFLAGS="${LIGHTWHALE_RUSTFLAGS:-${RUSTFLAGS:-}}"

bins=$(cargo test --release --workspace "${target[@]}" --no-run --message-format=json 2>/dev/null \
  | jq -r 'select(.reason == "compiler-artifact" and .profile.test == true and .executable != null) | .executable')
[ -n "$bins" ] || { echo "make test: no test binaries were built" >&2; exit 1; }

# What lightwhale keeps on the node, one path per line.
kept() {
  { find /var/lib/lightwhale -mindepth 2 -maxdepth 2 2>/dev/null
    find /run/lightwhale/containers -name '*.json' 2>/dev/null; } | sort
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
failed=()
for bin in $bins; do
  name=$(basename "$bin" | sed 's/-[0-9a-f]*$//')
  before=$(kept)
  set +e
  "$bin" --include-ignored --test-threads="$threads" 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
  set -e
  [ "$status" -eq 0 ] || failed+=("$name")
  left=$(comm -13 <(printf '%s\n' "$before") <(kept) | sed '/^$/d')
  if [ -n "$left" ]; then
    echo "make test: $name left behind:" >&2
    printf '  %s\n' $left >&2
    failed+=("$name (left files behind)")
  fi
done

ignored=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^ignored/) n += $i } END { print n + 0 }' "$log")
passed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^passed/) n += $i } END { print n + 0 }' "$log")
echo "make test: $passed passed, $ignored ignored, in $(( $(date +%s) - start )) s"
if [ "$ignored" -ne 0 ]; then
  echo "make test: $ignored test(s) did not run; every test must run here" >&2
  failed+=("ignored tests")
fi

# The soak, short: 50 sleep/wake cycles under load, 0 failed requests, state monotonic,
# no growth in the shim's fds, threads or memory after warm-up, nothing left behind.
soak_start=$(date +%s)
if ! /usr/bin/python3 scripts/soak.py --cycles 50 --json bench/results/soak-ci.json; then
  failed+=("soak")
fi
echo "make test: soak (50 cycles) took $(( $(date +%s) - soak_start )) s"

if [ ${#failed[@]} -ne 0 ]; then
  echo "make test: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "make test: all passed in $(( $(date +%s) - start )) s"
