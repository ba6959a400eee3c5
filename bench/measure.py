#!/usr/bin/env python3
"""lightwhale measurements, each compared side by side in one run.

  cold start   docker run -> first HTTP byte, under runc and under lightwhale
  sleep        checkpoint time (the shim's own measure), lightwhale
  wake         connection to a sleeping container -> first byte (client side)
  awake        request latency of an awake container (the floor a wake is added to)
  shim RSS     lightwhale's shim vs containerd's Go runc shim, same container, awake/asleep
  run --rm     `docker run --rm IMAGE true`, both runtimes

Usage: bench/measure.py [--quick] [--json PATH]. Needs the stack `make deps install images`
sets up. Prints a markdown table; writes JSON (default bench/results/latest.json).
"""

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time

DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
HERE = os.path.dirname(os.path.abspath(__file__))
COUNTER = open(os.path.join(HERE, "..", "examples", "counter.py")).read()
SERVICES = {
    "busybox": (["lightwhale-test/busybox:latest", "httpd", "-f", "-p", "8080", "-h", "/www"], []),
    "python": (["lightwhale-test/python:latest", "python3", "-c", COUNTER], []),
    "python-256m": (["lightwhale-test/python:latest", "python3", "-c", COUNTER], ["-e", "MEMORY_MIB=256"]),
}


