//! Sleep and wake: an idle task is checkpointed with CRIU and exits; the shim holds its
//! listening sockets, and the first connection restores it.
//!
//! One transition at a time per container (`Container::transition`): sleep, wake and the
//! RPCs that need the task awake (exec, signals, pause, checkpoint) queue on that lock.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use containerd_shim_protos::events::task::TaskCheckpointed;
use lightwhale_engine::activity::{IdleTracker, Probe};
use lightwhale_engine::cgroup::MemoryCgroup;
use lightwhale_engine::lazy::{self, LazyPages};
use lightwhale_engine::runc::{CheckpointOpts, RestoreOpts, Runc};
use lightwhale_engine::sockets;
use serde::Serialize;
use serde_json::Value;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::{info, warn};

use crate::process::Phase;
use crate::service::{handle_exit, spawn_exit_watcher, Container, Shared};

/// Where the CLI finds each container's status file and control socket.
pub const CONTAINERS_DIR: &str = "/run/lightwhale/containers";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SleepPhase {
    #[default]
    Awake,
    Asleep,
}

/// What `lightwhale ps` and `inspect` show; written to a file on every transition.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Status {
    pub id: String,
    pub namespace: String,
    pub state: SleepPhase,
    pub since_unix_ms: u64,
    pub sleeps: u64,
    pub wakes: u64,
    pub last_sleep_ms: Option<u64>,
    pub last_wake_ms: Option<u64>,
    pub memory_freed_bytes: Option<u64>,
    /// Bytes of memory pages in the checkpoint (what an eager restore reads back).
    pub pages_bytes: Option<u64>,
    pub held_ports: Vec<u16>,
    /// Where the last wake's time went.
    pub last_wake_phases: Option<WakePhases>,
    pub last_error: Option<String>,
    pub config: Value,
}

/// Where a wake's time went, in milliseconds from the trigger (a connection seen on a
/// held socket, or an RPC that needs the task awake).
#[derive(Debug, Clone, Serialize, Default)]
pub struct WakePhases {
    pub trigger: String,
    /// Post-copy restore (pages follow the task) rather than eager.
    pub lazy: bool,
    /// Trigger to holding the container's transition lock.
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

/// The background page fill of a lazy wake.
pub struct Fill {
    pub daemon_pid: i32,
    pub done: tokio::sync::watch::Receiver<bool>,
}

/// Sockets held while the task sleeps.
#[derive(Default)]
pub struct Held {
    pub sockets: Vec<(u16, OwnedFd)>,
    /// Established connections of the task, held so that the dump's end (the task is
    /// killed) closes nothing: no RST reaches a client whose request was in flight.
    pub conns: Vec<OwnedFd>,
    pub wake_task: Option<tokio::task::JoinHandle<()>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Container {
    pub fn status_path(&self) -> PathBuf {
        Path::new(CONTAINERS_DIR)
            .join(&self.namespace)
            .join(format!("{}.json", self.id))
    }

    pub fn control_path(&self) -> PathBuf {
        Path::new(CONTAINERS_DIR)
            .join(&self.namespace)
            .join(format!("{}.sock", self.id))
    }

    pub fn write_status(&self) {
        let status = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let path = self.status_path();
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("json.tmp");
            std::fs::write(
                &tmp,
                serde_json::to_vec_pretty(&status).map_err(std::io::Error::other)?,
            )?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            warn!(id = %self.id, "status file {}: {e}", path.display());
        }
    }

    fn images(&self) -> PathBuf {
        self.image_root.join("images")
    }

    fn work(&self) -> PathBuf {
        self.image_root.join("work")
    }

    /// Kills the lazy-pages daemon of a task that is gone (delete).
    pub fn stop_fill(&self) {
        if let Some(f) = self.fill.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if !*f.done.borrow() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(f.daemon_pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Waits (at most `limit`) for the last lazy wake's pages to be all back; the next
    /// dump must not read memory the daemon still has to fill, nor replace the images
    /// it serves them from.
    async fn fill_finished(&self, limit: Duration) -> bool {
        let rx = self
            .fill
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|f| f.done.clone());
        let Some(mut rx) = rx else { return true };
        // A dropped sender means the watcher is gone: nothing left to wait for.
        let finished = tokio::time::timeout(limit, rx.wait_for(|d| *d))
            .await
            .is_ok();
        finished
    }

    pub fn is_asleep(&self) -> bool {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).state == SleepPhase::Asleep
    }

