//! Templates under Docker: `lightwhale template create` checkpoints a warmed container
//! that keeps serving; containers run with `lightwhale.io/template` start from it with its
//! memory and its filesystem changes, each with its own address and state from there on;
//! one that does not fit, or names no template, starts cold and `lightwhale inspect` says
//! why; a bad name is refused at `docker run`; `template rm` leaves the clones running.

mod common;

use std::time::Duration;

use common::*;

const NS: &str = "moby";

fn counter(extra_env: &[&str]) -> Vec<String> {
    python_counter_args(extra_env, 32)
}

fn count(port: u16) -> u64 {
    wait_get(port, Duration::from_secs(30))
        .trim()
        .parse()
        .expect("a count")
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn clones_start_from_a_template_and_serve_on_their_own() {
    require_stack("templates");
    let tpl = unique("warm");
    let _tpl = TemplateGone(tpl.clone());
    let args = counter(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_src, src_port, src_id) = run_published("lwt-tplsrc", "1h", &[], &args);
    for n in 1..=3 {
        assert_eq!(count(src_port), n);
    }
    // A change to its filesystem travels with the template.
    let name = inspect(&src_id, "{{.Name}}");
    let name = name.trim_start_matches('/');
    let out = docker(&[
        "exec",
        name,
        "sh",
        "-c",
        "echo seeded-$$ > /seed && cat /seed",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let seed = out.stdout.trim().to_string();

    let out = run("lightwhale", &["template", "create", &tpl, "--from", name]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("template {tpl}: from")),
        "{out:?}"
    );
    assert_eq!(count(src_port), 4, "the source serves on with its state");
    let ls = run("lightwhale", &["template", "ls"]);
    assert!(ls.stdout.lines().any(|l| l.starts_with(&tpl)), "{ls:?}");
    let meta: serde_json::Value =
        serde_json::from_str(&run("lightwhale", &["template", "inspect", &tpl]).stdout)
            .expect("inspect is JSON");
    assert_eq!(meta["source_id"], src_id.as_str(), "{meta}");
    assert!(meta["fs_changes_bytes"].as_u64() > Some(0), "{meta}");

    let ann = format!("lightwhale.io/template={tpl}");
    // Started together: each shim starts while the other restores (a shim starting sweeps
    // image directories it finds no container for: a restore must not lose its files).
    let ((_c1, p1, id1), (_c2, p2, id2)) = std::thread::scope(|s| {
        let one = s.spawn(|| run_published("lwt-tplc1", "1h", &["--annotation", &ann], &args));
        let two = run_published("lwt-tplc2", "1h", &["--annotation", &ann], &args);
        (one.join().expect("first clone"), two)
    });
    for (id, port) in [(&id1, p1), (&id2, p2)] {
        // Its first answer comes from the template's memory: the count goes on.
        assert_eq!(count(port), 4, "{id}");
        let s = lw_status(NS, id);
        assert_eq!(s["template"]["restored"], true, "{s}");
        assert_eq!(inspect(id, "{{.State.Status}}"), "running");
        let out = docker(&["exec", id, "cat", "/seed"]);
        assert_eq!(out.stdout.trim(), seed, "the template's file: {out:?}");
        assert_ne!(
            inspect(id, "{{.NetworkSettings.IPAddress}}"),
            inspect(&src_id, "{{.NetworkSettings.IPAddress}}"),
            "its own address"
        );
    }
    // Each on its own from here.
    assert_eq!(count(p1), 5);
    assert_eq!(count(p1), 6);
    assert_eq!(count(p2), 5);
    assert_eq!(count(src_port), 5);

    // A clone sleeps and wakes like any container.
    let out = run("lightwhale", &["sleep", &id1]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(count(p1), 7);

    // Removing the template leaves its clones running.
    let out = run("lightwhale", &["template", "rm", &tpl]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(count(p2), 6);
    let out = docker(&["stop", "-t", "1", &id2]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(inspect(&id2, "{{.State.Status}}"), "exited");
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn a_container_that_cannot_use_its_template_starts_cold_and_says_why() {
    require_stack("templates");
    let tpl = unique("warmfit");
    let _tpl = TemplateGone(tpl.clone());
    let args = counter(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_src, src_port, src_id) = run_published("lwt-tplfit", "1h", &[], &args);
    assert_eq!(count(src_port), 1);
    let out = run(
        "lightwhale",
        &["template", "create", &tpl, "--from", &src_id],
    );
    assert_eq!(out.code, 0, "{out:?}");

    // Another environment: not the template's service.
    let ann = format!("lightwhale.io/template={tpl}");
    let other = counter(&["MODE=other"]);
    let other: Vec<&str> = other.iter().map(String::as_str).collect();
    let (_o, port, id) = run_published("lwt-tplother", "1h", &["--annotation", &ann], &other);
    assert_eq!(count(port), 1, "a cold start counts from 1");
    let s = lw_status(NS, &id);
    assert_eq!(s["template"]["restored"], false, "{s}");
    let why = s["template"]["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("does not fit") && why.contains("MODE=other"),
        "{s}"
    );

    // No such template.
    let (_m, port, id) = run_published(
        "lwt-tplnone",
        "1h",
        &["--annotation", "lightwhale.io/template=no-such-template"],
        &args,
    );
    assert_eq!(count(port), 1);
    let s = lw_status(NS, &id);
    let why = s["template"]["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("lightwhale template create no-such-template"),
        "{s}"
    );

    // A name that cannot be one is refused before anything runs.
    assert_annotation_refused("lightwhale.io/template=../etc", "expected a template name");
    // And a template is not taken twice under one name, nor of a missing container.
    let out = run(
        "lightwhale",
        &["template", "create", &tpl, "--from", &src_id],
    );
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("exists already"), "{out:?}");
}
