//! The records shared by the shim that writes them and the `lightwhale` CLI that reads
//! them: one definition, so a field added on one side cannot silently be missing on the
//! other.
//!
//! Each container has a status file, `<dir>/<namespace>/<id>.json`, rewritten atomically on
//! every change of state, and a control socket beside it (`<id>.sock`) that takes one
//! [`Command`] line and answers one [`Reply`] line of JSON.
//!
//! Versioning: every record carries [`ContainerStatus::schema`]. A reader that finds a
//! schema newer than [`SCHEMA`] refuses with [`ReadError::Newer`] ("upgrade lightwhale")
//! instead of misreading; fields added within a schema are optional, so an older file
//! still reads.
//!
//! Past 600 lines as one file on purpose: it is the whole crate, the one definition of
//! every record both sides read; splitting it would only scatter what must be read
//! together when a field is added.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod template;
pub use template::{TemplateFit, TemplateMeta, TemplateUse, TEMPLATES_DIR};

/// The schema this build writes and understands. Bump it when a field changes meaning
/// or is removed, or a value appears that an older reader cannot parse; adding an
/// optional field does not need a bump.
///
/// 2: the state `dozing` (an older CLI would fail on it: it says "upgrade" instead).
pub const SCHEMA: u32 = 2;

/// Where shims keep status files and control sockets by default.
pub const CONTAINERS_DIR: &str = "/run/lightwhale/containers";

/// Where the records of deleted containers are kept (`lightwhale ps -a`, `inspect`), so
/// that why a container ended can still be read once containerd has deleted it. On
/// tmpfs: they go with a reboot; the newest [`EXITED_KEEP`] are kept.
pub const EXITED_DIR: &str = "/run/lightwhale/exited";

/// How many records of deleted containers are kept on a node.
pub const EXITED_KEEP: usize = 200;

/// The life of a container under lightwhale. Every transition between these is made in
/// one place, `lightwhale_engine::state`; see the diagram in `docs/design.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// `runc create` done, the entrypoint not started yet.
    #[default]
    Created,
    /// Running as under runc.
    Awake,
    /// Idle for `doze-after`: frozen in place (its cgroup's freezer), its memory pushed
    /// out to (compressed) swap; its sockets stay its own and the first connection,
    /// data on an open one, an exec or a signal thaws it at once.
    Dozing,
    /// Frozen by the user (`docker pause`): never put to sleep.
    Paused,
    /// Being checkpointed: frozen, sockets taken, CRIU dumping.
    Sleeping,
    /// Checkpointed: no process; the shim holds the sockets and wakes it on a connection.
    Asleep,
    /// Being restored.
    Waking,
    /// The task ended for good (its exit was reported).
    Exited,
}

impl State {
    /// Whether the task counts as running for containerd (Docker shows it "Up").
    pub fn is_running(self) -> bool {
        matches!(
            self,
            State::Awake | State::Dozing | State::Sleeping | State::Asleep | State::Waking
        )
    }

