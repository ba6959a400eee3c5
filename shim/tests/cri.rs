//! Kubernetes' CRI end to end: pods with the runtime handler `lightwhale`, through
//! containerd's CRI plugin, with CNI networking, on the host's containerd 1.7 and on the
//! containerd 2.x beside it (`scripts/install-deps.sh`). Driven with `lightwhale-cri`,
//! crictl's commands and JSON files (no kubelet on this machine). Each scenario runs on
//! both; traffic goes only to the pods' own addresses, and every wait is bounded.

mod common;

use std::time::Duration;

use common::cri::{eventually, http_get, try_http_get, Cri, Pod, PodConfig, HANDLER};
use common::{counter_script, lw_status, processes_of, sleep_now, wait_state, PY_IMAGE};
use serde_json::json;

/// Each scenario, once per containerd.
macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {
        mod containerd_1_7 {
            $(
                #[test]
                #[ignore = "needs the real stack (containerd 1.7 with CRI, CNI, lightwhale-cri): make test runs it"]
                fn $scenario() {
                    super::$scenario(&super::Cri::containerd());
                }
            )*
        }
        mod containerd_2 {
            $(
                #[test]
                #[ignore = "needs the real stack (containerd 2.x beside 1.7, CRI, CNI, lightwhale-cri): make test runs it"]
                fn $scenario() {
                    super::$scenario(&super::Cri::containerd2());
                }
            )*
        }
    };
}

on_both!(
    pod_serves_execs_and_cleans_up,
    pod_sleeps_and_wakes_on_its_own_address,
    bad_pod_annotation_fails_runp,
    bad_container_annotation_fails_by_start,
    probes_neither_keep_a_pod_awake_nor_wake_it,
    a_two_container_pod_sleeps_and_wakes_as_one,
    pod_annotations_apply_and_a_container_overrides_them,
    a_container_removed_while_asleep_frees_its_port,
    a_dozing_pod_answers_its_probes_and_a_request_thaws_it,
    a_pod_annotated_with_a_template_starts_from_it,
);

const SERVE: Duration = Duration::from_secs(20);

