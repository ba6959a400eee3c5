#!/usr/bin/env bash
# Installs and starts everything lightwhale needs, on Debian 12/13 or Ubuntu 24.04, as
# root. Idempotent: a second run checks, changes nothing, and takes a few seconds.
#   - Debian packages: runc, iptables, busybox-static (test images), CRIU build deps
#   - CRIU >= 4.2 (built from Debian unstable's source when the host's is older or fails)
#   - containerd >= 1.7 and Docker >= 23 (Debian 13's packages on Debian 12)
#   - containerd and dockerd running, the lightwhale runtime registered in both
#   - Kubernetes' CRI: the handler "lightwhale", CNI (Debian's plugins, a bridge network),
#     the local pause image as sandbox image (built by make-test-images.sh)
#   - containerd 2.x beside 1.7 (Debian unstable's, unpacked under /opt/lightwhale/containerd2,
#     its own root, state, socket and CNI network), for the CRI tests against both
#   - swap: a zram device on a host without swap (the doze tier pages memory out to it)
#   --bench: also what bench/measure.py uses (wrk, python3-matplotlib for the plot, and
#     podman with runc as the checkpoint/restore peer it is compared with)
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
here=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive
CACHE=/var/cache/lightwhale
CRIU_MIN=4.2
# containerd 2.x, unpacked here beside the host's containerd (see below).
C2=/opt/lightwhale/containerd2
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
# gcc and libc6-dev: the static pause image; python3-tomlkit: containerd's TOML, edited in
# place (scripts/containerd-config.py); protobuf-compiler: protoc, which lightwhale-cri's CRI
# types (crate k8s-cri) are generated with; containernetworking-plugins: CNI for CRI pods.
need_pkgs ca-certificates curl jq iproute2 iptables runc busybox-static xz-utils procps bsdutils \
  python3 python3.11 dpkg-dev gcc libc6-dev python3-tomlkit protobuf-compiler \
  containernetworking-plugins
[ $bench = 1 ] && need_pkgs wrk python3-matplotlib podman

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

# Kubernetes' CRI, through scripts/containerd-config.py (a TOML library, so an existing
# config keeps its other runtimes, keys and comments; backups kept): the runtime handler
# "lightwhale" with the lightwhale.io/* pod and container annotations passed to the shim,
# "runc" declared (CRI fails to load without its default runtime once any runtime table
# exists), restrict_oom_score_adj (root here may lack CAP_SYS_RESOURCE: the sandbox's -998
# would fail), the local pause image (no registry to pull the default from), Debian's CNI
# plugins. Config version 2 (containerd 1.7) or 3 (2.x).
PAUSE_IMAGE=lightwhale.local/pause:3.9
CNI_BIN=/usr/lib/cni
containerd_cfg() { /usr/bin/python3 "$here/containerd-config.py" "$@"; }
# Our CNI network, in the conf dir the config names: containerd loads the first file there
# by name, so an older network of another tool that sorts first is reported.
cni_network() { # conf dir, name, bridge, subnet
  local out first
  out=$(containerd_cfg conflist "$1/10-$2.conflist" --name "$2" --bridge "$3" --subnet "$4") \
    || die "cannot write the CNI network $2 in $1"
  [ -z "$out" ] || log "$out"
  first=$(ls -1 "$1" | grep -E '\.(conf|conflist|json)$' | sort | head -1 || true)
  [ "$first" = "10-$2.conflist" ] || log "note: $1/$first comes before 10-$2.conflist: containerd uses it for pods"
}

containerd_changed=0
ct=/etc/containerd/config.toml
mkdir -p /etc/containerd
[ -s "$ct" ] || { containerd config default > "$ct"; containerd_changed=1; }
changes=$(containerd_cfg cri "$ct" --sandbox-image "$PAUSE_IMAGE" --cni-bin-dir "$CNI_BIN") \
  || die "cannot edit $ct (left as it was)"
if [ -n "$changes" ]; then
  containerd_changed=1
  while read -r line; do log "$line"; done <<< "$changes"
fi
cni_network "$(containerd_cfg cni-conf-dir "$ct")" lightwhale lw-cni0 10.99.0.0/16

# --- start the daemons ---------------------------------------------------------------
wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$what did not come up in ${secs}s"
}
systemd=0
[ -d /run/systemd/system ] && systemd=1
# Whether the process started before FILE last changed, so has not read it: a change
# whose restart did not happen (an interrupted run) is still applied by the next run.
started_before() { # pid file
  local age
  age=$(ps -o etimes= -p "$1" 2>/dev/null | tr -d ' ')
  [ -n "$age" ] && [ $(( $(date +%s) - age )) -lt "$(stat -c %Y "$2")" ]
}
# The host's containerd: not the 2.x beside it, whose process has the same name.
host_containerd_pid() {
  local p
  for p in $(pgrep -x containerd); do
    case "$(readlink "/proc/$p/exe" 2>/dev/null)" in "$C2"*) ;; *) echo "$p"; return 0 ;; esac
  done
  return 1
}

