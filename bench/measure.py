#!/usr/bin/env python3
"""lightwhale benchmarks: every comparison side by side, in one run, on the real stack.

  1. latency     wake (eager, lazy) vs cold start (`docker run` to first byte, `docker start`
                 of a stopped container) vs an awake container's request, small service
  2. memory      wake latency and sleep time vs touched memory (16 MiB, 256 MiB, 1 GiB),
                 eager and lazy, against a cold start of the same service
  3. shim        memory of the shim per container: lightwhale vs containerd's Go runc shim
  4. density     N containers of 100 MiB put to sleep: host memory before and after
  5. throughput  awake requests/s under lightwhale vs runc (wrk, keep-alive)
  6. herd        N sleeping containers woken at the same moment: first-byte times of N
                 clients released together, and the time until all have answered
  7. cri         a pod's wake through containerd's CRI (1.7 and 2.x)
  8. doze        thaw to first byte and dozing memory
  9. template    cold start vs a start from a template vs a CRIU wake; clones at once
 10. cancel      requests that start during a sleep: the sleep called off by them, beside
                 the baseline where they wait for the dump and a wake

Every request made is checked (status line, and the counter service's state: a wake that
forgot its count is a failed request); `failed_requests` counts them over the whole run.

Usage: bench/measure.py [--quick] [--json PATH] [--only SECTION,...] [--herd-n N]. Needs
what `make deps install images` sets up (`make bench` does that). Prints markdown tables;
writes bench/results/latest.json and bench/results/wake-vs-memory.png. --only runs the
named sections (latency, memory, shim, density, throughput, herd) and writes
bench/results/only-<sections>.json instead; --herd-n sets N of the herd (10 with --quick,
else 50).
"""

import hashlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
with open(os.path.join(HERE, "..", "examples", "counter.py")) as _f:
    COUNTER = _f.read()
BUSYBOX = ["lightwhale-test/busybox:latest", "httpd", "-f", "-p", "8080", "-h", "/www"]
PYTHON = ["lightwhale-test/python:latest", "python3", "-c", COUNTER]
STATUS_DIR = "/run/lightwhale/containers/moby"
PREFIX = "lwbench-"
FAILED = []  # (what, detail) of every request that did not get the right answer


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def sh(*args, check=True, timeout=300):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])}...: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(host, port, timeout=30.0):
    """(seconds from connect to the first response byte, body) of GET /, or None."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            first = s.recv(65536)
            if not first:
                return None
            dt = time.perf_counter() - t0
            data = first
            while True:
                more = s.recv(65536)
                if not more:
                    break
                data += more
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
        return None
    return dt, body.decode(errors="replace").strip()


def checked(what, host, port, expect=None):
    """A request that must succeed (and return `expect`, if given): milliseconds."""
    r = request(host, port)
    if r is None:
        FAILED.append((what, "no answer"))
        return None
    if expect is not None and r[1] != str(expect):
        FAILED.append((what, f"answered {r[1]!r}, expected {expect!r}: state lost"))
        return None
    return r[0] * 1000


def wait_serving(host, port, deadline_s=120):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < deadline_s:
        if request(host, port, timeout=2) is not None:
            return (time.perf_counter() - t0) * 1000
        time.sleep(0.002)
    raise RuntimeError(f"{host}:{port} never served")


def run(runtime, name, image_cmd, publish=None, env=(), annotations=()):
    cmd = [DOCKER, "run", "-d", "--name", name, "--runtime", runtime]
    if publish:
        cmd += ["-p", f"127.0.0.1:{publish}:8080"]
    for e in env:
        cmd += ["-e", e]
    for a in annotations:
        cmd += ["--annotation", a]
    return sh(*cmd, *image_cmd)


def rm(*names):
    if names:
        sh(DOCKER, "rm", "-f", *names, check=False)


def container_ip(name):
    return sh(DOCKER, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)


def status(cid):
    with open(f"{STATUS_DIR}/{cid}.json") as f:
        return json.load(f)


def lw_sleep(cid):
    r = subprocess.run(["lightwhale", "sleep", cid], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"lightwhale sleep {cid[:12]}: {r.stderr.strip()}")
    return status(cid)


def wait_fill(cid, deadline_s=60):
    """Waits until a lazy wake's background fill has finished (or failed)."""
    t0 = time.time()
    while time.time() - t0 < deadline_s:
        p = status(cid).get("last_wake_phases") or {}
        if not p.get("lazy") or p.get("fill_ms") is not None or p.get("fallback"):
            return p
        time.sleep(0.02)
    raise RuntimeError(f"{cid[:12]}: lazy fill did not finish in {deadline_s} s")


def shim_pid(cid):
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and b"containerd-shim" in argv[0] and cid.encode() in argv:
            return int(pid)
    return None


def proc_mem_kib(pid):
    """Rss, Pss and private (Private_Clean + Private_Dirty) KiB, from smaps_rollup."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Anonymous"):
                    out[k] = int(v.split()[0])
    except OSError:
        return None
    return {"rss": out.get("Rss"), "pss": out.get("Pss"), "anon": out.get("Anonymous"),
            "private": out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)}


def meminfo_kib():
    """/proc/meminfo after the page cache settles: images still being written back, or
    files just deleted, move MemAvailable by hundreds of MiB for a few seconds."""
    os.sync()
    time.sleep(2)
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = int(v.split()[0])
    return out


# Kernel memory that is held, not cache: unreclaimable slab (sockets, netns, cgroups,
# mounts), kernel stacks, page tables, per-CPU areas.
KERNEL_HELD = ("SUnreclaim", "KernelStack", "PageTables", "Percpu")


def kernel_held_kib(m):
    return sum(m.get(k, 0) for k in KERNEL_HELD)


def daemons_rss_kib():
    """RSS of dockerd and containerd (the host's), whose per-container state any runtime pays."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            if comm not in ("dockerd", "containerd"):
                continue
            m = proc_mem_kib(int(pid))
            total += (m or {}).get("rss") or 0
        except OSError:
            continue
    return total


def pct(xs, p):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=0):
    return "-" if x is None else f"{x:.{digits}f}"


# --- 1. latency ----------------------------------------------------------------------
def cold_docker_run(runtime, image_cmd, n, env=()):
    out = []
    for i in range(n):
        name, port = f"{PREFIX}cold-{runtime}-{i}", free_port()
        rm(name)
        ann = ["lightwhale.io/sleep=off"] if runtime == "lightwhale" else []
        t0 = time.perf_counter()
        run(runtime, name, image_cmd, publish=port, env=env, annotations=ann)
        wait_serving("127.0.0.1", port)
        out.append((time.perf_counter() - t0) * 1000)
        rm(name)
    return out


def cold_docker_start(runtime, image_cmd, n):
    name, port = f"{PREFIX}start-{runtime}", free_port()
    rm(name)
    ann = ["lightwhale.io/sleep=off"] if runtime == "lightwhale" else []
    run(runtime, name, image_cmd, publish=port, annotations=ann)
    wait_serving("127.0.0.1", port)
    out = []
    for _ in range(n):
        sh(DOCKER, "kill", name)
        sh(DOCKER, "wait", name, check=False)
        t0 = time.perf_counter()
        sh(DOCKER, "start", name)
        wait_serving("127.0.0.1", port)
        out.append((time.perf_counter() - t0) * 1000)
    rm(name)
    return out


# Podman puts RLIMIT_NOFILE and RLIMIT_NPROC in every spec (1048576, or the host's with
# --ulimit host, which 4.3 does not honour), and runc's init may not raise them to those
# here: this VM's root lacks CAP_SYS_RESOURCE. Lower ones are always allowed.
PODMAN_LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