/// A pod under lightwhale gets an address from CNI; its busybox httpd answers there; exec
/// works; stop, rm, stopp and rmp leave nothing behind (no process, no status file).
fn pod_serves_execs_and_cleans_up(cri: &Cri) {
    cri.require();
    let config = cri.pod_config("cri-serve", &[("lightwhale.io/idle-timeout", "1h")]);
    let name = config.name.clone();
    let pod = match cri.runp(config) {
        Ok(pod) => pod,
        Err(failed) => panic!("{}: runp failed: {:?}", cri.label, failed.out),
    };
    let status = pod.inspect();
    assert_eq!(status["status"]["state"], "SANDBOX_READY", "{status}");
    assert_eq!(status["status"]["runtimeHandler"], HANDLER, "{status}");
    let ip = pod.ip();
    assert!(
        ip.to_string().starts_with(cri.subnet_prefix),
        "{}: pod IP {ip} is not in lightwhale's CNI network ({}*)",
        cri.label,
        cri.subnet_prefix
    );
    let listed = cri.ok(&["pods", "-q", "--name", &format!("^{name}$")]);
    assert_eq!(listed.trimmed(), pod.id, "pods --name finds it");

    let id = pod.create("web", json!({})).unwrap_or_else(|out| {
        panic!("{}: create failed: {out:?}", cri.label);
    });
    cri.ok(&["start", &id]);
    let c = pod.container(&id);
    assert_eq!(c["status"]["state"], "CONTAINER_RUNNING", "{c}");
    // The shim is lightwhale's: it keeps a status record of the container.
    let record = lw_status("k8s.io", &id);
    assert!(
        record["state"] == "awake" || record["state"] == "created",
        "{}: no lightwhale record for {id}: {record}",
        cri.label
    );
    let listed = cri.ok(&["ps", "-q", "--pod", &pod.id]);
    assert_eq!(listed.trimmed(), id, "ps --pod lists the running container");

    let body = http_get(ip, 8080, SERVE);
    assert_eq!(
        body.as_deref().map(str::trim),
        Some("hello from lightwhale"),
        "{}: GET http://{ip}:8080/",
        cri.label
    );

    let out = cri.cri(&[
        "exec",
        "-s",
        &id,
        "sh",
        "-c",
        "cat /www/index.html; echo oops >&2; exit 3",
    ]);
    assert_eq!(out.code, 3, "exec exits with the command's status: {out:?}");
    assert_eq!(out.stdout.trim(), "hello from lightwhale", "{out:?}");
    assert_eq!(out.stderr.trim(), "oops", "{out:?}");
    let out = cri.ok(&["exec", "--timeout", "10", &id, "echo", "-n", "ok"]);
    assert_eq!(out.stdout, "ok");

    cri.ok(&["stop", "-t", "5", &id]);
    let c = pod.container(&id);
    assert_eq!(c["status"]["state"], "CONTAINER_EXITED", "{c}");
    assert!(
        try_http_get(ip, 8080).is_none(),
        "a stopped container still answers"
    );
    cri.ok(&["rm", &id]);
    let left = cri.ok(&["ps", "-a", "-q", "--pod", &pod.id]);
    assert_eq!(left.trimmed(), "", "rm removed the container");
    assert!(
        eventually(Duration::from_secs(10), || lw_status("k8s.io", &id)
            .is_null()),
        "the status record of {id} outlived rm"
    );

    cri.ok(&["stopp", &pod.id]);
    let status = pod.inspect();
    assert_eq!(status["status"]["state"], "SANDBOX_NOTREADY", "{status}");
    cri.ok(&["rmp", &pod.id]);
    let left = cri.ok(&["pods", "-q", "--name", &format!("^{name}$")]);
    assert_eq!(left.trimmed(), "", "rmp removed the pod");
    assert!(
        eventually(Duration::from_secs(10), || processes_of(&pod.id).is_empty()
            && processes_of(&id).is_empty()
            && lw_status("k8s.io", &pod.id).is_null()),
        "{}: processes or records of pod {} outlived rmp: {:?} {:?}",
        cri.label,
        pod.id,
        processes_of(&pod.id),
        lw_status("k8s.io", &pod.id)
    );
}

/// The container of a pod sleeps (checkpointed in the pod's network namespace, made by
/// CNI) and the first connection to the pod's address wakes it, state intact.
fn pod_sleeps_and_wakes_on_its_own_address(cri: &Cri) {
    cri.require();
    let config = cri.pod_config("cri-sleep", &[("lightwhale.io/idle-timeout", "1h")]);
    let pod = match cri.runp(config) {
        Ok(pod) => pod,
        Err(failed) => panic!("{}: runp failed: {:?}", cri.label, failed.out),
    };
    let ip = pod.ip();
    let id = pod
        .create("web", json!({}))
        .unwrap_or_else(|out| panic!("{}: create failed: {out:?}", cri.label));
    cri.ok(&["start", &id]);
    // State that only survives a restore with its memory: a file in the container's tmpfs.
    cri.ok(&["exec", "-s", &id, "sh", "-c", "echo kept > /dev/shm/mark"]);
    assert!(http_get(ip, 8080, SERVE).is_some(), "GET {ip}:8080");

    sleep_now(&id);
    wait_state("k8s.io", &id, "asleep", Duration::from_secs(20));
    let c = pod.container(&id);
    assert_eq!(
        c["status"]["state"], "CONTAINER_RUNNING",
        "CRI sees an asleep container as running: {c}"
    );
    assert!(processes_of(&id).is_empty(), "asleep, yet processes remain");

    let body = http_get(ip, 8080, SERVE);
    assert_eq!(
        body.as_deref().map(str::trim),
        Some("hello from lightwhale"),
        "{}: the wake on GET http://{ip}:8080/",
        cri.label
    );
    let s = wait_state("k8s.io", &id, "awake", Duration::from_secs(20));
    assert_eq!(s["wakes"], 1, "{s}");
    let out = cri.ok(&["exec", "-s", &id, "cat", "/dev/shm/mark"]);
    assert_eq!(out.stdout.trim(), "kept");
    // An exec into the sleeping container (what an exec probe is) wakes it and runs.
    sleep_now(&id);
    let out = cri.ok(&["exec", "-s", &id, "cat", "/dev/shm/mark"]);
    assert_eq!(
        out.stdout.trim(),
        "kept",
        "{}: exec while asleep",
        cri.label
    );
    let s = wait_state("k8s.io", &id, "awake", Duration::from_secs(20));
    assert_eq!(s["wakes"], 2, "{s}");
    assert_eq!(s["last_wake_phases"]["trigger"], "exec", "{s}");
}

