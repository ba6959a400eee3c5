//! A driver for the runc binary.
//!
//! The `runc` crate's checkpoint and restore are stubs, and its process handling would
//! reap children behind the shim's back; this driver spawns runc itself and collects
//! exits through [`crate::reaper`]. Every call logs runc's own error text (from its JSON
//! log) into the returned [`Error::Runtime`], so the client sees why runc refused.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Deserialize;
use tokio::io::AsyncReadExt;

use crate::error::RuntimeErrorKind;
use crate::{reaper, Error, Result};

/// The container's stdio as runc should pass it to the process it starts.
#[derive(Default)]
pub struct ProcessIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
    systemd_cgroup: bool,
    /// Put first on CRIU's PATH at restore: lightwhale's faster stand-ins for the helper
    /// programs CRIU runs (tar for tmpfs contents).
    criu_helpers: Option<PathBuf>,
    /// CRIU's action script for dumps that may be called off (`CheckpointOpts::cancel_flag`).
    dump_action: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct CreateOpts {
    pub pid_file: PathBuf,
    /// Where runc writes its JSON log; its last error becomes the error message.
    pub log_file: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ExecOpts {
    /// Wait for the process and return its exit status instead of detaching.
    pub wait: bool,
    pub process_json: PathBuf,
    pub pid_file: PathBuf,
    pub log_file: PathBuf,
    pub console_socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct CheckpointOpts {
    pub image_path: PathBuf,
    pub work_path: Option<PathBuf>,
    pub parent_path: Option<PathBuf>,
    pub leave_running: bool,
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    /// Leave the pages to a `criu lazy-pages` daemon instead of writing them.
    pub lazy_pages: bool,
    /// With `lazy_pages`: fd number (in runc) that gets a byte once the dump is ready.
    pub status_fd: Option<i32>,
    pub page_server: Option<String>,
    pub empty_ns: Vec<String>,
    pub manage_cgroups_mode: Option<String>,
    pub log_file: PathBuf,
    /// The dump gives up at CRIU's next clean point (before it seizes the task, or after
    /// the images are written and before the task is killed) once this file exists;
    /// `<flag>.taken` then names the point. Needs the runtime's dump action script.
    pub cancel_flag: Option<PathBuf>,
    /// Told the runc process as soon as it is started (it may be killed before CRIU
    /// seizes anything: see `cancel`).
    pub on_spawn: Option<SpawnHook>,
}

/// Called with a handle on a runc process right after it is started.
#[derive(Clone)]
pub struct SpawnHook(pub std::sync::Arc<dyn Fn(OwnedFd) + Send + Sync>);

impl std::fmt::Debug for SpawnHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpawnHook")
    }
}

#[derive(Debug, Clone, Default)]
pub struct RestoreOpts {
    pub image_path: PathBuf,
    pub work_path: Option<PathBuf>,
    pub pid_file: PathBuf,
    pub log_file: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub detach: bool,
    pub no_pivot: bool,
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub lazy_pages: bool,
    pub empty_ns: Vec<String>,
    pub manage_cgroups_mode: Option<String>,
}

/// `runc state` output (the fields the shim uses).
#[derive(Debug, Clone, Deserialize)]
pub struct State {
    pub id: String,
    pub pid: i32,
    pub status: String,
    #[serde(default)]
    pub bundle: String,
}

struct Output {
    status: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Runc {
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>, systemd_cgroup: bool) -> Self {
        Runc {
            binary: binary.into(),
            root: root.into(),
            systemd_cgroup,
            criu_helpers: None,
            dump_action: None,
        }
    }

    /// Dumps with a `cancel_flag` run CRIU with `script` as its action script.
    pub fn with_dump_action(mut self, script: Option<PathBuf>) -> Self {
        self.dump_action = script;
        self
    }

    pub fn can_cancel_dump(&self) -> bool {
        self.dump_action.is_some()
    }

    /// Restores run CRIU with `dir` first on its PATH (faster stand-ins for its helpers).
    pub fn with_criu_helpers(mut self, dir: Option<PathBuf>) -> Self {
        self.criu_helpers = dir;
        self
    }

    /// Finds `name` (a path, or a binary name looked up in PATH).
    pub fn find_binary(name: &str) -> Option<PathBuf> {
        if name.contains('/') {
            return Some(PathBuf::from(name));
        }
        let path = std::env::var_os("PATH")
            .unwrap_or_else(|| OsString::from("/usr/sbin:/usr/bin:/sbin:/bin"));
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd
    }

