//! What a client asks of a container (containerd's Task API, in plain Rust): create,
//! start, exec, kill, pause, update, delete. Each one that needs the task awake wakes it
//! first; each one that races a sleep or a wake waits for it to end, then acts.
//!
//! Past 600 lines as one file on purpose: these are the Task API's verbs, each short,
//! read together when one changes (a start that differs for a clone restored from a
//! template, a kill that must thaw a doze); the template's own work is in `template`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lightwhale_status::ContainerStatus;
use tracing::{info, warn};

use crate::bundle::BundleState;
use crate::cgroup::MemoryCgroup;
use crate::config::SleepConfig;
use crate::container::{Container, Dirs, Parts};
use crate::events::{Event, EventSink, Trigger};
use crate::process::{ExitInfo, Process};
use crate::runc::{CheckpointOpts, CreateOpts, ProcessIo, RestoreOpts};
use crate::runtime::OciRuntime;
use crate::spec::BundleSpec;
use crate::state::{State, Transition, TransitionError};
use crate::stdio::{ConsoleSocket, Stdio, StdioPaths};
use crate::wake::WakeError;
use crate::{netns, Error};

/// Why a request was refused or failed; [`ContainerError::kind`] says how a client
/// should take it.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("exec {exec_id} not found in container {id}")]
    ExecNotFound { id: String, exec_id: String },
    #[error("exec {0} already exists")]
    ExecExists(String),
    #[error("invalid exec id {0:?}: use letters, digits, '-', '_' and '.' (at most 128)")]
    InvalidExecId(String),
    #[error("exec process spec is not valid JSON: {0}")]
    InvalidExecSpec(#[source] serde_json::Error),
    #[error("process {0} is not in created state")]
    NotCreated(String),
    #[error("process already finished")]
    ProcessFinished,
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("exec {0} has not started")]
    ExecNotStarted(String),
    #[error("exec {0} is still running")]
    ExecRunning(String),
    #[error("invalid signal {0}")]
    InvalidSignal(u32),
    #[error("resources are not a valid OCI LinuxResources document: {0}")]
    InvalidResources(#[source] serde_json::Error),
    #[error("container {0} did not exit after delete")]
    DeleteTimedOut(String),
    /// The bundle or the client's stdio cannot be used as given.
    #[error("{0}")]
    InvalidInput(#[source] Error),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Wake(#[from] WakeError),
    #[error(transparent)]
    Engine(#[from] Error),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How a client should take a [`ContainerError`] (containerd's codes map from these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    FailedPrecondition,
    Internal,
}

impl ContainerError {
    pub fn kind(&self) -> ErrorKind {
        use ContainerError::*;
        match self {
            ExecNotFound { .. } | ProcessFinished => ErrorKind::NotFound,
            ExecExists(_) => ErrorKind::AlreadyExists,
            InvalidExecId(_) | InvalidExecSpec(_) | InvalidSignal(_) | InvalidResources(_)
            | InvalidInput(_) => ErrorKind::InvalidArgument,
            NotCreated(_) | NotRunning(_) | ExecNotStarted(_) | ExecRunning(_) | Transition(_) => {
                ErrorKind::FailedPrecondition
            }
            Wake(WakeError::Exited) => ErrorKind::FailedPrecondition,
            Engine(e) if e.is_not_found() => ErrorKind::NotFound,
            DeleteTimedOut(_) | Wake(_) | Engine(_) | Io { .. } => ErrorKind::Internal,
        }
    }
}

/// What a container is made of; see [`Container::create`].
pub struct CreateRequest {
    pub id: String,
    pub namespace: String,
    pub bundle: PathBuf,
    pub stdio: StdioPaths,
    pub config: SleepConfig,
    pub runtime: Arc<dyn OciRuntime>,
    pub sink: Arc<dyn EventSink>,
    pub dirs: Dirs,
    /// What the caller set up already (the runtime's binary and root, a mounted rootfs):
    /// the engine adds its own and saves it in the bundle for cleanup.
    pub bundle_state: BundleState,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    /// Its place in a pod, if it is in one.
    pub pod: crate::container::PodRole,
}

/// A name for people, from what Kubernetes (containerd's CRI) and nerdctl put in the
/// spec's annotations; Docker puts none there (the CLI asks Docker for its names).
fn display_name(spec: &BundleSpec) -> Option<String> {
    if let Some(n) = spec.annotation("nerdctl/name").filter(|n| !n.is_empty()) {
        return Some(n.to_string());
    }
    let pod = spec.annotation("io.kubernetes.cri.sandbox-name")?;
    let ns = spec
        .annotation("io.kubernetes.cri.sandbox-namespace")
        .unwrap_or("default");
    match spec.annotation("io.kubernetes.cri.container-name") {
        Some(c) if !c.is_empty() => Some(format!("{ns}/{pod}/{c}")),
        _ => Some(format!("{ns}/{pod}")),
    }
}

/// Signals that begin a container's end: once sent, it does not go back to sleep.
fn is_stop_signal(signal: u32) -> bool {
    [libc::SIGKILL, libc::SIGTERM, libc::SIGINT, libc::SIGQUIT].contains(&(signal as i32))
}

pub(crate) fn read_pid(path: &Path) -> Result<i32, ContainerError> {
    let io = |source| ContainerError::Io {
        what: "read pid file",
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    text.trim()
        .parse()
        .map_err(|_| io(std::io::Error::other(format!("not a pid: {text:?}"))))
}

/// Starts a process's stdio and runs `launch` (runtime create or exec) with it; for a
/// terminal, receives the pty master afterwards.
pub(crate) async fn with_stdio<F, Fut>(
    p: &Process,
    console_dir: &Path,
    launch: F,
) -> Result<(), ContainerError>
where
    F: FnOnce(ProcessIo, Option<PathBuf>) -> Fut,
    Fut: std::future::Future<Output = crate::Result<()>>,
{
    if p.paths.terminal {
        let console = ConsoleSocket::new(console_dir)?;
        let stdio = Arc::new(Stdio::terminal());
        p.set_stdio(stdio.clone());
        launch(ProcessIo::default(), Some(console.path().to_path_buf())).await?;
        let master = console.receive_master()?;
        stdio.attach_console(master, &p.paths)?;
    } else {
        let stdio = Arc::new(Stdio::pipes(&p.paths).map_err(ContainerError::InvalidInput)?);
        p.set_stdio(stdio.clone());
        let io = stdio.process_io()?;
        if let Err(e) = launch(io, None).await {
            stdio.finish(Duration::from_millis(100)).await;
            return Err(e.into());
        }
    }
    Ok(())
}

impl Container {
    /// Creates the container with the runtime (its init waits for [`Container::start`]).
    /// A private network namespace the spec asks for is made and pinned by lightwhale,
    /// so it outlives the task's sleeps. A failed create leaves nothing behind.
    pub async fn create(req: CreateRequest) -> Result<Arc<Container>, ContainerError> {
        let CreateRequest {
            id,
            namespace,
            bundle,
            stdio,
            config,
            runtime,
            sink,
            dirs,
            bundle_state: mut state,
            no_pivot,
            no_new_keyring,
            pod,
        } = req;
        let image_root = dirs.images.join(&namespace).join(&id);
        state.image_root = Some(image_root.clone());
        state.status_file = Some(lightwhale_status::status_path(
            &dirs.status,
            &namespace,
            &id,
        ));
        state.control_socket = Some(lightwhale_status::control_path(
            &dirs.status,
            &namespace,
            &id,
        ));
        state.exited_file = Some(lightwhale_status::exited_path(
            &dirs.exited,
            &namespace,
            &id,
        ));
        state.logs_dir = Some(dirs.logs.join(&namespace).join(&id));
        let init = Process::new("", stdio, Vec::new());
        let since = Instant::now();
        let mut template_use = None;
        let mut template_fill = None;
        let setup = async {
            let mut spec = BundleSpec::load(&bundle).map_err(ContainerError::InvalidInput)?;
            let mut netns_path = None;
            let host_network = match spec.network_ns() {
                None => true,
                Some(path) if path.is_empty() => {
                    if spec.has_namespace("user") {
                        // A namespace we made would belong to the host's user namespace.
                        info!(%id, "user namespace in spec: leaving the network namespace to runc");
                    } else {
                        let pin = netns::pin_path(&dirs.state, &namespace, &id);
                        let _ = netns::remove_pinned(&pin);
                        netns::create_pinned(&pin)?;
                        state.netns = Some(pin.clone());
                        netns_path = Some(pin.clone());
                        spec.set_network_ns_path(&pin);
                    }
                    false
                }
                Some(path) => {
                    let path = PathBuf::from(path);
                    if netns::is_host(&path) {
                        true
                    } else {
                        // Someone else's namespace (a pod's, made by CNI; `ctr run
                        // --with-ns`), but the container's: set there what a wake needs.
                        if config.enabled {
                            if let Err(e) = netns::enable_migrate_req(&path) {
                                warn!(%id, "{e}: connections queued during a sleep may be reset at wake");
                            }
                        }
                        netns_path = Some(path);
                        false
                    }
                }
            };
            let name = display_name(&spec);
            if config.enabled {
                // runc passes this file to CRIU on checkpoint and restore alike.
                spec.set_annotation(
                    "org.criu.config",
                    &config.criu_profile_path.display().to_string(),
                );
            }
            spec.save()?;
            state.save(&bundle).map_err(|source| ContainerError::Io {
                what: "save lightwhale's state in",
                path: bundle.clone(),
                source,
            })?;
            let host_and_name = (host_network, name, netns_path);
            let pid_file = bundle.join("init.pid");
            let console_dir = dirs.state.join("console");
            if let Some(name) = &config.template {
                let (init, console_dir) = (&init, &console_dir);
                let (rt, id2, bundle2) = (runtime.clone(), id.clone(), bundle.clone());
                let restore = move |opts: RestoreOpts| async move {
                    let (rt, id, bundle) = (rt, id2, bundle2);
                    let launch = move |io, console_socket| async move {
                        let opts = RestoreOpts {
                            console_socket,
                            ..opts
                        };
                        rt.restore(&id, &bundle, &opts, io).await
                    };
                    with_stdio(init, console_dir, launch)
                        .await
                        .map_err(|e| e.to_string())
                };
                let (used, fill) = crate::template::start_from_template(
                    runtime.as_ref(),
                    &id,
                    &bundle,
                    &dirs.templates,
                    name,
                    &config,
                    restore,
                )
                .await;
                let restored = used.restored;
                template_use = Some(used);
                template_fill = fill;
                if restored {
                    return Ok((read_pid(&pid_file)?, host_and_name));
                }
            }
            with_stdio(&init, &console_dir, |io, console_socket| {
                let copts = CreateOpts {
                    pid_file: pid_file.clone(),
                    log_file: bundle.join("log.json"),
                    console_socket,
                    no_pivot,
                    no_new_keyring,
                };
                let runtime = runtime.clone();
                let id = id.clone();
                let bundle = bundle.clone();
                async move { runtime.create(&id, &bundle, &copts, io).await }
            })
            .await?;
            Ok((read_pid(&pid_file)?, host_and_name))
        };
        let (pid, (host_network, name, netns_path)) = match setup.await {
            Ok(v) => v,
            Err(e) => {
                warn!(%id, "create failed: {e}");
                let _ = runtime.delete(&id, true).await;
                state.release_bundle(&bundle);
                return Err(e);
            }
        };
        init.set_pid(pid);
        let memcg = MemoryCgroup::of_pid(pid);
        let mut status = ContainerStatus::new(&namespace, &id, config.view(&image_root));
        status.name = name;
        status.template = template_use;
        let c = Container::assemble(Parts {
            id,
            namespace,
            bundle,
            config,
            host_network,
            pod,
            netns_path,
            runtime,
            sink,
            dirs,
            bundle_state: state,
            image_root,
            init,
            memcg,
            status,
        });
        if let Some(g) = c.pod.group() {
            g.join(&c);
        }
        c.write_initial_status();
        crate::control::serve(&c);
        c.watch_init(pid, since);
        if let Some(daemon) = template_fill {
            c.watch_fill(daemon, pid, false);
        }
        Ok(c)
    }

    /// Starts the init process (`exec_id` empty) or an exec; returns its pid.
    pub async fn start(self: &Arc<Self>, exec_id: &str) -> Result<i32, ContainerError> {
        if exec_id.is_empty() {
            self.start_init().await
        } else {
            self.start_exec(exec_id).await
        }
    }

    async fn start_init(self: &Arc<Self>) -> Result<i32, ContainerError> {
        let _order = self.event_order.lock().await;
        if self.state() != State::Created {
            return Err(ContainerError::NotCreated(self.id.clone()));
        }
        // A clone restored from a template runs already (a restore has no created stage).
        let restored = self
            .lock()
            .status
            .template
            .as_ref()
            .is_some_and(|t| t.restored);
        if !restored {
            self.runtime.start(&self.id).await?;
        }
        if let Err(e) = self.transition(Transition::Start) {
            // Only an exit can overtake a start; it is reported after this event.
            info!(id = %self.id, "{e}");
        }
        let pid = self.init.pid();
        self.emit(Event::Started {
            id: self.id.clone(),
            pid,
        });
        if let Some(r) = self.static_refusal() {
            self.set_not_sleeping(r.not_sleeping());
        }
        if self.config.enabled {
            crate::monitor::spawn(self);
        }
        if restored {
            self.spawn_post_wake();
        }
        Ok(pid)
    }

    /// Sends `signal` to init (`exec_id` empty; to every process with `all`) or to an
    /// exec. A sleeping init is ended at once by SIGKILL and woken for any other signal.
    pub async fn kill(
        self: &Arc<Self>,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), ContainerError> {
        if !exec_id.is_empty() {
            return self.kill_exec(exec_id, signal);
        }
        if is_stop_signal(signal) {
            // Set before looking at the state: from here no new sleep begins.
            self.lock().stopping = true;
        }
        loop {
            match self.settled().await {
                State::Exited => return Err(ContainerError::ProcessFinished),
                State::Asleep if signal as i32 == libc::SIGKILL => {
                    if self.claim_exit(Some(State::Asleep)) {
                        info!(id = %self.id, "killed while asleep");
                        let status = 128 + libc::SIGKILL as u32;
                        self.complete_exit(self.init.pid(), status, SystemTime::now())
                            .await;
                        return Ok(());
                    }
                }
                State::Asleep | State::Dozing => match self.wake(Trigger::Signal).await {
                    Ok(()) => {}
                    Err(WakeError::Exited) => return Err(ContainerError::ProcessFinished),
                    Err(e) => return Err(e.into()),
                },
                _ => break,
            }
        }
        let _answering = self.kill_under_way();
        match self.runtime.kill(&self.id, signal as i32, all).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_running() || e.is_not_found() || self.init.has_exited() => {
                Err(ContainerError::ProcessFinished)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Freezes the task (a sleeping one is woken first: a checkpoint cannot be frozen).
    pub async fn pause(self: &Arc<Self>) -> Result<(), ContainerError> {
        loop {
            match self.wake(Trigger::Pause).await {
                Ok(()) => {}
                Err(WakeError::Exited) => return Err(ContainerError::NotRunning(self.id.clone())),
                Err(e) => return Err(e.into()),
            }
            match self.transition(Transition::Pause) {
                Ok(_) => break,
                // A sleep began between the wake and here: wake it again.
                Err(e)
                    if matches!(e.from, State::Asleep | State::Dozing)
                        || e.from.in_transition() =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Err(e) = self.runtime.pause(&self.id).await {
            let _ = self.transition(Transition::Resume);
            return Err(e.into());
        }
        self.emit(Event::Paused {
            id: self.id.clone(),
        });
        Ok(())
    }

    pub async fn resume(&self) -> Result<(), ContainerError> {
        if self.state() != State::Paused {
            return Err(TransitionError {
                from: self.state(),
                transition: Transition::Resume,
            }
            .into());
        }
        self.runtime.resume(&self.id).await?;
        self.transition(Transition::Resume)?;
        self.emit(Event::Resumed {
            id: self.id.clone(),
        });
        Ok(())
    }

    /// Applies new resources (an OCI `LinuxResources` document); while asleep they are
    /// kept and applied right after the next restore.
    pub async fn update(&self, resources: &[u8]) -> Result<(), ContainerError> {
        serde_json::from_slice::<oci_spec::runtime::LinuxResources>(resources)
            .map_err(ContainerError::InvalidResources)?;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let file = self.bundle.join(format!(
            ".lightwhale-resources-{}.json",
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&file, resources).map_err(|source| ContainerError::Io {
            what: "write",
            path: file.clone(),
            source,
        })?;
        loop {
            self.settled().await;
            let mut r = self.lock();
            match r.status.state {
                State::Asleep => {
                    if let Some(old) = r.pending_update.replace(file) {
                        let _ = std::fs::remove_file(old);
                    }
                    return Ok(());
                }
                s if s.in_transition() => continue,
                _ => break,
            }
        }
        let r = self.runtime.update(&self.id, &file).await;
        let _ = std::fs::remove_file(&file);
        r.map_err(Into::into)
    }

    /// A checkpoint the client asked for (`ctr c checkpoint`): woken first if asleep.
    pub async fn checkpoint(self: &Arc<Self>, opts: CheckpointOpts) -> Result<(), ContainerError> {
        self.wake(Trigger::Checkpoint).await?;
        self.runtime.checkpoint(&self.id, &opts).await?;
        self.emit(Event::Checkpointed {
            id: self.id.clone(),
            images: opts.image_path.display().to_string(),
        });
        Ok(())
    }

    /// Host pids of the task's processes; none while it sleeps or is being restored.
    pub async fn pids(&self) -> Result<Vec<i32>, ContainerError> {
        match self.state() {
            State::Asleep | State::Waking | State::Exited => Ok(Vec::new()),
            _ => match self.runtime.ps(&self.id).await {
                Ok(p) => Ok(p),
                // Gone between the look and the call (a dump just ended it).
                Err(e) if e.is_not_found() => Ok(Vec::new()),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// The pid whose cgroup holds the task's resources now, if it runs.
    pub fn running_pid(&self) -> Option<i32> {
        let pid = self.init.pid();
        (pid > 0 && !matches!(self.state(), State::Asleep | State::Waking | State::Exited))
            .then_some(pid)
    }

    /// Waits for a process to end.
    pub async fn wait(&self, exec_id: &str) -> Result<ExitInfo, ContainerError> {
        let p = self.exec_process(exec_id)?;
        Ok(p.wait().await)
    }

    /// Deletes the container: a sleeping one is ended (its images go), the runtime's
    /// container removed, everything lightwhale made for it released. Returns init's
    /// pid and exit.
    pub async fn delete(self: &Arc<Self>) -> Result<(i32, ExitInfo), ContainerError> {
        self.deleted.store(true, Ordering::Relaxed);
        self.lock().stopping = true;
        // runc deletes a running task; a frozen one would not die (cgroup v1).
        self.thaw_at(Trigger::Signal, std::time::Instant::now());
        while self.settled().await == State::Asleep {
            if self.claim_exit(Some(State::Asleep)) {
                let status = 128 + libc::SIGKILL as u32;
                self.complete_exit(self.init.pid(), status, SystemTime::now())
                    .await;
            }
        }
        if let Err(e) = self.runtime.delete(&self.id, true).await {
            // Gone already is what we want.
            if !e.is_not_found() {
                return Err(e.into());
            }
        }
        // A created task that never ran is killed by `delete --force`; report its exit.
        let exit = tokio::time::timeout(Duration::from_secs(10), self.init.wait())
            .await
            .map_err(|_| ContainerError::DeleteTimedOut(self.id.clone()))?;
        self.bundle_state.release_bundle(&self.bundle);
        self.stop_fill();
        for t in std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner())) {
            t.abort();
        }
        self.bundle_state.retire_records(None);
        let pid = self.init.pid();
        self.emit(Event::Deleted {
            id: self.id.clone(),
            pid,
            status: exit.status,
            at: exit.at,
        });
        Ok((pid, exit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals() {
        assert!(is_stop_signal(libc::SIGTERM as u32));
        assert!(is_stop_signal(libc::SIGKILL as u32));
        assert!(!is_stop_signal(libc::SIGHUP as u32));
        assert!(!is_stop_signal(libc::SIGWINCH as u32));
    }
}
