//! Bad input reaches the client as a clear error, and the shim neither panics nor leaks.
//! These tests talk ttrpc to the shim directly, as containerd does, so they can send
//! what no well-behaved client sends (foreign runtime options, a missing bundle).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use containerd_shim_protos::api::{ConnectRequest, CreateTaskRequest, ShutdownRequest};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::{Client, TaskClient};
use containerd_shim_protos::ttrpc::context;

const SHIM: &str = "containerd-shim-lightwhale-v2";
const CONTAINERD: &str = "/run/containerd/containerd.sock";

/// containerd makes a `log` fifo in the bundle for the shim's log and reads it; so do we.
fn log_fifo(bundle: &Path) -> std::thread::JoinHandle<String> {
    let path = bundle.join("log");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .expect("mkfifo log");
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open log fifo");
    std::thread::spawn(move || {
        use std::io::Read;
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        let mut r = reader;
        // Ends when the test process exits; the text is for failure messages.
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text
    })
}

fn start_shim(bundle: &Path, ns: &str, id: &str) -> String {
    let _log = log_fifo(bundle);
    let out = Command::new(SHIM)
        .args(["-namespace", ns, "-id", id, "-address", CONTAINERD, "start"])
        .current_dir(bundle)
        .env("TTRPC_ADDRESS", format!("{CONTAINERD}.ttrpc"))
        .output()
        .expect("run shim start");
    assert!(
        out.status.success(),
        "shim start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn busybox_bundle(dir: &Path, args: &[&str]) {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir");
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).expect("sh");
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(dir)
        .output()
        .expect("runc spec");
    assert!(out.status.success());
    let path = dir.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("spec")).expect("json");
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = args.iter().map(|a| serde_json::Value::from(*a)).collect();
    std::fs::write(&path, serde_json::to_vec(&spec).expect("json")).expect("write");
}

async fn create_err(task: &TaskClient, req: CreateTaskRequest) -> String {
    match task
        .create(context::with_timeout(30_000_000_000), &req)
        .await
    {
        Ok(r) => panic!("create must fail, got pid {}", r.pid),
        Err(e) => format!("{e:?}"),
    }
}

#[tokio::test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
async fn bad_input_gets_clear_errors_and_the_shim_survives() {
    require_stack("shim bad input");
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(&bundle).expect("bundle");
    busybox_bundle(&bundle, &["/no/such/binary"]);
    let ns = "lightwhale-test";
    let id = unique("bad");
    let address = start_shim(&bundle, ns, &id);
    let client = Client::connect(&address).await.expect("connect to shim");
    let task = TaskClient::new(client);
    let base = CreateTaskRequest {
        id: id.clone(),
        bundle: bundle.display().to_string(),
        ..Default::default()
    };

    // Options meant for another runtime are refused, never decoded as runc options.
    let mut req = base.clone();
    req.options = MessageField::some(Any {
        type_url: "io.containerd.runhcs.v1.Options".into(),
        value: vec![1, 2, 3],
        ..Default::default()
    });
    let e = create_err(&task, req).await;
    assert!(
        e.contains("unsupported runtime options type") && e.contains("runhcs"),
        "{e}"
    );

    // A bundle that is not there.
    let mut req = base.clone();
    req.bundle = dir.path().join("missing").display().to_string();
    let e = create_err(&task, req).await;
    assert!(e.contains("config.json"), "{e}");

    // A spec that is not JSON.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).expect("mkdir");
    std::fs::write(broken.join("config.json"), "{\"ociVersion\": ").expect("write");
    let mut req = base.clone();
    req.bundle = broken.display().to_string();
    let e = create_err(&task, req).await;
    assert!(e.contains("not a valid OCI spec"), "{e}");

    // A spec runc rejects: runc's own reason comes through.
    let e = create_err(&task, base.clone()).await;
    assert!(
        e.contains("/no/such/binary"),
        "runc's reason must reach the client: {e}"
    );
    let pin = format!("/run/lightwhale/netns/{ns}-{id}");
    assert!(
        !Path::new(&pin).exists(),
        "a failed create leaves no pinned namespace behind"
    );

    // Still alive and answering.
    let r = task
        .connect(
            context::with_timeout(5_000_000_000),
            &ConnectRequest {
                id: id.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("shim still serves after errors");
    assert!(r.shim_pid > 0);
    let shim_pid = r.shim_pid as i32;
    let _ = task
        .shutdown(
            context::with_timeout(5_000_000_000),
            &ShutdownRequest {
                id: id.clone(),
                ..Default::default()
            },
        )
        .await;
    wait_until("shim exit", std::time::Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{shim_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{shim_pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
    });

    // The delete subcommand cleans up after a shim and reports a SIGKILL exit.
    let out = Command::new(SHIM)
        .args([
            "-namespace",
            ns,
            "-id",
            &id,
            "-address",
            CONTAINERD,
            "delete",
        ])
        .current_dir(&bundle)
        .env("TTRPC_ADDRESS", format!("{CONTAINERD}.ttrpc"))
        .output()
        .expect("shim delete");
    assert!(
        out.status.success(),
        "delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// containerd reads the task's exit status for a dead shim from what `delete` prints: an
/// answer lost on the way read as exit 0 (Docker showed a killed container as exited 0).
#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn delete_always_answers_with_the_sigkill_exit() {
    require_stack("shim delete answer");
    use containerd_shim_protos::protobuf::Message;
    let bundle = tempfile::tempdir().expect("bundle");
    for round in 0..40 {
        let out = Command::new(SHIM)
            .args([
                "-namespace",
                "lwtest",
                "-id",
                &format!("lw-delete-answer-{}", std::process::id()),
                "-address",
                CONTAINERD,
                "delete",
            ])
            .current_dir(bundle.path())
            .env("TTRPC_ADDRESS", format!("{CONTAINERD}.ttrpc"))
            .output()
            .expect("shim delete");
        assert!(out.status.success(), "round {round}: {out:?}");
        let answer =
            containerd_shim_protos::shim::shim::DeleteResponse::parse_from_bytes(&out.stdout)
                .expect("a DeleteResponse");
        assert_eq!(
            answer.exit_status,
            137,
            "round {round}: {} bytes on stdout",
            out.stdout.len()
        );
        assert!(answer.exited_at.seconds > 0, "round {round}");
    }
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn docker_reports_a_missing_binary_like_runc() {
    require_stack("docker bad spec");
    let mut codes = Vec::new();
    for rt in RUNTIMES {
        let out = docker(&["run", "--rm", "--runtime", rt, IMAGE, "/no/such/binary"]);
        assert!(out.stderr.contains("/no/such/binary"), "{rt}: {out:?}");
        codes.push(out.code);
    }
    assert_eq!(codes[0], codes[1], "same exit code under both runtimes");
    assert_eq!(codes[0], 127);
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn info_answers_with_runc_features() {
    require_stack("shim -info");
    let out = Command::new(SHIM)
        .arg("-info")
        .output()
        .expect("shim -info");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use containerd_shim_protos::protobuf::Message;
    let info =
        containerd_shim_protos::types::introspection::RuntimeInfo::parse_from_bytes(&out.stdout)
            .expect("RuntimeInfo protobuf");
    assert_eq!(info.name, "io.containerd.lightwhale.v2");
    let features: serde_json::Value =
        serde_json::from_slice(&info.features.value).expect("features JSON");
    assert!(features.get("ociVersionMin").is_some(), "{features}");
}
