#!/usr/bin/env python3
"""Checks of the workspace's shape that neither rustc nor clippy makes (run by `make lint`).

1. rust-version: the workspace's `rust-version` is at least what its locked dependencies
   declare (for this host's target, everything the workspace builds or tests with). Our
   own code is held to the same version by clippy's `incompatible_msrv` lint, which reads
   it from Cargo.toml.
2. The engine knows nothing of containerd: no containerd crate in its dependency tree.

Exit status 1 with the reason on any failure."""

import json
import re
import subprocess
import sys


def version(v):
    return tuple(int(x) for x in (v.split(".") + ["0", "0"])[:3])


def cargo(*args):
    return subprocess.run(["cargo", *args], check=True, capture_output=True, text=True).stdout


def main():
    failures = []
    host = re.search(r"^host: (\S+)$", subprocess.run(["rustc", "-vV"], check=True,
                     capture_output=True, text=True).stdout, re.M).group(1)
    meta = json.loads(cargo("metadata", "--format-version", "1", "--filter-platform", host))
    members = set(meta["workspace_members"])
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    declared = {packages[m].get("rust_version") for m in members}
    if len(declared) != 1 or None in declared:
        failures.append(f"every member must take rust-version from the workspace: {declared}")
    declared = max(declared - {None}, key=version, default="0")
    seen, stack = set(), list(members)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for dep in nodes[node]["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            # Dev-dependencies count for the workspace's own members (its tests), not for
            # the dependencies of dependencies.
            if node in members or kinds & {None, "build"}:
                stack.append(dep["pkg"])
    needs = [(packages[p].get("rust_version") or "0", packages[p]["name"], packages[p]["version"])
             for p in seen if p not in members]
    top = max(needs, key=lambda n: version(n[0]))
    if version(top[0]) > version(declared):
        failures.append(f"rust-version is {declared}, but {top[1]} {top[2]} needs {top[0]}: "
                        "raise rust-version in Cargo.toml")
    else:
        print(f"rust-version {declared}: locked dependencies need at most {top[0]} ({top[1]} {top[2]})")

    tree = cargo("tree", "-p", "lightwhale-engine", "-e", "normal,build", "--prefix", "none")
    containerd = sorted({l.split()[0] for l in tree.splitlines() if "containerd" in l})
    if containerd:
        failures.append(f"lightwhale-engine must not depend on containerd: {', '.join(containerd)}")
    else:
        print("lightwhale-engine: no containerd crate in its tree")

    for f in failures:
        print(f"check-workspace: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