/// An invalid pod annotation fails runp, naming the annotation, and leaves no pod.
fn bad_pod_annotation_fails_runp(cri: &Cri) {
    cri.require();
    let config = cri.pod_config("cri-badpod", &[("lightwhale.io/idle-timeout", "soon")]);
    let name = config.name.clone();
    let failed = match cri.runp(config) {
        Ok(pod) => panic!(
            "{}: runp accepted lightwhale.io/idle-timeout=soon (pod {})",
            cri.label, pod.id
        ),
        Err(failed) => failed,
    };
    let out = &failed.out;
    assert!(
        out.stderr.contains("lightwhale.io/idle-timeout"),
        "{}: runp's error does not name the annotation: {out:?}",
        cri.label
    );
    assert!(
        out.stderr.contains("rpc error: code ="),
        "the gRPC status is shown: {out:?}"
    );
    assert!(
        eventually(Duration::from_secs(10), || cri
            .ok(&["pods", "-q", "--name", &format!("^{name}$")])
            .trimmed()
            .is_empty()),
        "{}: a failed runp left pod {name}",
        cri.label
    );
}

/// An invalid container annotation fails the container at create or start (containerd
/// makes the task at start), naming the annotation; the pod itself is unharmed.
fn bad_container_annotation_fails_by_start(cri: &Cri) {
    cri.require();
    let config = cri.pod_config("cri-badctr", &[]);
    let pod = match cri.runp(config) {
        Ok(pod) => pod,
        Err(failed) => panic!("{}: runp failed: {:?}", cri.label, failed.out),
    };
    let bad = json!({"annotations": {"lightwhale.io/lazy-pages": "sometimes"}});
    let failure = match pod.create("bad", bad) {
        Err(out) => out,
        Ok(id) => {
            let out = cri.cri(&["start", &id]);
            assert_ne!(
                out.code, 0,
                "{}: start accepted lightwhale.io/lazy-pages=sometimes",
                cri.label
            );
            let c = pod.container(&id);
            assert_ne!(c["status"]["state"], "CONTAINER_RUNNING", "{c}");
            out
        }
    };
    assert!(
        failure.stderr.contains("lightwhale.io/lazy-pages"),
        "{}: the error does not name the annotation: {failure:?}",
        cri.label
    );
    // The pod still serves a good container.
    let id = pod
        .create("good", json!({}))
        .unwrap_or_else(|out| panic!("{}: create failed: {out:?}", cri.label));
    cri.ok(&["start", &id]);
    assert!(
        http_get(pod.ip(), 8080, SERVE).is_some(),
        "{}: the pod no longer serves after a bad container",
        cri.label
    );
}

/// A python container running examples/counter.py on `port` (the counter's state is what
/// a wake must keep).
fn counter(port: u16) -> serde_json::Value {
    json!({
        "image": {"image": format!("docker.io/{PY_IMAGE}")},
        "command": ["python3", "-c", counter_script()],
        "envs": [{"key": "PORT", "value": port.to_string()}, {"key": "MEMORY_MIB", "value": "0"}],
    })
}