    /// Removes the checkpoint images (they hold the task's memory, secrets included).
    pub fn discard_images(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.image_root) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(id = %self.id, "remove {}: {e}", self.image_root.display());
            }
        }
    }

    /// The bundle runc restores from: the client's spec without the hooks that already
    /// ran (Docker's network hook must not configure the pinned namespace twice).
    fn restore_bundle(&self) -> std::io::Result<PathBuf> {
        let dir = self.image_root.join("bundle");
        let mut spec: Value =
            serde_json::from_slice(&std::fs::read(self.bundle.join("config.json"))?)
                .map_err(std::io::Error::other)?;
        if let Some(hooks) = spec.get_mut("hooks").and_then(Value::as_object_mut) {
            for h in [
                "prestart",
                "createRuntime",
                "createContainer",
                "startContainer",
                "poststart",
            ] {
                hooks.remove(h);
            }
        }
        if let Some(root) = spec.pointer_mut("/root/path") {
            let p = root
                .as_str()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("rootfs"));
            let abs = if p.is_absolute() {
                p
            } else {
                self.bundle.join(p)
            };
            *root = Value::String(abs.display().to_string());
        }
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec(&spec).map_err(std::io::Error::other)?,
        )?;
        Ok(dir)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SleepError {
    #[error("not sleeping: {0}")]
    Refused(String),
    #[error("checkpoint failed: {message}\n--- CRIU dump.log (tail) ---\n{criu_log}")]
    Dump { message: String, criu_log: String },
    #[error("{0}")]
    Hook(String),
    #[error("restore failed: {message}\n--- CRIU restore.log (tail) ---\n{criu_log}")]
    Restore { message: String, criu_log: String },
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
}

