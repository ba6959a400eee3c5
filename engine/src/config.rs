//! Sleep/wake policy: OCI annotations (`lightwhale.io/...`) over node-wide defaults from
//! `/etc/lightwhale/config.toml`. Invalid values fail create with a message that names the
//! annotation and the accepted form.
//!
//! This is policy only (when a task counts as idle, which ports to hold, eager or lazy
//! restore); the mechanisms that carry it out live in `sleep`, `wake` and `hold`.
//!
//! Past 600 lines for its tests: every annotation's parsing, limits and error message is
//! tested beside it, table by table (the code itself is ~450 lines).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const PREFIX: &str = "lightwhale.io/";
pub const NODE_CONFIG: &str = "/etc/lightwhale/config.toml";
const PROFILE_DIRS: &[&str] = &[
    "/etc/lightwhale/criu-profiles",
    "/usr/local/share/lightwhale/criu-profiles",
];

/// Idle timeout when neither the container nor the node sets one: long enough that a
/// service between two requests of one user is not put to sleep, short enough to matter.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Above this much checkpointed memory, `lazy-pages=auto` restores post-copy. Measured
/// (bench/, docs/benchmarks.md): the daemon's start costs ~5 ms and an eager restore
/// reads pages back at ~0.55 ms per MiB from the page cache, so the two meet near 30 MiB
/// (28 MiB of pages: 68 ms eager, 69 ms lazy; 268 MiB: 206 ms eager, 77 ms lazy). Below
/// it eager wins on simplicity: no daemon, no background fill that could fail.
pub const DEFAULT_LAZY_THRESHOLD: u64 = 32 << 20;

/// How a wake restores memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LazyMode {
    /// Every page before the task runs.
    Off,
    /// Post-copy: the task runs at once, pages follow on demand and in the background.
    On,
    /// Post-copy when the checkpoint holds more than the threshold.
    Auto,
}

