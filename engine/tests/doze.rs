//! Doze through the engine alone, against real runc: the counter service is frozen in
//! place (its cgroup's freezer), its memory pushed out to the node's swap, and the first
//! connection, or data on a connection it keeps open, thaws it: the same processes, the
//! same memory, nothing restored. A dozing task that is killed ends; one that stays idle
//! goes on to sleep (CRIU) and wakes from there with its state.
//!
//! The page-out needs swap: `make test` sets up a zram swap device on a host without any
//! (scripts/install-deps.sh); asked to run without one, these tests fail.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use lightwhale_engine::freezer::Freezer;
use lightwhale_engine::{Event, State, Trigger};

use common::service::{count, get, start_with, Service};

fn require_swap(what: &str) {
    let free = lightwhale_engine::pageout::swap_free_bytes();
    assert!(
        free >= 256 << 20,
        "{what}: this test needs swap with 256 MiB free (it has {free} bytes; make test sets up zram)"
    );
}

async fn start(name: &str, memory_mib: u32, env: &[&str]) -> Service {
    start_with(name, memory_mib, |_| {}, "network-lock skip\n", env).await
}

/// The status once its `n`th thaw is counted (the count follows the thaw by a moment:
/// the task runs first, the bookkeeping after).
async fn thawed(s: &Service, n: u64) -> lightwhale_status::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = s.c.status();
        if st.thaws >= n || Instant::now() > deadline {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn frozen(s: &Service) -> bool {
    Freezer::of_pid(s.c.init.pid())
        .and_then(|f| f.is_frozen())
        .expect("the container's freezer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, runc and swap: make test runs it"]
async fn a_dozing_service_gives_its_memory_to_swap_and_a_connection_thaws_it() {
    require_swap("doze");
    let s = start("doze", 64, &[]).await;
    assert_eq!(count(&s), 1);
    let digest = get(&s, "/digest").expect("digest");
    let pid = s.c.init.pid();

    s.c.doze().await.expect("doze");
    assert_eq!(s.c.state(), State::Dozing);
    assert!(frozen(&s), "its cgroup is frozen");
    let st = s.c.status();
    let d = st.doze.clone().expect("the doze's record");
    assert!(d.reclaimed, "{d:?}");
    assert!(
        d.rss_before_bytes >= 64 << 20,
        "the 64 MiB it touched were resident: {d:?}"
    );
    assert!(
        d.rss_after_bytes + (48 << 20) <= d.rss_before_bytes,
        "most of it went out: {d:?}"
    );
    assert!(d.swap_bytes >= 48 << 20, "into swap: {d:?}");
    assert_eq!(st.dozes, 1);

    // The connection completes in the kernel and thaws it: the same process answers.
    let t = Instant::now();
    assert_eq!(count(&s), 2, "the count survived the doze");
    eprintln!(
        "thaw to answer: {:.2} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(s.c.state(), State::Awake);
    assert!(!frozen(&s));
    assert_eq!(s.c.init.pid(), pid, "thawed, not restored");
    let st = thawed(&s, 1).await;
    assert_eq!((st.thaws, st.sleeps, st.wakes), (1, 0, 0), "{st:?}");
    assert_eq!(st.counters.thaws_by_trigger.get("connection"), Some(&1));
    let d = st.doze.expect("record");
    assert_eq!(d.thaw_trigger.as_deref(), Some("connection"));
    assert!(d.thaw_ms.is_some_and(|ms| ms < 1000.0), "{d:?}");
    let events = s.sink.events();
    let dozed = events
        .iter()
        .position(|e| matches!(e, Event::Dozing { .. }))
        .expect("a Dozing event");
    let thawed = events
        .iter()
        .position(|e| {
            matches!(
                e,
                Event::Thawed {
                    trigger: Trigger::Connection,
                    ..
                }
            )
        })
        .expect("a Thawed event");
    assert!(dozed < thawed, "{events:?}");

    // And again: what the thaw brought back (the working set of its requests, far less
    // than its 64 MiB) is kept resident this time; the rest stays in swap.
    s.c.doze().await.expect("second doze");
    let d = s.c.status().doze.expect("record");
    assert!(
        d.note
            .as_deref()
            .is_some_and(|n| n.starts_with("kept resident")),
        "{d:?}"
    );
    assert!(
        d.rss_before_bytes < 48 << 20 && d.swap_bytes >= 16 << 20,
        "the ballast it did not touch stayed out: {d:?}"
    );
    assert_eq!(count(&s), 3);
    assert_eq!(s.c.status().dozes, 2);
    assert_eq!(
        get(&s, "/digest").as_deref(),
        Some(digest.as_str()),
        "every page came back from swap intact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, runc and swap: make test runs it"]
async fn data_on_a_kept_open_connection_thaws_it() {
    require_swap("doze keep-alive");
    let s = start("dozeka", 16, &["KEEPALIVE=1"]).await;
    // A keep-alive connection, opened in the container's namespace, kept across the doze.
    let mut conn: TcpStream = common::in_netns(&s.netns, || {
        TcpStream::connect(("127.0.0.1", common::service::PORT)).expect("connect")
    });
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let ask = |conn: &mut TcpStream| -> String {
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send");
        // Headers, then as many body bytes as Content-Length says.
        let mut buf = [0u8; 512];
        let mut text = String::new();
        loop {
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("Content-Length");
                if body.len() >= len {
                    return body.trim().to_string();
                }
            }
            let n = conn.read(&mut buf).expect("read");
            assert!(n > 0, "closed: {text:?}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    assert_eq!(ask(&mut conn), "1");
    // A request answered less than a second ago counts as in flight (as for a sleep).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.c.doze().await.expect("doze");
    assert_eq!(s.c.state(), State::Dozing);
    assert_eq!(ask(&mut conn), "2", "data on the open connection thawed it");
    assert_eq!(s.c.state(), State::Awake);
    assert_eq!(
        thawed(&s, 1)
            .await
            .counters
            .thaws_by_trigger
            .get("connection"),
        Some(&1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, runc and swap: make test runs it"]
async fn a_dozing_task_that_is_killed_ends() {
    require_swap("doze kill");
    let s = start("dozekill", 0, &[]).await;
    s.c.doze().await.expect("doze");
    let pid = s.c.init.pid();
    s.c.kill("", libc::SIGKILL as u32, false)
        .await
        .expect("kill");
    let exit = tokio::time::timeout(Duration::from_secs(10), s.c.wait(""))
        .await
        .expect("a frozen task killed ends, it does not hang")
        .expect("wait");
    assert_eq!(exit.status, 128 + libc::SIGKILL as u32);
    assert_eq!(s.c.state(), State::Exited);
    assert!(std::fs::metadata(format!("/proc/{pid}")).is_err());
    let thawed = s.sink.matching(|e| {
        matches!(
            e,
            Event::Thawed {
                trigger: Trigger::Signal,
                ..
            }
        )
    });
    assert_eq!(thawed.len(), 1, "thawed for the signal");
}

/// The monitor's policy: idle for `doze-after` it dozes, idle on for `idle-timeout` it
/// sleeps (thawed, then checkpointed), and a connection wakes it with its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, runc, CRIU and swap: make test runs it"]
async fn idle_it_dozes_then_sleeps_and_wakes_with_its_state() {
    require_swap("doze then sleep");
    let s = start_with(
        "dozesleep",
        32,
        |c| {
            c.doze_after = Some(Duration::from_secs(1));
            c.idle_timeout = Duration::from_secs(5);
        },
        "network-lock skip\n",
        &[],
    )
    .await;
    assert_eq!(count(&s), 1);
    let dozing =
        s.c.wait_for_state(State::Dozing, Duration::from_secs(10))
            .await;
    assert_eq!(dozing, Some(State::Dozing), "{:?}", s.c.status());
    let asleep =
        s.c.wait_for_state(State::Asleep, Duration::from_secs(20))
            .await;
    assert_eq!(asleep, Some(State::Asleep), "{:?}", s.c.status());
    let st = s.c.status();
    assert_eq!(
        st.counters.thaws_by_trigger.get("sleep"),
        Some(&1),
        "thawed to be checkpointed: {st:?}"
    );
    assert_eq!(count(&s), 2, "woken from the sleep with its count");
    let st = s.c.status();
    assert_eq!((st.dozes, st.sleeps, st.wakes), (1, 1, 1), "{st:?}");
}

/// Whoever reads the status file (the CLI, `lightwhale ps`, a test) once the thawed task has
/// answered sees it awake and the thaw counted: the file is written before the task runs.
/// (CI once saw "dozing" after the answer: the file used to follow the thaw.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, runc and swap: make test runs it"]
async fn once_a_thawed_task_answers_its_status_file_says_awake() {
    require_swap("doze status");
    let s = start("dozestatus", 8, &[]).await;
    assert_eq!(count(&s), 1);
    let path = s.c.status_path();
    let freezer = Freezer::of_pid(s.c.init.pid()).expect("its freezer");
    for n in 1..=15u64 {
        s.c.doze().await.expect("doze");
        // The last thaw is over for whoever asks, too: this was a doze, not a no-op.
        assert_eq!(s.c.state(), State::Dozing, "doze {n}");
        // A watcher reads the file the moment the freezer lets go, before the task can
        // even answer: the narrowest window there is.
        let watch = {
            let (freezer, path) = (freezer.clone(), path.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                while freezer.is_frozen().unwrap_or(false) && Instant::now() < deadline {
                    std::hint::spin_loop();
                }
                lightwhale_status::read_status(&path).map(|st| st.state)
            })
        };
        assert_eq!(count(&s), n + 1);
        let at_thaw = watch.join().expect("watcher").expect("status file");
        assert_eq!(
            at_thaw,
            lightwhale_status::State::Awake,
            "thaw {n}: as the freezer let go"
        );
        let st = lightwhale_status::read_status(&path).expect("status file");
        assert_eq!(
            st.state,
            lightwhale_status::State::Awake,
            "thaw {n}: {st:?}"
        );
        assert_eq!(st.thaws, n, "thaw {n}: {st:?}");
        assert_eq!(
            st.counters.thaws_by_trigger.get("connection"),
            Some(&n),
            "thaw {n}: {st:?}"
        );
    }
}
