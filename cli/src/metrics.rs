//! `lightwhale metrics`: the node's sleeps and wakes in the Prometheus text exposition
//! format (version 0.0.4), for Prometheus to scrape (`--listen`, see [`crate::serve`]) or
//! for a textfile collector (`--once`).
//!
//! It reads what the shims publish, the status files under
//! `/run/lightwhale/containers/<ns>/<id>.json` and the kept records of deleted containers
//! under `/run/lightwhale/exited/`, afresh on each scrape. It never talks to a shim, so
//! it is in no wake path: a scrape cannot wake, delay or hold a container.
//!
//! Counters are sums over the containers' own running totals
//! ([`lightwhale_status::Counters`]); deleted containers keep counting through their
//! kept records, so a counter does not fall when a container is deleted. It does fall
//! when a kept record is pruned (the newest [`lightwhale_status::EXITED_KEEP`] are kept)
//! or the node reboots (the records are on tmpfs); a server remembers what the records it
//! saw disappear had counted, so its counters never fall while it runs (see
//! [`Exporter`]). Labels are bounded: namespace, state, trigger, kind, reason; a
//! container's id only with `--per-container`.
//!
//! Past 600 lines as one file on purpose: the reading of the records (`Snapshot`) and the
//! families it is encoded into (`Collector`) change together, metric by metric; its tests
//! live in `metrics/tests.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;

use anyhow::Result;
use lightwhale_status::{ContainerStatus, State, DURATION_BUCKETS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::store::{self, Entry, Scan};
use crate::Dirs;

/// Where `lightwhale metrics` listens by default (loopback: expose it on purpose).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// The `Content-Type` of what [`Exporter::scrape`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What the engine counts in `Counters::failures`; each is shown (at 0 when it never
/// happened) so that `rate()` sees a failure's first occurrence too.
const FAILURE_KINDS: [&str; 5] = ["dump", "hook", "restore", "lazy_fill", "no_memory"];

/// What wakes a container (the engine's `Trigger`, as label values), shown at 0 too.
const TRIGGERS: [&str; 7] = [
    "connection",
    "exec",
    "signal",
    "pause",
    "checkpoint",
    "request",
    "pod",
];

/// Every state, in the order shown. The match below makes a new state (`dozing`) a
/// compile error here until it is listed.
fn every_state() -> [State; 8] {
    const ALL: [State; 8] = [
        State::Created,
        State::Awake,
        State::Dozing,
        State::Paused,
        State::Sleeping,
        State::Asleep,
        State::Waking,
        State::Exited,
    ];
    for s in ALL {
        match s {
            State::Created
            | State::Awake
            | State::Dozing
            | State::Paused
            | State::Sleeping
            | State::Asleep
            | State::Waking
            | State::Exited => {}
        }
    }
    ALL
}

/// How `lightwhale metrics` reads the node.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Add an `id` label to every series: one series per container (high cardinality).
    pub per_container: bool,
    /// Only this containerd namespace.
    pub namespace: Option<String>,
}

/// What one series is about: a namespace, or with `--per-container` one container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key {
    namespace: String,
    id: Option<String>,
}

