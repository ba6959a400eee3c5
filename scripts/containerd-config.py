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

For the node installer (deploy/node/lightwhale-node), which keeps its own copy of every
file it changes (so these write no FILE.bak.*):
  handler FILE --output OUT [--version N] [--declare-default-from DUMP]
      The runtime handler "lightwhale" alone (runtime_type, pod and container
      annotations), written to OUT (FILE itself is not changed; a missing FILE is a new
      document of version N, as for a drop-in). With a dump of containerd 1.x's effective
      config, the default runtime is declared too when FILE's runtimes table lacks it,
      copied from the dump: containerd 1.x replaces its default runtimes with the file's.
  unregister FILE --output OUT
      FILE without the handler "lightwhale" (for a file changed by others since install).
  block --version N
      The handler's TOML table alone (for appending to a k3s/RKE2 config template).
  imports FILE [--root DIR]
      As JSON: FILE's version, its imports, the directories of its glob imports, every file
      containerd loads in its order (breadth first, as containerd does), and which of them
      set the CRI plugin's section. Paths are the node's; DIR is where its / is mounted.
  verify-dump AFTER [--before BEFORE] [--runtime-type T]
      AFTER (containerd config dump) has the handler with its annotations; and, given the
      dump BEFORE, nothing else differs (imports aside). Exit 1 naming what is wrong.
  with-import FILE --output OUT [--node-path P] [--add PATH]
      FILE (which is at P on the node) with its relative imports made absolute and PATH
      imported last: what the installer dumps to see what containerd would load.
  dropin-name PATTERN
      A file name for lightwhale's drop-in that an import's glob PATTERN matches.
  get FILE KEY
      Prints a dotted key's value (nothing when unset), e.g. grpc.address.

Exit status 1 with the reason when a file cannot be read as what it should be."""

import argparse
import fnmatch
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


# --- the node installer's commands ---------------------------------------------------
# Where each config version keeps the CRI runtimes: version 2 (containerd 1.7) and 3 (2.x).
RUNTIMES = {
    2: ("plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes"),
    3: ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes"),
}
# The plugin sections of the CRI runtime: one of them in a file that containerd 1.x imports
# replaces the whole section of the files before it (2.x merges them key by key).
CRI_SECTIONS = ("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime")
GLOB_CHARS = "*?["


def block(v):
    """The handler's table as TOML text, as the installer writes it in a drop-in or template."""
    plugin = RUNTIMES[v][1]
    return (f'[plugins."{plugin}".containerd.runtimes.{HANDLER}]\n'
            f'  runtime_type = "{RUNTIME_TYPE}"\n'
            f'  pod_annotations = ["{ANNOTATIONS}"]\n'
            f'  container_annotations = ["{ANNOTATIONS}"]\n')


def subtable(doc, *keys, parent=False):
    """The table at keys; missing ones are made, without a header of their own where they
    hold only tables (those on the way, and the last one too when it is a parent)."""
    t = doc
    for i, k in enumerate(keys):
        if k not in t:
            t[k] = tomlkit.table(is_super_table=parent or i < len(keys) - 1)
        t = t[k]
        if not hasattr(t, "keys"):
            fail(f"{'.'.join(keys)}: {k} is not a table")
    return t


def write_output(path, doc):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(tomlkit.dumps(doc))
    os.replace(tmp, path)


def node_version(doc, path):
    v = doc.get("version", 1)
    if v not in RUNTIMES:
        fail(f"{path}: config version {v} is not supported (2 for containerd 1.7, 3 for 2.x; "
             "`containerd config migrate` converts a version 1 config)")
    return v


def lookup(doc, keys):
    t = doc
    for k in keys:
        t = t.get(k) if hasattr(t, "get") else None
        if t is None:
            return None
    return t