/// One request from the node (this host) to the pod: (status code, body) or None.
fn request(ip: std::net::IpAddr, port: u16, path: &str, agent: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: {agent}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        text.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    ))
}

fn count(ip: std::net::IpAddr, port: u16) -> u64 {
    request(ip, port, "/", "curl/8.0")
        .and_then(|(code, body)| (code == 200).then(|| body.trim().parse().ok()).flatten())
        .unwrap_or_else(|| panic!("a count from {ip}:{port}"))
}

/// A pod whose container "web" runs the counter on port 8080, up and counted once: the
/// pod (removed when it drops), its address, the container's id.
fn counter_pod(cri: &Cri, config: PodConfig) -> (Pod, std::net::IpAddr, String) {
    let (pod, ip, id) = serving_counter_pod(cri, config);
    assert_eq!(count(ip, 8080), 1);
    (pod, ip, id)
}

/// A pod whose container "web" runs the counter on port 8080, once it answers (its count
/// not asked for): the pod, its address, the container's id.
fn serving_counter_pod(cri: &Cri, config: PodConfig) -> (Pod, std::net::IpAddr, String) {
    let pod = match cri.runp(config) {
        Ok(pod) => pod,
        Err(failed) => panic!("{}: runp failed: {:?}", cri.label, failed.out),
    };
    let ip = pod.ip();
    let id = pod
        .create("web", counter(8080))
        .unwrap_or_else(|out| panic!("{}: create failed: {out:?}", cri.label));
    cri.ok(&["start", &id]);
    assert!(
        eventually(Duration::from_secs(30), || request(
            ip, 8080, "/digest", "test"
        )
        .is_some()),
        "{}: the counter did not come up",
        cri.label
    );
    (pod, ip, id)
}