impl LazyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LazyMode::Off => "off",
            LazyMode::On => "on",
            LazyMode::Auto => "auto",
        }
    }

    fn parse(s: &str) -> Option<LazyMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(LazyMode::Auto),
            other => parse_bool(other).map(|on| if on { LazyMode::On } else { LazyMode::Off }),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `value` is the rejected value as shown: at most [`SHOWN`] characters of it.
    #[error("annotation {key}={value}: {expected}")]
    Annotation {
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error("unknown annotation {0}: lightwhale accepts {PREFIX}{{idle-timeout,doze-after,template,ports,criu-profile,sleep,sleep-cancel,pre-sleep-exec,post-wake-exec,hook-timeout,lazy-pages,lazy-pages-threshold}}")]
    Unknown(String),
    #[error("{path}: {message}")]
    NodeFile { path: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SleepConfig {
    pub enabled: bool,
    pub idle_timeout: Duration,
    /// Idle this long (and less than `idle_timeout`), the task dozes: frozen, its memory
    /// paged out, until a connection thaws it. None: it does not doze.
    pub doze_after: Option<Duration>,
    /// Ports whose listeners are held while asleep; empty means all LISTEN sockets.
    pub ports: Vec<u16>,
    pub criu_profile: String,
    pub criu_profile_path: PathBuf,
    /// CPU use below this (per mille of one CPU) counts as idle.
    pub cpu_permille: u64,
    /// Run in the container before it sleeps; failing cancels that sleep.
    pub pre_sleep_exec: Option<Vec<String>>,
    /// Run in the container after it wakes (in the background: never on the wake path).
    pub post_wake_exec: Option<Vec<String>>,
    pub hook_timeout: Duration,
    pub lazy_pages: LazyMode,
    /// Checkpointed page bytes above which `LazyMode::Auto` goes post-copy.
    pub lazy_threshold: u64,
    /// The node's budget for checkpoint images, if any.
    pub image_budget: Option<u64>,
    /// Memory that must remain available after a restore.
    pub wake_memory_reserve: u64,
    /// How long a wake waits for that memory.
    pub wake_memory_wait: Duration,
    /// Node-wide restore slots (0: no limit).
    pub restore_slots: u32,
    /// Available memory below which idle containers sleep sooner (node-wide).
    pub memory_floor: Option<u64>,
    /// Start by restoring this template instead of running the entrypoint
    /// (`lightwhale.io/template`).
    pub template: Option<String>,
    /// A connection (or exec, signal, wake) that arrives during the dump calls the sleep
    /// off (`lightwhale.io/sleep-cancel`, default on).
    pub sleep_cancel: bool,
}

/// Restores at once unless the node config says otherwise: twice the CPUs. Measured
/// (docs/benchmarks.md, herd of 50 on 2 CPUs): no limit, first byte p50 2110 ms / p99
/// 2523 ms; 4 at once, 1115 / 2232 ms; 2 at once, 1140 / 2359 ms. Restores are CPU-bound
/// (runc, CRIU): beyond a few per CPU they only slow each other down.
pub fn default_restore_slots() -> u32 {
    std::thread::available_parallelism()
        .map(|n| (n.get() as u32).saturating_mul(2))
        .unwrap_or(4)
        .max(2)
}

/// Under memory pressure, how long a container must have been idle before it is put to
/// sleep ahead of its idle timeout: long enough that a pause between two requests of a
/// busy client is not taken for idleness.
pub const PRESSURE_MIN_IDLE: Duration = Duration::from_secs(5);

/// Memory kept free after a restore unless the node config says otherwise.
pub const DEFAULT_WAKE_MEMORY_RESERVE: u64 = 64 << 20;
pub const DEFAULT_WAKE_MEMORY_WAIT: Duration = Duration::from_secs(30);

impl SleepConfig {
    /// Whether a checkpoint holding `pages` bytes of memory is restored post-copy.
    pub fn lazy_for(&self, pages: u64) -> bool {
        match self.lazy_pages {
            LazyMode::Off => false,
            LazyMode::On => true,
            LazyMode::Auto => pages > self.lazy_threshold,
        }
    }

    /// The configuration as `lightwhale inspect` shows it.
    pub fn view(&self, image_dir: &Path) -> lightwhale_status::ConfigView {
        lightwhale_status::ConfigView {
            sleep: self.enabled,
            idle_timeout_ms: self.idle_timeout.as_millis() as u64,
            doze_after_ms: self.doze_after.map(|d| d.as_millis() as u64),
            ports: self.ports.clone(),
            criu_profile: self.criu_profile.clone(),
            criu_profile_path: self.criu_profile_path.clone(),
            image_dir: image_dir.to_path_buf(),
            lazy_pages: self.lazy_pages.as_str().to_string(),
            lazy_pages_threshold_bytes: self.lazy_threshold,
        }
    }
}

/// The node-wide file. Every key is optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeConfig {
    pub idle_timeout: Option<String>,
    /// Doze after this much idle time (a duration, or "off", the default); containers
    /// doze only when it is shorter than their idle timeout.
    pub doze_after: Option<String>,
    pub sleep: Option<bool>,
    pub criu_profile: Option<String>,
    /// Where checkpoint images go (default /var/lib/lightwhale).
    pub image_dir: Option<PathBuf>,
    pub cpu_permille: Option<u64>,
    /// on, off or auto (the default).
    pub lazy_pages: Option<String>,
    /// A size such as 128Mi or 1Gi.
    pub lazy_pages_threshold: Option<String>,
    /// Let CRIU use lightwhale's faster helper programs at restore (default true).
    pub criu_helpers: Option<bool>,
    /// The most disk all checkpoint images of the node may take (a size such as 20Gi);
    /// beyond it containers stay awake, with that reason shown. Default: no limit.
    pub image_budget: Option<String>,
    /// Memory that must remain available after a wake's restore (a size; default 64Mi).
    /// A wake that would not leave it waits (see `wake-memory-wait`) rather than start
    /// a restore the OOM killer would end.
    pub wake_memory_reserve: Option<String>,
    /// How long such a wake waits for memory before it gives up, leaving the container
    /// asleep (a duration; default 30s). A connection that waits keeps retrying.
    pub wake_memory_wait: Option<String>,
    /// The most restores the node runs at once (default: twice the CPUs; 0: no limit).
    /// Others wait for a slot: a herd of wakes then finishes one by one instead of all
    /// late together.
    pub max_concurrent_restores: Option<u32>,
    /// Whether a connection arriving during a dump calls the sleep off (default true).
    pub sleep_cancel: Option<bool>,
    /// Below this much available memory (a size such as 2Gi; default: off) the node is
    /// under pressure: idle containers sleep before their idle timeout, the longest idle
    /// first, once idle for [`PRESSURE_MIN_IDLE`]; busy ones are never touched.
    pub memory_floor: Option<String>,
}