    /// Whether a transition is under way: others wait for it to end.
    pub fn in_transition(self) -> bool {
        matches!(self, State::Sleeping | State::Waking)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Awake => "awake",
            State::Dozing => "dozing",
            State::Paused => "paused",
            State::Sleeping => "sleeping",
            State::Asleep => "asleep",
            State::Waking => "waking",
            State::Exited => "exited",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `lightwhale ps` and `lightwhale inspect` show about one container.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct ContainerStatus {
    /// See [`SCHEMA`]. Files written before versioning have none and read as 1.
    pub schema: u32,
    pub id: String,
    pub namespace: String,
    pub state: State,
    /// When the current state began (ms since the Unix epoch).
    pub since_unix_ms: u64,
    pub sleeps: u64,
    pub wakes: u64,
    pub last_sleep_ms: Option<u64>,
    pub last_wake_ms: Option<u64>,
    /// Memory charged to the container's cgroup right before its last sleep.
    pub memory_freed_bytes: Option<u64>,
    /// Bytes of memory pages in the checkpoint (what an eager restore reads back).
    pub pages_bytes: Option<u64>,
    /// Ports whose listeners the shim holds while the container sleeps.
    pub held_ports: Vec<u16>,
    /// Where the last wake's time went.
    pub last_wake_phases: Option<WakePhases>,
    pub last_error: Option<String>,
    /// Why an awake container is not asleep, as of the monitor's last look; None while
    /// it sleeps, and when nothing keeps it from sleeping once idle.
    pub not_sleeping: Option<NotSleeping>,
    /// A human name from the container's annotations (Kubernetes pod/container, nerdctl),
    /// when it has one; Docker's names are looked up by the CLI.
    pub name: Option<String>,
    /// Where the CRIU logs of the container's last failure were kept after it was deleted.
    pub kept_logs: Option<PathBuf>,
    /// Kubelet probes the shim answered while the pod slept (pods only).
    pub probes_answered: u64,
    /// Times it dozed, and thawed.
    pub dozes: u64,
    pub thaws: u64,
    /// The current doze (while dozing), else the last one.
    pub doze: Option<DozeRecord>,
    /// The template it was to start from (`lightwhale.io/template`), and how that went.
    pub template: Option<TemplateUse>,
    /// Running totals since the container was created (for `lightwhale metrics`).
    pub counters: Counters,
    pub config: ConfigView,
}

/// One doze: what the container held before and after its memory went out.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct DozeRecord {
    /// Resident memory of its processes (sum of their RSS) right before the doze.
    pub rss_before_bytes: u64,
    /// ... and once its memory was paged out.
    pub rss_after_bytes: u64,
    /// Its pages in swap after the page-out (sum of the processes' VmSwap).
    pub swap_bytes: u64,
    /// What those swapped pages take in memory when the swap is zram (compressed), from
    /// zram's own ratio; None with another swap, or none.
    pub swap_compressed_bytes: Option<u64>,
    /// Whether memory was paged out at all (false: no swap on the node, frozen only).
    pub reclaimed: bool,
    /// Why memory was not (fully) reclaimed, when it was not.
    pub note: Option<String>,
    /// Freezing, taking the sockets' watch and paging out, in ms.
    pub took_ms: f64,
    /// The last thaw: what thawed it, and the trigger to the task running again, in ms.
    pub thaw_trigger: Option<String>,
    pub thaw_ms: Option<f64>,
}

/// Upper bounds (seconds) of the duration histograms' buckets: a small wake takes ~0.05 s,
/// a 1 GiB eager one ~0.7 s, a herd's last several seconds.
pub const DURATION_BUCKETS: [f64; 11] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What happened to a container so far, counted: what `lightwhale metrics` adds up over
/// the node's containers.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct Counters {
    /// Wakes by what woke it (`connection`, `exec`, `signal`, `pod`, ...).
    pub wakes_by_trigger: std::collections::BTreeMap<String, u64>,
    /// Failures by kind: `dump`, `restore`, `lazy_fill`, `no_memory`, `hook`.
    pub failures: std::collections::BTreeMap<String, u64>,
    /// Sleeps refused (by the reason's kind: `in_flight`, `no_listener`, ...).
    pub refusals: std::collections::BTreeMap<String, u64>,
    pub sleep_seconds: Histogram,
    pub wake_seconds: Histogram,
    /// Thaws from a doze, by what thawed it, and how long they took.
    pub thaws_by_trigger: std::collections::BTreeMap<String, u64>,
    pub thaw_seconds: Histogram,
    /// Memory given back by sleeps, in total.
    pub memory_freed_bytes_total: u64,
    /// Sleeps taken before the idle timeout because the node was short of memory.
    pub pressure_sleeps: u64,
}

/// A duration histogram over [`DURATION_BUCKETS`]: `counts[i]` observations fell in bucket
/// `i` (not cumulative), `counts[len]` above the last bound.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct Histogram {
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

/// Upper bounds (seconds) of the thaw histogram's buckets: a thaw takes about a
/// millisecond, its page-ins after a full page-out a few.
pub const THAW_BUCKETS: [f64; 8] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1];

impl Histogram {
    /// Counts an observation in [`DURATION_BUCKETS`].
    pub fn observe(&mut self, seconds: f64) {
        self.observe_in(seconds, &DURATION_BUCKETS);
    }