def cmd_handler(args):
    if os.path.exists(args.file):
        try:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            fail(f"cannot read {args.file}: {e}")
        doc = load(args.file)
        v = node_version(doc, args.file)
    else:
        if args.version not in RUNTIMES:
            fail(f"{args.file} does not exist: give --version 2 or 3 for a new file")
        v = args.version
        text = (f"# lightwhale's CRI runtime handler (deploy/node/lightwhale-node; "
                f"`lightwhale-node uninstall` removes this file).\nversion = {v}\n")
        doc = tomlkit.parse(text)
    changes = []
    # What is missing is appended as text, so that the rest of the file stays byte for
    # byte as it was (tomlkit may re-indent tables it inserts among others).
    appended = ""
    default = None
    runtimes = lookup(doc, RUNTIMES[v])
    if runtimes is None or HANDLER not in runtimes:
        appended += f"\n{block(v)}"
        changes.append(f"runtimes.{HANDLER} added")
    if args.declare_default_from and v == 2:
        dump = load(args.declare_default_from).unwrap()
        cri = dump.get("plugins", {}).get(RUNTIMES[2][1], {}).get("containerd", {})
        name = cri.get("default_runtime_name") or "runc"
        if name not in (runtimes or {}) and name in cri.get("runtimes", {}):
            default = (name, cri["runtimes"][name])
            extra = tomlkit.document()
            subtable(extra, *RUNTIMES[2], parent=True).append(name, tomlkit.item(default[1]))
            appended += (f"\n# The default runtime, as containerd 1.x had it: a file that declares "
                         f"runtimes keeps only those.\n{tomlkit.dumps(extra)}")
            changes.append(f"runtimes.{name} declared as containerd has it now (the default "
                           "runtime: containerd 1.x keeps only the runtimes a file declares)")
    if appended:
        grown = (text.rstrip("\n") + "\n" if text.strip() else text) + appended
        try:
            doc = tomlkit.parse(grown)
        except tomlkit.exceptions.TOMLKitError:
            # A table defined inline or by dotted keys: add to it where it is instead.
            appended = ""
            runtimes = subtable(doc, *RUNTIMES[v], parent=True)
            try:
                if HANDLER not in runtimes:
                    runtimes[HANDLER] = tomlkit.parse(block(v)).unwrap()[RUNTIMES[v][0]][
                        RUNTIMES[v][1]]["containerd"]["runtimes"][HANDLER]
                if default and default[0] not in runtimes:
                    runtimes[default[0]] = default[1]
            except (tomlkit.exceptions.TOMLKitError, ValueError, TypeError) as e:
                fail(f"{args.file}: cannot add the runtime {HANDLER} to its runtimes: {e}")
    appended_only = len(changes)
    lw = subtable(doc, *RUNTIMES[v], HANDLER)
    set_value(lw, "runtime_type", RUNTIME_TYPE, changes, f"runtimes.{HANDLER}.runtime_type")
    for key in ("pod_annotations", "container_annotations"):
        ensure_listed(lw, key, ANNOTATIONS, changes, f"runtimes.{HANDLER}.{key}")
    if not changes or (appended and len(changes) == appended_only):
        # (appended: the text as grown parsed, and nothing more was needed)
        # The text as it was, or as grown: tomlkit would move a table that comes after
        # others of its parent's up among them when it writes the document out.
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(grown if appended else text)
    else:
        write_output(args.output, doc)
    for change in changes:
        print(f"{args.file}: {change}")


def cmd_unregister(args):
    doc = load(args.file)
    v = node_version(doc, args.file)
    runtimes = lookup(doc, RUNTIMES[v])
    if runtimes is not None and HANDLER in runtimes:
        del runtimes[HANDLER]
        print(f"{args.file}: runtimes.{HANDLER} removed")
    write_output(args.output, doc)


def cmd_block(args):
    sys.stdout.write(block(args.version))


def cmd_imports(args):
    root = args.root or "/"

    def host(p):
        return os.path.join(root, p.lstrip("/"))

    def resolve(parent, entries):
        out = []
        for e in entries:
            e = str(e)
            if not os.path.isabs(e):
                e = os.path.join(os.path.dirname(parent), e)
            if any(c in e for c in GLOB_CHARS):
                d, pattern = os.path.split(e)
                if any(c in d for c in GLOB_CHARS):
                    fail(f"{parent}: import {e}: a glob in a directory name is not supported")
                try:
                    names = sorted(os.listdir(host(d)))
                except OSError:
                    names = []
                # Go's filepath.Glob: '*' matches names that start with a dot too.
                out += [os.path.join(d, n) for n in names if fnmatch.fnmatchcase(n, pattern)]
            else:
                out.append(e)
        return out

    main_doc = load(host(args.file))
    order, cri_in, loaded, pending = [], [], set(), [args.file]
    while pending:
        p = pending.pop(0)
        if p in loaded:
            continue
        loaded.add(p)
        if p == args.file:
            d = main_doc
        elif os.path.isfile(host(p)):
            d = load(host(p))
        else:
            continue
        order.append(p)
        if any(s in d.get("plugins", {}) for s in CRI_SECTIONS):
            cri_in.append(p)
        pending += resolve(p, d.get("imports", []))
    entries = [str(e) for e in main_doc.get("imports", [])]
    globs = []
    for e in entries:
        full = e if os.path.isabs(e) else os.path.join(os.path.dirname(args.file), e)
        if any(c in full for c in GLOB_CHARS):
            d, pattern = os.path.split(full)
            if not any(c in d for c in GLOB_CHARS):
                globs.append({"pattern": pattern, "dir": d})
    print(json.dumps({"version": main_doc.get("version", 1), "imports": entries, "globs": globs,
                      "files": order, "cri_in": cri_in}))