    /// Runs a runc command whose stdout and stderr are ours to read.
    async fn output(&self, op: &'static str, mut cmd: Command) -> Result<Output> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let since = Instant::now();
        let mut child = cmd.spawn().map_err(|e| Error::Spawn {
            binary: self.binary.display().to_string(),
            source: e,
        })?;
        let pid = child.id() as i32;
        let exit = reaper::subscribe(pid, since);
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        let (stdout, stderr) = tokio::join!(read_all(stdout), read_all(stderr));
        let status = exit.await.map(|e| e.status).unwrap_or(255);
        tracing::debug!(op, status, "runc");
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    /// Runs a runc command that hands `io` to the container; its errors go to `log_file`.
    async fn run_with_io(
        &self,
        op: &'static str,
        cmd: Command,
        io: ProcessIo,
        log_file: &Path,
    ) -> Result<()> {
        self.run_hooked(op, cmd, io, log_file, None).await
    }

    async fn run_hooked(
        &self,
        op: &'static str,
        mut cmd: Command,
        io: ProcessIo,
        log_file: &Path,
        on_spawn: Option<&SpawnHook>,
    ) -> Result<()> {
        cmd.stdin(io.stdin.map(Stdio::from).unwrap_or_else(Stdio::null));
        cmd.stdout(io.stdout.map(Stdio::from).unwrap_or_else(Stdio::null));
        cmd.stderr(io.stderr.map(Stdio::from).unwrap_or_else(Stdio::null));
        let since = Instant::now();
        let child = cmd.spawn().map_err(|e| Error::Spawn {
            binary: self.binary.display().to_string(),
            source: e,
        })?;
        // Drop our copies of the container's ends now, or EOF would never come.
        drop(cmd);
        if let Some(hook) = on_spawn {
            // Taken microseconds after the spawn, long before runc could have ended and
            // been reaped (it takes milliseconds to start): the pid is still this child's.
            match crate::pidfd::open(child.id() as i32) {
                Ok(fd) => (hook.0)(fd),
                Err(e) => tracing::debug!("pidfd of runc {op}: {e}"),
            }
        }
        let exit = reaper::wait(child.id() as i32, since).await;
        if exit.status != 0 {
            let log = std::fs::read(log_file).unwrap_or_default();
            return Err(runc_error(op, exit.status, last_error(&log)));
        }
        Ok(())
    }

    fn check(op: &'static str, out: Output) -> Result<Vec<u8>> {
        if out.status != 0 {
            let mut message = last_error(&out.stderr);
            if message.is_empty() {
                message = last_error(&out.stdout);
            }
            return Err(runc_error(op, out.status, message));
        }
        Ok(out.stdout)
    }

    async fn simple(&self, op: &'static str, args: &[&str]) -> Result<Vec<u8>> {
        let mut cmd = self.command();
        cmd.arg("--log-format").arg("json").args(args);
        let out = self.output(op, cmd).await?;
        Self::check(op, out)
    }

    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        opts: &CreateOpts,
        io: ProcessIo,
    ) -> Result<()> {
        let mut cmd = self.command();
        cmd.arg("--log")
            .arg(&opts.log_file)
            .arg("--log-format")
            .arg("json");
        cmd.arg("create").arg("--bundle").arg(bundle);
        cmd.arg("--pid-file").arg(&opts.pid_file);
        if let Some(s) = &opts.console_socket {
            cmd.arg("--console-socket").arg(s);
        }
        if opts.no_pivot {
            cmd.arg("--no-pivot");
        }
        if opts.no_new_keyring {
            cmd.arg("--no-new-keyring");
        }
        cmd.arg(id);
        self.run_with_io("create", cmd, io, &opts.log_file).await
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.simple("start", &["start", id]).await.map(drop)
    }

