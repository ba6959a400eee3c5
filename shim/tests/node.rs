//! What operators do to a node: restart containerd, restart dockerd (with and without
//! live-restore), set node-wide limits. Sleeping containers must come through each as
//! they would under runc, with their memory.
//!
//! These tests change node-wide things (daemons, /etc/lightwhale/config.toml), so they
//! run one at a time (a lock below) and in a test binary of their own (cargo runs test
//! binaries one after another, never beside each other).

mod common;

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

const NS: &str = "moby";
static NODE: Mutex<()> = Mutex::new(());

fn systemd() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

/// Stops the daemon called `name` (SIGTERM, as systemd would) and starts it again the
/// way the installer started it, then waits until `ready` answers.
fn restart_daemon(name: &str, unit: &str, args: &[&str], log: &str, ready: &[&str]) {
    if systemd() {
        run("systemctl", &["restart", unit]).ok();
    } else {
        let pid = host_daemon(name).unwrap_or_else(|| panic!("no {name} running"));
        run("kill", &[&pid]).ok();
        wait_until(&format!("{name} to stop"), Duration::from_secs(60), || {
            run("kill", &["-0", &pid]).code != 0
        });
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("daemon log");
        let err = out.try_clone().expect("log fd");
        // `setsid -f` forks: the daemon is not this process's child (it would stay a
        // zombie here when it stops, and look alive), just as the installer starts it.
        let started = Command::new("setsid")
            .arg("-f")
            .arg(name)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .expect("start the daemon");
        assert!(started.success(), "setsid -f {name}: {started}");
    }
    wait_until(
        &format!("{name} to answer"),
        Duration::from_secs(60),
        || run(ready[0], &ready[1..]).code == 0,
    );
}

/// The pid of the host's daemon called `name`: not the containerd 2.x that runs beside
/// it for the CRI tests (under /opt/lightwhale).
fn host_daemon(name: &str) -> Option<String> {
    let out = run("pgrep", &["-x", name]);
    out.stdout
        .lines()
        .map(str::trim)
        .find(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|exe| !exe.starts_with("/opt/lightwhale"))
                .unwrap_or(false)
        })
        .map(str::to_string)
}

fn restart_containerd() {
    restart_daemon(
        "containerd",
        "containerd",
        &[],
        "/var/log/containerd.log",
        &["ctr", "version"],
    );
}

fn restart_dockerd() {
    restart_daemon(
        "dockerd",
        "docker",
        &["--containerd=/run/containerd/containerd.sock"],
        "/var/log/dockerd.log",
        &[docker_bin(), "info"],
    );
}

/// Sets `live-restore` in daemon.json (reloaded by dockerd on SIGHUP); returns the old file.
fn set_live_restore(on: bool) -> String {
    let path = "/etc/docker/daemon.json";
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "{}".into());
    let mut doc: serde_json::Value = serde_json::from_str(&old).unwrap_or(serde_json::json!({}));
    doc["live-restore"] = on.into();
    std::fs::write(path, serde_json::to_vec_pretty(&doc).expect("json")).expect("daemon.json");
    old
}

fn counter(name: &str, port: u16) -> String {
    let publish = format!("127.0.0.1:{port}:8080");
    let script = counter_script();
    let id = run_lw(
        name,
        "1h",
        Some(&publish),
        &["-e", "MEMORY_MIB=32"],
        &[PY_IMAGE, "python3", "-c", &script],
    );
    assert_eq!(wait_get(port, Duration::from_secs(60)).trim(), "1");
    id
}

