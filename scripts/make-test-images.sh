#!/usr/bin/env bash
# Builds the local test images (no registry is reachable): lightwhale-test/busybox, a
# rootfs of Debian's busybox-static with its applets and a web root; lightwhale-test/python;
# lightwhale.local/pause, the pod sandbox image for CRI. Built in Docker, then imported into
# containerd: busybox into the default namespace (ctr), all three into k8s.io (CRI), in
# the host's containerd and in the containerd 2.x beside it (scripts/install-deps.sh).
# Idempotent: rebuilt only when their sources or this recipe change, imported only when
# missing there or rebuilt since.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
DOCKER=${DOCKER:-/usr/bin/docker}
IMAGE=lightwhale-test/busybox:latest
recipe=v2
stamp="busybox $(dpkg-query -W -f '${Version}' busybox-static) recipe $recipe"

have=$($DOCKER image inspect -f '{{.Comment}}' "$IMAGE" 2>/dev/null || true)
if [ "$have" != "$stamp" ]; then
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,www,proc,sys,dev,root,var/run}
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list-full); do
    [ "$applet" = bin/busybox ] && continue
    ln -sf /bin/busybox "$root/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
  echo "hello from lightwhale" > "$root/www/index.html"
  tar -C "$root" --numeric-owner -cf - . \
    | $DOCKER import -m "$stamp" --change 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
  echo "[images] built $IMAGE ($stamp)"
fi

# lightwhale-test/python: Debian's python3.11 and its stdlib (no registry to pull from),
# for services with real in-memory state. Built from the host's own files.
PY_IMAGE=lightwhale-test/python:latest
py_stamp="python $(dpkg-query -W -f '${Version}' python3.11-minimal 2>/dev/null) recipe $recipe"
if [ "$($DOCKER image inspect -f '{{.Comment}}' "$PY_IMAGE" 2>/dev/null || true)" != "$py_stamp" ]; then
  [ -x /usr/bin/python3.11 ] || { echo "[images] /usr/bin/python3.11 missing (package python3.11)" >&2; exit 1; }
  proot=$(mktemp -d)
  mkdir -p "$proot"/{bin,usr/bin,usr/lib,tmp,etc,proc,sys,dev}
  chmod 1777 "$proot/tmp"
  cp /bin/busybox "$proot/bin/busybox"
  for a in sh cat echo sleep wget; do ln -sf busybox "$proot/bin/$a"; done
  cp /usr/bin/python3.11 "$proot/usr/bin/python3.11"
  ln -sf python3.11 "$proot/usr/bin/python3"
  for lib in $(ldd /usr/bin/python3.11 | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
    mkdir -p "$proot$(dirname "$lib")"
    cp -L "$lib" "$proot$lib"
  done
  tar -C / --exclude='__pycache__' --exclude='python3.11/test' --exclude='python3.11/idlelib' \
    --exclude='python3.11/tkinter' --exclude='python3.11/ensurepip' --exclude='python3.11/lib2to3' \
    -cf - usr/lib/python3.11 | tar -C "$proot" -xf -
  # Extension modules (lib-dynload) need their own shared libraries too.
  for so in "$proot"/usr/lib/python3.11/lib-dynload/*.so; do
    for lib in $(ldd "$so" 2>/dev/null | awk '/=>/ {print $3}'); do
      [ -e "$proot$lib" ] || { mkdir -p "$proot$(dirname "$lib")"; cp -L "$lib" "$proot$lib"; }
    done
  done
  printf 'root:x:0:0:root:/:/bin/sh\n' > "$proot/etc/passwd"
  tar -C "$proot" --numeric-owner -cf - . \
    | $DOCKER import -m "$py_stamp" --change 'CMD ["/usr/bin/python3"]' - "$PY_IMAGE" >/dev/null
  rm -rf "$proot"
  echo "[images] built $PY_IMAGE ($py_stamp)"
fi

# lightwhale.local/pause: what holds a pod's namespaces (containerd's default sandbox
# image, registry.k8s.io/pause, cannot be pulled here; install-deps.sh names this one in
# containerd's CRI config). scripts/pause.c, linked statically: the image is that file alone.
PAUSE_IMAGE=lightwhale.local/pause:3.9
pause_stamp="pause.c $(sha256sum "$here/pause.c" | cut -c1-16) gcc $(gcc -dumpfullversion) recipe $recipe"
if [ "$($DOCKER image inspect -f '{{.Comment}}' "$PAUSE_IMAGE" 2>/dev/null || true)" != "$pause_stamp" ]; then
  pause_root=$(mktemp -d)
  gcc -static -O2 -s -Wall -Wextra -o "$pause_root/pause" "$here/pause.c"
  tar -C "$pause_root" --numeric-owner -cf - pause \
    | $DOCKER import -m "$pause_stamp" --change 'CMD ["/pause"]' - "$PAUSE_IMAGE" >/dev/null
  rm -rf "$pause_root"
  echo "[images] built $PAUSE_IMAGE ($pause_stamp)"
fi

# containerd keeps its images apart from Docker's: import them (docker save | ctr import)
# where they are missing or were rebuilt since (a marker keeps the Docker image id imported).
MARKERS=/var/cache/lightwhale/ctr-images
mkdir -p "$MARKERS"
rm -f /var/cache/lightwhale/ctr-image-id # the single marker of an earlier recipe
import_image() { # instance namespace image ctr-command...
  local instance=$1 ns=$2 image=$3 ref want marker
  shift 3
  # containerd's name for it: docker.io/ unless the first part names a registry.
  case ${image%%/*} in *.*|*:*|localhost) ref=$image ;; *) ref=docker.io/$image ;; esac
  want=$($DOCKER image inspect -f '{{.Id}}' "$image")
  marker="$MARKERS/$instance-$ns-$(printf '%s' "$ref" | tr '/:' '__')"
  if ! "$@" -n "$ns" images ls -q 2>/dev/null | grep -qxF "$ref" \
    || [ "$(cat "$marker" 2>/dev/null)" != "$want" ]; then
    $DOCKER save "$image" | "$@" -n "$ns" images import - >/dev/null
    echo "$want" > "$marker"
    echo "[images] imported $ref into $instance (namespace $ns)"
  fi
}

# ctr sees containerd's "default" namespace; CRI (Kubernetes) uses "k8s.io". The python
# image goes to "default" too: a container moved between the two containerds runs it.
import_image containerd default "$IMAGE" ctr
import_image containerd default "$PY_IMAGE" ctr
for image in "$IMAGE" "$PY_IMAGE" "$PAUSE_IMAGE"; do
  import_image containerd k8s.io "$image" ctr
done
C2_CTR=/opt/lightwhale/containerd2/usr/bin/ctr
C2_SOCK=/run/lightwhale-containerd2/containerd.sock
if [ -x "$C2_CTR" ] && "$C2_CTR" --address "$C2_SOCK" version >/dev/null 2>&1; then
  import_image containerd2 default "$IMAGE" "$C2_CTR" --address "$C2_SOCK"
  import_image containerd2 default "$PY_IMAGE" "$C2_CTR" --address "$C2_SOCK"
  for image in "$IMAGE" "$PY_IMAGE" "$PAUSE_IMAGE"; do
    import_image containerd2 k8s.io "$image" "$C2_CTR" --address "$C2_SOCK"
  done
else
  echo "[images] note: no containerd 2.x at $C2_SOCK (scripts/install-deps.sh starts it): not imported there"
fi
