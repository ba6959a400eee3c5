//! The node installer, `deploy/node/lightwhale-node`, against real containerd configs:
//! each test lays out a node of its own in a temporary directory (its `--host-root`) with
//! the real containerd 1.7 or 2.x binary, runc, busybox and their libraries, and runs the
//! installer on it as the DaemonSet would run it on a node's `/host`. What the installer
//! writes is then loaded by that containerd (`containerd config dump`, run in the node),
//! install is run twice (nothing may change the second time), and uninstall must leave
//! the node as it was, byte for byte. There `--no-restart`: those nodes run no containerd.
//!
//! The restart path, with nothing faked, on this host: a containerd 2.x of the test's own
//! (its own root, state, socket and CNI network), started from a command line, which the
//! installer restarts; a pod then sleeps and wakes through it; uninstall restores it all.
//! Never the host's own containerd or Docker.
//!
//! Also: the Kubernetes manifests of `deploy/kubernetes/` (parsed, cross-checked), and the
//! installer image, built offline, run against this host (`check`) and as the DaemonSet's
//! metrics container.
//!
//! The tests that need the stack (root, both containerds, CRIU, docker, `make build`'s
//! binaries) are ignored in a plain `cargo test`; `make test` runs them.

mod common;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use common::Out;

const CONTAINERD17: &str = "/usr/bin/containerd";
const CONTAINERD2: &str = "/opt/lightwhale/containerd2/usr/bin/containerd";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf()
}

/// The installer's payload, as the image carries it: built once per test binary from
/// `make build`'s binaries (deploy/node/build-image.sh --context-only).
fn payload() -> &'static Path {
    static CONTEXT: OnceLock<PathBuf> = OnceLock::new();
    CONTEXT.get_or_init(|| {
        let context = repo().join("target/node-installer-test");
        let out = Command::new("bash")
            .arg(repo().join("deploy/node/build-image.sh"))
            .args(["--context-only", "--context"])
            .arg(&context)
            .output()
            .expect("run build-image.sh");
        assert!(
            out.status.success(),
            "building the installer's payload failed (make build first): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        context
    });
    CONTEXT.get().expect("context").as_path()
}

fn payload_dir() -> PathBuf {
    payload().join("payload")
}

