//! Helpers for the privileged engine tests: busybox and python bundles, and the rule for
//! what they need.
//!
//! These tests are `#[ignore]`d with the reason, so a plain `cargo test` reports them as
//! ignored (never as passed). `make test` runs them with `--include-ignored` after
//! installing what they need; once asked to run, a missing dependency fails the test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub mod service;

/// Fails the test, naming what is missing, when this host cannot run containers.
pub fn require_privileges(what: &str) {
    let mut missing = Vec::new();
    if let Some(m) = lightwhale_engine::privilege::describe_missing() {
        missing.push(m);
    }
    for bin in ["runc", "criu"] {
        if lightwhale_engine::runc::Runc::find_binary(bin).is_none() {
            missing.push(bin.to_string());
        }
    }
    if !Path::new(BUSYBOX).is_file() {
        missing.push(format!("{BUSYBOX} (package busybox-static)"));
    }
    assert!(
        missing.is_empty(),
        "{what}: this test needs {} (make test installs them)",
        missing.join(", ")
    );
}

pub const BUSYBOX: &str = "/bin/busybox";

const APPLETS: &[&str] = &[
    "sh", "httpd", "echo", "sleep", "cat", "wget", "ls", "nc", "true", "ps",
];

/// A bundle running `args` in a busybox rootfs, with a network namespace at `netns`
/// (or a private one runc creates, when None).
pub fn busybox_bundle(dir: &Path, args: &[&str], netns: Option<&Path>) -> PathBuf {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "www", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir rootfs");
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).expect("symlink applet");
    }
    std::fs::write(rootfs.join("www/index.html"), "hello from lightwhale\n").expect("index");
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").expect("passwd");

    // Written here rather than by `runc spec`: the engine's reaper owns waitpid in this
    // process, so std's Command::output() would lose the child's status.
    let path = bundle.join("config.json");
    let mut spec = default_spec();
    spec["process"]["args"] = args.iter().map(|a| serde_json::Value::from(*a)).collect();
    if let Some(ns) = netns {
        let list = spec["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces");
        for n in list.iter_mut() {
            if n["type"] == "network" {
                n["path"] = ns.display().to_string().into();
            }
        }
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).expect("json")).expect("write spec");
    bundle
}

/// A bundle running `args` with the host's /usr mounted read-only (python3 and its
/// libraries, without copying them) over a busybox rootfs; `env` is added to the
/// process's environment. The network namespace is left for the engine to make.
pub fn host_usr_bundle(dir: &Path, args: &[&str], env: &[&str]) -> PathBuf {
    let bundle = busybox_bundle(dir, &["true"], None);
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("usr")).expect("mkdir usr");
    for (link, to) in [("lib", "usr/lib"), ("lib64", "usr/lib64")] {
        std::os::unix::fs::symlink(to, rootfs.join(link)).expect("symlink lib");
    }
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read spec")).expect("spec json");
    spec["process"]["args"] = args.iter().map(|a| serde_json::Value::from(*a)).collect();
    if let Some(list) = spec["process"]["env"].as_array_mut() {
        list.extend(env.iter().map(|e| serde_json::Value::from(*e)));
    }
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        mounts.push(serde_json::json!({
            "destination": "/usr", "type": "bind", "source": "/usr",
            "options": ["rbind", "ro", "nosuid", "nodev"]
        }));
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).expect("json")).expect("write spec");
    bundle
}

/// Host pids whose cgroup path names `id`: none means no process of the container exists.
pub fn processes_of(id: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|c| c.lines().any(|l| l.ends_with(&format!("/{id}"))))
            .unwrap_or(false)
        {
            pids.push(pid);
        }
    }
    pids
}

/// An HTTP GET of `path` on 127.0.0.1:`port` inside `netns`: (status line, body), or
/// None when no answer came within `timeout`.
pub fn get_in(
    netns: &Path,
    port: u16,
    path: &str,
    timeout: std::time::Duration,
) -> Option<(String, String)> {
    let path = path.to_string();
    in_netns(netns, move || {
        use std::io::{Read, Write};
        let mut s =
            std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        Some((head.lines().next()?.to_string(), body.to_string()))
    })
}

/// Runs `f` on a thread that has entered the network namespace at `netns`.
pub fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = std::fs::File::open(netns).expect("open netns");
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// A plain HTTP GET of `/` on 127.0.0.1:`port`, from inside `netns`. Retries while the
/// server is starting.
pub fn http_get_in(netns: &Path, port: u16) -> String {
    in_netns(netns, move || {
        use std::io::{Read, Write};
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                        .ok();
                    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                        .expect("send");
                    let mut body = String::new();
                    s.read_to_string(&mut body).expect("read");
                    return body;
                }
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("connect 127.0.0.1:{port}: {e}"),
            }
        }
    })
}

/// runc's default spec (as `runc spec` writes it), without a terminal and writable.
pub fn default_spec() -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "lightwhale",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}