type Labels = Vec<(&'static str, String)>;

impl Key {
    /// The series' labels: `namespace`, `id` (per container), then `extra`.
    fn labels(&self, extra: &[(&'static str, &str)]) -> Labels {
        let mut l = vec![("namespace", self.namespace.clone())];
        if let Some(id) = &self.id {
            l.push(("id", id.clone()));
        }
        l.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        l
    }
}

/// A duration histogram over [`DURATION_BUCKETS`]: per-bucket counts (not cumulative),
/// the last one above the last bound.
#[derive(Debug, Clone, PartialEq)]
struct Hist {
    counts: [u64; DURATION_BUCKETS.len() + 1],
    sum: f64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            counts: [0; DURATION_BUCKETS.len() + 1],
            sum: 0.0,
        }
    }
}

impl Hist {
    /// From a status record's histogram; None when its buckets are not ours (a damaged
    /// record): merging them would misplace observations.
    fn from_status(h: &lightwhale_status::Histogram) -> Option<Hist> {
        let mut out = Hist::default();
        if h.counts.is_empty() && h.count == 0 {
            return Some(out); // never observed: the record leaves the buckets out
        }
        if h.counts.len() != out.counts.len() {
            return None;
        }
        out.counts.copy_from_slice(&h.counts);
        out.sum = h.sum_seconds;
        Some(out)
    }

    /// Observations: the sum of the buckets, so that `_count` always equals the `+Inf`
    /// bucket, as Prometheus requires.
    fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn add(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(o.counts) {
            *a += b;
        }
        self.sum += o.sum;
    }
}

/// The running totals of one container, or their sum over several.
#[derive(Debug, Clone, Default, PartialEq)]
struct Tally {
    sleeps: u64,
    wakes: BTreeMap<String, u64>,
    failures: BTreeMap<String, u64>,
    refusals: BTreeMap<String, u64>,
    sleep_hist: Hist,
    wake_hist: Hist,
    memory_freed: u64,
    probes: u64,
    dozes: u64,
    thaws: BTreeMap<String, u64>,
}

impl Tally {
    /// A container's totals; `false` when one of its histograms was damaged (and left
    /// out).
    fn from_status(s: &ContainerStatus) -> (Tally, bool) {
        let c = &s.counters;
        let labelled = |m: &BTreeMap<String, u64>| {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                *out.entry(label_value(k)).or_insert(0) += v;
            }
            out
        };
        let mut wakes = labelled(&c.wakes_by_trigger);
        // Wakes counted before the shim counted them by trigger (an older shim).
        let unknown = s.wakes.saturating_sub(wakes.values().sum());
        if unknown > 0 {
            *wakes.entry("unknown".into()).or_insert(0) += unknown;
        }
        let sleep_hist = Hist::from_status(&c.sleep_seconds);
        let wake_hist = Hist::from_status(&c.wake_seconds);
        let intact = sleep_hist.is_some() && wake_hist.is_some();
        let t = Tally {
            sleeps: s.sleeps,
            wakes,
            failures: labelled(&c.failures),
            refusals: labelled(&c.refusals),
            sleep_hist: sleep_hist.unwrap_or_default(),
            wake_hist: wake_hist.unwrap_or_default(),
            memory_freed: c.memory_freed_bytes_total,
            probes: s.probes_answered,
            dozes: s.dozes,
            thaws: labelled(&c.thaws_by_trigger),
        };
        (t, intact)
    }

    fn add(&mut self, o: &Tally) {
        self.sleeps += o.sleeps;
        for (mine, theirs) in [
            (&mut self.wakes, &o.wakes),
            (&mut self.failures, &o.failures),
            (&mut self.refusals, &o.refusals),
            (&mut self.thaws, &o.thaws),
        ] {
            for (k, v) in theirs {
                *mine.entry(k.clone()).or_insert(0) += v;
            }
        }
        self.sleep_hist.add(&o.sleep_hist);
        self.wake_hist.add(&o.wake_hist);
        self.memory_freed += o.memory_freed;
        self.probes += o.probes;
        self.dozes += o.dozes;
    }

    /// Whether any count is below `earlier`'s: not the same container any more (an id
    /// used again after a delete), since a container's own counts never go down.
    fn fell_below(&self, earlier: &Tally) -> bool {
        let sum = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
        self.sleeps < earlier.sleeps
            || sum(&self.wakes) < sum(&earlier.wakes)
            || sum(&self.failures) < sum(&earlier.failures)
            || sum(&self.refusals) < sum(&earlier.refusals)
            || self.sleep_hist.count() < earlier.sleep_hist.count()
            || self.wake_hist.count() < earlier.wake_hist.count()
            || self.memory_freed < earlier.memory_freed
            || self.probes < earlier.probes
            || self.dozes < earlier.dozes
            || sum(&self.thaws) < sum(&earlier.thaws)
    }
}