def podman_baseline(n_cold, n):
    """The peer: podman (Debian 12's 4.3.1, runc, the same CRIU) running the same busybox
    httpd (rlimits lowered: see PODMAN_LIMITS). Cold start (`podman run` to first byte), `podman container checkpoint`, and
    `podman container restore` to first byte (podman has no wake on connection: the
    restore is asked for, then the client connects). None without podman."""
    if not shutil.which("podman"):
        log("podman not installed (make bench-deps): no podman baseline")
        return None
    image = BUSYBOX[0]
    have = subprocess.run(["podman", "image", "exists", image]).returncode == 0
    if not have:
        subprocess.run(f"{DOCKER} save {image} | podman load -q", shell=True, check=True,
                       capture_output=True, timeout=300)
    name = f"{PREFIX}podman"
    podman = ["podman", "--runtime", "runc"]

    def prm():
        subprocess.run(podman + ["rm", "-f", "-t", "0", name], capture_output=True, timeout=120)

    res = {"cold_ms": [], "checkpoint_ms": [], "restore_ms": [], "version": sh("podman", "--version")}
    for _ in range(n_cold):
        prm()
        port = free_port()
        t0 = time.perf_counter()
        sh(*podman, "run", "-d", "--name", name, *PODMAN_LIMITS, "-p", f"127.0.0.1:{port}:8080", *BUSYBOX)
        wait_serving("127.0.0.1", port)
        res["cold_ms"].append((time.perf_counter() - t0) * 1000)
    prm()
    port = free_port()
    sh(*podman, "run", "-d", "--name", name, *PODMAN_LIMITS, "-p", f"127.0.0.1:{port}:8080", *BUSYBOX)
    wait_serving("127.0.0.1", port)
    for _ in range(n):
        t0 = time.perf_counter()
        sh(*podman, "container", "checkpoint", name, timeout=120)
        res["checkpoint_ms"].append((time.perf_counter() - t0) * 1000)
        time.sleep(0.2)
        t0 = time.perf_counter()
        sh(*podman, "container", "restore", name, timeout=120)
        if request("127.0.0.1", port) is None:
            FAILED.append(("podman restore", "no answer"))
            continue
        res["restore_ms"].append((time.perf_counter() - t0) * 1000)
    prm()
    return res


def sleep_wake_cycles(name, image_cmd, n, lazy, env=(), counter=False, awake_n=0):
    """Sleeps and wakes one container n times; a wake is the client's connect-to-first-byte."""
    port = free_port()
    rm(name)
    cid = run("lightwhale", name, image_cmd, publish=port, env=env,
              annotations=["lightwhale.io/idle-timeout=1h", f"lightwhale.io/lazy-pages={lazy}"])
    wait_serving("127.0.0.1", port, deadline_s=300)
    expect = 1 if counter else None
    awake = []
    for _ in range(awake_n):
        expect = expect + 1 if counter else None
        awake.append(checked(f"{name} awake", "127.0.0.1", port, expect))
    res = {"sleep_ms": [], "wake_ms": [], "phases": [], "pages_bytes": None, "memory_freed_bytes": None}
    for _ in range(n):
        st = lw_sleep(cid)
        res["sleep_ms"].append(st["last_sleep_ms"])
        res["pages_bytes"] = st.get("pages_bytes")
        res["memory_freed_bytes"] = st.get("memory_freed_bytes")
        time.sleep(0.2)
        expect = expect + 1 if counter else None
        res["wake_ms"].append(checked(f"{name} wake", "127.0.0.1", port, expect))
        res["phases"].append(wait_fill(cid))
        time.sleep(0.05)
    res["awake_ms"] = awake
    res["cid"] = cid
    return res


def phase_medians(phases):
    keys = ["queued_ms", "lazy_daemon_ms", "runc_restore_ms", "criu_restore_ms", "total_ms", "fill_ms"]
    out = {k: med([p.get(k) for p in phases]) for k in keys}
    out["fallbacks"] = sum(1 for p in phases if p.get("fallback"))
    out["lazy"] = sum(1 for p in phases if p.get("lazy"))
    return out


# --- 3. shim memory ------------------------------------------------------------------
def shim_memory():
    res = {}
    for runtime in ("runc", "lightwhale"):
        name = f"{PREFIX}shim-{runtime}"
        rm(name)
        ann = ["lightwhale.io/idle-timeout=1h"] if runtime == "lightwhale" else []
        port = free_port()
        cid = run(runtime, name, BUSYBOX, publish=port, annotations=ann)
        wait_serving("127.0.0.1", port)
        for _ in range(20):
            checked(f"{name} awake", "127.0.0.1", port)
        time.sleep(0.5)
        res[f"{runtime}_awake"] = proc_mem_kib(shim_pid(cid))
        if runtime == "lightwhale":
            lw_sleep(cid)
            time.sleep(1.0)
            res["lightwhale_asleep"] = proc_mem_kib(shim_pid(cid))
            checked(f"{name} wake", "127.0.0.1", port)
            time.sleep(0.5)
            res["lightwhale_after_wake"] = proc_mem_kib(shim_pid(cid))
        rm(name)
    return res


# --- 4. density ----------------------------------------------------------------------
def density(n, mib=100):
    names = [f"{PREFIX}dense-{i}" for i in range(n)]
    rm(*names)
    time.sleep(1)
    before = meminfo_kib()
    cids, ips = [], []
    for name in names:
        cids.append(run("lightwhale", name, PYTHON, env=[f"MEMORY_MIB={mib}"],
                        annotations=["lightwhale.io/idle-timeout=1h"]))
    for name in names:
        ips.append(container_ip(name))
    for name, ip in zip(names, ips):
        wait_serving(ip, 8080, deadline_s=300)  # count 1
    time.sleep(2)
    awake = meminfo_kib()
    sleep_ms = []
    for cid in cids:
        sleep_ms.append(lw_sleep(cid)["last_sleep_ms"])
    time.sleep(3)
    asleep = meminfo_kib()
    daemons_asleep = daemons_rss_kib()
    shims = [proc_mem_kib(shim_pid(cid)) for cid in cids]
    images_kib = 0
    for cid in cids:
        d = status(cid)["config"]["image_dir"]
        images_kib += int(sh("du", "-sk", d).split()[0])
    wakes = [checked(f"{name} density wake", ip, 8080, expect=2) for name, ip in zip(names, ips)]
    # Put back to sleep, then removed: what the kernel and the daemons held for the N
    # sleeping containers is what the removal gives back (images and shims gone too).
    for cid in cids:
        lw_sleep(cid)
    time.sleep(3)
    asleep2 = meminfo_kib()
    daemons_asleep2 = daemons_rss_kib()
    rm(*names)
    time.sleep(3)
    gone = meminfo_kib()
    daemons_gone = daemons_rss_kib()

    # Baseline: what the smallest container costs under the default runtime (busybox
    # httpd, awake), and how much of that is the runc shim: the rest is Docker's own
    # per-container cost (network namespace, veth, daemons' state), the same for both.
    base = [f"{PREFIX}dense-runc-{i}" for i in range(n)]
    rm(*base)
    time.sleep(2)
    b0 = meminfo_kib()
    bcids = [run("runc", name, BUSYBOX) for name in base]
    for name in base:
        wait_serving(container_ip(name), 8080)
    time.sleep(2)
    b1 = meminfo_kib()
    b1_daemons = daemons_rss_kib()
    runc_shims = [proc_mem_kib(shim_pid(cid)) for cid in bcids]
    rm(*base)
    time.sleep(3)
    b2 = meminfo_kib()
    b2_daemons = daemons_rss_kib()

    def per(a, b):
        return (a - b) / n / 1024

    return {
        "n": n, "memory_mib": mib,
        "mem_available_before_mib": before["MemAvailable"] / 1024,
        "mem_available_awake_mib": awake["MemAvailable"] / 1024,
        "mem_available_asleep_mib": asleep["MemAvailable"] / 1024,
        "per_container_awake_mib": per(before["MemAvailable"], awake["MemAvailable"]),
        "per_container_asleep_mib": per(before["MemAvailable"], asleep["MemAvailable"]),
        "per_container_asleep_memfree_mib": per(before["MemFree"], asleep["MemFree"]),
        "shim_pss_per_container_kib": med([s["pss"] for s in shims if s]),
        "shim_private_per_container_kib": med([s["private"] for s in shims if s]),
        "images_per_container_mib": images_kib / n / 1024,
        "runc_busybox_per_container_mib": per(b0["MemAvailable"], b1["MemAvailable"]),
        "runc_shim_pss_per_container_kib": med([s["pss"] for s in runc_shims if s]),
        "runc_shim_anon_per_container_kib": med([s["anon"] for s in runc_shims if s]),
        "shim_anon_per_container_kib": med([s["anon"] for s in shims if s]),
        # The honest figure: per sleeping container, the shim's PSS, plus the kernel memory
        # held for it (unreclaimable slab, stacks, page tables, per-CPU), plus what dockerd
        # and containerd keep, each measured as what removing the N gives back.
        "kernel_held_per_asleep_kib": (kernel_held_kib(asleep2) - kernel_held_kib(gone)) / n,
        "kernel_held_by_kind_per_asleep_kib": {k: (asleep2.get(k, 0) - gone.get(k, 0)) / n for k in KERNEL_HELD},
        "daemons_per_asleep_kib": (daemons_asleep2 - daemons_gone) / n,
        "daemons_first_asleep_kib": daemons_asleep,
        "runc_kernel_held_per_awake_kib": (kernel_held_kib(b1) - kernel_held_kib(b2)) / n,
        "runc_daemons_per_awake_kib": (b1_daemons - b2_daemons) / n,
        "sleep_ms_p50": med(sleep_ms),
        "wake_ms_p50": med(wakes),
        "woke_with_state": sum(1 for w in wakes if w is not None),
    }