/// A node of its own: a root file system in a temporary directory.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    /// Debian's merged /usr, busybox (sh and the applets the installer runs in the node),
    /// runc, and the libraries lightwhale's own binaries need there.
    fn new() -> Node {
        let dir = tempfile::Builder::new()
            .prefix("lwnode-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let n = Node { dir };
        for d in [
            "usr/bin",
            "usr/sbin",
            "usr/lib",
            "usr/lib64",
            "etc",
            "var/lib",
            "run",
        ] {
            std::fs::create_dir_all(n.root().join(d)).expect("mkdir");
        }
        for d in ["bin", "sbin", "lib", "lib64"] {
            std::os::unix::fs::symlink(format!("usr/{d}"), n.root().join(d)).expect("symlink");
        }
        n.add_binary("/bin/busybox", "/usr/bin/busybox");
        for applet in ["sh", "readlink", "env", "cat"] {
            std::os::unix::fs::symlink("busybox", n.path(&format!("/usr/bin/{applet}")))
                .expect("applet");
        }
        n.add_binary("/usr/sbin/runc", "/usr/sbin/runc");
        for bin in ["containerd-shim-lightwhale-v2", "lightwhale"] {
            n.add_libraries(&payload_dir().join("usr/local/bin").join(bin));
        }
        n
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Where the node's `node_path` is here.
    fn path(&self, node_path: &str) -> PathBuf {
        self.root().join(node_path.trim_start_matches('/'))
    }

    fn write(&self, node_path: &str, text: &str) {
        let p = self.path(node_path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }

    fn read(&self, node_path: &str) -> String {
        std::fs::read_to_string(self.path(node_path))
            .unwrap_or_else(|e| panic!("read {node_path}: {e}"))
    }

    /// `src` of this host at `dst` in the node (a hard link where it can), with its libraries.
    fn add_binary(&self, src: &str, dst: &str) {
        let to = self.path(dst);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        if std::fs::hard_link(src, &to).is_err() {
            std::fs::copy(src, &to).unwrap_or_else(|e| panic!("copy {src}: {e}"));
        }
        self.add_libraries(Path::new(src));
    }

    /// The shared libraries `bin` loads (ldd), where the node's loader looks for them.
    fn add_libraries(&self, bin: &Path) {
        let out = Command::new("ldd").arg(bin).output().expect("ldd");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let lib = match words.as_slice() {
                [_, "=>", path, ..] if path.starts_with('/') => *path,
                [path, ..] if path.starts_with('/') => *path,
                _ => continue,
            };
            let lib = Path::new(lib);
            let dir = std::fs::canonicalize(lib.parent().expect("lib dir")).expect("canonical");
            let to = self.path(&dir.join(lib.file_name().expect("name")).to_string_lossy());
            if !to.exists() {
                std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
                std::fs::copy(lib, &to).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
            }
        }
    }

    /// Every file, link and directory of the node: path -> kind, mode and content.
    fn tree(&self) -> BTreeMap<String, String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
            let mut entries: Vec<_> = std::fs::read_dir(dir)
                .expect("read_dir")
                .map(|e| e.expect("entry").path())
                .collect();
            entries.sort();
            for p in entries {
                let rel = p.strip_prefix(root).expect("rel").display().to_string();
                let meta = std::fs::symlink_metadata(&p).expect("lstat");
                let mode = meta.permissions().mode() & 0o7777;
                if meta.file_type().is_symlink() {
                    let to = std::fs::read_link(&p).expect("readlink");
                    out.insert(rel, format!("link -> {}", to.display()));
                } else if meta.is_dir() {
                    out.insert(rel, format!("dir {mode:o}"));
                    walk(root, &p, out);
                } else {
                    let bytes = std::fs::read(&p).expect("read");
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    bytes.hash(&mut h);
                    out.insert(
                        rel,
                        format!("file {mode:o} {} bytes, hash {:x}", bytes.len(), h.finish()),
                    );
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.root(), self.root(), &mut out);
        out
    }

    /// `containerd config dump` of the node's config at `config`, by `containerd` (a node
    /// path), in the node.
    fn dump(&self, containerd: &str, config: &str) -> String {
        let out = Command::new("chroot")
            .arg(self.root())
            .args([containerd, "--config", config, "config", "dump"])
            .output()
            .expect("chroot containerd");
        assert!(
            out.status.success(),
            "containerd cannot load {config}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Runs the installer on the node (never restarting anything, never labelling).
fn lwnode(node: &Node, args: &[&str]) -> Out {
    lwnode_env(node, args, &[])
}

fn lwnode_env(node: &Node, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("deploy/node/lightwhale-node"))
        .args(args)
        .arg("--host-root")
        .arg(node.root())
        .arg("--no-restart");
    if !args.contains(&"--payload") {
        cmd.arg("--payload").arg(payload_dir());
    }
    cmd.env_remove("NODE_NAME")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("LIGHTWHALE_NODE_API")
        .env("LIGHTWHALE_NODE_PYTHON", "/usr/bin/python3");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run lightwhale-node");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The keys of the CRI runtime `name` in a dump (1.7's or 2.x's layout), quotes made
/// double: None when there is no such runtime.
fn runtime(dump: &str, name: &str) -> Option<BTreeMap<String, String>> {
    let (mut found, mut inside, mut keys) = (false, false, BTreeMap::new());
    for line in dump.lines() {
        let t = line.trim().replace('\'', "\"");
        if t.starts_with('[') {
            inside = (t.starts_with("[plugins.\"io.containerd.grpc.v1.cri\"")
                || t.starts_with("[plugins.\"io.containerd.cri.v1.runtime\""))
                && t.ends_with(&format!(".containerd.runtimes.{name}]"));
            found |= inside;
        } else if inside {
            if let Some((k, v)) = t.split_once('=') {
                keys.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
    found.then_some(keys)
}

/// The handler lightwhale, as containerd loads it.
fn assert_handler(dump: &str) {
    let lw = runtime(dump, "lightwhale")
        .unwrap_or_else(|| panic!("no runtime lightwhale in containerd's config:\n{dump}"));
    assert_eq!(
        lw["runtime_type"], "\"io.containerd.lightwhale.v2\"",
        "{lw:?}"
    );
    assert_eq!(lw["pod_annotations"], "[\"lightwhale.io/*\"]", "{lw:?}");
    assert_eq!(
        lw["container_annotations"], "[\"lightwhale.io/*\"]",
        "{lw:?}"
    );
}

fn ok(out: Out) -> Out {
    assert_eq!(
        out.code, 0,
        "lightwhale-node failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    out
}

/// install, install again (nothing changes), uninstall (the node as it was): returns the
/// installed node's tree. `after_install` checks the installed node.
fn round_trip(node: &Node, config: &str, after_install: impl FnOnce(&Node)) {
    let before = node.tree();
    let original = std::fs::read(node.path(config)).ok();
    let first = ok(lwnode(node, &["install"]));
    assert!(
        first
            .stdout
            .contains("installed /usr/local/bin/containerd-shim-lightwhale-v2"),
        "{}",
        first.stdout
    );
    assert!(
        first.stdout.contains("this node can take lightwhale"),
        "{}",
        first.stdout
    );
    for f in [
        "/usr/local/bin/containerd-shim-lightwhale-v2",
        "/usr/local/bin/lightwhale",
        "/usr/local/sbin/criu",
        "/usr/local/libexec/lightwhale/criu/criu",
        "/usr/local/libexec/lightwhale/criu-helpers/tar",
        "/usr/local/share/lightwhale/criu-profiles/default.conf",
        "/etc/lightwhale/config.toml",
    ] {
        assert!(node.path(f).is_file(), "{f} was not installed");
    }
    // The installed CRIU runs in the node with its own libraries.
    let criu = Command::new("chroot")
        .arg(node.root())
        .args(["/usr/local/sbin/criu", "--version"])
        .output()
        .expect("criu");
    assert!(
        String::from_utf8_lossy(&criu.stdout).contains("Version: 4."),
        "{criu:?}"
    );
    after_install(node);

    let installed = node.tree();
    let second = ok(lwnode(node, &["install"]));
    assert!(
        second.stdout.contains("nothing changed"),
        "{}",
        second.stdout
    );
    assert_eq!(installed, node.tree(), "a second install changed the node");
    let status = ok(lwnode(node, &["status"]));
    assert!(
        status
            .stdout
            .contains("the handler lightwhale is in its config"),
        "{}",
        status.stdout
    );

    ok(lwnode(node, &["uninstall"]));
    assert_eq!(
        std::fs::read(node.path(config)).ok(),
        original,
        "uninstall did not restore {config} byte for byte"
    );
    assert_eq!(before, node.tree(), "uninstall left the node changed");
}

#[test]
#[ignore = "needs the real stack (root, containerd 1.7 and 2.x, CRIU, runc, busybox, docker, make build's binaries): make test runs it"]
fn containerd_17_default_config() {
    let node = Node::new();
    node.add_binary(CONTAINERD17, "/usr/bin/containerd");
    let default = common::run(CONTAINERD17, &["config", "default"])
        .ok()
        .stdout;
    node.write("/etc/containerd/config.toml", &default);
    round_trip(&node, "/etc/containerd/config.toml", |node| {
        let now = node.read("/etc/containerd/config.toml");
        // Appended, the rest of the file as it was.
        assert!(
            now.starts_with(default.trim_end()),
            "the config was rewritten, not added to"
        );
        assert_handler(&node.dump("/usr/bin/containerd", "/etc/containerd/config.toml"));
    });
}

#[test]
#[ignore = "needs the real stack (root, containerd 1.7 and 2.x, CRIU, runc, busybox, docker, make build's binaries): make test runs it"]
fn containerd_2_default_config() {
    let node = Node::new();
    node.add_binary(CONTAINERD2, "/usr/bin/containerd");
    let default = common::run(CONTAINERD2, &["config", "default"]).ok().stdout;
    assert!(
        default.contains("version = 3"),
        "not a version 3 config:\n{default}"
    );
    node.write("/etc/containerd/config.toml", &default);
    round_trip(&node, "/etc/containerd/config.toml", |node| {
        let dump = node.dump("/usr/bin/containerd", "/etc/containerd/config.toml");
        assert_handler(&dump);
        assert!(runtime(&dump, "runc").is_some(), "runc lost:\n{dump}");
    });
}

/// containerd with no config file at all: install writes one (version 2 for 1.7, with
/// the default runtime as containerd had it), uninstall removes it again.
#[test]
#[ignore = "needs the real stack (root, containerd 1.7 and 2.x, CRIU, runc, busybox, docker, make build's binaries): make test runs it"]
fn containerd_17_without_a_config_file() {
    let node = Node::new();
    node.add_binary(CONTAINERD17, "/usr/bin/containerd");
    round_trip(&node, "/etc/containerd/config.toml", |node| {
        let dump = node.dump("/usr/bin/containerd", "/etc/containerd/config.toml");
        assert_handler(&dump);
        let runc = runtime(&dump, "runc").expect("the default runtime runc");
        assert_eq!(runc["runtime_type"], "\"io.containerd.runc.v2\"");
    });
}

/// A config that has its own runtimes, default runtime and sandbox image, and imports a
/// directory. containerd 1.x lets an imported file's CRI section replace the main file's
/// whole, so there the handler goes into the main file; 2.x merges, so a drop-in.
#[test]
#[ignore = "needs the real stack (root, containerd 1.7 and 2.x, CRIU, runc, busybox, docker, make build's binaries): make test runs it"]
fn imports_and_other_runtimes() {
    // containerd 1.7, version 2.
    let node = Node::new();
    node.add_binary(CONTAINERD17, "/usr/bin/containerd");
    node.write(
        "/etc/containerd/config.toml",
        r#"# Site config (managed by hand).
version = 2
imports = ["/etc/containerd/conf.d/*.toml"]

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.example/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "crun"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
        BinaryName = "/usr/bin/crun"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
      runtime_type = "io.containerd.kata.v2"
"#,
    );
    node.write(
        "/etc/containerd/conf.d/10-debug.toml",
        "version = 2\n[debug]\n  level = \"info\"\n",
    );
    round_trip(&node, "/etc/containerd/config.toml", |node| {
        assert!(!node
            .path("/etc/containerd/conf.d/99-lightwhale.toml")
            .exists());
        let dump = node.dump("/usr/bin/containerd", "/etc/containerd/config.toml");
        assert_handler(&dump);
        for kept in ["crun", "kata"] {
            assert!(
                runtime(&dump, kept).is_some(),
                "runtime {kept} lost:\n{dump}"
            );
        }
        assert!(
            dump.contains("sandbox_image = \"registry.example/pause:3.9\""),
            "{dump}"
        );
        assert!(
            dump.contains("level = \"info\""),
            "the import is no longer loaded:\n{dump}"
        );
    });

    // containerd 1.7, a main file without a CRI section: a drop-in is safe there, with the
    // default runtime declared (1.x keeps only the runtimes a CRI section declares).
    let node = Node::new();
    node.add_binary(CONTAINERD17, "/usr/bin/containerd");
    node.write(
        "/etc/containerd/config.toml",
        "version = 2\nimports = [\"conf.d/*.toml\"]\n\n[debug]\n  level = \"info\"\n",
    );
    std::fs::create_dir_all(node.path("/etc/containerd/conf.d")).expect("mkdir");
    round_trip(&node, "/etc/containerd/config.toml", |node| {
        let dropin = node.read("/etc/containerd/conf.d/99-lightwhale.toml");
        assert!(dropin.contains("version = 2"), "{dropin}");
        let dump = node.dump("/usr/bin/containerd", "/etc/containerd/config.toml");
        assert_handler(&dump);
        assert!(runtime(&dump, "runc").is_some(), "runc lost:\n{dump}");
    });

    // containerd 2.x, version 3: a drop-in, the main file untouched.
    let node = Node::new();
    node.add_binary(CONTAINERD2, "/usr/bin/containerd");
    let main = r#"version = 3
imports = ["/etc/containerd/conf.d/*.toml"]

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = 'registry.example/pause:3.10'
[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = 'crun'
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.crun]
    runtime_type = 'io.containerd.runc.v2'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.crun.options]
      BinaryName = '/usr/bin/crun'
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.kata]
    runtime_type = 'io.containerd.kata.v2'
"#;
    node.write("/etc/containerd/config.toml", main);
    node.write(
        "/etc/containerd/conf.d/10-debug.toml",
        "version = 3\n[debug]\n  level = 'info'\n",
    );
    round_trip(&node, "/etc/containerd/config.toml", |node| {
        assert_eq!(
            node.read("/etc/containerd/config.toml"),
            main,
            "the main file was changed"
        );
        let dropin = node.read("/etc/containerd/conf.d/99-lightwhale.toml");
        assert!(dropin.contains("version = 3"), "{dropin}");
        let dump = node.dump("/usr/bin/containerd", "/etc/containerd/config.toml");
        assert_handler(&dump);
        for kept in ["crun", "kata"] {
            assert!(
                runtime(&dump, kept).is_some(),
                "runtime {kept} lost:\n{dump}"
            );
        }
        assert!(dump.contains("registry.example/pause:3.10"), "{dump}");
    });
}

const K3S_ETC: &str = "/var/lib/rancher/k3s/agent/etc/containerd";

/// What k3s 1.30 writes for containerd 1.7 (its base template, rendered).
const K3S_V2_CONFIG: &str = r#"# File generated by k3s. DO NOT EDIT. Use config.toml.tmpl instead.
version = 2

[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/rancher/k3s/agent/containerd"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "10010"
  enable_selinux = false
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  sandbox_image = "rancher/mirrored-pause:3.6"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  disable_snapshot_annotations = true


[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/var/lib/rancher/k3s/data/6a1c4d1f3d2e/bin"
  conf_dir = "/var/lib/rancher/k3s/agent/etc/cni/net.d"


[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/var/lib/rancher/k3s/agent/etc/containerd/certs.d"
"#;

/// A k3s node: its containerd in its data directory, its generated config, and a `k3s`
/// that tells its version.
fn k3s_node(containerd: &str, version: &str, config: &str) -> Node {
    let node = Node::new();
    node.add_binary(
        containerd,
        "/var/lib/rancher/k3s/data/6a1c4d1f3d2e/bin/containerd",
    );
    std::os::unix::fs::symlink(
        "6a1c4d1f3d2e",
        node.path("/var/lib/rancher/k3s/data/current"),
    )
    .expect("symlink");
    node.write(
        "/usr/local/bin/k3s",
        &format!(
            "#!/bin/sh\necho \"k3s version {version} (1829eaae)\"\necho \"go version go1.22.8\"\n"
        ),
    );
    std::fs::set_permissions(
        node.path("/usr/local/bin/k3s"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    node.write(&format!("{K3S_ETC}/config.toml"), config);
    node
}

/// What k3s renders from a template that extends its base: the base's output (the
/// config.toml it wrote last, from the base alone) in place of `{{ template "base" . }}`.
fn render_k3s_template(node: &Node, template: &str) -> String {
    render_template(node, K3S_ETC, template)
}

fn render_template(node: &Node, etc: &str, template: &str) -> String {
    let text = node.read(&format!("{etc}/{template}"));
    assert!(
        text.starts_with("{{ template \"base\" . }}\n"),
        "the template does not start with the base:\n{text}"
    );
    text.replacen(
        "{{ template \"base\" . }}",
        &node.read(&format!("{etc}/config.toml")),
        1,
    )
}

/// RKE2: the same templates as k3s, its own paths (containerd in /var/lib/rancher/rke2/bin,
/// a link to its data directory) and its `rke2 --version`.
#[test]
#[ignore = "needs the real stack (root, containerd 1.7 and 2.x, CRIU, runc, busybox, docker, make build's binaries): make test runs it"]
fn rke2_template() {
    const RKE2_ETC: &str = "/var/lib/rancher/rke2/agent/etc/containerd";
    let node = Node::new();
    node.add_binary(
        CONTAINERD17,
        "/var/lib/rancher/rke2/data/v1.29.9-rke2r1-4f0ad1e6a8c2/bin/containerd",
    );
    std::os::unix::fs::symlink(
        "/var/lib/rancher/rke2/data/v1.29.9-rke2r1-4f0ad1e6a8c2/bin",
        node.path("/var/lib/rancher/rke2/bin"),
    )
    .expect("symlink");
    node.write(
        "/usr/local/bin/rke2",
        "#!/bin/sh\necho \"rke2 version v1.29.9+rke2r1 (4f0ad1e6a8c2)\"\necho \"go version go1.22.6 X:boringcrypto\"\n",
    );
    std::fs::set_permissions(
        node.path("/usr/local/bin/rke2"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let config = K3S_V2_CONFIG
        .replace("k3s", "rke2")
        .replace("6a1c4d1f3d2e", "v1.29.9-rke2r1-4f0ad1e6a8c2");
    node.write(&format!("{RKE2_ETC}/config.toml"), &config);
    round_trip(&node, &format!("{RKE2_ETC}/config.toml.tmpl"), |node| {
        let out = ok(lwnode(node, &["status"]));
        assert!(out.stdout.contains("kind=rke2"), "{}", out.stdout);
        node.write(
            "/tmp/rendered.toml",
            &render_template(node, RKE2_ETC, "config.toml.tmpl"),
        );
        let dump = node.dump("/var/lib/rancher/rke2/bin/containerd", "/tmp/rendered.toml");
        assert_handler(&dump);
        std::fs::remove_file(node.path("/tmp/rendered.toml")).expect("rm");
        let _ = std::fs::remove_dir(node.path("/tmp"));
    });
}

#[test]
#[ignore = "needs the real stack (root, containerd 1.7 and 2.x, CRIU, runc, busybox, docker, make build's binaries): make test runs it"]
fn k3s_template() {
    // k3s 1.30 with containerd 1.7, no template yet: one that extends the base.
    let node = k3s_node(CONTAINERD17, "v1.30.6+k3s1", K3S_V2_CONFIG);
    round_trip(&node, &format!("{K3S_ETC}/config.toml.tmpl"), |node| {
        assert_eq!(
            node.read(&format!("{K3S_ETC}/config.toml")),
            K3S_V2_CONFIG,
            "k3s's own output changed"
        );
        node.write(
            "/tmp/rendered.toml",
            &render_k3s_template(node, "config.toml.tmpl"),
        );
        let dump = node.dump(
            "/var/lib/rancher/k3s/data/current/bin/containerd",
            "/tmp/rendered.toml",
        );
        assert_handler(&dump);
        assert!(dump.contains("rancher/mirrored-pause:3.6"), "{dump}");
        std::fs::remove_file(node.path("/tmp/rendered.toml")).expect("rm");
        let _ = std::fs::remove_dir(node.path("/tmp"));
    });

    // A template of the operator's own (the base and a runtime of theirs): ours is added
    // at its end, and taken out again to the byte.
    let node = k3s_node(CONTAINERD17, "v1.29.9+k3s1", K3S_V2_CONFIG);
    let theirs = "{{ template \"base\" . }}\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.crun]\n  runtime_type = \"io.containerd.runc.v2\"\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.crun.options]\n    BinaryName = \"/usr/local/bin/crun\"\n";
    node.write(&format!("{K3S_ETC}/config.toml.tmpl"), theirs);
    round_trip(&node, &format!("{K3S_ETC}/config.toml.tmpl"), |node| {
        let now = node.read(&format!("{K3S_ETC}/config.toml.tmpl"));
        assert!(
            now.starts_with(theirs),
            "the operator's template was changed:\n{now}"
        );
        node.write(
            "/tmp/rendered.toml",
            &render_k3s_template(node, "config.toml.tmpl"),
        );
        let dump = node.dump(
            "/var/lib/rancher/k3s/data/current/bin/containerd",
            "/tmp/rendered.toml",
        );
        assert_handler(&dump);
        assert!(
            runtime(&dump, "crun").is_some(),
            "their runtime is lost:\n{dump}"
        );
        std::fs::remove_file(node.path("/tmp/rendered.toml")).expect("rm");
        let _ = std::fs::remove_dir(node.path("/tmp"));
    });

    // A k3s without the base template (before 1.27.5): refused, nothing written.
    let node = k3s_node(CONTAINERD17, "v1.27.3+k3s1", K3S_V2_CONFIG);
    let before = node.tree();
    let out = lwnode(&node, &["install"]);
    assert_ne!(
        out.code, 0,
        "installed on a k3s without the base template:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("has no base template"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(before, node.tree(), "a refused install changed the node");
}

/// k3s with containerd 2.x writes a version 3 config that imports config-v3.toml.d/*.toml:
/// a drop-in there, the directory made and removed again.
#[test]
#[ignore = "needs the real stack (root, containerd 1.7 and 2.x, CRIU, runc, busybox, docker, make build's binaries): make test runs it"]
fn k3s_v3_drop_in() {
    let config = r#"# File generated by k3s. DO NOT EDIT. Use config-v3.toml.tmpl instead.
version = 3
imports = ["/var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.d/*.toml"]
root = "/var/lib/rancher/k3s/agent/containerd"
state = "/run/k3s/containerd"

[grpc]
  address = "/run/k3s/containerd/containerd.sock"

[plugins.'io.containerd.internal.v1.opt']
  path = "/var/lib/rancher/k3s/agent/containerd"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "10010"

[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  device_ownership_from_security_context = false

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  disable_snapshot_annotations = true

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "rancher/mirrored-pause:3.6"

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dir = "/var/lib/rancher/k3s/data/cni"
  conf_dir = "/var/lib/rancher/k3s/agent/etc/cni/net.d"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  SystemdCgroup = true

[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = "/var/lib/rancher/k3s/agent/etc/containerd/certs.d"
"#;
    let node = k3s_node(CONTAINERD2, "v1.33.5+k3s1", config);
    round_trip(
        &node,
        &format!("{K3S_ETC}/config-v3.toml.d/99-lightwhale.toml"),
        |node| {
            assert_eq!(node.read(&format!("{K3S_ETC}/config.toml")), config);
            assert!(!node
                .path(&format!("{K3S_ETC}/config-v3.toml.tmpl"))
                .exists());
            let dump = node.dump(
                "/var/lib/rancher/k3s/data/current/bin/containerd",
                &format!("{K3S_ETC}/config.toml"),
            );
            assert_handler(&dump);
            assert!(runtime(&dump, "runc").is_some(), "{dump}");
        },
    );
}

#[test]
#[ignore = "needs the real stack (root, containerd 1.7 and 2.x, CRIU, runc, busybox, docker, make build's binaries): make test runs it"]
fn check_refuses_a_node_without_criu_or_runc() {
    // A payload without CRIU, on a node without CRIU (its PATH lookup fails).
    let bare = tempfile::tempdir().expect("tempdir");
    let copy = Command::new("cp")
        .arg("-al")
        .arg(payload_dir())
        .arg(bare.path().join("payload"))
        .status()
        .expect("cp");
    assert!(copy.success());
    for criu in [
        "usr/local/sbin/criu",
        "usr/local/libexec/lightwhale/criu",
        "usr/local/lib/lightwhale",
    ] {
        let p = bare.path().join("payload").join(criu);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).expect("rm");
        } else {
            std::fs::remove_file(&p).expect("rm");
        }
    }
    let node = Node::new();
    node.add_binary(CONTAINERD17, "/usr/bin/containerd");
    std::fs::remove_file(node.path("/usr/sbin/runc")).expect("rm runc");
    let before = node.tree();
    let payload = bare.path().join("payload");
    let payload = payload.to_str().expect("utf-8");
    for command in ["check", "install"] {
        let out = lwnode(&node, &[command, "--payload", payload]);
        assert_eq!(
            out.code, 1,
            "{command} did not refuse:\n{}\n{}",
            out.stdout, out.stderr
        );
        assert!(
            out.stdout.contains("FAIL   criu: not found on the node"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.contains("FAIL   runc: not found on the node"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.contains("cannot take lightwhale: 2 problem(s)"),
            "{}",
            out.stdout
        );
        assert!(
            out.stderr.contains("criu: not found"),
            "the reasons go to stderr too: {}",
            out.stderr
        );
    }
    assert_eq!(before, node.tree(), "a refused install changed the node");

    // A version 1 config: refused with what to do about it.
    let node = Node::new();
    node.add_binary(CONTAINERD17, "/usr/bin/containerd");
    node.write(
        "/etc/containerd/config.toml",
        "[plugins.cri.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n",
    );
    let out = lwnode(&node, &["check"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout.contains("config version 1") && out.stdout.contains("containerd config migrate"),
        "{}",
        out.stdout
    );
}

#[test]
#[ignore = "needs the real stack (root, containerd 1.7 and 2.x, CRIU, runc, busybox, docker, make build's binaries): make test runs it"]
fn uninstall_refuses_while_lightwhale_containers_run() {
    let node = Node::new();
    node.add_binary(CONTAINERD17, "/usr/bin/containerd");
    let default = common::run(CONTAINERD17, &["config", "default"])
        .ok()
        .stdout;
    node.write("/etc/containerd/config.toml", &default);
    ok(lwnode(&node, &["install"]));
    let installed = node.tree();
    node.write("/run/lightwhale/containers/k8s.io/0123abcd.json", "{}");
    let out = lwnode(&node, &["uninstall"]);
    assert_ne!(
        out.code, 0,
        "uninstalled under a running container:\n{}",
        out.stdout
    );
    assert!(out.stderr.contains("k8s.io/0123abcd"), "{}", out.stderr);
    let mut now = node.tree();
    now.retain(|k, _| !k.starts_with("run/lightwhale"));
    assert_eq!(installed, now, "a refused uninstall changed the node");
    ok(lwnode(&node, &["uninstall", "--force"]));
    assert_eq!(node.read("/etc/containerd/config.toml"), default);
    assert!(!node
        .path("/usr/local/bin/containerd-shim-lightwhale-v2")
        .exists());
}

/// The config changed by someone else after install: uninstall takes only the handler
/// out of it, and keeps their change.
#[test]
#[ignore = "needs the real stack (root, containerd 1.7 and 2.x, CRIU, runc, busybox, docker, make build's binaries): make test runs it"]
fn uninstall_keeps_later_changes_to_the_config() {
    let node = Node::new();
    node.add_binary(CONTAINERD2, "/usr/bin/containerd");
    let default = common::run(CONTAINERD2, &["config", "default"]).ok().stdout;
    node.write("/etc/containerd/config.toml", &default);
    ok(lwnode(&node, &["install"]));
    let theirs = "\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.kata]\n  runtime_type = 'io.containerd.kata.v2'\n";
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(node.path("/etc/containerd/config.toml"))
        .expect("open");
    f.write_all(theirs.as_bytes()).expect("append");
    drop(f);
    let out = ok(lwnode(&node, &["uninstall"]));
    assert!(
        out.stderr.contains("was changed since install"),
        "{}",
        out.stderr
    );
    let dump = node.dump("/usr/bin/containerd", "/etc/containerd/config.toml");
    assert!(
        runtime(&dump, "lightwhale").is_none(),
        "the handler is still there:\n{dump}"
    );
    assert!(
        runtime(&dump, "kata").is_some(),
        "their runtime is gone:\n{dump}"
    );
}

/// A request the fake API server got.
#[derive(Debug)]
struct Request {
    head: String,
    body: String,
}

/// An API server on the loopback that answers every request with `status`.
fn fake_api(status: u16) -> (String, mpsc::Receiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            reader.read_exact(&mut body).ok();
            let answer = if status == 200 {
                "{}"
            } else {
                "{\"kind\":\"Status\",\"reason\":\"Forbidden\"}"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
            let _ = tx.send(Request {
                head,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
    });
    (url, rx)
}

#[test]
#[ignore = "needs the real stack (root, containerd 1.7 and 2.x, CRIU, runc, busybox, docker, make build's binaries): make test runs it"]
fn labels_the_node_in_a_cluster() {
    let node = Node::new();
    node.add_binary(CONTAINERD17, "/usr/bin/containerd");
    let sa = tempfile::tempdir().expect("tempdir");
    std::fs::write(sa.path().join("token"), "t0ken").expect("token");
    let sa_dir = sa.path().to_str().expect("utf-8");

    let (url, requests) = fake_api(200);
    let env = [
        ("NODE_NAME", "node-7"),
        ("LIGHTWHALE_NODE_SERVICEACCOUNT", sa_dir),
        ("LIGHTWHALE_NODE_API", url.as_str()),
    ];
    let out = ok(lwnode_env(&node, &["install"], &env));
    assert!(
        out.stdout
            .contains("node node-7: labelled lightwhale.io/enabled=true"),
        "{}",
        out.stdout
    );
    let r = requests
        .recv_timeout(Duration::from_secs(5))
        .expect("a PATCH");
    assert!(
        r.head
            .starts_with("PATCH /api/v1/nodes/node-7 HTTP/1.1\r\n"),
        "{}",
        r.head
    );
    let head = r.head.to_ascii_lowercase();
    assert!(
        head.contains("authorization: bearer t0ken\r\n"),
        "{}",
        r.head
    );
    assert!(
        head.contains("content-type: application/merge-patch+json\r\n"),
        "{}",
        r.head
    );
    assert_eq!(
        r.body,
        r#"{"metadata":{"labels":{"lightwhale.io/enabled":"true"}}}"#
    );

    ok(lwnode_env(&node, &["uninstall"], &env));
    let r = requests
        .recv_timeout(Duration::from_secs(5))
        .expect("a PATCH");
    assert!(
        r.head.starts_with("PATCH /api/v1/nodes/node-7 "),
        "{}",
        r.head
    );
    assert_eq!(
        r.body,
        r#"{"metadata":{"labels":{"lightwhale.io/enabled":null}}}"#
    );

    // Refused by the API server: install fails (the DaemonSet's init container retries).
    let (url, _requests) = fake_api(403);
    let env = [
        ("NODE_NAME", "node-7"),
        ("LIGHTWHALE_NODE_SERVICEACCOUNT", sa_dir),
        ("LIGHTWHALE_NODE_API", url.as_str()),
    ];
    let out = lwnode_env(&node, &["install"], &env);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("labelling node node-7 failed (HTTP 403)"),
        "{}",
        out.stderr
    );
    ok(lwnode(&node, &["uninstall"]));
}

// --- the manifests ---------------------------------------------------------------------

/// A YAML stream's documents as JSON values (yaml-rust2 reads; serde_json indexes).
fn yaml_docs(path: &Path) -> Vec<serde_json::Value> {
    use yaml_rust2::Yaml;
    fn json(y: &Yaml) -> serde_json::Value {
        match y {
            Yaml::Null => serde_json::Value::Null,
            Yaml::Boolean(b) => (*b).into(),
            Yaml::Integer(i) => (*i).into(),
            Yaml::Real(r) => r.parse::<f64>().expect("real").into(),
            Yaml::String(s) => s.clone().into(),
            Yaml::Array(a) => a.iter().map(json).collect(),
            Yaml::Hash(h) => h
                .iter()
                .map(|(k, v)| {
                    let k = match k {
                        Yaml::String(s) => s.clone(),
                        other => panic!("{}: a key that is not a string: {other:?}", "yaml"),
                    };
                    (k, json(v))
                })
                .collect::<serde_json::Map<_, _>>()
                .into(),
            other => panic!("unexpected YAML node {other:?}"),
        }
    }
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml_rust2::YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .iter()
        .map(json)
        .collect()
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn workspace_version() -> String {
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).expect("Cargo.toml");
    let section = cargo
        .split("[workspace.package]")
        .nth(1)
        .expect("[workspace.package]");
    section
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("version")
        .to_string()
}

/// A DaemonSet that runs the installer: its image, privileges, the node's / at /host,
/// NODE_NAME, its labels and selector, and a ServiceAccount that exists.
fn check_installer_daemonset(ds: &serde_json::Value, docs: &[serde_json::Value], command: &str) {
    let name = ds["metadata"]["name"].as_str().expect("name");
    assert_eq!(ds["apiVersion"], "apps/v1", "{name}");
    assert_eq!(ds["metadata"]["namespace"], "lightwhale-system", "{name}");
    let spec = &ds["spec"];
    let pod = &spec["template"]["spec"];
    for (k, v) in spec["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            &spec["template"]["metadata"]["labels"][k], v,
            "{name}: the selector does not select its pods"
        );
    }
    assert_eq!(
        pod["hostPID"], true,
        "{name}: hostPID (containerd's pid, its unit)"
    );
    let sa = pod["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    let account = find(docs, "ServiceAccount", sa);
    assert_eq!(account["metadata"]["namespace"], "lightwhale-system");
    let host = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["hostPath"]["path"] == "/")
        .unwrap_or_else(|| panic!("{name}: no hostPath volume of /"));
    let image = format!("lightwhale/node-installer:{}", workspace_version());
    let mut runs = false;
    // Every container runs the image; those that run the installer (all but the metrics
    // server) privileged, with the node's / at /host.
    let containers = pod["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(pod["containers"].as_array().expect("containers"));
    for c in containers {
        if c["name"] == "metrics" {
            assert_eq!(c["image"], image.as_str(), "{name}/metrics: the image");
            continue;
        }
        let cname = c["name"].as_str().expect("container name");
        assert_eq!(c["image"], image.as_str(), "{name}/{cname}: the image");
        assert_eq!(
            c["securityContext"]["privileged"], true,
            "{name}/{cname}: privileged"
        );
        let mount = c["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["name"] == host["name"])
            .unwrap_or_else(|| panic!("{name}/{cname}: the node's / is not mounted"));
        assert_eq!(mount["mountPath"], "/host");
        let line: Vec<String> = c["command"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(c["args"].as_array().into_iter().flatten())
            .map(|a| a.as_str().expect("string").to_string())
            .collect();
        let line = line.join(" ");
        if line.contains(&format!("{command} --host-root /host")) {
            runs = true;
            let node_name = c["env"]
                .as_array()
                .expect("env")
                .iter()
                .find(|e| e["name"] == "NODE_NAME")
                .unwrap_or_else(|| panic!("{name}/{cname}: no NODE_NAME"));
            assert_eq!(
                node_name["valueFrom"]["fieldRef"]["fieldPath"],
                "spec.nodeName"
            );
        }
    }
    assert!(
        runs,
        "{name}: no container runs `lightwhale-node {command} --host-root /host`"
    );
}

/// The DaemonSet's container that serves the node's metrics.
fn metrics_container(ds: &serde_json::Value) -> &serde_json::Value {
    ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "metrics")
        .expect("a container named metrics")
}

/// deploy/kubernetes/: kinds and API versions, the handler, the image, the node's / and
/// privileges, labels and selectors, RBAC for the node label, and examples/ agreeing.
#[test]
fn kubernetes_manifests() {
    let dir = repo().join("deploy/kubernetes");
    let mut docs = Vec::new();
    for f in ["runtimeclass.yaml", "daemonset.yaml"] {
        docs.extend(yaml_docs(&dir.join(f)));
    }
    for d in &docs {
        let want = match d["kind"].as_str().expect("kind") {
            "RuntimeClass" => "node.k8s.io/v1",
            "DaemonSet" => "apps/v1",
            "ClusterRole" | "ClusterRoleBinding" => "rbac.authorization.k8s.io/v1",
            "Namespace" | "ServiceAccount" => "v1",
            other => panic!("unexpected kind {other}"),
        };
        assert_eq!(d["apiVersion"], want, "{}", d["kind"]);
    }

    // The RuntimeClass: the handler the installer registers, on the nodes it labels.
    let rc = find(&docs, "RuntimeClass", "lightwhale");
    assert_eq!(rc["handler"], "lightwhale");
    let cc = std::fs::read_to_string(repo().join("scripts/containerd-config.py")).expect("py");
    assert!(
        cc.contains("HANDLER = \"lightwhale\""),
        "containerd-config.py registers another handler"
    );
    assert_eq!(
        rc["scheduling"]["nodeSelector"]["lightwhale.io/enabled"], "true",
        "the label value is a string"
    );
    let installer =
        std::fs::read_to_string(repo().join("deploy/node/lightwhale-node")).expect("installer");
    assert!(
        installer.contains("LABEL=lightwhale.io/enabled\n"),
        "the installer sets another label"
    );
    assert!(
        installer.contains(r#"[ "$value" = null ] || value='"true"'"#),
        "the installer sets another value"
    );

    // The namespace admits privileged pods.
    let ns = find(&docs, "Namespace", "lightwhale-system");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );

    // RBAC: the DaemonSet's account may get and patch nodes (its label), nothing more.
    let ds = find(&docs, "DaemonSet", "lightwhale-node");
    check_installer_daemonset(ds, &docs, "install");
    let sa = ds["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("sa");
    let binding = find(&docs, "ClusterRoleBinding", "lightwhale-node");
    assert!(
        binding["subjects"]
            .as_array()
            .expect("subjects")
            .iter()
            .any(|s| s["kind"] == "ServiceAccount"
                && s["name"] == sa
                && s["namespace"] == "lightwhale-system"),
        "the binding does not name the DaemonSet's ServiceAccount"
    );
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["apiGroup"], "rbac.authorization.k8s.io");
    let role = find(
        &docs,
        "ClusterRole",
        binding["roleRef"]["name"].as_str().expect("role"),
    );
    let rules = role["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0]["apiGroups"], serde_json::json!([""]));
    assert_eq!(rules[0]["resources"], serde_json::json!(["nodes"]));
    assert_eq!(rules[0]["verbs"], serde_json::json!(["get", "patch"]));

    // The node's metrics: `lightwhale metrics` from the image, on all addresses of the pod
    // at the port Prometheus is told of, reading the host's status files and checkpoint
    // directory read-only, with no privileges.
    let metrics = metrics_container(ds);
    assert_eq!(metrics["args"][0], "metrics", "{metrics}");
    assert_eq!(metrics["args"][1], "--listen");
    assert_eq!(metrics["args"][2], "0.0.0.0:9464");
    assert_eq!(metrics["ports"][0]["containerPort"], 9464);
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9464");
    assert_eq!(metrics["readinessProbe"]["httpGet"]["path"], "/metrics");
    assert!(
        metrics["securityContext"]["privileged"] != true
            && metrics["securityContext"]["capabilities"]["drop"] == serde_json::json!(["ALL"]),
        "{metrics}"
    );
    let volumes = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes");
    for (path, want) in [
        ("/run/lightwhale", "/run/lightwhale"),
        ("/var/lib/lightwhale", "/var/lib/lightwhale"),
    ] {
        let m = metrics["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("metrics: nothing mounted at {path}"));
        assert_eq!(m["readOnly"], true, "{m}");
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume {}", m["name"]));
        assert_eq!(v["hostPath"]["path"], want, "{v}");
    }

    // The uninstall DaemonSet (not applied with the directory: a subdirectory).
    let uninstall = yaml_docs(&dir.join("uninstall/daemonset.yaml"));
    let uds = find(&uninstall, "DaemonSet", "lightwhale-node-uninstall");
    check_installer_daemonset(uds, &docs, "uninstall");
    assert!(uds["spec"]["template"]["spec"]["containers"][0]["readinessProbe"].is_object());

    // examples/ shows the same RuntimeClass, and a pod that uses it.
    let example = yaml_docs(&repo().join("examples/runtimeclass.yaml"));
    assert_eq!(
        find(&example, "RuntimeClass", "lightwhale"),
        rc,
        "examples/runtimeclass.yaml differs from deploy/"
    );
    let pod = example.iter().find(|d| d["kind"] == "Pod").expect("a Pod");
    assert_eq!(pod["spec"]["runtimeClassName"], "lightwhale");
}

/// deploy/node/config.toml: what the installer writes as /etc/lightwhale/config.toml is
/// read by the shim as it is, and with every example line taken in.
#[test]
fn node_config_is_valid() {
    let path = repo().join("deploy/node/config.toml");
    lightwhale_engine::config::NodeConfig::load_from(&path).expect("as shipped");
    let text = std::fs::read_to_string(&path).expect("read");
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(kv)
                if kv.contains(" = ")
                    && kv.chars().next().is_some_and(|c| c.is_ascii_lowercase()) =>
            {
                kv
            }
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.toml"), &uncommented).expect("write");
    let keys = uncommented
        .lines()
        .filter(|l| l.contains(" = ") && !l.starts_with('#'))
        .count();
    assert!(keys >= 12, "{keys} keys:\n{uncommented}");
    let c = lightwhale_engine::config::NodeConfig::load_from(&dir.path().join("config.toml"))
        .unwrap_or_else(|e| panic!("{e}:\n{uncommented}"));
    assert_eq!(c.idle_timeout.as_deref(), Some("60s"));
    assert_eq!(c.image_dir(), PathBuf::from("/var/lib/lightwhale"));
}

// --- the image -------------------------------------------------------------------------

/// GET /metrics from ip:port: the body, or "" when it did not answer.
fn scrape(ip: std::net::IpAddr, port: u16) -> String {
    let addr = std::net::SocketAddr::new(ip, port);
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(b"GET /metrics HTTP/1.0\r\nHost: node\r\n\r\n")
        .is_err()
    {
        return String::new();
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

/// Removes a Docker image when dropped.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        common::docker(&["rmi", "-f", &self.0]);
    }
}

/// The installer image, built offline (FROM scratch), checks this host as the DaemonSet
/// would: privileged, with hostPID and the host's / at /host.
#[test]
#[ignore = "needs the real stack (root, containerd 1.7 and 2.x, CRIU, runc, busybox, docker, make build's binaries): make test runs it"]
fn installer_image_checks_this_host() {
    let _turn = THIS_HOST.lock().unwrap_or_else(|e| e.into_inner());
    let context = tempfile::tempdir().expect("tempdir");
    let tag = format!("lightwhale/node-installer:test-{}", std::process::id());
    let image = Image(tag.clone());
    let out = Command::new("bash")
        .arg(repo().join("deploy/node/build-image.sh"))
        .arg("--context")
        .arg(context.path().join("ctx"))
        .args(["--tag", &tag])
        .output()
        .expect("build-image.sh");
    assert!(
        out.status.success(),
        "building the image failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = common::docker(&[
        "run",
        "--rm",
        "--privileged",
        "--pid=host",
        "-v",
        "/:/host",
        &image.0,
        "check",
        "--host-root",
        "/host",
    ]);
    assert_eq!(
        out.code, 0,
        "check failed in the image:\n{}\n{}",
        out.stdout, out.stderr
    );
    for want in [
        "ok     kernel",
        "ok     criu 4.",
        "(the installer's, installed as /usr/local/sbin/criu): criu check passes",
        "ok     runc",
        "ok     containerd 1.7",
        "ok     containerd's config",
        "this node can take lightwhale",
    ] {
        assert!(out.stdout.contains(want), "no {want:?} in:\n{}", out.stdout);
    }
    // The image's own tools: python3 with tomlkit, curl (the node label), GNU find.
    let out = common::docker(&[
        "run", "--rm", "--entrypoint", "/usr/bin/bash", &image.0, "-c",
        "python3 -c 'import tomlkit' && curl --version >/dev/null && find --version >/dev/null && lightwhale-node --help >/dev/null && echo tools-ok",
    ]);
    assert_eq!(out.trimmed(), "tools-ok", "{out:?}");
    // The DaemonSet's metrics container, as the manifest runs it (its command, the two
    // host directories read-only, no capabilities), answers a scrape at the pod's address.
    let docs = yaml_docs(&repo().join("deploy/kubernetes/daemonset.yaml"));
    let metrics = metrics_container(find(&docs, "DaemonSet", "lightwhale-node"));
    let entrypoint = metrics["command"][0].as_str().expect("command");
    let args: Vec<&str> = metrics["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    let name = format!("lw-metrics-{}", std::process::id());
    let mut argv = vec![
        "run",
        "-d",
        "--rm",
        "--name",
        &name,
        "--read-only",
        "--cap-drop",
        "ALL",
        "-v",
        "/run/lightwhale:/run/lightwhale:ro",
        "-v",
        "/var/lib/lightwhale:/var/lib/lightwhale:ro",
        "--entrypoint",
        entrypoint,
        &image.0,
    ];
    argv.extend(args);
    let started = common::docker(&argv);
    let _metrics = common::Cleanup(vec![name.clone()]);
    assert_eq!(started.code, 0, "{started:?}");
    let ip: std::net::IpAddr = common::inspect(&name, "{{.NetworkSettings.IPAddress}}")
        .parse()
        .expect("the metrics container's address");
    let mut scraped = String::new();
    let answered = common::cri::eventually(Duration::from_secs(20), || {
        scraped = scrape(ip, 9464);
        scraped.contains("# TYPE lightwhale_containers gauge")
    });
    assert!(
        answered,
        "no metrics from the image: {scraped:?}\n{:?}",
        common::docker(&["logs", &name])
    );
    assert!(
        scraped.contains("# TYPE lightwhale_wake_duration_seconds histogram"),
        "{scraped}"
    );
    assert!(
        !scraped.contains("lightwhale_status_read_errors 1"),
        "{scraped}"
    );

    // The DaemonSet's path inside the image, on a node of its own at /host: install (the
    // node labelled through the fake API server, with the image's curl), install again,
    // uninstall.
    let node = Node::new();
    node.add_binary(CONTAINERD17, "/usr/bin/containerd");
    let default = common::run(CONTAINERD17, &["config", "default"])
        .ok()
        .stdout;
    node.write("/etc/containerd/config.toml", &default);
    let before = node.tree();
    let sa = tempfile::tempdir().expect("tempdir");
    std::fs::write(sa.path().join("token"), "t0ken").expect("token");
    let (url, requests) = fake_api(200);
    let host = format!("{}:/host", node.root().display());
    let sa_mount = format!("{}:/sa:ro", sa.path().display());
    let api = format!("LIGHTWHALE_NODE_API={url}");
    let run = |command: &str| {
        common::docker(&[
            "run",
            "--rm",
            "--privileged",
            "--network",
            "host",
            "-v",
            &host,
            "-v",
            &sa_mount,
            "-e",
            "NODE_NAME=node-9",
            "-e",
            "LIGHTWHALE_NODE_SERVICEACCOUNT=/sa",
            "-e",
            &api,
            &image.0,
            command,
            "--host-root",
            "/host",
            "--no-restart",
        ])
    };
    let out = run("install");
    assert_eq!(
        out.code, 0,
        "install in the image:\n{}\n{}",
        out.stdout, out.stderr
    );
    assert_handler(&node.dump("/usr/bin/containerd", "/etc/containerd/config.toml"));
    let r = requests
        .recv_timeout(Duration::from_secs(5))
        .expect("a PATCH");
    assert!(
        r.head.starts_with("PATCH /api/v1/nodes/node-9 "),
        "{}",
        r.head
    );
    assert_eq!(
        r.body,
        r#"{"metadata":{"labels":{"lightwhale.io/enabled":"true"}}}"#
    );
    let installed = node.tree();
    let out = run("install");
    assert!(
        out.code == 0 && out.stdout.contains("nothing changed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(installed, node.tree(), "a second install changed the node");
    let out = run("uninstall");
    assert_eq!(
        out.code, 0,
        "uninstall in the image:\n{}\n{}",
        out.stdout, out.stderr
    );
    assert_eq!(before, node.tree(), "uninstall left the node changed");

    // check wrote nothing on the host that stayed (its scratch files are gone).
    let left: Vec<_> = std::fs::read_dir("/var/lib/lightwhale-node")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("work."))
        .collect();
    assert!(left.is_empty(), "check left {left:?}");
}

// --- on this host, for a containerd of its own ----------------------------------------

/// The tests that run lightwhale-node on this host itself take turns: its scratch and
/// ledger directory (/var/lib/lightwhale-node) is the host's.
static THIS_HOST: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A containerd 2.x of the test's own (root, state, socket, CNI network under a
/// temporary directory), started from a command line and detached, as on a node without
/// systemd. Dropping it undoes whatever the test got to: an install left in place, the
/// daemon (whichever process now reads its config), mounts, the bridge.
struct OwnContainerd {
    dir: tempfile::TempDir,
    installed: bool,
}

const OWN_BRIDGE: &str = "lw-cni3";
const OWN_NETWORK: &str = "lightwhale-installer-test";

impl OwnContainerd {
    fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn socket(&self) -> String {
        self.dir
            .path()
            .join("containerd.sock")
            .display()
            .to_string()
    }

    fn start(&self) {
        let log = self.dir.path().join("containerd.log");
        // Not a child of the test: the installer kills and restarts it, and a zombie would
        // look alive to it.
        let out = common::run(
            "sh",
            &[
                "-c",
                &format!(
                    "PATH={} setsid {CONTAINERD2} --config {} >>{} 2>&1 </dev/null &",
                    "/opt/lightwhale/containerd2/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    self.config().display(),
                    log.display()
                ),
            ],
        );
        assert_eq!(out.code, 0, "{out:?}");
        self.wait_up();
    }

    fn wait_up(&self) {
        let sock = self.socket();
        let up = common::cri::eventually(Duration::from_secs(30), || {
            common::run(
                "/opt/lightwhale/containerd2/usr/bin/ctr",
                &["--address", &sock, "version"],
            )
            .code
                == 0
        });
        assert!(up, "containerd did not come up: {}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The containerd processes reading this config.
    fn pids(&self) -> Vec<i32> {
        let want = self.config().display().to_string();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.first().is_some_and(|a| a.ends_with("/containerd")) && args.contains(&want) {
                pids.push(pid);
            }
        }
        pids
    }

    /// lightwhale-node on this host (`--host-root /`), for this containerd's config.
    fn lwnode(&self, command: &str, extra: &[&str]) -> Out {
        let out = Command::new("bash")
            .arg(repo().join("deploy/node/lightwhale-node"))
            .arg(command)
            .arg("--config")
            .arg(self.config())
            .arg("--payload")
            .arg(payload_dir())
            .arg("--no-label")
            .args(extra)
            .env_remove("NODE_NAME")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("LIGHTWHALE_NODE_API")
            .env("LIGHTWHALE_NODE_PYTHON", "/usr/bin/python3")
            .output()
            .expect("run lightwhale-node");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for OwnContainerd {
    fn drop(&mut self) {
        if self.installed {
            let out = self.lwnode("uninstall", &["--force", "--no-restart"]);
            if out.code != 0 {
                eprintln!("cleanup: uninstall failed: {out:?}");
            }
        }
        for pid in self.pids() {
            let _ = common::run("kill", &[&pid.to_string()]);
        }
        common::cri::eventually(Duration::from_secs(20), || self.pids().is_empty());
        for pid in self.pids() {
            let _ = common::run("kill", &["-9", &pid.to_string()]);
        }
        // Whatever containerd left mounted under its root, deepest first.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = self.dir.path().display().to_string();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&root))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = common::run("umount", &["-l", m]);
        }
        let _ = common::run("ip", &["link", "del", OWN_BRIDGE]);
        let _ = std::fs::remove_dir_all(format!("/var/lib/cni/networks/{OWN_NETWORK}"));
    }
}

/// A pod under the handler is refused for want of it: containerd does not know it.
fn assert_no_handler(cri: &common::cri::Cri, when: &str) {
    match cri.runp(cri.pod_config("inst-none", &[])) {
        Ok(pod) => panic!("{when}: a pod ran under the handler lightwhale: {}", pod.id),
        Err(f) => assert!(
            f.out.stderr.contains("lightwhale"),
            "{when}: runp failed, but not for want of the handler: {:?}",
            f.out
        ),
    }
}

/// What this host's files are: content hashes of what an install may replace or add.
fn host_files() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in [
        "/usr/local/bin/containerd-shim-lightwhale-v2",
        "/usr/local/bin/lightwhale",
        "/usr/local/sbin/criu",
        "/usr/local/libexec/lightwhale/criu-helpers/tar",
        "/usr/local/share/lightwhale/criu-profiles/default.conf",
        "/etc/lightwhale/config.toml",
        "/usr/local/lib/lightwhale",
        "/usr/local/libexec/lightwhale/criu",
        "/var/lib/lightwhale-node",
    ] {
        let state = match std::fs::read(p) {
            Ok(bytes) => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut h);
                format!("file {} bytes, hash {:x}", bytes.len(), h.finish())
            }
            Err(_) if Path::new(p).is_dir() => "dir".to_string(),
            Err(_) => "absent".to_string(),
        };
        out.insert(p.to_string(), state);
    }
    out
}

/// The installer's whole path on this host, with nothing faked: a containerd 2.x of the
/// test's own, started from a command line (no systemd), gets the handler; the installer
/// restarts it with its own command line and checks its CRI plugin; a pod under the
/// handler then runs, sleeps and wakes with its state; uninstall puts the config back byte
/// for byte, restarts containerd again, and leaves this host's files as they were.
#[test]
#[ignore = "needs the real stack (root, containerd 1.7 and 2.x, CRIU, runc, busybox, docker, make build's binaries): make test runs it"]
fn installs_on_this_host_restarts_containerd_and_a_pod_sleeps() {
    common::require_stack("the node installer on this host");
    let _turn = THIS_HOST.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::Builder::new()
        .prefix("lwctrd-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let mut own = OwnContainerd {
        dir,
        installed: false,
    };
    let d = own.dir.path().display().to_string();
    let net = format!("{d}/net.d");
    std::fs::create_dir_all(&net).expect("net.d");
    let conflist = Command::new("/usr/bin/python3")
        .arg(repo().join("scripts/containerd-config.py"))
        .arg("conflist")
        .arg(format!("{net}/10-{OWN_NETWORK}.conflist"))
        .args([
            "--name",
            OWN_NETWORK,
            "--bridge",
            OWN_BRIDGE,
            "--subnet",
            "10.97.0.0/16",
        ])
        .output()
        .expect("containerd-config.py");
    assert!(conflist.status.success(), "{conflist:?}");
    // What a node's config looks like before lightwhale: containerd's own settings, the
    // CRI's sandbox image and CNI, no lightwhale anywhere.
    let config = format!(
        r#"# a node's containerd (the installer test's own)
version = 3
root = "{d}/root"
state = "{d}/state"

[grpc]
address = "{d}/containerd.sock"

[plugins]
[plugins."io.containerd.internal.v1.opt"]
path = "{d}/root/opt"

[plugins."io.containerd.nri.v1.nri"]
disable = true

[plugins."io.containerd.cri.v1.runtime"]
restrict_oom_score_adj = true
[plugins."io.containerd.cri.v1.runtime".cni]
bin_dirs = ["/usr/lib/cni"]
conf_dir = "{net}"

[plugins."io.containerd.cri.v1.images".pinned_images]
sandbox = "{pause}"
"#,
        pause = common::cri::PAUSE_IMAGE
    );
    std::fs::write(own.config(), &config).expect("config");
    own.start();
    let sock = own.socket();
    let cri = common::cri::Cri::private2("containerd 2.x of its own", &sock, "10.97.");
    for image in [common::IMAGE, common::cri::PAUSE_IMAGE] {
        let out = common::run(
            "bash",
            &[
                "-c",
                &format!(
                    "set -o pipefail; docker save {image} | /opt/lightwhale/containerd2/usr/bin/ctr --address {sock} -n k8s.io images import -"
                ),
            ],
        );
        assert_eq!(out.code, 0, "import {image}: {out:?}");
    }
    assert_no_handler(&cri, "before the install");

    let before = host_files();
    let pid = own.pids();
    assert_eq!(pid.len(), 1, "{pid:?}");
    own.installed = true;
    let out = own.lwnode("install", &[]);
    assert_eq!(out.code, 0, "install:\n{}\n{}", out.stdout, out.stderr);
    for want in [
        "this node can take lightwhale",
        &format!(
            "restarting containerd (pid {}, with its own command line)",
            pid[0]
        ),
        "containerd is back, its CRI plugin loaded with the handler lightwhale",
    ] {
        assert!(out.stdout.contains(want), "no {want:?} in:\n{}", out.stdout);
    }
    let now = own.pids();
    assert!(
        now.len() == 1 && now != pid,
        "containerd was not restarted: {pid:?} then {now:?}"
    );
    let dump = common::run(
        CONTAINERD2,
        &[
            "--config",
            &own.config().display().to_string(),
            "config",
            "dump",
        ],
    );
    assert_handler(&dump.stdout);
    // Running it again changes nothing, and restarts nothing.
    let out = own.lwnode("install", &[]);
    assert!(
        out.code == 0
            && out.stdout.contains("nothing changed")
            && !out.stdout.contains("restarting"),
        "a second install:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(own.pids(), now, "a second install restarted containerd");

    // The CRI, through the handler it now has: a pod that sleeps and wakes.
    cri.require();
    let ids = {
        let config = cri.pod_config("inst", &[("lightwhale.io/idle-timeout", "1h")]);
        let pod = cri
            .runp(config)
            .unwrap_or_else(|f| panic!("runp after the install: {:?}\n{}", f.out, own.log()));
        let ip = pod.ip();
        assert!(ip.to_string().starts_with("10.97."), "{ip}");
        let id = pod
            .create("web", serde_json::json!({}))
            .unwrap_or_else(|out| panic!("create: {out:?}"));
        cri.ok(&["start", &id]);
        cri.ok(&["exec", "-s", &id, "sh", "-c", "echo kept > /dev/shm/mark"]);
        assert!(common::cri::http_get(ip, 8080, Duration::from_secs(20)).is_some());
        common::sleep_now(&id);
        common::wait_state("k8s.io", &id, "asleep", Duration::from_secs(20));
        assert!(
            common::processes_of(&id).is_empty(),
            "asleep, yet processes remain"
        );
        let body = common::cri::http_get(ip, 8080, Duration::from_secs(20));
        assert_eq!(
            body.as_deref().map(str::trim),
            Some("hello from lightwhale")
        );
        let s = common::wait_state("k8s.io", &id, "awake", Duration::from_secs(20));
        assert_eq!(s["wakes"], 1, "{s}");
        let out = cri.ok(&["exec", "-s", &id, "cat", "/dev/shm/mark"]);
        assert_eq!(out.stdout.trim(), "kept");
        vec![pod.id.clone(), id]
        // the pod is removed here
    };
    let gone = common::cri::eventually(Duration::from_secs(20), || {
        ids.iter()
            .all(|id| !Path::new(&format!("/run/lightwhale/containers/k8s.io/{id}.json")).exists())
    });
    assert!(
        gone,
        "the removed pod's containers are still recorded as running"
    );

    let restarted = own.pids();
    let out = own.lwnode("uninstall", &[]);
    assert_eq!(out.code, 0, "uninstall:\n{}\n{}", out.stdout, out.stderr);
    own.installed = false;
    assert_eq!(
        std::fs::read_to_string(own.config()).expect("config"),
        config,
        "uninstall did not restore the config byte for byte"
    );
    own.wait_up();
    let after = own.pids();
    assert!(
        after.len() == 1 && after != restarted,
        "uninstall did not restart containerd: {restarted:?} then {after:?}"
    );
    assert_no_handler(&cri, "after uninstall");
    assert_eq!(
        before,
        host_files(),
        "uninstall left this host's files changed"
    );
}

/// The swap devices in use now, as /dev paths (/proc/swaps names a device as its swapon
/// saw it: through a node root's /dev, the path is that one).
fn swaps() -> Vec<String> {
    std::fs::read_to_string("/proc/swaps")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| p.rsplit('/').next())
        .map(|name| format!("/dev/{name}"))
        .collect()
}

/// Puts this host's swap back when dropped (the test takes it away for a while).
struct SwapBack(Vec<String>);

impl Drop for SwapBack {
    fn drop(&mut self) {
        let now = swaps();
        for dev in self.0.iter().filter(|d| !now.contains(d)) {
            let out = common::run("swapon", &["-p", "100", dev]);
            if out.code != 0 {
                eprintln!("could not put swap {dev} back: {out:?}");
            }
        }
    }
}

/// `--zram-swap`: a node without swap gets a zram device as swap (sized, compressed),
/// once; uninstall takes it away; a node with swap keeps its own; a bad size is refused.
#[test]
#[ignore = "needs the real stack (root, containerd 1.7 and 2.x, CRIU, runc, busybox, docker, make build's binaries): make test runs it"]
fn zram_swap_for_a_node_without_swap() {
    let _turn = THIS_HOST.lock().unwrap_or_else(|e| e.into_inner());
    let node = Node::new();
    node.add_binary(CONTAINERD17, "/usr/bin/containerd");
    for bin in ["mkswap", "swapon", "swapoff"] {
        node.add_binary(&format!("/usr/sbin/{bin}"), &format!("/usr/sbin/{bin}"));
    }
    let default = common::run(CONTAINERD17, &["config", "default"])
        .ok()
        .stdout;
    node.write("/etc/containerd/config.toml", &default);
    // A node's /dev is the kernel's devtmpfs, where a new zram device appears.
    let dev = node.path("/dev");
    std::fs::create_dir_all(&dev).expect("dev");
    let dev = dev.display().to_string();
    let out = common::run("mount", &["--bind", "/dev", &dev]);
    assert_eq!(out.code, 0, "{out:?}");
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = common::run("umount", &["-l", &self.0]);
        }
    }
    let _unmount = Unmount(dev);

    let bad = lwnode(&node, &["install", "--zram-swap", "lots"]);
    assert!(
        bad.code != 0 && bad.stderr.contains("expected a size such as 512M"),
        "{bad:?}"
    );

    // This host's own swap is set aside for the test, and put back whatever happens.
    let host = swaps();
    let _back = SwapBack(host.clone());
    for dev in &host {
        let out = common::run("swapoff", &[dev]);
        assert_eq!(out.code, 0, "swapoff {dev}: {out:?}");
    }
    assert!(swaps().is_empty());

    let out = ok(lwnode(&node, &["install", "--zram-swap", "256Mi"]));
    let ours: Vec<String> = swaps();
    assert_eq!(ours.len(), 1, "{ours:?}\n{}", out.stdout);
    let dev = ours[0].trim_start_matches("/dev/").to_string();
    assert!(dev.starts_with("zram"), "{dev}");
    assert!(
        out.stdout
            .contains(&format!("swap: /dev/{dev}, 256M of zram")),
        "{}",
        out.stdout
    );
    let size = std::fs::read_to_string(format!("/sys/block/{dev}/disksize")).expect("disksize");
    assert_eq!(size.trim(), (256u64 << 20).to_string());

    let again = ok(lwnode(&node, &["install", "--zram-swap", "256M"]));
    assert!(
        again.stdout.contains("from an earlier install")
            && again.stdout.contains("nothing changed"),
        "{}",
        again.stdout
    );
    assert_eq!(swaps(), ours, "a second install set up another device");

    ok(lwnode(&node, &["uninstall"]));
    assert!(swaps().is_empty(), "uninstall left swap on: {:?}", swaps());
    let left = std::fs::read_to_string(format!("/sys/block/{dev}/disksize")).unwrap_or_default();
    assert!(
        left.trim().is_empty() || left.trim() == "0",
        "/dev/{dev} was not reset"
    );

    // A node with swap of its own keeps it, and gets no zram.
    drop(_back);
    if !host.is_empty() {
        let out = ok(lwnode(&node, &["install", "--zram-swap", "256M"]));
        assert!(out.stdout.contains("no zram set up"), "{}", out.stdout);
        assert_eq!(swaps(), host);
        ok(lwnode(&node, &["uninstall"]));
        assert_eq!(swaps(), host, "uninstall took the node's own swap");
    }
}
