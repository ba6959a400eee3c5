#!/usr/bin/env python3
"""lightwhale soak: N sleep/wake cycles of one stateful service under a steady client load.

One counter service (examples/counter.py, python image, MEMORY_MIB=64, published on
127.0.0.1:PORT, idle timeout 1h so that only the forced sleeps happen) runs under
lightwhale. A client thread makes one GET / every ~75 ms for the whole run and checks
every answer: HTTP 200, and the counter exactly one more than its previous answer (it is
the only client: a lost or repeated state is a failure). The main thread forces each
cycle: `lightwhale sleep ID` (a refused sleep, e.g. "a request is in flight", is retried
after 200 ms, at most 50 times a cycle, and counted), waits for the status file to say it
slept, then lets the client's next request wake it (no `lightwhale wake`) and waits until
it is awake again (at most 30 s a cycle).

Resources are recorded at the start, after warm-up (cycle 100; cycle 10 for runs under
200 cycles), every 100 cycles and at the end: the container's shim (open fds, threads,
Anonymous and Private_Dirty of smaps_rollup, RSS), the host's mounts and the bytes under
/var/lib/lightwhale (before the container is created and after `docker rm -f`).

Fails (exit 1) if a request failed, the counter was not monotonic, a cycle timed out, the
shim's fd or thread count or the host's mount count grew after warm-up, the shim's
anonymous memory grew by more than 256 KiB after warm-up, or /var/lib/lightwhale is not
back to its size from before the container once it is removed. Mounts and image bytes
of other containers (another test run on the same host) are left out of the checks: the
raw figures are reported beside them.

Usage: scripts/soak.py [--cycles N] [--json PATH]  (make soak CYCLES=N). Prints markdown
tables on stdout, progress on stderr every 10 cycles; writes bench/results/soak.json.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
RESULTS = os.path.join(ROOT, "bench", "results")
with open(os.path.join(ROOT, "examples", "counter.py")) as _f:
    COUNTER = _f.read()
PYTHON = ["lightwhale-test/python:latest", "python3", "-c", COUNTER]
NAMESPACE = "moby"
STATUS_DIR = f"/run/lightwhale/containers/{NAMESPACE}"
IMAGE_ROOT = "/var/lib/lightwhale"
SHIM = b"containerd-shim-lightwhale-v2"
PREFIX = "lwsoak-"
SLEEP_TRIES = 50          # a cycle's `lightwhale sleep` attempts before it counts as timed out
SLEEP_RETRY_S = 0.2       # between two attempts after a refusal
SLEEP_CALL_S = 60         # one `lightwhale sleep` (a 64 MiB dump takes ~0.2 s)
SLEEP_PHASE_S = 90        # all of a cycle's attempts together
CYCLE_TIMEOUT_S = 30.0    # from the sleep until the container is awake again
ANON_LIMIT_KIB = 256      # shim anonymous memory growth allowed after warm-up
MAX_FAILED = 100          # failed requests after which the run stops early (bounded time)
# Mount points (and /var/lib/lightwhale entries) that belong to one container: those of
# containers other than the soak's are left out of the checks.
PER_CONTAINER_MOUNTS = ("/var/lib/docker/overlay2/", "/var/lib/docker/containers/", "/run/docker/netns/",
                        "/var/run/docker/netns/", "/run/lightwhale/netns/",
                        "/run/containerd/io.containerd.runtime.v2.task/", "/run/netns/")


def log(msg):
    print(f"[soak] {msg}", file=sys.stderr, flush=True)


def sh(*args, check=True, timeout=120):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])}...: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, timeout=30.0):
    """GET / on 127.0.0.1:port: (ms from connect to the first response byte, body, error).
    error is None for an HTTP 200 answer."""
    t0 = time.perf_counter()
    dt = None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            data = s.recv(65536)
            if not data:
                return None, None, "connection closed without an answer"
            dt = (time.perf_counter() - t0) * 1000
            while True:
                more = s.recv(65536)
                if not more:
                    break
                data += more
    except OSError as e:
        return dt, None, f"{type(e).__name__}: {e}"
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n")[0]
    if not status_line.startswith(b"HTTP/1.") or b" 200 " not in status_line + b" ":
        return dt, None, f"status line {status_line[:60]!r}"
    return dt, body.decode(errors="replace").strip(), None


def status(cid):
    with open(f"{STATUS_DIR}/{cid}.json") as f:
        return json.load(f)


def pct(xs, p):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def fmt(x, digits=0):
    return "-" if x is None else f"{x:.{digits}f}"


class Client(threading.Thread):
    """One GET / every `interval` seconds until stopped; checks every answer."""

    def __init__(self, port, last_value, interval):
        super().__init__(name="soak-client", daemon=True)
        self.port, self.prev, self.interval = port, last_value, interval
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.requests = 0
        self.failed = []        # (request number, error)
        self.not_monotonic = []  # (request number, previous answer, this answer)
        self.answers = []       # (monotonic time answered, ms connect to first byte)

    def run(self):
        unanswered = 0  # requests since the last good answer that may have counted
        due = time.monotonic()
        while not self.stop_event.is_set():
            wait = due - time.monotonic()
            if wait > 0 and self.stop_event.wait(wait):
                break
            due = max(due + self.interval, time.monotonic())
            ms, body, err = request(self.port)
            with self.lock:
                self.requests += 1
                n = self.requests
                if err is None:
                    try:
                        value = int(body)
                    except ValueError:
                        err = f"answered {body[:40]!r}, not a count"
                if err is not None:
                    self.failed.append((n, err))
                    unanswered += 1
                    continue
                # Exactly previous + 1; a request that got no answer may have counted.
                if not self.prev + 1 <= value <= self.prev + 1 + unanswered:
                    self.not_monotonic.append((n, self.prev, value))
                self.prev, unanswered = value, 0
                self.answers.append((time.monotonic(), ms))

    def stop(self):
        self.stop_event.set()
        self.join(timeout=40)  # one request's timeout, bounded

    def counts(self):
        with self.lock:
            return self.requests, len(self.failed), len(self.not_monotonic)


# --- resources -----------------------------------------------------------------------
def shim_pid(cid):
    """The containerd-shim-lightwhale-v2 serving container `cid` (its command line names it)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and SHIM in argv[0] and cid.encode() in argv:
            return int(pid)
    return None


