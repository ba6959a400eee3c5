//! A sleep called off: a connection (or `lightwhale wake`) that arrives while CRIU dumps
//! the frozen task makes the shim give the dump up at its next clean point (runc killed
//! before CRIU seized anything, or CRIU's pre-dump or post-dump) and thaw the task,
//! instead of letting it be killed and restoring it. Under Docker, with a
//! 256 MiB counter (its dump takes long enough to be caught in the middle): the request
//! is answered with the next count by the same process (no restore), nothing is left in
//! the image directory, and the cancel is counted. With `lightwhale.io/sleep-cancel=off`
//! the same request waits for the dump and a wake, and is answered all the same.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

const NS: &str = "moby";

/// Whether a `runc checkpoint` of container `id` is running now.
fn checkpoint_running(id: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            return false;
        };
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        let has = |s: &str| args.contains(&s.as_bytes());
        has("checkpoint") && has(id) && args.first().is_some_and(|a| a.ends_with(b"runc"))
    })
}

/// Starts `lightwhale sleep ID` and returns once its `runc checkpoint` runs (at most
/// 20 s; the shim freezes the task and takes its sockets first).
fn sleep_in_background(id: &str) -> JoinHandle<Output> {
    let id2 = id.to_string();
    let sleeper = std::thread::spawn(move || {
        Command::new("lightwhale")
            .args(["sleep", &id2])
            .output()
            .expect("lightwhale sleep")
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !checkpoint_running(id) {
        assert!(
            !sleeper.is_finished(),
            "lightwhale sleep {id} ended before its dump was seen"
        );
        assert!(
            Instant::now() < deadline,
            "no runc checkpoint of {id} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    sleeper
}

/// GET / on `port` (HTTP/1.0), at most 20 s: the body.
fn get(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read the reply");
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply:?}");
    reply
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string()
}

fn main_pid(name: &str) -> String {
    inspect(name, "{{.State.Pid}}")
}

/// The image directory of the container: empty, or gone, when it is not asleep.
fn images_left(id: &str) -> bool {
    let dir = Path::new("/var/lib/lightwhale").join(NS).join(id);
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

fn counter_256(prefix: &str, extra: &[&str]) -> (Cleanup, u16, String, String) {
    let args = python_counter_args(&[], 256);
    let mut all: Vec<&str> = extra.to_vec();
    all.extend(args.iter().map(String::as_str));
    let (cleanup, port, id) = run_published(prefix, "1h", &[], &all);
    let name = cleanup.0[0].clone();
    assert_eq!(wait_get(port, Duration::from_secs(60)).trim(), "1");
    (cleanup, port, id, name)
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn a_connection_or_a_wake_during_the_dump_calls_the_sleep_off() {
    require_stack("sleep cancel");
    let (_cleanup, port, id, name) = counter_256("lwt-cancel", &[]);
    let pid = main_pid(&name);
    let mut expected = 2;
    for (round, by) in [(1, "connection"), (2, "request")] {
        let sleeper = sleep_in_background(&id);
        if by == "connection" {
            assert_eq!(get(port), expected.to_string(), "round {round}");
            expected += 1;
        } else {
            let out = run("lightwhale", &["wake", &id]);
            assert_eq!(out.code, 0, "round {round}: {out:?}");
        }
        let out = sleeper.join().expect("sleeper");
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("called off") && said.contains(&format!("a {by} came")),
            "round {round}: the sleep was not called off by the {by}: {said}"
        );
        assert!(
            ["before_seize", "pre_dump", "post_dump"]
                .iter()
                .any(|p| said.contains(p)),
            "round {round}: called off at one of the dump's clean points: {said}"
        );
        // The same process answers on: thawed, never killed and restored.
        let s = wait_state(NS, &id, "awake", Duration::from_secs(10));
        assert_eq!(s["sleeps"], 0, "round {round}: {s}");
        assert_eq!(s["wakes"], 0, "round {round}: {s}");
        assert_eq!(s["counters"]["refusals"]["cancelled"], round, "{s}");
        assert_eq!(main_pid(&name), pid, "round {round}");
        assert!(!images_left(&id), "round {round}: images left behind");
        assert_eq!(get(port), expected.to_string(), "round {round}");
        expected += 1;
    }
    // It still sleeps and wakes as before.
    sleep_now(&id);
    assert_eq!(get(port), expected.to_string());
    let s = lw_status(NS, &id);
    assert_eq!(s["sleeps"], 1, "{s}");
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn with_sleep_cancel_off_a_connection_during_the_dump_waits_for_the_wake() {
    require_stack("sleep cancel off");
    let (_cleanup, port, id, _name) = counter_256(
        "lwt-nocancel",
        &["--annotation", "lightwhale.io/sleep-cancel=off"],
    );
    let sleeper = sleep_in_background(&id);
    assert_eq!(get(port), "2");
    let out = sleeper.join().expect("sleeper");
    // Slept: the CLI reports the state as it ends (asleep, or already waking).
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("(sleep "), "{out:?}");
    let s = wait_state(NS, &id, "awake", Duration::from_secs(10));
    assert_eq!(s["sleeps"], 1, "{s}");
    assert_eq!(s["wakes"], 1, "{s}");
    assert!(s["counters"]["refusals"]["cancelled"].is_null(), "{s}");
    assert_eq!(get(port), "3");
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn a_bad_sleep_cancel_value_is_refused() {
    require_stack("sleep cancel annotation");
    assert_annotation_refused("lightwhale.io/sleep-cancel=sometimes", "expected on or off");
}
