//! Helpers for the end-to-end tests: run docker, ctr and friends, compare runtimes.
//!
//! The tests drive the real stack (dockerd, containerd, runc, CRIU) with the installed
//! shim. They are `#[ignore]`d with that reason, so a plain `cargo test` reports them as
//! ignored, never as passed; `make test` sets the stack up and runs them with
//! `--include-ignored`, and then a missing piece fails them.

#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "lightwhale-test/busybox:latest";
pub const CTR_IMAGE: &str = "docker.io/lightwhale-test/busybox:latest";
pub const LIGHTWHALE: &str = "lightwhale";
pub const RUNC: &str = "runc";
/// Both runtimes, so each scenario runs side by side and the results can be compared.
pub const RUNTIMES: [&str; 2] = [RUNC, LIGHTWHALE];

/// Docker's own CLI: the Debian package's, which matches the daemon.
pub fn docker_bin() -> &'static str {
    if std::path::Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

#[derive(Debug, Clone)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(self) -> Out {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        self
    }
    pub fn trimmed(&self) -> &str {
        self.stdout.trim()
    }
}

pub fn run(bin: &str, args: &[&str]) -> Out {
    run_stdin(bin, args, None)
}

pub fn run_stdin(bin: &str, args: &[&str], input: Option<&str>) -> Out {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Out {
                code: -1,
                stdout: String::new(),
                stderr: format!("cannot run {bin}: {e}"),
            }
        }
    };
    if let Some(text) = input {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn docker(args: &[&str]) -> Out {
    run(docker_bin(), args)
}

pub fn ctr(args: &[&str]) -> Out {
    run("ctr", args)
}

/// A name unique to this test run, so parallel tests never clash.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "lwt-{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A loopback port unique to this test run.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Fails the test, naming what is missing, when the stack is not set up.
pub fn require_stack(what: &str) {
    let mut missing = Vec::new();
    if !nix::unistd::Uid::effective().is_root() {
        missing.push("root".to_string());
    }
    if let Some(m) = lightwhale_engine::privilege::describe_missing() {
        missing.push(m);
    }
    let dockerd = run(docker_bin(), &["info", "--format", "{{json .Runtimes}}"]);
    if dockerd.code != 0 {
        missing.push(format!("a running dockerd ({})", dockerd.stderr.trim()));
    } else if !dockerd.stdout.contains("\"lightwhale\"") {
        missing.push(
            "the lightwhale runtime in /etc/docker/daemon.json (run scripts/install-deps.sh)"
                .into(),
        );
    }
    if run("ctr", &["version"]).code != 0 {
        missing.push("a running containerd".into());
    }
    if Command::new("sh")
        .args(["-c", "command -v containerd-shim-lightwhale-v2"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        missing.push("containerd-shim-lightwhale-v2 on PATH (make install)".into());
    }
    if docker(&["image", "inspect", IMAGE]).code != 0 {
        missing.push(format!("image {IMAGE} (scripts/make-test-images.sh)"));
    }
    assert!(
        missing.is_empty(),
        "{what}: this test needs {} (make test sets them up)",
        missing.join("; ")
    );
}

/// Removes a container when dropped, so a failed assertion leaves nothing behind.
pub struct Cleanup(pub Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.0 {
            // Bounded: a broken shim must fail the test, not hang the run.
            let _ = run("timeout", &["60", docker_bin(), "rm", "-f", name]);
        }
    }
}

/// One containerd, as `ctr` reaches it: the host's 1.7 (Docker's too), or the 2.x that
/// scripts/install-deps.sh runs beside it.
#[derive(Clone, Copy, Debug)]
pub struct Ctrd {
    pub label: &'static str,
    cmd: &'static [&'static str],
    /// Where it keeps its shims' task directories (each has the shim's `address`).
    pub tasks: &'static str,
}