fn count(port: u16) -> u64 {
    try_get(port, Duration::from_secs(30))
        .and_then(|b| b.trim().parse().ok())
        .unwrap_or_else(|| panic!("a count from port {port}"))
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn a_containerd_restart_keeps_sleeping_and_awake_containers() {
    let _node = NODE.lock().unwrap_or_else(|p| p.into_inner());
    require_stack("containerd restart");
    let (asleep, awake) = (unique("crsleep"), unique("crawake"));
    let _c = Cleanup(vec![asleep.clone(), awake.clone()]);
    let (p1, p2) = (free_port(), free_port());
    let id1 = counter(&asleep, p1);
    let _id2 = counter(&awake, p2);
    assert_eq!(count(p1), 2);
    sleep_now(&id1);
    assert_eq!(lw_status(NS, &id1)["state"], "asleep");

    restart_containerd();
    // containerd re-connected to both shims and kept them (a shim whose task lists no
    // process would have been "cleaned" as leaked).
    std::thread::sleep(Duration::from_secs(2));
    let tasks = ctr(&["-n", NS, "task", "ls"]).ok();
    assert!(
        tasks
            .stdout
            .lines()
            .any(|l| l.starts_with(&id1) && l.contains("RUNNING")),
        "{tasks:?}"
    );
    assert_eq!(lw_status(NS, &id1)["state"], "asleep", "still asleep");
    assert_eq!(count(p2), 2, "the awake one kept running");
    assert_eq!(count(p1), 3, "the sleeping one wakes with its state");
    assert_eq!(inspect(&asleep, "{{.State.Running}}"), "true");
    let exec = run(
        "timeout",
        &["20", docker_bin(), "exec", &asleep, "echo", "ok"],
    );
    assert!(exec.stdout.contains("ok"), "{exec:?}");
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn a_dockerd_restart_with_live_restore_keeps_a_sleeping_container() {
    let _node = NODE.lock().unwrap_or_else(|p| p.into_inner());
    require_stack("dockerd restart, live-restore");
    let old = set_live_restore(true);
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write("/etc/docker/daemon.json", &self.0);
            let _ = run("pkill", &["-HUP", "-x", "dockerd"]);
        }
    }
    let _restore = Restore(old);
    run("pkill", &["-HUP", "-x", "dockerd"]).ok();
    wait_until("live-restore on", Duration::from_secs(10), || {
        docker(&["info", "--format", "{{.LiveRestoreEnabled}}"]).trimmed() == "true"
    });
    let name = unique("drlive");
    let _c = Cleanup(vec![name.clone()]);
    let port = free_port();
    let id = counter(&name, port);
    sleep_now(&id);

    restart_dockerd();
    assert_eq!(inspect(&name, "{{.State.Running}}"), "true");
    assert_eq!(lw_status(NS, &id)["state"], "asleep");
    assert_eq!(count(port), 2, "woken after the restart, state kept");
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn a_dockerd_restart_without_live_restore_stops_sleepers_cleanly() {
    let _node = NODE.lock().unwrap_or_else(|p| p.into_inner());
    require_stack("dockerd restart, no live-restore");
    let old = set_live_restore(false);
    let _restore = scopeguard_write("/etc/docker/daemon.json", old);
    run("pkill", &["-HUP", "-x", "dockerd"]).ok();
    wait_until("live-restore off", Duration::from_secs(10), || {
        docker(&["info", "--format", "{{.LiveRestoreEnabled}}"]).trimmed() == "false"
    });
    let name = unique("drstop");
    let _c = Cleanup(vec![name.clone()]);
    let port = free_port();
    let id = counter(&name, port);
    sleep_now(&id);
    let t = Instant::now();
    restart_dockerd();
    eprintln!("dockerd restart with a sleeper: {:?}", t.elapsed());
    // Docker stops its containers when it goes down: the sleeper is stopped like the rest
    // (woken for its SIGTERM), and nothing of it remains.
    assert_eq!(inspect(&name, "{{.State.Running}}"), "false");
    wait_until("no images left", Duration::from_secs(20), || {
        !std::path::Path::new(&format!("/var/lib/lightwhale/{NS}/{id}")).exists()
    });
    assert!(processes_of(&id).is_empty());
}

/// Writes `text` back to `path` when dropped (and has dockerd reload it).
fn scopeguard_write(path: &'static str, text: String) -> impl Drop {
    struct W(&'static str, String);
    impl Drop for W {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0, &self.1);
            let _ = run("pkill", &["-HUP", "-x", "dockerd"]);
        }
    }
    W(path, text)
}

/// Sets the node config for the shims started while it is held; restores it on drop.
struct NodeConfig(Option<String>);

impl NodeConfig {
    fn set(text: &str) -> NodeConfig {
        let path = "/etc/lightwhale/config.toml";
        let old = std::fs::read_to_string(path).ok();
        std::fs::create_dir_all("/etc/lightwhale").expect("mkdir");
        std::fs::write(path, text).expect("config.toml");
        NodeConfig(old)
    }
}