/// A label value from a record's map key (a trigger, a failure kind, a reason): lower
/// case letters, digits and `_` (`checkpoint request` reads `checkpoint_request`), at
/// most 64 characters, so a damaged record cannot make odd or huge label values.
fn label_value(raw: &str) -> String {
    let v: String = raw
        .chars()
        .take(64)
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect();
    if v.is_empty() {
        "unknown".into()
    } else {
        v
    }
}

/// Bytes in the files under `dir` (not following links; apparent sizes, as the engine's
/// `image-budget` counts them); None when `dir` cannot be read.
fn bytes_under(dir: &Path) -> Option<u64> {
    if dir.as_os_str().is_empty() {
        return None;
    }
    let top = std::fs::read_dir(dir).ok()?;
    let mut total = 0;
    let mut stack = vec![top];
    while let Some(entries) = stack.pop() {
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    if let Ok(d) = std::fs::read_dir(e.path()) {
                        stack.push(d);
                    }
                }
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    Some(total)
}

/// Everything one exposition shows, gathered from one read of the status directories.
#[derive(Debug, Default)]
struct Snapshot {
    /// Live containers by state.
    containers: BTreeMap<Key, BTreeMap<&'static str, u64>>,
    /// Live containers not asleep, by the kind of reason.
    not_sleeping: BTreeMap<Key, BTreeMap<&'static str, u64>>,
    /// Checkpoint images of asleep containers.
    checkpoint_bytes: BTreeMap<Key, u64>,
    /// Memory asleep containers used before they slept: what sleeping saves now.
    asleep_memory: BTreeMap<Key, u64>,
    /// Dozing containers' memory: `before` their doze (resident), and `now` (resident,
    /// plus their swapped pages as zram holds them compressed).
    dozing_memory: BTreeMap<Key, BTreeMap<&'static str, u64>>,
    /// Counters, deleted containers included.
    tallies: BTreeMap<Key, Tally>,
    /// Files not read, by reason.
    read_errors: BTreeMap<&'static str, u64>,
}

/// Reads the status directories for `lightwhale metrics`: one [`Exporter::scrape`] per
/// exposition.
///
/// It remembers, between scrapes, each container's counts as last read: when a record
/// disappears (an exited record pruned, a delete whose record could not be kept) or a
/// container id comes back as a new container with lower counts, the counts the old one
/// had are kept in a per-namespace sum, so the namespace's counters never fall while the
/// exporter runs. When it restarts they start from the records on disk again: one counter
/// reset, which `rate()` and `increase()` handle. (Per-container series need none of
/// this: a deleted container's series simply ends.)
#[derive(Debug, Default)]
pub struct Exporter {
    opts: Options,
    /// Each container's counts at the last scrape (not with `per_container`).
    last: HashMap<(String, String), Tally>,
    /// What containers no longer on disk had counted, by namespace.
    retired: BTreeMap<String, Tally>,
    /// Warnings already printed (each is printed once, not on every scrape).
    warned: HashSet<String>,
}

impl Exporter {
    pub fn new(opts: Options) -> Exporter {
        Exporter {
            opts,
            ..Default::default()
        }
    }

    /// Reads the status directories and returns one exposition. Fails only when a
    /// directory cannot be listed at all (e.g. permission denied): a scrape must not look
    /// like a node without containers then. A file written by a newer shim is named on
    /// stderr (once) and counted in `lightwhale_status_read_errors`.
    pub fn scrape(&mut self, dirs: &Dirs) -> Result<String> {
        // Live first: a shim retires a record by writing the exited one, then removing
        // the live one, so read in this order a container is seen at least once.
        let live = store::scan(dirs.live)?;
        let exited = store::scan(dirs.exited)?;
        for w in live.warnings.iter().chain(&exited.warnings) {
            if self.warned.insert(w.clone()) {
                eprintln!("lightwhale: {w}");
            }
        }
        Ok(self.snapshot(&live, &exited).encode())
    }

