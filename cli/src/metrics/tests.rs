//! `lightwhale metrics` over status directories made with the status crate's own types:
//! the exposition is checked line by line by a strict parser (below) and the values
//! against what the records say.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lightwhale_status::{
    exited_path, status_path, write_status, ConfigView, ContainerStatus, NotSleeping, State,
};

use super::*;

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: each family's type, and the samples in order.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || (colon && f == ':'))
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || (colon && x == ':'))
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// `{a="x",b="y\"z"}` (after the name) into labels and the rest of the line.
fn parse_labels(mut s: &str, line: &str) -> (BTreeMap<String, String>, String) {
    let mut labels = BTreeMap::new();
    s = s.strip_prefix('{').expect("{");
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return (labels, rest.to_string());
        }
        let eq = s
            .find('=')
            .unwrap_or_else(|| panic!("no = in labels: {line}"));
        let key = &s[..eq];
        assert!(is_name(key, false), "bad label name {key:?}: {line}");
        s = s[eq + 1..]
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("unquoted label value: {line}"));
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => panic!("bad escape {other:?}: {line}"),
                },
                Some((i, '"')) => break i,
                Some((_, '\n')) => panic!("raw newline in a label value: {line}"),
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value: {line}"),
            }
        };
        assert!(
            labels.insert(key.to_string(), value).is_none(),
            "label {key} twice: {line}"
        );
        s = &s[end + 1..];
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else {
            assert!(s.starts_with('}'), "expected , or }} in labels: {line}");
        }
    }
}

/// Parses the Prometheus text format (0.0.4) strictly: any line it does not understand,
/// a sample outside its declared family, a series given twice, a histogram whose buckets
/// are not cumulative or do not end at `+Inf` = `_count`: each fails the test.
fn parse(text: &str) -> Exposition {
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut exp = Exposition::default();
    let mut current: Option<(String, String)> = None;
    let mut seen = std::collections::HashSet::new();
    let mut helped = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(is_name(name, true) && !help.is_empty(), "{line}");
            assert!(helped.insert(name.to_string()), "HELP twice: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name type");
            assert!(is_name(name, true), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                exp.types
                    .insert(name.to_string(), kind.to_string())
                    .is_none(),
                "TYPE twice: {line}"
            );
            assert!(helped.contains(name), "HELP before TYPE: {line}");
            current = Some((name.to_string(), kind.to_string()));
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        assert!(is_name(name, true), "bad metric name: {line}");
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..], line)
        } else {
            (BTreeMap::new(), line[name_end..].to_string())
        };
        let mut words = rest.split(' ');
        assert_eq!(words.next(), Some(""), "one space before the value: {line}");
        let value = words
            .next()
            .and_then(parse_value)
            .unwrap_or_else(|| panic!("bad value: {line}"));
        assert!(words.next().is_none(), "no timestamps expected: {line}");
        let (family, kind) = current
            .as_ref()
            .unwrap_or_else(|| panic!("sample before any TYPE: {line}"));
        let fits = match kind.as_str() {
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s) == Some(family)),
            _ => name == family,
        };
        assert!(fits, "{name} outside its family {family} ({kind})");
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter without _total: {line}");
            assert!(value >= 0.0, "negative counter: {line}");
        }
        assert!(
            seen.insert(format!("{name}{labels:?}")),
            "series twice: {line}"
        );
        exp.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    check_histograms(&exp);
    exp
}

fn check_histograms(exp: &Exposition) {
    for (family, kind) in &exp.types {
        if kind != "histogram" {
            continue;
        }
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in exp
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let mut l = s.labels.clone();
            let le = l.remove("le").expect("le on a bucket");
            series
                .entry(format!("{l:?}"))
                .or_default()
                .push((parse_value(&le).expect("le value"), s.value));
        }
        assert!(!series.is_empty(), "{family} has buckets");
        for (labels, buckets) in series {
            for w in buckets.windows(2) {
                assert!(w[0].0 < w[1].0, "{family}{labels}: le increasing");
                assert!(w[0].1 <= w[1].1, "{family}{labels}: cumulative");
            }
            let last = buckets.last().expect("a bucket");
            assert_eq!(last.0, f64::INFINITY, "{family}{labels}: ends at +Inf");
            let count = exp
                .samples
                .iter()
                .find(|s| {
                    s.name == format!("{family}_count") && format!("{:?}", s.labels) == labels
                })
                .expect("_count");
            assert_eq!(count.value, last.1, "{family}{labels}: +Inf = _count");
            assert!(
                exp.samples
                    .iter()
                    .any(|s| s.name == format!("{family}_sum")
                        && format!("{:?}", s.labels) == labels),
                "{family}{labels}: _sum"
            );
        }
    }
}

