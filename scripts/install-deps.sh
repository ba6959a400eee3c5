#!/usr/bin/env bash
# Installs and starts everything lightwhale needs, on Debian 12/13 or Ubuntu 24.04, as
# root. Idempotent: a second run checks, changes nothing, and takes a few seconds.
#   - Debian packages: runc, iptables, busybox-static (test images), CRIU build deps
#   - CRIU >= 4.2 (built from Debian unstable's source when the host's is older or fails)
#   - containerd >= 1.7 and Docker >= 23 (Debian 13's packages on Debian 12)
#   - containerd and dockerd running, the lightwhale runtime registered in both
#   --bench: also what bench/measure.py uses (wrk, python3-matplotlib for the plot)
set -euo pipefail
bench=0
for arg in "$@"; do
  case $arg in
    --bench) bench=1 ;;
    *) printf '[install-deps] ERROR: unknown argument %s (known: --bench)\n' "$arg" >&2; exit 2 ;;
  esac
done

log() { printf '[install-deps] %s\n' "$*"; }
die() { printf '[install-deps] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"
export DEBIAN_FRONTEND=noninteractive
CACHE=/var/cache/lightwhale
CRIU_MIN=4.2
. /etc/os-release
log "host: $PRETTY_NAME, kernel $(uname -r)"

apt_updated=0
apt_update() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
}
# Installs the packages not installed yet (dpkg -s is cheap; apt-get is not).
need_pkgs() {
  local missing=()
  for p in "$@"; do
    dpkg -s "${p%%/*}" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt_update
    log "installing ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

ver_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }

# --- base packages -------------------------------------------------------------------
need_pkgs ca-certificates curl jq iproute2 iptables runc busybox-static xz-utils procps bsdutils \
  python3 python3.11 dpkg-dev
[ $bench = 1 ] && need_pkgs wrk python3-matplotlib

# --- CRIU ----------------------------------------------------------------------------
criu_ok() {
  command -v criu >/dev/null 2>&1 || return 1
  local v
  v=$(criu --version 2>/dev/null | awk '/^Version:/ {print $2}')
  [ -n "$v" ] && ver_ge "$v" "$CRIU_MIN" && criu check >/dev/null 2>&1
}
if criu_ok; then
  log "criu $(criu --version | awk '/^Version:/ {print $2}') is good"
else
  log "building CRIU >= $CRIU_MIN from Debian unstable's source package"
  need_pkgs build-essential pkg-config libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler \
    protobuf-compiler python3-protobuf libnl-3-dev libnet1-dev libcap-dev libbsd-dev \
    libgnutls28-dev libnftables-dev uuid-dev
  src_list=/etc/apt/sources.list.d/lightwhale-sid-src.sources
  if [ ! -f "$src_list" ]; then
    cat > "$src_list" <<'SRC'
# lightwhale: source packages only, to build CRIU (never binaries from sid).
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt_updated=0
  fi
  apt_update
  mkdir -p "$CACHE/criu-src"
  cd "$CACHE/criu-src"
  # Only the .dsc and the upstream tarball are served; the Debian tarball 404s, so
  # apt-get fails after fetching what we need: check for the files, not its status.
  apt-get source --download-only criu >/dev/null 2>&1 || true
  dsc=$(ls -1 criu_*.dsc 2>/dev/null | sort -V | tail -1)
  [ -n "$dsc" ] || die "no criu .dsc downloaded (is a deb-src line for sid reachable?)"
  tarball=$(ls -1 criu_*.orig.tar.* 2>/dev/null | sort -V | tail -1)
  [ -n "$tarball" ] || die "no criu .orig tarball downloaded"
  want=$(awk -v f="$tarball" '/^Checksums-Sha256:/ {s=1; next} /^[^ ]/ {s=0} s && $3 == f {print $1}' "$dsc")
  [ -n "$want" ] || die "$dsc lists no SHA-256 for $tarball"
  have=$(sha256sum "$tarball" | awk '{print $1}')
  [ "$want" = "$have" ] || die "checksum mismatch for $tarball: $have, .dsc says $want"
  log "verified $tarball (sha256 $have)"
  rm -rf build && mkdir build && tar -xf "$tarball" -C build
  cd build/criu-*
  # RUNDIR on tmpfs: CRIU keeps its kernel-feature cache there only on tmpfs, saving
  # ~60 ms on every dump and restore.
  make -j"$(nproc)" criu RUNDIR=/dev/shm >"$CACHE/criu-build.log" 2>&1 \
    || { tail -30 "$CACHE/criu-build.log"; die "CRIU build failed"; }
  install -m 0755 criu/criu /usr/local/sbin/criu
  hash -r
  # runc looks CRIU up on PATH: /usr/local/sbin comes before /usr/sbin.
  [ "$(command -v criu)" = /usr/local/sbin/criu ] || die "another criu shadows /usr/local/sbin/criu on PATH"
  criu check || die "criu check failed after building $(criu --version | head -1)"
fi

# --- containerd and Docker -----------------------------------------------------------
containerd_ok() { command -v containerd >/dev/null && ver_ge "$(containerd --version | awk '{print $3}' | sed 's/[~+-].*//')" 1.7; }
dockerd_ok() { command -v dockerd >/dev/null && ver_ge "$(dockerd --version | sed -E 's/^Docker version ([0-9.]+).*/\1/')" 23; }
if ! containerd_ok || ! dockerd_ok || [ ! -x /usr/bin/docker ]; then
  pkgs=(containerd docker.io docker-cli tini)
  if [ "${ID:-}" = debian ] && [ "${VERSION_ID:-}" = 12 ]; then
    # Debian 12 ships containerd 1.6 and docker 20.10: take Debian 13's, by name only,
    # pinned low so nothing else is ever upgraded from trixie.
    if [ ! -f /etc/apt/sources.list.d/lightwhale-trixie.sources ]; then
      cat > /etc/apt/sources.list.d/lightwhale-trixie.sources <<'SRC'
