//! Sleep and wake through the engine alone, against real runc and CRIU: no containerd, no
//! Docker. A small stateful HTTP service (examples/counter.py) runs under runc in a
//! network namespace the engine made; it is put to sleep, its processes must be gone and
//! its memory given back, and a connection must wake it with its count intact.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use lightwhale_engine::config::LazyMode;
use lightwhale_engine::{Event, SleepError, State, Trigger, WakeError};

use common::service::{count, get, start_with, Service, PORT};

async fn start(name: &str, memory_mib: u32, lazy: LazyMode, criu_profile: &str) -> Service {
    start_with(name, memory_mib, |c| c.lazy_pages = lazy, criu_profile, &[]).await
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