    /// Counts an observation in buckets bounded by `bounds` (always the same ones for
    /// one histogram).
    pub fn observe_in(&mut self, seconds: f64, bounds: &[f64]) {
        if self.counts.len() != bounds.len() + 1 {
            self.counts = vec![0; bounds.len() + 1];
        }
        let i = bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum_seconds += seconds;
        self.count += 1;
    }
}

impl Counters {
    pub fn bump(map: &mut std::collections::BTreeMap<String, u64>, key: &str) {
        *map.entry(key.to_string()).or_default() += 1;
    }
}

impl ContainerStatus {
    pub fn new(namespace: &str, id: &str, config: ConfigView) -> Self {
        ContainerStatus {
            schema: SCHEMA,
            id: id.to_string(),
            namespace: namespace.to_string(),
            config,
            ..Default::default()
        }
    }
}

/// Why a container that is awake does not go to sleep: the reason in force now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NotSleeping {
    /// Sleep is off (`lightwhale.io/sleep=off`, or `sleep = false` in the node config).
    Disabled,
    /// The task has a terminal (`docker run -t`): checkpointing a pty is not supported.
    Terminal,
    /// The container shares the host's network namespace: waking it would reset the first
    /// connection (the host's `tcp_migrate_req` is not lightwhale's to change).
    HostNetwork,
    /// No TCP socket listens in its network namespace: nothing could wake it.
    NoListener,
    /// Only UDP sockets listen: lightwhale wakes containers on TCP connections.
    UdpOnly { ports: Vec<u16> },
    /// The ports named by `lightwhale.io/ports` have no listener.
    PortsNotListening { ports: Vec<u16> },
    /// Inbound TCP traffic within the idle timeout: it will sleep once it has been quiet
    /// for `idle_timeout_ms` (it has been since `quiet_since_unix_ms`).
    Active {
        quiet_since_unix_ms: u64,
        idle_timeout_ms: u64,
    },
    /// CPU use above the idle threshold (per mille of one CPU).
    CpuBusy {
        permille: u64,
        threshold_permille: u64,
    },
    /// An exec (`docker exec`) is running.
    ExecRunning,
    /// Paused by the user (`docker pause`).
    Paused,
    /// A stop signal was sent: in its grace period, it never sleeps again.
    Stopping,
    /// A request is in flight on an open connection.
    InFlight,
    /// The pages of the last lazy wake are still being filled.
    FillRunning,
    /// The last sleep failed; the next try is not before `next_try_unix_ms`.
    SleepFailed {
        error: String,
        next_try_unix_ms: u64,
    },
    /// CRIU cannot dump one of its processes on this host.
    CannotDump { detail: String },
    /// The pod's sandbox (pause) container: it holds the pod's network namespace and
    /// stays awake while the pod's app containers sleep.
    PodSandbox,
    /// It sleeps with its pod, and another container of the pod is not idle yet.
    PodBusy { container: String },
    /// Its checkpoint would not fit in the node's budget for checkpoint images.
    DiskBudget {
        needed_bytes: u64,
        used_bytes: u64,
        budget_bytes: u64,
    },
    /// A request (`by`: connection, exec, signal, request) came while its dump was under
    /// way and the sleep was called off `at` (before_dump, pre_dump or post_dump); the
    /// request waited `waited_ms` for the thaw.
    Cancelled {
        by: String,
        at: String,
        waited_ms: u64,
    },
}