def shim_resources(pid):
    """Open fds, threads and smaps_rollup figures (KiB) of the shim; None if it is gone."""
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        threads = None
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    threads = int(line.split()[1])
        mem = {}
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Rss", "Pss", "Anonymous", "Private_Dirty"):
                    mem[k] = int(v.split()[0])
    except (OSError, ValueError):
        return None
    return {"fds": fds, "threads": threads, "anon_kib": mem.get("Anonymous"),
            "private_dirty_kib": mem.get("Private_Dirty"), "rss_kib": mem.get("Rss"), "pss_kib": mem.get("Pss")}


def others_key(ours):
    """A predicate: whether a path belongs to a container other than ours (`ours`: the
    strings that name the soak container in paths: its id, overlay dir, sandbox)."""
    def other(path, prefixes):
        if not path.startswith(prefixes):
            return False
        return not any(o and o in path for o in ours)
    return other


def host_mounts(ours):
    """(all mounts, mounts less those of other containers) in this mount namespace."""
    other = others_key(ours)
    total = kept = 0
    with open("/proc/self/mountinfo") as f:
        for line in f:
            total += 1
            fields = line.split()
            if len(fields) > 4 and not other(fields[4], PER_CONTAINER_MOUNTS):
                kept += 1
    return total, kept


def image_bytes(ours):
    """Bytes of the files under /var/lib/lightwhale: (all, less other containers' dirs,
    the soak container's own dir). A container's dir is <root>/<namespace>/<id>."""
    total = kept = own = 0
    for dirpath, dirnames, filenames in os.walk(IMAGE_ROOT):
        rel = os.path.relpath(dirpath, IMAGE_ROOT).split(os.sep)
        cid = rel[1] if len(rel) >= 2 else None
        for fn in filenames:
            try:
                size = os.lstat(os.path.join(dirpath, fn)).st_size
            except OSError:
                continue  # deleted while walking
            total += size
            mine = cid is not None and any(o and o == cid for o in ours)
            if cid is None or mine:
                kept += size
            if mine:
                own += size
    return total, kept, own


