//! Sleep and wake through the engine alone, against real runc and CRIU: no containerd, no
//! Docker. A small stateful HTTP service (examples/counter.py) runs under runc in a
//! network namespace the engine made; it is put to sleep, its processes must be gone and
//! its memory given back, and a connection must wake it with its count intact.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightwhale_engine::config::{sleep_config, LazyMode, NodeConfig, SleepConfig};
use lightwhale_engine::runc::Runc;
use lightwhale_engine::stdio::StdioPaths;
use lightwhale_engine::{
    reaper, Container, CreateRequest, Dirs, Event, MemorySink, SleepError, State, Trigger,
    WakeError,
};

const PORT: u16 = 8080;

struct Service {
    c: Arc<Container>,
    sink: Arc<MemorySink>,
    netns: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        // A failed assertion must not leave a container or a pinned namespace behind.
        let c = self.c.clone();
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

fn counter_script() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/counter.py"
    ))
    .expect("examples/counter.py")
}

fn profile(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("profile.conf");
    std::fs::write(&p, body).expect("profile");
    // The built-in defaults resolve the profile named "default": give them one.
    std::fs::write(dir.join("default.conf"), body).expect("default profile");
    p
}

/// Starts the counter service with `memory_mib` of touched memory under the engine.
async fn start(name: &str, memory_mib: u32, lazy: LazyMode, criu_profile: &str) -> Service {
    common::require_privileges(name);
    reaper::set_subreaper().expect("subreaper");
    reaper::install().expect("reaper");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = counter_script();
    let mem = format!("MEMORY_MIB={memory_mib}");
    let bundle = common::host_usr_bundle(
        dir.path(),
        &["python3", "-c", &script],
        &[&mem, "PORT=8080"],
    );
    let id = format!("lw-engine-{name}-{}", std::process::id());
    let runc = Runc::new(
        Runc::find_binary("runc").expect("runc"),
        dir.path().join("runc-root"),
        false,
    );
    let sink = Arc::new(MemorySink::default());
    let config = SleepConfig {
        // Slept by hand in these tests: the monitor must stay out of the way.
        idle_timeout: Duration::from_secs(3600),
        criu_profile: "test".into(),
        criu_profile_path: profile(dir.path(), criu_profile),
        lazy_pages: lazy,
        ..sleep_config(&[], &NodeConfig::default(), &[dir.path().to_path_buf()]).expect("config")
    };
    let c = Container::create(CreateRequest {
        id: id.clone(),
        namespace: "engine-test".into(),
        bundle,
        stdio: StdioPaths {
            id,
            namespace: "engine-test".into(),
            ..Default::default()
        },
        config,
        runtime: Arc::new(runc),
        sink: sink.clone(),
        dirs: Dirs::under(dir.path()),
        bundle_state: Default::default(),
        no_pivot: false,
        no_new_keyring: false,
        pod: Default::default(),
    })
    .await
    .expect("create");
    c.start("").await.expect("start");
    let netns = dir
        .path()
        .join("state/netns")
        .join(format!("engine-test-{}", c.id));
    assert!(netns.exists(), "the engine pins the container's namespace");
    let s = Service {
        c,
        sink,
        netns,
        _dir: dir,
    };
    // The service needs a moment to start (and to touch its memory).
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&s, "/digest").is_none() {
        assert!(Instant::now() < deadline, "the service did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s
}

fn get(s: &Service, path: &str) -> Option<String> {
    let (status, body) = common::get_in(&s.netns, PORT, path, Duration::from_secs(20))?;
    status.contains(" 200 ").then(|| body.trim().to_string())
}

fn count(s: &Service) -> u64 {
    get(s, "/")
        .and_then(|b| b.parse().ok())
        .expect("a count from the service")
}

/// The memory cgroup (v1 or v2) of container `id` holds no process, if it still exists.
fn cgroup_empty(id: &str) -> bool {
    for dir in [
        format!("/sys/fs/cgroup/memory/{id}"),
        format!("/sys/fs/cgroup/{id}"),
    ] {
        for f in ["cgroup.procs", "tasks"] {
            if let Ok(t) = std::fs::read_to_string(Path::new(&dir).join(f)) {
                if !t.trim().is_empty() {
                    return false;
                }
            }
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, runc and CRIU: make test runs it"]
async fn a_runc_service_sleeps_gives_its_memory_back_and_wakes_with_its_state() {
    let s = start("eager", 64, LazyMode::Off, "network-lock skip\n").await;
    assert_eq!(count(&s), 1);
    assert_eq!(count(&s), 2);
    let digest = get(&s, "/digest").expect("digest");
    let pid = s.c.init.pid();
    assert!(!common::processes_of(&s.c.id).is_empty());

    // Idle keep-alive connections are not in flight; the last request must be done.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.c.sleep().await.expect("sleep");
    assert_eq!(s.c.state(), State::Asleep);
    assert!(
        common::processes_of(&s.c.id).is_empty(),
        "asleep: no process of the container remains"
    );
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_err(),
        "the init process is gone"
    );
    assert!(cgroup_empty(&s.c.id), "its cgroup holds no process");
    let st = s.c.status();
    let freed = st.memory_freed_bytes.unwrap_or(0);
    assert!(
        freed > 64 << 20,
        "the 64 MiB it touched are given back: {freed} bytes"
    );
    assert!(st.pages_bytes.unwrap_or(0) > 64 << 20);
    assert_eq!(st.held_ports, vec![PORT]);

    // The first connection wakes it and is answered by the restored task.
    let t = Instant::now();
    assert_eq!(count(&s), 3, "the count survived the sleep");
    eprintln!("wake to answer: {} ms", t.elapsed().as_millis());
    assert_eq!(s.c.state(), State::Awake);
    assert_ne!(s.c.init.pid(), 0);
    assert_eq!(get(&s, "/digest").as_deref(), Some(digest.as_str()));
    let st = s.c.status();
    assert_eq!((st.sleeps, st.wakes), (1, 1));
    let phases = st.last_wake_phases.expect("phases");
    assert_eq!(phases.trigger, "connection");
    assert!(!phases.lazy);
    let events = s.sink.events();
    assert!(events.iter().any(|e| matches!(e, Event::Asleep { .. })));
    assert!(events.iter().any(|e| matches!(e, Event::Awake { .. })));
    assert!(
        !events.iter().any(|e| matches!(e, Event::Exited { .. })),
        "a sleep is not an exit: {events:?}"
    );

    // And again: a second cycle keeps counting.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.c.sleep().await.expect("second sleep");
    assert_eq!(count(&s), 4, "and the count goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, runc and CRIU: make test runs it"]
async fn a_lazy_wake_answers_first_and_brings_every_page_back() {
    let s = start("lazy", 96, LazyMode::On, "network-lock skip\n").await;
    assert_eq!(count(&s), 1);
    let digest = get(&s, "/digest").expect("digest");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.c.sleep().await.expect("sleep");
    s.c.wake(Trigger::Request).await.expect("lazy wake");
    let phases = s.c.status().last_wake_phases.expect("phases");
    assert!(phases.lazy, "restored post-copy: {phases:?}");
    assert!(phases.fallback.is_none(), "{phases:?}");
    assert_eq!(count(&s), 2);
    assert_eq!(
        get(&s, "/digest").as_deref(),
        Some(digest.as_str()),
        "every page came back intact"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while s
        .c
        .status()
        .last_wake_phases
        .and_then(|p| p.fill_ms)
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the fill did not finish: {:?}",
            s.c.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.c.state(), State::Awake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, runc and CRIU: make test runs it"]
async fn a_dump_that_fails_leaves_it_running() {
    // An option CRIU does not know: the dump fails before it touches the task.
    let s = start("dumpfail", 0, LazyMode::Off, "no-such-criu-option\n").await;
    assert_eq!(count(&s), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = s.c.sleep().await.expect_err("the dump fails");
    assert!(matches!(e, SleepError::Dump { .. }), "{e}");
    assert!(e.to_string().contains("CRIU dump.log"), "{e}");
    assert_eq!(s.c.state(), State::Awake);
    assert_eq!(count(&s), 2, "thawed and serving, state intact");
    assert!(!s
        .sink
        .events()
        .iter()
        .any(|e| matches!(e, Event::Exited { .. })));
    assert!(s
        .c
        .status()
        .last_error
        .unwrap_or_default()
        .contains("checkpoint failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, runc and CRIU: make test runs it"]
async fn a_restore_that_fails_is_reported_and_ends_the_task() {
    let s = start("restorefail", 0, LazyMode::Off, "network-lock skip\n").await;
    assert_eq!(count(&s), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.c.sleep().await.expect("sleep");
    // Without its memory pages, the checkpoint cannot be restored.
    let images = s.c.image_root.join("images");
    for e in std::fs::read_dir(&images).expect("images").flatten() {
        if e.file_name().to_string_lossy().starts_with("pages-") {
            std::fs::remove_file(e.path()).expect("remove pages");
        }
    }
    let e = s.c.wake(Trigger::Request).await.expect_err("restore fails");
    assert!(matches!(e, WakeError::Restore { .. }), "{e}");
    assert!(e.to_string().contains("CRIU restore.log"), "{e}");
    assert_eq!(s.c.state(), State::Exited);
    let exit = tokio::time::timeout(Duration::from_secs(10), s.c.wait(""))
        .await
        .expect("reported")
        .expect("wait");
    assert_eq!(exit.status, 255);
    let events = s.sink.events();
    assert!(events.iter().any(|e| matches!(e, Event::WakeFailed { .. })));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Exited { status: 255, .. })));
    assert!(
        get(&s, "/").is_none(),
        "nobody answers, and the client is not left hanging"
    );
}