def sh(*args, check=True):
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout.strip()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def first_byte(port, timeout=30.0):
    """Seconds from connect to the first response byte of GET /, or None."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            if not s.recv(1):
                return None
            dt = time.perf_counter() - t0
            while s.recv(65536):
                pass
            return dt
    except OSError:
        return None


def wait_serving(port, deadline_s=60):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < deadline_s:
        if first_byte(port, timeout=2) is not None:
            return time.perf_counter() - t0
        time.sleep(0.005)
    raise RuntimeError(f"port {port} never served")


def run_container(runtime, service, name, port, annotations=()):
    args, extra = SERVICES[service]
    cmd = [DOCKER, "run", "-d", "--name", name, "--runtime", runtime, "-p", f"127.0.0.1:{port}:8080", *extra]
    for a in annotations:
        cmd += ["--annotation", a]
    return sh(*cmd, *args)


def rm(name):
    sh(DOCKER, "rm", "-f", name, check=False)


def cold_start(runtime, service, n):
    out = []
    for i in range(n):
        name, port = f"lwbench-cold-{runtime}-{service}-{i}", free_port()
        rm(name)
        t0 = time.perf_counter()
        run_container(runtime, service, name, port, ["lightwhale.io/sleep=off"] if runtime == "lightwhale" else [])
        wait_serving(port)
        out.append((time.perf_counter() - t0) * 1000)
        rm(name)
    return out


def status(cid):
    with open(f"/run/lightwhale/containers/moby/{cid}.json") as f:
        return json.load(f)


def shim_rss_kib(cid):
    for pid in sh("pgrep", "-f", "containerd-shim", check=False).split():
        try:
            cmdline = open(f"/proc/{pid}/cmdline").read()
        except OSError:
            continue
        if f"-id\0{cid}" in cmdline:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    return None


def sleep_wake(service, n):
    name, port = f"lwbench-sw-{service}", free_port()
    rm(name)
    cid = run_container("lightwhale", service, name, port, ["lightwhale.io/idle-timeout=10m"])
    wait_serving(port)
    awake = [first_byte(port) * 1000 for _ in range(n)]
    rss_awake = shim_rss_kib(cid)
    sleeps, wakes, freed, rss_asleep, failed = [], [], [], None, 0
    for _ in range(n):
        r = subprocess.run(["lightwhale", "sleep", cid], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"lightwhale sleep: {r.stderr.strip()}")
        st = status(cid)
        sleeps.append(st["last_sleep_ms"])
        freed.append(st.get("memory_freed_bytes") or 0)
        if rss_asleep is None:
            time.sleep(0.2)
            rss_asleep = shim_rss_kib(cid)
        fb = first_byte(port)
        if fb is None:
            failed += 1
        else:
            wakes.append(fb * 1000)
        time.sleep(0.05)
    rm(name)
    return dict(awake=awake, sleeps=sleeps, wakes=wakes, freed=freed, failed=failed,
                rss_awake=rss_awake, rss_asleep=rss_asleep)


def runc_shim_rss(service):
    name, port = f"lwbench-rss-runc-{service}", free_port()
    rm(name)
    cid = run_container("runc", service, name, port)
    wait_serving(port)
    time.sleep(0.3)
    rss = shim_rss_kib(cid)
    rm(name)
    return rss


def run_rm(runtime, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        sh(DOCKER, "run", "--rm", "--runtime", runtime, "lightwhale-test/busybox:latest", "true")
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def fmt(x):
    return "-" if x is None else f"{x:.0f}"


def main():
    quick = "--quick" in sys.argv
    out_path = os.path.join(HERE, "results", "latest.json")
    if "--json" in sys.argv:
        out_path = sys.argv[sys.argv.index("--json") + 1]
    n = 10 if quick else 30
    services = ["busybox", "python"] if quick else ["busybox", "python", "python-256m"]
    res = {
        "host": platform.node(),
        "kernel": platform.release(),
        "criu": sh("criu", "--version").splitlines()[0].split()[-1],
        "runc": sh("runc", "--version").splitlines()[0].split()[-1],
        "samples": n,
        "services": {},
    }
    rows = []
    for svc in services:
        cold_runc = cold_start("runc", svc, max(5, n // 3))
        cold_lw = cold_start("lightwhale", svc, max(5, n // 3))
        sw = sleep_wake(svc, n)
        rss_runc = runc_shim_rss(svc)
        res["services"][svc] = {
            "cold_start_runc_ms": cold_runc, "cold_start_lightwhale_ms": cold_lw,
            "sleep_ms": sw["sleeps"], "wake_first_byte_ms": sw["wakes"], "awake_first_byte_ms": sw["awake"],
            "memory_freed_bytes": sw["freed"], "failed_requests": sw["failed"],
            "shim_rss_kib_awake": sw["rss_awake"], "shim_rss_kib_asleep": sw["rss_asleep"], "runc_shim_rss_kib": rss_runc,
        }
        rows.append((svc, cold_runc, cold_lw, sw, rss_runc))
    rr_runc, rr_lw = run_rm("runc", max(5, n // 3)), run_rm("lightwhale", max(5, n // 3))
    res["docker_run_rm_ms"] = {"runc": rr_runc, "lightwhale": rr_lw}
    b = res["services"]["busybox"]
    res.update({
        "wake_small_p50_ms": pct(b["wake_first_byte_ms"], 50), "wake_small_p99_ms": pct(b["wake_first_byte_ms"], 99),
        "sleep_small_p50_ms": pct(b["sleep_ms"], 50), "cold_start_small_p50_ms": pct(b["cold_start_runc_ms"], 50),
        "shim_rss_kib": b["shim_rss_kib_awake"], "runc_shim_rss_kib": b["runc_shim_rss_kib"],
        "failed_requests": sum(s["failed_requests"] for s in res["services"].values()),
    })
    if "python-256m" in res["services"]:
        res["wake_256m_eager_p50_ms"] = pct(res["services"]["python-256m"]["wake_first_byte_ms"], 50)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(res, f, indent=1)

    print(f"host {res['host']}, kernel {res['kernel']}, CRIU {res['criu']}, runc {res['runc']}, {n} samples\n")
    print("| service | cold start runc p50 | cold start lightwhale p50 | sleep p50 / p99 | wake to first byte p50 / p99 | awake request p50 | memory freed | shim RSS awake / asleep | runc shim RSS | failed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for svc, cr, cl, sw, rss_runc in rows:
        print(f"| {svc} | {fmt(pct(cr, 50))} ms | {fmt(pct(cl, 50))} ms | {fmt(pct(sw['sleeps'], 50))} / {fmt(pct(sw['sleeps'], 99))} ms"
              f" | {fmt(pct(sw['wakes'], 50))} / {fmt(pct(sw['wakes'], 99))} ms | {pct(sw['awake'], 50):.1f} ms"
              f" | {statistics.median(sw['freed']) / 1048576:.1f} MiB | {sw['rss_awake']} / {sw['rss_asleep']} KiB | {rss_runc} KiB | {sw['failed']} |")
    print(f"\n`docker run --rm busybox true`: runc p50 {fmt(pct(rr_runc, 50))} ms, lightwhale p50 {fmt(pct(rr_lw, 50))} ms")
    print(f"\nJSON: {out_path}")
    return 1 if res["failed_requests"] else 0


if __name__ == "__main__":
    sys.exit(main())