impl NotSleeping {
    /// A short label for one table column (`lightwhale ps`) or a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            NotSleeping::Disabled => "disabled",
            NotSleeping::Terminal => "terminal",
            NotSleeping::HostNetwork => "host_network",
            NotSleeping::NoListener => "no_listener",
            NotSleeping::UdpOnly { .. } => "udp_only",
            NotSleeping::PortsNotListening { .. } => "ports_not_listening",
            NotSleeping::Active { .. } => "active",
            NotSleeping::CpuBusy { .. } => "cpu_busy",
            NotSleeping::ExecRunning => "exec_running",
            NotSleeping::Paused => "paused",
            NotSleeping::Stopping => "stopping",
            NotSleeping::InFlight => "in_flight",
            NotSleeping::FillRunning => "fill_running",
            NotSleeping::SleepFailed { .. } => "sleep_failed",
            NotSleeping::CannotDump { .. } => "cannot_dump",
            NotSleeping::DiskBudget { .. } => "disk_budget",
            NotSleeping::PodSandbox => "pod_sandbox",
            NotSleeping::PodBusy { .. } => "pod_busy",
            NotSleeping::Cancelled { .. } => "cancelled",
        }
    }

    /// Whether two readings say the same for a reader: the same reason, with figures that
    /// differ by less than a reader would care about (so a monitor sampling every second
    /// does not rewrite the status file every second).
    pub fn roughly_eq(&self, other: &NotSleeping) -> bool {
        match (self, other) {
            (
                NotSleeping::Active {
                    quiet_since_unix_ms: a,
                    idle_timeout_ms: t,
                },
                NotSleeping::Active {
                    quiet_since_unix_ms: b,
                    idle_timeout_ms: u,
                },
            ) => t == u && a.abs_diff(*b) < 5_000,
            (
                NotSleeping::CpuBusy {
                    permille: a,
                    threshold_permille: t,
                },
                NotSleeping::CpuBusy {
                    permille: b,
                    threshold_permille: u,
                },
            ) => t == u && a.abs_diff(*b) * 10 < (*a).max(*b).max(1),
            (a, b) => a == b,
        }
    }

    /// A few words for `lightwhale ps`; `now_ms` is the current time (ms since the epoch).
    pub fn short(&self, now_ms: u64) -> String {
        fn secs(ms: u64) -> String {
            let s = ms / 1000;
            if s >= 3600 {
                format!("{}h{}m", s / 3600, (s % 3600) / 60)
            } else if s >= 60 {
                format!("{}m{}s", s / 60, s % 60)
            } else {
                format!("{s}s")
            }
        }
        fn ports(p: &[u16]) -> String {
            p.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
        }
        match self {
            NotSleeping::Disabled => "sleep off".into(),
            NotSleeping::Terminal => "tty".into(),
            NotSleeping::HostNetwork => "host network".into(),
            NotSleeping::NoListener => "no TCP listener".into(),
            NotSleeping::UdpOnly { ports: p } => format!("UDP only ({})", ports(p)),
            NotSleeping::PortsNotListening { ports: p } => format!("not listening: {}", ports(p)),
            NotSleeping::Active {
                quiet_since_unix_ms,
                idle_timeout_ms,
            } => format!(
                "active (idle {}/{})",
                secs(now_ms.saturating_sub(*quiet_since_unix_ms)),
                secs(*idle_timeout_ms)
            ),
            NotSleeping::CpuBusy {
                permille,
                threshold_permille,
            } => format!(
                "cpu {:.1}% > {:.1}%",
                *permille as f64 / 10.0,
                *threshold_permille as f64 / 10.0
            ),
            NotSleeping::ExecRunning => "exec running".into(),
            NotSleeping::Paused => "paused".into(),
            NotSleeping::Stopping => "stopping".into(),
            NotSleeping::InFlight => "request in flight".into(),
            NotSleeping::FillRunning => "pages filling".into(),
            NotSleeping::SleepFailed {
                next_try_unix_ms, ..
            } => format!(
                "sleep failed, retry in {}",
                secs(next_try_unix_ms.saturating_sub(now_ms))
            ),
            NotSleeping::CannotDump { .. } => "CRIU cannot dump".into(),
            NotSleeping::DiskBudget { .. } => "disk budget full".into(),
            NotSleeping::PodSandbox => "pod sandbox".into(),
            NotSleeping::PodBusy { container } => format!("pod busy ({container})"),
            NotSleeping::Cancelled { by, .. } => format!("sleep called off ({by})"),
        }
    }
}