def dropin_name(pattern):
    """A name for lightwhale's drop-in that the import's pattern matches ("" if none)."""
    name = pattern.replace("*", "99-lightwhale", 1).replace("*", "")
    return name if fnmatch.fnmatchcase(name, pattern) and "/" not in name else ""


def cmd_dropin_name(args):
    name = dropin_name(args.pattern)
    if not name:
        fail(f"no drop-in name matches the import pattern {args.pattern}")
    print(name)


def cmd_with_import(args):
    """FILE as a copy that loads from anywhere: relative imports made absolute (to FILE's
    own directory, as containerd resolves them), and --add appended to its imports."""
    doc = load(args.file)
    base = os.path.dirname(args.node_path or args.file)
    entries = [str(e) if os.path.isabs(str(e)) else os.path.join(base, str(e))
               for e in doc.get("imports", [])]
    if args.add:
        entries.append(args.add)
    if entries or "imports" in doc:
        doc["imports"] = entries
    write_output(args.output, doc)


def find_runtime(dump):
    plugins = dump.get("plugins", {})
    for section in CRI_SECTIONS:
        rt = plugins.get(section, {}).get("containerd", {}).get("runtimes", {})
        if rt:
            return section, rt
    return None, {}


def cmd_verify_dump(args):
    after = load(args.after).unwrap()
    _, runtimes = find_runtime(after)
    lw = runtimes.get(HANDLER)
    if lw is None:
        fail(f"containerd's effective config has no runtime {HANDLER} (its runtimes: "
             f"{', '.join(sorted(runtimes)) or 'none'})")
    problems = []
    if lw.get("runtime_type") != args.runtime_type:
        problems.append(f"runtime_type is {lw.get('runtime_type')!r}, not {args.runtime_type!r}")
    for key in ("pod_annotations", "container_annotations"):
        if ANNOTATIONS not in (lw.get(key) or []):
            problems.append(f"{key} lacks {ANNOTATIONS!r} (has {lw.get(key)})")
    if problems:
        fail(f"runtime {HANDLER} in containerd's effective config: {'; '.join(problems)}")
    if args.before:
        before = load(args.before).unwrap()
        for d in (before, after):
            d.pop("imports", None)
            find_runtime(d)[1].pop(HANDLER, None)
        diffs = []

        def walk(a, b, path):
            if isinstance(a, dict) and isinstance(b, dict):
                for k in sorted(set(a) | set(b)):
                    walk(a.get(k, "<unset>"), b.get(k, "<unset>"), f"{path}.{k}" if path else k)
            elif a != b:
                diffs.append(f"{path}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}")

        walk(before, after, "")
        if diffs:
            more = f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else ""
            fail("the change would alter more than the runtime " + HANDLER + ": "
                 + "; ".join(diffs[:8]) + more)
    print(f"{args.after}: runtime {HANDLER} ({args.runtime_type}, annotations {ANNOTATIONS})")


def cmd_get(args):
    t = load(args.file).unwrap()
    for k in args.key.split("."):
        t = t.get(k) if isinstance(t, dict) else None
        if t is None:
            return
    print(json.dumps(t) if isinstance(t, (list, dict)) else t)


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
    h = sub.add_parser("handler")
    h.add_argument("file")
    h.add_argument("--output", required=True)
    h.add_argument("--version", type=int)
    h.add_argument("--declare-default-from")
    h.set_defaults(run=cmd_handler)
    u = sub.add_parser("unregister")
    u.add_argument("file")
    u.add_argument("--output", required=True)
    u.set_defaults(run=cmd_unregister)
    b = sub.add_parser("block")
    b.add_argument("--version", type=int, required=True, choices=sorted(RUNTIMES))
    b.set_defaults(run=cmd_block)
    m = sub.add_parser("imports")
    m.add_argument("file")
    m.add_argument("--root")
    m.set_defaults(run=cmd_imports)
    dn = sub.add_parser("dropin-name")
    dn.add_argument("pattern")
    dn.set_defaults(run=cmd_dropin_name)
    vd = sub.add_parser("verify-dump")
    vd.add_argument("after")
    vd.add_argument("--before")
    vd.add_argument("--runtime-type", default=RUNTIME_TYPE)
    vd.set_defaults(run=cmd_verify_dump)
    w = sub.add_parser("with-import")
    w.add_argument("file")
    w.add_argument("--node-path", help="where FILE is on the node, if not there")
    w.add_argument("--add")
    w.add_argument("--output", required=True)
    w.set_defaults(run=cmd_with_import)
    g = sub.add_parser("get")
    g.add_argument("file")
    g.add_argument("key")
    g.set_defaults(run=cmd_get)
    args = p.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
