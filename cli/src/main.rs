//! `lightwhale`: list lightwhale containers and put them to sleep or wake them by hand.
//!
//! Each shim keeps, per container, a status file and a control socket under
//! `/run/lightwhale/containers/<namespace>/<id>.{json,sock}`; this tool reads the one and
//! talks to the other, so it needs no daemon of its own. Records of deleted containers
//! are kept under `/run/lightwhale/exited` (`ps -a`, `inspect` of an ended container).

mod control;
mod docker;
mod inspect;
mod metrics;
mod moving;
mod resolve;
mod serve;
mod store;
mod template;
mod view;

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use lightwhale_status::{Command, ContainerStatus};

use crate::docker::Docker;
use crate::store::Entry;

/// The operator's view of containers that lightwhale puts to sleep (checkpoints with
/// CRIU when idle) and wakes on the next connection.
#[derive(Debug, Parser)]
#[command(name = "lightwhale", version, propagate_version = true)]
#[command(
    after_help = "ID is a full container id, a unique prefix of one, a name \
    recorded by the shim (Kubernetes, nerdctl) or a Docker container name."
)]
struct Cli {
    /// Only look at containers in this containerd namespace (Docker's is `moby`,
    /// Kubernetes' `k8s.io`).
    #[arg(short, long, global = true, value_name = "NS")]
    namespace: Option<String>,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// List lightwhale containers: awake or asleep, since when, last sleep and wake
    /// durations, memory freed, and why an awake one is not asleep.
    Ps {
        /// Output format: an aligned table, or the status records as a JSON array.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Also show containers that have exited, deleted ones included (hidden by
        /// default, as in `docker ps`).
        #[arg(short, long)]
        all: bool,
        /// The same as `--format json` (the flag of earlier versions).
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Checkpoint a container now; it wakes on its next connection.
    Sleep {
        /// The container: id, unique id prefix, or name.
        id: String,
    },
    /// Doze a container now: freeze it in place and page its memory out to swap; its
    /// next connection thaws it in about a millisecond.
    Doze {
        /// The container: id, unique id prefix, or name.
        id: String,
    },
    /// Restore a sleeping container now (or thaw a dozing one).
    Wake {
        /// The container: id, unique id prefix, or name.
        id: String,
    },
    /// Show one container's record: configuration in force, counters, the reason it is
    /// not asleep, and its last error (with the tail of CRIU's log).
    Inspect {
        /// The container: id, unique id prefix, or name.
        id: String,
        /// Output format: the status record as JSON, or a readable summary.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Serve Prometheus metrics at http://ADDR/metrics: containers by state, sleeps and
    /// wakes, their durations, failures, memory freed. Read from the status files on each
    /// scrape; never in a wake's way.
    Metrics {
        /// Address (host:port) to serve GET /metrics on. Loopback by default: listen on
        /// another address on purpose (there is no TLS or authentication).
        #[arg(long, value_name = "ADDR", default_value = metrics::DEFAULT_LISTEN)]
        listen: String,
        /// Print one exposition to stdout and exit (for node_exporter's textfile
        /// collector, cron, tests).
        #[arg(long, conflicts_with = "listen")]
        once: bool,
        /// Add an `id` label with the container id to every series: one series per
        /// container and metric. High cardinality; off by default.
        #[arg(long)]
        per_container: bool,
    },
    /// Templates: a warmed container's checkpoint that new containers start from
    /// (annotation lightwhale.io/template=NAME) instead of running their entrypoint.
    Template {
        #[command(subcommand)]
        command: TemplateCmd,
        /// Where the node keeps templates (`<image-dir>/.templates` when the node config
        /// moves its image directory).
        #[arg(long, global = true, value_name = "DIR", default_value = lightwhale_status::TEMPLATES_DIR)]
        dir: PathBuf,
    },
    /// Write a sleeping container (put to sleep first if awake) to FILE: its checkpoint,
    /// its filesystem changes, containerd's record of it, and a checksum of each.
    Export {
        /// The container: id, unique id prefix, or name.
        id: String,
        /// The archive to write.
        file: PathBuf,
        /// containerd's socket (for the container's image and spec).
        #[arg(long, value_name = "SOCKET", default_value = moving::CONTAINERD)]
        address: PathBuf,
    },
    /// Import an exported container on this host: check the archive and the host, create
    /// the container through containerd and leave it asleep, to wake on its first
    /// connection with its memory and files as they were.
    Import {
        /// The archive `lightwhale export` wrote.
        file: PathBuf,
        /// The container's id here (default: the source's). The namespace is the
        /// source's unless -n says otherwise.
        #[arg(long)]
        id: Option<String>,
        /// containerd's socket to create the container through.
        #[arg(long, value_name = "SOCKET", default_value = moving::CONTAINERD)]
        address: PathBuf,
        /// Only install it as a template (NAME, or moved-<id>): for a container Docker
        /// made, run it with --annotation lightwhale.io/template=NAME.
        #[arg(long)]
        template_only: bool,
        /// The template's name (default moved-<id>).
        #[arg(long)]
        name: Option<String>,
        /// Once it runs here, remove the source (when its containerd is on this host).
        #[arg(long)]
        remove_source: bool,
        /// Where the node keeps templates.
        #[arg(long, value_name = "DIR", default_value = lightwhale_status::TEMPLATES_DIR)]
        dir: PathBuf,
    },
    /// Print a shell completion script, e.g. `lightwhale completions bash >
    /// /etc/bash_completion.d/lightwhale`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: Shell,
    },
}

#[derive(Debug, Subcommand)]
enum TemplateCmd {
    /// Checkpoint a running container (it keeps running) as template NAME.
    Create {
        /// The template's name: letters, digits, '-', '_', '.'.
        name: String,
        /// The container: id, unique id prefix, or name.
        #[arg(long, value_name = "ID")]
        from: String,
    },
    /// List the node's templates.
    Ls,
    /// Show a template's record (JSON): where it came from, what a clone must match.
    Inspect { name: String },
    /// Remove a template (its clones run on).
    Rm { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// The shells with completion scripts (a subset of clap_complete's, the ones supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl From<Shell> for clap_complete::Shell {
    fn from(s: Shell) -> Self {
        match s {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        }
    }
}

/// Where the records are: the live ones, and those of deleted containers.
struct Dirs<'a> {
    live: &'a Path,
    exited: &'a Path,
}

fn main() -> ExitCode {
    // clap prints usage errors itself and exits 2 (0 for --help and --version).
    let cli = Cli::parse();
    let dirs = Dirs {
        live: Path::new(lightwhale_status::CONTAINERS_DIR),
        exited: Path::new(lightwhale_status::EXITED_DIR),
    };
    match run(cli, &dirs, &Docker::default()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lightwhale: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `cli` against the status directories `dirs` and the Docker daemon `docker`.
fn run(cli: Cli, dirs: &Dirs, docker: &Docker) -> Result<()> {
    let ns = cli.namespace.as_deref();
    match cli.command {
        Cmd::Ps { format, all, json } => {
            let format = if json { Format::Json } else { format };
            ps(dirs, docker, ns, format, all)
        }
        Cmd::Sleep { id } => act(dirs.live, docker, ns, &id, Command::Sleep),
        Cmd::Doze { id } => act(dirs.live, docker, ns, &id, Command::Doze),
        Cmd::Wake { id } => act(dirs.live, docker, ns, &id, Command::Wake),
        Cmd::Inspect { id, format } => inspect(dirs, docker, ns, &id, format),
        Cmd::Metrics {
            listen,
            once,
            per_container,
        } => {
            let mut exporter = metrics::Exporter::new(metrics::Options {
                per_container,
                namespace: ns.map(str::to_string),
            });
            if once {
                emit(exporter.scrape(dirs)?.as_bytes())
            } else {
                serve::serve(&listen, || exporter.scrape(dirs))
            }
        }
        Cmd::Template { command, dir } => match command {
            TemplateCmd::Create { name, from } => {
                lightwhale_status::template::check_name(&name).map_err(anyhow::Error::msg)?;
                let all = load(dirs.live)?;
                let e = resolve::resolve(&all, &from, ns, |q| docker.id_of(q))?;
                control::command(&e.socket(), &Command::Template(name.clone()))?;
                let line = match template::inspect(&dir, &name) {
                    Ok(m) => format!(
                        "template {}: from {}, checkpoint {:.0} ms, {} of images\n",
                        view::clean(&name),
                        view::clean(view::short_id(&e.id)),
                        m.checkpoint_ms,
                        view::mib(Some(m.images_bytes))
                    ),
                    Err(_) => format!("template {}: taken\n", view::clean(&name)),
                };
                emit(line.as_bytes())
            }
            TemplateCmd::Ls => {
                let (text, warnings) = template::table(&dir, view::now_ms());
                for w in warnings {
                    eprintln!("lightwhale: {w}");
                }
                emit(text.as_bytes())
            }
            TemplateCmd::Inspect { name } => emit_json(&template::inspect(&dir, &name)?),
            TemplateCmd::Rm { name } => {
                template::remove(&dir, &name, &load(dirs.live)?)?;
                emit(format!("{}\n", view::clean(&name)).as_bytes())
            }
        },
        Cmd::Export { id, file, address } => {
            let all = load(dirs.live)?;
            let e = resolve::resolve(&all, &id, ns, |q| docker.id_of(q))?;
            emit(moving::export(e, &file, &address)?.as_bytes())
        }
        Cmd::Import {
            file,
            id,
            address,
            template_only,
            name,
            remove_source,
            dir,
        } => emit(
            moving::import(moving::ImportOpts {
                file: &file,
                templates: &dir,
                name,
                address: (!template_only).then_some(address),
                namespace: ns.map(str::to_string),
                id,
                remove_source,
                status_dir: dirs.live,
            })?
            .as_bytes(),
        ),
        Cmd::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(
                clap_complete::Shell::from(shell),
                &mut Cli::command(),
                "lightwhale",
                &mut out,
            );
            emit(&out)
        }
    }
}

/// The status records under `dir`, with a newer shim's files reported on stderr.
fn load(dir: &Path) -> Result<Vec<Entry>> {
    let scan = store::scan(dir)?;
    for w in &scan.warnings {
        eprintln!("lightwhale: {w}");
    }
    Ok(scan.entries)
}

fn ps(dirs: &Dirs, docker: &Docker, ns: Option<&str>, format: Format, all: bool) -> Result<()> {
    let mut entries = load(dirs.live)?;
    if all {
        // A container whose record is live is not listed twice.
        let live: std::collections::HashSet<(String, String)> = entries
            .iter()
            .map(|e| (e.namespace.clone(), e.id.clone()))
            .collect();
        entries.extend(
            load(dirs.exited)?
                .into_iter()
                .filter(|e| !live.contains(&(e.namespace.clone(), e.id.clone()))),
        );
    }
    let entries: Vec<Entry> = entries
        .into_iter()
        .filter(|e| ns.is_none_or(|n| n == e.namespace))
        .filter(|e| all || view::shown_by_default(&e.status))
        .collect();
    if format == Format::Json {
        let list: Vec<&ContainerStatus> = entries.iter().map(|e| &e.status).collect();
        return emit_json(&list);
    }
    // Docker is asked (once, for every name) only when some container has no name of its
    // own, so hosts without Docker pay nothing.
    let docker_names = if entries.iter().any(|e| e.status.name.is_none()) {
        docker.names()
    } else {
        HashMap::new()
    };
    let now = view::now_ms();
    let rows: Vec<_> = entries
        .iter()
        .map(|e| view::ps_row(e, view::name_of(e, &docker_names), now))
        .collect();
    emit(view::ps_table(&rows).as_bytes())
}

fn act(dir: &Path, docker: &Docker, ns: Option<&str>, id: &str, command: Command) -> Result<()> {
    let all = load(dir)?;
    let e = resolve::resolve(&all, id, ns, |q| docker.id_of(q))?;
    let reply = control::command(&e.socket(), &command)?;
    let s = &reply.status;
    let line = format!(
        "{}: {} (sleep {}, wake {})\n",
        view::clean(view::short_id(&e.id)),
        s.state,
        view::ms(s.last_sleep_ms),
        view::ms(s.last_wake_ms)
    );
    emit(line.as_bytes())
}

fn inspect(dirs: &Dirs, docker: &Docker, ns: Option<&str>, id: &str, format: Format) -> Result<()> {
    let live = load(dirs.live)?;
    let reply = match resolve::resolve(&live, id, ns, |q| docker.id_of(q)) {
        // The shim's live record when it answers (current even mid-transition), else the
        // file it last wrote.
        Ok(e) => control::request(&e.socket(), &Command::Status).unwrap_or_else(|err| {
            eprintln!("lightwhale: {err:#}; showing the last record written");
            lightwhale_status::Reply {
                ok: true,
                error: None,
                status: e.status.clone(),
            }
        }),
        // A deleted container: its kept record says how it ended.
        Err(not_live) => {
            let exited = load(dirs.exited)?;
            let e = resolve::resolve(&exited, id, ns, |q| docker.id_of(q)).map_err(|_| not_live)?;
            lightwhale_status::Reply {
                ok: true,
                error: None,
                status: e.status.clone(),
            }
        }
    };
    let e_id = reply.status.id.clone();
    match format {
        // stdout stays pure JSON, for scripts (and the end-to-end tests) that parse it.
        Format::Json => emit_json(&reply.status)?,
        Format::Table => {
            let docker_name = match reply.status.name {
                Some(_) => None,
                None => docker_name_of(docker, &e_id),
            };
            let text = inspect::table(&reply.status, docker_name.as_deref(), view::now_ms());
            emit(text.as_bytes())?;
        }
    }
    if !reply.ok {
        bail!(
            "{}",
            reply
                .error
                .as_deref()
                .unwrap_or("the shim refused, giving no reason")
        );
    }
    Ok(())
}

/// Docker's name for the container with full id `id`, if Docker knows it.
fn docker_name_of(docker: &Docker, id: &str) -> Option<String> {
    docker.names().remove(id)
}

fn emit_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    emit(text.as_bytes())
}

/// Writes `bytes` to stdout. A closed pipe (`lightwhale ps | head -1`) is not an error:
/// the reader has all it wanted, and `println!` would panic there.
fn emit(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn arguments_parse_as_documented() {
        let cli = Cli::try_parse_from(["lightwhale", "-n", "moby", "ps", "--format", "json", "-a"])
            .expect("ps");
        assert_eq!(cli.namespace.as_deref(), Some("moby"));
        assert!(matches!(
            cli.command,
            Cmd::Ps {
                format: Format::Json,
                all: true,
                json: false
            }
        ));
        let cli = Cli::try_parse_from(["lightwhale", "ps", "--json"]).expect("old flag");
        assert!(matches!(cli.command, Cmd::Ps { json: true, .. }));
        let cli = Cli::try_parse_from(["lightwhale", "inspect", "abc", "--namespace", "k8s.io"])
            .expect("inspect");
        assert_eq!(cli.namespace.as_deref(), Some("k8s.io"));
        assert!(matches!(
            cli.command,
            Cmd::Inspect {
                format: Format::Json,
                ..
            }
        ));
        let usage = Cli::try_parse_from(["lightwhale", "sleep"]).expect_err("no id");
        assert_eq!(usage.exit_code(), 2);
        let usage = Cli::try_parse_from(["lightwhale", "completions", "tcsh"]).expect_err("shell");
        assert_eq!(usage.exit_code(), 2);
        let cli = Cli::try_parse_from(["lightwhale", "metrics"]).expect("metrics");
        assert!(matches!(
            cli.command,
            Cmd::Metrics { ref listen, once: false, per_container: false } if listen == "127.0.0.1:9464"
        ));
        let cli = Cli::try_parse_from([
            "lightwhale",
            "-n",
            "moby",
            "metrics",
            "--once",
            "--per-container",
        ])
        .expect("metrics --once");
        assert!(matches!(
            cli.command,
            Cmd::Metrics {
                once: true,
                per_container: true,
                ..
            }
        ));
        let usage = Cli::try_parse_from(["lightwhale", "metrics", "--once", "--listen", ":9464"])
            .expect_err("--once prints, --listen serves");
        assert_eq!(usage.exit_code(), 2);
    }

    fn dirs(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        (root.join("live"), root.join("exited"))
    }

    #[test]
    fn an_empty_status_dir_lists_nothing_and_finds_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (live, exited) = dirs(tmp.path());
        let d = Dirs {
            live: &live,
            exited: &exited,
        };
        let docker = Docker::at(tmp.path().join("no-docker.sock"));
        let cli = Cli::try_parse_from(["lightwhale", "wake", "abc"]).expect("wake");
        let msg = run(cli, &d, &docker)
            .expect_err("nothing there")
            .to_string();
        assert!(msg.contains("no lightwhale container matches"), "{msg}");
        let cli = Cli::try_parse_from(["lightwhale", "sleep", ""]).expect("sleep");
        assert!(run(cli, &d, &docker).is_err());
    }