impl std::fmt::Display for NotSleeping {
    /// One sentence for `lightwhale inspect`: the reason and what to do about it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotSleeping::Disabled => write!(f, "sleep is off for this container (lightwhale.io/sleep or the node config)"),
            NotSleeping::Terminal => write!(f, "it has a terminal (-t): containers with a tty do not sleep"),
            NotSleeping::HostNetwork => write!(f, "it uses the host's network namespace: a wake there would reset the first connection, so it does not sleep; give it a network namespace of its own"),
            NotSleeping::NoListener => write!(f, "no TCP socket listens in its network namespace, so no connection could wake it"),
            NotSleeping::UdpOnly { ports } => write!(f, "only UDP sockets listen (ports {ports:?}); lightwhale wakes containers on TCP connections"),
            NotSleeping::PortsNotListening { ports } => write!(f, "lightwhale.io/ports names {ports:?}, but nothing listens there"),
            NotSleeping::Active { idle_timeout_ms, .. } => write!(f, "inbound traffic or CPU use within its {idle_timeout_ms} ms idle timeout: it sleeps once quiet that long"),
            NotSleeping::CpuBusy { permille, threshold_permille } => write!(f, "it uses {:.1}% of a CPU, above the {:.1}% idle threshold", *permille as f64 / 10.0, *threshold_permille as f64 / 10.0),
            NotSleeping::ExecRunning => write!(f, "an exec is running in it"),
            NotSleeping::Paused => write!(f, "it is paused"),
            NotSleeping::Stopping => write!(f, "it was sent a stop signal and is in its grace period"),
            NotSleeping::InFlight => write!(f, "a request is in flight on an open connection"),
            NotSleeping::FillRunning => write!(f, "the pages of its last lazy wake are still being filled"),
            NotSleeping::SleepFailed { error, .. } => write!(f, "its last sleep failed: {error}"),
            NotSleeping::CannotDump { detail } => write!(f, "CRIU cannot dump it on this host: {detail}"),
            NotSleeping::PodSandbox => write!(f, "it is its pod's sandbox (pause) container: it holds the pod's network namespace and stays awake"),
            NotSleeping::PodBusy { container } => write!(f, "it sleeps with its pod, and {container} of the pod is not idle yet"),
            NotSleeping::DiskBudget { needed_bytes, used_bytes, budget_bytes } => write!(f, "its checkpoint (~{needed_bytes} bytes) would not fit in the node's image budget ({used_bytes} of {budget_bytes} bytes used)"),
            NotSleeping::Cancelled { by, at, waited_ms } => write!(f, "a {by} came while it was being checkpointed: the sleep was called off ({at}) and it serves on; the {by} waited {waited_ms} ms"),
        }
    }
}

/// The sleep configuration in force for a container, as resolved at create.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ConfigView {
    pub sleep: bool,
    pub idle_timeout_ms: u64,
    pub ports: Vec<u16>,
    pub criu_profile: String,
    pub criu_profile_path: PathBuf,
    /// `<image dir>/<namespace>/<id>`: checkpoint images and CRIU's logs.
    pub image_dir: PathBuf,
    /// `auto`, `on` or `off`.
    pub lazy_pages: String,
    pub lazy_pages_threshold_bytes: u64,
    /// Idle time after which it dozes (None: it does not doze).
    pub doze_after_ms: Option<u64>,
}

/// Where a wake's time went, in milliseconds from the trigger (a connection seen on a
/// held socket, or a request that needs the task awake).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct WakePhases {
    pub trigger: String,
    /// Post-copy restore (pages follow the task) rather than eager.
    pub lazy: bool,
    /// Trigger to the start of the restore: waiting for a transition under way, for the
    /// memory the restore needs, for a node-wide restore slot.
    pub queued_ms: f64,
    /// Starting the `criu lazy-pages` daemon until it listens.
    pub lazy_daemon_ms: Option<f64>,
    /// `runc restore`, CRIU included.
    pub runc_restore_ms: f64,
    /// CRIU's own restore, from its log (runc's share is the difference).
    pub criu_restore_ms: Option<f64>,
    /// Trigger to the held listeners handed over to the restored task: from here on the
    /// task itself answers.
    pub total_ms: f64,
    /// With `lazy`: the restore's end until the daemon had every page back.
    pub fill_ms: Option<f64>,
    /// A lazy restore that fell back to eager, and why.
    pub fallback: Option<String>,
}

/// One line sent to a container's control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Sleep,
    Doze,
    Wake,
    Status,
    /// Take a template of the running container, under this name.
    Template(String),
    /// Write what moving the sleeping container needs into this new directory.
    Export(PathBuf),
}