def host_resources(ours):
    mounts, mounts_ours = host_mounts(ours)
    total, kept, own = image_bytes(ours)
    return {"mounts_raw": mounts, "mounts": mounts_ours,
            "image_bytes_raw": total, "image_bytes": kept, "own_image_bytes": own}


def snapshot(cycle, pid, ours, settle_s=1.0):
    """Resources after `settle_s` of client load only: fds and threads are the smallest of
    five readings (a transient fd or a blocking-pool thread is not a leak), memory the last."""
    time.sleep(settle_s / 2)
    readings = []
    for _ in range(5):
        r = shim_resources(pid) if pid else None
        if r:
            readings.append(r)
        time.sleep(settle_s / 10)
    shim = dict(readings[-1]) if readings else None
    if shim:
        shim["fds"] = min(r["fds"] for r in readings)
        shim["threads"] = min(r["threads"] for r in readings)
    return {"cycle": cycle, "shim_pid": pid, "shim": shim, **host_resources(ours)}


# --- the run -------------------------------------------------------------------------
def force_sleep(cid, refusal_reasons):
    """`lightwhale sleep`, retried after a refusal: (slept, refusals this cycle, state said)."""
    refusals, said = 0, ""
    deadline = time.monotonic() + SLEEP_PHASE_S
    for _ in range(SLEEP_TRIES):
        try:
            r = subprocess.run(["lightwhale", "sleep", cid], capture_output=True, text=True, timeout=SLEEP_CALL_S)
            ok, said = r.returncode == 0, (r.stdout.strip() if r.returncode == 0 else r.stderr.strip())
        except subprocess.TimeoutExpired:
            ok, said = False, f"lightwhale sleep did not answer within {SLEEP_CALL_S} s"
        if ok:
            return True, refusals, said
        refusals += 1
        reason = said.removeprefix("Error: ").strip()[:160] or "refused, no reason given"
        refusal_reasons[reason] = refusal_reasons.get(reason, 0) + 1
        if time.monotonic() + SLEEP_RETRY_S > deadline:
            break
        time.sleep(SLEEP_RETRY_S)
    return False, refusals, said


def wait_for(pred, deadline, step=0.005):
    """Polls pred() until it returns a true value or time.monotonic() passes deadline."""
    while True:
        try:
            v = pred()
        except (OSError, ValueError):
            v = None  # the status file is replaced atomically; a read can still race its removal
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(step)


