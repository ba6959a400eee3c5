//! `lightwhale`: list lightwhale containers and put them to sleep or wake them by hand.
//!
//! Each shim keeps, per container, a status file and a control socket under
//! `/run/lightwhale/containers/<namespace>/<id>.{json,sock}`; this tool reads the one and
//! talks to the other, so it needs no daemon of its own.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use lightwhale_status::{ContainerStatus, Reply, State};

const DIR: &str = lightwhale_status::CONTAINERS_DIR;

const USAGE: &str = "usage: lightwhale <command>
  ps [--json]          lightwhale containers: awake or asleep, since when, last sleep and
                       wake durations, memory freed
  sleep ID             checkpoint the container now (it wakes on the next connection)
  wake ID              restore a sleeping container now
  inspect ID           configuration in force, counters, last error (with CRIU's log tail)
ID is a container id or a unique prefix of one; -n NAMESPACE narrows the search.";

struct Entry {
    namespace: String,
    id: String,
    status: ContainerStatus,
}

/// Every readable status record under `dir`; a record this CLI cannot read is reported
/// on stderr (a newer shim's says so) and skipped.
fn entries(dir: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    let Ok(namespaces) = std::fs::read_dir(dir) else {
        return out;
    };
    for ns in namespaces.flatten() {
        let Ok(files) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        for f in files.flatten() {
            let path = f.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let status = match lightwhale_status::read_status(&path) {
                Ok(s) => s,
                Err(e @ lightwhale_status::ReadError::Newer { .. }) => {
                    eprintln!("lightwhale: {e}");
                    continue;
                }
                Err(_) => continue,
            };
            out.push(Entry {
                namespace: ns.file_name().to_string_lossy().into_owned(),
                id: path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                status,
            });
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
    out
}

fn resolve<'a>(all: &'a [Entry], id: &str, ns: Option<&str>) -> Result<&'a Entry> {
    if id.is_empty() {
        bail!("an empty ID matches nothing");
    }
    let found: Vec<&Entry> = all
        .iter()
        .filter(|e| ns.is_none_or(|n| n == e.namespace) && e.id.starts_with(id))
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => bail!("no lightwhale container matches {id:?}"),
        many => bail!(
            "{id:?} is ambiguous: {}",
            many.iter()
                .map(|e| format!("{}/{}", e.namespace, short(&e.id)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn socket(e: &Entry) -> PathBuf {
    Path::new(DIR)
        .join(&e.namespace)
        .join(format!("{}.sock", e.id))
}

/// Sends one command to the container's shim and returns its answer.
fn request(e: &Entry, command: &str) -> Result<Reply> {
    let path = socket(e);
    let mut s = UnixStream::connect(&path)
        .with_context(|| format!("connect to the shim at {}", path.display()))?;
    // A wake of a large task can take seconds; a sleep waits for CRIU's dump.
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|err| anyhow!("bad answer from the shim ({err}): {line:?}"))
}

fn short(id: &str) -> &str {
    id.char_indices()
        .nth(12)
        .map(|(i, _)| &id[..i])
        .unwrap_or(id)
}

fn ago(since_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    if since_ms == 0 {
        return "-".into();
    }
    let s = now.saturating_sub(since_ms) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn ms(v: Option<u64>) -> String {
    v.map(|m| format!("{m}ms")).unwrap_or_else(|| "-".into())
}

fn mib(v: Option<u64>) -> String {
    v.map(|b| format!("{:.1}MiB", b as f64 / 1048576.0))
        .unwrap_or_else(|| "-".into())
}

fn ps(json: bool) -> Result<()> {
    let all = entries(Path::new(DIR));
    if json {
        let list: Vec<&ContainerStatus> = all.iter().map(|e| &e.status).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<14} {:<10} {:<7} {:>8} {:>7} {:>7} {:>10} {:>6} {:>6}",
        "CONTAINER", "NAMESPACE", "STATE", "SINCE", "SLEEP", "WAKE", "FREED", "SLEEPS", "WAKES"
    );
    for e in &all {
        let s = &e.status;
        println!(
            "{:<14} {:<10} {:<7} {:>8} {:>7} {:>7} {:>10} {:>6} {:>6}",
            short(&e.id),
            e.namespace,
            s.state.as_str(),
            ago(s.since_unix_ms),
            ms(s.last_sleep_ms),
            ms(s.last_wake_ms),
            if s.state == State::Asleep {
                mib(s.memory_freed_bytes)
            } else {
                "-".into()
            },
            s.sleeps,
            s.wakes,
        );
    }
    Ok(())
}

fn act(command: &str, id: &str, ns: Option<&str>) -> Result<()> {
    let all = entries(Path::new(DIR));
    let e = resolve(&all, id, ns)?;
    let answer = request(e, command)?;
    if command == "status" {
        println!("{}", serde_json::to_string_pretty(&answer.status)?);
    }
    if !answer.ok {
        bail!("{}", answer.error.as_deref().unwrap_or("the shim refused"));
    }
    if command != "status" {
        let s = &answer.status;
        println!(
            "{}: {} (sleep {}, wake {})",
            short(&e.id),
            s.state,
            ms(s.last_sleep_ms),
            ms(s.last_wake_ms)
        );
    }
    Ok(())
}

fn run(args: &[String]) -> Result<()> {
    let mut ns = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-n" | "--namespace" => {
                ns = Some(
                    it.next()
                        .ok_or_else(|| anyhow!("{a} needs a namespace"))?
                        .clone(),
                )
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => rest.push(a.as_str()),
        }
    }
    match rest.as_slice() {
        ["ps"] => ps(false),
        ["ps", "--json"] => ps(true),
        ["sleep", id] => act("sleep", id, ns.as_deref()),
        ["wake", id] => act("wake", id, ns.as_deref()),
        ["inspect", id] => act("status", id, ns.as_deref()),
        _ => bail!("{USAGE}"),
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lightwhale: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(ns: &str, id: &str) -> Entry {
        Entry {
            namespace: ns.into(),
            id: id.into(),
            status: ContainerStatus::default(),
        }
    }

    #[test]
    fn prefixes_resolve_uniquely() {
        let all = vec![
            e("moby", "abc123"),
            e("moby", "abd999"),
            e("default", "zzz"),
        ];
        assert_eq!(
            resolve(&all, "abc", None).map(|e| e.id.as_str()).ok(),
            Some("abc123")
        );
        assert!(resolve(&all, "ab", None).is_err());
        assert!(resolve(&all, "", None).is_err());
        assert!(resolve(&all, "zzz", Some("moby")).is_err());
        assert!(resolve(&all, "zzz", Some("default")).is_ok());
    }

    #[test]
    fn short_ids_never_split_a_character() {
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("ééééééééééééé"), "éééééééééééé");
        assert_eq!(short("abc"), "abc");
    }
}