/// Puts the task to sleep now. Refuses (without harm) when it cannot sleep.
pub async fn sleep(shared: &Arc<Shared>, c: &Arc<Container>) -> Result<(), SleepError> {
    let _t = c.transition.lock().await;
    if c.is_asleep() {
        return Ok(());
    }
    if c.init.phase() != Phase::Running {
        return Err(SleepError::Refused(format!("task is {:?}", c.init.phase())));
    }
    if c.init.paths.terminal {
        return Err(SleepError::Refused(
            "tasks with a terminal do not sleep".into(),
        ));
    }
    if c.running_execs() > 0 {
        return Err(SleepError::Refused("an exec is running".into()));
    }
    if !c.fill_finished(Duration::from_secs(30)).await {
        return Err(SleepError::Refused(
            "pages of the last lazy wake are still being filled".into(),
        ));
    }
    if let Some(cmd) = &c.sleep_cfg.pre_sleep_exec {
        if let Err(e) = run_hook(c, "pre-sleep", cmd).await {
            let err = SleepError::Hook(format!("pre-sleep-exec failed, sleep cancelled: {e}"));
            c.record_error(&err);
            return Err(err);
        }
    }
    let pid = c.init.pid();
    // Frozen first: no connection can be accepted between listing the sockets and the
    // dump, so every accepted connection is among the ones held below.
    c.runc
        .pause(&c.id)
        .await
        .map_err(|e| SleepError::Refused(e.to_string()))?;
    let prepared = match take_sockets(c, pid).await {
        Ok(v) => prepare_dirs(c).map(|()| v),
        Err(e) => Err(e),
    };
    let (held, conns) = match prepared {
        Ok(v) => v,
        Err(e) => {
            if let Err(r) = c.runc.resume(&c.id).await {
                warn!(id = %c.id, "resume after a refused sleep: {r}");
            }
            return Err(e);
        }
    };
    let usage_before = MemoryCgroup::of_pid(pid).and_then(|m| m.usage_bytes());

    let images = c.images();
    let work = c.work();
    c.ckpt.lock().unwrap_or_else(|p| p.into_inner()).pid = pid;
    let t0 = Instant::now();
    let result = c
        .runc
        .checkpoint(
            &c.id,
            &CheckpointOpts {
                image_path: images.clone(),
                work_path: Some(work.clone()),
                log_file: c.image_root.join("checkpoint.json"),
                ..Default::default()
            },
        )
        .await;
    if let Err(e) = result {
        // The dump failed: CRIU left the task as it found it, frozen; thaw it.
        if let Err(r) = c.runc.resume(&c.id).await {
            warn!(id = %c.id, "resume after a failed dump: {r}");
        }
        drop(conns);
        // If it exited meanwhile, its exit was
        // swallowed for the checkpoint: report it now.
        let swallowed = {
            let mut g = c.ckpt.lock().unwrap_or_else(|p| p.into_inner());
            g.pid = 0;
            g.swallowed.take()
        };
        let err = SleepError::Dump {
            message: e.to_string(),
            criu_log: tail(&work.join("dump.log"), 20),
        };
        c.record_error(&err);
        c.discard_images();
        if let Some(exit) = swallowed {
            handle_exit(shared.clone(), c.clone(), c.init.clone(), exit).await;
        }
        return Err(err);
    }
    let took = t0.elapsed();
    let ports: Vec<u16> = held.iter().map(|(p, _)| *p).collect();
    let pages = lazy::pages_bytes(&images);
    // Done now rather than on the wake path.
    if let Err(e) = c.restore_bundle() {
        warn!(id = %c.id, "restore bundle (retried at wake): {e}");
    }
    {
        let mut s = c.status.lock().unwrap_or_else(|p| p.into_inner());
        s.state = SleepPhase::Asleep;
        s.since_unix_ms = now_ms();
        s.sleeps += 1;
        s.last_sleep_ms = Some(took.as_millis() as u64);
        s.memory_freed_bytes = usage_before;
        s.pages_bytes = Some(pages);
        s.held_ports = ports.clone();
        s.last_error = None;
    }
    c.write_status();
    info!(id = %c.id, ms = took.as_millis() as u64, ?ports, "asleep");
    // A sleeping container's cost is mostly this process: give back what the dump's
    // bookkeeping left free in the heap rather than keep it resident all night.
    // SAFETY: malloc_trim only returns free heap memory to the kernel; it is thread-safe
    // and touches no allocation in use.
    unsafe {
        libc::malloc_trim(0);
    }

    // A new connection on a held listener, or data on a held idle connection, wakes it.
    let wakers: Vec<OwnedFd> = held
        .iter()
        .map(|(_, fd)| fd)
        .chain(conns.iter())
        .filter_map(|fd| fd.try_clone().ok())
        .collect();
    let (shared2, c2) = (shared.clone(), c.clone());
    let wake_task = tokio::spawn(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut watchers = Vec::new();
        for fd in wakers {
            let tx = tx.clone();
            watchers.push(tokio::spawn(async move {
                // SAFETY: the AsyncFd owns this duplicate fd outright; it stays open and
                // registered until the AsyncFd is dropped.
                let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
                match registered {
                    Ok(a) => {
                        // A listening socket is readable when a connection waits in its queue.
                        let _ = a.readable().await;
                        let _ = tx.send(()).await;
                    }
                    Err(e) => warn!("watch held socket: {e}"),
                }
            }));
        }
        drop(tx);
        if rx.recv().await.is_none() {
            return;
        }
        let seen = Instant::now();
        for w in watchers {
            w.abort();
        }
        info!(id = %c2.id, "connection while asleep: waking");
        if let Err(e) = wake_since(&shared2, &c2, "connection", seen).await {
            warn!(id = %c2.id, "{e}");
        }
    });
    *c.held.lock().unwrap_or_else(|p| p.into_inner()) = Held {
        sockets: held,
        conns,
        wake_task: Some(wake_task),
    };
    shared
        .publish(
            containerd_shim_protos::topics::TASK_CHECKPOINTED_EVENT_TOPIC,
            Box::new(TaskCheckpointed {
                container_id: c.id.clone(),
                checkpoint: images.display().to_string(),
                ..Default::default()
            }),
        )
        .await;
    Ok(())
}

/// Wakes the task if it sleeps; a no-op otherwise. `why` is for the log.
pub async fn wake(shared: &Arc<Shared>, c: &Arc<Container>, why: &str) -> Result<(), SleepError> {
    wake_since(shared, c, why, Instant::now()).await
}

