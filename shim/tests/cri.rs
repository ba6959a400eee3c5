//! Kubernetes' CRI end to end: pods with the runtime handler `lightwhale`, through
//! containerd's CRI plugin, with CNI networking, on the host's containerd 1.7 and on the
//! containerd 2.x beside it (`scripts/install-deps.sh`). Driven with `lightwhale-cri`,
//! crictl's commands and JSON files (no kubelet on this machine). Each scenario runs on
//! both; traffic goes only to the pods' own addresses, and every wait is bounded.

mod common;

use std::time::Duration;

use common::cri::{eventually, http_get, try_http_get, Cri, HANDLER};
use common::{lw_status, processes_of, sleep_now, wait_state};
use serde_json::json;

/// Each scenario, once per containerd.
macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {
        mod containerd_1_7 {
            $(
                #[test]
                #[ignore = "needs the real stack (containerd 1.7 with CRI, CNI, lightwhale-cri): make test runs it"]
                fn $scenario() {
                    super::$scenario(&super::Cri::containerd());
                }
            )*
        }
        mod containerd_2 {
            $(
                #[test]
                #[ignore = "needs the real stack (containerd 2.x beside 1.7, CRI, CNI, lightwhale-cri): make test runs it"]
                fn $scenario() {
                    super::$scenario(&super::Cri::containerd2());
                }
            )*
        }
    };
}

on_both!(
    pod_serves_execs_and_cleans_up,
    pod_sleeps_and_wakes_on_its_own_address,
    bad_pod_annotation_fails_runp,
    bad_container_annotation_fails_by_start,
);

const SERVE: Duration = Duration::from_secs(20);

/// A pod under lightwhale gets an address from CNI; its busybox httpd answers there; exec
/// works; stop, rm, stopp and rmp leave nothing behind (no process, no status file).
fn pod_serves_execs_and_cleans_up(cri: &Cri) {
    cri.require();
    let config = cri.pod_config("cri-serve", &[("lightwhale.io/idle-timeout", "1h")]);
    let name = config.name.clone();
    let pod = match cri.runp(config) {
        Ok(pod) => pod,
        Err(failed) => panic!("{}: runp failed: {:?}", cri.label, failed.out),
    };
    let status = pod.inspect();
    assert_eq!(status["status"]["state"], "SANDBOX_READY", "{status}");
    assert_eq!(status["status"]["runtimeHandler"], HANDLER, "{status}");
    let ip = pod.ip();
    assert!(
        ip.to_string().starts_with(cri.subnet_prefix),
        "{}: pod IP {ip} is not in lightwhale's CNI network ({}*)",
        cri.label,
        cri.subnet_prefix
    );
    let listed = cri.ok(&["pods", "-q", "--name", &format!("^{name}$")]);
    assert_eq!(listed.trimmed(), pod.id, "pods --name finds it");

    let id = pod.create("web", json!({})).unwrap_or_else(|out| {
        panic!("{}: create failed: {out:?}", cri.label);
    });
    cri.ok(&["start", &id]);
    let c = pod.container(&id);
    assert_eq!(c["status"]["state"], "CONTAINER_RUNNING", "{c}");
    // The shim is lightwhale's: it keeps a status record of the container.
    let record = lw_status("k8s.io", &id);
    assert!(
        record["state"] == "awake" || record["state"] == "created",
        "{}: no lightwhale record for {id}: {record}",
        cri.label
    );
    let listed = cri.ok(&["ps", "-q", "--pod", &pod.id]);
    assert_eq!(listed.trimmed(), id, "ps --pod lists the running container");

    let body = http_get(ip, 8080, SERVE);
    assert_eq!(
        body.as_deref().map(str::trim),
        Some("hello from lightwhale"),
        "{}: GET http://{ip}:8080/",
        cri.label
    );

    let out = cri.cri(&[
        "exec",
        "-s",
        &id,
        "sh",
        "-c",
        "cat /www/index.html; echo oops >&2; exit 3",
    ]);
    assert_eq!(out.code, 3, "exec exits with the command's status: {out:?}");
    assert_eq!(out.stdout.trim(), "hello from lightwhale", "{out:?}");
    assert_eq!(out.stderr.trim(), "oops", "{out:?}");
    let out = cri.ok(&["exec", "--timeout", "10", &id, "echo", "-n", "ok"]);
    assert_eq!(out.stdout, "ok");

    cri.ok(&["stop", "-t", "5", &id]);
    let c = pod.container(&id);
    assert_eq!(c["status"]["state"], "CONTAINER_EXITED", "{c}");
    assert!(
        try_http_get(ip, 8080).is_none(),
        "a stopped container still answers"
    );
    cri.ok(&["rm", &id]);
    let left = cri.ok(&["ps", "-a", "-q", "--pod", &pod.id]);
    assert_eq!(left.trimmed(), "", "rm removed the container");
    assert!(
        eventually(Duration::from_secs(10), || lw_status("k8s.io", &id)
            .is_null()),
        "the status record of {id} outlived rm"
    );

    cri.ok(&["stopp", &pod.id]);
    let status = pod.inspect();
    assert_eq!(status["status"]["state"], "SANDBOX_NOTREADY", "{status}");
    cri.ok(&["rmp", &pod.id]);
    let left = cri.ok(&["pods", "-q", "--name", &format!("^{name}$")]);
    assert_eq!(left.trimmed(), "", "rmp removed the pod");
    assert!(
        eventually(Duration::from_secs(10), || processes_of(&pod.id).is_empty()
            && processes_of(&id).is_empty()
            && lw_status("k8s.io", &pod.id).is_null()),
        "{}: processes or records of pod {} outlived rmp: {:?} {:?}",
        cri.label,
        pod.id,
        processes_of(&pod.id),
        lw_status("k8s.io", &pod.id)
    );
}