    fn snapshot(&mut self, live: &Scan, exited: &Scan) -> Snapshot {
        let wanted = |e: &&Entry| {
            self.opts
                .namespace
                .as_deref()
                .is_none_or(|n| n == e.namespace)
        };
        let mut snap = Snapshot::default();
        snap.read_errors
            .insert("unreadable", (live.unreadable + exited.unreadable) as u64);
        snap.read_errors.insert(
            "newer_schema",
            (live.warnings.len() + exited.warnings.len()) as u64,
        );
        snap.read_errors.insert("damaged_histogram", 0);
        let key = |e: &Entry| Key {
            namespace: e.namespace.clone(),
            id: self.opts.per_container.then(|| e.id.clone()),
        };

        // Every namespace known on the node shows its series, at 0 when idle, so that a
        // namespace's series do not come and go with its containers.
        if !self.opts.per_container {
            let known = live.namespaces.iter().chain(&exited.namespaces);
            for ns in known.filter(|n| self.opts.namespace.as_ref().is_none_or(|w| w == *n)) {
                let k = Key {
                    namespace: ns.clone(),
                    id: None,
                };
                let states = snap.containers.entry(k.clone()).or_default();
                for st in every_state() {
                    states.entry(st.as_str()).or_insert(0);
                }
                snap.checkpoint_bytes.entry(k.clone()).or_insert(0);
                snap.asleep_memory.entry(k.clone()).or_insert(0);
                let dozing = snap.dozing_memory.entry(k.clone()).or_default();
                dozing.insert("before", 0);
                dozing.insert("now", 0);
                snap.tallies.entry(k).or_default();
            }
        }

        // Gauges: the live containers as they are now.
        let live_ids: HashSet<(&str, &str)> = live
            .entries
            .iter()
            .map(|e| (e.namespace.as_str(), e.id.as_str()))
            .collect();
        for e in live.entries.iter().filter(wanted) {
            let k = key(e);
            let s = &e.status;
            *snap
                .containers
                .entry(k.clone())
                .or_default()
                .entry(s.state.as_str())
                .or_insert(0) += 1;
            if let (Some(why), false) = (&s.not_sleeping, s.state == State::Exited) {
                *snap
                    .not_sleeping
                    .entry(k.clone())
                    .or_default()
                    .entry(why.kind())
                    .or_insert(0) += 1;
            }
            if let (State::Dozing, Some(d)) = (s.state, &s.doze) {
                let m = snap.dozing_memory.entry(k.clone()).or_default();
                *m.entry("before").or_insert(0) += d.rss_before_bytes;
                *m.entry("now").or_insert(0) +=
                    d.rss_after_bytes + d.swap_compressed_bytes.unwrap_or(d.swap_bytes);
            }
            if s.state == State::Asleep {
                let bytes = bytes_under(&s.config.image_dir)
                    .or(s.pages_bytes)
                    .unwrap_or(0);
                *snap.checkpoint_bytes.entry(k.clone()).or_insert(0) += bytes;
                *snap.asleep_memory.entry(k).or_insert(0) += s.memory_freed_bytes.unwrap_or(0);
            }
        }

        // Counters: live containers, and deleted ones through their kept records (a
        // container found in both is counted once, from its live record).
        let kept = exited
            .entries
            .iter()
            .filter(|e| !live_ids.contains(&(e.namespace.as_str(), e.id.as_str())));
        let mut now: HashMap<(String, String), Tally> = HashMap::new();
        for e in live.entries.iter().chain(kept).filter(wanted) {
            let (t, intact) = Tally::from_status(&e.status);
            if !intact {
                *snap.read_errors.entry("damaged_histogram").or_insert(0) += 1;
            }
            snap.tallies.entry(key(e)).or_default().add(&t);
            if !self.opts.per_container {
                now.insert((e.namespace.clone(), e.id.clone()), t);
            }
        }
        if !self.opts.per_container {
            for (k, before) in self.last.drain() {
                if now.get(&k).is_none_or(|t| t.fell_below(&before)) {
                    self.retired.entry(k.0).or_default().add(&before);
                }
            }
            self.last = now;
            for (ns, t) in &self.retired {
                snap.tallies
                    .entry(Key {
                        namespace: ns.clone(),
                        id: None,
                    })
                    .or_default()
                    .add(t);
            }
        }
        snap
    }
}

