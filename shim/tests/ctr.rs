//! containerd's own client: `ctr run --runtime io.containerd.lightwhale.v2`.

mod common;

use std::time::Duration;

use common::*;

const RUNTIME: &str = "io.containerd.lightwhale.v2";

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn ctr_run_output_and_exit_code() {
    require_stack("ctr run");
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
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn ctr_detached_task_exec_kill() {
    require_stack("ctr task");
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
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn binary_log_uri_feeds_a_logging_binary() {
    require_stack("ctr --log-uri binary://");
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

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn containers_of_one_pod_share_one_shim() {
    require_stack("pod grouping");
    // containerd's CRI groups a pod's containers by this annotation; so does the shim.
    let sandbox = unique("pod");
    let group = format!("io.kubernetes.cri.sandbox-id={sandbox}");
    let ids = [unique("podc"), unique("podc")];
    let _g: Vec<CtrTask> = ids.iter().map(|id| CtrTask(id.clone())).collect();
    for id in &ids {
        ctr(&[
            "run",
            "-d",
            "--annotation",
            &group,
            "--runtime",
            RUNTIME,
            CTR_IMAGE,
            id,
            "sleep",
            "1000",
        ])
        .ok();
    }
    let address = |id: &str| {
        std::fs::read_to_string(format!(
            "/run/containerd/io.containerd.runtime.v2.task/default/{id}/address"
        ))
        .unwrap_or_default()
    };
    let first = address(&ids[0]);
    assert!(!first.is_empty(), "containerd recorded the shim's address");
    assert_eq!(
        first,
        address(&ids[1]),
        "both containers are served by one shim"
    );
    let tasks = ctr(&["task", "ls"]).ok();
    for id in &ids {
        assert!(
            tasks
                .stdout
                .lines()
                .any(|l| l.starts_with(id.as_str()) && l.contains("RUNNING")),
            "{tasks:?}"
        );
    }
    // Stopping one leaves the other, in the same shim, running.
    ctr(&["task", "kill", "-s", "SIGKILL", &ids[0]]).ok();
    wait_until("first task stopped", Duration::from_secs(15), || {
        ctr(&["task", "ls"])
            .stdout
            .lines()
            .any(|l| l.starts_with(ids[0].as_str()) && l.contains("STOPPED"))
    });
    ctr(&["task", "rm", &ids[0]]).ok();
    let tasks = ctr(&["task", "ls"]).ok();
    assert!(
        tasks
            .stdout
            .lines()
            .any(|l| l.starts_with(ids[1].as_str()) && l.contains("RUNNING")),
        "{tasks:?}"
    );
}
