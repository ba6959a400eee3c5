//! Post-copy wakes (CRIU lazy pages) and the restore path's helpers, against the real
//! stack. Correctness only: the benchmarks in bench/ measure how fast.

mod common;

use std::time::Duration;

use common::*;

const NS: &str = "moby";
const BALLAST_MIB: u64 = 48;

fn run_counter(name: &str, port: u16, lazy: &str) -> String {
    let publish = format!("127.0.0.1:{port}:8080");
    let lazy = format!("lightwhale.io/lazy-pages={lazy}");
    let mem = format!("MEMORY_MIB={BALLAST_MIB}");
    let script = counter_script();
    run_lw(
        name,
        "10m",
        Some(&publish),
        &["--annotation", &lazy, "-e", &mem],
        &[PY_IMAGE, "python3", "-c", &script],
    )
}

fn get(port: u16, path: &str) -> String {
    try_get_path(port, path, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("GET {path} on port {port} failed"))
        .trim()
        .to_string()
}

fn sleep_now(id: &str) -> serde_json::Value {
    let out = run("lightwhale", &["sleep", id]);
    assert_eq!(out.code, 0, "lightwhale sleep: {out:?}");
    let s = lw_status(NS, id);
    assert_eq!(s["state"], "asleep", "{s}");
    s
}

/// Resident anonymous memory of a process, from smaps_rollup (reading it touches no page).
fn anonymous_kib(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("Anonymous:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn lazy_wake_answers_keeps_state_and_brings_every_page_back() {
    require_stack("lazy-pages wake");
    let name = unique("lazy");
    let _c = Cleanup(vec![name.clone()]);
    let port = free_port();
    let id = run_counter(&name, port, "on");
    http_get(port);
    assert_eq!(get(port, "/"), "2");
    let digest = get(port, "/digest");
    assert_eq!(digest.len(), 64, "{digest}");

    let s = sleep_now(&id);
    let pages = s["pages_bytes"].as_u64().unwrap_or(0);
    assert!(
        pages >= BALLAST_MIB << 20,
        "the checkpoint holds the ballast: {s}"
    );
    assert!(processes_of(&id).is_empty(), "asleep: no process left");

    // The connection wakes it post-copy and is answered with the next count.
    assert_eq!(get(port, "/"), "3");
    let s = lw_status(NS, &id);
    let phases = &s["last_wake_phases"];
    assert_eq!(phases["lazy"], true, "{s}");
    assert!(phases["fallback"].is_null(), "{s}");
    assert!(phases["lazy_daemon_ms"].as_f64().is_some(), "{s}");

    // The daemon exits 0 once it has copied every page; then the task holds all of its
    // memory again without having touched it.
    wait_until("the page fill to finish", Duration::from_secs(60), || {
        lw_status(NS, &id)["last_wake_phases"]["fill_ms"].is_number()
    });
    let pids = processes_of(&id);
    assert_eq!(pids.len(), 1, "one python process: {pids:?}");
    let anon = anonymous_kib(pids[0]);
    assert!(
        anon >= BALLAST_MIB * 1024,
        "after the fill every ballast page is resident: {anon} KiB anonymous"
    );
    assert!(
        lw_status(NS, &id)["last_error"].is_null(),
        "{}",
        lw_status(NS, &id)
    );

    // Byte for byte the same memory, and the counter went on.
    assert_eq!(
        get(port, "/digest"),
        digest,
        "memory changed across the wake"
    );
    assert_eq!(get(port, "/"), "4");

    // A second cycle: the sleep waits for nothing, the wake is lazy again.
    sleep_now(&id);
    assert_eq!(get(port, "/"), "5");
    assert_eq!(lw_status(NS, &id)["last_wake_phases"]["lazy"], true);
    assert_eq!(get(port, "/digest"), digest);
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn a_lazy_pages_daemon_that_cannot_start_falls_back_to_an_eager_restore() {
    require_stack("lazy-pages fallback");
    let name = unique("lazyfb");
    let _c = Cleanup(vec![name.clone()]);
    let port = free_port();
    let id = run_counter(&name, port, "on");
    http_get(port);
    let digest = get(port, "/digest");
    sleep_now(&id);

    // A directory where the daemon must create its socket: it cannot listen.
    let sock = format!("/var/lib/lightwhale/{NS}/{id}/work/lazy-pages.socket");
    std::fs::create_dir_all(&sock).expect("block the socket path");

    assert_eq!(get(port, "/"), "2", "the client is answered all the same");
    let s = lw_status(NS, &id);
    let phases = &s["last_wake_phases"];
    assert_eq!(phases["lazy"], false, "{s}");
    assert!(
        phases["fallback"]
            .as_str()
            .is_some_and(|f| f.contains("lazy-pages")),
        "{s}"
    );
    assert!(
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("restored eagerly")),
        "{s}"
    );
    assert_eq!(get(port, "/digest"), digest);
    let _ = std::fs::remove_dir(&sock);
}

/// CRIU restores each tmpfs (/dev, Docker's masked paths) through `tar`, which lightwhale
/// replaces with a faster one on the restore path: the contents must come back the same.
#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn tmpfs_contents_are_the_same_after_a_wake() {
    require_stack("tmpfs contents across a wake");
    let name = unique("tmpfs");
    let _c = Cleanup(vec![name.clone()]);
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    let id = run_lw(
        &name,
        "10m",
        Some(&publish),
        &[],
        &[IMAGE, "httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    http_get(port);
    // A file with data on /dev/shm (unpacked in-process by the tar stand-in, with mtime).
    docker(&[
        "exec",
        &name,
        "sh",
        "-c",
        "mkdir -p /dev/shm/d && printf segment > /dev/shm/d/f && chmod 640 /dev/shm/d/f",
    ])
    .ok();
    let listing = || {
        let out = docker(&[
            "exec",
            &name,
            "sh",
            "-c",
            // Each tmpfs's own entries (same device as its root): mounts stacked on it
            // are other filesystems, restored by other means.
            "for m in $(awk '$3 == \"tmpfs\" {print $2}' /proc/mounts); do \
               [ -d $m ] || continue; d=$(stat -c %d $m); \
               find $m -xdev -exec stat -c '%d %n %a %u:%g %F %t:%T %s %Y' {} + \
                 | awk -v d=$d '$1 == d' | cut -d' ' -f2-; \
             done | sort; cat /dev/shm/d/f",
        ])
        .ok();
        out.stdout
    };
    let before = listing();
    assert!(
        before.contains("/dev/null 666 0:0 character special file 1:3"),
        "{before}"
    );
    sleep_now(&id);
    assert!(http_get(port).contains("hello from lightwhale"));
    assert_eq!(lw_status(NS, &id)["state"], "awake");
    assert_eq!(listing(), before, "tmpfs contents changed across the wake");
}
