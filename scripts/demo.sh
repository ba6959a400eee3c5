#!/usr/bin/env bash
# The main job: a container served by io.containerd.lightwhale.v2, next to the same
# container under the default runtime, with timings and the shims' memory.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=${DOCKER:-/usr/bin/docker}
IMAGE=lightwhale-test/busybox:latest
port=18080

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

cleanup() { $DOCKER rm -f lw-demo runc-demo >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

echo "== docker run --rm (5 runs each)"
for rt in runc lightwhale; do
  total=0
  for i in 1 2 3 4 5; do
    t=$(date +%s%N); $DOCKER run --rm --runtime "$rt" "$IMAGE" true; total=$(( total + $(ms "$t") ))
  done
  printf '  %-10s mean %4d ms\n' "$rt" $(( total / 5 ))
done

echo "== a web server under each runtime"
for rt in runc lightwhale; do
  name=$([ "$rt" = lightwhale ] && echo lw-demo || echo runc-demo)
  p=$([ "$rt" = lightwhale ] && echo $port || echo $((port + 1)))
  t=$(date +%s%N)
  $DOCKER run -d --name "$name" --runtime "$rt" -p "127.0.0.1:$p:80" "$IMAGE" httpd -f -p 80 -h /www >/dev/null
  until curl -fsS "http://127.0.0.1:$p/" >/dev/null 2>&1; do sleep 0.02; done
  printf '  %-10s docker run -> first HTTP response: %4d ms   (curl http://127.0.0.1:%d/ -> %s)\n' \
    "$rt" "$(ms "$t")" "$p" "$(curl -fsS "http://127.0.0.1:$p/")"
done

echo "== the shim processes (RSS)"
for rt in runc lightwhale; do
  name=$([ "$rt" = lightwhale ] && echo lw-demo || echo runc-demo)
  id=$($DOCKER inspect -f '{{.Id}}' "$name")
  pid=$(pgrep -f -- "-id $id" | head -1 || true)
  [ -n "$pid" ] || pid=$(pgrep -f -- "$id" | head -1)
  printf '  %-10s shim pid %-7s RSS %6s KiB  (%s)\n' "$rt" "$pid" \
    "$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")" "$(tr '\0' ' ' < "/proc/$pid/cmdline" | cut -c1-60)"
done
echo "== lightwhale container state as docker sees it"
$DOCKER ps --filter name=lw-demo --format '  {{.Names}}  {{.Status}}  {{.Ports}}'
echo "Sleep and wake come with the next milestone; see README.md."
