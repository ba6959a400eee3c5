//! The sleep/wake state machine, driven through the engine's API against a fake runtime
//! and a recording event sink: no root, no runc, no CRIU. What is asserted is what a
//! client of the engine relies on: the states it goes through, the events it is told,
//! and the order in which the runtime is asked to act.

mod fake;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fake::{rig, rig_full, rig_with};
use lightwhale_engine::container::{Pod, PodRole};
use lightwhale_engine::{ContainerError, Event, SleepError, State, Trigger, WakeError};
use lightwhale_status::NotSleeping;
use tokio::sync::Semaphore;

/// The tests share the process's sockets (the fake's task is this process): one at a
/// time, so no test sees another's connections as its own.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn exits(events: &[Event]) -> Vec<(String, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Exited {
                exec_id, status, ..
            } => Some((exec_id.clone(), *status)),
            _ => None,
        })
        .collect()
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleep_a_wake_then_a_failed_dump_send_no_exit() {
    let _serial = SERIAL.lock().await;
    let r = rig().await;
    r.c.sleep().await.expect("sleep");
    assert_eq!(r.c.state(), State::Asleep);
    let s = r.c.status();
    assert_eq!((s.sleeps, s.held_ports.clone()), (1, vec![r.port]));

    // A connection wakes it, and the shim hands the listener back.
    let _client = std::net::TcpStream::connect(("127.0.0.1", r.port)).expect("connect");
    assert_eq!(
        r.c.wait_for_state(State::Awake, Duration::from_secs(5))
            .await,
        Some(State::Awake)
    );
    let s = r.c.status();
    assert_eq!(s.wakes, 1);
    assert_eq!(
        s.last_wake_phases.map(|p| p.trigger).as_deref(),
        Some("connection")
    );
    drop(_client);
    let _ = r.listener.accept();

    // Now a dump that fails: the task was thawed and serves on, and nothing tells a
    // client that it exited (the dump's exit of the first sleep is long consumed).
    r.fake.fail_checkpoint.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1100)).await; // the accepted connection goes quiet
    let e = r.c.sleep().await.expect_err("the dump fails");
    assert!(matches!(e, SleepError::Dump { .. }), "{e}");
    assert_eq!(r.c.state(), State::Awake);
    assert!(!r.c.init.has_exited());
    let events = r.sink.events();
    assert_eq!(
        exits(&events),
        vec![],
        "no exit may be reported: {events:?}"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::SleepFailed { .. })));
    let calls = r.fake.calls();
    assert_eq!(
        calls.last().map(String::as_str),
        Some("resume"),
        "{calls:?}"
    );
    let err = r.c.status().last_error.unwrap_or_default();
    assert!(err.contains("checkpoint failed"), "{err}");
    assert!(!r.images().exists(), "a failed dump leaves no images");
    // Counted, for `lightwhale metrics`: one sleep, one wake by a connection, one failure.
    let n = r.c.status().counters;
    assert_eq!(
        (n.sleep_seconds.count, n.wake_seconds.count),
        (1, 1),
        "{n:?}"
    );
    assert_eq!(n.wakes_by_trigger.get("connection"), Some(&1), "{n:?}");
    assert_eq!(n.failures.get("dump"), Some(&1), "{n:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_sleep_reports_asleep_and_a_checkpoint_but_no_exit() {
    let _serial = SERIAL.lock().await;
    let r = rig().await;
    r.c.sleep().await.expect("sleep");
    let events = r.sink.events();
    assert!(
        matches!(events.first(), Some(Event::Started { .. })),
        "{events:?}"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Checkpointed { .. })));
    assert!(events.iter().any(|e| matches!(e, Event::Asleep { .. })));
    assert_eq!(exits(&events), vec![]);
    assert_eq!(
        r.fake.calls(),
        vec![
            format!("create {}", r.c.id),
            format!("start {}", r.c.id),
            "pause".to_string(),
            "checkpoint".to_string()
        ]
    );
    // The status file says so, for `lightwhale`.
    let on_disk = lightwhale_status::read_status(&r.c.status_path()).expect("status file");
    assert_eq!(on_disk.state, State::Asleep);
    // A second sleep of a sleeping container is a no-op.
    r.c.sleep().await.expect("asleep already");
    assert_eq!(r.c.status().sleeps, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restore_ends_the_task_with_255_and_says_why() {
    let _serial = SERIAL.lock().await;
    let r = rig().await;
    r.c.sleep().await.expect("sleep");
    r.fake.fail_restores.store(2, Ordering::Relaxed);
    let e = r.c.wake(Trigger::Request).await.expect_err("restore fails");
    assert!(matches!(e, WakeError::Restore { .. }), "{e}");
    assert_eq!(r.c.state(), State::Exited);
    eventually("the exit reported", || !exits(&r.sink.events()).is_empty()).await;
    assert_eq!(exits(&r.sink.events()), vec![(String::new(), 255)]);
    assert!(r
        .sink
        .events()
        .iter()
        .any(|e| matches!(e, Event::WakeFailed { .. })));
    let restores = r.fake.calls().iter().filter(|c| *c == "restore").count();
    assert_eq!(restores, 2, "retried once");
    assert!(r
        .c
        .status()
        .last_error
        .unwrap_or_default()
        .contains("restore failed"));
    // Exited is final: nothing wakes or sleeps it.
    assert!(matches!(
        r.c.wake(Trigger::Request).await,
        Err(WakeError::Exited)
    ));
    assert!(r.c.sleep().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_asleep_ends_it_at_once_without_a_restore() {
    let _serial = SERIAL.lock().await;
    let r = rig().await;
    r.c.sleep().await.expect("sleep");
    assert!(r.images().exists());
    r.c.kill("", libc::SIGKILL as u32, false)
        .await
        .expect("kill");
    assert_eq!(r.c.state(), State::Exited);
    let exit = tokio::time::timeout(Duration::from_secs(5), r.c.wait(""))
        .await
        .expect("exit")
        .expect("wait");
    assert_eq!(exit.status, 137);
    assert_eq!(exits(&r.sink.events()), vec![(String::new(), 137)]);
    assert!(!r.fake.calls().contains(&"restore".to_string()));
    assert!(
        !r.images().exists(),
        "images of a killed sleeper are removed"
    );
    let e =
        r.c.kill("", libc::SIGKILL as u32, false)
            .await
            .expect_err("gone");
    assert!(matches!(e, ContainerError::ProcessFinished), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_signal_wakes_it_then_is_delivered() {
    let _serial = SERIAL.lock().await;
    let r = rig().await;
    r.c.sleep().await.expect("sleep");
    r.c.kill("", libc::SIGHUP as u32, false)
        .await
        .expect("signal");
    assert_eq!(r.c.state(), State::Awake);
    let calls = r.fake.calls();
    let restore = calls.iter().position(|c| c == "restore");
    let hup = calls
        .iter()
        .position(|c| *c == format!("kill {}", libc::SIGHUP));
    assert!(
        restore.is_some() && restore < hup,
        "woken, then signalled: {calls:?}"
    );
    assert_eq!(
        r.c.status().last_wake_phases.map(|p| p.trigger).as_deref(),
        Some("signal")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_while_waking_waits_for_the_wake() {
    let _serial = SERIAL.lock().await;
    let r = rig().await;
    r.c.sleep().await.expect("sleep");
    let gate = Arc::new(Semaphore::new(0));
    *r.fake
        .restore_gate
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(gate.clone());
    let c = r.c.clone();
    let waking = tokio::spawn(async move { c.wake(Trigger::Request).await });
    eventually("waking", || r.c.state() == State::Waking).await;
    r.c.add_exec("e1", b"{}".to_vec(), Default::default())
        .expect("add exec");
    let c = r.c.clone();
    let exec = tokio::spawn(async move { c.start("e1").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!exec.is_finished(), "the exec waits for the wake");
    assert!(!r.fake.calls().iter().any(|c| c.starts_with("exec")));
    gate.add_permits(1);
    waking.await.expect("join").expect("wake");
    let pid = exec.await.expect("join").expect("exec starts");
    assert_eq!(r.c.state(), State::Awake);
    let calls = r.fake.calls();
    let restore = calls.iter().position(|c| c == "restore");
    let exec_at = calls.iter().position(|c| c.starts_with("exec"));
    assert!(restore < exec_at, "{calls:?}");
    // The exec ends: reported as the exec's exit, never the container's.
    eventually("the exec watched", || r.fake.exec_watched(pid)).await;
    r.fake.end_exec(pid, 0);
    eventually("the exec's exit", || !exits(&r.sink.events()).is_empty()).await;
    assert_eq!(exits(&r.sink.events()), vec![("e1".to_string(), 0)]);
    assert_eq!(r.c.state(), State::Awake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_sleep_waits_for_it_and_no_sleep_follows() {
    let _serial = SERIAL.lock().await;
    let r = rig().await;
    let gate = Arc::new(Semaphore::new(0));
    *r.fake
        .checkpoint_gate
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(gate.clone());
    let c = r.c.clone();
    let sleeping = tokio::spawn(async move { c.sleep().await });
    eventually("sleeping", || r.c.state() == State::Sleeping).await;
    let c = r.c.clone();
    let stop = tokio::spawn(async move { c.kill("", libc::SIGTERM as u32, false).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !stop.is_finished(),
        "the stop waits for the sleep under way"
    );
    gate.add_permits(1);
    sleeping.await.expect("join").expect("sleep");
    stop.await.expect("join").expect("stop delivered");
    let calls = r.fake.calls();
    let restore = calls.iter().position(|c| c == "restore");
    let term = calls
        .iter()
        .position(|c| *c == format!("kill {}", libc::SIGTERM));
    assert!(
        restore.is_some() && restore < term,
        "woken, then stopped: {calls:?}"
    );
    // SIGTERM ended the fake task.
    eventually("the exit", || r.c.state() == State::Exited).await;
    assert!(matches!(r.c.sleep().await, Err(SleepError::Refused(_))));
}

/// A kill whose signal ends the task is answered before the task's exit is reported:
/// containerd's CRI, seeing the exit, deletes the task and closes its connection to the
/// shim, and a kill still unanswered then fails "ttrpc: closed" (StopContainer failed
/// once that way in CI). runc's kill is a program that can outlive the task it kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_a_kill_causes_is_reported_after_the_kill_returns() {
    let _serial = SERIAL.lock().await;
    let r = rig().await;
    *r.fake
        .kill_returns_after
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Duration::from_millis(400);
    eventually("init watched", || r.fake.init_watched()).await;
    let c = r.c.clone();
    let kill = tokio::spawn(async move { c.kill("", libc::SIGTERM as u32, false).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!kill.is_finished(), "the kill is still under way");
    let exited = |r: &fake::Rig| {
        r.sink
            .matching(|e| matches!(e, Event::Exited { exec_id, .. } if exec_id.is_empty()))
            .len()
    };
    assert_eq!(
        exited(&r),
        0,
        "the exit was reported while the kill that caused it was unanswered"
    );
    kill.await.expect("join").expect("kill");
    eventually("the exit reported", || exited(&r) == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_in_its_stop_grace_period_does_not_sleep() {
    let _serial = SERIAL.lock().await;
    let r = rig().await;
    // The fake ends on SIGTERM; SIGINT is a stop signal the app may take its time with.
    r.c.kill("", libc::SIGINT as u32, false)
        .await
        .expect("signal");
    let e = r.c.sleep().await.expect_err("no sleep while stopping");
    assert!(
        matches!(e, SleepError::Refused(lightwhale_engine::Refusal::Stopping)),
        "{e}"
    );
    assert_eq!(r.c.state(), State::Awake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_dies_during_its_dump_is_reported_once() {
    let _serial = SERIAL.lock().await;
    let r = rig().await;
    r.fake.die_during_checkpoint.store(true, Ordering::Relaxed);
    let e = r.c.sleep().await.expect_err("dump fails");
    assert!(matches!(e, SleepError::Dump { .. }), "{e}");
    eventually("exited", || r.c.state() == State::Exited).await;
    eventually("the exit reported", || !exits(&r.sink.events()).is_empty()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        exits(&r.sink.events()),
        vec![(String::new(), 128 + libc::SIGSEGV as u32)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_while_asleep_is_applied_right_after_the_restore() {
    let _serial = SERIAL.lock().await;
    let r = rig().await;
    r.c.sleep().await.expect("sleep");
    r.c.update(br#"{"pids": {"limit": 100}}"#)
        .await
        .expect("update");
    assert!(!r.fake.calls().contains(&"update".to_string()));
    assert!(matches!(
        r.c.update(b"not json").await,
        Err(ContainerError::InvalidResources(_))
    ));
    r.c.wake(Trigger::Request).await.expect("wake");
    let calls = r.fake.calls();
    let restore = calls.iter().position(|c| c == "restore");
    let update = calls.iter().position(|c| c == "update");
    assert!(restore.is_some() && restore < update, "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_while_asleep_removes_everything() {
    let _serial = SERIAL.lock().await;
    let r = rig().await;
    r.c.sleep().await.expect("sleep");
    let status_file = r.c.status_path();
    assert!(status_file.exists() && r.images().exists());
    let (_, exit) = r.c.delete().await.expect("delete");
    assert_eq!(exit.status, 137);
    assert!(!status_file.exists(), "no ghost for `lightwhale ps`");
    assert!(!r.c.control_path().exists());
    assert!(!r.images().exists());
    assert!(r
        .sink
        .events()
        .iter()
        .any(|e| matches!(e, Event::Deleted { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn illegal_requests_get_typed_errors() {
    let _serial = SERIAL.lock().await;
    let r = rig().await;
    // Started twice.
    assert!(matches!(
        r.c.start("").await,
        Err(ContainerError::NotCreated(_))
    ));
    // Resumed without a pause.
    let e = r.c.resume().await.expect_err("not paused");
    assert!(matches!(e, ContainerError::Transition(_)), "{e}");
    assert_eq!(e.kind(), lightwhale_engine::ErrorKind::FailedPrecondition);
    // Paused: no sleep.
    r.c.pause().await.expect("pause");
    assert!(matches!(
        r.c.sleep().await,
        Err(SleepError::Refused(lightwhale_engine::Refusal::NotAwake(
            State::Paused
        )))
    ));
    r.c.resume().await.expect("resume");
    // Bad exec ids and specs.
    assert!(matches!(
        r.c.add_exec("../x", b"{}".to_vec(), Default::default()),
        Err(ContainerError::InvalidExecId(_))
    ));
    assert!(matches!(
        r.c.add_exec("ok", b"{".to_vec(), Default::default()),
        Err(ContainerError::InvalidExecSpec(_))
    ));
    assert!(matches!(
        r.c.start("missing").await,
        Err(ContainerError::ExecNotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_of_a_sleeping_container_wakes_it_first() {
    let _serial = SERIAL.lock().await;
    let r = rig().await;
    r.c.sleep().await.expect("sleep");
    r.c.pause().await.expect("pause");
    assert_eq!(r.c.state(), State::Paused);
    let calls = r.fake.calls();
    let restore = calls.iter().position(|c| c == "restore");
    let pause = calls.iter().rposition(|c| c == "pause");
    assert!(restore.is_some() && restore < pause, "{calls:?}");
    assert!(r
        .sink
        .events()
        .iter()
        .any(|e| matches!(e, Event::Paused { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_network_container_never_sleeps_and_says_why() {
    let _serial = SERIAL.lock().await;
    let r = rig_with(false, |_| {}).await;
    assert!(r.c.host_network);
    let e = r.c.sleep().await.expect_err("host network");
    assert!(
        matches!(
            e,
            SleepError::Refused(lightwhale_engine::Refusal::HostNetwork)
        ),
        "{e}"
    );
    assert_eq!(r.c.status().not_sleeping, Some(NotSleeping::HostNetwork));
    assert!(
        !r.fake.calls().contains(&"pause".to_string()),
        "never frozen for it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_nothing_listens_on_are_named() {
    let _serial = SERIAL.lock().await;
    let r = rig_with(true, |c| c.ports = vec![1]).await;
    let e = r.c.sleep().await.expect_err("port 1 is closed");
    assert!(
        matches!(
            e.refusal().and_then(|r| r.not_sleeping()),
            Some(NotSleeping::PortsNotListening { ref ports }) if ports == &vec![1]
        ),
        "{e}"
    );
    assert!(!r.fake.calls().contains(&"pause".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_that_does_not_fit_in_memory_leaves_it_asleep() {
    let _serial = SERIAL.lock().await;
    let r = rig_with(true, |c| {
        c.wake_memory_reserve = u64::MAX / 2;
        c.wake_memory_wait = Duration::from_millis(300);
    })
    .await;
    r.c.sleep().await.expect("sleep");
    let e = r.c.wake(Trigger::Request).await.expect_err("no memory");
    assert!(matches!(e, WakeError::NoMemory { .. }), "{e}");
    assert_eq!(r.c.state(), State::Asleep, "not lost: still asleep");
    assert!(r.images().exists(), "its checkpoint is kept");
    assert!(!r.fake.calls().contains(&"restore".to_string()));
    assert!(r
        .sink
        .events()
        .iter()
        .any(|e| matches!(e, Event::WakeFailed { .. })));
    assert!(r
        .c
        .status()
        .last_error
        .unwrap_or_default()
        .contains("not enough memory"));
    assert_eq!(exits(&r.sink.events()), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_wakes_whole_when_one_of_its_containers_wakes() {
    let _serial = SERIAL.lock().await;
    let pod = Pod::new("sandbox-1");
    let a = rig_full(true, PodRole::Member(pod.clone()), |_| {}).await;
    let b = rig_full(true, PodRole::Member(pod.clone()), |_| {}).await;
    assert_eq!(pod.len(), 2);
    a.c.sleep().await.expect("a sleeps");
    b.c.sleep().await.expect("b sleeps");
    // A connection to a's port wakes a; b comes back with it.
    let _client = std::net::TcpStream::connect(("127.0.0.1", a.port)).expect("connect");
    assert_eq!(
        b.c.wait_for_state(State::Awake, Duration::from_secs(5))
            .await,
        Some(State::Awake)
    );
    assert_eq!(a.c.state(), State::Awake);
    assert_eq!(
        b.c.status().last_wake_phases.map(|p| p.trigger).as_deref(),
        Some("pod")
    );
    drop(_client);
    let _ = a.listener.accept();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_sandbox_never_sleeps_and_says_why() {
    let _serial = SERIAL.lock().await;
    let r = rig_full(true, PodRole::Sandbox, |_| {}).await;
    let e =
        r.c.sleep()
            .await
            .expect_err("the sandbox holds the pod's namespace");
    assert!(
        matches!(
            e,
            SleepError::Refused(lightwhale_engine::Refusal::PodSandbox)
        ),
        "{e}"
    );
    assert_eq!(r.c.status().not_sleeping, Some(NotSleeping::PodSandbox));
}