    #[test]
    fn metrics_once_reads_the_directories_and_a_bad_address_is_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (live, exited) = dirs(tmp.path());
        let d = Dirs {
            live: &live,
            exited: &exited,
        };
        let docker = Docker::at(tmp.path().join("no-docker.sock"));
        let cli = Cli::try_parse_from(["lightwhale", "metrics", "--once"]).expect("metrics");
        run(cli, &d, &docker).expect("an empty node is no error");
        let cli = Cli::try_parse_from(["lightwhale", "metrics", "--listen", "not an address"])
            .expect("metrics");
        let msg = run(cli, &d, &docker).expect_err("bad address").to_string();
        assert!(msg.contains("cannot listen on not an address"), "{msg}");
    }

    #[test]
    fn a_deleted_container_is_still_inspected_from_its_kept_record() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (live, exited) = dirs(tmp.path());
        let mut s = ContainerStatus::new("moby", "abcdef0123456789", Default::default());
        s.state = lightwhale_status::State::Exited;
        s.last_error = Some("criu lazy-pages exited with status 1".into());
        lightwhale_status::write_status(
            &lightwhale_status::exited_path(&exited, "moby", "abcdef0123456789"),
            &s,
        )
        .expect("write");
        let d = Dirs {
            live: &live,
            exited: &exited,
        };
        let docker = Docker::at(tmp.path().join("no-docker.sock"));
        let cli = Cli::try_parse_from(["lightwhale", "inspect", "abcdef"]).expect("inspect");
        run(cli, &d, &docker).expect("the kept record is found");
        // Not among the live ones: sleep and wake refuse it.
        let cli = Cli::try_parse_from(["lightwhale", "wake", "abcdef"]).expect("wake");
        assert!(run(cli, &d, &docker).is_err());
    }
}