/// Wakes the task; `since` is when the trigger was seen (the phases count from there).
pub async fn wake_since(
    shared: &Arc<Shared>,
    c: &Arc<Container>,
    why: &str,
    since: Instant,
) -> Result<(), SleepError> {
    let _t = c.transition.lock().await;
    if !c.is_asleep() || c.init.phase() == Phase::Stopped {
        return Ok(());
    }
    let t0 = since;
    let pages = c
        .status
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pages_bytes
        .unwrap_or(0);
    let mut phases = WakePhases {
        trigger: why.to_string(),
        lazy: c.sleep_cfg.lazy_for(pages),
        queued_ms: ms(t0.elapsed()),
        ..Default::default()
    };
    let mut last = None;
    for attempt in 1..=2 {
        match restore_once(shared, c, &mut phases).await {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => {
                warn!(id = %c.id, attempt, "{e}");
                let _ = c.runc.delete(&c.id, true).await;
                if phases.lazy {
                    // The images are intact (the daemon only reads them): try eagerly.
                    phases.lazy = false;
                    phases.fallback = Some(e.to_string());
                }
                last = Some(e);
            }
        }
    }
    if let Some(err) = last {
        // Never leave a client hanging: the task ends with a clear status, the held
        // sockets close (queued clients are reset), and the error is kept for inspect.
        c.record_error(&err);
        let held = std::mem::take(&mut *c.held.lock().unwrap_or_else(|p| p.into_inner()));
        drop(held.sockets);
        {
            let mut s = c.status.lock().unwrap_or_else(|p| p.into_inner());
            s.state = SleepPhase::Awake;
            s.held_ports.clear();
        }
        c.write_status();
        let exit = lightwhale_engine::reaper::Exit {
            pid: c.init.pid(),
            status: 255,
            at: SystemTime::now(),
        };
        handle_exit(shared.clone(), c.clone(), c.init.clone(), exit).await;
        return Err(err);
    }
    let held = std::mem::take(&mut *c.held.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(t) = held.wake_task {
        if why != "connection" {
            t.abort();
        }
    }
    let took = t0.elapsed();
    phases.total_ms = ms(took);
    {
        let mut s = c.status.lock().unwrap_or_else(|p| p.into_inner());
        s.state = SleepPhase::Awake;
        s.since_unix_ms = now_ms();
        s.wakes += 1;
        s.last_wake_ms = Some(took.as_millis() as u64);
        s.held_ports.clear();
        if let Some(f) = &phases.fallback {
            s.last_error = Some(format!("lazy restore failed, restored eagerly: {f}"));
        }
        s.last_wake_phases = Some(phases.clone());
    }
    // Written before the hand-over, so whoever the task answers finds it awake.
    c.write_status();
    // The restored listeners are in the reuseport group now: closing ours hands every
    // queued connection over to them.
    drop(held.sockets);
    c.touch_activity();
    info!(
        id = %c.id,
        ms = took.as_millis() as u64,
        why,
        lazy = phases.lazy,
        queued_ms = phases.queued_ms,
        lazy_daemon_ms = ?phases.lazy_daemon_ms,
        runc_ms = phases.runc_restore_ms,
        criu_ms = ?phases.criu_restore_ms,
        "awake"
    );
    if let Some(cmd) = c.sleep_cfg.post_wake_exec.clone() {
        // Off the wake path: the client's first byte never waits for the hook.
        let c = c.clone();
        tokio::spawn(async move {
            if let Err(e) = run_hook(&c, "post-wake", &cmd).await {
                warn!(id = %c.id, "post-wake-exec failed: {e}");
                c.record_error(&format!("post-wake-exec failed: {e}"));
            }
        });
    }
    Ok(())
}

/// Runs a lifecycle hook in the container (the init process's user, env and cwd),
/// waits for it within the configured timeout, and returns its output on failure.
async fn run_hook(c: &Container, name: &str, args: &[String]) -> Result<(), String> {
    let spec: Value = std::fs::read(c.bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("cannot read the container's spec")?;
    let mut process = spec.get("process").cloned().unwrap_or(Value::Null);
    let Some(obj) = process.as_object_mut() else {
        return Err("the container's spec has no process".into());
    };
    obj.insert("args".into(), serde_json::json!(args));
    obj.insert("terminal".into(), Value::Bool(false));
    let process_json = c.bundle.join(format!(".lightwhale-hook-{name}.json"));
    let pid_file = c.bundle.join(format!(".lightwhale-hook-{name}.pid"));
    std::fs::write(&process_json, process.to_string()).map_err(|e| e.to_string())?;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    let w2 = w.try_clone().map_err(|e| e.to_string())?;
    let io = lightwhale_engine::runc::ProcessIo {
        stdin: None,
        stdout: Some(w),
        stderr: Some(w2),
    };
    let opts = lightwhale_engine::runc::ExecOpts {
        wait: true,
        process_json: process_json.clone(),
        pid_file: pid_file.clone(),
        log_file: c.bundle.join(format!(".lightwhale-hook-{name}.log")),
        console_socket: None,
    };
    let output = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        if let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(r) {
            let _ = rx.take(64 * 1024).read_to_end(&mut buf).await;
        }
        buf
    });
    let result =
        tokio::time::timeout(c.sleep_cfg.hook_timeout, c.runc.exec(&c.id, &opts, io)).await;
    let outcome = match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Err(format!("timed out after {:?}", c.sleep_cfg.hook_timeout))
        }
    };
    for f in [&process_json, &pid_file] {
        let _ = std::fs::remove_file(f);
    }
    let _ = std::fs::remove_file(c.bundle.join(format!(".lightwhale-hook-{name}.log")));
    match outcome {
        Ok(()) => Ok(()),
        Err(e) => {
            let out = tokio::time::timeout(Duration::from_secs(1), output)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let out = String::from_utf8_lossy(&out);
            Err(format!("{e}; output: {:?}", out.trim()))
        }
    }
}

