#!/usr/bin/env bash
# Builds the local test images (no registry is reachable): lightwhale-test/busybox, a
# rootfs of Debian's busybox-static with its applets and a web root, imported into
# Docker and into containerd's default namespace for ctr. Idempotent: rebuilt only when
# busybox or this recipe changes.
set -euo pipefail
DOCKER=${DOCKER:-/usr/bin/docker}
IMAGE=lightwhale-test/busybox:latest
recipe=v1
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
