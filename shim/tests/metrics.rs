//! `lightwhale metrics` against the real stack: one forced sleep and one wake by a
//! connection move the container's counters by exactly one, and its namespace's with it.
//!
//! Other tests run in parallel in the same namespace (moby), so exact figures are read
//! from this container's own series (`--per-container`); the namespace's totals are
//! checked to agree with the sum of the per-container series, and to move by at least
//! one. `LIGHTWHALE_BIN` names the `lightwhale` to test (default: the one on PATH).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

const NS: &str = "moby";

fn lightwhale_bin() -> String {
    std::env::var("LIGHTWHALE_BIN").unwrap_or_else(|_| "lightwhale".into())
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn bad<T>(line: &str) -> T {
    panic!("not a sample line: {line:?}")
}

/// The samples of a text exposition; a line that is not a comment or a well-formed
/// sample fails the test.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| bad(line));
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| bad(line)),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| bad(line));
                let mut labels = BTreeMap::new();
                // Values here (namespaces, ids, reasons) have no quotes or commas.
                for pair in body.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| bad(line));
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or_else(|| bad(line));
                    labels.insert(k.to_string(), v.to_string());
                }
                (name, labels)
            }
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line:?}"
        );
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

/// One `lightwhale metrics --once` in namespace moby, parsed.
fn scrape(per_container: bool) -> Vec<Sample> {
    let mut args = vec!["-n", NS, "metrics", "--once"];
    if per_container {
        args.push("--per-container");
    }
    let out = run(&lightwhale_bin(), &args).ok();
    parse(&out.stdout)
}

/// The value of `name` with exactly `labels`; 0 when there is no such series (a counter
/// that never moved, a state no container is in, per container).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
        .unwrap_or(0.0)
}

/// The series whose change the test asserts, with the labels beyond namespace (and id).
const MOVED: [(&str, &[(&str, &str)]); 4] = [
    ("lightwhale_sleeps_total", &[]),
    ("lightwhale_wakes_total", &[("trigger", "connection")]),
    ("lightwhale_sleep_duration_seconds_count", &[]),
    ("lightwhale_wake_duration_seconds_count", &[]),
];

/// `labels` with the namespace (and `id`) first.
fn with<'a>(id: Option<&'a str>, labels: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut l = vec![("namespace", NS)];
    if let Some(id) = id {
        l.push(("id", id));
    }
    l.extend_from_slice(labels);
    l
}

/// A namespace total and the same series summed over the containers, read back to back;
/// retried while the node changes in between (other tests), until they agree.
fn namespace_total_agrees(name: &str, labels: &[(&str, &str)]) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let total = value(&scrape(false), name, &with(None, labels));
        let per = scrape(true);
        let sum: f64 = per
            .iter()
            .filter(|s| {
                s.name == name
                    && s.labels.get("namespace").map(String::as_str) == Some(NS)
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                    && s.labels.len() == labels.len() + 2
            })
            .map(|s| s.value)
            .sum();
        if total == sum {
            return total;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?}: namespace total {total} never agreed with the per-container sum {sum}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The ids with per-container series in `samples`.
fn ids(samples: &[Sample]) -> std::collections::BTreeSet<String> {
    samples
        .iter()
        .filter_map(|s| s.labels.get("id").cloned())
        .collect()
}

#[test]
#[ignore = "needs the real stack (root, runc, CRIU, containerd, dockerd): make test runs it"]
fn one_sleep_and_one_wake_move_the_counters_by_one() {
    require_stack("lightwhale metrics");
    let (_c, port, id) = run_published("metrics", "1h", &[], &HTTPD);
    assert!(wait_get(port, Duration::from_secs(20)).contains("hello from lightwhale"));
    let mine = Some(id.as_str());

    let before = scrape(true);
    let ns_before = scrape(false);
    assert_eq!(
        value(
            &before,
            "lightwhale_containers",
            &with(mine, &[("state", "awake")])
        ),
        1.0,
        "awake before the sleep"
    );
    assert_eq!(
        value(
            &before,
            "lightwhale_containers",
            &with(mine, &[("state", "asleep")])
        ),
        0.0
    );

    sleep_now(&id);
    let asleep = scrape(true);
    let ns_asleep = scrape(false);
    assert_eq!(
        value(
            &asleep,
            "lightwhale_containers",
            &with(mine, &[("state", "asleep")])
        ),
        1.0,
        "asleep after `lightwhale sleep`"
    );
    assert_eq!(
        value(
            &asleep,
            "lightwhale_containers",
            &with(mine, &[("state", "awake")])
        ),
        0.0
    );
    assert!(
        value(
            &ns_asleep,
            "lightwhale_containers",
            &with(None, &[("state", "asleep")])
        ) >= 1.0
    );
    assert!(value(&asleep, "lightwhale_checkpoint_bytes", &with(mine, &[])) > 0.0);
    assert!(value(&asleep, "lightwhale_asleep_memory_bytes", &with(mine, &[])) > 0.0);

    let wakes_before = lw_status(NS, &id)["wakes"].as_u64().unwrap_or(0);
    let body = try_get(port, Duration::from_secs(20)).expect("a connection wakes it");
    assert!(body.contains("hello from lightwhale"), "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while lw_status(NS, &id)["wakes"].as_u64().unwrap_or(0) <= wakes_before {
        assert!(Instant::now() < deadline, "the wake was never recorded");
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = scrape(true);
    let ns_after = scrape(false);

    // This container: exactly one more of each.
    for (metric, labels) in MOVED {
        let l = with(mine, labels);
        let (b, a) = (value(&before, metric, &l), value(&after, metric, &l));
        assert_eq!(a - b, 1.0, "{metric}{l:?}: {b} -> {a}");
    }
    assert_eq!(
        value(
            &after,
            "lightwhale_containers",
            &with(mine, &[("state", "awake")])
        ),
        1.0
    );
    assert!(
        value(
            &after,
            "lightwhale_memory_freed_bytes_total",
            &with(mine, &[])
        ) > value(
            &before,
            "lightwhale_memory_freed_bytes_total",
            &with(mine, &[])
        )
    );
    let failed: f64 = after
        .iter()
        .filter(|s| s.name == "lightwhale_failures_total" && s.labels.get("id") == Some(&id))
        .map(|s| s.value)
        .sum();
    assert_eq!(failed, 0.0);

    // Every container seen both times: no counter of it fell (others' included).
    let both: Vec<String> = ids(&before).intersection(&ids(&after)).cloned().collect();
    for other in &both {
        for (metric, labels) in MOVED {
            let l = with(Some(other), labels);
            assert!(
                value(&after, metric, &l) >= value(&before, metric, &l),
                "{metric}{l:?} fell"
            );
        }
    }

    // The namespace: at least one more (others may sleep and wake meanwhile), unless a
    // kept record was pruned in between (more than 200 deleted containers on the node).
    let pruned = ids(&before).difference(&ids(&after)).count();
    for (metric, labels) in MOVED {
        let l = with(None, labels);
        let (b, a) = (value(&ns_before, metric, &l), value(&ns_after, metric, &l));
        if pruned == 0 {
            assert!(a >= b + 1.0, "{metric}{l:?}: {b} -> {a}");
        } else {
            eprintln!("{pruned} record(s) gone meanwhile: {metric} {b} -> {a} not compared");
        }
        let total = namespace_total_agrees(metric, labels);
        assert!(total >= 1.0, "{metric}{l:?}: {total}");
    }
}
