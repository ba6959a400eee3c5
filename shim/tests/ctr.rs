//! containerd's own client: `ctr run --runtime io.containerd.lightwhale.v2`, on the host's
//! containerd 1.7 and on the 2.x beside it: the same shim, unchanged, for both.

mod common;

use std::time::Duration;

use common::*;

const RUNTIME: &str = "io.containerd.lightwhale.v2";

/// Each scenario, once per containerd.
macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {
        mod containerd_1_7 {
            $(
                #[test]
                #[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
                fn $scenario() {
                    super::$scenario(super::Ctrd::ONE_SEVEN);
                }
            )*
        }
        mod containerd_2 {
            $(
                #[test]
                #[ignore = "needs the real stack (containerd 2.x beside 1.7): make test runs it"]
                fn $scenario() {
                    super::$scenario(super::Ctrd::TWO);
                }
            )*
        }
    };
}

on_both!(
    ctr_run_output_and_exit_code,
    ctr_detached_task_exec_kill,
    binary_log_uri_feeds_a_logging_binary,
    containers_of_one_pod_share_one_shim,
    a_sleeping_task_wakes_on_a_connection_from_its_namespace,
);

fn ctr_run_output_and_exit_code(c: Ctrd) {
    require_stack("ctr run");
    let id = unique("ctr");
    let out = c.ctr(&[
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
        c.ctr(&["task", "ls", "-q"])
            .stdout
            .lines()
            .filter(|l| *l == id)
            .count(),
        0
    );
}

fn ctr_detached_task_exec_kill(c: Ctrd) {
    require_stack("ctr task");
    let id = unique("ctrd");
    let _g = c.task(&id);
    c.ctr(&[
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
        let out = c.ctr(&[
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
    let ps = c.ctr(&["task", "ps", &id]).ok();
    assert!(ps.stdout.lines().count() >= 2, "{ps:?}");
    // httpd is PID 1 without a TERM handler, so only SIGKILL ends it (as under runc).
    c.ctr(&["task", "kill", "-s", "SIGKILL", &id]).ok();
    wait_until("task stopped", Duration::from_secs(15), || {
        c.ctr(&["task", "ls"])
            .stdout
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("STOPPED"))
    });
    c.ctr(&["task", "rm", &id]).ok();
    c.ctr(&["container", "rm", &id]).ok();
    assert!(
        !std::path::Path::new(&format!("/run/lightwhale/netns/default-{id}")).exists(),
        "the pinned namespace goes with the task"
    );
}

fn binary_log_uri_feeds_a_logging_binary(c: Ctrd) {
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
    let _g = c.task(&id);
    c.ctr(&[
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

fn containers_of_one_pod_share_one_shim(c: Ctrd) {
    require_stack("pod grouping");
    // containerd's CRI groups a pod's containers by this annotation; so does the shim.
    let sandbox = unique("pod");
    let group = format!("io.kubernetes.cri.sandbox-id={sandbox}");
    let ids = [unique("podc"), unique("podc")];
    let _g: Vec<CtrdTask> = ids.iter().map(|id| c.task(id)).collect();
    for id in &ids {
        c.ctr(&[
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
        std::fs::read_to_string(format!("{}/default/{id}/address", c.tasks)).unwrap_or_default()
    };
    let first = address(&ids[0]);
    assert!(!first.is_empty(), "containerd recorded the shim's address");
    assert_eq!(
        first,
        address(&ids[1]),
        "both containers are served by one shim"
    );
    let tasks = c.ctr(&["task", "ls"]).ok();
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
    c.ctr(&["task", "kill", "-s", "SIGKILL", &ids[0]]).ok();
    wait_until("first task stopped", Duration::from_secs(15), || {
        c.ctr(&["task", "ls"])
            .stdout
            .lines()
            .any(|l| l.starts_with(ids[0].as_str()) && l.contains("STOPPED"))
    });
    c.ctr(&["task", "rm", &ids[0]]).ok();
    let tasks = c.ctr(&["task", "ls"]).ok();
    assert!(
        tasks
            .stdout
            .lines()
            .any(|l| l.starts_with(ids[1].as_str()) && l.contains("RUNNING")),
        "{tasks:?}"
    );
}

/// A task run by ctr sleeps, and a connection from inside its network namespace (the one
/// the shim made) wakes it.
fn a_sleeping_task_wakes_on_a_connection_from_its_namespace(c: Ctrd) {
    require_stack("ctr task sleeps and wakes");
    let id = unique("ctrsleep");
    let _g = c.task(&id);
    c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
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
    assert!(processes_of(&id).is_empty(), "{}: asleep", c.label);
    let out = get_in_pinned_netns("default", &id);
    assert_eq!(out.code, 0, "{}: {out:?}", c.label);
    assert!(out.stdout.contains("hello from lightwhale"), "{out:?}");
    assert_eq!(lw_status("default", &id)["state"], "awake");
    let tasks = c.ctr(&["task", "ls"]).ok();
    assert!(
        tasks
            .stdout
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("RUNNING")),
        "{}: {tasks:?}",
        c.label
    );
}
