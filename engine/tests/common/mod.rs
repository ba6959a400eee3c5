//! Helpers for the privileged engine tests: a busybox bundle, and the rule that these
//! tests may skip only outside CI.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Returns false (test skipped, reason printed) when the host cannot run containers,
/// and panics instead when `CI=true`: in CI a missing dependency is a failure.
pub fn privileged_or_skip(what: &str) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::Uid::effective().is_root() {
        missing.push("root".to_string());
    }
    for bin in ["runc", "criu"] {
        if lightwhale_engine::runc::Runc::find_binary(bin).is_none() {
            missing.push(bin.to_string());
        }
    }
    if !Path::new(BUSYBOX).is_file() {
        missing.push(format!("{BUSYBOX} (package busybox-static)"));
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{what}: CI must run this test, but this host lacks {}",
            missing.join(", ")
        );
    }
    eprintln!("SKIP {what}: needs {}", missing.join(", "));
    false
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

    let out = std::process::Command::new("runc")
        .arg("spec")
        .current_dir(&bundle)
        .output()
        .expect("runc spec");
    assert!(
        out.status.success(),
        "runc spec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read spec")).expect("parse spec");
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = args.iter().map(|a| serde_json::Value::from(*a)).collect();
    spec["root"]["readonly"] = false.into();
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
