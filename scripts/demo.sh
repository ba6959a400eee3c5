#!/usr/bin/env bash
# The main job, shown: a web service under io.containerd.lightwhale.v2 goes idle, sleeps
# (its memory written to a checkpoint, every process gone, Docker still says "Up"), and
# the next request wakes it with its in-memory state intact. Timings are printed, next
# to a cold start of the same service.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=${DOCKER:-/usr/bin/docker}
PY=lightwhale-test/python:latest
port=18080
name=lightwhale-demo

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() { $DOCKER rm -f "$name" lightwhale-demo-cold >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

say "start a python counter service (100 MiB of warm state) with a 3 s idle timeout"
t=$(date +%s%N)
id=$($DOCKER run -d --name "$name" --runtime lightwhale \
  --annotation lightwhale.io/idle-timeout=3s -e MEMORY_MIB=100 \
  -p "127.0.0.1:$port:8080" "$PY" python3 -c "$(cat examples/counter.py)")
until curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1; do sleep 0.02; done
echo "cold start (docker run -> first response): $(ms "$t") ms; the counter says $(curl -fsS "http://127.0.0.1:$port/")"
echo "counter: $(curl -fsS "http://127.0.0.1:$port/")"
lightwhale ps

say "idle... waiting for it to sleep"
until grep -q '"state": "asleep"' "/run/lightwhale/containers/moby/$id.json" 2>/dev/null; do sleep 0.2; done
lightwhale ps
echo "processes of the container: $(grep -l "$id" /proc/[0-9]*/cgroup 2>/dev/null | wc -l)"
echo "docker says: $($DOCKER ps --filter "name=$name" --format '{{.Status}}')"
echo "checkpoint images: $(du -sh "/var/lib/lightwhale/moby/$id/images" | cut -f1) (root only: $(stat -c %A "/var/lib/lightwhale/moby/$id"))"

say "a request wakes it"
t=$(date +%s%N)
value=$(curl -fsS "http://127.0.0.1:$port/")
echo "answer after $(ms "$t") ms: counter = $value (it kept counting: the memory came back)"
lightwhale ps

say "again, 5 times: sleep now, then one request"
for i in 1 2 3 4 5; do
  lightwhale sleep "$id" >/dev/null
  t=$(date +%s%N); value=$(curl -fsS "http://127.0.0.1:$port/"); w=$(ms "$t")
  printf '  cycle %d: slept in %s ms, woke and answered in %3d ms, counter = %s\n' "$i" \
    "$(sed -n 's/.*"last_sleep_ms": \([0-9]*\).*/\1/p' "/run/lightwhale/containers/moby/$id.json")" "$w" "$value"
done
echo

say "for comparison: a cold start of the same service under runc"
t=$(date +%s%N)
$DOCKER run -d --name lightwhale-demo-cold -e MEMORY_MIB=100 -p "127.0.0.1:$((port + 1)):8080" "$PY" \
  python3 -c "$(cat examples/counter.py)" >/dev/null
until curl -fsS "http://127.0.0.1:$((port + 1))/" >/dev/null 2>&1; do sleep 0.02; done
echo "runc: docker run -> first response: $(ms "$t") ms, and its counter starts again at 1"
echo
echo "Operators: lightwhale ps | sleep ID | wake ID | inspect ID.  Full numbers: make bench"
