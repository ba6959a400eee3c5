//! Moving a sleeping container to another host, with two independent containerds as the
//! two hosts (1.7 at its usual socket, 2.x with its own root, state and socket): the
//! counter's value and a file written inside the container survive the move; a corrupt
//! or truncated archive, or one from another kernel, is refused with nothing installed
//! and the source untouched; the source is removed only once the target runs.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const NS: &str = "default";
const PY: &str = "docker.io/lightwhale-test/python:latest";
const C2: &str = "/run/lightwhale-containerd2/containerd.sock";

fn count(id: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = get_in_pinned_netns(NS, id);
        if let Ok(n) = out.stdout.trim().parse() {
            return n;
        }
        assert!(Instant::now() < deadline, "{id} does not answer: {out:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn import(file: &Path, id: &str, extra: &[&str]) -> Out {
    let mut args = vec![
        "import",
        file.to_str().expect("path"),
        "--address",
        C2,
        "--id",
        id,
    ];
    args.extend(extra);
    run("lightwhale", &args)
}

/// The templates on the node: an import that is refused must add none.
fn templates() -> Vec<String> {
    std::fs::read_dir("/var/lib/lightwhale/.templates")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Rewrites the archive `from` into `to` with `edit` applied to its meta.json and the
/// manifest's checksum of it recomputed: a sound archive saying something else.
fn edited(from: &Path, to: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path().to_str().expect("path");
    assert_eq!(
        run("tar", &["-xf", from.to_str().expect("path"), "-C", dir]).code,
        0
    );
    let meta = d.path().join("meta.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta).expect("meta")).expect("json");
    edit(&mut m);
    std::fs::write(&meta, m.to_string()).expect("write");
    let sum = run("sha256sum", &[meta.to_str().expect("path")]);
    let sum = sum
        .stdout
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_string();
    let manifest = d.path().join("manifest.json");
    let mut man: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).expect("manifest")).expect("json");
    man["files"]["meta.json"] = sum.into();
    std::fs::write(&manifest, man.to_string()).expect("write");
    let out = run("tar", &["-cf", to.to_str().expect("path"), "-C", dir, "."]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd 1.7 and 2.x): make test runs it"]
fn a_sleeping_container_moves_between_containerds_with_its_memory_and_files() {
    require_stack("move");
    let src = unique("lwt-mvsrc");
    let dst = unique("lwt-mvdst");
    let _src = Ctrd::ONE_SEVEN.task(&src);
    let _dst = Ctrd::TWO.task(&dst);
    let script = counter_script();
    let out = Ctrd::ONE_SEVEN.ctr(&[
        "run",
        "-d",
        "--runtime",
        "io.containerd.lightwhale.v2",
        "--annotation",
        "lightwhale.io/idle-timeout=1h",
        "--env",
        "PORT=8080",
        "--env",
        "MEMORY_MIB=16",
        PY,
        &src,
        "python3",
        "-c",
        &script,
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    for n in 1..=3 {
        assert_eq!(count(&src), n);
    }
    let out = Ctrd::ONE_SEVEN.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "w",
        &src,
        "sh",
        "-c",
        "echo written-before-the-move > /moved",
    ]);
    assert_eq!(out.code, 0, "{out:?}");

    let d = tempfile::tempdir().expect("tempdir");
    let archive = d.path().join("move.tar");
    let out = run(
        "lightwhale",
        &["export", &src, archive.to_str().expect("path")],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("sha256"), "{out:?}");
    assert_eq!(
        lw_status(NS, &src)["state"],
        "asleep",
        "put to sleep for its export"
    );
    let before = templates();

    // Damaged archives: refused, nothing installed, nothing created.
    let bytes = std::fs::read(&archive).expect("archive");
    let truncated = d.path().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let out = import(&truncated, &dst, &[]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("not a complete lightwhale export")
            || out.stderr.contains("incomplete"),
        "{out:?}"
    );
    let mut corrupt = bytes.clone();
    // In the middle of the page images: the tar stays readable, a checksum does not match.
    let at = bytes.len() / 2;
    for b in &mut corrupt[at..at + 64] {
        *b ^= 0x5a;
    }
    let corrupt_file = d.path().join("corrupt.tar");
    std::fs::write(&corrupt_file, &corrupt).expect("write");
    let out = import(&corrupt_file, &dst, &[]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("corrupt") || out.stderr.contains("not a complete"),
        "{out:?}"
    );
    let other_kernel = d.path().join("other-kernel.tar");
    edited(&archive, &other_kernel, |m| {
        m["kernel"] = "2.6.32-elsewhere".into()
    });
    let out = import(&other_kernel, &dst, &[]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("kernel 2.6.32-elsewhere"), "{out:?}");
    assert_eq!(templates(), before, "a refused import installs nothing");
    assert_eq!(
        lw_status(NS, &dst),
        serde_json::Value::Null,
        "nor creates anything"
    );
    assert_eq!(
        lw_status(NS, &src)["state"],
        "asleep",
        "the source is untouched"
    );

    // The move.
    let out = import(&archive, &dst, &["--remove-source"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("asleep"), "{out:?}");
    assert!(out.stdout.contains("removed the source"), "{out:?}");
    let s = lw_status(NS, &dst);
    assert_eq!(s["state"], "asleep", "{s}");
    assert_eq!(s["template"]["restored"], true, "{s}");
    assert_eq!(
        templates(),
        before,
        "the template it came through is gone with the move"
    );
    let info = Ctrd::ONE_SEVEN.ctr(&["containers", "info", &src]);
    assert_ne!(info.code, 0, "the source is removed: {info:?}");

    // It wakes on its first connection with its memory and its files.
    assert_eq!(count(&dst), 4);
    assert_eq!(lw_status(NS, &dst)["state"], "awake");
    let out = Ctrd::TWO.ctr(&["task", "exec", "--exec-id", "r", &dst, "cat", "/moved"]);
    assert_eq!(out.stdout.trim(), "written-before-the-move", "{out:?}");
    assert_eq!(count(&dst), 5);
}