impl Exposition {
    /// The value of series `name` with exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{self:#?}"))
    }
}

/// A status directory pair in a temporary directory.
struct Node {
    tmp: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        Node {
            tmp: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn live(&self) -> PathBuf {
        self.tmp.path().join("containers")
    }
    fn exited(&self) -> PathBuf {
        self.tmp.path().join("exited")
    }
    fn put(&self, s: &ContainerStatus) {
        write_status(&status_path(&self.live(), &s.namespace, &s.id), s).expect("write");
    }
    fn retire(&self, s: &ContainerStatus) {
        write_status(&exited_path(&self.exited(), &s.namespace, &s.id), s).expect("write");
    }
    fn scrape_with(&self, exporter: &mut Exporter) -> Exposition {
        let (live, exited) = (self.live(), self.exited());
        let dirs = Dirs {
            live: &live,
            exited: &exited,
        };
        let text = exporter.scrape(&dirs).expect("scrape");
        parse(&text)
    }
    fn scrape(&self, opts: Options) -> Exposition {
        self.scrape_with(&mut Exporter::new(opts))
    }
}

fn container(ns: &str, id: &str, state: State) -> ContainerStatus {
    let mut s = ContainerStatus::new(ns, id, ConfigView::default());
    s.state = state;
    s
}

/// Sleeps and wakes as the engine counts them.
fn slept(s: &mut ContainerStatus, seconds: &[f64], freed: u64) {
    for t in seconds {
        s.sleeps += 1;
        s.counters.sleep_seconds.observe(*t);
        s.counters.memory_freed_bytes_total += freed;
    }
}

fn woke(s: &mut ContainerStatus, trigger: &str, seconds: &[f64]) {
    for t in seconds {
        s.wakes += 1;
        s.counters.wake_seconds.observe(*t);
        lightwhale_status::Counters::bump(&mut s.counters.wakes_by_trigger, trigger);
    }
}

fn write_file(path: &Path, len: usize) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, vec![0u8; len]).expect("write");
}

/// Two containers asleep in namespace a (one with readable images, one without), one
/// awake in b, a deleted one in a (its kept record), and a stale kept record of a live
/// container that must not count twice.
fn fleet(node: &Node) {
    let images = node.tmp.path().join("images");
    let mut c1 = container("a", "c1", State::Asleep);
    c1.config.image_dir = images.join("a/c1");
    write_file(&c1.config.image_dir.join("images/pages-1.img"), 3000);
    write_file(&c1.config.image_dir.join("work/dump.log"), 100);
    c1.pages_bytes = Some(2900);
    c1.memory_freed_bytes = Some(10_000);
    slept(&mut c1, &[0.04, 0.3], 10_000);
    woke(&mut c1, "connection", &[0.06]);
    lightwhale_status::Counters::bump(&mut c1.counters.failures, "dump");
    node.put(&c1);

    let mut c2 = container("a", "c2", State::Asleep);
    c2.config.image_dir = images.join("a/not-there");
    c2.pages_bytes = Some(700);
    c2.memory_freed_bytes = Some(5_000);
    slept(&mut c2, &[0.009], 5_000);
    node.put(&c2);

    let mut c3 = container("b", "c3", State::Awake);
    c3.not_sleeping = Some(NotSleeping::Active {
        quiet_since_unix_ms: 0,
        idle_timeout_ms: 60_000,
    });
    slept(&mut c3, &[0.08], 1_000);
    woke(&mut c3, "exec", &[0.2]);
    woke(&mut c3, "checkpoint", &[20.0]);
    lightwhale_status::Counters::bump(&mut c3.counters.refusals, "in_flight");
    c3.probes_answered = 4;
    node.put(&c3);

    let mut gone = container("a", "gone", State::Exited);
    slept(&mut gone, &[0.05, 0.05, 0.05], 2_000);
    woke(&mut gone, "connection", &[0.07, 0.07, 0.07]);
    node.retire(&gone);

    // A kept record of c1 (an id in both places): the live one wins.
    node.retire(&container("a", "c1", State::Exited));
}

