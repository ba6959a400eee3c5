//! Kubelet probes against a pod that sleeps, through the engine alone (runc, CRIU, a
//! network namespace wired like a CNI bridge's: the node is the pod's gateway). Plays the
//! kubelet: HTTP probes with its User-Agent and TCP probes from the node's address, every
//! half second throughout. The pod must fall asleep on time although probed, answer every
//! probe while asleep without waking, and wake for a real client, from the node's address
//! too, with its state kept.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightwhale_engine::config::{sleep_config, LazyMode, NodeConfig, SleepConfig};
use lightwhale_engine::container::{Pod, PodRole};
use lightwhale_engine::runc::Runc;
use lightwhale_engine::stdio::StdioPaths;
use lightwhale_engine::{reaper, Container, CreateRequest, Dirs, MemorySink, State};

const NODE: Ipv4Addr = Ipv4Addr::new(10, 123, 0, 1);
const POD: Ipv4Addr = Ipv4Addr::new(10, 123, 0, 2);
/// Another address of the host: a client that is not the node (not the pod's gateway).
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 123, 0, 3);
const PORT: u16 = 8080;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// A network namespace wired to the host by a veth pair, the host's end its gateway.
struct PodNet {
    name: String,
    host_if: String,
}

impl PodNet {
    fn new() -> PodNet {
        let n = std::process::id() % 100_000;
        let name = format!("lwprobe{n}");
        let (host_if, pod_if) = (format!("lwph{n}"), format!("lwpc{n}"));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &pod_if,
        ]);
        ip(&["link", "set", &pod_if, "netns", &name]);
        ip(&["addr", "add", &format!("{NODE}/24"), "dev", &host_if]);
        ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{POD}/24"),
            "dev",
            &pod_if,
        ]);
        ip(&["-n", &name, "link", "set", &pod_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &name,
            "route",
            "add",
            "default",
            "via",
            &NODE.to_string(),
        ]);
        PodNet { name, host_if }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// An HTTP GET from `src` (bound there) to the pod; (status code, body) or None.
fn get_from(src: Ipv4Addr, path: &str, agent: &str) -> Option<(u16, String)> {
    let s = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    let local = nix::sys::socket::SockaddrIn::from(SocketAddrV4::new(src, 0));
    nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&s), &local).ok()?;
    let to = nix::sys::socket::SockaddrIn::from(SocketAddrV4::new(POD, PORT));
    nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&s), &to).ok()?;
    // SAFETY: a connected stream socket we own.
    let mut c = TcpStream::from(unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) });
    c.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {POD}:{PORT}\r\nUser-Agent: {agent}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    c.write_all(req.as_bytes()).ok()?;
    let mut text = String::new();
    c.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        text.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    ))
}

