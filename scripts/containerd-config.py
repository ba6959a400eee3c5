#!/usr/bin/python3
"""Edits containerd's config.toml for lightwhale's CRI set-up (used by install-deps.sh).

Merges, never clobbers: tomlkit keeps every other table, key and comment as it was; a
value is changed only when lightwhale needs it, each change is printed (one line each,
nothing when the file already has everything), and the file is written only then, after a
timestamped backup (FILE.bak.YYYYmmddHHMMSS).

  cri FILE --sandbox-image IMG --cni-bin-dir DIR [--cni-conf-dir DIR]
      The CRI plugin of a config version 2 (containerd 1.7: plugins."io.containerd.grpc.v1.cri")
      or 3 (containerd 2.x: plugins."io.containerd.cri.v1.runtime" / ".images"):
      runtime handler "lightwhale" (runtime_type io.containerd.lightwhale.v2, pod and
      container annotations lightwhale.io/*), "runc" declared (CRI fails to load without
      its default runtime once any runtime table exists), restrict_oom_score_adj = true
      (no CAP_SYS_RESOURCE on some VMs), the sandbox (pause) image, CNI's plugin and conf dirs.
  instance FILE --root DIR --state DIR --address SOCK
      A second containerd's own config (version 3; created when missing): its root, state,
      socket, managed-opt path, and NRI off (its socket path is fixed and shared).
  cni-conf-dir FILE
      Prints the CNI conf dir the file's CRI plugin reads (containerd's default if unset).
  conflist FILE --name NAME --bridge DEV --subnet CIDR
      Writes a CNI bridge network (bridge + host-local, then portmap) unless FILE already
      says exactly that.

Exit status 1 with the reason when a file cannot be read as what it should be."""

import argparse
import json
import os
import shutil
import sys
import time

try:
    import tomlkit
except ImportError:
    sys.exit("containerd-config.py: python3-tomlkit is needed (apt-get install python3-tomlkit)")

HANDLER = "lightwhale"
RUNTIME_TYPE = "io.containerd.lightwhale.v2"
ANNOTATIONS = "lightwhale.io/*"
# Upstream's pause images (the default sandbox image of each containerd): replaced by ours,
# since no registry is reachable; any other image an operator chose is kept.
DEFAULT_SANDBOX_PREFIXES = ("registry.k8s.io/pause:", "k8s.gcr.io/pause:")
DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_BIN_DIR = "/opt/cni/bin"


def fail(msg):
    print(f"containerd-config.py: {msg}", file=sys.stderr)
    sys.exit(1)


def load(path, missing_ok=False):
    if missing_ok and not os.path.exists(path):
        return tomlkit.document()
    try:
        with open(path, encoding="utf-8") as f:
            return tomlkit.parse(f.read())
    except (OSError, tomlkit.exceptions.ParseError) as e:
        fail(f"cannot read {path}: {e}")


def save(path, doc, changes):
    """Writes the file if anything changed (after a backup), and reports each change."""
    if not changes:
        return
    if os.path.exists(path):
        shutil.copy2(path, f"{path}.bak.{time.strftime('%Y%m%d%H%M%S')}")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(tomlkit.dumps(doc))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    for change in changes:
        print(f"{path}: {change}")


def table(doc, *keys):
    """The table at keys, made (as a [header] table) where missing."""
    t = doc
    for k in keys:
        if k not in t:
            t[k] = tomlkit.table()
        t = t[k]
        if not hasattr(t, "keys"):
            fail(f"{'.'.join(keys)}: {k} is not a table")
    return t


def version(doc, path):
    v = doc.get("version", 1)
    if v not in (2, 3):
        fail(f"{path}: config version {v} is not supported (2 for containerd 1.7, 3 for 2.x)")
    return v


def cri_tables(doc, v):
    """The tables holding (runtimes' parent, oom flag, cni, sandbox image) for the version."""
    if v == 2:
        cri = table(doc, "plugins", "io.containerd.grpc.v1.cri")
        return cri, cri, table(cri, "cni"), (cri, "sandbox_image")
    runtime = table(doc, "plugins", "io.containerd.cri.v1.runtime")
    images = table(doc, "plugins", "io.containerd.cri.v1.images")
    return runtime, runtime, table(runtime, "cni"), (table(images, "pinned_images"), "sandbox")


def set_value(t, key, want, changes, what):
    if t.get(key) != want:
        t[key] = want
        changes.append(f"{what} = {json.dumps(want)}")


def ensure_listed(t, key, item, changes, what):
    have = t.get(key)
    if have is None or not isinstance(have, list):
        t[key] = [item]
        changes.append(f"{what} = [{json.dumps(item)}]")
    elif item not in have:
        have.append(item)
        changes.append(f"{what} += {json.dumps(item)}")


