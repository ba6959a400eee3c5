#!/usr/bin/env bash
# Builds the local test images (no registry is reachable): lightwhale-test/busybox, a
# rootfs of Debian's busybox-static with its applets and a web root, imported into
# Docker and into containerd's default namespace for ctr. Idempotent: rebuilt only when
# busybox or this recipe changes.
set -euo pipefail
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

# ctr sees containerd's "default" namespace; Docker keeps its images elsewhere.
want_id=$($DOCKER image inspect -f '{{.Id}}' "$IMAGE")
have_id=$(ctr -n default images ls -q 2>/dev/null | grep -qx "docker.io/$IMAGE" \
  && ctr -n default images ls "name==docker.io/$IMAGE" 2>/dev/null | awk 'NR==2 {print $3}' || true)
marker=/var/cache/lightwhale/ctr-image-id
if [ -z "$have_id" ] || [ "$(cat "$marker" 2>/dev/null)" != "$want_id" ]; then
  mkdir -p "$(dirname "$marker")"
  $DOCKER save "$IMAGE" | ctr -n default images import - >/dev/null
  echo "$want_id" > "$marker"
  echo "[images] imported docker.io/$IMAGE into containerd (namespace default)"
fi
