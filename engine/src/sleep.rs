//! Sleep: an idle task is frozen, its sockets taken, and CRIU dumps it; every process
//! exits and the shim holds the sockets until something needs the task again.
//!
//! Transitions: Awake → Sleeping (claimed here) → Asleep on a good dump, or back to
//! Awake when the dump fails (the task is thawed and serves on), or Exited when the task
//! died during the dump. When to sleep is the monitor's call; this is the mechanism.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::cancel::{CancelFlag, CancelPoint};
use crate::cgroup::MemoryCgroup;
use crate::container::{tail, Container};
use crate::events::{Event, Trigger};
use crate::freezer::{FreezeError, Freezer};
use crate::hold::Held;
use crate::hooks::HookError;
use crate::lazy;
use crate::runc::CheckpointOpts;
use crate::sockets;
use crate::state::{State, Transition};
use crate::wake::WakeError;

pub use crate::refusal::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum SleepError {
    #[error("not sleeping: {0}")]
    Refused(#[from] Refusal),
    /// A step before the dump failed; the task runs on.
    #[error("not sleeping: cannot {what}: {source}")]
    Prepare {
        what: &'static str,
        #[source]
        source: crate::Error,
    },
    #[error("pre-sleep-exec failed, sleep cancelled: {0}")]
    Hook(#[source] HookError),
    #[error("checkpoint failed: {source}\n--- CRIU dump.log (tail) ---\n{criu_log}")]
    Dump {
        #[source]
        source: crate::Error,
        criu_log: String,
    },
}

impl SleepError {
    /// A refusal is a normal answer (the task is busy, or cannot sleep); anything else
    /// is a failure worth keeping for `lightwhale inspect`.
    pub fn is_refusal(&self) -> bool {
        matches!(self, SleepError::Refused(_) | SleepError::Prepare { .. })
    }

    /// The refusal, if this is one.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            SleepError::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// What a good dump leaves: the held sockets and the figures of the sleep.
struct Dumped {
    held: Held,
    usage_before: Option<u64>,
    took: Duration,
}

/// How long a task may take to freeze before the sleep is given up.
const FREEZE_LIMIT: Duration = Duration::from_secs(2);

/// How long the exit of a dumped task may take to reach the reaper after the dump.
const DUMP_EXIT_WAIT: Duration = Duration::from_secs(5);

impl Container {
    /// Puts the task to sleep now. Refuses (without harm) when it cannot sleep.
    pub async fn sleep(self: &Arc<Self>) -> Result<(), SleepError> {
        let result = self.sleep_once().await;
        if let Err(e) = &result {
            let kind = match e {
                SleepError::Refused(r) => r.not_sleeping().map(|n| n.kind()),
                SleepError::Prepare { .. } => Some("prepare"),
                _ => None,
            };
            if let Some(kind) = kind {
                self.update_status(|s| {
                    lightwhale_status::Counters::bump(&mut s.counters.refusals, kind)
                });
            }
        }
        result
    }

    async fn sleep_once(self: &Arc<Self>) -> Result<(), SleepError> {
        let _gate = self.sleep_gate.lock().await;
        if let Some(r) = self.static_refusal() {
            return Err(r.into());
        }
        match self.settled().await {
            State::Asleep => return Ok(()),
            State::Awake => {}
            // Idle on past its doze: thawed, then checkpointed as any awake task.
            State::Dozing => {
                self.thaw_at(Trigger::Sleep, Instant::now());
            }
            other => return Err(Refusal::NotAwake(other).into()),
        }
        if self.running_execs() > 0 {
            return Err(Refusal::ExecRunning.into());
        }
        if self.lock().stopping {
            return Err(Refusal::Stopping.into());
        }
        // Cheap looks first, so that a task that cannot sleep is never frozen for it.
        self.check_listeners()?;
        self.check_dumpable().await?;
        self.check_budget()?;
        if !self.fill_finished(Duration::from_secs(30)).await {
            return Err(Refusal::FillRunning.into());
        }
        // A pod's probes are answered while it sleeps with what the app answers now.
        if let (Some(_), Some(netns)) = (self.pod.group(), &self.netns_path) {
            crate::probes::refresh(&self.probes, netns).await;
        }
        if let Some(cmd) = &self.config.pre_sleep_exec {
            // Run while the task is awake: a kill or an exec meanwhile is not held up.
            if let Err(e) = crate::hooks::run(self, "pre-sleep", cmd).await {
                let err = SleepError::Hook(e);
                self.sleep_failed(&err);
                return Err(err);
            }
        }
        let pid = self.init.pid();
        let claimed = self.transition_if(
            Transition::BeginSleep,
            |r| !r.stopping,
            |r| {
                r.dumping = Some(pid);
                r.dump_exit = None;
            },
        );
        match claimed {
            Ok(Some(())) => {}
            Ok(None) => return Err(Refusal::Stopping.into()),
            Err(e) => return Err(Refusal::NotAwake(e.from).into()),
        }
        match self.freeze_and_dump(pid).await {
            Ok(dumped) => {
                self.finish_sleep(dumped).await;
                Ok(())
            }
            Err(e) => {
                // A called-off dump leaves the task frozen: it is thawed once the state
                // says awake (a client answered must not read "sleeping" after).
                let frozen = matches!(e.refusal(), Some(Refusal::Cancelled { .. }));
                self.abort_sleep(&e, frozen.then_some(pid)).await;
                Err(e)
            }
        }
    }

    /// Why this container never sleeps, whatever it does: None when it may.
    pub fn static_refusal(&self) -> Option<Refusal> {
        if matches!(self.pod, crate::container::PodRole::Sandbox) {
            Some(Refusal::PodSandbox)
        } else if !self.config.enabled {
            Some(Refusal::Disabled)
        } else if self.init.paths.terminal {
            Some(Refusal::Terminal)
        } else if self.host_network {
            Some(Refusal::HostNetwork)
        } else {
            None
        }
    }

    /// Something must listen on TCP to wake the task: what the ports annotation names,
    /// or any port.
    pub(crate) fn check_listeners(&self) -> Result<(), Refusal> {
        let pid = self.init.pid();
        if !sockets::listeners(pid, &self.config.ports).is_empty() {
            return Ok(());
        }
        if !self.config.ports.is_empty() {
            return Err(Refusal::PortsNotListening(self.config.ports.clone()));
        }
        let udp = sockets::udp_ports(pid);
        if udp.is_empty() {
            Err(Refusal::NoListener)
        } else {
            Err(Refusal::UdpOnly(udp))
        }
    }

    /// Whether the runtime can checkpoint the task's processes on this host: when it
    /// cannot, say so instead of failing a dump every time.
    async fn check_dumpable(&self) -> Result<(), Refusal> {
        let pids = self.runtime.ps(&self.id).await.unwrap_or_default();
        match self.runtime.checkpoint_blocker(&pids) {
            Some(why) => Err(Refusal::CannotDump(why)),
            None => Ok(()),
        }
    }

    /// The node's budget for checkpoint images, when it has one: the images of every
    /// container plus this one's (about its memory) must fit.
    fn check_budget(&self) -> Result<(), Refusal> {
        let Some(budget) = self.config.image_budget else {
            return Ok(());
        };
        let needed = self
            .memcg
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(MemoryCgroup::usage_bytes)
            .unwrap_or(0);
        let used = crate::bundle::dir_bytes(&self.dirs.images);
        if used.saturating_add(needed) > budget {
            return Err(Refusal::DiskBudget {
                needed,
                used,
                budget,
            });
        }
        Ok(())
    }

    /// Frozen first: no connection can be accepted between listing the sockets and the
    /// dump, so every accepted connection is among the ones held.
    async fn freeze_and_dump(self: &Arc<Self>, pid: i32) -> Result<Dumped, SleepError> {
        prepare_dirs(&self.image_root)?;
        // The freezer directly (a millisecond; `runc pause` costs a Go start, ~10 ms of
        // the window in which a request waits): runc reads the same freezer state.
        let freezer = self
            .runtime
            .shares_freezer()
            .then(|| Freezer::of_pid(pid).ok())
            .flatten();
        let pids = match freezer.as_ref().map(Freezer::procs) {
            Some(p) if !p.is_empty() => p,
            _ => self
                .runtime
                .ps(&self.id)
                .await
                .map_err(|source| SleepError::Prepare {
                    what: "list the task's processes",
                    source,
                })?,
        };
        // The listeners while the task runs, and a pod's probes answered by the shim from
        // here on, as while it sleeps: from the freeze on, what reaches the app's own
        // queue is a client, and calls the sleep off; a probe never does (the kubelet's
        // period would call off one sleep in every few).
        let mut held = hold_listeners(&pids, &self.config.ports)?;
        self.answer_probes(&mut held);
        match &freezer {
            Some(f) => {
                let f2 = f.clone();
                let frozen = tokio::task::spawn_blocking(move || {
                    f2.start_freeze()?;
                    f2.wait_frozen(FREEZE_LIMIT)
                })
                .await
                .unwrap_or(Err(FreezeError::Timeout(FREEZE_LIMIT)));
                if let Err(e) = frozen {
                    self.thaw(pid, "a task that would not freeze").await;
                    return Err(SleepError::Prepare {
                        what: "freeze the task",
                        source: e.into(),
                    });
                }
            }
            None => self
                .runtime
                .pause(&self.id)
                .await
                .map_err(|source| SleepError::Prepare {
                    what: "freeze the task",
                    source,
                })?,
        }
        // Frozen: no connection is accepted from here; those accepted are all held.
        if let Err(e) = hold_connections(&mut held, &pids, &self.config.ports) {
            self.thaw(pid, "a refused sleep").await;
            return Err(e);
        }
        let usage_before = MemoryCgroup::of_pid(pid).and_then(|m| m.usage_bytes());
        let cancel = self.arm_cancel(&held);
        let t0 = Instant::now();
        let asked_early = cancel.as_ref().and_then(|(f, _)| f.asked()).is_some();
        let dumped = if asked_early {
            None
        } else {
            let opts = CheckpointOpts {
                image_path: self.images(),
                work_path: Some(self.work()),
                log_file: self.image_root.join("checkpoint.json"),
                cancel_flag: cancel.as_ref().map(|(f, _)| f.path().to_path_buf()),
                on_spawn: cancel.as_ref().map(|(f, _)| f.spawn_hook()),
                ..Default::default()
            };
            Some(self.runtime.checkpoint(&self.id, &opts).await)
        };
        // From here a request waits for the wake: nobody may ask any more.
        self.lock().cancel = None;
        if let Some((flag, watch)) = &cancel {
            watch.abort();
            let at = match &dumped {
                None => Some(CancelPoint::BeforeDump),
                Some(Err(_)) => flag.taken(),
                Some(Ok(())) => None,
            };
            flag.finish();
            if let (Some(at), Some((seen, by))) = (at, flag.asked()) {
                // Left frozen: the caller thaws it once the state says awake.
                return Err(Refusal::Cancelled {
                    by,
                    at,
                    waited_ms: seen.elapsed().as_millis() as u64,
                }
                .into());
            }
        }
        if let Some(Err(source)) = dumped {
            // CRIU leaves a task it failed to dump as it found it: frozen.
            self.thaw(pid, "a failed dump").await;
            return Err(SleepError::Dump {
                source,
                criu_log: tail(&self.work().join("dump.log"), 20),
            });
        }
        Ok(Dumped {
            held,
            usage_before,
            took: t0.elapsed(),
        })
    }

    /// From now until the dump's last clean point, a connection on a held socket (or an
    /// exec, a signal, a wake: see `ask_sleep_off`) calls the sleep off; None when this
    /// container or runtime cannot.
    fn arm_cancel(&self, held: &Held) -> Option<(Arc<CancelFlag>, tokio::task::JoinHandle<()>)> {
        if !self.config.sleep_cancel || !self.runtime.can_cancel_dump() {
            return None;
        }
        let name = format!("{}-{}", self.namespace, self.id);
        let flag = match CancelFlag::new(&self.dirs.state.join("cancel"), &name) {
            Ok(f) => f,
            Err(e) => {
                warn!(id = %self.id, "a request during this dump will wait for it: {e}");
                return None;
            }
        };
        let asker = flag.clone();
        let watch = held.on_readable(move |seen| {
            asker.ask(Trigger::Connection, seen);
        });
        self.lock().cancel = Some(flag.clone());
        Some((flag, watch))
    }

    /// Asks a dump under way to give up (see `cancel`): true if one was under way and
    /// will look at the flag. The task is then thawed rather than restored.
    pub(crate) fn ask_sleep_off(&self, by: Trigger, seen: Instant) -> bool {
        let flag = self.lock().cancel.clone();
        flag.is_some_and(|f| f.ask(by, seen))
    }

    /// A sleeping (or dozing) pod's kubelet probes are answered by the shim (see
    /// `probes`).
    pub(crate) fn answer_probes(self: &Arc<Self>, held: &mut Held) {
        let (Some(_), Some(netns)) = (self.pod.group(), &self.netns_path) else {
            return;
        };
        let node = self
            .node_addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if node.is_empty() {
            return;
        }
        let weak = Arc::downgrade(self);
        let wake: crate::probes::Waker = Arc::new(move || {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(c) => c.wake(Trigger::Connection).await.is_ok(),
                    None => false,
                }
            })
        });
        match crate::probes::Responder::start(
            netns,
            &held.listeners(),
            &node,
            self.probes.clone(),
            wake,
        ) {
            Ok(r) => held.set_responder(r),
            Err(e) => warn!(id = %self.id, "probes will wake it: {e}"),
        }
    }

    /// Lets a frozen task run on: the freezer directly (a millisecond), runc if that fails.
    async fn thaw(&self, pid: i32, after: &str) {
        if self.runtime.shares_freezer() {
            match Freezer::of_pid(pid).and_then(|f| f.thaw()) {
                Ok(()) => return,
                Err(e) => warn!(id = %self.id, "thaw after {after} by the freezer: {e}"),
            }
        }
        if let Err(e) = self.runtime.resume(&self.id).await {
            warn!(id = %self.id, "resume after {after}: {e}");
        }
    }

    /// The dump is written and the task is gone: Sleeping → Asleep, sockets watched.
    async fn finish_sleep(self: &Arc<Self>, dumped: Dumped) {
        // The dumped task's exit is the dump's doing: wait for it here, so it cannot be
        // mistaken later for the end of a restored incarnation.
        let deadline = tokio::time::Instant::now() + DUMP_EXIT_WAIT;
        loop {
            let notified = self.dump_exited.notified();
            if self.lock().dump_exit.is_some() {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                warn!(id = %self.id, "the dumped task's exit did not arrive");
                break;
            }
        }
        let pages = lazy::pages_bytes(&self.images());
        // Done now rather than on the wake path.
        if let Err(e) = crate::wake::write_restore_bundle(&self.bundle, &self.image_root) {
            warn!(id = %self.id, "restore bundle (retried at wake): {e}");
        }
        let Dumped {
            mut held,
            usage_before,
            took,
        } = dumped;
        let ports = held.ports();
        let weak = Arc::downgrade(self);
        held.watch(move |seen| {
            // A task of its own: the wake drops the held sockets, and with them this watch.
            if let Some(c) = weak.upgrade() {
                tokio::spawn(async move {
                    info!(id = %c.id, "connection while asleep: waking");
                    loop {
                        match c.wake_since(Trigger::Connection, seen).await {
                            // Its clients wait in the held queue: try again while it
                            // sleeps, each try bounded, each failure reported.
                            Err(WakeError::NoMemory { .. }) if c.is_asleep() => {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            Err(e) => {
                                warn!(id = %c.id, "{e}");
                                break;
                            }
                            Ok(()) => break,
                        }
                    }
                });
            }
        });
        let done = self.transition_with(Transition::SleepDone, |r| {
            r.dumping = None;
            r.dump_exit = None;
            r.held = Some(held);
            let s = &mut r.status;
            s.sleeps += 1;
            s.last_sleep_ms = Some(took.as_millis() as u64);
            s.memory_freed_bytes = usage_before;
            s.pages_bytes = Some(pages);
            s.held_ports = ports.clone();
            s.last_error = None;
            s.not_sleeping = None;
            s.counters.sleep_seconds.observe(took.as_secs_f64());
            s.counters.memory_freed_bytes_total += usage_before.unwrap_or(0);
        });
        if let Err(e) = done {
            // Sleeping is the sleep's own; nothing else moves it. Never leave images of
            // a task that is not asleep.
            warn!(id = %self.id, "{e}");
            self.discard_images();
            return;
        }
        info!(id = %self.id, ms = took.as_millis() as u64, ?ports, "asleep");
        self.emit(Event::Checkpointed {
            id: self.id.clone(),
            images: self.images().display().to_string(),
        });
        self.emit(Event::Asleep {
            id: self.id.clone(),
            took_ms: took.as_millis() as u64,
            pages_bytes: pages,
        });
    }

    /// The dump did not happen: the task runs on (Sleeping → Awake), unless it died
    /// meanwhile (Sleeping → Exited, its exit reported as any other). `frozen`: the pid
    /// of a task left frozen, thawed once the state says awake.
    async fn abort_sleep(&self, e: &SleepError, frozen: Option<i32>) {
        let aborted = self.transition_if(
            Transition::SleepAborted,
            |r| r.dump_exit.is_none(),
            |r| r.dumping = None,
        );
        if let Some(pid) = frozen {
            self.thaw(pid, "a called-off sleep").await;
        }
        self.discard_images();
        if let Ok(None) = aborted {
            let exit = self.lock().dump_exit.take();
            if let Some(exit) = exit {
                if self.claim_exit(None) {
                    self.complete_exit(exit.pid, exit.status as u32, exit.at)
                        .await;
                }
            }
        }
        if let Some(r @ Refusal::Cancelled { .. }) = e.refusal() {
            info!(id = %self.id, "{r}");
        } else if !e.is_refusal() {
            self.sleep_failed(e);
        }
    }

    fn sleep_failed(&self, e: &SleepError) {
        warn!(id = %self.id, "{e}");
        let kind = match e {
            SleepError::Hook(_) => "hook",
            _ => "dump",
        };
        self.update_status(|s| lightwhale_status::Counters::bump(&mut s.counters.failures, kind));
        self.record_error(e);
        self.emit(Event::SleepFailed {
            id: self.id.clone(),
            reason: e.to_string(),
        });
    }
}

/// Fresh, root-only directories for the images (they hold the task's memory).
fn prepare_dirs(image_root: &Path) -> Result<(), SleepError> {
    crate::bundle::fresh_private_dirs(image_root, &["images", "work"]).map_err(|(path, source)| {
        SleepError::Prepare {
            what: "create the image directory",
            source: crate::Error::Io {
                what: "create",
                path,
                source,
            },
        }
    })
}

/// The task's listeners (those `ports` names, or all), duplicated and given
/// `SO_REUSEPORT`.
fn hold_listeners(pids: &[i32], ports: &[u16]) -> Result<Held, SleepError> {
    let prepare = |what| move |source| SleepError::Prepare { what, source };
    let found =
        sockets::task_sockets(pids, ports).map_err(prepare("duplicate the task's sockets"))?;
    if found.listeners.is_empty() {
        return Err(Refusal::NoListener.into());
    }
    for (_, l) in &found.listeners {
        sockets::set_reuseport(l).map_err(prepare("set SO_REUSEPORT on a listener"))?;
    }
    Ok(Held::new(found.listeners, Vec::new()))
}

/// The frozen task's established connections join `held`; one with a request not yet
/// answered refuses the sleep (its client would wait for an answer nobody wakes the task
/// to give).
fn hold_connections(held: &mut Held, pids: &[i32], ports: &[u16]) -> Result<(), SleepError> {
    let conns = sockets::task_sockets(pids, ports)
        .map_err(|source| SleepError::Prepare {
            what: "duplicate the task's sockets",
            source,
        })?
        .conns;
    if conns
        .iter()
        .any(|c| sockets::awaiting_reply(c).unwrap_or(false))
    {
        return Err(Refusal::InFlight.into());
    }
    held.add_conns(conns);
    Ok(())
}