impl NodeConfig {
    pub fn load() -> Result<NodeConfig, ConfigError> {
        Self::load_from(Path::new(NODE_CONFIG))
    }

    pub fn load_from(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(NodeConfig::default()),
            Err(e) => {
                return Err(ConfigError::NodeFile {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })
            }
        };
        toml::from_str(&text).map_err(|e| ConfigError::NodeFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    pub fn image_dir(&self) -> PathBuf {
        self.image_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/lightwhale"))
    }
}

/// Parses "500ms", "2s", "1.5s", "5m", "1h". Zero and values above a week are refused.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n <= 0.0 {
        return None;
    }
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (0.001..=7.0 * 24.0 * 3600.0)
        .contains(&secs)
        .then(|| Duration::from_secs_f64(secs))
}

/// The one set of boolean forms, in any case: on/off, true/false, yes/no, 1/0.
fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// The shortest idle timeout: below a second the monitor could not tell idle from a
/// pause between two requests (it samples about once a second).
pub const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest idle timeout: a week.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Hooks get at least 100 ms and at most 10 minutes.
pub const MIN_HOOK_TIMEOUT: Duration = Duration::from_millis(100);
pub const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(600);

fn idle_timeout(v: &str) -> Option<Duration> {
    parse_duration(v).filter(|d| (MIN_IDLE_TIMEOUT..=MAX_IDLE_TIMEOUT).contains(d))
}

/// `off` (None), or a duration within the idle timeout's bounds.
fn doze_after(v: &str) -> Option<Option<Duration>> {
    match parse_bool(v) {
        Some(false) => Some(None),
        Some(true) => None,
        None => idle_timeout(v).map(Some),
    }
}

const DOZE_AFTER_EXPECTED: &str =
    "expected off, or a duration from 1s to 168h (shorter than idle-timeout), such as 10s";

/// Parses a size: bytes ("4096"), or with a unit: K/M/G (powers of 1000) or
/// Ki/Mi/Gi (powers of 1024), as Kubernetes quantities are written.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit {
        "" => 1,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn parse_ports(s: &str) -> Option<Vec<u16>> {
    let mut out = Vec::new();
    for p in s.split(',').map(str::trim) {
        let port: u16 = p.parse().ok()?;
        if port == 0 {
            return None;
        }
        if !out.contains(&port) {
            out.push(port);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A hook command: a JSON array of arguments, or a shell command line run by /bin/sh.
fn parse_command(s: &str) -> Option<Vec<String>> {
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    if t.starts_with('[') {
        let v: Vec<String> = serde_json::from_str(t).ok()?;
        return (!v.is_empty() && !v[0].is_empty()).then_some(v);
    }
    Some(vec!["/bin/sh".into(), "-c".into(), t.to_string()])
}

fn valid_profile_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Finds profile `name` in the profile directories.
pub fn resolve_profile(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    if !valid_profile_name(name) {
        return None;
    }
    dirs.iter()
        .map(|d| d.join(format!("{name}.conf")))
        .find(|p| p.is_file())
}

/// Where lightwhale's stand-ins for CRIU's helper programs are installed (`make install`
/// puts `tar` there), unless the node file says `criu-helpers = false`.
pub fn criu_helpers_dir(node: &NodeConfig) -> Option<PathBuf> {
    if node.criu_helpers == Some(false) {
        return None;
    }
    let mut dirs = vec![PathBuf::from("/usr/local/libexec/lightwhale/criu-helpers")];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(prefix) = exe.parent().and_then(Path::parent) {
            dirs.push(prefix.join("libexec/lightwhale/criu-helpers"));
        }
    }
    dirs.into_iter().find(|d| d.join("tar").is_file())
}

/// lightwhale's CRIU action script for dumps (see `runtime-hooks`' `criu_action`): lets a
/// connection call off a sleep whose dump is under way. Where the helpers are installed,
/// whatever `criu-helpers` says (that key is about the restore's stand-ins).
pub fn criu_dump_action() -> Option<PathBuf> {
    let mut dirs = vec![PathBuf::from("/usr/local/libexec/lightwhale/criu-helpers")];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(prefix) = exe.parent().and_then(Path::parent) {
            dirs.push(prefix.join("libexec/lightwhale/criu-helpers"));
        }
    }
    dirs.into_iter()
        .map(|d| d.join("action"))
        .find(|p| p.is_file())
}

pub fn profile_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = PROFILE_DIRS.iter().map(PathBuf::from).collect();
    // Under the binary's own prefix (<prefix>/bin/../share), for a non-default PREFIX.
    if let Ok(exe) = std::env::current_exe() {
        if let Some(share) = exe
            .parent()
            .and_then(Path::parent)
            .map(|p| p.join("share/lightwhale/criu-profiles"))
        {
            dirs.push(share);
        }
    }
    dirs
}

