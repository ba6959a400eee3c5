//! Helpers for the Kubernetes tests: pods and containers through containerd's CRI plugin,
//! driven with `lightwhale-cri` (crictl's commands and JSON files; no kubelet here), on
//! either containerd: the host's 1.7 and the 2.x that `scripts/install-deps.sh` runs
//! beside it. Every pod is removed when its guard drops, whatever the test did.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{run, unique, Out, CTR_IMAGE};

/// The sandbox image `scripts/make-test-images.sh` builds and install-deps.sh configures.
pub const PAUSE_IMAGE: &str = "lightwhale.local/pause:3.9";
/// The runtime handler install-deps.sh registers.
pub const HANDLER: &str = "lightwhale";
/// Bounds every lightwhale-cri call (its own deadline per call is 60 s).
const CALL_LIMIT: &str = "120";

/// One containerd's CRI endpoint, and what the tests expect of it.
#[derive(Clone, Debug)]
pub struct Cri {
    /// For messages: "containerd 1.7".
    pub label: &'static str,
    pub endpoint: &'static str,
    /// `ctr` for that containerd, with its address.
    ctr: &'static [&'static str],
    /// The version its `version` must report, as a prefix.
    version_prefix: &'static str,
    /// The CNI subnet install-deps.sh gives its pods, as an address prefix.
    pub subnet_prefix: &'static str,
}

impl Cri {
    /// The host's containerd (1.7), which Docker uses too.
    pub fn containerd() -> Cri {
        Cri {
            label: "containerd 1.7",
            endpoint: "unix:///run/containerd/containerd.sock",
            ctr: &["ctr"],
            version_prefix: "1.7",
            subnet_prefix: "10.99.",
        }
    }

    /// The containerd 2.x beside it (/opt/lightwhale/containerd2).
    pub fn containerd2() -> Cri {
        Cri {
            label: "containerd 2.x",
            endpoint: "unix:///run/lightwhale-containerd2/containerd.sock",
            ctr: &[
                "/opt/lightwhale/containerd2/usr/bin/ctr",
                "--address",
                "/run/lightwhale-containerd2/containerd.sock",
            ],
            version_prefix: "2.",
            subnet_prefix: "10.98.",
        }
    }

    /// A containerd 2.x a test runs itself, at `socket`, whose pods get `subnet_prefix`
    /// addresses (the strings live as long as the test binary: a test makes one or two).
    pub fn private2(label: &'static str, socket: &str, subnet_prefix: &'static str) -> Cri {
        let endpoint: &'static str = Box::leak(format!("unix://{socket}").into_boxed_str());
        let socket: &'static str = Box::leak(socket.to_string().into_boxed_str());
        let ctr: &'static [&'static str] = Box::leak(Box::new([
            "/opt/lightwhale/containerd2/usr/bin/ctr",
            "--address",
            socket,
        ]));
        Cri {
            label,
            endpoint,
            ctr,
            version_prefix: "2.",
            subnet_prefix,
        }
    }

    /// `ctr --address ... ARGS...` for this containerd.
    pub fn ctr(&self, args: &[&str]) -> Out {
        let mut all: Vec<&str> = self.ctr[1..].to_vec();
        all.extend_from_slice(args);
        run(self.ctr[0], &all)
    }

    /// `lightwhale-cri -r ENDPOINT ARGS...`, bounded in time.
    pub fn cri(&self, args: &[&str]) -> Out {
        let bin = cri_bin();
        let mut all = vec![CALL_LIMIT, bin.as_str(), "-r", self.endpoint, "-t", "60s"];
        all.extend_from_slice(args);
        run("timeout", &all)
    }

    /// Like [`Cri::cri`], failing the test (with the whole output) unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> Out {
        let out = self.cri(args);
        assert_eq!(
            out.code, 0,
            "{}: lightwhale-cri {args:?} failed: {out:?}",
            self.label
        );
        out
    }

    /// Fails the test, naming each missing piece, when this containerd's CRI is not set up.
    pub fn require(&self) {
        super::require_stack(self.label);
        let mut missing = Vec::new();
        let version = self.cri(&["version"]);
        if version.code == -1 || version.stderr.contains("cannot run") {
            missing.push(format!(
                "lightwhale-cri ({}; make install, or LIGHTWHALE_CRI=path)",
                version.stderr.trim()
            ));
        } else if version.code != 0 {
            missing.push(format!(
                "a running {} with its CRI plugin at {} (scripts/install-deps.sh): {}",
                self.label,
                self.endpoint,
                version.stderr.trim()
            ));
        } else {
            let have = version
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("RuntimeVersion:"))
                .map(str::trim)
                .unwrap_or("");
            if !have
                .trim_start_matches('v')
                .starts_with(self.version_prefix)
            {
                missing.push(format!(
                    "{} at {} (it runs containerd {have:?})",
                    self.label, self.endpoint
                ));
            }
        }
        let mut ctr: Vec<&str> = self.ctr.to_vec();
        ctr.extend(["-n", "k8s.io", "images", "ls", "-q"]);
        let images = run(ctr[0], &ctr[1..]);
        for image in [CTR_IMAGE, PAUSE_IMAGE] {
            if !images.stdout.lines().any(|l| l.trim() == image) {
                missing.push(format!(
                    "image {image} in {}'s k8s.io namespace (scripts/make-test-images.sh)",
                    self.label
                ));
            }
        }
        assert!(
            missing.is_empty(),
            "{}: this test needs {} (make test sets them up)",
            self.label,
            missing.join("; ")
        );
    }

    /// A pod config for `runp`, with a unique name and these annotations, in a directory
    /// of its own (its logs go there too).
    pub fn pod_config(&self, prefix: &str, annotations: &[(&str, &str)]) -> PodConfig {
        let name = unique(prefix);
        let dir = tempfile::Builder::new()
            .prefix("lwt-cri-")
            .tempdir()
            .expect("temp dir");
        let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        let config = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "attempt": 0},
            "log_directory": dir.path().join("logs"),
            "linux": {},
            "annotations": annotations,
        });
        let path = dir.path().join("pod.json");
        std::fs::write(&path, config.to_string()).expect("write pod.json");
        PodConfig {
            name,
            path: path.to_string_lossy().into_owned(),
            dir,
        }
    }

    /// `runp --runtime lightwhale`: the pod, removed when it drops, or runp's failure.
    pub fn runp(&self, config: PodConfig) -> Result<Pod, Box<RunpFailed>> {
        let mut guard = PodGuard {
            cri: self.clone(),
            name: config.name.clone(),
            id: None,
        };
        let out = self.cri(&["runp", "--runtime", HANDLER, &config.path]);
        if out.code != 0 {
            return Err(Box::new(RunpFailed { out, _guard: guard }));
        }
        guard.id = Some(out.trimmed().to_string());
        Ok(Pod {
            id: out.trimmed().to_string(),
            guard,
            config,
        })
    }
}

