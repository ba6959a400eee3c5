//! "Why didn't it sleep?": each reason a container stays awake is named by `lightwhale
//! inspect` (and shortly by `lightwhale ps`), and the containers that must never sleep
//! (host network) do not. Also: a network namespace given by path gets what a wake needs.

mod common;

use std::time::{Duration, Instant};

use common::*;

const NS: &str = "moby";

/// `lightwhale inspect ID` as JSON.
fn inspect_lw(id: &str) -> serde_json::Value {
    let out = run("lightwhale", &["inspect", id]);
    serde_json::from_str(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Waits until the container's reason for not sleeping is `kind`; returns the record.
fn wait_reason(id: &str, kind: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = lw_status(NS, id);
        if s["not_sleeping"]["kind"] == kind {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: reason {kind} not shown within {timeout:?}: {}",
            s["not_sleeping"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn python(code: &str) -> Vec<String> {
    vec![PY_IMAGE.into(), "python3".into(), "-c".into(), code.into()]
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn every_reason_a_container_stays_awake_is_named() {
    require_stack("reasons");
    let idle = "lightwhale.io/idle-timeout=1s";
    let httpd: Vec<String> = ["httpd", "-f", "-p", "8080", "-h", "/www"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let with_image = |image: &str, args: &[String]| {
        let mut v = vec![image.to_string()];
        v.extend(args.iter().cloned());
        v
    };
    let no_root = !has_sys_resource();
    // (name, extra docker args, command, expected kind)
    let mut cases: Vec<(&str, Vec<String>, Vec<String>, &str)> = vec![
        (
            "nolisten",
            vec![],
            vec![IMAGE.into(), "sleep".into(), "3600".into()],
            "no_listener",
        ),
        (
            "udp",
            vec![],
            python("import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('',5353))\ntime.sleep(3600)\n"),
            "udp_only",
        ),
        (
            "ports",
            vec!["--annotation".into(), "lightwhale.io/ports=9999".into()],
            with_image(IMAGE, &httpd),
            "ports_not_listening",
        ),
        (
            "tty",
            vec!["-t".into()],
            with_image(IMAGE, &httpd),
            "terminal",
        ),
        (
            "off",
            vec!["--annotation".into(), "lightwhale.io/sleep=OFF".into()],
            with_image(IMAGE, &httpd),
            "disabled",
        ),
        (
            "cpu",
            vec![],
            vec![IMAGE.into(), "sh".into(), "-c".into(), "while :; do :; done".into()],
            "cpu_busy",
        ),
    ];
    if no_root {
        // This host withholds CAP_SYS_RESOURCE (as these VMs do): CRIU cannot dump a
        // process that is not root's, and lightwhale says so instead of failing dumps.
        cases.push((
            "nonroot",
            vec!["--user".into(), "65534".into()],
            with_image(IMAGE, &httpd),
            "cannot_dump",
        ));
    }
    let mut names = Vec::new();
    let mut started = Vec::new();
    for (what, extra, cmd, kind) in &cases {
        let name = unique(&format!("why-{what}"));
        names.push(name.clone());
        let mut args: Vec<&str> = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--runtime",
            LIGHTWHALE,
            "--annotation",
            idle,
        ];
        args.extend(extra.iter().map(String::as_str));
        args.extend(cmd.iter().map(String::as_str));
        let id = docker(&args).ok().trimmed().to_string();
        started.push((id, *kind, *what));
    }
    let _c = Cleanup(names);
    for (id, kind, what) in &started {
        let s = wait_reason(id, kind, Duration::from_secs(40));
        assert_eq!(s["state"], "awake", "{what}: {s}");
        assert_eq!(s["sleeps"], 0, "{what}: {s}");
    }
    // The figures and the sentence reach the operator.
    let cpu = &started.iter().find(|s| s.2 == "cpu").expect("cpu case").0;
    let s = inspect_lw(cpu);
    assert!(
        s["not_sleeping"]["permille"].as_u64().unwrap_or(0) > 20,
        "{s}"
    );
    let ps = run("lightwhale", &["ps"]).ok();
    let line = ps
        .stdout
        .lines()
        .find(|l| l.starts_with(&cpu[..12]))
        .unwrap_or_default()
        .to_string();
    assert!(line.contains("cpu"), "ps names the reason: {line}");
    let table = run("lightwhale", &["inspect", "--format", "table", &cpu[..12]]).ok();
    assert!(table.stdout.contains("CPU"), "{table:?}");
    // Docker's name finds it too.
    let cpu_name = docker(&["inspect", "-f", "{{.Name}}", cpu])
        .trimmed()
        .trim_start_matches('/')
        .to_string();
    let by_name = run("lightwhale", &["inspect", &cpu_name]).ok();
    assert!(by_name.stdout.contains(cpu.as_str()), "{by_name:?}");
}

fn has_sys_resource() -> bool {
    // Bit 24 of the effective capabilities: CAP_SYS_RESOURCE.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .map(|caps| caps & (1 << 24) != 0)
        .unwrap_or(false)
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn a_failed_sleep_says_why_and_when_it_tries_again() {
    require_stack("failed sleep reason");
    let profile_name = unique("broken").replace('-', "_");
    let profile = format!("/etc/lightwhale/criu-profiles/{profile_name}.conf");
    std::fs::create_dir_all("/etc/lightwhale/criu-profiles").expect("mkdir");
    std::fs::write(&profile, "no-such-criu-option\n").expect("profile");
    let _p = RemoveFile(profile.clone());
    let name = unique("whyfail");
    let _c = Cleanup(vec![name.clone()]);
    let ann = format!("lightwhale.io/criu-profile={profile_name}");
    let id = run_lw(
        &name,
        "1s",
        None,
        &["--annotation", &ann],
        &[IMAGE, "httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    let s = wait_reason(&id, "sleep_failed", Duration::from_secs(30));
    let why = &s["not_sleeping"];
    assert!(
        why["error"]
            .as_str()
            .unwrap_or("")
            .contains("checkpoint failed"),
        "{why}"
    );
    let next = why["next_try_unix_ms"].as_u64().unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    assert!(next > now, "the next try is in the future: {why}");
    assert!(
        s["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("CRIU dump.log"),
        "CRIU's log tail is kept: {s}"
    );
}

struct RemoveFile(String);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn a_host_network_container_never_sleeps() {
    require_stack("host network");
    let name = unique("hostnet");
    let _c = Cleanup(vec![name.clone()]);
    let port = free_port().to_string();
    let id = run_lw(
        &name,
        "1s",
        None,
        &["--network", "host"],
        &[IMAGE, "httpd", "-f", "-p", &port, "-h", "/www"],
    );
    let s = wait_reason(&id, "host_network", Duration::from_secs(20));
    assert_eq!(s["state"], "awake");
    // Well past its idle timeout, it still serves from the same, never dumped, process.
    std::thread::sleep(Duration::from_secs(4));
    let s = lw_status(NS, &id);
    assert_eq!(
        (s["state"].clone(), s["sleeps"].clone()),
        ("awake".into(), 0.into()),
        "{s}"
    );
    let out = run("lightwhale", &["sleep", &id]);
    assert_ne!(out.code, 0, "refused: {out:?}");
    assert!(out.stderr.contains("host's network"), "{out:?}");
    assert!(http_get(port.parse().expect("port")).contains("hello from lightwhale"));
}

/// A namespace lightwhale did not make (as CNI makes a pod's, or `ctr run --with-ns`):
/// the shim sets `tcp_migrate_req` there, so no wake resets its connection.
#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn wakes_in_a_namespace_given_by_path_lose_no_connection() {
    require_stack("netns by path");
    let ns = unique("netns");
    run("ip", &["netns", "add", &ns]).ok();
    struct DelNs(String);
    impl Drop for DelNs {
        fn drop(&mut self) {
            let _ = run("ip", &["netns", "del", &self.0]);
        }
    }
    let _ns = DelNs(ns.clone());
    run("ip", &["-n", &ns, "link", "set", "lo", "up"]).ok();
    let before = run(
        "ip",
        &[
            "netns",
            "exec",
            &ns,
            "cat",
            "/proc/sys/net/ipv4/tcp_migrate_req",
        ],
    )
    .ok();
    assert_eq!(before.trimmed(), "0", "a fresh namespace starts with 0");
    let id = unique("withns");
    let _t = CtrTask(id.clone());
    let with_ns = format!("network:/var/run/netns/{ns}");
    ctr(&[
        "run",
        "-d",
        "--runtime",
        "io.containerd.lightwhale.v2",
        "--with-ns",
        &with_ns,
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
    let after = run(
        "ip",
        &[
            "netns",
            "exec",
            &ns,
            "cat",
            "/proc/sys/net/ipv4/tcp_migrate_req",
        ],
    )
    .ok();
    assert_eq!(
        after.trimmed(),
        "1",
        "set by the shim in the container's namespace"
    );
    let get = || {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "busybox",
                "timeout",
                "20",
                "busybox",
                "wget",
                "-qO-",
                "http://127.0.0.1:8080/",
            ],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while get().code != 0 {
        assert!(Instant::now() < deadline, "httpd did not come up");
        std::thread::sleep(Duration::from_millis(200));
    }
    for round in 1..=5 {
        let out = run("lightwhale", &["sleep", &id]).ok();
        assert!(out.stdout.contains("asleep"), "round {round}: {out:?}");
        let out = get();
        assert_eq!(
            out.code, 0,
            "round {round}: the waking request is answered: {out:?}"
        );
        assert!(out.stdout.contains("hello from lightwhale"), "{out:?}");
    }
    assert_eq!(lw_status("default", &id)["wakes"], 5);
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn annotation_values_are_checked_as_documented() {
    require_stack("annotation forms");
    // ON is one of the documented forms.
    let name = unique("on");
    let _c = Cleanup(vec![name.clone()]);
    run_lw(
        &name,
        "1s",
        None,
        &["--annotation", "lightwhale.io/sleep=ON"],
        &[IMAGE, "httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    // Below the documented minimum, and a huge value: refused, the value echoed short.
    let huge = format!("lightwhale.io/idle-timeout={}", "9".repeat(10_000));
    for (ann, needle) in [
        ("lightwhale.io/idle-timeout=1ms", "from 1s"),
        (huge.as_str(), "(10000 bytes)"),
    ] {
        let name = unique("badann");
        let _c = Cleanup(vec![name.clone()]);
        let out = docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--runtime",
            LIGHTWHALE,
            "--annotation",
            ann,
            IMAGE,
            "true",
        ]);
        assert_ne!(out.code, 0, "{ann:.60}: {out:?}");
        assert!(out.stderr.contains(needle), "{needle}: {:.600}", out.stderr);
        assert!(
            out.stderr.len() < 2_000,
            "the rejected value is not echoed whole: {} bytes",
            out.stderr.len()
        );
    }
}