/// Fresh, root-only directories for the images (they hold the task's memory).
fn prepare_dirs(c: &Container) -> Result<(), SleepError> {
    c.discard_images();
    for d in [&c.image_root, &c.images(), &c.work()] {
        create_private_dir(d).map_err(|e| SleepError::Refused(format!("{}: {e}", d.display())))?;
    }
    Ok(())
}

/// Listeners (with SO_REUSEPORT set) and established connections of a frozen task.
async fn take_sockets(
    c: &Container,
    pid: i32,
) -> Result<(Vec<(u16, OwnedFd)>, Vec<OwnedFd>), SleepError> {
    let refused = |e: lightwhale_engine::Error| SleepError::Refused(e.to_string());
    let pids = c.runc.ps(&c.id).await.map_err(refused)?;
    let listeners = sockets::listeners(pid, &c.sleep_cfg.ports);
    if listeners.is_empty() {
        return Err(SleepError::Refused(
            "no listening TCP socket to wake on".into(),
        ));
    }
    let mut inodes: Vec<u64> = listeners.iter().map(|l| l.inode).collect();
    let established = sockets::established(pid);
    inodes.extend(&established);
    let holders = sockets::socket_holders(&pids, &inodes);
    let mut held = Vec::new();
    for l in &listeners {
        let Some(&(hpid, fd)) = holders.get(&l.inode) else {
            continue;
        };
        let dup = sockets::dup_from(hpid, fd).map_err(refused)?;
        sockets::set_reuseport(&dup).map_err(refused)?;
        held.push((l.port, dup));
    }
    if held.is_empty() {
        return Err(SleepError::Refused(
            "no process of the task holds its listening sockets".into(),
        ));
    }
    let mut conns = Vec::new();
    for inode in &established {
        if let Some(&(hpid, fd)) = holders.get(inode) {
            let conn = sockets::dup_from(hpid, fd).map_err(refused)?;
            if sockets::awaiting_reply(&conn).unwrap_or(false) {
                return Err(SleepError::Refused("a request is in flight".into()));
            }
            conns.push(conn);
        }
    }
    Ok((held, conns))
}