/// Plays the kubelet: an HTTP probe (its User-Agent) and a TCP probe, from the node, every
/// `period`, until stopped; counts failures.
struct Kubelet {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Kubelet {
    fn start(ip: std::net::IpAddr, port: u16, period: Duration) -> Kubelet {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let (failed, sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let thread = {
            let (stop, failed, sent) = (stop.clone(), failed.clone(), sent.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(2, Ordering::Relaxed);
                    match request(ip, port, "/digest", "kube-probe/1.30") {
                        Some((200, _)) => {}
                        other => {
                            eprintln!("HTTP probe failed: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if std::net::TcpStream::connect_timeout(
                        &(ip, port).into(),
                        Duration::from_secs(5),
                    )
                    .is_err()
                    {
                        eprintln!("TCP probe failed");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(period);
                }
            })
        };
        Kubelet {
            stop,
            failed,
            sent,
            thread: Some(thread),
        }
    }

    /// Stops probing; (failed, sent).
    fn stop(&mut self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.failed.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The kubelet's probes, every second: an idle pod still falls asleep on time, and for
/// the next 60 s every probe is answered while it sleeps, without a wake; then one real
/// request (from the node's own address, as NodePort traffic arrives) wakes it, with its
/// state kept.
fn probes_neither_keep_a_pod_awake_nor_wake_it(cri: &Cri) {
    cri.require();
    let config = cri.pod_config("cri-probes", &[("lightwhale.io/idle-timeout", "3s")]);
    let (pod, ip, id) = counter_pod(cri, config);
    let mut kubelet = Kubelet::start(ip, 8080, Duration::from_secs(1));
    let s = wait_state("k8s.io", &id, "asleep", Duration::from_secs(40));
    assert!(
        processes_of(&id).is_empty(),
        "asleep: its cgroup holds no process"
    );
    let wakes = s["wakes"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(60));
    let (failed, sent) = kubelet.stop();
    let s = lw_status("k8s.io", &id);
    assert_eq!(s["state"], "asleep", "{}: a probe woke it: {s}", cri.label);
    assert_eq!(s["wakes"].as_u64().unwrap_or(0), wakes, "{s}");
    assert_eq!(failed, 0, "{}: {failed} of {sent} probes failed", cri.label);
    assert!(
        eventually(Duration::from_secs(5), || lw_status("k8s.io", &id)
            ["probes_answered"]
            .as_u64()
            .unwrap_or(0)
            >= 100),
        "answered by the shim: {}",
        lw_status("k8s.io", &id)
    );
    let c = pod.container(&id);
    assert_eq!(c["status"]["state"], "CONTAINER_RUNNING", "{c}");
    // A real client from the node's address wakes it; the count went on where it was.
    assert_eq!(count(ip, 8080), 2, "{}: state kept", cri.label);
    let s = wait_state("k8s.io", &id, "awake", Duration::from_secs(10));
    assert_eq!(s["wakes"].as_u64().unwrap_or(0), wakes + 1, "{s}");
}

/// A pod's container dozes after `doze-after` while the kubelet probes it every second:
/// the shim answers the probes (none thaws it, none fails), and a real request from the
/// node's address thaws it (no restore: the same process) with its count kept.
fn a_dozing_pod_answers_its_probes_and_a_request_thaws_it(cri: &Cri) {
    cri.require();
    let config = cri.pod_config(
        "cri-doze",
        &[
            ("lightwhale.io/doze-after", "2s"),
            ("lightwhale.io/idle-timeout", "1h"),
        ],
    );
    let (_pod, ip, id) = counter_pod(cri, config);
    let pids = processes_of(&id);
    let mut kubelet = Kubelet::start(ip, 8080, Duration::from_secs(1));
    let s = wait_state("k8s.io", &id, "dozing", Duration::from_secs(20));
    assert!(s["doze"].is_object(), "{s}");
    std::thread::sleep(Duration::from_secs(10));
    let (failed, sent) = kubelet.stop();
    let s = lw_status("k8s.io", &id);
    assert_eq!(
        s["state"], "dozing",
        "{}: a probe thawed it: {s}",
        cri.label
    );
    assert_eq!(s["thaws"], 0, "{s}");
    assert_eq!(failed, 0, "{}: {failed} of {sent} probes failed", cri.label);
    assert!(
        eventually(Duration::from_secs(5), || lw_status("k8s.io", &id)
            ["probes_answered"]
            .as_u64()
            .unwrap_or(0)
            >= 10),
        "answered by the shim: {}",
        lw_status("k8s.io", &id)
    );
    // A real client from the node's address thaws it: the same processes, the count on.
    assert_eq!(count(ip, 8080), 2, "{}: state kept", cri.label);
    assert!(
        eventually(Duration::from_secs(5), || lw_status("k8s.io", &id)["thaws"]
            == 1),
        "{}",
        lw_status("k8s.io", &id)
    );
    let s = lw_status("k8s.io", &id);
    assert_eq!(s["state"], "awake", "{s}");
    assert_eq!(s["wakes"], 0, "thawed, not restored: {s}");
    assert_eq!(processes_of(&id), pids, "the same processes");
}

/// A service and a sidecar that calls it only when asked: while the service is busy the
/// idle sidecar does not sleep alone (pod_busy); once both are idle both sleep; a request
/// to the sidecar's port wakes the pod whole, and both kept their state.
fn a_two_container_pod_sleeps_and_wakes_as_one(cri: &Cri) {
    cri.require();
    let config = cri.pod_config("cri-unit", &[("lightwhale.io/idle-timeout", "2s")]);
    let pod = match cri.runp(config) {
        Ok(pod) => pod,
        Err(failed) => panic!("{}: runp failed: {:?}", cri.label, failed.out),
    };
    let ip = pod.ip();
    let service = pod
        .create("service", counter(8080))
        .unwrap_or_else(|out| panic!("{}: create failed: {out:?}", cri.label));
    cri.ok(&["start", &service]);
    let sidecar_code = "import http.server, urllib.request\n\
n = 0\n\
class H(http.server.BaseHTTPRequestHandler):\n    def do_GET(self):\n        global n\n        n += 1\n        got = urllib.request.urlopen('http://127.0.0.1:8080/', timeout=30).read().decode().strip()\n        body = f'sidecar {n} service {got}\\n'.encode()\n        self.send_response(200)\n        self.send_header('Content-Length', str(len(body)))\n        self.end_headers()\n        self.wfile.write(body)\n    def log_message(self, *a):\n        pass\n\
http.server.HTTPServer(('', 8081), H).serve_forever()\n";
    let sidecar = pod
        .create(
            "sidecar",
            json!({
                "image": {"image": format!("docker.io/{PY_IMAGE}")},
                "command": ["python3", "-c", sidecar_code],
            }),
        )
        .unwrap_or_else(|out| panic!("{}: create failed: {out:?}", cri.label));
    cri.ok(&["start", &sidecar]);
    assert!(
        eventually(Duration::from_secs(30), || request(
            ip, 8081, "/", "curl/8.0"
        )
        .is_some()),
        "the sidecar did not come up"
    );
    // Where the sidecar's own count is now.
    let (_, body) = request(ip, 8081, "/", "curl/8.0").expect("the sidecar answers");
    let sidecar_count: u64 = body
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{body:?}"));
    // Keep the service busy for three idle timeouts: the sidecar, idle itself, must not
    // sleep alone (its pod's traffic is its own: `active`, or `pod_busy`).
    let busy_until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < busy_until {
        let _ = count(ip, 8080);
        let s = lw_status("k8s.io", &sidecar);
        assert_eq!(
            s["state"], "awake",
            "{}: slept without its pod: {s}",
            cri.label
        );
        let why = s["not_sleeping"]["kind"].as_str().unwrap_or("none");
        assert!(
            // cpu_busy: the sidecar's own CPU (python starting, a loaded CI host) is a
            // reason of its own to stay awake; what must never show is a sleep.
            why == "active" || why == "pod_busy" || why == "cpu_busy" || why == "none",
            "{}: {s}",
            cri.label
        );
        std::thread::sleep(Duration::from_millis(400));
    }
    let before = count(ip, 8080);
    wait_state("k8s.io", &service, "asleep", Duration::from_secs(30));
    wait_state("k8s.io", &sidecar, "asleep", Duration::from_secs(30));
    assert!(processes_of(&service).is_empty() && processes_of(&sidecar).is_empty());
    // A request to the sidecar's port wakes the pod: both answer, both kept their state.
    let (code, body) = request(ip, 8081, "/", "curl/8.0").expect("the sidecar answers");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.trim() == format!("sidecar {} service {}", sidecar_count + 1, before + 1),
        "{}: {body:?} (service was at {before})",
        cri.label
    );
    let s = wait_state("k8s.io", &service, "awake", Duration::from_secs(10));
    assert!(s["wakes"].as_u64().unwrap_or(0) >= 1, "{s}");
}

/// Pod annotations reach every container; a container's own overrides the pod's.
fn pod_annotations_apply_and_a_container_overrides_them(cri: &Cri) {
    cri.require();
    let config = cri.pod_config(
        "cri-ann",
        &[
            ("lightwhale.io/idle-timeout", "42s"),
            ("lightwhale.io/lazy-pages", "off"),
        ],
    );
    let pod = match cri.runp(config) {
        Ok(pod) => pod,
        Err(failed) => panic!("{}: runp failed: {:?}", cri.label, failed.out),
    };
    let plain = pod
        .create("plain", json!({}))
        .unwrap_or_else(|out| panic!("{}: create failed: {out:?}", cri.label));
    cri.ok(&["start", &plain]);
    let own = pod
        .create(
            "own",
            json!({"command": ["httpd", "-f", "-p", "8081", "-h", "/www"],
                   "annotations": {"lightwhale.io/idle-timeout": "7s"}}),
        )
        .unwrap_or_else(|out| panic!("{}: create failed: {out:?}", cri.label));
    cri.ok(&["start", &own]);
    let p = lw_status("k8s.io", &plain);
    assert_eq!(p["config"]["idle_timeout_ms"], 42_000, "{}: {p}", cri.label);
    assert_eq!(p["config"]["lazy_pages"], "off", "{p}");
    let o = lw_status("k8s.io", &own);
    assert_eq!(
        o["config"]["idle_timeout_ms"], 7_000,
        "the container's own wins: {o}"
    );
    assert_eq!(
        o["config"]["lazy_pages"], "off",
        "the pod's still applies: {o}"
    );
    let sandbox = lw_status("k8s.io", &pod.id);
    assert_eq!(sandbox["not_sleeping"]["kind"], "pod_sandbox", "{sandbox}");
}

/// A container of a running pod removed while asleep lets go of its listening socket: its
/// replacement in the same pod (what the kubelet does after a crash) binds the same port.
fn a_container_removed_while_asleep_frees_its_port(cri: &Cri) {
    cri.require();
    let config = cri.pod_config("cri-free", &[("lightwhale.io/idle-timeout", "1h")]);
    let pod = match cri.runp(config) {
        Ok(pod) => pod,
        Err(failed) => panic!("{}: runp failed: {:?}", cri.label, failed.out),
    };
    let ip = pod.ip();
    let first = pod
        .create("web", json!({}))
        .unwrap_or_else(|out| panic!("{}: create failed: {out:?}", cri.label));
    cri.ok(&["start", &first]);
    assert!(http_get(ip, 8080, SERVE).is_some());
    sleep_now(&first);
    cri.ok(&["stop", "-t", "5", &first]);
    cri.ok(&["rm", &first]);
    let again = pod
        .create("web-again", json!({}))
        .unwrap_or_else(|out| panic!("{}: create failed: {out:?}", cri.label));
    cri.ok(&["start", &again]);
    assert_eq!(
        http_get(ip, 8080, SERVE).as_deref().map(str::trim),
        Some("hello from lightwhale"),
        "{}: the new container serves on the freed port",
        cri.label
    );
    let c = pod.container(&again);
    assert_eq!(c["status"]["state"], "CONTAINER_RUNNING", "{c}");
}

/// A pod annotated `lightwhale.io/template` starts its container from the template taken
/// of another pod's: the count goes on from the template's, at the new pod's own address;
/// the sandbox, which gets the pod's annotations too, starts as it always does.
fn a_pod_annotated_with_a_template_starts_from_it(cri: &Cri) {
    cri.require();
    let config = cri.pod_config("cri-tplsrc", &[("lightwhale.io/idle-timeout", "1h")]);
    let (_src, src_ip, src_id) = counter_pod(cri, config);
    assert_eq!(count(src_ip, 8080), 2);
    let tpl = common::unique("cri-warm");
    let out = common::run(
        "lightwhale",
        &["template", "create", &tpl, "--from", &src_id],
    );
    let _tpl = common::TemplateGone(tpl.clone());
    assert_eq!(out.code, 0, "{}: {out:?}", cri.label);
    let config = cri.pod_config(
        "cri-tplclone",
        &[
            ("lightwhale.io/idle-timeout", "1h"),
            ("lightwhale.io/template", &tpl),
        ],
    );
    let (_pod, ip, id) = serving_counter_pod(cri, config);
    assert_ne!(ip, src_ip);
    assert_eq!(
        count(ip, 8080),
        3,
        "{}: the template's count goes on",
        cri.label
    );
    let s = lw_status("k8s.io", &id);
    assert_eq!(s["template"]["restored"], true, "{}: {s}", cri.label);
    assert_eq!(count(src_ip, 8080), 3, "the source counts on its own");
}