# --- 5. throughput -------------------------------------------------------------------
def wrk_rps(ip, seconds):
    out = sh("wrk", "-t2", "-c8", f"-d{seconds}s", f"http://{ip}:8080/", timeout=seconds + 60)
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad = (int(m.group(1)) if m else 0) + (sum(int(x) for x in errs.groups()) if errs else 0)
    return rps, bad


def throughput(seconds, rounds):
    """Keep-alive connections to the counter service: a server that closes every
    connection (busybox httpd) runs the client out of ports within a round, and the
    rounds after it measure TIME_WAIT, not the runtime."""
    if not shutil.which("wrk"):
        raise RuntimeError("wrk is not installed (scripts/install-deps.sh --bench installs it)")
    res = {"runc": [], "lightwhale": []}
    ips = {}
    for runtime in res:
        name = f"{PREFIX}tput-{runtime}"
        rm(name)
        ann = ["lightwhale.io/idle-timeout=1h"] if runtime == "lightwhale" else []
        run(runtime, name, PYTHON, env=["KEEPALIVE=1"], annotations=ann)
        ips[runtime] = container_ip(name)
        wait_serving(ips[runtime], 8080)
    for _ in range(rounds):  # alternate, so drift on the host hits both alike
        for runtime in res:
            rps, bad = wrk_rps(ips[runtime], seconds)
            res[runtime].append(rps)
            for _ in range(bad):
                FAILED.append((f"wrk {runtime}", "non-2xx or socket error"))
    rm(f"{PREFIX}tput-runc", f"{PREFIX}tput-lightwhale")
    return res


# --- 6. herd -------------------------------------------------------------------------
def herd(n, mib=16):
    """N sleeping containers woken at the same moment: N clients, one per container,
    released together by a barrier. Each answer must be count 2 (one GET before the sleep)."""
    names = [f"{PREFIX}herd-{i}" for i in range(n)]
    rm(*names)
    try:
        ports = []
        while len(ports) < n:
            p = free_port()
            if p not in ports:
                ports.append(p)
        cids = [run("lightwhale", name, PYTHON, publish=port, env=[f"MEMORY_MIB={mib}"],
                    annotations=["lightwhale.io/idle-timeout=1h"]) for name, port in zip(names, ports)]
        for port in ports:
            wait_serving("127.0.0.1", port, deadline_s=300)  # count 1
        with ThreadPoolExecutor(max_workers=min(n, 8)) as ex:
            sleep_ms = list(ex.map(lambda cid: lw_sleep(cid)["last_sleep_ms"], cids))
        t0 = time.time()
        while any(status(cid)["state"] != "asleep" for cid in cids):
            if time.time() - t0 > 60:
                raise RuntimeError("herd: not all containers asleep 60 s after their sleep")
            time.sleep(0.05)
        time.sleep(0.2)

        barrier = threading.Barrier(n)
        got = [None] * n  # (perf_counter released, perf_counter answered, request() result)

        def client(i):
            barrier.wait(timeout=120)
            t = time.perf_counter()
            r = request("127.0.0.1", ports[i], timeout=120)
            got[i] = (t, time.perf_counter(), r)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        first_byte = []
        for name, g in zip(names, got):
            if g is None or g[2] is None:
                FAILED.append((f"{name} herd wake", "no answer (or not 200)"))
            elif g[2][1] != "2":
                FAILED.append((f"{name} herd wake", f"answered {g[2][1]!r}, expected '2': state lost"))
            else:
                first_byte.append(g[2][0] * 1000)
        done = [g for g in got if g is not None]
        all_answered = (max(g[1] for g in done) - min(g[0] for g in done)) * 1000 if len(done) == n else None
        wakes = [status(cid).get("last_wake_ms") for cid in cids]
    finally:
        rm(*names)
    return {
        "n": n, "memory_mib": mib, "first_byte_ms": first_byte,
        "first_byte_p50_ms": med(first_byte), "first_byte_p99_ms": pct(first_byte, 99),
        "first_byte_max_ms": max(first_byte) if first_byte else None,
        "all_answered_ms": all_answered if len(first_byte) == n else None,
        "woke_with_state": len(first_byte), "shim_wake_ms": wakes, "sleep_ms_p50": med(sleep_ms),
    }


# --- plot ----------------------------------------------------------------------------
CRI_ENDPOINTS = (
    ("containerd 1.7", "unix:///run/containerd/containerd.sock"),
    ("containerd 2.x", "unix:///run/lightwhale-containerd2/containerd.sock"),
)


def cri_wake(n):
    """A pod under the `lightwhale` handler, through containerd's CRI (lightwhale-cri, crictl's
    commands and files), busybox httpd: n sleeps (`lightwhale sleep`), each woken by a GET to the
    pod's IP from the node; connect to first byte, ms. Once per containerd."""
    import tempfile
    out = {}
    for label, endpoint in CRI_ENDPOINTS:
        cri = ["lightwhale-cri", "-r", endpoint]
        with tempfile.TemporaryDirectory() as d:
            uid = f"{PREFIX}cri-{os.getpid()}-{len(out)}"
            pod_cfg = os.path.join(d, "pod.json")
            with open(pod_cfg, "w") as f:
                json.dump({"metadata": {"name": uid, "namespace": "default", "uid": uid, "attempt": 0},
                           "log_directory": d, "linux": {},
                           "annotations": {"lightwhale.io/idle-timeout": "1h"}}, f)
            ctr_cfg = os.path.join(d, "web.json")
            with open(ctr_cfg, "w") as f:
                json.dump({"metadata": {"name": "web"},
                           "image": {"image": "docker.io/lightwhale-test/busybox:latest"},
                           "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
                           "log_path": "web.log", "linux": {}}, f)
            pod = sh(*cri, "runp", "--runtime", "lightwhale", pod_cfg)
            try:
                cid = sh(*cri, "create", pod, ctr_cfg, pod_cfg)
                sh(*cri, "start", cid)
                ip = json.loads(sh(*cri, "inspectp", pod))["status"]["network"]["ip"]
                wait_serving(ip, 8080)
                wakes = []
                for _ in range(n):
                    subprocess.run(["lightwhale", "sleep", cid], capture_output=True, timeout=120, check=True)
                    time.sleep(0.2)
                    wakes.append(checked(f"{label} pod wake", ip, 8080))
                    time.sleep(0.05)
                shim = [json.load(open(f"/run/lightwhale/containers/k8s.io/{cid}.json"))["last_wake_ms"]]
                out[label] = {"wake_ms": wakes, "shim_last_wake_ms": shim[0]}
            finally:
                sh(*cri, "stopp", pod, check=False)
                sh(*cri, "rmp", "-f", pod, check=False)
    return out


# --- 8. doze ---------------------------------------------------------------------------
def lw_doze(cid):
    r = subprocess.run(["lightwhale", "doze", cid], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"lightwhale doze {cid[:12]}: {r.stderr.strip()}")
    return status(cid)