impl Snapshot {
    fn encode(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a name.
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .expect("metric names and labels are valid");
        out
    }

    /// Every counter of every key, with the zero series of `zeros` when not per container.
    fn counter_rows(
        &self,
        label: &'static str,
        zeros: &[&str],
        of: impl Fn(&Tally) -> &BTreeMap<String, u64>,
    ) -> Vec<(Labels, u64)> {
        let mut rows = Vec::new();
        for (k, t) in &self.tallies {
            let mut values: BTreeMap<&str, u64> = BTreeMap::new();
            if k.id.is_none() {
                for z in zeros {
                    values.insert(z, 0);
                }
            }
            for (v, n) in of(t) {
                *values.entry(v.as_str()).or_insert(0) += n;
            }
            rows.extend(
                values
                    .into_iter()
                    .map(|(v, n)| (k.labels(&[(label, v)]), n)),
            );
        }
        rows
    }
}

/// One family: its descriptor, then one sample per row.
fn family<V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    kind: MetricType,
    rows: &[(Labels, V)],
    mut write: impl FnMut(&mut prometheus_client::encoding::MetricEncoder, &V) -> fmt::Result,
) -> fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, unit.as_ref(), kind)?;
    for (labels, v) in rows {
        let mut sample = m.encode_family(labels)?;
        write(&mut sample, v)?;
    }
    Ok(())
}

fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    rows: &[(Labels, u64)],
) -> fmt::Result {
    family(enc, name, help, unit, MetricType::Counter, rows, |m, v| {
        m.encode_counter::<NoLabelSet, u64, u64>(v, None)
    })
}

fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    rows: &[(Labels, u64)],
) -> fmt::Result {
    family(enc, name, help, unit, MetricType::Gauge, rows, |m, v| {
        m.encode_gauge(v)
    })
}

fn histograms(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, Hist)],
) -> fmt::Result {
    family(
        enc,
        name,
        help,
        Some(Unit::Seconds),
        MetricType::Histogram,
        rows,
        |m, h| {
            // Per-bucket counts; the encoder makes them cumulative and adds `+Inf`.
            let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
                .iter()
                .copied()
                .zip(h.counts.iter().copied())
                .collect();
            m.encode_histogram::<NoLabelSet>(h.sum, h.count(), &buckets, None)
        },
    )
}

/// Rows of a per-key map of per-label counts.
fn labelled_rows(
    map: &BTreeMap<Key, BTreeMap<&'static str, u64>>,
    label: &'static str,
) -> Vec<(Labels, u64)> {
    map.iter()
        .flat_map(|(k, m)| m.iter().map(move |(v, n)| (k.labels(&[(label, v)]), *n)))
        .collect()
}

fn plain_rows(map: &BTreeMap<Key, u64>) -> Vec<(Labels, u64)> {
    map.iter().map(|(k, n)| (k.labels(&[]), *n)).collect()
}