def soak(args, res):
    name = f"{PREFIX}{os.getpid()}"
    port = free_port()
    ours = [name]
    res["container"] = name
    res["before"] = host_resources(ours)
    client = None
    cid = None
    try:
        cmd = [DOCKER, "run", "-d", "--name", name, "--runtime", "lightwhale",
               "-p", f"127.0.0.1:{port}:8080", "-e", f"MEMORY_MIB={args.memory_mib}",
               "--annotation", "lightwhale.io/idle-timeout=1h",
               # The soak drives whole cycles (dump, hold, restore) under load: a client
               # that came during the dump would call most sleeps off (bench section 10
               # measures that path; shim/tests/cancel.rs tests it).
               "--annotation", "lightwhale.io/sleep-cancel=off", *PYTHON]
        cid = sh(*cmd, timeout=180)
        info = json.loads(sh(DOCKER, "inspect", cid))[0]
        merged = (info.get("GraphDriver", {}).get("Data") or {}).get("MergedDir", "")
        ours = [cid, os.path.dirname(merged) if merged else None,
                os.path.basename(info.get("NetworkSettings", {}).get("SandboxKey") or "") or None]
        log(f"{name} ({cid[:12]}) on 127.0.0.1:{port}, {args.memory_mib} MiB; {args.cycles} cycles")

        # Serving: the first answer gives the count the client continues from.
        deadline = time.monotonic() + 120
        first = None
        while first is None and time.monotonic() < deadline:
            _, body, err = request(port, timeout=5)
            if err is None and body.isdigit():
                first = int(body)
            else:
                time.sleep(0.05)
        if first is None:
            raise RuntimeError(f"{name} never served on 127.0.0.1:{port}")
        pid = wait_for(lambda: shim_pid(cid), time.monotonic() + 10, step=0.1)
        if pid is None:
            raise RuntimeError(f"no {SHIM.decode()} process names {cid[:12]}")
        res["shim_pid"] = pid

        client = Client(port, first, args.interval)
        client.start()
        base = status(cid)
        base_sleeps, base_wakes = base.get("sleeps", 0), base.get("wakes", 0)
        res["snapshots"] = [snapshot(0, pid, ours)]
        cyc = res["cycles_data"] = {"wake_ms": [], "wake_total_ms": [], "lazy": [], "refusals": [],
                                    "sleep_ms": [], "t_asleep": [], "t_awake": [],
                                    "fds": [], "threads": [], "anon_kib": [], "rss_kib": []}
        t_run = time.monotonic()
        for i in range(1, args.cycles + 1):
            slept, refusals, said = force_sleep(cid, res["refusal_reasons"])
            res["refusals"] += refusals
            if not slept:
                res["timeouts"].append((i, f"no sleep after {refusals} refusals; last: {said}"))
                break
            t_slept = time.monotonic()
            # Asleep: the CLI's reply is the status right after the sleep; the status file
            # counts it (the client may already be waking it by the time it is read).
            st = wait_for(lambda: (lambda s: s if s.get("sleeps", 0) >= base_sleeps + i else None)(status(cid)),
                          t_slept + CYCLE_TIMEOUT_S)
            if st is None:
                res["timeouts"].append((i, f"the status file does not count the sleep ({said!r})"))
                break
            st = wait_for(lambda: (lambda s: s if s.get("state") == "awake" and s.get("wakes", 0) >= base_wakes + i
                                   else None)(status(cid)), t_slept + CYCLE_TIMEOUT_S)
            if st is None:
                res["timeouts"].append((i, f"not awake {CYCLE_TIMEOUT_S:.0f} s after the sleep"))
                break
            t_awake = time.monotonic()
            phases = st.get("last_wake_phases") or {}
            cyc["wake_ms"].append(st.get("last_wake_ms"))
            cyc["wake_total_ms"].append(phases.get("total_ms"))
            cyc["lazy"].append(bool(phases.get("lazy")))
            cyc["sleep_ms"].append(st.get("last_sleep_ms"))
            cyc["refusals"].append(refusals)
            cyc["t_asleep"].append(t_slept)
            cyc["t_awake"].append(t_awake)
            r = shim_resources(pid) or {}
            for k in ("fds", "threads", "anon_kib", "rss_kib"):
                cyc[k].append(r.get(k))
            res["cycles_done"] = i
            time.sleep(args.gap)  # a few awake requests between a wake and the next sleep
            if i == res["warmup_cycle"] or i % args.snapshot_every == 0 or i == args.cycles:
                res["snapshots"].append(snapshot(i, shim_pid(cid), ours))
            if i % 10 == 0:
                n, f, nm = client.counts()
                s = (res["snapshots"][-1]["shim"] if res["snapshots"][-1]["cycle"] == i else r) or {}
                log(f"cycle {i}/{args.cycles}: {n} requests, {f} failed, {nm} not monotonic, "
                    f"{res['refusals']} refusals; wake {cyc['wake_ms'][-1]} ms; shim fds {s.get('fds')} "
                    f"threads {s.get('threads')} anon {s.get('anon_kib')} KiB; "
                    f"{time.monotonic() - t_run:.0f} s")
            if client.counts()[1] >= MAX_FAILED:
                res["timeouts"].append((i, f"stopped early: {MAX_FAILED} failed requests"))
                break
        if res["snapshots"][-1]["cycle"] != res["cycles_done"]:
            res["snapshots"].append(snapshot(res["cycles_done"], shim_pid(cid), ours))
        res["duration_s"] = round(time.monotonic() - t_run, 1)
        st = status(cid)
        res["status_end"] = {k: st.get(k) for k in ("state", "sleeps", "wakes", "last_error")}
    finally:
        if client is not None:
            client.stop()
            res["client"] = {"requests": client.requests, "failed": client.failed[:50],
                             "failed_count": len(client.failed), "not_monotonic": client.not_monotonic[:50],
                             "not_monotonic_count": len(client.not_monotonic), "last_count": client.prev,
                             "answers": client.answers}
        sh(DOCKER, "rm", "-f", name, check=False, timeout=120)
        # Removed: its shim exits and deletes its images; wait for that, bounded.
        if cid:
            wait_for(lambda: shim_pid(cid) is None and not os.path.exists(f"{IMAGE_ROOT}/{NAMESPACE}/{cid}"),
                     time.monotonic() + 30, step=0.1)
            wait_for(lambda: host_resources(ours)["image_bytes"] == res["before"]["image_bytes"],
                     time.monotonic() + 10, step=0.2)
        res["after"] = host_resources(ours)