def doze_cycles(name, image_cmd, n, env=(), counter=False):
    """Dozes and thaws one container n times: the client's connect to first byte after each
    doze, the next request (pages mostly back), and what the doze held."""
    port = free_port()
    rm(name)
    cid = run("lightwhale", name, image_cmd, publish=port, env=env, annotations=["lightwhale.io/idle-timeout=1h"])
    wait_serving("127.0.0.1", port, deadline_s=300)
    expect = 1 if counter else None
    res = {"thaw_ms": [], "next_ms": [], "shim_thaw_ms": [], "doze_ms": [], "rss_before": [], "rss_after": [],
           "swap": [], "compressed": [], "reclaimed": True, "note": None}
    for _ in range(n):
        st = lw_doze(cid)
        d = st.get("doze") or {}
        if st.get("state") != "dozing":
            FAILED.append((f"{name} doze", f"state {st.get('state')}"))
            continue
        res["doze_ms"].append(d.get("took_ms"))
        res["rss_before"].append(d.get("rss_before_bytes"))
        res["rss_after"].append(d.get("rss_after_bytes"))
        res["swap"].append(d.get("swap_bytes"))
        res["compressed"].append(d.get("swap_compressed_bytes"))
        res["reclaimed"] = res["reclaimed"] and d.get("reclaimed", False)
        res["note"] = d.get("note") or res["note"]
        time.sleep(0.2)
        expect = expect + 1 if counter else None
        res["thaw_ms"].append(checked(f"{name} thaw", "127.0.0.1", port, expect))
        expect = expect + 1 if counter else None
        res["next_ms"].append(checked(f"{name} after thaw", "127.0.0.1", port, expect))
        res["shim_thaw_ms"].append((status(cid).get("doze") or {}).get("thaw_ms"))
        time.sleep(0.05)
    return res


JDK = "/usr/lib/jvm/java-17-openjdk-amd64"
JVM_IMAGE = "lightwhale-bench/jvm:latest"
JVM = [JVM_IMAGE, f"{JDK}/bin/java", "-Xmx512m", "-XX:+UseSerialGC", "-cp", "/app", "Counter"]