if [ $systemd = 1 ]; then
  systemctl enable --now containerd >/dev/null 2>&1 || true
  [ $containerd_changed = 1 ] && systemctl restart containerd
elif pid=$(host_containerd_pid); then
  if [ $containerd_changed = 1 ] || started_before "$pid" "$ct"; then
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

# --- containerd 2.x beside 1.7 -------------------------------------------------------
# The CRI tests run against both. Debian unstable's containerd 2.x runs on Debian 12
# (libc6 >= 2.34), but installing it would replace 1.7, which Docker uses: its .deb is only
# downloaded, through an apt state of its own that holds sid's index alone (the host's apt
# never sees sid binaries; apt checks the .deb against sid's signed index), and unpacked
# under /opt/lightwhale/containerd2. It runs as a second daemon with its own config, root,
# state, socket and CNI network; its own ctr talks to it (ctr --address). Same shim.
C2_MIN=2.1
C2_CONF=/etc/lightwhale-containerd2/config.toml
C2_ROOT=/var/lib/lightwhale-containerd2
C2_STATE=/run/lightwhale-containerd2
C2_SOCK=$C2_STATE/containerd.sock
C2_LOG=/var/log/lightwhale-containerd2.log
C2_CNI=/etc/lightwhale-containerd2/cni/net.d
# Its own containerd-shim-runc-v2 first; lightwhale's shim from /usr/local/bin.
C2_PATH=$C2/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
c2_version() { "$C2/usr/bin/containerd" --version 2>/dev/null | awk '{print $3}' | sed 's/[~+-].*//'; }
if ! { [ -x "$C2/usr/bin/containerd" ] && ver_ge "$(c2_version)" "$C2_MIN"; }; then
  sid=$CACHE/apt-sid
  mkdir -p "$sid/sources.list.d" "$sid/lists/partial" "$sid/archives/partial" "$sid/deb"
  cat > "$sid/sources.list.d/sid.sources" <<SRC
# lightwhale: containerd 2.x's .deb, downloaded only (see scripts/install-deps.sh)
Types: deb
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Architectures: $(dpkg --print-architecture)
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  sid_apt=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$sid/sources.list.d"
    -o Dir::State::Lists="$sid/lists" -o Dir::Cache="$sid" -o Dir::Etc::Preferences=/dev/null
    -o Dir::Etc::PreferencesParts=/dev/null -o Acquire::Languages=none
    -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false)
  log "downloading containerd 2.x from Debian unstable (unpacked under $C2, not installed)"
  apt-get "${sid_apt[@]}" update -qq >/dev/null || die "apt-get update of Debian unstable's index failed"
  rm -f "$sid/deb"/containerd_*.deb
  # apt downloads as _apt where it can.
  chown _apt "$sid/deb" 2>/dev/null || true
  (cd "$sid/deb" && apt-get "${sid_apt[@]}" download containerd/sid >/dev/null) \
    || die "downloading containerd from Debian unstable failed"
  deb=$(ls -1 "$sid/deb"/containerd_*.deb | head -1)
  v=$(dpkg-deb -f "$deb" Version)
  ver_ge "$(echo "$v" | sed 's/[~+-].*//')" "$C2_MIN" || die "Debian unstable's containerd is $v, not >= $C2_MIN"
  mkdir -p "$(dirname "$C2")"
  tmp=$(mktemp -d "$C2.new.XXXXXX")
  dpkg-deb -x "$deb" "$tmp"
  echo "$v" > "$tmp/VERSION"
  rm -rf "$C2.old"; [ ! -d "$C2" ] || mv "$C2" "$C2.old"
  mv "$tmp" "$C2"; rm -rf "$C2.old" "$sid/lists"
  c2_upgraded=1
  log "containerd $v unpacked under $C2"
fi

c2_changes=$(containerd_cfg instance "$C2_CONF" --root "$C2_ROOT" --state "$C2_STATE" --address "$C2_SOCK" \
  && containerd_cfg cri "$C2_CONF" --sandbox-image "$PAUSE_IMAGE" --cni-bin-dir "$CNI_BIN" --cni-conf-dir "$C2_CNI") \
  || die "cannot write $C2_CONF"
