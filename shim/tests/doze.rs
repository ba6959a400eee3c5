//! The doze tier under Docker: a container with `lightwhale.io/doze-after` dozes when idle
//! (frozen, its memory paged out), Docker still shows it up, the next request through its
//! published port thaws it with its state, and an exec or a stop thaws it first. The
//! node's metrics and containerd's event bus see the doze. The page-out needs swap
//! (scripts/install-deps.sh sets up zram where there is none).

mod common;

use std::time::{Duration, Instant};

use common::*;

const NS: &str = "moby";

fn python_counter() -> Vec<String> {
    vec![
        PY_IMAGE.into(),
        "python3".into(),
        "-c".into(),
        counter_script(),
    ]
}

/// Waits until the container dozes for the `n`th time and that doze is done (its memory
/// paged out), at most `timeout`; the record.
fn wait_dozed(id: &str, n: u64, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = lw_status(NS, id);
        if s["state"] == "dozing" && s["dozes"].as_u64() >= Some(n) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{id} did not doze (#{n}) within {timeout:?}: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs the real stack (root, runc, containerd, dockerd, swap): make test runs it"]
fn an_idle_container_dozes_and_the_next_request_thaws_it() {
    require_stack("doze");
    let name = unique("lwt-doze");
    let _cleanup = Cleanup(vec![name.clone()]);
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    let cmd = python_counter();
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let id = run_lw(
        &name,
        "1h",
        Some(&publish),
        &[
            "--annotation",
            "lightwhale.io/doze-after=1s",
            "-e",
            "MEMORY_MIB=32",
        ],
        &cmd,
    );
    assert_eq!(wait_get(port, Duration::from_secs(60)).trim(), "1");

    let s = wait_dozed(&id, 1, Duration::from_secs(15));
    assert_eq!(s["config"]["doze_after_ms"], 1000, "{s}");
    assert_eq!(inspect(&name, "{{.State.Status}}"), "running");
    let d = &s["doze"];
    assert_eq!(d["reclaimed"], true, "{s}");
    assert!(
        d["rss_after_bytes"].as_u64().unwrap_or(u64::MAX) + (24 << 20)
            <= d["rss_before_bytes"].as_u64().unwrap_or(0),
        "its 32 MiB went out to swap: {d}"
    );
    let ps = run("lightwhale", &["ps"]);
    assert!(
        ps.stdout
            .lines()
            .any(|l| l.contains(&id[..12]) && l.contains("dozing")),
        "{ps:?}"
    );
    let metrics = run("lightwhale", &["-n", NS, "metrics", "--once"]);
    assert!(
        metrics.stdout.lines().any(|l| l
            .starts_with("lightwhale_containers{namespace=\"moby\",state=\"dozing\"}")
            && !l.ends_with(" 0")),
        "{}",
        metrics.stdout
    );

    // The next request thaws it, and its count went on.
    let body = try_get(port, Duration::from_secs(10));
    assert_eq!(body.as_deref().map(str::trim), Some("2"));
    // The task runs first, the bookkeeping follows by a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut s = lw_status(NS, &id);
    while s["thaws"] != 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        s = lw_status(NS, &id);
    }
    assert_eq!(s["state"], "awake", "{s}");
    assert_eq!(s["counters"]["thaws_by_trigger"]["connection"], 1, "{s}");
    assert_eq!(
        (s["sleeps"].as_u64(), s["wakes"].as_u64()),
        (Some(0), Some(0))
    );

    // Dozing again, an exec thaws it and runs.
    wait_dozed(&id, 2, Duration::from_secs(15));
    let out = docker(&["exec", &name, "cat", "/proc/1/status"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("python3"), "{out:?}");
    let s = lw_status(NS, &id);
    assert_eq!(s["counters"]["thaws_by_trigger"]["exec"], 1, "{s}");

    // Dozing again, a stop ends it: python as pid 1 ignores SIGTERM, the SIGKILL after
    // the grace period must then be taken (a task frozen under cgroup v1 would not die
    // of it: the kill thaws it first).
    wait_dozed(&id, 3, Duration::from_secs(15));
    let t = Instant::now();
    let out = docker(&["stop", "-t", "1", &name]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "the stop hung on a frozen task"
    );
    assert_eq!(inspect(&name, "{{.State.ExitCode}}"), "137");
    assert_eq!(inspect(&name, "{{.State.Status}}"), "exited");
}

#[test]
#[ignore = "needs the real stack (root, runc, containerd, dockerd, swap): make test runs it"]
fn lightwhale_doze_dozes_now_and_a_bad_value_is_refused() {
    require_stack("doze by hand");
    // Asked by hand, with no doze-after: it dozes all the same, and thaws on a request.
    let (_cleanup, port, id) = run_published("lwt-dozecli", "1h", &[], &HTTPD);
    wait_get(port, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = run("lightwhale", &["doze", &id]);
        if out.code == 0 && out.stdout.contains("dozing") {
            break;
        }
        assert!(Instant::now() < deadline, "would not doze: {out:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(try_get(port, Duration::from_secs(10)).is_some());
    assert_eq!(lw_status(NS, &id)["state"], "awake");

    assert_annotation_refused(
        "lightwhale.io/doze-after=sometimes",
        "expected off, or a duration",
    );
}