impl Command {
    /// The line sent for it.
    pub fn line(&self) -> String {
        match self {
            Command::Sleep => "sleep".into(),
            Command::Doze => "doze".into(),
            Command::Wake => "wake".into(),
            Command::Status => "status".into(),
            Command::Template(name) => format!("template {name}"),
            Command::Export(dir) => format!("export {}", dir.display()),
        }
    }

    pub fn parse(line: &str) -> Option<Command> {
        match line.trim() {
            "sleep" => Some(Command::Sleep),
            "doze" => Some(Command::Doze),
            "wake" => Some(Command::Wake),
            "status" => Some(Command::Status),
            other if other.starts_with("export /") => {
                Some(Command::Export(PathBuf::from(&other["export ".len()..])))
            }
            other => other
                .strip_prefix("template ")
                .map(str::trim)
                .filter(|n| template::check_name(n).is_ok())
                .map(|n| Command::Template(n.to_string())),
        }
    }
}

/// The control socket's answer: whether the command succeeded, and the status after it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub status: ContainerStatus,
}

/// The status file of container `id` in containerd namespace `namespace` under `dir`.
pub fn status_path(dir: &Path, namespace: &str, id: &str) -> PathBuf {
    dir.join(namespace).join(format!("{id}.json"))
}

/// The control socket of container `id` in containerd namespace `namespace` under `dir`.
pub fn control_path(dir: &Path, namespace: &str, id: &str) -> PathBuf {
    dir.join(namespace).join(format!("{id}.sock"))
}

/// The kept record of deleted container `id` in `namespace` under `dir`.
pub fn exited_path(dir: &Path, namespace: &str, id: &str) -> PathBuf {
    status_path(dir, namespace, id)
}

/// Keeps the newest `keep` records under `dir` (`<dir>/<namespace>/<id>.json`) and removes
/// the rest; errors are ignored (a record more or less is no harm).
pub fn prune_exited(dir: &Path, keep: usize) {
    let mut all = Vec::new();
    for ns in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            if let Ok(m) = f.metadata().and_then(|m| m.modified()) {
                all.push((m, f.path()));
            }
        }
    }
    if all.len() <= keep {
        return;
    }
    all.sort();
    let excess = all.len() - keep;
    for (_, path) in all.into_iter().take(excess) {
        let _ = std::fs::remove_file(path);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a lightwhale status record: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path} was written by a newer lightwhale shim (status schema {found}; this lightwhale reads up to {SCHEMA}): upgrade the lightwhale CLI"
    )]
    Newer { path: PathBuf, found: u32 },
}