impl Ctrd {
    pub const ONE_SEVEN: Ctrd = Ctrd {
        label: "containerd 1.7",
        cmd: &["ctr"],
        tasks: "/run/containerd/io.containerd.runtime.v2.task",
    };
    pub const TWO: Ctrd = Ctrd {
        label: "containerd 2.x",
        cmd: &[
            "/opt/lightwhale/containerd2/usr/bin/ctr",
            "--address",
            "/run/lightwhale-containerd2/containerd.sock",
        ],
        tasks: "/run/lightwhale-containerd2/io.containerd.runtime.v2.task",
    };

    pub fn ctr(&self, args: &[&str]) -> Out {
        let mut all: Vec<&str> = self.cmd[1..].to_vec();
        all.extend(args);
        run(self.cmd[0], &all)
    }

    /// A guard that kills and removes task and container `id` when dropped.
    pub fn task(&self, id: &str) -> CtrdTask {
        CtrdTask(*self, id.to_string())
    }
}

pub struct CtrdTask(pub Ctrd, pub String);

impl Drop for CtrdTask {
    fn drop(&mut self) {
        let (c, id) = (&self.0, self.1.as_str());
        let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        std::thread::sleep(Duration::from_millis(300));
        let _ = c.ctr(&["task", "rm", "-f", id]);
        let _ = c.ctr(&["container", "rm", id]);
    }
}

/// Removes a ctr task and container when dropped.
pub struct CtrTask(pub String);

impl Drop for CtrTask {
    fn drop(&mut self) {
        let _ = ctr(&["task", "kill", "-s", "SIGKILL", &self.0]);
        std::thread::sleep(Duration::from_millis(300));
        let _ = ctr(&["task", "rm", "-f", &self.0]);
        let _ = ctr(&["container", "rm", &self.0]);
    }
}

/// A Docker network, removed when dropped.
pub struct Network(pub String);

impl Network {
    pub fn create(prefix: &str) -> Network {
        let name = unique(prefix);
        docker(&["network", "create", &name]).ok();
        Network(name)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.0]);
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn inspect(name: &str, format: &str) -> String {
    docker(&["inspect", "-f", format, name])
        .trimmed()
        .to_string()
}

