//! Docker end to end: every scenario runs under the default runtime (runc) and under
//! `--runtime lightwhale`, and the results a user sees must be the same.

mod common;

use std::time::Duration;

use common::*;

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn run_rm_output_and_exit_codes_match_runc() {
    require_stack("docker run --rm");
    let cases: &[(&str, i32)] = &[
        ("echo out; echo err >&2; exit 0", 0),
        ("echo three; exit 3", 3),
        // (A SIGKILL death, also 137, is covered by the stop and kill tests: PID 1 cannot
        // SIGKILL itself from inside its namespace.)
        ("echo before; exit 137", 137),
    ];
    for (script, want) in cases {
        // Docker itself sometimes loses the output of a container that exits at once (its
        // attach races the exit; seen in CI under runc, the reference): a difference must
        // show three times in a row to count.
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.clear();
            for rt in RUNTIMES {
                let out = docker(&["run", "--rm", "--runtime", rt, IMAGE, "sh", "-c", script]);
                assert_eq!(out.code, *want, "{rt}: {script}: {out:?}");
                seen.push((out.stdout.clone(), out.stderr.clone()));
            }
            if seen[0] == seen[1] {
                break;
            }
        }
        assert_eq!(
            seen[0], seen[1],
            "runc and lightwhale differ for {script:?}"
        );
    }
    let out = docker(&[
        "run",
        "--rm",
        "--runtime",
        LIGHTWHALE,
        IMAGE,
        "sh",
        "-c",
        "echo out; echo err >&2",
    ])
    .ok();
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn stdin_and_terminal_match_runc() {
    require_stack("docker run -i / -t");
    for rt in RUNTIMES {
        // stdin through pipes, EOF reaches the process.
        let out = run_stdin(
            docker_bin(),
            &[
                "run",
                "--rm",
                "-i",
                "--runtime",
                rt,
                IMAGE,
                "sh",
                "-c",
                "cat; echo done",
            ],
            Some("line one\nline two\n"),
        );
        assert_eq!(out.code, 0, "{rt}: {out:?}");
        assert_eq!(out.stdout, "line one\nline two\ndone\n", "{rt}");

        // -t: the process has a terminal, output comes back with CRLF as from a tty.
        let out = docker(&[
            "run",
            "--rm",
            "-t",
            "--runtime",
            rt,
            IMAGE,
            "sh",
            "-c",
            "tty; exit 7",
        ]);
        assert_eq!(out.code, 7, "{rt}: {out:?}");
        assert!(out.stdout.starts_with("/dev/pts/"), "{rt}: {out:?}");
        assert!(out.stdout.ends_with("\r\n"), "{rt}: {out:?}");

        // -it from a real terminal (script gives docker a pty).
        let inner = format!(
            "{} run --rm -it --runtime {rt} {IMAGE} sh -c 'stty size; tty'",
            docker_bin()
        );
        let out = run("script", &["-qec", &inner, "/dev/null"]);
        assert_eq!(out.code, 0, "{rt}: {out:?}");
        assert!(out.stdout.contains("/dev/pts/"), "{rt}: {out:?}");
    }
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn exec_logs_and_signals_match_runc() {
    require_stack("docker exec/logs/kill");
    for rt in RUNTIMES {
        let name = unique("exec");
        let _c = Cleanup(vec![name.clone()]);
        let script = "trap 'echo got USR1' USR1; trap 'echo got TERM; exit 0' TERM; echo started; while true; do sleep 0.1; done";
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--runtime",
            rt,
            IMAGE,
            "sh",
            "-c",
            script,
        ])
        .ok();
        wait_until("container output", Duration::from_secs(15), || {
            docker(&["logs", &name]).stdout.contains("started")
        });

        let out = docker(&[
            "exec",
            &name,
            "sh",
            "-c",
            "echo from exec; echo to stderr >&2; exit 4",
        ]);
        assert_eq!(out.code, 4, "{rt}: {out:?}");
        assert_eq!(out.stdout, "from exec\n", "{rt}");
        assert_eq!(out.stderr, "to stderr\n", "{rt}");

        let out = docker(&["exec", "-t", &name, "tty"]);
        assert_eq!(out.code, 0, "{rt}: {out:?}");
        assert!(out.stdout.starts_with("/dev/pts/"), "{rt}: {out:?}");

        let out = run_stdin(docker_bin(), &["exec", "-i", &name, "cat"], Some("piped\n"));
        assert_eq!(out.stdout, "piped\n", "{rt}: {out:?}");

        let out = docker(&["exec", &name, "/no/such/binary"]);
        assert_ne!(out.code, 0, "{rt}: exec of a missing binary must fail");

        let ps = docker(&["top", &name]).ok();
        assert!(
            ps.stdout.contains("sleep") || ps.stdout.contains("sh"),
            "{rt}: {ps:?}"
        );

        docker(&["kill", "-s", "USR1", &name]).ok();
        wait_until("USR1 delivered", Duration::from_secs(10), || {
            docker(&["logs", &name]).stdout.contains("got USR1")
        });

        let out = docker(&["stop", "-t", "10", &name]).ok();
        assert_eq!(out.trimmed(), name);
        assert_eq!(
            inspect(&name, "{{.State.ExitCode}}"),
            "0",
            "{rt}: the trap exits 0 on TERM"
        );
        let logs = docker(&["logs", &name]).ok();
        assert!(logs.stdout.contains("got TERM"), "{rt}: {logs:?}");
    }
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn stop_falls_back_to_sigkill_like_runc() {
    require_stack("docker stop timeout");
    for rt in RUNTIMES {
        let name = unique("stop");
        let _c = Cleanup(vec![name.clone()]);
        // PID 1 without a TERM handler ignores SIGTERM: stop must escalate to SIGKILL.
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--runtime",
            rt,
            IMAGE,
            "sleep",
            "1000",
        ])
        .ok();
        let t = std::time::Instant::now();
        docker(&["stop", "-t", "1", &name]).ok();
        assert!(
            t.elapsed() >= Duration::from_secs(1),
            "{rt}: stop must wait the timeout"
        );
        assert_eq!(inspect(&name, "{{.State.ExitCode}}"), "137", "{rt}");
        assert_eq!(inspect(&name, "{{.State.Running}}"), "false", "{rt}");

        let name = unique("kill");
        let _k = Cleanup(vec![name.clone()]);
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--runtime",
            rt,
            IMAGE,
            "sleep",
            "1000",
        ])
        .ok();
        docker(&["kill", &name]).ok();
        let code = docker(&["wait", &name]).ok();
        assert_eq!(
            code.trimmed(),
            "137",
            "{rt}: docker kill is a SIGKILL death"
        );
    }
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn pause_stats_update_match_runc() {
    require_stack("docker pause/stats/update");
    for rt in RUNTIMES {
        let name = unique("pause");
        let _c = Cleanup(vec![name.clone()]);
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--runtime",
            rt,
            IMAGE,
            "sleep",
            "1000",
        ])
        .ok();

        docker(&["pause", &name]).ok();
        assert_eq!(inspect(&name, "{{.State.Status}}"), "paused", "{rt}");
        docker(&["unpause", &name]).ok();
        assert_eq!(inspect(&name, "{{.State.Status}}"), "running", "{rt}");

        let stats = docker(&[
            "stats",
            "--no-stream",
            "--format",
            "{{.MemUsage}}|{{.PIDs}}",
            &name,
        ])
        .ok();
        let (mem, pids) = stats.trimmed().split_once('|').expect("stats format");
        assert!(
            !mem.starts_with("0B"),
            "{rt}: memory usage must be reported: {mem}"
        );
        assert_eq!(pids, "1", "{rt}: {stats:?}");

        docker(&["update", "--memory", "64m", "--memory-swap", "64m", &name]).ok();
        let limit = docker(&[
            "exec",
            &name,
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
        ])
        .ok();
        assert_eq!(
            limit.trimmed(),
            "67108864",
            "{rt}: update must reach the cgroup"
        );
    }
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn oom_kill_is_reported_like_runc() {
    require_stack("docker OOM");
    for rt in RUNTIMES {
        let name = unique("oom");
        let _c = Cleanup(vec![name.clone()]);
        // The string doubles until the 16 MiB limit kills the shell.
        let out = docker(&[
            "run",
            "--name",
            &name,
            "--runtime",
            rt,
            "-m",
            "16m",
            "--memory-swap",
            "16m",
            IMAGE,
            "sh",
            "-c",
            "a=xxxxxxxxxxxxxxxx; while true; do a=$a$a; done",
        ]);
        assert_eq!(out.code, 137, "{rt}: {out:?}");
        assert_eq!(inspect(&name, "{{.State.OOMKilled}}"), "true", "{rt}");
    }
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn restart_on_failure_matches_runc() {
    require_stack("docker --restart");
    for rt in RUNTIMES {
        let name = unique("restart");
        let _c = Cleanup(vec![name.clone()]);
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--runtime",
            rt,
            "--restart",
            "on-failure:2",
            IMAGE,
            "sh",
            "-c",
            "echo run; exit 1",
        ])
        .ok();
        wait_until("two restarts", Duration::from_secs(30), || {
            inspect(
                &name,
                "{{.RestartCount}} {{.State.Running}} {{.State.Restarting}}",
            ) == "2 false false"
        });
        assert_eq!(inspect(&name, "{{.State.ExitCode}}"), "1", "{rt}");
        let logs = docker(&["logs", &name]).ok();
        assert_eq!(logs.stdout.matches("run").count(), 3, "{rt}: {logs:?}");
    }
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn published_port_serves_http() {
    require_stack("docker -p");
    for rt in RUNTIMES {
        let name = unique("http");
        let _c = Cleanup(vec![name.clone()]);
        let port = free_port();
        let publish = format!("127.0.0.1:{port}:80");
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--runtime",
            rt,
            "-p",
            &publish,
            IMAGE,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ])
        .ok();
        let body = http_get(port);
        assert!(
            body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
            "{rt}: {body}"
        );
        assert!(body.contains("hello from lightwhale"), "{rt}: {body}");
    }
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn two_containers_on_a_user_network_talk() {
    require_stack("docker user network");
    let network = Network::create("net");
    let net = network.0.clone();
    for rt in RUNTIMES {
        let server = unique("srv");
        let _c = Cleanup(vec![server.clone()]);
        docker(&[
            "run",
            "-d",
            "--name",
            &server,
            "--network",
            &net,
            "--runtime",
            rt,
            IMAGE,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ])
        .ok();
        let url = format!("http://{server}/");
        let mut last = None;
        let mut served = false;
        for _ in 0..50 {
            let out = docker(&[
                "run",
                "--rm",
                "--network",
                &net,
                "--runtime",
                rt,
                IMAGE,
                "wget",
                "-qO-",
                &url,
            ]);
            if out.code == 0 && out.stdout.contains("hello from lightwhale") {
                served = true;
                break;
            }
            last = Some(out);
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(served, "{rt}: client could not reach {url}: {last:?}");
    }
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn shim_netns_is_pinned_and_removed() {
    require_stack("pinned network namespace");
    let name = unique("netns");
    let _c = Cleanup(vec![name.clone()]);
    let id = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--runtime",
        LIGHTWHALE,
        IMAGE,
        "sleep",
        "1000",
    ])
    .ok()
    .trimmed()
    .to_string();
    let pin = format!("/run/lightwhale/netns/moby-{id}");
    assert!(
        std::path::Path::new(&pin).exists(),
        "the shim pins the netns at {pin}"
    );
    let pid = inspect(&name, "{{.State.Pid}}");
    let container_ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("ns link");
    let pinned_ino = std::fs::metadata(&pin)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("pin");
    assert!(
        container_ns
            .to_string_lossy()
            .contains(&pinned_ino.to_string()),
        "the container runs in the pinned namespace: {container_ns:?} vs inode {pinned_ino}"
    );
    let migrate = docker(&["exec", &name, "cat", "/proc/sys/net/ipv4/tcp_migrate_req"]).ok();
    assert_eq!(migrate.trimmed(), "1");
    docker(&["rm", "-f", &name]).ok();
    assert!(
        !std::path::Path::new(&pin).exists(),
        "rm must remove the pinned namespace"
    );
}
