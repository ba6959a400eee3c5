//! The runc driver against real runc and CRIU: create, start, checkpoint, restore, with
//! the shim's pipes and a pinned network namespace. A container checkpointed and restored
//! by the driver must serve again, keep its memory (a counter that never resets) and keep
//! writing to the same stdout pipe.

mod common;

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use lightwhale_engine::runc::{CheckpointOpts, CreateOpts, ProcessIo, RestoreOpts, Runc};
use lightwhale_engine::{netns, reaper};
use tokio::io::AsyncBufReadExt;

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe")
}

fn dup(fd: &OwnedFd) -> OwnedFd {
    fd.try_clone().expect("dup")
}

/// Reads "tick N" lines until one arrives; returns N.
async fn next_tick(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::pipe::Receiver>>,
) -> u64 {
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("a tick within 10 s")
        .expect("read stdout")
        .expect("stdout open");
    line.strip_prefix("tick ")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected output line {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, runc and CRIU: make test runs it"]
async fn checkpoint_and_restore_keep_memory_stdio_and_network() {
    common::require_privileges("runc driver checkpoint/restore");
    reaper::set_subreaper().expect("subreaper");
    reaper::install().expect("reaper");

    let dir = tempfile::tempdir().expect("tempdir");
    let pin = dir.path().join("netns");
    netns::create_pinned(&pin).expect("pinned netns");
    let bundle = common::busybox_bundle(
        dir.path(),
        &[
            "sh",
            "-c",
            "httpd -p 8080 -h /www; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done",
        ],
        Some(&pin),
    );
    let id = format!("lw-driver-{}", std::process::id());
    let runc = Runc::new(
        Runc::find_binary("runc").expect("runc"),
        dir.path().join("runc-root"),
        false,
    );

    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let io = ProcessIo {
        stdin: None,
        stdout: Some(dup(&out_w)),
        stderr: Some(dup(&err_w)),
    };
    let copts = CreateOpts {
        pid_file: bundle.join("init.pid"),
        log_file: bundle.join("log.json"),
        ..Default::default()
    };
    runc.create(&id, &bundle, &copts, io)
        .await
        .expect("runc create");
    runc.start(&id).await.expect("runc start");
    let mut lines = tokio::io::BufReader::new(
        tokio::net::unix::pipe::Receiver::from_owned_fd(out_r).expect("stdout receiver"),
    )
    .lines();
    let _keep_stderr = err_r;

    let before = next_tick(&mut lines).await;
    let page = common::http_get_in(&pin, 8080);
    assert!(
        page.contains("hello from lightwhale"),
        "served before checkpoint: {page}"
    );
    // Let the counter move on, and remember the last value seen.
    let mut last = before;
    for _ in 0..3 {
        last = next_tick(&mut lines).await;
    }

    let images = dir.path().join("images");
    let t = Instant::now();
    runc.checkpoint(
        &id,
        &CheckpointOpts {
            image_path: images.clone(),
            work_path: Some(dir.path().join("work")),
            log_file: bundle.join("checkpoint.json"),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| {
        let log = std::fs::read_to_string(dir.path().join("work/dump.log")).unwrap_or_default();
        panic!("checkpoint: {e}\n{}", tail(&log))
    });
    let dump_ms = t.elapsed().as_millis();
    assert!(
        images.join("inventory.img").is_file(),
        "CRIU wrote no images"
    );
    // Without --leave-running, runc removes the container once CRIU has dumped it.
    let gone = runc
        .state(&id)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        gone.contains("does not exist"),
        "the task must be gone after checkpoint: {gone}"
    );
    // Drain what was written before the dump; nothing may arrive while it is down.
    while let Ok(Ok(Some(l))) =
        tokio::time::timeout(Duration::from_millis(300), lines.next_line()).await
    {
        last = l
            .strip_prefix("tick ")
            .and_then(|n| n.parse().ok())
            .unwrap_or(last);
    }

    runc.delete(&id, true)
        .await
        .expect("delete the stopped container before restore");
    let t = Instant::now();
    let io = ProcessIo {
        stdin: None,
        stdout: Some(dup(&out_w)),
        stderr: Some(dup(&err_w)),
    };
    runc.restore(
        &id,
        &bundle,
        &RestoreOpts {
            image_path: images,
            work_path: Some(dir.path().join("work")),
            pid_file: bundle.join("init.pid"),
            log_file: bundle.join("restore.json"),
            detach: true,
            ..Default::default()
        },
        io,
    )
    .await
    .unwrap_or_else(|e| {
        let log = std::fs::read_to_string(dir.path().join("work/restore.log")).unwrap_or_default();
        panic!("restore: {e}\n{}", tail(&log))
    });
    let restore_ms = t.elapsed().as_millis();
    eprintln!("checkpoint {dump_ms} ms, restore {restore_ms} ms");

    let after = next_tick(&mut lines).await;
    assert_eq!(
        after,
        last + 1,
        "the counter must continue where it stopped (memory kept, same stdout pipe)"
    );
    let page = common::http_get_in(&pin, 8080);
    assert!(
        page.contains("hello from lightwhale"),
        "served after restore: {page}"
    );
    assert_eq!(runc.state(&id).await.expect("state").status, "running");

    runc.kill(&id, libc::SIGKILL, true).await.expect("kill");
    let pid: i32 = std::fs::read_to_string(bundle.join("init.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    while runc
        .state(&id)
        .await
        .map(|s| s.status != "stopped")
        .unwrap_or(false)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = pid;
    runc.delete(&id, true).await.expect("delete");
    netns::remove_pinned(&pin).expect("unpin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, runc and CRIU: make test runs it"]
async fn runc_errors_reach_the_caller() {
    common::require_privileges("runc driver errors");
    reaper::set_subreaper().expect("subreaper");
    reaper::install().expect("reaper");
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = common::busybox_bundle(dir.path(), &["/no/such/binary"], None);
    let runc = Runc::new(
        Runc::find_binary("runc").expect("runc"),
        dir.path().join("root"),
        false,
    );
    let id = format!("lw-bad-{}", std::process::id());
    let copts = CreateOpts {
        pid_file: bundle.join("init.pid"),
        log_file: bundle.join("log.json"),
        ..Default::default()
    };
    let r = runc
        .create(&id, &bundle, &copts, ProcessIo::default())
        .await;
    let _ = runc.delete(&id, true).await;
    let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.contains("/no/such/binary"),
        "runc's reason must reach the caller: {msg:?}"
    );

    let e = runc
        .state("no-such-container")
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("does not exist"), "{e}");
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}