    pub async fn exec(&self, id: &str, opts: &ExecOpts, io: ProcessIo) -> Result<()> {
        let mut cmd = self.command();
        cmd.arg("--log")
            .arg(&opts.log_file)
            .arg("--log-format")
            .arg("json");
        cmd.arg("exec");
        if !opts.wait {
            cmd.arg("--detach");
        }
        cmd.arg("--process").arg(&opts.process_json);
        cmd.arg("--pid-file").arg(&opts.pid_file);
        if let Some(s) = &opts.console_socket {
            cmd.arg("--console-socket").arg(s);
        }
        cmd.arg(id);
        self.run_with_io("exec", cmd, io, &opts.log_file).await
    }

    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.push(id);
        args.push(&sig);
        self.simple("kill", &args).await.map(drop)
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut args = vec!["delete"];
        if force {
            args.push("--force");
        }
        args.push(id);
        self.simple("delete", &args).await.map(drop)
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        self.simple("pause", &["pause", id]).await.map(drop)
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        self.simple("resume", &["resume", id]).await.map(drop)
    }

    pub async fn state(&self, id: &str) -> Result<State> {
        let out = self.simple("state", &["state", id]).await?;
        serde_json::from_slice(&out).map_err(|e| Error::Json {
            what: "runc state",
            source: e,
        })
    }

    pub async fn ps(&self, id: &str) -> Result<Vec<i32>> {
        let out = self.simple("ps", &["ps", "--format", "json", id]).await?;
        let pids: Option<Vec<i32>> = serde_json::from_slice(&out).map_err(|e| Error::Json {
            what: "runc ps",
            source: e,
        })?;
        Ok(pids.unwrap_or_default())
    }

    /// Applies `resources` (an OCI `LinuxResources` JSON document) to the container.
    pub async fn update(&self, id: &str, resources_file: &Path) -> Result<()> {
        let mut cmd = self.command();
        cmd.arg("--log-format").arg("json");
        cmd.arg("update")
            .arg("--resources")
            .arg(resources_file)
            .arg(id);
        let out = self.output("update", cmd).await?;
        Self::check("update", out).map(drop)
    }

    pub async fn checkpoint(&self, id: &str, opts: &CheckpointOpts) -> Result<()> {
        let mut cmd = self.command();
        cmd.arg("--log")
            .arg(&opts.log_file)
            .arg("--log-format")
            .arg("json");
        cmd.arg("checkpoint")
            .arg("--image-path")
            .arg(&opts.image_path);
        if let Some(w) = &opts.work_path {
            cmd.arg("--work-path").arg(w);
        }
        if let Some(p) = &opts.parent_path {
            cmd.arg("--parent-path").arg(p);
        }
        let flags = [
            (opts.leave_running, "--leave-running"),
            (opts.tcp_established, "--tcp-established"),
            (opts.ext_unix_sk, "--ext-unix-sk"),
            (opts.shell_job, "--shell-job"),
            (opts.file_locks, "--file-locks"),
            (opts.lazy_pages, "--lazy-pages"),
        ];
        cmd.args(flags.iter().filter(|(on, _)| *on).map(|(_, f)| *f));
        if let Some(fd) = opts.status_fd {
            cmd.arg("--status-fd").arg(fd.to_string());
        }
        if let Some(ps) = &opts.page_server {
            cmd.arg("--page-server").arg(ps);
        }
        for ns in &opts.empty_ns {
            cmd.arg("--empty-ns").arg(ns);
        }
        if let Some(m) = &opts.manage_cgroups_mode {
            cmd.arg("--manage-cgroups-mode").arg(m);
        }
        cmd.arg(id);
        if let (Some(flag), Some(script)) = (&opts.cancel_flag, &self.dump_action) {
            // runc hands its environment to `criu swrk`, which reads the file that
            // CRIU_CONFIG_FILE names besides runc's own (the profile), and passes the
            // variables on to the script. Only dumps get it: a restore runs CRIU's
            // action scripts at seven points, each a process start on the wake path.
            let conf = flag.with_extension("conf");
            let text = format!("action-script {}\n", script.display());
            std::fs::write(&conf, text).map_err(|e| Error::io("write", &conf, e))?;
            cmd.env("CRIU_CONFIG_FILE", &conf)
                .env("LIGHTWHALE_SLEEP_CANCEL", flag);
        }
        self.run_hooked(
            "checkpoint",
            cmd,
            ProcessIo::default(),
            &opts.log_file,
            opts.on_spawn.as_ref(),
        )
        .await
    }

    /// Restores `id` from `opts.image_path`. `io` must be the same kind of stdio the
    /// container had when dumped (pipes): runc maps them onto the restored fds.
    pub async fn restore(
        &self,
        id: &str,
        bundle: &Path,
        opts: &RestoreOpts,
        io: ProcessIo,
    ) -> Result<()> {
        let mut cmd = self.command();
        cmd.arg("--log")
            .arg(&opts.log_file)
            .arg("--log-format")
            .arg("json");
        cmd.arg("restore").arg("--bundle").arg(bundle);
        cmd.arg("--image-path").arg(&opts.image_path);
        cmd.arg("--pid-file").arg(&opts.pid_file);
        if let Some(w) = &opts.work_path {
            cmd.arg("--work-path").arg(w);
        }
        if let Some(s) = &opts.console_socket {
            cmd.arg("--console-socket").arg(s);
        }
        let flags = [
            (opts.detach, "--detach"),
            (opts.no_pivot, "--no-pivot"),
            (opts.tcp_established, "--tcp-established"),
            (opts.ext_unix_sk, "--ext-unix-sk"),
            (opts.shell_job, "--shell-job"),
            (opts.file_locks, "--file-locks"),
            (opts.lazy_pages, "--lazy-pages"),
        ];
        cmd.args(flags.iter().filter(|(on, _)| *on).map(|(_, f)| *f));
        for ns in &opts.empty_ns {
            cmd.arg("--empty-ns").arg(ns);
        }
        if let Some(m) = &opts.manage_cgroups_mode {
            cmd.arg("--manage-cgroups-mode").arg(m);
        }
        cmd.arg(id);
        if let Some(dir) = &self.criu_helpers {
            // runc hands its environment to `criu swrk`, which runs helpers by PATH.
            let mut paths = vec![dir.clone()];
            if let Some(p) = std::env::var_os("PATH") {
                paths.extend(std::env::split_paths(&p));
            }
            if let Ok(joined) = std::env::join_paths(paths) {
                cmd.env("PATH", joined);
            }
        }
        self.run_with_io("restore", cmd, io, &opts.log_file).await
    }
}