/// A kubelet TCP probe from the node: connect, close.
fn tcp_probe() -> bool {
    std::net::TcpStream::connect_timeout(&(POD, PORT).into(), Duration::from_secs(5)).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, runc and CRIU: make test runs it"]
async fn probes_neither_keep_a_pod_awake_nor_wake_it() {
    common::require_privileges("kubelet probes");
    // Wired before the reaper owns waitpid (it would take `ip`'s exit codes).
    let net = PodNet::new();
    reaper::set_subreaper().expect("subreaper");
    reaper::install().expect("reaper");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("default.conf"),
        "network-lock skip\ntcp-established\n",
    )
    .expect("profile");
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/counter.py"
    ))
    .expect("counter.py");
    let mut bundle = common::host_usr_bundle(
        dir.path(),
        &["python3", "-c", &script],
        &["MEMORY_MIB=0", "PORT=8080"],
    );
    // The pod's namespace, by path (as CNI gives it).
    let spec_path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&spec_path).expect("spec")).expect("json");
    for n in spec["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
    {
        if n["type"] == "network" {
            n["path"] = net.path().display().to_string().into();
        }
    }
    std::fs::write(&spec_path, spec.to_string()).expect("spec");
    let config = SleepConfig {
        idle_timeout: Duration::from_secs(3),
        lazy_pages: LazyMode::Off,
        ..sleep_config(&[], &NodeConfig::default(), &[dir.path().to_path_buf()]).expect("config")
    };
    let id = format!("lw-probes-{}", std::process::id());
    let c = Container::create(CreateRequest {
        id: id.clone(),
        namespace: "engine-test".into(),
        bundle: std::mem::take(&mut bundle),
        stdio: StdioPaths::default(),
        config,
        runtime: Arc::new(
            Runc::new(
                Runc::find_binary("runc").expect("runc"),
                dir.path().join("runc-root"),
                false,
            )
            .with_dump_action(Some(
                lightwhale_engine::config::criu_dump_action()
                    .expect("lightwhale-criu-action is installed (make install)"),
            )),
        ),
        sink: Arc::new(MemorySink::default()),
        dirs: Dirs::under(dir.path()),
        bundle_state: Default::default(),
        no_pivot: false,
        no_new_keyring: false,
        pod: PodRole::Member(Pod::new("sandbox")),
    })
    .await
    .expect("create");
    c.start("").await.expect("start");
    struct End(Arc<Container>);
    impl Drop for End {
        fn drop(&mut self) {
            let c = self.0.clone();
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Runtime::new() {
                    rt.block_on(async {
                        let _ = c.kill("", libc::SIGKILL as u32, true).await;
                        let _ = tokio::time::timeout(Duration::from_secs(10), c.delete()).await;
                    });
                }
            })
            .join();
        }
    }
    let _end = End(c.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_from(CLIENT, "/digest", "test").is_none() {
        assert!(Instant::now() < deadline, "the service did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let health = get_from(NODE, "/digest", "kube-probe/1.30")
        .expect("health")
        .1;

    // The kubelet: an HTTP and a TCP probe from the node every half second, throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let (failed, sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let kubelet = {
        let (stop, failed, sent, health) =
            (stop.clone(), failed.clone(), sent.clone(), health.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(2, Ordering::Relaxed);
                match get_from(NODE, "/digest", "kube-probe/1.30") {
                    Some((200, body)) if body == health => {}
                    other => {
                        eprintln!("probe failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if !tcp_probe() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };

    // Probed all along, it still falls asleep once its idle timeout has passed.
    let t = Instant::now();
    assert_eq!(
        c.wait_for_state(State::Asleep, Duration::from_secs(30))
            .await,
        Some(State::Asleep),
        "probes kept it awake: {:?}",
        c.status().not_sleeping
    );
    eprintln!(
        "asleep {} ms after the probes began",
        t.elapsed().as_millis()
    );
    let wakes = c.status().wakes;
    // Asleep, every probe is answered, by the shim, and none wakes it.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(c.state(), State::Asleep, "a probe woke it");
    assert_eq!(c.status().wakes, wakes);
    stop.store(true, Ordering::Relaxed);
    kubelet.join().expect("kubelet");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "of {} probes",
        sent.load(Ordering::Relaxed)
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answered = c.status().probes_answered;
    assert!(answered >= 10, "answered by the shim: {answered}");

    // A real client from the node's own address (NodePort after SNAT): it wakes the pod
    // and is served by the app, whose state survived.
    let (code, body) = get_from(NODE, "/", "curl/8.0").expect("a real client is served");
    assert_eq!(code, 200);
    let n: u64 = body.trim().parse().expect("a count");
    assert!(n >= 1, "{body}");
    assert_eq!(c.state(), State::Awake);
    assert_eq!(c.status().wakes, wakes + 1);
    let (_, again) = get_from(CLIENT, "/", "curl/8.0").expect("and again");
    assert_eq!(again.trim().parse::<u64>().ok(), Some(n + 1), "state kept");

    // Probes that come while it is being checkpointed go to the shim from the freeze
    // on: they never call the sleep off (a kubelet's period would call off every other
    // sleep), and each is answered.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (stop, health) = (stop.clone(), health.clone());
        std::thread::spawn(move || {
            let (mut sent, mut failed) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                sent += 2;
                match get_from(NODE, "/digest", "kube-probe/1.30") {
                    Some((200, body)) if body == health => {}
                    _ => failed += 1,
                }
                if !tcp_probe() {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (sent, failed)
        })
    };
    let slept = c.sleep().await;
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = prober.join().expect("prober");
    assert!(slept.is_ok(), "probes called the sleep off: {slept:?}");
    assert_eq!(c.state(), State::Asleep);
    assert_eq!(failed, 0, "of {sent} probes");

    // A client that comes during the dump calls the sleep off: thawed, not restored.
    let (_, woken) = get_from(CLIENT, "/", "curl/8.0").expect("woken by a client");
    assert_eq!(woken.trim().parse::<u64>().ok(), Some(n + 2), "state kept");
    let wakes = c.status().wakes;
    let sleeper = {
        let c = c.clone();
        tokio::spawn(async move { c.sleep().await })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.state() != State::Sleeping || !dump_running() {
        assert!(Instant::now() < deadline, "no dump began");
        assert!(
            !sleeper.is_finished(),
            "the sleep ended before its dump began"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (_, during) = get_from(CLIENT, "/", "curl/8.0").expect("served during the dump");
    assert_eq!(during.trim().parse::<u64>().ok(), Some(n + 3), "state kept");
    let called_off = sleeper.await.expect("join");
    assert!(
        matches!(
            &called_off,
            Err(lightwhale_engine::SleepError::Refused(
                lightwhale_engine::Refusal::Cancelled { .. }
            ))
        ),
        "{called_off:?}"
    );
    assert_eq!(c.state(), State::Awake);
    assert_eq!(c.status().wakes, wakes, "thawed, not restored");
}

/// Whether a `runc checkpoint` is running now.
fn dump_running() -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|raw| {
                let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
                args.first().is_some_and(|a| a.ends_with(b"runc"))
                    && args.contains(&&b"checkpoint"[..])
            })
        })
}