/// Parses a status record, refusing one from a newer schema rather than misreading it.
pub fn parse_status(bytes: &[u8], path: &Path) -> Result<ContainerStatus, ReadError> {
    let json = |source| ReadError::Json {
        path: path.to_path_buf(),
        source,
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(json)?;
    if !value.is_object() {
        return Err(json(serde::de::Error::custom("expected a JSON object")));
    }
    let found = value
        .get("schema")
        .and_then(serde_json::Value::as_u64)
        .map(|s| u32::try_from(s).unwrap_or(u32::MAX))
        .unwrap_or(1);
    if found > SCHEMA {
        return Err(ReadError::Newer {
            path: path.to_path_buf(),
            found,
        });
    }
    let mut status: ContainerStatus = serde_json::from_value(value).map_err(json)?;
    status.schema = found;
    Ok(status)
}

/// Reads the status file at `path` (see [`parse_status`]).
pub fn read_status(path: &Path) -> Result<ContainerStatus, ReadError> {
    let bytes = std::fs::read(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_status(&bytes, path)
}

/// Writes a status record atomically: a reader sees the old file or the new, never half.
pub fn write_status(path: &Path, status: &ContainerStatus) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_state_names() {
        let mut s = ContainerStatus::new("moby", "abc", ConfigView::default());
        s.state = State::Asleep;
        s.held_ports = vec![8080];
        let bytes = serde_json::to_vec(&s).expect("json");
        let text = String::from_utf8_lossy(&bytes).to_string();
        assert!(text.contains("\"state\":\"asleep\""), "{text}");
        let back = parse_status(&bytes, Path::new("x.json")).expect("parse");
        assert_eq!(back, s);
    }

    #[test]
    fn a_newer_schema_is_refused_by_name() {
        let text = br#"{"schema": 7, "id": "abc", "state": "dozing", "brand_new": 1}"#;
        let e = parse_status(text, Path::new("/run/x.json")).expect_err("newer");
        let msg = e.to_string();
        assert!(msg.contains("newer lightwhale shim"), "{msg}");
        assert!(msg.contains("schema 7"), "{msg}");
    }

    #[test]
    fn an_unversioned_file_reads_as_schema_one() {
        let text = br#"{"id": "abc", "namespace": "moby", "state": "awake", "sleeps": 2,
            "config": {"sleep": true, "idle_timeout_ms": 2000}}"#;
        let s = parse_status(text, Path::new("x.json")).expect("legacy");
        assert_eq!(s.schema, 1);
        assert_eq!(s.state, State::Awake);
        assert_eq!(s.sleeps, 2);
        assert_eq!(s.config.idle_timeout_ms, 2000);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [&b""[..], b"{", b"[]", b"{\"state\": 3}", b"\xff\xfe"] {
            assert!(parse_status(bad, Path::new("x.json")).is_err());
        }
    }

    #[test]
    fn reasons_round_trip_and_read_short() {
        let r = NotSleeping::CpuBusy {
            permille: 350,
            threshold_permille: 20,
        };
        let text = serde_json::to_string(&r).expect("json");
        assert!(text.contains("\"kind\":\"cpu_busy\""), "{text}");
        assert_eq!(
            serde_json::from_str::<NotSleeping>(&text).ok(),
            Some(r.clone())
        );
        assert_eq!(r.short(0), "cpu 35.0% > 2.0%");
        let f = NotSleeping::SleepFailed {
            error: "x".into(),
            next_try_unix_ms: 300_000,
        };
        assert_eq!(f.short(60_000), "sleep failed, retry in 4m0s");
        assert!(NotSleeping::HostNetwork.to_string().contains("host"));
        let a = NotSleeping::Active {
            quiet_since_unix_ms: 10_000,
            idle_timeout_ms: 60_000,
        };
        let b = NotSleeping::Active {
            quiet_since_unix_ms: 12_000,
            idle_timeout_ms: 60_000,
        };
        assert!(a.roughly_eq(&b));
        assert_eq!(a.short(40_000), "active (idle 30s/1m0s)");
        assert!(!a.roughly_eq(&NotSleeping::NoListener));
    }

    #[test]
    fn only_the_newest_exited_records_are_kept() {
        let d = std::env::temp_dir().join(format!("lw-status-prune-{}", std::process::id()));
        for i in 0..5 {
            let p = exited_path(&d, "ns", &format!("c{i}"));
            write_status(&p, &ContainerStatus::default()).expect("write");
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
        prune_exited(&d, 2);
        let left: Vec<_> = std::fs::read_dir(d.join("ns"))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        let _ = std::fs::remove_dir_all(&d);
        let mut left = left;
        left.sort();
        assert_eq!(left, vec!["c3.json", "c4.json"]);
    }

    #[test]
    fn histograms_count_into_their_buckets() {
        let mut h = Histogram::default();
        for s in [0.004, 0.05, 0.051, 3.0, 60.0] {
            h.observe(s);
        }
        assert_eq!(h.count, 5);
        assert_eq!(h.counts[0], 1, "<= 10 ms");
        assert_eq!(h.counts[2], 1, "<= 50 ms (inclusive)");
        assert_eq!(h.counts[3], 1, "<= 75 ms");
        assert_eq!(h.counts[DURATION_BUCKETS.len()], 1, "above the last bound");
        assert!((h.sum_seconds - 63.105).abs() < 1e-9);
    }

    #[test]
    fn commands_parse() {
        for c in [
            Command::Sleep,
            Command::Wake,
            Command::Doze,
            Command::Status,
            Command::Template("warm-1".into()),
            Command::Export("/var/tmp/a b".into()),
        ] {
            assert_eq!(Command::parse(&format!("{}\n", c.line())), Some(c));
        }
        assert_eq!(Command::parse("dance"), None);
        assert_eq!(Command::parse("template ../etc"), None);
        assert_eq!(Command::parse("export relative/dir"), None);
    }
}
