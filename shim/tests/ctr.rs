//! containerd's own client: `ctr run --runtime io.containerd.lightwhale.v2`.

mod common;

use std::time::Duration;

use common::*;

const RUNTIME: &str = "io.containerd.lightwhale.v2";

#[test]
fn ctr_run_output_and_exit_code() {
    if !stack_or_skip("ctr run") {
        return;
    }
    let id = unique("ctr");
    let out = ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        CTR_IMAGE,
        &id,
        "sh",
        "-c",
        "echo hi from ctr; exit 3",
    ]);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.stdout.trim(), "hi from ctr", "{out:?}");
    assert_eq!(
        ctr(&["task", "ls", "-q"])
            .stdout
            .lines()
            .filter(|l| *l == id)
            .count(),
        0
    );
}

#[test]
fn ctr_detached_task_exec_kill() {
    if !stack_or_skip("ctr task") {
        return;
    }
    let id = unique("ctrd");
    let _g = CtrTask(id.clone());
    ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
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
    // lo must be up in the namespace the shim made, as runc would have it.
    let mut body = String::new();
    for attempt in 0..50 {
        let out = ctr(&[
            "task",
            "exec",
            "--exec-id",
            &format!("e{attempt}"),
            &id,
            "wget",
            "-qO-",
            "http://127.0.0.1:8080/",
        ]);
        if out.code == 0 {
            body = out.stdout;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        body.contains("hello from lightwhale"),
        "served inside its namespace: {body:?}"
    );
    let ps = ctr(&["task", "ps", &id]).ok();
    assert!(ps.stdout.lines().count() >= 2, "{ps:?}");
    // httpd is PID 1 without a TERM handler, so only SIGKILL ends it (as under runc).
    ctr(&["task", "kill", "-s", "SIGKILL", &id]).ok();
    wait_until("task stopped", Duration::from_secs(15), || {
        ctr(&["task", "ls"])
            .stdout
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("STOPPED"))
    });
    ctr(&["task", "rm", &id]).ok();
    ctr(&["container", "rm", &id]).ok();
    assert!(
        !std::path::Path::new(&format!("/run/lightwhale/netns/default-{id}")).exists(),
        "the pinned namespace goes with the task"
    );
}

#[test]
fn binary_log_uri_feeds_a_logging_binary() {
    if !stack_or_skip("ctr --log-uri binary://") {
        return;
    }
    // What nerdctl does for detached containers: a logging binary reading fd 3 and 4.
    let dir = tempfile::tempdir().expect("tempdir");
    let logger = dir.path().join("logger.sh");
    std::fs::write(
        &logger,
        "#!/bin/sh\nprintf '%s %s' \"$CONTAINER_NAMESPACE\" \"$CONTAINER_ID\" > \"$1.env\"\nexec 5>&-\ncat <&3 > \"$1.out\" &\ncat <&4 > \"$1.err\"\nwait\n",
    )
    .expect("logger");
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let base = dir.path().join("log");
    let uri = format!("binary://{}?{}", logger.display(), base.display());
    let id = unique("ctrlog");
    let _g = CtrTask(id.clone());
    ctr(&[
        "run",
        "-d",
        "--log-uri",
        &uri,
        "--runtime",
        RUNTIME,
        CTR_IMAGE,
        &id,
        "sh",
        "-c",
        "echo to-out; echo to-err >&2",
    ])
    .ok();
    let out = base.with_extension("out");
    let err = base.with_extension("err");
    wait_until(
        "the logger got both streams",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&out).unwrap_or_default() == "to-out\n"
                && std::fs::read_to_string(&err).unwrap_or_default() == "to-err\n"
        },
    );
    assert_eq!(
        std::fs::read_to_string(base.with_extension("env")).unwrap_or_default(),
        format!("default {id}")
    );
}