/// An HTTP GET to 127.0.0.1:port, retried while the server starts.
pub fn http_get(port: u16) -> String {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let attempt = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        });
        match attempt {
            Ok(body) if body.starts_with("HTTP/") => return body,
            other => {
                assert!(Instant::now() < deadline, "GET 127.0.0.1:{port}: {other:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The shim processes serving lightwhale containers right now.
pub fn shim_pids() -> Vec<i32> {
    let out = run("pgrep", &["-f", "containerd-shim-lightwhale-v2"]);
    out.stdout
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

pub const PY_IMAGE: &str = "lightwhale-test/python:latest";

/// The status file the shim keeps for a lightwhale container.
pub fn lw_status(ns: &str, id: &str) -> serde_json::Value {
    let path = format!("/run/lightwhale/containers/{ns}/{id}.json");
    std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

pub fn wait_state(ns: &str, id: &str, state: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = lw_status(ns, id);
        if s["state"] == state {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{id} did not become {state} within {timeout:?}: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Processes whose cgroup path names the container: none means the task really is gone.
pub fn processes_of(id: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|c| c.contains(id))
            .unwrap_or(false)
        {
            pids.push(pid);
        }
    }
    pids
}

/// GET / and its body; None on any failure (refused, reset, timeout).
pub fn try_get(port: u16, timeout: Duration) -> Option<String> {
    try_get_path(port, "/", timeout)
}

/// GET `path` and its body; None on any failure.
pub fn try_get_path(port: u16, path: &str, timeout: Duration) -> Option<String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    (body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"))
        .then(|| body.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// `docker run` arguments after the options: `-e` for each of `env`, the counter's
/// memory, then the python image running examples/counter.py.
pub fn python_counter_args(env: &[&str], memory_mib: u32) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for e in env {
        v.push("-e".into());
        v.push(e.to_string());
    }
    v.extend([
        "-e".into(),
        format!("MEMORY_MIB={memory_mib}"),
        PY_IMAGE.into(),
        "python3".into(),
        "-c".into(),
        counter_script(),
    ]);
    v
}

pub fn counter_script() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/counter.py"
    ))
    .expect("examples/counter.py")
}

/// `docker run -d` under lightwhale with an idle timeout; returns the container id.
pub fn run_lw(
    name: &str,
    idle: &str,
    publish: Option<&str>,
    extra: &[&str],
    cmd: &[&str],
) -> String {
    let ann = format!("lightwhale.io/idle-timeout={idle}");
    let mut args = vec![
        "run",
        "-d",
        "--name",
        name,
        "--runtime",
        LIGHTWHALE,
        "--annotation",
        &ann,
    ];
    if let Some(p) = publish {
        args.extend(["-p", p]);
    }
    args.extend(extra);
    args.extend(cmd);
    docker(&args).ok().trimmed().to_string()
}

/// A container under lightwhale (idle timeout `idle`, `extra` docker arguments, `cmd`)
/// named after `prefix` and published on a free loopback port: its cleanup (it is removed
/// when that drops), the port, and its id.
pub fn run_published(
    prefix: &str,
    idle: &str,
    extra: &[&str],
    cmd: &[&str],
) -> (Cleanup, u16, String) {
    let name = unique(prefix);
    let cleanup = Cleanup(vec![name.clone()]);
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    let id = run_lw(&name, idle, Some(&publish), extra, cmd);
    (cleanup, port, id)
}

/// `docker run` under lightwhale with `annotation` (KEY=VALUE) must be refused; asserts
/// that it was, naming the annotation and saying `expected` (the accepted form).
pub fn assert_annotation_refused(annotation: &str, expected: &str) {
    let name = unique("lwt-badann");
    let _cleanup = Cleanup(vec![name.clone()]);
    let out = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--runtime",
        LIGHTWHALE,
        "--annotation",
        annotation,
        IMAGE,
        "sleep",
        "60",
    ]);
    assert_ne!(out.code, 0, "{annotation}: {out:?}");
    let key = annotation.split('=').next().unwrap_or(annotation);
    assert!(
        out.stderr.contains(key) && out.stderr.contains(expected),
        "{annotation}: {out:?}"
    );
}

/// Removes template `.0` (`lightwhale template rm`) when dropped: when the test ends,
/// passed or not.
pub struct TemplateGone(pub String);

impl Drop for TemplateGone {
    fn drop(&mut self) {
        let _ = run("lightwhale", &["template", "rm", &self.0]);
    }
}

/// busybox's httpd on port 8080, serving the test image's /www.
pub const HTTPD: [&str; 7] = [IMAGE, "httpd", "-f", "-p", "8080", "-h", "/www"];

/// GET / until a service that is still starting answers 200 (at most `timeout`).
pub fn wait_get(port: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(body) = try_get(port, Duration::from_secs(10)) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "no answer on port {port} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `lightwhale sleep ID`, retried while the container refuses for a passing reason (its
/// server not listening yet, a request just answered), at most 20 s.
pub fn sleep_now(id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = run("lightwhale", &["sleep", id]);
        if out.code == 0 && out.stdout.contains("asleep") {
            return;
        }
        assert!(Instant::now() < deadline, "{id} would not sleep: {out:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Pods and containers through containerd's CRI plugin (`lightwhale-cri`), on containerd
/// 1.7 and 2.x: `shim/tests/cri.rs`.
pub mod cri;

/// GET / on port 8080 from inside the network namespace lightwhale pinned for container
/// `id` of containerd namespace `ns` (as a neighbour in a pod would connect).
pub fn get_in_pinned_netns(ns: &str, id: &str) -> Out {
    let netns = format!("--net=/run/lightwhale/netns/{ns}-{id}");
    run(
        "nsenter",
        &[
            &netns,
            "busybox",
            "timeout",
            "20",
            "busybox",
            "wget",
            "-qO-",
            "http://127.0.0.1:8080/",
        ],
    )
}