/// Lets go of the held connections without a FIN or RST, right before CRIU restores
/// them (their 4-tuples must be free again).
fn release_conns(c: &Container) {
    let conns = std::mem::take(&mut c.held.lock().unwrap_or_else(|p| p.into_inner()).conns);
    for fd in conns {
        if let Err(e) = sockets::set_repair(&fd) {
            warn!(id = %c.id, "{e}");
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// CRIU's restore time from its log: the timestamp of its last line of success.
fn criu_restore_ms(log: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("Restore finished successfully"))?;
    let stamp = line.strip_prefix('(')?.split(')').next()?;
    stamp
        .trim()
        .parse::<f64>()
        .ok()
        .map(|s| ms(Duration::from_secs_f64(s)))
}

async fn restore_once(
    shared: &Arc<Shared>,
    c: &Arc<Container>,
    phases: &mut WakePhases,
) -> Result<(), SleepError> {
    let restore_err = |message: String| SleepError::Restore {
        message,
        criu_log: tail(&c.work().join("restore.log"), 20),
    };
    let prepared = c.image_root.join("bundle");
    let bundle = if prepared.join("config.json").is_file() {
        prepared
    } else {
        c.restore_bundle()
            .map_err(|e| restore_err(format!("restore bundle: {e}")))?
    };
    let io = c
        .init
        .stdio()
        .map(|s| s.process_io())
        .transpose()
        .map_err(|e| restore_err(e.to_string()))?
        .unwrap_or_default();
    let pid_file = c.image_root.join("restored.pid");
    let mut daemon = None;
    if phases.lazy {
        let t = Instant::now();
        let started = match Runc::find_binary("criu") {
            Some(criu) => LazyPages::start(&criu, &c.images(), &c.work(), Duration::from_secs(2))
                .await
                .map_err(|e| e.to_string()),
            None => Err("criu not found in PATH".to_string()),
        };
        match started {
            Ok(d) => {
                phases.lazy_daemon_ms = Some(ms(t.elapsed()));
                daemon = Some(d);
            }
            Err(e) => {
                warn!(id = %c.id, "lazy restore unavailable, restoring eagerly: {e}");
                phases.lazy = false;
                phases.fallback = Some(e);
            }
        }
    }
    release_conns(c);
    let since = Instant::now();
    let restored = c
        .runc
        .restore(
            &c.id,
            &bundle,
            &RestoreOpts {
                image_path: c.images(),
                work_path: Some(c.work()),
                pid_file: pid_file.clone(),
                log_file: c.image_root.join("restore.json"),
                detach: true,
                lazy_pages: daemon.is_some(),
                ..Default::default()
            },
            io,
        )
        .await;
    phases.runc_restore_ms = ms(since.elapsed());
    phases.criu_restore_ms = criu_restore_ms(&c.work().join("restore.log"));
    if let Err(e) = restored {
        if let Some(mut d) = daemon {
            d.kill();
            d.wait().await;
        }
        return Err(restore_err(e.to_string()));
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| restore_err("restored task left no pid file".into()))?;
    c.init.set_pid(pid);
    *c.memcg.lock().unwrap_or_else(|p| p.into_inner()) = MemoryCgroup::of_pid(pid);
    spawn_exit_watcher(shared.clone(), c.clone(), c.init.clone(), pid, since);
    if let Some(d) = daemon {
        spawn_fill_watcher(c, d, pid);
    }
    let pending = c
        .pending_update
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(resources) = pending {
        if let Err(e) = c.runc.update(&c.id, &resources).await {
            warn!(id = %c.id, "update deferred to wake failed: {e}");
        }
        let _ = std::fs::remove_file(&resources);
    }
    Ok(())
}

/// Follows the lazy-pages daemon of a restored task until every page is back. A daemon
/// that dies first leaves holes the kernel would fill with zeros: the task is stopped
/// rather than left to run on memory that is not its own.
fn spawn_fill_watcher(c: &Arc<Container>, mut daemon: LazyPages, pid: i32) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    *c.fill.lock().unwrap_or_else(|p| p.into_inner()) = Some(Fill {
        daemon_pid: daemon.pid(),
        done: rx,
    });
    let c = c.clone();
    tokio::spawn(async move {
        let t = Instant::now();
        let exit = daemon.wait().await;
        let fill_ms = ms(t.elapsed());
        let task_alive = c.init.pid() == pid && c.init.phase() == Phase::Running;
        if exit.status == 0 {
            info!(id = %c.id, fill_ms, "lazy restore: every page is back");
            if let Some(p) = c
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .last_wake_phases
                .as_mut()
            {
                p.fill_ms = Some(fill_ms);
            }
            c.write_status();
        } else if task_alive {
            let msg = format!(
                "criu lazy-pages exited with status {} before every page was back; \
                 the task was stopped rather than run on missing memory\n{}",
                exit.status,
                daemon.log_tail(10)
            );
            warn!(id = %c.id, "{msg}");
            c.record_error(&msg);
            if let Err(e) = c.runc.kill(&c.id, libc::SIGKILL, true).await {
                warn!(id = %c.id, "kill after a failed page fill: {e}");
            }
        }
        let _ = tx.send(true);
    });
}

/// Ends a sleeping task at once (SIGKILL while asleep): nothing to restore, images go.
pub async fn kill_asleep(shared: &Arc<Shared>, c: &Arc<Container>) -> bool {
    let _t = c.transition.lock().await;
    if !c.is_asleep() {
        return false;
    }
    let held = std::mem::take(&mut *c.held.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(t) = held.wake_task {
        t.abort();
    }
    drop(held.sockets);
    c.discard_images();
    {
        let mut s = c.status.lock().unwrap_or_else(|p| p.into_inner());
        s.state = SleepPhase::Awake;
        s.held_ports.clear();
    }
    let exit = lightwhale_engine::reaper::Exit {
        pid: c.init.pid(),
        status: 128 + libc::SIGKILL,
        at: SystemTime::now(),
    };
    handle_exit(shared.clone(), c.clone(), c.init.clone(), exit).await;
    true
}

/// Watches the task and puts it to sleep after `idle-timeout` without activity. A failed
/// sleep backs off (doubling, up to 5 minutes) before the next try.
pub fn spawn_monitor(shared: Arc<Shared>, c: Arc<Container>) {
    tokio::spawn(async move {
        let timeout = c.sleep_cfg.idle_timeout;
        let tick = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut tracker = IdleTracker::new(timeout, c.sleep_cfg.cpu_permille, Instant::now());
        let mut probe: Option<(i32, Probe)> = None;
        let mut backoff = Duration::from_secs(5);
        let mut not_before = Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            if c.init.phase() == Phase::Stopped
                || c.deleted.load(std::sync::atomic::Ordering::Relaxed)
            {
                return;
            }
            let now = Instant::now();
            if c.take_activity() {
                tracker.touch(now);
            }
            if c.is_asleep() || c.init.phase() != Phase::Running || c.running_execs() > 0 {
                tracker.touch(now);
                continue;
            }
            let pid = c.init.pid();
            if probe.as_ref().map(|(p, _)| *p) != Some(pid) {
                probe = Some((pid, Probe::of_pid(pid)));
                tracker.touch(now);
            }
            let Some(sample) = probe.as_ref().and_then(|(_, p)| p.sample()) else {
                continue;
            };
            if !tracker.observe(sample, now) || now < not_before {
                continue;
            }
            match sleep(&shared, &c).await {
                Ok(()) => backoff = Duration::from_secs(5),
                Err(SleepError::Refused(why)) => {
                    info!(id = %c.id, "idle, but {why}");
                    not_before = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(300));
                }
                Err(e) => {
                    warn!(id = %c.id, "sleep failed, retrying in {backoff:?}: {e}");
                    not_before = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(300));
                }
            }
            tracker.touch(Instant::now());
        }
    });
}