#[test]
fn values_over_a_small_fleet() {
    let node = Node::new();
    fleet(&node);
    let m = node.scrape(Options::default());
    let a = ("namespace", "a");
    let b = ("namespace", "b");

    // States: live containers only; each namespace shows every state.
    assert_eq!(
        m.value("lightwhale_containers", &[a, ("state", "asleep")]),
        2.0
    );
    assert_eq!(
        m.value("lightwhale_containers", &[a, ("state", "awake")]),
        0.0
    );
    assert_eq!(
        m.value("lightwhale_containers", &[a, ("state", "exited")]),
        0.0
    );
    assert_eq!(
        m.value("lightwhale_containers", &[b, ("state", "awake")]),
        1.0
    );
    assert_eq!(
        m.value("lightwhale_containers", &[b, ("state", "waking")]),
        0.0
    );

    // Counters: the deleted container's too, the stale duplicate of c1 not.
    assert_eq!(m.value("lightwhale_sleeps_total", &[a]), 6.0);
    assert_eq!(m.value("lightwhale_sleeps_total", &[b]), 1.0);
    assert_eq!(
        m.value("lightwhale_wakes_total", &[a, ("trigger", "connection")]),
        4.0
    );
    assert_eq!(
        m.value("lightwhale_wakes_total", &[a, ("trigger", "exec")]),
        0.0
    );
    assert_eq!(
        m.value("lightwhale_wakes_total", &[b, ("trigger", "exec")]),
        1.0
    );
    assert_eq!(
        m.value("lightwhale_wakes_total", &[b, ("trigger", "checkpoint")]),
        1.0,
        "a trigger with a space reads as a label value in snake case"
    );
    assert_eq!(
        m.value("lightwhale_failures_total", &[a, ("kind", "dump")]),
        1.0
    );
    assert_eq!(
        m.value("lightwhale_failures_total", &[a, ("kind", "restore")]),
        0.0
    );
    assert_eq!(
        m.value("lightwhale_failures_total", &[b, ("kind", "lazy_fill")]),
        0.0
    );
    assert_eq!(
        m.value(
            "lightwhale_sleep_refusals_total",
            &[b, ("reason", "in_flight")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "lightwhale_sleep_refusals_total",
            &[a, ("reason", "in_flight")]
        ),
        None,
        "refusal reasons are many: only those that happened are shown"
    );
    assert_eq!(
        m.value("lightwhale_memory_freed_bytes_total", &[a]),
        31_000.0
    );
    assert_eq!(
        m.value("lightwhale_memory_freed_bytes_total", &[b]),
        1_000.0
    );
    assert_eq!(m.value("lightwhale_probes_answered_total", &[b]), 4.0);

    // Gauges of asleep containers: c1's images on disk (3100), c2's pages (no dir).
    assert_eq!(m.value("lightwhale_checkpoint_bytes", &[a]), 3_800.0);
    assert_eq!(m.value("lightwhale_checkpoint_bytes", &[b]), 0.0);
    assert_eq!(m.value("lightwhale_asleep_memory_bytes", &[a]), 15_000.0);
    assert_eq!(
        m.value("lightwhale_not_sleeping", &[b, ("reason", "active")]),
        1.0
    );
    assert_eq!(
        m.get("lightwhale_not_sleeping", &[a, ("reason", "active")]),
        None
    );

    // Sleep durations in a: 0.04, 0.3 (c1), 0.009 (c2), 3 x 0.05 (deleted): cumulative.
    let bucket = |le: &str| m.value("lightwhale_sleep_duration_seconds_bucket", &[a, ("le", le)]);
    assert_eq!(bucket("0.01"), 1.0);
    assert_eq!(bucket("0.025"), 1.0);
    assert_eq!(
        bucket("0.05"),
        5.0,
        "0.05 falls in le=0.05 (bounds are inclusive)"
    );
    assert_eq!(bucket("0.1"), 5.0);
    assert_eq!(bucket("0.25"), 5.0);
    assert_eq!(bucket("0.5"), 6.0);
    assert_eq!(bucket("10"), 6.0);
    assert_eq!(bucket("+Inf"), 6.0);
    assert_eq!(
        m.value("lightwhale_sleep_duration_seconds_count", &[a]),
        6.0
    );
    let sum = m.value("lightwhale_sleep_duration_seconds_sum", &[a]);
    assert!((sum - (0.04 + 0.3 + 0.009 + 0.15)).abs() < 1e-9, "{sum}");
    // Wakes in b: 0.2 and 20 s (above the last bound: only in +Inf).
    let wb = |le: &str| m.value("lightwhale_wake_duration_seconds_bucket", &[b, ("le", le)]);
    assert_eq!(
        (wb("0.1"), wb("0.25"), wb("10"), wb("+Inf")),
        (0.0, 1.0, 1.0, 2.0)
    );
    assert_eq!(m.value("lightwhale_wake_duration_seconds_count", &[b]), 2.0);
    assert_eq!(m.value("lightwhale_wake_duration_seconds_count", &[a]), 4.0);

    // Nothing unreadable here; no id label anywhere.
    assert_eq!(
        m.value("lightwhale_status_read_errors", &[("reason", "unreadable")]),
        0.0
    );
    assert!(m.samples.iter().all(|s| !s.labels.contains_key("id")));
    assert_eq!(m.types["lightwhale_sleeps_total"], "counter");
    assert_eq!(m.types["lightwhale_containers"], "gauge");
    assert_eq!(m.types["lightwhale_wake_duration_seconds"], "histogram");
}

#[test]
fn per_container_series_carry_the_id_and_sum_to_the_namespace() {
    let node = Node::new();
    fleet(&node);
    let m = node.scrape(Options {
        per_container: true,
        namespace: None,
    });
    let id = |i| [("namespace", "a"), ("id", i)];
    assert_eq!(m.value("lightwhale_sleeps_total", &id("c1")), 2.0);
    assert_eq!(m.value("lightwhale_sleeps_total", &id("gone")), 3.0);
    let mut c1_asleep = id("c1").to_vec();
    c1_asleep.push(("state", "asleep"));
    assert_eq!(m.value("lightwhale_containers", &c1_asleep), 1.0);
    c1_asleep[2] = ("state", "awake");
    assert_eq!(
        m.get("lightwhale_containers", &c1_asleep),
        None,
        "only the state it is in"
    );
    assert_eq!(m.value("lightwhale_checkpoint_bytes", &id("c1")), 3_100.0);
    assert_eq!(
        m.value("lightwhale_wake_duration_seconds_count", &id("gone")),
        3.0
    );
    // Every series but the read errors names its container; the sums agree with the
    // per-namespace exposition.
    for s in &m.samples {
        assert!(
            s.name == "lightwhale_status_read_errors" || s.labels.contains_key("id"),
            "{s:?}"
        );
    }
    let total: f64 = m
        .samples
        .iter()
        .filter(|s| s.name == "lightwhale_sleeps_total" && s.labels["namespace"] == "a")
        .map(|s| s.value)
        .sum();
    assert_eq!(total, 6.0);
}

#[test]
fn a_namespace_filter_shows_that_namespace_only() {
    let node = Node::new();
    fleet(&node);
    let m = node.scrape(Options {
        per_container: false,
        namespace: Some("b".into()),
    });
    assert!(m
        .samples
        .iter()
        .all(|s| s.labels.get("namespace").is_none_or(|n| n == "b")));
    assert_eq!(
        m.value("lightwhale_sleeps_total", &[("namespace", "b")]),
        1.0
    );
}

#[test]
fn bad_and_newer_files_are_counted_not_fatal() {
    let node = Node::new();
    fleet(&node);
    std::fs::write(node.live().join("a/torn.json"), b"{\"state\": ").expect("write");
    std::fs::write(
        node.exited().join("a/future.json"),
        br#"{"schema": 9, "id": "future", "state": "dozing"}"#,
    )
    .expect("write");
    let mut damaged = container("b", "damaged", State::Awake);
    damaged.counters.wake_seconds.counts = vec![1, 2, 3];
    damaged.counters.wake_seconds.count = 6;
    damaged.sleeps = 1;
    node.put(&damaged);
    let m = node.scrape(Options::default());
    let err = |r| m.value("lightwhale_status_read_errors", &[("reason", r)]);
    assert_eq!(err("unreadable"), 1.0);
    assert_eq!(err("newer_schema"), 1.0);
    assert_eq!(err("damaged_histogram"), 1.0);
    // The damaged record still counts where it can; its histogram is left out.
    assert_eq!(
        m.value("lightwhale_sleeps_total", &[("namespace", "b")]),
        2.0
    );
    assert_eq!(
        m.value(
            "lightwhale_wake_duration_seconds_count",
            &[("namespace", "b")]
        ),
        2.0
    );
    assert_eq!(
        m.value("lightwhale_sleeps_total", &[("namespace", "a")]),
        6.0
    );
}

#[test]
fn wakes_an_older_shim_did_not_count_by_trigger_are_unknown() {
    let node = Node::new();
    let mut old = container("moby", "old", State::Awake);
    old.sleeps = 3;
    old.wakes = 3;
    node.put(&old);
    let m = node.scrape(Options::default());
    let ns = ("namespace", "moby");
    assert_eq!(
        m.value("lightwhale_wakes_total", &[ns, ("trigger", "unknown")]),
        3.0
    );
    assert_eq!(m.value("lightwhale_sleeps_total", &[ns]), 3.0);
    assert_eq!(
        m.value("lightwhale_sleep_duration_seconds_count", &[ns]),
        0.0
    );
}

#[test]
fn counters_do_not_fall_while_the_server_runs() {
    let node = Node::new();
    fleet(&node);
    let mut server = Exporter::new(Options::default());
    let a = [("namespace", "a")];
    let first = node.scrape_with(&mut server);
    assert_eq!(first.value("lightwhale_sleeps_total", &a), 6.0);

    // The deleted container's record is pruned: a fresh read falls, the server does not.
    std::fs::remove_file(exited_path(&node.exited(), "a", "gone")).expect("prune");
    assert_eq!(
        node.scrape(Options::default())
            .value("lightwhale_sleeps_total", &a),
        3.0
    );
    let second = node.scrape_with(&mut server);
    assert_eq!(second.value("lightwhale_sleeps_total", &a), 6.0);
    assert_eq!(
        second.value("lightwhale_wakes_total", &[a[0], ("trigger", "connection")]),
        4.0
    );
    assert_eq!(
        second.value("lightwhale_sleep_duration_seconds_count", &a),
        6.0
    );

    // c2 is deleted and its id used again by a new container: the old counts stay.
    let fresh = container("a", "c2", State::Awake);
    node.put(&fresh);
    let third = node.scrape_with(&mut server);
    assert_eq!(third.value("lightwhale_sleeps_total", &a), 6.0);
    let mut again = fresh.clone();
    slept(&mut again, &[0.02], 1);
    node.put(&again);
    let fourth = node.scrape_with(&mut server);
    assert_eq!(fourth.value("lightwhale_sleeps_total", &a), 7.0);
    assert_eq!(
        fourth.value(
            "lightwhale_sleep_duration_seconds_bucket",
            &[a[0], ("le", "0.025")]
        ),
        2.0
    );
}

#[test]
fn an_empty_node_is_a_valid_exposition() {
    let node = Node::new();
    let m = node.scrape(Options::default());
    assert_eq!(
        m.value(
            "lightwhale_status_read_errors",
            &[("reason", "newer_schema")]
        ),
        0.0
    );
    assert!(m.get("lightwhale_sleeps_total", &[]).is_none());
    // A namespace whose containers are all gone still shows its series, at 0.
    std::fs::create_dir_all(node.live().join("idle")).expect("mkdir");
    let m = node.scrape(Options::default());
    let idle = ("namespace", "idle");
    assert_eq!(
        m.value("lightwhale_containers", &[idle, ("state", "asleep")]),
        0.0
    );
    assert_eq!(m.value("lightwhale_sleeps_total", &[idle]), 0.0);
    assert_eq!(
        m.value("lightwhale_failures_total", &[idle, ("kind", "restore")]),
        0.0
    );
    assert_eq!(
        m.value("lightwhale_wake_duration_seconds_count", &[idle]),
        0.0
    );
    assert_eq!(m.value("lightwhale_checkpoint_bytes", &[idle]), 0.0);
    // Per container, an empty namespace has no series.
    let m = node.scrape(Options {
        per_container: true,
        namespace: None,
    });
    assert!(m.get("lightwhale_sleeps_total", &[idle]).is_none());
}

#[test]
fn label_values_from_records_are_tamed() {
    assert_eq!(label_value("checkpoint request"), "checkpoint_request");
    assert_eq!(label_value("Lazy-Fill"), "lazy_fill");
    assert_eq!(label_value(""), "unknown");
    assert_eq!(label_value(&"x".repeat(500)).len(), 64);
    assert_eq!(label_value("é\"}\n"), "____");
}

#[test]
fn the_parser_here_refuses_what_prometheus_would() {
    for bad in [
        "x 1\n",                                                  // no TYPE
        "# HELP x h\n# TYPE x counter\nx 1\n",                    // counter without _total
        "# HELP x h\n# TYPE x gauge\nx{a=\"1} 1\n",               // unterminated
        "# HELP x h\n# TYPE x gauge\nx 1\nx 2\n",                 // twice
        "# HELP x h\n# TYPE x gauge\ny 1\n",                      // outside its family
        "# HELP x h\n# TYPE x histogram\nx_bucket{le=\"1\"} 2\nx_bucket{le=\"+Inf\"} 1\nx_sum 1\nx_count 1\n",
    ] {
        assert!(std::panic::catch_unwind(|| parse(bad)).is_err(), "{bad}");
    }
}