# lightwhale: containerd and docker from Debian 13 (see /etc/apt/preferences.d/lightwhale-trixie)
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
      cat > /etc/apt/preferences.d/lightwhale-trixie <<'PIN'
# lightwhale: take only what is asked for by name from trixie (containerd, docker).
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
      apt_updated=0
    fi
    pkgs=(containerd/trixie docker.io/trixie docker-cli/trixie tini)
  fi
  apt_update
  log "installing ${pkgs[*]}"
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
containerd_ok || die "containerd >= 1.7 is needed, have: $(containerd --version 2>&1)"
dockerd_ok || die "dockerd >= 23 is needed, have: $(dockerd --version 2>&1)"

# --- register the runtime ------------------------------------------------------------
backup_once() { [ -f "$1" ] && cp -a "$1" "$1.bak.$(date +%Y%m%d%H%M%S)"; return 0; }

docker_changed=0
mkdir -p /etc/docker
dj=/etc/docker/daemon.json
[ -s "$dj" ] || echo '{}' > "$dj"
jq -e . "$dj" >/dev/null || die "$dj is not valid JSON; fix it by hand, it was left as it is"
if ! jq -e '.runtimes.lightwhale.runtimeType == "io.containerd.lightwhale.v2"' "$dj" >/dev/null; then
  backup_once "$dj"
  tmp=$(mktemp)
  jq '.runtimes.lightwhale = {"runtimeType": "io.containerd.lightwhale.v2"}' "$dj" > "$tmp"
  install -m 0644 "$tmp" "$dj" && rm -f "$tmp"
  docker_changed=1
  log "registered runtime lightwhale in $dj"
fi

containerd_changed=0
ct=/etc/containerd/config.toml
mkdir -p /etc/containerd
[ -s "$ct" ] || { containerd config default > "$ct"; containerd_changed=1; }
if grep -qE '^version *= *3' "$ct"; then
  cri='plugins."io.containerd.cri.v1.runtime".containerd.runtimes'
else
  cri='plugins."io.containerd.grpc.v1.cri".containerd.runtimes'
fi
# CRI needs its default runtime ("runc") declared once any runtime table exists, or the
# whole CRI plugin fails to load: declare it too when the file does not.
for entry in "runc io.containerd.runc.v2" "lightwhale io.containerd.lightwhale.v2"; do
  set -- $entry
  if ! grep -q "runtimes\.$1\]" "$ct"; then
    [ $containerd_changed = 1 ] || backup_once "$ct"
    printf '\n# added by lightwhale: CRI runtime handler "%s"\n[%s.%s]\n  runtime_type = "%s"\n' "$1" "$cri" "$1" "$2" >> "$ct"
    containerd_changed=1
    log "registered CRI runtime $1 in $ct"
  fi
done

# --- start the daemons ---------------------------------------------------------------
wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$what did not come up in ${secs}s"
}
systemd=0
[ -d /run/systemd/system ] && systemd=1

if [ $systemd = 1 ]; then
  systemctl enable --now containerd >/dev/null 2>&1 || true
  [ $containerd_changed = 1 ] && systemctl restart containerd
elif pid=$(pgrep -x containerd); then
  if [ $containerd_changed = 1 ]; then
    log "restarting containerd (config changed); running containers keep running"
    kill "$pid"; for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    setsid containerd >>/var/log/containerd.log 2>&1 < /dev/null &
  fi
else
  log "starting containerd (log: /var/log/containerd.log)"
  setsid containerd >>/var/log/containerd.log 2>&1 < /dev/null &
fi
wait_for containerd 30 ctr version
if ctr plugins ls 2>/dev/null | grep -E 'io.containerd.grpc.v1 +cri ' | grep -q error; then
  die "containerd's CRI plugin failed to load: see /var/log/containerd.log"
fi

if [ $systemd = 1 ]; then
  systemctl enable --now docker >/dev/null 2>&1 || true
  [ $docker_changed = 1 ] && systemctl reload docker 2>/dev/null || true
elif pid=$(pgrep -x dockerd); then
  # dockerd reloads "runtimes" from daemon.json on SIGHUP.
  [ $docker_changed = 1 ] && kill -HUP "$pid"
else
  log "starting dockerd (log: /var/log/dockerd.log)"
  setsid dockerd --containerd=/run/containerd/containerd.sock >>/var/log/dockerd.log 2>&1 < /dev/null &
fi
wait_for dockerd 60 /usr/bin/docker info
wait_for "the lightwhale runtime in dockerd" 10 sh -c '/usr/bin/docker info --format "{{json .Runtimes}}" | grep -q lightwhale'

# CRIU without CAP_SYS_RESOURCE (some VMs withhold it even from root) cannot dump a
# process that does not run as root: such containers stay awake, and say why.
capeff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
if [ -n "$capeff" ] && [ $(( (16#$capeff >> 24) & 1 )) -eq 0 ]; then
  log "note: this host gives root no CAP_SYS_RESOURCE: CRIU cannot dump processes that do not run as root here; such containers stay awake (lightwhale inspect: cannot_dump)"
fi

log "ready: criu $(criu --version | awk '/^Version:/ {print $2}'), $(runc --version | head -1)," \
  "containerd $(containerd --version | awk '{print $3}'), docker $(/usr/bin/docker version --format '{{.Server.Version}}')"