def client_wake_ms(answers, t_asleep):
    """The client's view of each wake: the first answer after each sleep (its request was
    held while the container slept), ms from its connect to the first byte."""
    out, j = [], 0
    for t in t_asleep:
        while j < len(answers) and answers[j][0] < t:
            j += 1
        out.append(answers[j][1] if j < len(answers) else None)
    return out


def verdict(res):
    """Checks, and the table rows of the resources."""
    problems = []
    c = res.get("client") or {}
    if c.get("failed_count", 0):
        problems.append(f"{c['failed_count']} failed requests (first: {c['failed'][0]})")
    if c.get("not_monotonic_count", 0):
        problems.append(f"counter not monotonic {c['not_monotonic_count']} times (first: request, previous, "
                        f"answer = {c['not_monotonic'][0]})")
    for cycle, why in res["timeouts"]:
        problems.append(f"cycle {cycle}: {why}")
    if res.get("error"):
        problems.append(res["error"])
    pids = {s["shim_pid"] for s in res.get("snapshots", [])}
    if len(pids) > 1 or None in pids:
        problems.append(f"the shim serving the container changed or vanished during the run (pids {sorted(map(str, pids))})")
    snaps = {s["cycle"]: s for s in res.get("snapshots", [])}
    start, warm = snaps.get(0), snaps.get(res["warmup_cycle"])
    end = res["snapshots"][-1] if res.get("snapshots") else None
    rows = []

    def shim_val(s, k):
        return ((s or {}).get("shim") or {}).get(k)

    def row(label, get, limit=None, unit=""):
        a, w, e = get(start), get(warm), get(end)
        growth = None if w is None or e is None else e - w
        verdict_s = "-"
        if limit is not None and growth is not None:
            verdict_s = "ok" if growth <= limit else f"**grew** (limit {limit}{unit})"
            if growth > limit:
                problems.append(f"{label} grew by {growth}{unit} after warm-up (cycle {res['warmup_cycle']} "
                                f"{w} -> cycle {end['cycle']} {e})")
        elif limit is not None:
            problems.append(f"{label}: not measured at warm-up and end")
            verdict_s = "not measured"
        rows.append((label, a, w, e, growth, verdict_s))

    if warm is None or end is None or end["cycle"] <= res["warmup_cycle"]:
        problems.append(f"the run did not get past warm-up (cycle {res['warmup_cycle']}): no growth measured")
    else:
        row("shim open fds", lambda s: shim_val(s, "fds"), 0)
        row("shim threads", lambda s: shim_val(s, "threads"), 0)
        row("shim Anonymous, KiB", lambda s: shim_val(s, "anon_kib"), ANON_LIMIT_KIB, " KiB")
        row("shim Private_Dirty, KiB", lambda s: shim_val(s, "private_dirty_kib"))
        row("shim RSS, KiB", lambda s: shim_val(s, "rss_kib"))
        row("host mounts (other containers' left out)", lambda s: s and s["mounts"], 0)
        row("host mounts (all)", lambda s: s and s["mounts_raw"])
        row("its checkpoint dir, bytes", lambda s: s and s["own_image_bytes"])
    b, a = res["before"], res.get("after")
    if a is not None:
        ok = a["image_bytes"] == b["image_bytes"]
        rows.append((f"{IMAGE_ROOT} bytes (other containers' left out): before create / after rm",
                     b["image_bytes"], None, a["image_bytes"], a["image_bytes"] - b["image_bytes"],
                     "ok" if ok else "**not back**"))
        if not ok:
            problems.append(f"{IMAGE_ROOT} holds {a['image_bytes'] - b['image_bytes']} bytes more after the "
                            f"container was removed than before it was created")
        rows.append((f"{IMAGE_ROOT} bytes (all): before create / after rm", b["image_bytes_raw"], None,
                     a["image_bytes_raw"], a["image_bytes_raw"] - b["image_bytes_raw"], "-"))
        rows.append(("host mounts (other containers' left out): before create / after rm", b["mounts"], None,
                     a["mounts"], a["mounts"] - b["mounts"], "-"))
    return problems, rows


