#!/usr/bin/env bash
# Builds the node installer's image offline (make installer-image):
#   deploy/node/build-image.sh [--context-only] [--context DIR] [--tag IMAGE]...
# Default tags: lightwhale/node-installer:dev and lightwhale/node-installer:<version>.
#
# It assembles the build context in DIR (default target/node-installer), then runs
# `docker build -f deploy/node/Dockerfile DIR` (unless --context-only):
#   payload/   what lightwhale-node installs, laid out as on the node:
#              usr/local/bin/{containerd-shim-lightwhale-v2,lightwhale} and
#              usr/local/libexec/lightwhale/criu-helpers/{tar,action} (`make build`'s release
#              binaries), usr/local/share/lightwhale/criu-profiles/*.conf, CRIU
#              (usr/local/libexec/lightwhale/criu/criu, every shared library it uses with
#              the dynamic loader under usr/local/lib/lightwhale/criu, and usr/local/sbin/criu
#              to run it with them: it runs on any node's libc), etc/lightwhale/config.toml
#   rootfs/    what lightwhale-node runs with in the image, this host's own programs and
#              the libraries they use: bash, coreutils, findutils, diffutils, grep, sed,
#              awk, util-linux's setsid, curl, python3 with its standard library and tomlkit
#   VERSION, lightwhale-node, containerd-config.py
# Needs `make build` (the binaries under target/), a CRIU >= 4.2 at /usr/local/sbin/criu
# (scripts/install-deps.sh builds one) and python3-tomlkit. Env: OUT (the release binaries'
# directory), CRIU_TAR, CRIU_ACTION, CRIU (the binary to ship).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
log() { printf '[installer-image] %s\n' "$*"; }
die() { printf '[installer-image] ERROR: %s\n' "$*" >&2; exit 1; }

context=target/node-installer
only=0
tags=()
while [ $# -gt 0 ]; do
  case $1 in
    --context-only) only=1 ;;
    --context) context=${2:?}; shift ;;
    --tag) tags+=("${2:?}"); shift ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done