/// The container of a pod sleeps (checkpointed in the pod's network namespace, made by
/// CNI) and the first connection to the pod's address wakes it, state intact.
fn pod_sleeps_and_wakes_on_its_own_address(cri: &Cri) {
    cri.require();
    let config = cri.pod_config("cri-sleep", &[("lightwhale.io/idle-timeout", "1h")]);
    let pod = match cri.runp(config) {
        Ok(pod) => pod,
        Err(failed) => panic!("{}: runp failed: {:?}", cri.label, failed.out),
    };
    let ip = pod.ip();
    let id = pod
        .create("web", json!({}))
        .unwrap_or_else(|out| panic!("{}: create failed: {out:?}", cri.label));
    cri.ok(&["start", &id]);
    // State that only survives a restore with its memory: a file in the container's tmpfs.
    cri.ok(&["exec", "-s", &id, "sh", "-c", "echo kept > /dev/shm/mark"]);
    assert!(http_get(ip, 8080, SERVE).is_some(), "GET {ip}:8080");

    sleep_now(&id);
    wait_state("k8s.io", &id, "asleep", Duration::from_secs(20));
    let c = pod.container(&id);
    assert_eq!(
        c["status"]["state"], "CONTAINER_RUNNING",
        "CRI sees an asleep container as running: {c}"
    );
    assert!(processes_of(&id).is_empty(), "asleep, yet processes remain");

    let body = http_get(ip, 8080, SERVE);
    assert_eq!(
        body.as_deref().map(str::trim),
        Some("hello from lightwhale"),
        "{}: the wake on GET http://{ip}:8080/",
        cri.label
    );
    let s = wait_state("k8s.io", &id, "awake", Duration::from_secs(20));
    assert_eq!(s["wakes"], 1, "{s}");
    let out = cri.ok(&["exec", "-s", &id, "cat", "/dev/shm/mark"]);
    assert_eq!(out.stdout.trim(), "kept");
}

/// An invalid pod annotation fails runp, naming the annotation, and leaves no pod.
fn bad_pod_annotation_fails_runp(cri: &Cri) {
    cri.require();
    let config = cri.pod_config("cri-badpod", &[("lightwhale.io/idle-timeout", "soon")]);
    let name = config.name.clone();
    let failed = match cri.runp(config) {
        Ok(pod) => panic!(
            "{}: runp accepted lightwhale.io/idle-timeout=soon (pod {})",
            cri.label, pod.id
        ),
        Err(failed) => failed,
    };
    let out = &failed.out;
    assert!(
        out.stderr.contains("lightwhale.io/idle-timeout"),
        "{}: runp's error does not name the annotation: {out:?}",
        cri.label
    );
    assert!(
        out.stderr.contains("rpc error: code ="),
        "the gRPC status is shown: {out:?}"
    );
    assert!(
        eventually(Duration::from_secs(10), || cri
            .ok(&["pods", "-q", "--name", &format!("^{name}$")])
            .trimmed()
            .is_empty()),
        "{}: a failed runp left pod {name}",
        cri.label
    );
}

/// An invalid container annotation fails the container at create or start (containerd
/// makes the task at start), naming the annotation; the pod itself is unharmed.
fn bad_container_annotation_fails_by_start(cri: &Cri) {
    cri.require();
    let config = cri.pod_config("cri-badctr", &[]);
    let pod = match cri.runp(config) {
        Ok(pod) => pod,
        Err(failed) => panic!("{}: runp failed: {:?}", cri.label, failed.out),
    };
    let bad = json!({"annotations": {"lightwhale.io/lazy-pages": "sometimes"}});
    let failure = match pod.create("bad", bad) {
        Err(out) => out,
        Ok(id) => {
            let out = cri.cri(&["start", &id]);
            assert_ne!(
                out.code, 0,
                "{}: start accepted lightwhale.io/lazy-pages=sometimes",
                cri.label
            );
            let c = pod.container(&id);
            assert_ne!(c["status"]["state"], "CONTAINER_RUNNING", "{c}");
            out
        }
    };
    assert!(
        failure.stderr.contains("lightwhale.io/lazy-pages"),
        "{}: the error does not name the annotation: {failure:?}",
        cri.label
    );
    // The pod still serves a good container.
    let id = pod
        .create("good", json!({}))
        .unwrap_or_else(|out| panic!("{}: create failed: {out:?}", cri.label));
    cri.ok(&["start", &id]);
    assert!(
        http_get(pod.ip(), 8080, SERVE).is_some(),
        "{}: the pod no longer serves after a bad container",
        cri.label
    );
}