fn tally_rows<V: Clone>(snap: &Snapshot, of: impl Fn(&Tally) -> V) -> Vec<(Labels, V)> {
    snap.tallies
        .iter()
        .map(|(k, t)| (k.labels(&[]), of(t)))
        .collect()
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let e = &mut enc;
        gauges(
            e,
            "lightwhale_containers",
            "Containers under lightwhale by state (created, awake, dozing: frozen with its \
             memory paged out, paused, sleeping: being checkpointed, asleep, waking: being restored, exited: ended, not deleted yet).",
            None,
            &labelled_rows(&self.containers, "state"),
        )?;
        counters(
            e,
            "lightwhale_sleeps",
            "Sleeps done (checkpoints written), deleted containers included while their \
             records are kept.",
            None,
            &tally_rows(self, |t| t.sleeps),
        )?;
        counters(
            e,
            "lightwhale_wakes",
            "Wakes done (restores), by what woke the container.",
            None,
            &self.counter_rows("trigger", &TRIGGERS, |t| &t.wakes),
        )?;
        counters(
            e,
            "lightwhale_failures",
            "Failed sleeps and wakes by kind: dump, hook (pre-sleep-exec), restore, \
             lazy_fill (post-copy pages), no_memory (a wake that found too little memory).",
            None,
            &self.counter_rows("kind", &FAILURE_KINDS, |t| &t.failures),
        )?;
        counters(
            e,
            "lightwhale_sleep_refusals",
            "Sleeps refused, by the reason the container could not sleep then.",
            None,
            &self.counter_rows("reason", &[], |t| &t.refusals),
        )?;
        histograms(
            e,
            "lightwhale_sleep_duration",
            "Time a sleep's checkpoint took (CRIU dump).",
            &tally_rows(self, |t| t.sleep_hist.clone()),
        )?;
        histograms(
            e,
            "lightwhale_wake_duration",
            "Time from a wake's trigger (a connection, an exec) until the restored task \
             answers, queueing included.",
            &tally_rows(self, |t| t.wake_hist.clone()),
        )?;
        counters(
            e,
            "lightwhale_memory_freed",
            "Memory given back to the node by sleeps, in total (the container's cgroup \
             usage right before each sleep).",
            Some(Unit::Bytes),
            &tally_rows(self, |t| t.memory_freed),
        )?;
        gauges(
            e,
            "lightwhale_asleep_memory",
            "Memory the asleep containers used before they slept: what sleeping saves now.",
            Some(Unit::Bytes),
            &plain_rows(&self.asleep_memory),
        )?;
        gauges(
            e,
            "lightwhale_checkpoint",
            "Disk taken by the checkpoint images of asleep containers.",
            Some(Unit::Bytes),
            &plain_rows(&self.checkpoint_bytes),
        )?;
        gauges(
            e,
            "lightwhale_not_sleeping",
            "Containers not asleep, by the reason in force (lightwhale ps: WHY).",
            None,
            &labelled_rows(&self.not_sleeping, "reason"),
        )?;
        counters(
            e,
            "lightwhale_dozes",
            "Dozes begun: the container frozen in place and its memory paged out to swap.",
            None,
            &tally_rows(self, |t| t.dozes),
        )?;
        counters(
            e,
            "lightwhale_thaws",
            "Dozing containers thawed, by what thawed them (connection, exec, signal, \
             sleep: idle on to its checkpoint, ...).",
            None,
            &self.counter_rows("trigger", &["connection"], |t| &t.thaws),
        )?;
        gauges(
            e,
            "lightwhale_dozing_memory",
            "Memory of the dozing containers: before (resident before the doze) and now \
             (resident, plus their swapped pages as compressed in zram, or as swapped).",
            Some(Unit::Bytes),
            &labelled_rows(&self.dozing_memory, "when"),
        )?;
        counters(
            e,
            "lightwhale_probes_answered",
            "Kubelet probes the shims answered for sleeping pods.",
            None,
            &tally_rows(self, |t| t.probes),
        )?;
        let errors: Vec<(Labels, u64)> = self
            .read_errors
            .iter()
            .map(|(r, n)| (vec![("reason", r.to_string())], *n))
            .collect();
        gauges(
            e,
            "lightwhale_status_read_errors",
            "Status files this scrape could not use: unreadable, newer_schema (written by \
             a newer shim: upgrade the lightwhale CLI), damaged_histogram.",
            None,
            &errors,
        )
    }
}

#[cfg(test)]
mod tests;