def jvm_image():
    """bench/jvm/Counter.java in an image built from the host's JDK 17 (Debian's
    openjdk-17-jdk-headless): the JDK, its libraries, busybox. None without a JDK."""
    src = os.path.join(HERE, "jvm", "Counter.java")
    if not os.path.exists(f"{JDK}/bin/javac"):
        log(f"no JDK at {JDK} (openjdk-17-jdk-headless): no JVM row")
        return None
    with open(src, "rb") as f:
        stamp = "jvm counter " + hashlib.sha256(f.read()).hexdigest()[:16]
    have = subprocess.run([DOCKER, "image", "inspect", "-f", "{{.Comment}}", JVM_IMAGE],
                          capture_output=True, text=True)
    if have.returncode == 0 and have.stdout.strip() == stamp:
        return JVM_IMAGE
    root = tempfile.mkdtemp(prefix="lwbench-jvm-")
    try:
        sh(f"{JDK}/bin/javac", "-d", f"{root}/app", src)
        # The JDK with its links into /etc and /usr/share followed (-h), then every
        # shared library its programs and libraries load.
        subprocess.run(f"tar -C / -chf - {JDK[1:]} 2>/dev/null | tar -C {root} -xf -", shell=True, check=True)
        libs = set()
        for dirpath, _, files in os.walk(f"{root}{JDK}"):
            for name in files:
                if name.endswith(".so") or name == "java":
                    out = subprocess.run(["ldd", os.path.join(dirpath, name)], capture_output=True, text=True).stdout
                    libs.update(m for m in re.findall(r"(/[^ ]+\.so[^ ]*) \(0x", out))
        for lib in libs:
            if lib.startswith(JDK) or not os.path.exists(lib):
                continue
            dst = root + os.path.realpath(lib)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(os.path.realpath(lib), dst)
            if os.path.realpath(lib) != lib:
                link = root + lib
                os.makedirs(os.path.dirname(link), exist_ok=True)
                if not os.path.lexists(link):
                    os.symlink(os.path.realpath(lib), link)
        for d in ("bin", "tmp", "etc", "proc", "sys", "dev"):
            os.makedirs(f"{root}/{d}", exist_ok=True)
        os.chmod(f"{root}/tmp", 0o1777)
        shutil.copy2("/bin/busybox", f"{root}/bin/busybox")
        os.symlink("busybox", f"{root}/bin/sh")
        with open(f"{root}/etc/passwd", "w") as f:
            f.write("root:x:0:0:root:/:/bin/sh\n")
        subprocess.run(f"tar -C {root} --numeric-owner -cf - . | {DOCKER} import -m '{stamp}' - {JVM_IMAGE}",
                       shell=True, check=True, capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    log(f"built {JVM_IMAGE} from {JDK}")
    return JVM_IMAGE


def doze(n, sizes, n_cold):
    out = {"busybox": doze_cycles(f"{PREFIX}doze-small", BUSYBOX, n)}
    rm(f"{PREFIX}doze-small")
    for mib in sizes:
        out[f"python {mib} MiB"] = doze_cycles(f"{PREFIX}doze{mib}", PYTHON, max(5, n // 4),
                                              env=[f"MEMORY_MIB={mib}"], counter=True)
        rm(f"{PREFIX}doze{mib}")
    if jvm_image():
        env = ["HEAP_MIB=200"]
        r = doze_cycles(f"{PREFIX}doze-jvm", JVM, max(5, n // 4), env=env, counter=True)
        rm(f"{PREFIX}doze-jvm")
        r["cold_ms"] = cold_docker_run("runc", JVM, n_cold, env=env)
        out["jvm 200 MiB heap"] = r
    return out


def first_answer(port, expect, deadline_s=120):
    """Milliseconds until GET / on `port` first answers (None if it never does); the answer
    must be `expect` (a clone's count goes on from its template's)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < deadline_s:
        r = request("127.0.0.1", port, timeout=2)
        if r is not None:
            if r[1] != str(expect):
                FAILED.append((f"clone on {port}", f"answered {r[1]!r}, expected {expect!r}: state lost"))
            return (time.perf_counter() - t0) * 1000
        time.sleep(0.002)
    FAILED.append((f"clone on {port}", "never answered"))
    return None


def template_source(label, image_cmd, env):
    """A warmed source under lightwhale and its template: (template name, source name,
    the count it had, create ms, template record)."""
    tpl = f"lwbench-{label}"
    sh("lightwhale", "template", "rm", tpl, check=False)
    src, port = f"{PREFIX}tplsrc-{label}", free_port()
    rm(src)
    run("lightwhale", src, image_cmd, publish=port, env=env, annotations=["lightwhale.io/idle-timeout=1h"])
    wait_serving("127.0.0.1", port, deadline_s=300)
    count = 1
    for _ in range(5):
        count += 1
        checked(f"{src} warm", "127.0.0.1", port, count)
    t0 = time.perf_counter()
    sh("lightwhale", "template", "create", tpl, "--from", src)
    create_ms = (time.perf_counter() - t0) * 1000
    meta = json.loads(sh("lightwhale", "template", "inspect", tpl))
    return tpl, src, count, create_ms, meta


def clone(tpl, name, image_cmd, env, expect):
    """`docker run` of a clone of template `tpl`: (ms to its first byte, restore ms, id)."""
    port = free_port()
    rm(name)
    t0 = time.perf_counter()
    cid = run("lightwhale", name, image_cmd, publish=port, env=env,
              annotations=["lightwhale.io/idle-timeout=1h", f"lightwhale.io/template={tpl}"])
    ms = first_answer(port, expect)
    total = (time.perf_counter() - t0) * 1000 if ms is not None else None
    used = status(cid).get("template") or {}
    if not used.get("restored"):
        FAILED.append((name, f"started cold: {used.get('reason')}"))
    return total, used.get("restore_ms"), cid


def template_starts(label, image_cmd, env, n, n_cold, n_wake):
    """One service: cold start (runc), start from a template, CRIU wake."""
    tpl, src, count, create_ms, meta = template_source(label, image_cmd, env)
    starts, restores = [], []
    for i in range(n):
        name = f"{PREFIX}tpl-{label}-{i}"
        total, restore_ms, _ = clone(tpl, name, image_cmd, env, count + 1)
        starts.append(total)
        restores.append(restore_ms)
        rm(name)
    rm(src)
    sh("lightwhale", "template", "rm", tpl, check=False)
    wake = sleep_wake_cycles(f"{PREFIX}tplwake-{label}", image_cmd, n_wake, "auto", env=env, counter=True)
    rm(f"{PREFIX}tplwake-{label}")
    return {"cold_ms": cold_docker_run("runc", image_cmd, n_cold, env=env), "template_ms": starts,
            "restore_ms": restores, "wake_ms": wake["wake_ms"], "create_ms": create_ms,
            "images_bytes": meta.get("images_bytes"), "checkpoint_ms": meta.get("checkpoint_ms")}


def clone_herd(n, mib=256):
    """n clones of one template started together: all must answer with the template's
    state; host memory and disk per clone."""
    env = [f"MEMORY_MIB={mib}"]
    tpl, src, count, _, meta = template_source(f"herd{mib}", PYTHON, env)
    names = [f"{PREFIX}tplherd-{i}" for i in range(n)]
    rm(*names)
    before = meminfo_kib()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=n) as pool:
        done = list(pool.map(lambda name: clone(tpl, name, PYTHON, env, count + 1), names))
    all_ms = (time.perf_counter() - t0) * 1000
    after = meminfo_kib()
    answered = sum(1 for total, _, _ in done if total is not None)
    disk = []
    for _, _, cid in done:
        rw = sh(DOCKER, "inspect", "-s", "-f", "{{.SizeRw}}", cid, check=False)
        own = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(f"/var/lib/lightwhale/moby/{cid}")
                  for f in fs if os.path.isfile(os.path.join(d, f)))
        disk.append((int(rw) if rw.strip().isdigit() else 0) + own)
    rm(*names, src)
    sh("lightwhale", "template", "rm", tpl, check=False)
    return {"n": n, "mib": mib, "answered": answered, "all_answered_ms": all_ms,
            "first_byte_ms": [t for t, _, _ in done], "restore_ms": [r for _, r, _ in done],
            "memory_per_clone_kib": (before["MemAvailable"] - after["MemAvailable"]) / n,
            "disk_per_clone_bytes": med(disk), "template_images_bytes": meta.get("images_bytes")}


def templates(n, n_cold, n_clones):
    out = {"python 256 MiB": template_starts("py256", PYTHON, ["MEMORY_MIB=256"], n, n_cold, max(3, n // 2))}
    if jvm_image():
        out["jvm 200 MiB heap"] = template_starts("jvm", JVM, ["HEAP_MIB=200"], n, n_cold, max(3, n // 2))
    out["herd"] = clone_herd(n_clones)
    return out


def requests_during_sleep(label, image_cmd, env, n, cancel):
    """Requests that start while a sleep is under way (the status file reads "sleeping"), at
    a random point of it: the client's connect to first byte, each answer checked, and
    what became of the sleep (called off where, or slept and woken). `cancel`: with the
    sleep called off by the request (the default), or `lightwhale.io/sleep-cancel=off`
    (the baseline: the request waits for the dump and the wake)."""
    import random
    rng = random.Random(7)
    name = f"{PREFIX}during-{label}-{'cancel' if cancel else 'nocancel'}"
    port = free_port()
    rm(name)
    ann = ["lightwhale.io/idle-timeout=1h"] + ([] if cancel else ["lightwhale.io/sleep-cancel=off"])
    cid = run("lightwhale", name, image_cmd, publish=port, env=env, annotations=ann)
    wait_serving("127.0.0.1", port, deadline_s=300)
    expect = 1
    # The window: how long a sleep stays "sleeping" here (one plain sleep first).
    st = lw_sleep(cid)
    window_ms = st.get("last_sleep_ms") or 100
    expect += 1
    checked(f"{name} wake", "127.0.0.1", port, expect)
    res = {"window_ms": window_ms, "request_ms": [], "outcome": [], "offset_ms": []}
    path = f"{STATUS_DIR}/{cid}.json"
    for _ in range(n):
        time.sleep(0.3)
        offset = rng.uniform(0, window_ms) / 1000
        p = subprocess.Popen(["lightwhale", "sleep", cid], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        t_end = time.perf_counter() + 10
        seen = None
        while time.perf_counter() < t_end:
            try:
                with open(path) as f:
                    if '"state":"sleeping"' in f.read().replace(" ", ""):
                        seen = time.perf_counter()
                        break
            except OSError:
                pass
        if seen is None:
            out = p.communicate(timeout=120)[0]
            res["outcome"].append("not started: " + out.strip()[:80])
            continue
        while time.perf_counter() - seen < offset:
            pass
        expect += 1
        ms = checked(f"{name} during a sleep", "127.0.0.1", port, expect)
        out = p.communicate(timeout=120)[0]
        if "called off" in out:
            at = re.search(r"\((before_dump|before_seize|pre_dump|post_dump)", out)
            outcome = "cancelled at " + (at.group(1) if at else "?")
        elif "(sleep " in out and status(cid).get("state") == "asleep":
            # Accepted and answered before the freeze; the sleep then went ahead.
            outcome = "answered before the freeze"
            expect += 1
            checked(f"{name} wake", "127.0.0.1", port, expect)
        elif "(sleep " in out:
            outcome = "slept, woken"
        else:
            outcome = out.strip()[:80]
        res["request_ms"].append(ms)
        res["outcome"].append(outcome)
        res["offset_ms"].append(round(offset * 1000, 1))
        wait_state_awake(cid)
    rm(name)
    return res


def wait_state_awake(cid, deadline_s=30):
    t0 = time.time()
    while time.time() - t0 < deadline_s:
        if status(cid).get("state") == "awake":
            return
        time.sleep(0.01)
    raise RuntimeError(f"{cid[:12]} did not come back awake")


def during_sleep(n):
    out = {}
    for label, image_cmd, env in (("python", PYTHON, []), ("python 256 MiB", PYTHON, ["MEMORY_MIB=256"])):
        out[label] = {
            "cancel": requests_during_sleep(label.replace(" ", "-").lower(), image_cmd, env, n, True),
            "baseline": requests_during_sleep(label.replace(" ", "-").lower(), image_cmd, env, n, False),
        }
    return out


def plot(sweep, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing (scripts/install-deps.sh --bench installs it): no plot")
        return None
    sizes = sorted(int(k) for k in sweep)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    series = [("wake, eager", "eager_wake_p50_ms", "o-"), ("wake, lazy pages", "lazy_wake_p50_ms", "s-"),
              ("cold start (docker run, runc)", "cold_start_p50_ms", "k--"),
              ("sleep (checkpoint)", "eager_sleep_p50_ms", "^:")]
    for label, key, style in series:
        ys = [sweep[str(s)][key] for s in sizes]
        ax.plot(sizes, ys, style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.set_xticklabels([f"{s} MiB" if s < 1024 else f"{s // 1024} GiB" for s in sizes])
    ax.set_xlabel("touched memory of the service")
    ax.set_ylabel("milliseconds (p50)")
    ax.set_title("lightwhale: wake to first byte vs memory")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


def versions():
    def first_line(*cmd):
        try:
            return sh(*cmd).splitlines()[0]
        except Exception as e:  # noqa: BLE001 - a version string is best effort
            return f"unknown ({e})"

    osr = {}
    with open("/etc/os-release") as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            osr[k] = v.strip('"')
    return {
        "host": f"{platform.node()} ({osr.get('PRETTY_NAME', '?')}, {os.cpu_count()} CPUs, "
                f"{meminfo_kib()['MemTotal'] // 1024} MiB)",
        "kernel": platform.release(),
        "criu": first_line("criu", "--version").split()[-1],
        "runc": first_line("runc", "--version").split()[-1],
        "containerd": first_line("containerd", "--version").split()[2],
        "docker": sh(DOCKER, "version", "--format", "{{.Server.Version}}"),
    }


SECTIONS = ("latency", "memory", "shim", "density", "throughput", "herd", "cri", "doze", "template", "cancel")


def main():
    quick = "--quick" in sys.argv
    only = SECTIONS
    if "--only" in sys.argv:
        only = tuple(x for x in sys.argv[sys.argv.index("--only") + 1].split(",") if x)
        unknown = [x for x in only if x not in SECTIONS]
        if unknown or not only:
            print(f"--only: unknown section {unknown}; sections: {','.join(SECTIONS)}", file=sys.stderr)
            return 2
    out_path = os.path.join(RESULTS, "latest.json" if only == SECTIONS else f"only-{'-'.join(only)}.json")
    if "--json" in sys.argv:
        out_path = sys.argv[sys.argv.index("--json") + 1]
    os.makedirs(RESULTS, exist_ok=True)
    t_start = time.time()
    n_small = 20 if quick else 50
    n_cold = 4 if quick else 8
    sizes = {16: 8, 256: 5} if quick else {16: 20, 256: 12, 1024: 8}
    n_dense = 10 if quick else 100
    n_herd = 10 if quick else 50
    if "--herd-n" in sys.argv:
        n_herd = int(sys.argv[sys.argv.index("--herd-n") + 1])
    leftovers = sh(DOCKER, "ps", "-aq", "--filter", f"name={PREFIX}").split()
    if leftovers:
        rm(*leftovers)
    res = {"quick": quick, **versions()}
    if only != SECTIONS:
        res["only"] = list(only)
    log(f"{res['host']}, kernel {res['kernel']}, CRIU {res['criu']}, runc {res['runc']}")

    # 1. latency, small service
    if "latency" in only:
        log("1/7 latency: cold start, docker start, wake eager/lazy, awake (busybox httpd)")
        lat = {
            "cold_docker_run_runc_ms": cold_docker_run("runc", BUSYBOX, n_cold),
            "cold_docker_run_lightwhale_ms": cold_docker_run("lightwhale", BUSYBOX, n_cold),
            "docker_start_runc_ms": cold_docker_start("runc", BUSYBOX, n_cold),
            "docker_start_lightwhale_ms": cold_docker_start("lightwhale", BUSYBOX, n_cold),
        }
        lat["podman"] = podman_baseline(n_cold, max(8, n_small // 2))
        auto = sleep_wake_cycles(f"{PREFIX}small-auto", BUSYBOX, n_small, "auto", awake_n=n_small)
        lazy = sleep_wake_cycles(f"{PREFIX}small-lazy", BUSYBOX, max(8, n_small // 2), "on")
        rm(f"{PREFIX}small-auto", f"{PREFIX}small-lazy")
        lat.update({
            "wake_ms": auto["wake_ms"], "wake_lazy_ms": lazy["wake_ms"], "sleep_ms": auto["sleep_ms"],
            "awake_ms": auto["awake_ms"], "phases": phase_medians(auto["phases"]),
            "phases_lazy": phase_medians(lazy["phases"]), "pages_bytes": auto["pages_bytes"],
        })
        res["latency"] = lat

    # 2. memory sweep
    if "memory" in only:
        sweep = {}
        for mib, n in sizes.items():
            log(f"2/7 memory: {mib} MiB, {n} cycles eager and lazy, cold start")
            env = [f"MEMORY_MIB={mib}"]
            cold = cold_docker_run("runc", PYTHON, max(2, n_cold // 2), env=env)
            eager = sleep_wake_cycles(f"{PREFIX}mem{mib}-eager", PYTHON, n, "off", env=env, counter=True, awake_n=5)
            rm(f"{PREFIX}mem{mib}-eager")
            lz = sleep_wake_cycles(f"{PREFIX}mem{mib}-lazy", PYTHON, n, "on", env=env, counter=True)
            rm(f"{PREFIX}mem{mib}-lazy")
            sweep[str(mib)] = {
                "samples": n, "pages_mib": (eager["pages_bytes"] or 0) / 1048576,
                "cold_start_p50_ms": med(cold), "awake_p50_ms": med(eager["awake_ms"]),
                "eager_wake_p50_ms": med(eager["wake_ms"]), "eager_wake_p99_ms": pct(eager["wake_ms"], 99),
                "lazy_wake_p50_ms": med(lz["wake_ms"]), "lazy_wake_p99_ms": pct(lz["wake_ms"], 99),
                "eager_sleep_p50_ms": med(eager["sleep_ms"]), "lazy_sleep_p50_ms": med(lz["sleep_ms"]),
                "eager_phases": phase_medians(eager["phases"]), "lazy_phases": phase_medians(lz["phases"]),
                "raw": {"cold": cold, "eager_wake": eager["wake_ms"], "lazy_wake": lz["wake_ms"],
                        "eager_sleep": eager["sleep_ms"], "lazy_sleep": lz["sleep_ms"]},
            }
        res["memory"] = sweep

    if "shim" in only:
        log("3/7 shim memory: lightwhale vs runc shim")
        res["shim"] = shim_memory()
    if "density" in only:
        log(f"4/7 density: {n_dense} containers of 100 MiB")
        res["density"] = density(n_dense)
    if "throughput" in only:
        log("5/7 throughput: wrk against busybox httpd, runc vs lightwhale")
        res["throughput_rps"] = throughput(5 if quick else 10, 2 if quick else 3)
    if "herd" in only:
        log(f"6/7 herd: {n_herd} sleeping containers (16 MiB) woken at once")
        res["herd"] = herd(n_herd)

    # 7. Kubernetes: a pod's wake through the CRI, containerd 1.7 and 2.x
    if "cri" in only:
        log("7/7 cri: a pod's wake through containerd's CRI (1.7 and 2.x)")
        res["cri"] = cri_wake(10 if quick else 25)

    # 8. the doze tier: frozen in place, memory paged out, thawed by the next connection
    if "doze" in only:
        log("8/8 doze: thaw to first byte and dozing memory (busybox, python 16/200 MiB)")
        res["doze"] = doze(10 if quick else 40, (16, 200), n_cold)

    # 9. templates: new containers restored from a warmed one's checkpoint
    if "template" in only:
        log("9/9 template: cold start vs start from a template vs CRIU wake; clones started together")
        res["template"] = templates(5 if quick else 10, n_cold, 10 if quick else 20)

    # 10. requests that arrive while a sleep is under way: the sleep called off, or not
    if "cancel" in only:
        log("10/10 cancel: requests that start during a sleep, called off vs waiting for the wake")
        res["cancel"] = during_sleep(10 if quick else 40)

    if "latency" in res:
        lat = res["latency"]
        res.update({
            "wake_small_p50_ms": med(lat["wake_ms"]), "wake_small_p99_ms": pct(lat["wake_ms"], 99),
            "wake_small_lazy_p50_ms": med(lat["wake_lazy_ms"]),
        })
    if "memory" in res:
        sweep = res["memory"]
        res.update({
            "wake_256m_lazy_p50_ms": sweep["256"]["lazy_wake_p50_ms"],
            "wake_256m_eager_p50_ms": sweep["256"]["eager_wake_p50_ms"],
            "wake_1g_lazy_p50_ms": sweep.get("1024", {}).get("lazy_wake_p50_ms"),
            "wake_1g_eager_p50_ms": sweep.get("1024", {}).get("eager_wake_p50_ms"),
        })
    if "latency" in res:
        res.update({
            "cold_start_small_p50_ms": med(lat["cold_docker_run_runc_ms"]),
            "docker_start_small_p50_ms": med(lat["docker_start_runc_ms"]),
            "sleep_small_p50_ms": med(lat["sleep_ms"]),
            "awake_small_p50_ms": med(lat["awake_ms"]),
        })
    if "shim" in res:
        shim = res["shim"]
        res.update({
            "shim_rss_kib": (shim.get("lightwhale_asleep") or {}).get("rss"),
            "shim_rss_awake_kib": (shim.get("lightwhale_awake") or {}).get("rss"),
            "runc_shim_rss_kib": (shim.get("runc_awake") or {}).get("rss"),
        })
    if "density" in res:
        res["host_cost_asleep_per_container_kib"] = round(res["density"]["per_container_asleep_mib"] * 1024)
    if "throughput_rps" in res:
        res.update({
            "throughput_lightwhale_rps": med(res["throughput_rps"]["lightwhale"]),
            "throughput_runc_rps": med(res["throughput_rps"]["runc"]),
        })
    if "cri" in res:
        for label, c in res["cri"].items():
            key = "cri_1_7" if "1.7" in label else "cri_2"
            res[f"{key}_wake_p50_ms"] = med(c["wake_ms"])
    if "doze" in res:
        res["thaw_small_p50_ms"] = med(res["doze"]["busybox"]["thaw_ms"])
        res["thaw_small_p99_ms"] = pct(res["doze"]["busybox"]["thaw_ms"], 99)
    if "herd" in res:
        h = res["herd"]
        res.update({
            "herd_n": h["n"], "herd_first_byte_p50_ms": h["first_byte_p50_ms"],
            "herd_first_byte_p99_ms": h["first_byte_p99_ms"], "herd_all_answered_ms": h["all_answered_ms"],
        })
    res.update({
        "failed_requests": len(FAILED), "failures": FAILED[:50],
        "duration_s": round(time.time() - t_start),
    })
    res["plot"] = plot(res["memory"], os.path.join(RESULTS, "wake-vs-memory.png")) if "memory" in res else None
    with open(out_path, "w") as f:
        json.dump(res, f, indent=1)
    print_tables(res)
    print(f"\nJSON: {out_path}" + (f"; plot: {res['plot']}" if res["plot"] else ""))
    return 1 if FAILED else 0


def print_tables(r):
    only = f" (only {', '.join(r['only'])})" if r.get("only") else ""
    print(f"lightwhale benchmarks{' (QUICK)' if r['quick'] else ''}{only}: {r['host']}, kernel {r['kernel']}, "
          f"CRIU {r['criu']}, runc {r['runc']}, containerd {r['containerd']}, docker {r['docker']}; "
          f"{r['duration_s']} s")
    for key, section in (("latency", print_latency), ("memory", print_memory), ("shim", print_shim),
                         ("density", print_density), ("throughput_rps", print_throughput), ("herd", print_herd),
                         ("cri", print_cri), ("doze", print_doze), ("template", print_template),
                         ("cancel", print_cancel)):
        if key in r:
            print()
            section(r[key])
    print(f"\nfailed requests over the whole run: {r['failed_requests']}")
    for what, why in r["failures"]:
        print(f"  - {what}: {why}")


def print_latency(lat):
    print("### 1. Small service (busybox httpd): wake vs cold start vs awake, ms\n")
    print("| | p50 | p99 | samples |\n|---|---|---|---|")
    rows = [("cold start, `docker run` to first byte (runc)", lat["cold_docker_run_runc_ms"]),
            ("cold start, `docker run` to first byte (lightwhale, sleep off)", lat["cold_docker_run_lightwhale_ms"]),
            ("`docker start` of a stopped container (runc)", lat["docker_start_runc_ms"]),
            ("`docker start` of a stopped container (lightwhale)", lat["docker_start_lightwhale_ms"]),
            ("**wake to first byte, default (eager)**", lat["wake_ms"]),
            ("wake to first byte, lazy pages forced", lat["wake_lazy_ms"]),
            ("awake request (connect to first byte)", lat["awake_ms"]),
            ("sleep (checkpoint, the shim's measure)", lat["sleep_ms"])]
    pm = lat.get("podman")
    if pm:
        rows += [(f"peer: cold start, `podman run` to first byte ({pm['version']}, runc)", pm["cold_ms"]),
                 ("peer: `podman container checkpoint`", pm["checkpoint_ms"]),
                 ("peer: `podman container restore` to first byte", pm["restore_ms"])]
    for label, xs in rows:
        digits = 2 if label.startswith("awake") else 0
        print(f"| {label} | {fmt(pct(xs, 50), digits)} | {fmt(pct(xs, 99), digits)} | {len(xs)} |")
    p = lat["phases"]
    print(f"\nWake phases (p50, eager, from the connection seen): runc restore {fmt(p['runc_restore_ms'], 1)} ms, "
          f"of which CRIU {fmt(p['criu_restore_ms'], 1)} ms; handed to the task at {fmt(p['total_ms'], 1)} ms. "
          f"Lazy: daemon start {fmt(lat['phases_lazy']['lazy_daemon_ms'], 1)} ms, runc "
          f"{fmt(lat['phases_lazy']['runc_restore_ms'], 1)} ms, fill {fmt(lat['phases_lazy']['fill_ms'], 1)} ms.")


def print_memory(sweep):
    print("### 2. Wake and sleep vs touched memory (python service), p50 ms\n")
    print("| touched memory | checkpoint pages | cold start (runc) | wake eager | wake lazy | lazy: runc / CRIU / fill | "
          "sleep eager | awake request |")
    print("|---|---|---|---|---|---|---|---|")
    for k in sorted(sweep, key=int):
        s = sweep[k]
        lp = s["lazy_phases"]
        print(f"| {k} MiB | {s['pages_mib']:.0f} MiB | {fmt(s['cold_start_p50_ms'])} | {fmt(s['eager_wake_p50_ms'])} "
              f"(p99 {fmt(s['eager_wake_p99_ms'])}) | {fmt(s['lazy_wake_p50_ms'])} (p99 {fmt(s['lazy_wake_p99_ms'])}) | "
              f"{fmt(lp['runc_restore_ms'])} / {fmt(lp['criu_restore_ms'])} / {fmt(lp['fill_ms'])} | "
              f"{fmt(s['eager_sleep_p50_ms'])} | {fmt(s['awake_p50_ms'], 2)} |")


def print_shim(shim):
    print("### 3. Shim memory per container, KiB (RSS / PSS / private)\n")
    print("| shim | RSS | PSS | private |\n|---|---|---|---|")
    for label, key in [("containerd-shim-runc-v2, awake", "runc_awake"), ("lightwhale, awake", "lightwhale_awake"),
                       ("lightwhale, asleep", "lightwhale_asleep"), ("lightwhale, after a wake", "lightwhale_after_wake")]:
        m = shim.get(key) or {}
        print(f"| {label} | {m.get('rss', '-')} | {m.get('pss', '-')} | {m.get('private', '-')} |")


def print_density(d):
    print(f"### 4. Density: {d['n']} containers of {d['memory_mib']} MiB\n")
    print("| | host MemAvailable | per container |\n|---|---|---|")
    print(f"| before | {d['mem_available_before_mib']:.0f} MiB | |")
    print(f"| all awake | {d['mem_available_awake_mib']:.0f} MiB | {d['per_container_awake_mib']:.1f} MiB |")
    print(f"| all asleep | {d['mem_available_asleep_mib']:.0f} MiB | **{d['per_container_asleep_mib']:.1f} MiB** |")
    print(f"| baseline: {d['n']} busybox httpd under runc, awake | | {d['runc_busybox_per_container_mib']:.1f} MiB "
          f"(runc shim anonymous {d['runc_shim_anon_per_container_kib']} KiB) |")
    shim = d["shim_pss_per_container_kib"] or 0
    total = shim + d["kernel_held_per_asleep_kib"] + d["daemons_per_asleep_kib"]
    print(f"\nWhat one sleeping container costs the host, measured as what removing the {d['n']} gives back: "
          f"shim PSS {shim:.0f} KiB + kernel memory held {d['kernel_held_per_asleep_kib']:.0f} KiB "
          f"({', '.join(f'{k} {v:.0f}' for k, v in d['kernel_held_by_kind_per_asleep_kib'].items())}) + "
          f"dockerd/containerd {d['daemons_per_asleep_kib']:.0f} KiB = **{total / 1024:.2f} MiB**; "
          f"checkpoint images {d['images_per_container_mib']:.0f} MiB on disk. Baseline, one awake busybox "
          f"under runc: kernel {d['runc_kernel_held_per_awake_kib']:.0f} KiB, daemons "
          f"{d['runc_daemons_per_awake_kib']:.0f} KiB, its shim PSS {d['runc_shim_pss_per_container_kib']} KiB.")
    print(f"\nAsleep, per container: shim PSS {d['shim_pss_per_container_kib']} KiB (private "
          f"{d['shim_private_per_container_kib']} KiB, anonymous {d['shim_anon_per_container_kib']} KiB); checkpoint images {d['images_per_container_mib']:.0f} MiB on disk; "
          f"MemFree drop {d['per_container_asleep_memfree_mib']:.1f} MiB (page cache of the images included). "
          f"Sleep p50 {fmt(d['sleep_ms_p50'])} ms; {d['woke_with_state']}/{d['n']} woke with their state "
          f"(p50 {fmt(d['wake_ms_p50'])} ms).")


def print_throughput(tp):
    print("### 5. Awake throughput (wrk, 2 threads, 8 keep-alive connections, python service), requests/s\n")
    print("| runtime | p50 of rounds | rounds |\n|---|---|---|")
    for rt in ("runc", "lightwhale"):
        print(f"| {rt} | {fmt(med(tp[rt]))} | {', '.join(fmt(x) for x in tp[rt])} |")


def print_herd(h):
    print(f"### 6. Herd: {h['n']} sleeping containers woken at once\n")
    print(f"{h['n']} counter services ({h['memory_mib']} MiB), each asleep; {h['n']} clients released together "
          f"by a barrier, one GET / each (connect to first byte), ms:\n")
    print("| containers | first byte p50 | p99 | max | all answered | woke with their state | "
          "wake p50 / max (the shims' measure) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {h['n']} | {fmt(h['first_byte_p50_ms'])} | {fmt(h['first_byte_p99_ms'])} | "
          f"{fmt(h['first_byte_max_ms'])} | {fmt(h['all_answered_ms'])} | {h['woke_with_state']}/{h['n']} | "
          f"{fmt(med(h['shim_wake_ms']))} / {fmt(pct(h['shim_wake_ms'], 100))} |")


def print_cri(c):
    print("### 7. Kubernetes: a pod's wake through containerd's CRI, busybox httpd, ms\n")
    print("GET from the node to the pod's IP, connect to first byte, after `lightwhale sleep` "
          "(Docker's row 1 above is the same service through a published port):\n")
    print("| containerd | p50 | p99 | samples |")
    print("|---|---|---|---|")
    for label, r in c.items():
        w = r["wake_ms"]
        print(f"| {label} | {fmt(med(w))} | {fmt(pct(w, 99))} | {len(w)} |")


def print_doze(dz):
    print("### 8. Doze: frozen in place, memory paged out to zram, thawed by the next connection\n")
    print("Each cycle: `lightwhale doze`, then a GET through the published port (connect to first byte); "
          "then one more GET. Memory is the shim's record: resident before the first doze (awake), and while "
          "dozing the resident pages plus the swapped ones as zram holds them (compressed, from zram's ratio).\n")
    print("| service | thaw to first byte p50 (p99) | next request p50 | shim thaw p50 | doze (freeze + page-out): first / p50 "
          "| resident awake | dozing: resident + compressed | share of awake | samples |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r in dz.items():
        # Awake: before the first doze (later dozes find the pages the last thaw left out).
        before = next((x for x in r["rss_before"] if x is not None), 0)
        after = med([x for x in r["rss_after"] if x is not None]) or 0
        comp = med([x for x in r["compressed"] if x is not None])
        dozing = after + (comp if comp is not None else med([x for x in r["swap"] if x is not None]) or 0)
        share = f"{100 * dozing / before:.0f}%" if before else "-"
        first_doze = next((x for x in r["doze_ms"] if x is not None), None)
        print(f"| {label} | {fmt(med(r['thaw_ms']), 2)} ({fmt(pct(r['thaw_ms'], 99), 2)}) | {fmt(med(r['next_ms']), 2)} "
              f"| {fmt(med(r['shim_thaw_ms']), 2)} | {fmt(first_doze)} / {fmt(med(r['doze_ms']))} | {before / 1048576:.1f} MiB "
              f"| {dozing / 1048576:.1f} MiB | {share} | {len(r['thaw_ms'])} |")
        if not r["reclaimed"]:
            print(f"\n{label}: memory not reclaimed: {r['note']}")
    for label, r in dz.items():
        if r.get("cold_ms"):
            cold, thaw = med(r["cold_ms"]), med(r["thaw_ms"])
            print(f"\n{label}: cold start (`docker run` under runc, to first byte) p50 {fmt(cold)} ms; "
                  f"thaw to first byte p50 {fmt(thaw, 2)} ms: 1/{fmt(cold / thaw) if thaw else '-'} of it.")


def print_cancel(c):
    print("### 10. Requests that start during a sleep\n")
    print("Each sample: `lightwhale sleep`, and once the status file reads `sleeping`, a GET at a random point "
          "within that service's sleep time (`window`); connect to first byte, the count checked. With the sleep "
          "called off by the request (the default) and, as the baseline, with `lightwhale.io/sleep-cancel=off` "
          "(the request waits for the dump and a wake).\n")
    print("| service | window | called off: request p50 / p90 / max | outcomes | baseline: request p50 / p90 / max | samples |")
    print("|---|---|---|---|---|---|")
    for label, r in c.items():
        on, off = r["cancel"], r["baseline"]
        ms_on = [x for x in on["request_ms"] if x is not None]
        ms_off = [x for x in off["request_ms"] if x is not None]
        counts = {}
        for o in on["outcome"]:
            counts[o] = counts.get(o, 0) + 1
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        print(f"| {label} | {fmt(on['window_ms'])} ms | {fmt(med(ms_on), 1)} / {fmt(pct(ms_on, 90), 1)} / "
              f"{fmt(max(ms_on) if ms_on else None, 1)} ms | {outcomes} | {fmt(med(ms_off), 1)} / "
              f"{fmt(pct(ms_off, 90), 1)} / {fmt(max(ms_off) if ms_off else None, 1)} ms | {len(ms_on)} / {len(ms_off)} |")
    print("\nCalled off, by where the request found the sleep:\n")
    print("| service | outcome | requests | p50 | max |")
    print("|---|---|---|---|---|")
    for label, r in c.items():
        by = {}
        for o, ms in zip(r["cancel"]["outcome"], r["cancel"]["request_ms"]):
            if ms is not None:
                by.setdefault(o, []).append(ms)
        for o, xs in sorted(by.items()):
            print(f"| {label} | {o} | {len(xs)} | {fmt(med(xs), 1)} ms | {fmt(max(xs), 1)} ms |")


def print_template(t):
    print("### 9. Templates: a new container restored from a warmed one's checkpoint\n")
    print("Each start: `docker run` (lightwhale, `lightwhale.io/template`) to the first byte through the published "
          "port, its answer checked (the count goes on from the template's). Cold start: `docker run` under runc "
          "to first byte. CRIU wake: the same service's sleep/wake, connect to first byte.\n")
    print("| service | cold start p50 | from template p50 (p99) | of which restore p50 | share of cold | CRIU wake p50 "
          "| template: checkpoint / images | samples |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in t.items():
        if label == "herd":
            continue
        cold, tpl = med(r["cold_ms"]), med([x for x in r["template_ms"] if x is not None])
        share = f"1/{cold / tpl:.1f}" if cold and tpl else "-"
        print(f"| {label} | {fmt(cold)} ms | {fmt(tpl)} ({fmt(pct([x for x in r['template_ms'] if x], 99))}) ms "
              f"| {fmt(med([x for x in r['restore_ms'] if x]))} ms | {share} | {fmt(med([x for x in r['wake_ms'] if x]))} ms "
              f"| {fmt(r['checkpoint_ms'])} ms / {(r['images_bytes'] or 0) / 1048576:.0f} MiB | {len(r['template_ms'])} |")
    h = t.get("herd")
    if h:
        fb = [x for x in h["first_byte_ms"] if x is not None]
        print(f"\n{h['n']} clones of a {h['mib']} MiB python service started at once: {h['answered']}/{h['n']} answered "
              f"with the template's state; first byte p50 {fmt(med(fb))} ms, p99 {fmt(pct(fb, 99))} ms, all in "
              f"{fmt(h['all_answered_ms'])} ms. Host memory per clone (MemAvailable, before and after) "
              f"{h['memory_per_clone_kib'] / 1024:.0f} MiB; disk per clone (writable layer + its own image dir) "
              f"{h['disk_per_clone_bytes'] / 1024:.0f} KiB; the template's images, shared by all, "
              f"{(h['template_images_bytes'] or 0) / 1048576:.0f} MiB.")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