impl Drop for NodeConfig {
    fn drop(&mut self) {
        let path = "/etc/lightwhale/config.toml";
        match &self.0 {
            Some(t) => {
                let _ = std::fs::write(path, t);
            }
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn over_the_image_budget_a_container_stays_awake_and_says_why() {
    let _node = NODE.lock().unwrap_or_else(|p| p.into_inner());
    require_stack("image budget");
    let name = unique("budget");
    let _c = Cleanup(vec![name.clone()]);
    let id = {
        let _cfg = NodeConfig::set("image-budget = \"1Mi\"\n");
        run_lw(
            &name,
            "1s",
            None,
            &["-e", "MEMORY_MIB=8"],
            &[PY_IMAGE, "python3", "-c", &counter_script()],
        )
    };
    wait_until("the budget named", Duration::from_secs(30), || {
        lw_status(NS, &id)["not_sleeping"]["kind"] == "disk_budget"
    });
    let s = lw_status(NS, &id);
    assert_eq!(
        (s["state"].clone(), s["sleeps"].clone()),
        ("awake".into(), 0.into()),
        "{s}"
    );
    let out = run("lightwhale", &["sleep", &id]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("budget"), "{out:?}");
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn a_wake_that_does_not_fit_in_memory_waits_and_is_not_lost() {
    let _node = NODE.lock().unwrap_or_else(|p| p.into_inner());
    require_stack("wake memory reserve");
    let name = unique("nomem");
    let _c = Cleanup(vec![name.clone()]);
    let port = free_port();
    let id = {
        let _cfg =
            NodeConfig::set("wake-memory-reserve = \"100000Gi\"\nwake-memory-wait = \"1s\"\n");
        counter(&name, port)
    };
    sleep_now(&id);
    // The client waits in the held queue; the wake is retried, each try failing clearly.
    assert!(try_get(port, Duration::from_secs(4)).is_none());
    let s = lw_status(NS, &id);
    assert_eq!(s["state"], "asleep", "not started into an OOM kill: {s}");
    assert!(
        s["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("not enough memory"),
        "{s}"
    );
    assert_eq!(inspect(&name, "{{.State.Running}}"), "true", "not lost");
    // It can still be ended at once.
    docker(&["kill", &name]).ok();
    wait_until("killed", Duration::from_secs(20), || {
        inspect(&name, "{{.State.Running}}") == "false"
    });
    assert_eq!(inspect(&name, "{{.State.ExitCode}}"), "137");
}

/// Restarts the containerd 2.x that runs beside the host's (as install-deps.sh runs it).
fn restart_containerd2() {
    const CONF: &str = "/etc/lightwhale-containerd2/config.toml";
    const PIDFILE: &str = "/run/lightwhale-containerd2.pid";
    if systemd() {
        run("systemctl", &["restart", "lightwhale-containerd2"]).ok();
    } else {
        let pid = run("pgrep", &["-f", &format!("containerd --config {CONF}")])
            .stdout
            .lines()
            .next()
            .map(str::trim)
            .map(str::to_string)
            .expect("containerd 2.x running");
        run("kill", &[&pid]).ok();
        wait_until("containerd 2.x to stop", Duration::from_secs(60), || {
            run("kill", &["-0", &pid]).code != 0
        });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open("/var/log/lightwhale-containerd2.log")
            .expect("log");
        let err = log.try_clone().expect("log fd");
        let started = Command::new("setsid")
            .args(["-f", "/opt/lightwhale/containerd2/usr/bin/containerd", "--config", CONF])
            .env(
                "PATH",
                "/opt/lightwhale/containerd2/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .status()
            .expect("start containerd 2.x");
        assert!(started.success());
        wait_until("containerd 2.x to start", Duration::from_secs(30), || {
            !run("pgrep", &["-f", &format!("containerd --config {CONF}")])
                .stdout
                .trim()
                .is_empty()
        });
        let pid = run("pgrep", &["-f", &format!("containerd --config {CONF}")]).stdout;
        let _ = std::fs::write(PIDFILE, pid.lines().next().unwrap_or("").trim());
    }
    wait_until("containerd 2.x to answer", Duration::from_secs(60), || {
        Ctrd::TWO.ctr(&["version"]).code == 0
    });
}

#[test]
#[ignore = "needs the real stack (containerd 2.x beside 1.7): make test runs it"]
fn a_containerd_2_restart_keeps_a_sleeping_task() {
    let _node = NODE.lock().unwrap_or_else(|p| p.into_inner());
    require_stack("containerd 2.x restart");
    let c = Ctrd::TWO;
    let id = unique("cr2sleep");
    let _g = c.task(&id);
    c.ctr(&[
        "run",
        "-d",
        "--runtime",
        "io.containerd.lightwhale.v2",
        "--annotation",
        "lightwhale.io/idle-timeout=1h",
        CTR_IMAGE,
        &id,
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    ])
    .ok();
    sleep_now(&id);
    restart_containerd2();
    std::thread::sleep(Duration::from_secs(2));
    let tasks = c.ctr(&["task", "ls"]).ok();
    assert!(
        tasks
            .stdout
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("RUNNING")),
        "containerd 2.x kept the sleeping task: {tasks:?}"
    );
    assert_eq!(lw_status("default", &id)["state"], "asleep");
    let out = get_in_pinned_netns("default", &id);
    assert!(
        out.stdout.contains("hello from lightwhale"),
        "woken: {out:?}"
    );
}