triple=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p' || true)
triple=${triple:-$(uname -m)-unknown-linux-gnu}
OUT=${OUT:-target/$triple/release}
CRIU_TAR=${CRIU_TAR:-target/static/$triple/release/lightwhale-criu-tar}
CRIU_ACTION=${CRIU_ACTION:-target/static/$triple/release/lightwhale-criu-action}
CRIU=${CRIU:-/usr/local/sbin/criu}
# A node where lightwhale-node ran has the wrapper there: ship the binary it runs.
if head -c2 "$CRIU" 2>/dev/null | grep -q '#!'; then CRIU=/usr/local/libexec/lightwhale/criu/criu; fi
version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || die "no workspace version in Cargo.toml"
[ ${#tags[@]} -gt 0 ] || tags=(lightwhale/node-installer:dev "lightwhale/node-installer:$version")

for f in "$OUT/containerd-shim-lightwhale-v2" "$OUT/lightwhale" "$CRIU_TAR" "$CRIU_ACTION"; do
  [ -x "$f" ] || die "$f is missing: run make build first"
done
[ -x "$CRIU" ] || die "no CRIU at $CRIU (scripts/install-deps.sh builds one)"
[ -d /usr/lib/python3/dist-packages/tomlkit ] || die "python3-tomlkit is needed (apt-get install python3-tomlkit)"

rm -rf "$context"
mkdir -p "$context"
context=$(cd "$context" && pwd)
p=$context/payload
r=$context/rootfs

# --- the payload ---------------------------------------------------------------------
install -D -m 0755 "$OUT/containerd-shim-lightwhale-v2" "$p/usr/local/bin/containerd-shim-lightwhale-v2"
install -D -m 0755 "$OUT/lightwhale" "$p/usr/local/bin/lightwhale"
install -D -m 0755 "$CRIU_TAR" "$p/usr/local/libexec/lightwhale/criu-helpers/tar"
install -D -m 0755 "$CRIU_ACTION" "$p/usr/local/libexec/lightwhale/criu-helpers/action"
install -d "$p/usr/local/share/lightwhale/criu-profiles"
install -m 0644 criu-profiles/*.conf "$p/usr/local/share/lightwhale/criu-profiles/"
install -D -m 0644 deploy/node/config.toml "$p/etc/lightwhale/config.toml"
install -D -m 0755 "$CRIU" "$p/usr/local/libexec/lightwhale/criu/criu"
libs=$p/usr/local/lib/lightwhale/criu
mkdir -p "$libs"
loader=""
for lib in $(ldd "$CRIU" | awk '/=>/ && $3 ~ /^\// {print $3} /^\t\/[^ ]*ld-linux/ {print $1}'); do
  install -m 0755 "$(readlink -f "$lib")" "$libs/$(basename "$lib")"
  case $(basename "$lib") in ld-linux*) loader=$(basename "$lib") ;; esac
done
[ -n "$loader" ] || die "no dynamic loader among CRIU's libraries (ldd $CRIU)"
mkdir -p "$p/usr/local/sbin"
cat > "$p/usr/local/sbin/criu" <<EOF
#!/bin/sh
# CRIU, as lightwhale-node installed it: run with the libraries it was built with (in
# /usr/local/lib/lightwhale/criu, loader included), so that it runs on any libc.
exec /usr/local/lib/lightwhale/criu/$loader --library-path /usr/local/lib/lightwhale/criu /usr/local/libexec/lightwhale/criu/criu "\$@"
EOF
chmod 0755 "$p/usr/local/sbin/criu"
criu_version=$("$libs/$loader" --library-path "$libs" "$p/usr/local/libexec/lightwhale/criu/criu" --version | awk '/^Version:/ {print $2}')
[ -n "$criu_version" ] || die "the shipped CRIU does not run with its own libraries"

git_rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain 2>/dev/null | grep -q . && echo +dirty || true)
echo "$version ($git_rev$dirty, criu $criu_version)" > "$context/VERSION"
install -m 0755 deploy/node/lightwhale-node "$context/lightwhale-node"
install -m 0755 scripts/containerd-config.py "$context/containerd-config.py"

# --- the root file system ---------------------------------------------------------
# Debian's merged /usr: /bin, /sbin, /lib, /lib64 are links into /usr.
mkdir -p "$r"/usr/{bin,sbin,lib,lib64} "$r"/{etc,tmp,proc,sys,dev,host,root}
chmod 1777 "$r/tmp"
for d in bin sbin lib lib64; do ln -sfn "usr/$d" "$r/$d"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$r/etc/passwd"
printf 'root:x:0:\n' > "$r/etc/group"

# add_file PATH: PATH (a link's target, under the link's name) and the libraries it needs.
add_file() {
  local src=$1 dst lib
  dst=$r$(readlink -f "$(dirname "$src")")/$(basename "$src")
  [ -e "$dst" ] && return 0
  mkdir -p "$(dirname "$dst")"
  cp -L "$src" "$dst"
  for lib in $(ldd "$src" 2>/dev/null | awk '/=>/ && $3 ~ /^\// {print $3} /^\t\/[^ ]*ld-linux/ {print $1}'); do
    add_file "$lib"
  done
}
tools=(bash sh env cat cp mv rm ln mkdir rmdir chmod chown touch ls cmp sha256sum stat readlink
  dirname basename mktemp date sleep uname id head tail sort tr cut wc tee seq grep sed awk find
  xargs paste chroot setsid getconf curl python3 true false)
for t in "${tools[@]}"; do
  path=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin type -P "$t") || die "$t is missing on this host"
  add_file "$path"
done
# lightwhale's own programs run in the image too (the DaemonSet's metrics container):
# their libraries (libgcc_s, glibc), not the programs, which stay in the payload.
for b in "$p"/usr/local/bin/*; do
  for lib in $(ldd "$b" 2>/dev/null | awk '/=>/ && $3 ~ /^\// {print $3}'); do add_file "$lib"; done
done
# python3 -> python3.11: the interpreter, its standard library and its extension modules.
py=$(readlink -f /usr/bin/python3)
add_file "$py"
ln -sfn "$(basename "$py")" "$r/usr/bin/python3"
pylib=/usr/lib/$(basename "$py")
excludes=()
for x in test idlelib tkinter ensurepip lib2to3 pydoc_data distutils dist-packages site-packages 'config-*' \
  'lib-dynload/_tkinter*' 'lib-dynload/_sqlite3*' 'lib-dynload/_curses*' 'lib-dynload/_dbm*' 'lib-dynload/_gdbm*'; do
  excludes+=(--exclude="${pylib#/}/$x")
done
tar -C / --exclude='__pycache__' "${excludes[@]}" -cf - "${pylib#/}" usr/lib/python3/dist-packages/tomlkit \
  | tar -C "$r" -xf -
for so in "$r$pylib"/lib-dynload/*.so; do
  for lib in $(ldd "$so" 2>/dev/null | awk '/=>/ && $3 ~ /^\// {print $3}'); do add_file "$lib"; done
done
chroot "$r" /usr/bin/python3 -c 'import tomlkit, argparse, json, fnmatch' \
  || die "python3 in the image cannot import tomlkit"
log "context in $context: payload $(du -sh "$p" | cut -f1), rootfs $(du -sh "$r" | cut -f1), version $(cat "$context/VERSION")"

[ "$only" = 0 ] || exit 0
DOCKER=${DOCKER:-/usr/bin/docker}
tag_args=()
for t in "${tags[@]}"; do tag_args+=(-t "$t"); done
"$DOCKER" build -q -f "$repo/deploy/node/Dockerfile" --build-arg VERSION="$version" "${tag_args[@]}" "$context" > /dev/null
log "built ${tags[*]}"
