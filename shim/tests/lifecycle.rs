//! Nothing sleeping is ever lost: shims that die while a container sleeps or wakes, stops
//! that race a sleep, a stop's grace period, a lazy-pages daemon that dies mid-fill. After
//! each: the status is true, nothing is left behind (no process, no image, no ghost in
//! `lightwhale ps`), and what happened can still be read (`lightwhale ps -a`, `inspect`).

mod common;

use std::time::{Duration, Instant};

use common::*;

const NS: &str = "moby";

fn shim_of(id: &str) -> Option<i32> {
    let out = run(
        "pgrep",
        &["-f", &format!("containerd-shim-lightwhale-v2 .*-id {id}")],
    );
    out.stdout.lines().find_map(|l| l.trim().parse().ok())
}

fn kill9(pid: i32) {
    run("kill", &["-9", &pid.to_string()]).ok();
}

fn image_dir(id: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/var/lib/lightwhale/{NS}/{id}"))
}

fn exited_record(id: &str) -> serde_json::Value {
    std::fs::read(format!("/run/lightwhale/exited/{NS}/{id}.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// What must hold once a container has ended, however it ended.
fn assert_nothing_left(id: &str, what: &str) {
    wait_until(
        &format!("{what}: its processes gone"),
        Duration::from_secs(20),
        || processes_of(id).is_empty(),
    );
    wait_until(
        &format!("{what}: its images removed"),
        Duration::from_secs(20),
        || !image_dir(id).exists(),
    );
    assert!(
        !std::path::Path::new(&format!("/run/lightwhale/containers/{NS}/{id}.json")).exists(),
        "{what}: no live status file"
    );
    assert!(
        !std::path::Path::new(&format!("/run/lightwhale/containers/{NS}/{id}.sock")).exists(),
        "{what}: no control socket"
    );
    assert!(
        !std::path::Path::new(&format!("/run/lightwhale/netns/{NS}-{id}")).exists(),
        "{what}: the pinned namespace released"
    );
    let ps = run("lightwhale", &["ps"]).ok();
    assert!(
        !ps.stdout.lines().any(|l| l.starts_with(&id[..12])),
        "{what}: no ghost in lightwhale ps: {}",
        ps.stdout
    );
    let all = run("lightwhale", &["ps", "-a"]).ok();
    assert!(
        all.stdout
            .lines()
            .any(|l| l.starts_with(&id[..12]) && l.contains("exited")),
        "{what}: ps -a shows how it ended: {}",
        all.stdout
    );
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn a_shim_killed_while_asleep_leaves_nothing_behind() {
    require_stack("shim killed while asleep");
    let name = unique("shimkill");
    let _c = Cleanup(vec![name.clone()]);
    let id = run_lw(
        &name,
        "1h",
        None,
        &[],
        &[IMAGE, "httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    sleep_now(&id);
    assert!(image_dir(&id).join("images").exists());
    kill9(shim_of(&id).expect("the container's shim"));
    wait_until("Docker sees it exit", Duration::from_secs(30), || {
        inspect(&name, "{{.State.Running}}") == "false"
    });
    assert_eq!(inspect(&name, "{{.State.ExitCode}}"), "137");
    assert_nothing_left(&id, "killed asleep");
    let rec = exited_record(&id);
    assert_eq!(rec["state"], "exited", "{rec}");
    assert!(
        rec["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("shim ended"),
        "{rec}"
    );
    let out = run("lightwhale", &["inspect", &id[..12]]).ok();
    assert!(out.stdout.contains("shim ended"), "{out:?}");
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn a_shim_killed_while_waking_leaves_no_process_or_image() {
    require_stack("shim killed while waking");
    let name = unique("shimwake");
    let _c = Cleanup(vec![name.clone()]);
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    let script = counter_script();
    let id = run_lw(
        &name,
        "1h",
        Some(&publish),
        &[
            "-e",
            "MEMORY_MIB=256",
            "--annotation",
            "lightwhale.io/lazy-pages=off",
        ],
        &[PY_IMAGE, "python3", "-c", &script],
    );
    assert_eq!(wait_get(port, Duration::from_secs(60)).trim(), "1");
    sleep_now(&id);
    let shim = shim_of(&id).expect("shim");
    let client = std::thread::spawn(move || try_get(port, Duration::from_secs(20)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while lw_status(NS, &id)["state"] == "asleep" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    kill9(shim);
    let _ = client.join();
    wait_until("Docker sees it exit", Duration::from_secs(30), || {
        inspect(&name, "{{.State.Running}}") == "false"
    });
    assert_nothing_left(&id, "killed waking");
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn a_stop_that_races_a_sleep_stops_it_cleanly() {
    require_stack("stop racing a sleep");
    let script = counter_script();
    for delay_ms in [30u64, 70, 110] {
        let name = unique("stoprace");
        let _c = Cleanup(vec![name.clone()]);
        let port = free_port();
        let publish = format!("127.0.0.1:{port}:8080");
        let id = run_lw(
            &name,
            "1h",
            Some(&publish),
            &["-e", "MEMORY_MIB=256"],
            &[PY_IMAGE, "python3", "-c", &script],
        );
        wait_get(port, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(1100));
        let sid = id.clone();
        let sleeper = std::thread::spawn(move || run("lightwhale", &["sleep", &sid]));
        std::thread::sleep(Duration::from_millis(delay_ms));
        let t = Instant::now();
        let stop = run("timeout", &["60", docker_bin(), "stop", "-t", "5", &name]);
        assert_eq!(stop.code, 0, "{delay_ms} ms: docker stop: {stop:?}");
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{delay_ms} ms: the stop took {:?}",
            t.elapsed()
        );
        let _ = sleeper.join();
        assert_eq!(inspect(&name, "{{.State.Running}}"), "false");
        assert_nothing_left(&id, &format!("stop {delay_ms} ms into a sleep"));
    }
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn a_container_in_its_stop_grace_period_is_not_put_to_sleep() {
    require_stack("stop grace period");
    let name = unique("grace");
    let _c = Cleanup(vec![name.clone()]);
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    // Its init ignores SIGTERM: the stop waits out the grace period, then SIGKILL.
    let id = run_lw(
        &name,
        "2s",
        Some(&publish),
        &[],
        &[
            IMAGE,
            "sh",
            "-c",
            "trap '' TERM; httpd -f -p 8080 -h /www & wait; wait",
        ],
    );
    assert!(http_get(port).contains("hello"));
    assert_eq!(lw_status(NS, &id)["sleeps"], 0);
    let n = name.clone();
    let stop =
        std::thread::spawn(move || run("timeout", &["60", docker_bin(), "stop", "-t", "6", &n]));
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let s = lw_status(NS, &id);
        assert!(
            s.is_null() || (s["state"] != "asleep" && s["state"] != "sleeping"),
            "put to sleep in its grace period: {s}"
        );
        if s["not_sleeping"]["kind"] == "stopping" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = stop.join().expect("stop thread");
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(inspect(&name, "{{.State.ExitCode}}"), "137");
    let rec = exited_record(&id);
    assert_eq!(rec["sleeps"], 0, "never slept: {rec}");
}

/// A lazy wake whose page daemon dies before every page is back: the task is ended with
/// the documented status (255), the record and the daemon's log are kept.
#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn a_lazy_pages_daemon_that_dies_mid_fill_ends_the_task_with_255() {
    require_stack("lazy daemon dies mid-fill");
    let name = unique("filldie");
    let _c = Cleanup(vec![name.clone()]);
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    let script = counter_script();
    let id = run_lw(
        &name,
        "1h",
        Some(&publish),
        &[
            "-e",
            "MEMORY_MIB=768",
            "--annotation",
            "lightwhale.io/lazy-pages=on",
        ],
        &[PY_IMAGE, "python3", "-c", &script],
    );
    wait_get(port, Duration::from_secs(60));
    sleep_now(&id);
    // Kill the daemon once the wake is done (the task answers), while its pages are
    // still coming in the background.
    let killer_id = id.clone();
    let killer = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if lw_status(NS, &killer_id)["wakes"] == 1 {
                let out = run(
                    "pkill",
                    &["-9", "-f", &format!("criu lazy-pages.*{killer_id}")],
                );
                return out.code == 0;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    });
    let _ = run("lightwhale", &["wake", &id]);
    assert!(
        killer.join().unwrap_or(false),
        "the daemon was killed during its fill"
    );
    wait_until("the task ended", Duration::from_secs(30), || {
        inspect(&name, "{{.State.Running}}") == "false"
    });
    assert_eq!(inspect(&name, "{{.State.ExitCode}}"), "255");
    assert_nothing_left(&id, "a fill that failed");
    let rec = exited_record(&id);
    let err = rec["last_error"].as_str().unwrap_or("");
    assert!(err.contains("lazy-pages"), "{rec}");
    let logs = rec["kept_logs"].as_str().expect("logs kept");
    assert!(
        std::path::Path::new(logs).join("lazy-pages.log").is_file(),
        "the daemon's log is kept: {logs}"
    );
}