/// A unix socket per container for `lightwhale sleep|wake|inspect`: one line in
/// (`sleep`, `wake`, `status`), one JSON line out.
pub fn spawn_control(shared: Arc<Shared>, c: Arc<Container>) {
    let path = c.control_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!(id = %c.id, "control socket {}: {e}", path.display());
            return;
        }
    };
    let _ = std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600));
    let owner = c.clone();
    let task = tokio::spawn(async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        while let Ok((stream, _)) = listener.accept().await {
            let (shared, c) = (shared.clone(), owner.clone());
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(r).read_line(&mut line).await.is_err() {
                    return;
                }
                let reply = match line.trim() {
                    "sleep" => sleep(&shared, &c).await.map_err(|e| e.to_string()),
                    "wake" => wake(&shared, &c, "request")
                        .await
                        .map_err(|e| e.to_string()),
                    "status" => Ok(()),
                    other => Err(format!("unknown command {other:?} (sleep, wake, status)")),
                };
                let status = c.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let body = match reply {
                    Ok(()) => serde_json::json!({"ok": true, "status": status}),
                    Err(e) => serde_json::json!({"ok": false, "error": e, "status": status}),
                };
                let _ = w.write_all(format!("{body}\n").as_bytes()).await;
            });
        }
    });
    *c.control_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
}