fn runc_error(op: &'static str, status: i32, message: String) -> Error {
    Error::Runtime {
        runtime: "runc".into(),
        op,
        status,
        kind: classify(&message),
        message,
    }
}

/// The one place that reads runc's words for their meaning: a missing container and a
/// stopped one are answered differently by every caller (NotFound vs a finished process).
pub fn classify(message: &str) -> RuntimeErrorKind {
    let m = message.to_ascii_lowercase();
    if m.contains("does not exist") || m.contains("container not found") {
        RuntimeErrorKind::NotFound
    } else if m.contains("not running") || m.contains("stopped container") {
        RuntimeErrorKind::NotRunning
    } else {
        RuntimeErrorKind::Other
    }
}

async fn read_all(fd: Option<OwnedFd>) -> Vec<u8> {
    let mut buf = Vec::new();
    let Some(fd) = fd else { return buf };
    match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(mut rx) => {
            let _ = rx.read_to_end(&mut buf).await;
        }
        Err(e) => tracing::warn!("cannot read runc output: {e}"),
    }
    buf
}

/// The most useful line of runc's output: the last `"level":"error"` message of its
/// JSON log, else the last non-empty line.
pub fn last_error(log: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Line {
        #[serde(default)]
        level: String,
        #[serde(default)]
        msg: String,
    }
    let text = String::from_utf8_lossy(log);
    let mut last_plain = "";
    let mut last_err = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match serde_json::from_str::<Line>(line) {
            Ok(l) if l.level == "error" || l.level == "fatal" => last_err = Some(l.msg),
            Ok(_) => {}
            Err(_) => last_plain = line,
        }
    }
    last_err.unwrap_or_else(|| last_plain.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_prefers_json_error_lines() {
        let log = br#"{"level":"info","msg":"x"}
{"level":"error","msg":"container_linux.go: starting container process caused: exec: \"nope\": executable file not found in $PATH","time":"t"}
{"level":"warning","msg":"y"}"#;
        assert!(last_error(log).contains("executable file not found"));
    }

    #[test]
    fn runc_words_are_classified_once() {
        assert_eq!(
            classify("container does not exist"),
            RuntimeErrorKind::NotFound
        );
        assert_eq!(
            classify("container \"x\" does not exist"),
            RuntimeErrorKind::NotFound
        );
        assert_eq!(
            classify("container not running"),
            RuntimeErrorKind::NotRunning
        );
        assert_eq!(
            classify("cannot kill a stopped container"),
            RuntimeErrorKind::NotRunning
        );
        assert_eq!(classify("permission denied"), RuntimeErrorKind::Other);
        let e = runc_error("kill", 1, "container not running".into());
        assert!(e.is_not_running() && !e.is_not_found());
    }

    #[test]
    fn last_error_falls_back_to_plain_text() {
        assert_eq!(last_error(b"\nincorrect usage\n\n"), "incorrect usage");
        assert_eq!(last_error(b""), "");
    }
}