[ -z "$c2_changes" ] || while read -r line; do log "$line"; done <<< "$c2_changes"
cni_network "$C2_CNI" lightwhale-containerd2 lw-cni1 10.98.0.0/16
c2_restart=0
[ -z "$c2_changes" ] && [ -z "${c2_upgraded:-}" ] || c2_restart=1

if [ $systemd = 1 ]; then
  unit=/etc/systemd/system/lightwhale-containerd2.service
  want_unit="[Unit]
Description=containerd 2.x beside the host's containerd, for lightwhale's CRI tests
After=network.target local-fs.target

[Service]
Environment=PATH=$C2_PATH
ExecStart=$C2/usr/bin/containerd --config $C2_CONF
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999
StandardOutput=append:$C2_LOG
StandardError=append:$C2_LOG

[Install]
WantedBy=multi-user.target"
  if [ "$(cat "$unit" 2>/dev/null)" != "$want_unit" ]; then
    printf '%s\n' "$want_unit" > "$unit"
    systemctl daemon-reload
    c2_restart=1
  fi
  systemctl enable --now lightwhale-containerd2 >/dev/null 2>&1 || true
  [ $c2_restart = 0 ] || systemctl restart lightwhale-containerd2
else
  c2_pidfile=/run/lightwhale-containerd2.pid
  # Its pid, if the one recorded is still that containerd (by its command line: the
  # binary may have been replaced since).
  c2_pid() {
    local p
    p=$(cat "$c2_pidfile" 2>/dev/null) || return 1
    case "$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null)" in
      *containerd" --config $C2_CONF "*) echo "$p" ;;
      *) return 1 ;;
    esac
  }
  c2_start() {
    mkdir -p "$C2_STATE"
    # A background job of a script is no group leader: setsid execs containerd in place,
    # so $! is containerd's pid.
    PATH=$C2_PATH setsid "$C2/usr/bin/containerd" --config "$C2_CONF" >>"$C2_LOG" 2>&1 < /dev/null &
    echo $! > "$c2_pidfile"
  }
  if pid=$(c2_pid); then
    if [ $c2_restart = 1 ] || started_before "$pid" "$C2_CONF"; then
      log "restarting containerd 2.x (config changed); running containers keep running"
      kill "$pid"; for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      c2_start
    fi
  else
    log "starting containerd 2.x (socket $C2_SOCK, log: $C2_LOG)"
    c2_start
  fi
fi
wait_for "containerd 2.x" 30 "$C2/usr/bin/ctr" --address "$C2_SOCK" version
if "$C2/usr/bin/ctr" --address "$C2_SOCK" plugins ls 2>/dev/null | grep -E 'cri' | grep -q error; then
  die "containerd 2.x's CRI plugin failed to load: see $C2_LOG"
fi

# --- swap for the doze tier ---------------------------------------------------------
# A doze pages a container's memory out to swap. A host without any gets a zram device
# (compressed, in memory; its pages take only what they compress to), as the doze tests
# and benchmarks need one. A host with swap keeps its own.
if [ "$(awk 'NR > 1' /proc/swaps | wc -l)" = 0 ] && [ -e /sys/block/zram0 ] && [ -b /dev/zram0 ]; then
  z=/sys/block/zram0
  if [ "$(cat $z/disksize)" = 0 ]; then
    alg=lzo-rle
    grep -qw lz4 $z/comp_algorithm && alg=lz4
    echo "$alg" > $z/comp_algorithm
    echo 2G > $z/disksize
  fi
  mkswap /dev/zram0 >/dev/null && swapon -p 100 /dev/zram0 \
    && log "swap: /dev/zram0, $(( $(cat $z/disksize) >> 20 )) MiB ($(sed -n 's/.*\[\(.*\)\].*/\1/p' $z/comp_algorithm)), for the doze tier" \
    || die "could not set up zram swap on /dev/zram0 (the doze tests need swap)"
fi

# CRIU without CAP_SYS_RESOURCE (some VMs withhold it even from root) cannot dump a
# process that does not run as root: such containers stay awake, and say why.
capeff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
if [ -n "$capeff" ] && [ $(( (16#$capeff >> 24) & 1 )) -eq 0 ]; then
  log "note: this host gives root no CAP_SYS_RESOURCE: CRIU cannot dump processes that do not run as root here; such containers stay awake (lightwhale inspect: cannot_dump)"
fi

log "ready: criu $(criu --version | awk '/^Version:/ {print $2}'), $(runc --version | head -1)," \
  "containerd $(containerd --version | awk '{print $3}') and $(cat "$C2/VERSION"), docker $(/usr/bin/docker version --format '{{.Server.Version}}')"