/// A failed runp: its output, and a guard that removes any pod it left all the same.
pub struct RunpFailed {
    pub out: Out,
    _guard: PodGuard,
}

/// The lightwhale-cri to run: $LIGHTWHALE_CRI, or the one on PATH (make install).
fn cri_bin() -> String {
    std::env::var("LIGHTWHALE_CRI").unwrap_or_else(|_| "lightwhale-cri".to_string())
}

/// A pod config file and the directory it lives in (removed after the pod).
pub struct PodConfig {
    pub name: String,
    pub path: String,
    pub dir: tempfile::TempDir,
}

/// Removes a pod (its containers with it) when dropped: by id, and by name in case runp
/// made one it did not report (a timeout).
pub struct PodGuard {
    cri: Cri,
    name: String,
    id: Option<String>,
}

impl Drop for PodGuard {
    fn drop(&mut self) {
        let by_name = self
            .cri
            .cri(&["pods", "-q", "--name", &format!("^{}$", self.name)]);
        let mut ids: Vec<String> = by_name.stdout.lines().map(str::to_string).collect();
        ids.extend(self.id.clone());
        ids.sort();
        ids.dedup();
        for id in ids {
            let _ = self.cri.cri(&["rmp", "-f", &id]);
        }
    }
}

/// A running pod. Field order matters: the guard removes the pod before its directory goes.
pub struct Pod {
    pub id: String,
    guard: PodGuard,
    pub config: PodConfig,
}

impl Pod {
    pub fn cri(&self) -> &Cri {
        &self.guard.cri
    }

    pub fn inspect(&self) -> Value {
        let out = self.cri().ok(&["inspectp", &self.id]);
        serde_json::from_str(&out.stdout).expect("inspectp prints JSON")
    }

    /// The pod's IP, as crictl has it: `.status.network.ip`.
    pub fn ip(&self) -> IpAddr {
        let status = self.inspect();
        let ip = status["status"]["network"]["ip"].as_str().unwrap_or("");
        ip.parse()
            .unwrap_or_else(|_| panic!("pod {} has no IP: {status}", self.id))
    }

    /// `create` from a container config with these fields (merged over a busybox httpd on
    /// port 8080), returning the container's id, or create's output when it fails.
    pub fn create(&self, name: &str, extra: Value) -> Result<String, Out> {
        let mut config = json!({
            "metadata": {"name": name},
            "image": {"image": CTR_IMAGE},
            "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
            "log_path": format!("{name}.log"),
            "linux": {},
        });
        if let (Some(base), Value::Object(more)) = (config.as_object_mut(), extra) {
            base.extend(more);
        }
        let path = self.config.dir.path().join(format!("{name}.json"));
        std::fs::write(&path, config.to_string()).expect("write container config");
        let path = path.to_string_lossy().into_owned();
        let out = self
            .cri()
            .cri(&["create", &self.id, &path, &self.config.path]);
        if out.code == 0 {
            Ok(out.trimmed().to_string())
        } else {
            Err(out)
        }
    }

    /// A container's status (`inspect`).
    pub fn container(&self, id: &str) -> Value {
        let out = self.cri().ok(&["inspect", id]);
        serde_json::from_str(&out.stdout).expect("inspect prints JSON")
    }
}

/// GET / from ip:port until it answers 200 (the server may still be starting), at most
/// `within`; its body, or None.
pub fn http_get(ip: IpAddr, port: u16, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(body) = try_http_get(ip, port) {
            return Some(body);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One GET / with short timeouts; the body of a 200, or None.
pub fn try_http_get(ip: IpAddr, port: u16) -> Option<String> {
    let addr = SocketAddr::new(ip, port);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    (text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"))
        .then(|| text.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// Waits until `f` holds, at most `within`; false if it never did.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