/// How much of a rejected value an error message repeats: enough to recognise it, never
/// a 10 KB annotation echoed back into `docker run`'s output.
pub const SHOWN: usize = 64;

/// `value` quoted, cut to [`SHOWN`] characters (with its full length when cut).
pub fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &value[..cut], value.len()),
    }
}

fn bad(key: &str, value: &str, expected: &'static str) -> ConfigError {
    ConfigError::Annotation {
        key: shown(key).trim_matches('"').to_string(),
        value: shown(value),
        expected,
    }
}

/// The container's sleep configuration from its annotations over the node's defaults.
pub fn sleep_config(
    annotations: &[(String, String)],
    node: &NodeConfig,
    profile_dirs: &[PathBuf],
) -> Result<SleepConfig, ConfigError> {
    let mut enabled = node.sleep.unwrap_or(true);
    let mut idle_timeout = match &node.idle_timeout {
        Some(v) => idle_timeout(v).ok_or_else(|| ConfigError::NodeFile {
            path: NODE_CONFIG.into(),
            message: format!(
                "idle-timeout {}: expected a duration from 1s to 168h, such as 30s, 5m or 1h",
                shown(v)
            ),
        })?,
        None => DEFAULT_IDLE_TIMEOUT,
    };
    let mut doze = match &node.doze_after {
        Some(v) => doze_after(v).ok_or_else(|| ConfigError::NodeFile {
            path: NODE_CONFIG.into(),
            message: format!("doze-after {}: {DOZE_AFTER_EXPECTED}", shown(v)),
        })?,
        None => None,
    };
    let mut ports = Vec::new();
    let mut profile = node
        .criu_profile
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let mut pre_sleep_exec = None;
    let mut post_wake_exec = None;
    let mut hook_timeout = Duration::from_secs(10);
    let node_err = |key: &str, v: &str, expected: &str| ConfigError::NodeFile {
        path: NODE_CONFIG.into(),
        message: format!("{key} {}: {expected}", shown(v)),
    };
    let mut lazy_pages = match &node.lazy_pages {
        Some(v) => LazyMode::parse(v)
            .ok_or_else(|| node_err("lazy-pages", v, "expected on, off or auto"))?,
        None => LazyMode::Auto,
    };
    let mut lazy_threshold = match &node.lazy_pages_threshold {
        Some(v) => parse_size(v).ok_or_else(|| {
            node_err(
                "lazy-pages-threshold",
                v,
                "expected a size such as 128Mi, 1Gi or 500M",
            )
        })?,
        None => DEFAULT_LAZY_THRESHOLD,
    };
    let mut template = None;
    let mut sleep_cancel = node.sleep_cancel.unwrap_or(true);
    for (key, value) in annotations {
        let Some(name) = key.strip_prefix(PREFIX) else {
            continue;
        };
        match name {
            "idle-timeout" => {
                idle_timeout = self::idle_timeout(value).ok_or_else(|| {
                    bad(
                        key,
                        value,
                        "expected a duration from 1s to 168h, such as 30s, 5m or 1h",
                    )
                })?
            }
            "doze-after" => {
                doze = doze_after(value).ok_or_else(|| bad(key, value, DOZE_AFTER_EXPECTED))?
            }
            "template" => {
                lightwhale_status::template::check_name(value).map_err(|_| {
                    bad(
                        key,
                        value,
                        "expected a template name: 1 to 63 of letters, digits, '-', '_' or '.', starting with a letter or digit",
                    )
                })?;
                template = Some(value.clone());
            }
            "ports" => {
                ports = parse_ports(value).ok_or_else(|| {
                    bad(
                        key,
                        value,
                        "expected a comma-separated list of TCP ports 1-65535, e.g. 80,8080",
                    )
                })?
            }
            "criu-profile" => {
                if !valid_profile_name(value) {
                    return Err(bad(
                        key,
                        value,
                        "expected a profile name of letters, digits, '-' or '_'",
                    ));
                }
                profile = value.clone();
            }
            "sleep" => {
                enabled = parse_bool(value).ok_or_else(|| {
                    bad(key, value, "expected on or off (or true/false, yes/no, 1/0)")
                })?;
            }
            "sleep-cancel" => {
                sleep_cancel = parse_bool(value).ok_or_else(|| {
                    bad(key, value, "expected on or off (or true/false, yes/no, 1/0)")
                })?;
            }
            "pre-sleep-exec" => {
                pre_sleep_exec = Some(parse_command(value).ok_or_else(|| {
                    bad(key, value, "expected a shell command, or a JSON array of arguments such as [\"/bin/sync\"]")
                })?)
            }
            "post-wake-exec" => {
                post_wake_exec = Some(parse_command(value).ok_or_else(|| {
                    bad(key, value, "expected a shell command, or a JSON array of arguments such as [\"/bin/sync\"]")
                })?)
            }
            "hook-timeout" => {
                hook_timeout = parse_duration(value)
                    .filter(|d| (MIN_HOOK_TIMEOUT..=MAX_HOOK_TIMEOUT).contains(d))
                    .ok_or_else(|| {
                        bad(key, value, "expected a duration from 100ms to 10m, such as 5s")
                    })?
            }
            "lazy-pages" => {
                lazy_pages = LazyMode::parse(value)
                    .ok_or_else(|| bad(key, value, "expected auto, on or off"))?;
            }
            "lazy-pages-threshold" => {
                lazy_threshold = parse_size(value).ok_or_else(|| {
                    bad(key, value, "expected a size such as 128Mi, 1Gi or 500M")
                })?;
            }
            _ => return Err(ConfigError::Unknown(shown(key).trim_matches('"').to_string())),
        }
    }
    let criu_profile_path = match resolve_profile(&profile, profile_dirs) {
        Some(p) => p,
        None if !enabled => PathBuf::new(),
        None => {
            return Err(bad(
                &format!("{PREFIX}criu-profile"),
                &profile,
                "no such CRIU profile in /etc/lightwhale/criu-profiles or /usr/local/share/lightwhale/criu-profiles",
            ))
        }
    };
    Ok(SleepConfig {
        enabled,
        idle_timeout,
        // A doze as long as the idle timeout would never come before the sleep.
        doze_after: doze.filter(|d| *d < idle_timeout),
        ports,
        criu_profile: profile,
        criu_profile_path,
        cpu_permille: node.cpu_permille.unwrap_or(20),
        pre_sleep_exec,
        post_wake_exec,
        hook_timeout,
        lazy_pages,
        lazy_threshold,
        memory_floor: match &node.memory_floor {
            Some(v) => Some(parse_size(v).ok_or_else(|| {
                node_err("memory-floor", v, "expected a size such as 2Gi or 500M")
            })?),
            None => None,
        },
        image_budget: match &node.image_budget {
            Some(v) => Some(parse_size(v).ok_or_else(|| {
                node_err("image-budget", v, "expected a size such as 20Gi or 500M")
            })?),
            None => None,
        },
        wake_memory_reserve: match &node.wake_memory_reserve {
            Some(v) => parse_size(v).ok_or_else(|| {
                node_err(
                    "wake-memory-reserve",
                    v,
                    "expected a size such as 64Mi or 1Gi",
                )
            })?,
            None => DEFAULT_WAKE_MEMORY_RESERVE,
        },
        restore_slots: node
            .max_concurrent_restores
            .unwrap_or_else(default_restore_slots),
        template,
        sleep_cancel,
        wake_memory_wait: match &node.wake_memory_wait {
            Some(v) => parse_duration(v)
                .filter(|d| *d <= Duration::from_secs(600))
                .ok_or_else(|| {
                    node_err(
                        "wake-memory-wait",
                        v,
                        "expected a duration up to 10m, such as 30s",
                    )
                })?,
            None => DEFAULT_WAKE_MEMORY_WAIT,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(k: &str, v: &str) -> Vec<(String, String)> {
        vec![(format!("{PREFIX}{k}"), v.to_string())]
    }

    fn dirs() -> (tempfile::TempDir, Vec<PathBuf>) {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("default.conf"), "network-lock skip\n").expect("write");
        let v = vec![d.path().to_path_buf()];
        (d, v)
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64Mi"), Some(64 << 20));
        assert_eq!(parse_size("1Gi"), Some(1 << 30));
        assert_eq!(parse_size("500M"), Some(500_000_000));
        for bad in ["", "Mi", "-1Mi", "1.5Gi", "1 Gi", "3Ti", "99999999999999Gi"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lazy_choice() {
        let (_d, dirs) = dirs();
        let c = sleep_config(&[], &NodeConfig::default(), &dirs).expect("defaults");
        assert_eq!(c.lazy_pages, LazyMode::Auto);
        assert!(!c.lazy_for(16 << 20));
        assert!(c.lazy_for(1 << 30));
        let mut a = ann("lazy-pages-threshold", "8Mi");
        a.extend(ann("lazy-pages", "auto"));
        let c = sleep_config(&a, &NodeConfig::default(), &dirs).expect("threshold");
        assert!(c.lazy_for(16 << 20));
        let c =
            sleep_config(&ann("lazy-pages", "off"), &NodeConfig::default(), &dirs).expect("off");
        assert!(!c.lazy_for(u64::MAX));
        let node = NodeConfig {
            lazy_pages: Some("on".into()),
            ..Default::default()
        };
        let c = sleep_config(&[], &node, &dirs).expect("node on");
        assert!(c.lazy_for(4096));
        let node = NodeConfig {
            lazy_pages_threshold: Some("lots".into()),
            ..Default::default()
        };
        assert!(sleep_config(&[], &node, &dirs).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5m"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in [
            "", "2", "s", "-1s", "0s", "2d", "1e400s", "NaNs", "inf s", "999h", "2 s x",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn doze_after() {
        let (_d, dirs) = dirs();
        let node = NodeConfig::default();
        let c = sleep_config(&[], &node, &dirs).expect("defaults");
        assert_eq!(c.doze_after, None, "off unless asked for");
        let mut a = ann("doze-after", "5s");
        a.extend(ann("idle-timeout", "1m"));
        let c = sleep_config(&a, &node, &dirs).expect("doze");
        assert_eq!(c.doze_after, Some(Duration::from_secs(5)));
        assert_eq!(c.view(Path::new("/x")).doze_after_ms, Some(5000));
        // Not shorter than the idle timeout: the sleep would come first; no doze.
        let mut a = ann("doze-after", "2m");
        a.extend(ann("idle-timeout", "1m"));
        assert_eq!(sleep_config(&a, &node, &dirs).expect("ok").doze_after, None);
        // The node's default, and a container that turns it off.
        let node = NodeConfig {
            doze_after: Some("10s".into()),
            ..Default::default()
        };
        let c = sleep_config(&[], &node, &dirs).expect("node default");
        assert_eq!(c.doze_after, Some(Duration::from_secs(10)));
        let c = sleep_config(&ann("doze-after", "OFF"), &node, &dirs).expect("off");
        assert_eq!(c.doze_after, None);
        for v in ["on", "soon", "0s", "500ms", "9999h"] {
            let e =
                sleep_config(&ann("doze-after", v), &NodeConfig::default(), &dirs).expect_err(v);
            assert!(e.to_string().contains("expected off, or a duration"), "{e}");
        }
        let bad_node = NodeConfig {
            doze_after: Some("often".into()),
            ..Default::default()
        };
        let e = sleep_config(&[], &bad_node, &dirs).expect_err("node file");
        assert!(e.to_string().contains("doze-after \"often\""), "{e}");
    }

    #[test]
    fn defaults_and_overrides() {
        let (_d, dirs) = dirs();
        let c = sleep_config(&[], &NodeConfig::default(), &dirs).expect("defaults");
        assert!(c.enabled);
        assert_eq!(c.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert!(c.ports.is_empty());
        assert!(c.criu_profile_path.ends_with("default.conf"));

        let mut a = ann("idle-timeout", "2s");
        a.extend(ann("ports", "8080, 80,8080"));
        a.extend(ann("sleep", "off"));
        a.push(("other.io/x".into(), "ignored".into()));
        let c = sleep_config(&a, &NodeConfig::default(), &dirs).expect("overrides");
        assert_eq!(c.idle_timeout, Duration::from_secs(2));
        assert_eq!(c.ports, vec![8080, 80]);
        let h = sleep_config(
            &ann("pre-sleep-exec", "sync; echo bye"),
            &NodeConfig::default(),
            &dirs,
        )
        .expect("hook");
        assert_eq!(
            h.pre_sleep_exec,
            Some(vec!["/bin/sh".into(), "-c".into(), "sync; echo bye".into()])
        );
        let h = sleep_config(
            &ann("post-wake-exec", "[\"/bin/true\", \"x\"]"),
            &NodeConfig::default(),
            &dirs,
        )
        .expect("hook");
        assert_eq!(h.post_wake_exec, Some(vec!["/bin/true".into(), "x".into()]));
        assert!(!c.enabled);
    }

    #[test]
    fn each_bad_annotation_names_itself() {
        let (_d, dirs) = dirs();
        for (k, v) in [
            ("idle-timeout", "soon"),
            ("ports", "http"),
            ("ports", "0"),
            ("ports", "70000"),
            ("ports", ""),
            ("criu-profile", "../etc/passwd"),
            ("criu-profile", "missing"),
            ("sleep", "maybe"),
            ("pre-sleep-exec", "  "),
            ("post-wake-exec", "[\"\"]"),
            ("post-wake-exec", "[1, 2]"),
            ("hook-timeout", "1h"),
            ("hook-timeout", "10ms"),
            ("idle-timeout", "1ms"),
            ("idle-timeout", "999ms"),
            ("lazy-pages", "sometimes"),
            ("lazy-pages-threshold", "1.5Gi"),
            ("lazy-pages-threshold", "12Ti"),
            ("lazy-pages-threshold", "99999999999999Gi"),
        ] {
            let e = sleep_config(&ann(k, v), &NodeConfig::default(), &dirs)
                .expect_err(k)
                .to_string();
            assert!(e.contains(&format!("{PREFIX}{k}")), "{k}={v}: {e}");
            assert!(
                e.contains("expected") || e.contains("no such"),
                "{k}={v}: {e}"
            );
        }
        let e = sleep_config(&ann("idle-timout", "2s"), &NodeConfig::default(), &dirs)
            .expect_err("typo");
        assert!(
            e.to_string()
                .contains("unknown annotation lightwhale.io/idle-timout"),
            "{e}"
        );
    }

    #[test]
    fn one_set_of_boolean_forms_in_any_case() {
        let (_d, dirs) = dirs();
        for (v, on) in [
            ("on", true),
            ("ON", true),
            ("True", true),
            ("yes", true),
            ("1", true),
            ("off", false),
            ("OFF", false),
            ("false", false),
            ("No", false),
            ("0", false),
        ] {
            let c = sleep_config(&ann("sleep", v), &NodeConfig::default(), &dirs).expect(v);
            assert_eq!(c.enabled, on, "{v}");
        }
        for v in ["enabled", "y", "2", ""] {
            assert!(sleep_config(&ann("sleep", v), &NodeConfig::default(), &dirs).is_err());
        }
        let c =
            sleep_config(&ann("lazy-pages", "AUTO"), &NodeConfig::default(), &dirs).expect("AUTO");
        assert_eq!(c.lazy_pages, LazyMode::Auto);
    }

    #[test]
    fn a_rejected_value_is_echoed_short() {
        let (_d, dirs) = dirs();
        let huge = "x".repeat(10_000);
        let e = sleep_config(&ann("idle-timeout", &huge), &NodeConfig::default(), &dirs)
            .expect_err("huge")
            .to_string();
        assert!(e.len() < 300, "{} bytes: {e}", e.len());
        assert!(e.contains("(10000 bytes)"), "{e}");
        // Multi-byte characters are cut between characters, never inside one.
        let wide = "é".repeat(100);
        let e = sleep_config(&ann("ports", &wide), &NodeConfig::default(), &dirs)
            .expect_err("wide")
            .to_string();
        assert!(e.contains("(200 bytes)"), "{e}");
        let e = sleep_config(&ann(&"k".repeat(500), "1"), &NodeConfig::default(), &dirs)
            .expect_err("unknown")
            .to_string();
        assert!(e.len() < 400, "{e}");
    }

    #[test]
    fn duration_limits_are_the_documented_ones() {
        let (_d, dirs) = dirs();
        let c = sleep_config(&ann("idle-timeout", "1s"), &NodeConfig::default(), &dirs)
            .expect("1s is the minimum");
        assert_eq!(c.idle_timeout, MIN_IDLE_TIMEOUT);
        let c = sleep_config(&ann("hook-timeout", "100ms"), &NodeConfig::default(), &dirs)
            .expect("100ms");
        assert_eq!(c.hook_timeout, MIN_HOOK_TIMEOUT);
        let node = NodeConfig {
            idle_timeout: Some("10ms".into()),
            ..Default::default()
        };
        assert!(sleep_config(&[], &node, &dirs).is_err());
    }

    #[test]
    fn node_file() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("config.toml");
        std::fs::write(
            &p,
            "idle-timeout = \"5m\"\nsleep = false\nimage-dir = \"/srv/lw\"\n",
        )
        .expect("write");
        let n = NodeConfig::load_from(&p).expect("load");
        assert_eq!(n.image_dir(), PathBuf::from("/srv/lw"));
        assert_eq!(n.sleep, Some(false));
        std::fs::write(&p, "idle_timeout = 3\n").expect("write");
        assert!(NodeConfig::load_from(&p).is_err());
        assert!(NodeConfig::load_from(&d.path().join("absent.toml")).is_ok());
    }

    /// Fuzz-style: arbitrary strings never panic the parsers.
    #[test]
    fn parsers_never_panic() {
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        let alphabet: Vec<char> = "0123456789.,-+ eEsmhdnaNIf\u{0}\u{ff}é/\\"
            .chars()
            .collect();
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 12) as usize;
            let s: String = (0..len)
                .map(|i| alphabet[((seed >> (i * 5)) % alphabet.len() as u64) as usize])
                .collect();
            let _ = parse_duration(&s);
            let _ = parse_ports(&s);
            let _ = parse_bool(&s);
            let _ = valid_profile_name(&s);
            let _ = parse_command(&s);
        }
    }

    #[test]
    fn memory_floor_is_a_node_size() {
        let dirs = [std::env::temp_dir()];
        let node = NodeConfig {
            memory_floor: Some("2Gi".into()),
            sleep: Some(false),
            ..Default::default()
        };
        let c = sleep_config(&[], &node, &dirs).expect("ok");
        assert_eq!(c.memory_floor, Some(2 << 30));
        let off = NodeConfig {
            sleep: Some(false),
            ..Default::default()
        };
        assert_eq!(
            sleep_config(&[], &off, &dirs).expect("ok").memory_floor,
            None
        );
        let bad = NodeConfig {
            memory_floor: Some("lots".into()),
            sleep: Some(false),
            ..Default::default()
        };
        let e = sleep_config(&[], &bad, &dirs).expect_err("refused");
        assert!(e.to_string().contains("memory-floor"), "{e}");
    }
}