def print_report(res, problems, rows):
    c = res.get("client") or {}
    cyc = res.get("cycles_data") or {}
    wake = cyc.get("wake_ms", [])
    cw = res.get("client_wake_ms", [])
    print(f"lightwhale soak: {res['cycles_done']}/{res['cycles']} sleep/wake cycles of one counter service "
          f"({res['memory_mib']} MiB, a request every {res['interval_s'] * 1000:.0f} ms), "
          f"{res.get('duration_s', '-')} s\n")
    print("| cycles | requests | failed requests | counter monotonic | sleep refusals | wake p50 / p99 ms "
          "(shim) | first answer after a sleep p50 / p99 ms (client) | lazy wakes |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {res['cycles_done']} | {c.get('requests', 0)} | {c.get('failed_count', 0)} | "
          f"{'yes' if not c.get('not_monotonic_count') and c else 'no'} | {res['refusals']} | "
          f"{fmt(pct(wake, 50))} / {fmt(pct(wake, 99))} | {fmt(pct(cw, 50))} / {fmt(pct(cw, 99))} | "
          f"{sum(cyc.get('lazy', []))}/{len(cyc.get('lazy', []))} |")
    print(f"\nWake (shim): the status file's last_wake_ms after each cycle. The client's first answer after "
          f"a sleep counts from its connect, often made while the checkpoint was still being written "
          f"(sleep p50 {fmt(pct(cyc.get('sleep_ms', []), 50))} ms), so it includes that wait. All client "
          f"requests: p50 {fmt(res['client_request_ms']['p50'], 1)} ms, max {fmt(res['client_request_ms']['max'])} ms.")
    if res["refusal_reasons"]:
        print("\nRefusals: " + "; ".join(f"{n}x {why}" for why, n in res["refusal_reasons"].items()))
    w = res["warmup_cycle"]
    end_cycle = res["snapshots"][-1]["cycle"] if res.get("snapshots") else "-"
    print(f"\n| resource | start (cycle 0) | after warm-up (cycle {w}) | end (cycle {end_cycle}) | "
          f"growth after warm-up | check |")
    print("|---|---|---|---|---|---|")
    for label, a, wv, e, g, v in rows:
        g_s = "-" if g is None else f"{g:+d}"
        print(f"| {label} | {'-' if a is None else a} | {'-' if wv is None else wv} | {'-' if e is None else e} "
              f"| {g_s} | {v} |")
    if len(res.get("snapshots", [])) > 3:
        print("\n| cycle | shim fds | threads | Anonymous KiB | Private_Dirty KiB | RSS KiB | host mounts | "
              "checkpoint dir bytes |")
        print("|---|---|---|---|---|---|---|---|")
        for s in res["snapshots"]:
            m = s["shim"] or {}
            print(f"| {s['cycle']} | {m.get('fds', '-')} | {m.get('threads', '-')} | {m.get('anon_kib', '-')} | "
                  f"{m.get('private_dirty_kib', '-')} | {m.get('rss_kib', '-')} | {s['mounts']} | "
                  f"{s['own_image_bytes']} |")
    print(f"\n{'PASS' if not problems else 'FAIL'}")
    for p in problems:
        print(f"  - {p}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--json", default=os.path.join(RESULTS, "soak.json"))
    ap.add_argument("--memory-mib", type=int, default=64)
    ap.add_argument("--interval", type=float, default=0.075, help="seconds between two client requests")
    ap.add_argument("--gap", type=float, default=0.2, help="seconds awake between a wake and the next sleep")
    ap.add_argument("--snapshot-every", type=int, default=100)
    args = ap.parse_args()
    if args.cycles <= 10:
        ap.error("--cycles must be more than 10: growth is measured after warm-up, at cycle 10")

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)  # through the finally blocks: the container is removed

    signal.signal(signal.SIGTERM, on_term)
    leftovers = sh(DOCKER, "ps", "-aq", "--filter", f"name={PREFIX}").split()
    if leftovers:
        sh(DOCKER, "rm", "-f", *leftovers, check=False)
    res = {"cycles": args.cycles, "memory_mib": args.memory_mib, "interval_s": args.interval, "gap_s": args.gap,
           "warmup_cycle": min(args.cycles, 100 if args.cycles >= 200 else 10), "cycles_done": 0,
           "refusals": 0, "refusal_reasons": {}, "timeouts": [], "snapshots": []}
    try:
        soak(args, res)
    except KeyboardInterrupt:
        res["error"] = "interrupted"
    except Exception as e:  # noqa: BLE001 - reported as a failure of the run, after the clean-up
        res["error"] = f"{type(e).__name__}: {e}"
    cyc = res.get("cycles_data") or {}
    answers = (res.get("client") or {}).pop("answers", [])
    res["client_wake_ms"] = client_wake_ms(answers, cyc.get("t_asleep", []))
    res["client_request_ms"] = {"p50": pct([a[1] for a in answers], 50), "p99": pct([a[1] for a in answers], 99),
                                "max": pct([a[1] for a in answers], 100)}
    problems, rows = verdict(res)
    wake = cyc.get("wake_ms", [])
    res.update({
        "requests": (res.get("client") or {}).get("requests", 0),
        "failed_requests": (res.get("client") or {}).get("failed_count", 0),
        "counter_monotonic": bool(res.get("client")) and not res["client"]["not_monotonic_count"],
        "wake_p50_ms": pct(wake, 50), "wake_p99_ms": pct(wake, 99),
        "client_wake_p50_ms": pct(res["client_wake_ms"], 50), "client_wake_p99_ms": pct(res["client_wake_ms"], 99),
        "resources": [dict(zip(("resource", "start", "warmup", "end", "growth_after_warmup", "check"), r))
                      for r in rows],
        "problems": problems, "passed": not problems,
    })
    for k in ("t_asleep", "t_awake"):
        cyc.pop(k, None)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1)
    print_report(res, problems, rows)
    print(f"\nJSON: {args.json}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