def cmd_cri(args):
    doc = load(args.file)
    v = version(doc, args.file)
    runtime_parent, oom, cni, (image_table, image_key) = cri_tables(doc, v)
    changes = []
    runtimes = table(runtime_parent, "containerd", "runtimes")
    if "runc" not in runtimes:
        runc = table(runtimes, "runc")
        runc["runtime_type"] = "io.containerd.runc.v2"
        changes.append("runtimes.runc declared (CRI's default runtime)")
    lw = table(runtimes, HANDLER)
    set_value(lw, "runtime_type", RUNTIME_TYPE, changes, f"runtimes.{HANDLER}.runtime_type")
    for key in ("pod_annotations", "container_annotations"):
        ensure_listed(lw, key, ANNOTATIONS, changes, f"runtimes.{HANDLER}.{key}")
    set_value(oom, "restrict_oom_score_adj", True, changes, "restrict_oom_score_adj")

    image = image_table.get(image_key)
    if image != args.sandbox_image:
        if image is None or str(image).startswith(DEFAULT_SANDBOX_PREFIXES):
            set_value(image_table, image_key, args.sandbox_image, changes, f"sandbox image ({image_key})")
        else:
            print(f"{args.file}: note: keeping the sandbox image {image} set there "
                  f"(lightwhale's tests expect {args.sandbox_image})", file=sys.stderr)

    if v == 3:
        ensure_listed(cni, "bin_dirs", args.cni_bin_dir, changes, "cni.bin_dirs")
        if cni.get("bin_dir") not in (None, "", args.cni_bin_dir):
            print(f"{args.file}: note: cni.bin_dir = {cni['bin_dir']} overrides bin_dirs",
                  file=sys.stderr)
    else:
        have = cni.get("bin_dir")
        unused_default = have == DEFAULT_BIN_DIR and not os.path.exists(f"{DEFAULT_BIN_DIR}/bridge")
        if have is None or unused_default:
            set_value(cni, "bin_dir", args.cni_bin_dir, changes, "cni.bin_dir")
        elif have != args.cni_bin_dir:
            print(f"{args.file}: note: keeping cni.bin_dir = {have}", file=sys.stderr)
    if args.cni_conf_dir:
        set_value(cni, "conf_dir", args.cni_conf_dir, changes, "cni.conf_dir")
    save(args.file, doc, changes)


def cmd_instance(args):
    doc = load(args.file, missing_ok=True)
    changes = []
    if "version" not in doc:
        doc.add(tomlkit.comment("A second containerd beside the host's, for lightwhale's CRI tests "
                                "(scripts/install-deps.sh)."))
    set_value(doc, "version", 3, changes, "version")
    set_value(doc, "root", args.root, changes, "root")
    set_value(doc, "state", args.state, changes, "state")
    set_value(table(doc, "grpc"), "address", args.address, changes, "grpc.address")
    plugins = table(doc, "plugins")
    set_value(table(plugins, "io.containerd.internal.v1.opt"), "path", f"{args.root}/opt", changes,
              "managed opt path")
    set_value(table(plugins, "io.containerd.nri.v1.nri"), "disable", True, changes, "nri.disable")
    save(args.file, doc, changes)


def cmd_cni_conf_dir(args):
    doc = load(args.file)
    _, _, cni, _ = cri_tables(doc, version(doc, args.file))
    print(cni.get("conf_dir") or DEFAULT_CONF_DIR)


def cmd_conflist(args):
    want = {
        "cniVersion": "1.0.0",
        "name": args.name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": args.bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": args.subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    try:
        with open(args.file, encoding="utf-8") as f:
            if json.load(f) == want:
                return
    except (OSError, ValueError):
        pass
    if os.path.exists(args.file):
        # Not *.conflist, so containerd never loads the backup as a network.
        shutil.copy2(args.file, f"{args.file}.bak.{time.strftime('%Y%m%d%H%M%S')}")
    os.makedirs(os.path.dirname(args.file), exist_ok=True)
    tmp = f"{args.file}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(want, f, indent=2)
        f.write("\n")
    os.replace(tmp, args.file)
    print(f"{args.file}: CNI network {args.name} ({args.bridge}, {args.subnet})")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cri")
    c.add_argument("file")
    c.add_argument("--sandbox-image", required=True)
    c.add_argument("--cni-bin-dir", required=True)
    c.add_argument("--cni-conf-dir")
    c.set_defaults(run=cmd_cri)
    i = sub.add_parser("instance")
    i.add_argument("file")
    i.add_argument("--root", required=True)
    i.add_argument("--state", required=True)
    i.add_argument("--address", required=True)
    i.set_defaults(run=cmd_instance)
    d = sub.add_parser("cni-conf-dir")
    d.add_argument("file")
    d.set_defaults(run=cmd_cni_conf_dir)
    n = sub.add_parser("conflist")
    n.add_argument("file")
    n.add_argument("--name", required=True)
    n.add_argument("--bridge", required=True)
    n.add_argument("--subnet", required=True)
    n.set_defaults(run=cmd_conflist)
    args = p.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
