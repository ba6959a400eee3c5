//! `lightwhale-cri`: a CRI client with crictl's command names, flags and JSON config
//! files, for the commands lightwhale's Kubernetes tests use (no kubelet, crictl or Go
//! here). `lightwhale-cri --help` lists them.

mod client;
mod commands;
mod config;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "lightwhale-cri",
    version,
    about = "A CRI client mirroring crictl: pods and containers over containerd's CRI plugin",
    after_help = "Config files are crictl's JSON (snake_case fields; fields left out take their zero value).\n\
                  Unlike crictl, exec always runs synchronously (ExecSync), and -t/--timeout defaults to 60s."
)]
struct Cli {
    /// The CRI endpoint (a unix:// socket)
    #[arg(
        short = 'r',
        long,
        env = "CONTAINER_RUNTIME_ENDPOINT",
        default_value = client::DEFAULT_ENDPOINT
    )]
    runtime_endpoint: String,

    /// Deadline for connecting and for each call: 30, 30s, 2m, 500ms
    #[arg(short = 't', long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Table,
}

#[derive(Clone, Copy, ValueEnum)]
enum PodState {
    Ready,
    Notready,
}

#[derive(Clone, Copy, ValueEnum)]
enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

#[derive(Subcommand)]
enum Command {
    /// Display runtime version information
    Version,
    /// Run a new pod sandbox from a pod config file; prints its id
    Runp {
        /// Runtime handler to use (e.g. lightwhale); the runtime's default if not given
        #[arg(short = 'r', long)]
        runtime: Option<String>,
        /// Pod sandbox config (crictl's JSON)
        pod_config: PathBuf,
    },
    /// Create a container in a pod; prints its id
    Create {
        pod_id: String,
        /// Container config (crictl's JSON)
        container_config: PathBuf,
        /// The pod's sandbox config (crictl's JSON)
        pod_config: PathBuf,
    },
    /// Start one or more created containers
    Start {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// List pod sandboxes
    Pods {
        /// Only pods whose name matches this regular expression
        #[arg(long)]
        name: Option<String>,
        /// Only pods whose namespace matches this regular expression
        #[arg(long)]
        namespace: Option<String>,
        /// Only pods in this state
        #[arg(short = 's', long, value_enum)]
        state: Option<PodState>,
        /// Only the pod with this id (or id prefix)
        #[arg(long)]
        id: Option<String>,
        /// Only print pod ids
        #[arg(short = 'q', long)]
        quiet: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
        /// Show whole ids in the table
        #[arg(long)]
        no_trunc: bool,
    },
    /// List containers (running ones unless -a or --state)
    Ps {
        /// All containers, whatever their state
        #[arg(short = 'a', long)]
        all: bool,
        /// Only containers of this pod (id or id prefix)
        #[arg(short = 'p', long)]
        pod: Option<String>,
        /// Only containers whose name matches this regular expression
        #[arg(long)]
        name: Option<String>,
        /// Only containers in this state
        #[arg(short = 's', long, value_enum)]
        state: Option<ContainerState>,
        /// Only the container with this id (or id prefix)
        #[arg(long)]
        id: Option<String>,
        /// Only print container ids
        #[arg(short = 'q', long)]
        quiet: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
        /// Show whole ids in the table
        #[arg(long)]
        no_trunc: bool,
    },
    /// Show the status of one or more pods (JSON)
    Inspectp {
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Show the status of one or more containers (JSON)
    Inspect {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Run a command in a running container; exits with the command's exit code
    Exec {
        /// Run synchronously (always the case here: ExecSync)
        #[arg(short = 's', long)]
        sync: bool,
        /// Seconds the command may run (0: no limit)
        #[arg(long, default_value_t = 0)]
        timeout: u32,
        id: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Stop one or more running containers
    Stop {
        /// Seconds to wait before killing the container
        #[arg(short = 't', long, default_value_t = 0)]
        timeout: u32,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Stop one or more pods (their containers and sandbox)
    Stopp {
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Remove one or more containers
    Rm {
        /// Stop a running container first
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Remove one or more pods
    Rmp {
        /// Stop a ready pod first
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        pods: Vec<String>,
    },
}

/// A Go-style duration: "90" (seconds), "30s", "2m", "1h", "500ms".
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (30s, 2m, 500ms)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !(0.001..=86_400.0).contains(&secs) {
        return Err(format!("{text:?}: must be between 1ms and 24h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lightwhale-cri: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        // The reader went away (`| head`): nothing left to say to it.
        Err(client::Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lightwhale-cri: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn exec_keeps_the_command_flags() {
        let cli = Cli::try_parse_from([
            "lightwhale-cri",
            "exec",
            "-s",
            "--timeout",
            "5",
            "abc",
            "sh",
            "-c",
            "echo -n hi",
        ])
        .expect("parses");
        let Command::Exec {
            id, cmd, timeout, ..
        } = cli.command
        else {
            panic!("not exec");
        };
        assert_eq!((id.as_str(), timeout), ("abc", 5));
        assert_eq!(cmd, ["sh", "-c", "echo -n hi"]);
    }

    #[test]
    fn subcommand_flags_do_not_clash_with_global_ones() {
        let cli = Cli::try_parse_from([
            "lightwhale-cri",
            "-r",
            "unix:///x.sock",
            "-t",
            "5s",
            "runp",
            "-r",
            "lightwhale",
            "pod.json",
        ])
        .expect("parses");
        assert_eq!(cli.runtime_endpoint, "unix:///x.sock");
        assert!(
            matches!(cli.command, Command::Runp { runtime: Some(ref r), .. } if r == "lightwhale")
        );
        assert!(Cli::try_parse_from(["lightwhale-cri", "stop", "-t", "3", "a", "b"]).is_ok());
        assert!(Cli::try_parse_from(["lightwhale-cri", "exec", "abc"]).is_err());
        assert!(Cli::try_parse_from(["lightwhale-cri", "pods", "--state", "gone"]).is_err());
    }
}
