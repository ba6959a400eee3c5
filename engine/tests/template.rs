//! Templates through the engine alone, against real runc and CRIU: a warmed counter is
//! checkpointed while it keeps running; new containers start by restoring it, each with
//! its own namespace and its own copy of the memory (the count goes on from the
//! template's, then diverges); a container that does not fit the template starts cold
//! and says why.

mod common;

use std::time::Duration;

use lightwhale_engine::config::{LazyMode, SleepConfig};
use lightwhale_engine::State;

use common::service::{count, get, start_in, Service};

async fn clone_of(source: &Service, name: &str, template: &str, env: &[&str]) -> Service {
    clone_with(source, name, template, env, LazyMode::Auto).await
}

async fn clone_with(
    source: &Service,
    name: &str,
    template: &str,
    env: &[&str],
    lazy: LazyMode,
) -> Service {
    let template = template.to_string();
    start_in(
        name,
        16,
        move |c: &mut SleepConfig| {
            c.template = Some(template);
            c.lazy_pages = lazy;
        },
        "network-lock skip\n",
        env,
        Some(&source.templates),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, runc and CRIU: make test runs it"]
async fn clones_start_from_a_template_with_its_memory_and_then_diverge() {
    let a = start_in("tplsrc", 16, |_| {}, "network-lock skip\n", &[], None).await;
    for n in 1..=3 {
        assert_eq!(count(&a), n);
    }
    let digest = get(&a, "/digest").expect("digest");
    let meta = a.c.make_template("warm").await.expect("template");
    assert_eq!(a.c.state(), State::Awake, "the source runs on");
    assert_eq!(count(&a), 4, "and keeps its state");
    assert!(
        meta.pages_bytes >= 16 << 20,
        "its 16 MiB are in it: {meta:?}"
    );
    assert_eq!(meta.source_id, a.c.id);
    let again =
        a.c.make_template("warm")
            .await
            .expect_err("a name is taken once");
    assert!(again.to_string().contains("exists already"), "{again}");

    // The post-wake hook runs in a clone once it has started: the place to re-seed.
    let b1 = start_in(
        "tplc1",
        16,
        |c: &mut SleepConfig| {
            c.template = Some("warm".into());
            c.post_wake_exec = Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo reseeded > /reseeded".into(),
            ]);
        },
        "network-lock skip\n",
        &[],
        Some(&a.templates),
    )
    .await;
    // Post-copy: its memory comes from the template's images as it touches it.
    let b2 = clone_with(&a, "tplc2", "warm", &[], LazyMode::On).await;
    assert!(b2.c.status().template.is_some_and(|u| u.lazy));
    // Until its fill ends it reads the template's images (`template rm` refuses meanwhile).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while b2.c.status().template.is_some_and(|u| u.reads_images()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the clone's fill never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b2.c.status().template.is_some_and(|u| u.fill_ms.is_some()));
    for b in [&b1, &b2] {
        let used =
            b.c.status()
                .template
                .expect("the template's use is recorded");
        assert!(used.restored, "{used:?}");
        assert!(used.restore_ms.is_some_and(|ms| ms > 0.0), "{used:?}");
        assert_ne!(b.c.init.pid(), a.c.init.pid());
        assert_eq!(
            get(b, "/digest").as_deref(),
            Some(digest.as_str()),
            "the template's memory"
        );
    }
    let marker = b1.c.bundle.join("rootfs/reseeded");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the post-wake hook did not run in the clone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The count goes on from the template's (3), in each clone on its own.
    assert_eq!(count(&b1), 4);
    assert_eq!(count(&b1), 5);
    assert_eq!(count(&b2), 4);
    assert_eq!(count(&a), 5);
    assert_eq!(count(&b1), 6);

    // A clone sleeps and wakes as any container, with its own state.
    b1.c.sleep().await.expect("a clone sleeps");
    assert_eq!(b1.c.state(), State::Asleep);
    assert_eq!(count(&b1), 7);
    assert_eq!(b1.c.state(), State::Awake);

    // A container that does not fit starts cold, and says why.
    let other = clone_of(&a, "tplenv", "warm", &["MODE=other"]).await;
    let used = other.c.status().template.expect("recorded");
    assert!(!used.restored, "{used:?}");
    let why = used.reason.unwrap_or_default();
    assert!(
        why.contains("does not fit") && why.contains("MODE=other"),
        "{why}"
    );
    assert_eq!(count(&other), 1, "a cold start: its own count");

    let missing = clone_of(&a, "tplnone", "nope", &[]).await;
    let used = missing.c.status().template.expect("recorded");
    assert!(!used.restored);
    assert!(
        used.reason
            .as_deref()
            .is_some_and(|r| r.contains("lightwhale template create nope")),
        "{used:?}"
    );
    assert_eq!(count(&missing), 1);
    drop(a);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(count(&b2), 5, "a clone outlives its source");
}
