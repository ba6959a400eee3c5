//! A container under lightwhale: its state, and the one place where the state changes.
//!
//! Everything about a container's life that other modules act on is here: the
//! [`State`] (with the status record `lightwhale` reads, persisted on every change), the
//! processes, the sockets held while it sleeps, the page fill of a lazy wake. A change of
//! state is `Container::transition`: it checks the step with [`state::next`], applies
//! it, writes the status file and tells everyone waiting, under one lock.
//!
//! The operations that drive the transitions live beside this file, one concern each:
//! `lifecycle` (create, start, exec, kill, delete: what containerd asks), `sleep` and
//! `wake` (the checkpoint and the restore), `monitor` (when to sleep). Init's exits come
//! in through `Container::on_init_exit`, which alone decides what an exit means.
//!
//! One file past 600 lines on purpose: the record, the one place it changes and the exit
//! handling that decides what an exit means all read and write the record under its lock;
//! split, the state would be spread across files again (what this module replaced).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lightwhale_status::ContainerStatus;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::bundle::BundleState;
use crate::cgroup::MemoryCgroup;
use crate::config::SleepConfig;
use crate::events::{Event, EventSink};
use crate::hold::Held;
use crate::process::{ExitInfo, Process, TaskStatus};
use crate::reaper::Exit;
use crate::runtime::OciRuntime;
use crate::state::{self, State, Transition, TransitionError};

/// How long a finished process's output may take to drain to the client.
const IO_DRAIN: Duration = Duration::from_secs(3);

/// Where lightwhale keeps what it makes for containers.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// Runtime state on tmpfs: pinned network namespaces, console sockets.
    pub state: PathBuf,
    /// Status files and control sockets, read by `lightwhale`.
    pub status: PathBuf,
    /// Checkpoint images: `<images>/<namespace>/<id>`.
    pub images: PathBuf,
    /// Records of deleted containers (`lightwhale ps -a`).
    pub exited: PathBuf,
    /// CRIU logs of containers that failed, kept after they are deleted.
    pub logs: PathBuf,
    /// Templates new containers start from (`lightwhale template`).
    pub templates: PathBuf,
}

impl Default for Dirs {
    fn default() -> Self {
        Dirs {
            state: PathBuf::from("/run/lightwhale"),
            status: PathBuf::from(lightwhale_status::CONTAINERS_DIR),
            images: PathBuf::from("/var/lib/lightwhale"),
            exited: PathBuf::from(lightwhale_status::EXITED_DIR),
            logs: PathBuf::from("/var/log/lightwhale"),
            templates: PathBuf::from(lightwhale_status::TEMPLATES_DIR),
        }
    }
}

impl Dirs {
    /// All under one directory (tests).
    pub fn under(root: &Path) -> Dirs {
        Dirs {
            state: root.join("state"),
            status: root.join("status"),
            images: root.join("images"),
            exited: root.join("exited"),
            logs: root.join("logs"),
            templates: root.join("images/.templates"),
        }
    }
}

/// The app containers of one pod.
pub type Pod = crate::group::Group<Container>;

/// A container's place in a pod (containerd's CRI groups a pod's containers in one shim).
#[derive(Clone, Default)]
pub enum PodRole {
    /// Not in a pod (Docker, `ctr run`).
    #[default]
    None,
    /// The pod's sandbox (pause) container: it holds the network namespace, never sleeps.
    Sandbox,
    /// An app container: sleeps once every member of its group is idle, wakes with them.
    Member(Arc<Pod>),
}

impl PodRole {
    pub fn group(&self) -> Option<&Arc<Pod>> {
        match self {
            PodRole::Member(g) => Some(g),
            _ => None,
        }
    }
}

/// The background page fill of a lazy wake.
pub(crate) struct Fill {
    pub daemon_pid: i32,
    pub done: watch::Receiver<bool>,
}

/// Everything that changes with the container's state, behind one lock.
pub(crate) struct Record {
    /// What `lightwhale` reads; `status.state` is the container's state.
    pub status: ContainerStatus,
    /// While Sleeping: the init pid being dumped. Its exit is the dump's doing.
    pub dumping: Option<i32>,
    /// The exit of `dumping`, for the sleep to judge (a dump's end, or a real death).
    pub dump_exit: Option<Exit>,
    /// While Sleeping, until the dump's last clean point: the flag that calls it off.
    pub cancel: Option<Arc<crate::cancel::CancelFlag>>,
    /// While Asleep (and Waking): the sockets the shim holds for the task.
    pub held: Option<Held>,
    /// While Dozing: its freezer and the watch on its sockets.
    pub doze: Option<crate::hold::DozeHold>,
    /// What the dozes have left resident (see `pageout::WorkingSet`).
    pub working_set: crate::pageout::WorkingSet,
    pub fill: Option<Fill>,
    /// Resources sent by Update while asleep, applied at wake.
    pub pending_update: Option<PathBuf>,
    /// A stop signal was sent: the container is in its grace period and never sleeps.
    pub stopping: bool,
    /// A lazy wake's fill that ended before the wake recorded its phases.
    pub early_fill_ms: Option<f64>,
    /// The status to report when the current incarnation ends, when the engine ended it
    /// for a reason of its own (a failed page fill) rather than the app.
    pub forced_exit_status: Option<u32>,
}

pub struct Container {
    pub id: String,
    pub namespace: String,
    pub bundle: PathBuf,
    pub config: SleepConfig,
    /// It shares the host's network namespace (never put to sleep: see `Refusal`).
    pub host_network: bool,
    /// Its place in a pod: the sandbox (never sleeps), or a member that sleeps and wakes
    /// with the others.
    pub pod: PodRole,
    /// Its network namespace, when it has one of its own (pinned by lightwhale, or given
    /// by path: a pod's).
    pub netns_path: Option<PathBuf>,
    /// Its kubelet probes: requests seen, answers learned (pods only).
    pub(crate) probes: crate::probes::Book,
    /// The node's addresses as its pod sees them (the source of the kubelet's probes).
    pub(crate) node_addrs: Mutex<Vec<std::net::Ipv4Addr>>,
    pub(crate) runtime: Arc<dyn OciRuntime>,
    pub(crate) sink: Arc<dyn EventSink>,
    pub(crate) dirs: Dirs,
    pub(crate) bundle_state: BundleState,
    /// `<image dir>/<namespace>/<id>`: checkpoint images, CRIU logs, the restore bundle.
    pub image_root: PathBuf,
    pub init: Arc<Process>,
    pub(crate) execs: Mutex<HashMap<String, Arc<Process>>>,
    pub(crate) memcg: Mutex<Option<MemoryCgroup>>,
    pub(crate) oom_baseline: AtomicU64,
    /// Orders a process's start event before its exit event.
    pub(crate) event_order: tokio::sync::Mutex<()>,
    /// One sleep attempt at a time (the monitor and `lightwhale sleep` may both try).
    pub(crate) sleep_gate: tokio::sync::Mutex<()>,
    record: Mutex<Record>,
    state_tx: watch::Sender<State>,
    /// Rung when the exit of the task being dumped arrives.
    pub(crate) dump_exited: Notify,
    /// Kills of the init under way, and a bell when one ends: init's exit is reported
    /// only once the kill that caused it was answered (see `finish_process`).
    pub(crate) kills_in_flight: AtomicUsize,
    pub(crate) kill_answered: Notify,
    /// Activity the monitor cannot see in counters (an exec, a wake).
    activity: AtomicBool,
    /// The monitor's last verdict: idle long enough to sleep (its pod reads it).
    idle_ready: AtomicBool,
    pub(crate) deleted: AtomicBool,
    /// The control socket and the idle monitor, stopped at delete.
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The longest an exit waits for the kill that caused it to be answered.
const KILL_ANSWER_WAIT: Duration = Duration::from_secs(5);

/// A kill of init under way (see [`Container::kill_under_way`]).
pub(crate) struct KillUnderWay<'a>(&'a Container);

impl Drop for KillUnderWay<'_> {
    fn drop(&mut self) {
        self.0.kills_in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.kill_answered.notify_waiters();
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) struct Parts {
    pub id: String,
    pub namespace: String,
    pub bundle: PathBuf,
    pub config: SleepConfig,
    pub host_network: bool,
    pub pod: PodRole,
    pub netns_path: Option<PathBuf>,
    pub runtime: Arc<dyn OciRuntime>,
    pub sink: Arc<dyn EventSink>,
    pub dirs: Dirs,
    pub bundle_state: BundleState,
    pub image_root: PathBuf,
    pub init: Arc<Process>,
    pub memcg: Option<MemoryCgroup>,
    pub status: ContainerStatus,
}

impl Container {
    pub(crate) fn assemble(p: Parts) -> Arc<Container> {
        let baseline = p.memcg.as_ref().map(MemoryCgroup::oom_kills).unwrap_or(0);
        let state = p.status.state;
        Arc::new(Container {
            id: p.id,
            namespace: p.namespace,
            bundle: p.bundle,
            config: p.config,
            host_network: p.host_network,
            pod: p.pod,
            netns_path: p.netns_path,
            probes: Default::default(),
            node_addrs: Mutex::new(Vec::new()),
            runtime: p.runtime,
            sink: p.sink,
            dirs: p.dirs,
            bundle_state: p.bundle_state,
            image_root: p.image_root,
            init: p.init,
            execs: Mutex::new(HashMap::new()),
            memcg: Mutex::new(p.memcg),
            oom_baseline: AtomicU64::new(baseline),
            event_order: tokio::sync::Mutex::new(()),
            sleep_gate: tokio::sync::Mutex::new(()),
            record: Mutex::new(Record {
                status: p.status,
                dumping: None,
                dump_exit: None,
                held: None,
                doze: None,
                working_set: Default::default(),
                fill: None,
                pending_update: None,
                stopping: false,
                early_fill_ms: None,
                forced_exit_status: None,
                cancel: None,
            }),
            state_tx: watch::channel(state).0,
            dump_exited: Notify::new(),
            kills_in_flight: AtomicUsize::new(0),
            kill_answered: Notify::new(),
            activity: AtomicBool::new(false),
            idle_ready: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Record> {
        // Every update under this lock leaves the record whole before it can panic (none
        // does I/O that panics), so a poisoned lock still holds a consistent record.
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> State {
        self.lock().status.state
    }

    pub fn status(&self) -> ContainerStatus {
        self.lock().status.clone()
    }

    pub fn status_path(&self) -> PathBuf {
        lightwhale_status::status_path(&self.dirs.status, &self.namespace, &self.id)
    }

    pub fn control_path(&self) -> PathBuf {
        lightwhale_status::control_path(&self.dirs.status, &self.namespace, &self.id)
    }

    pub(crate) fn images(&self) -> PathBuf {
        self.image_root.join("images")
    }

    pub(crate) fn work(&self) -> PathBuf {
        self.image_root.join("work")
    }

    pub(crate) fn persist(&self, status: &ContainerStatus) {
        let path = self.status_path();
        if let Err(e) = lightwhale_status::write_status(&path, status) {
            warn!(id = %self.id, "status file {}: {e}", path.display());
        }
    }

    /// Takes `t` if it is legal from the current state: sets the new state, lets `f`
    /// update the rest of the record in the same step, persists the status file and
    /// wakes everyone waiting for the state to change.
    pub(crate) fn transition_with<T>(
        &self,
        t: Transition,
        f: impl FnOnce(&mut Record) -> T,
    ) -> Result<T, TransitionError> {
        let mut r = self.lock();
        let to = state::next(r.status.state, t)?;
        Ok(self.commit(&mut r, to, f))
    }

    /// As [`Container::transition_with`], only when `guard` holds for the record as it
    /// is at that moment (None otherwise, with nothing changed).
    pub(crate) fn transition_if<T>(
        &self,
        t: Transition,
        guard: impl FnOnce(&Record) -> bool,
        f: impl FnOnce(&mut Record) -> T,
    ) -> Result<Option<T>, TransitionError> {
        let mut r = self.lock();
        let to = state::next(r.status.state, t)?;
        if !guard(&r) {
            return Ok(None);
        }
        Ok(Some(self.commit(&mut r, to, f)))
    }

    /// Applies a checked transition to the locked record: the one place a state is set.
    fn commit<T>(&self, r: &mut Record, to: State, f: impl FnOnce(&mut Record) -> T) -> T {
        let from = r.status.state;
        r.status.state = to;
        r.status.since_unix_ms = now_ms();
        let out = f(r);
        // Persisted and announced under the lock: two transitions never write their
        // files, nor wake their waiters, out of order.
        self.persist(&r.status);
        self.state_tx.send_replace(to);
        debug!(id = %self.id, %from, %to, "transition");
        out
    }

    /// Tells the state's watchers now, within a transition whose `f` lets the task run
    /// before the transition ends (a thaw): whoever looks once the task has answered sees
    /// the new state, as the status file already says.
    pub(crate) fn announce(&self, state: State) {
        self.state_tx.send_replace(state);
    }

    pub(crate) fn transition(&self, t: Transition) -> Result<State, TransitionError> {
        self.transition_with(t, |r| r.status.state)
    }

    /// Updates the status record without a change of state (counters, errors).
    pub(crate) fn update_status(&self, f: impl FnOnce(&mut ContainerStatus)) {
        let mut r = self.lock();
        f(&mut r.status);
        self.persist(&r.status);
    }

    /// Records why the container is not asleep (None: nothing keeps it awake but time);
    /// the file is rewritten only when the reason changes.
    pub(crate) fn set_not_sleeping(&self, why: Option<lightwhale_status::NotSleeping>) {
        let mut r = self.lock();
        let same = match (&r.status.not_sleeping, &why) {
            (Some(a), Some(b)) => a.roughly_eq(b),
            (a, b) => a == b,
        };
        if !same {
            r.status.not_sleeping = why;
            self.persist(&r.status);
        }
    }

    /// Keeps `e` (with its sources) as the last error `lightwhale inspect` shows.
    pub fn record_error(&self, e: &dyn std::error::Error) {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            let more = s.to_string();
            if !text.contains(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            source = s.source();
        }
        self.update_status(|s| s.last_error = Some(text));
    }

    /// The state once no sleep or wake is under way (waits for one to finish).
    pub async fn settled(&self) -> State {
        let mut rx = self.state_tx.subscribe();
        let settled = rx.wait_for(|s| !s.in_transition()).await.map(|s| *s);
        // The sender lives as long as the container.
        settled.unwrap_or(State::Exited)
    }

    /// Waits until the state is `want` or the container has exited, at most `limit`.
    pub async fn wait_for_state(&self, want: State, limit: Duration) -> Option<State> {
        let mut rx = self.state_tx.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|s| *s == want || *s == State::Exited))
            .await
            .ok()
            .and_then(|r| r.ok().map(|s| *s))
    }

    pub fn is_asleep(&self) -> bool {
        self.state() == State::Asleep
    }

    /// The init process's status as containerd names it. An exited init stays Running
    /// until its output is drained and its exit is reported, as with runc's shim.
    pub fn init_status(&self) -> TaskStatus {
        match self.state() {
            State::Created => TaskStatus::Created,
            State::Paused => TaskStatus::Paused,
            State::Exited if self.init.has_exited() => TaskStatus::Stopped,
            _ => TaskStatus::Running,
        }
    }

    pub fn process(&self, exec_id: &str) -> Option<Arc<Process>> {
        if exec_id.is_empty() {
            return Some(self.init.clone());
        }
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exec_id)
            .cloned()
    }

    /// The pids of started execs, with their ids.
    pub fn exec_pids(&self) -> HashMap<i32, String> {
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|p| p.pid() > 0)
            .map(|p| (p.pid(), p.exec_id.clone()))
            .collect()
    }

    pub fn running_execs(&self) -> usize {
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|p| p.is_running())
            .count()
    }

    pub(crate) fn touch_activity(&self) {
        self.activity.store(true, Ordering::Relaxed);
    }

    pub(crate) fn take_activity(&self) -> bool {
        self.activity.swap(false, Ordering::Relaxed)
    }

    pub(crate) fn set_idle_ready(&self, ready: bool) {
        self.idle_ready.store(ready, Ordering::Relaxed);
    }

    /// Whether its monitor last found it idle long enough to sleep.
    pub fn is_idle_ready(&self) -> bool {
        self.idle_ready.load(Ordering::Relaxed)
    }

    /// Remembers a kubelet probe seen while awake (answered while asleep).
    pub(crate) fn learn_probe(&self, p: crate::podnet::ProbeRequest) {
        self.probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .learn(p);
    }

    /// Copies the count of probes answered while asleep into the status, when it moved.
    pub(crate) fn note_probes_answered(&self) {
        let n = self
            .probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .answered;
        let mut r = self.lock();
        if r.status.probes_answered != n {
            r.status.probes_answered = n;
            self.persist(&r.status);
        }
    }

    /// A name for messages: the recorded name, else the short id.
    pub fn display_name(&self) -> String {
        self.lock()
            .status
            .name
            .clone()
            .unwrap_or_else(|| self.id.chars().take(12).collect())
    }

    pub(crate) fn emit(&self, event: Event) {
        self.sink.emit(event);
    }

    /// Removes the checkpoint images (they hold the task's memory, secrets included).
    pub(crate) fn discard_images(&self) {
        crate::bundle::remove_dir_quiet(&self.image_root);
    }

    /// Kills the lazy-pages daemon of a task that is gone.
    pub(crate) fn stop_fill(&self) {
        let fill = self.lock().fill.take();
        if let Some(f) = fill {
            if !*f.done.borrow() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(f.daemon_pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Watches init's current incarnation (`pid`, learned of at `since`) until it ends.
    pub(crate) fn watch_init(self: &Arc<Self>, pid: i32, since: Instant) {
        let c = self.clone();
        tokio::spawn(async move {
            let exit = c.runtime.wait(pid, since).await;
            c.on_init_exit(exit).await;
        });
    }

    /// Decides what an exit of an init incarnation means. It is the task's real end
    /// only when it is the current incarnation and no dump is taking it down; the exit
    /// of a task being dumped goes to the sleep, which alone can judge it.
    async fn on_init_exit(self: &Arc<Self>, exit: Exit) {
        {
            let mut r = self.lock();
            let state = r.status.state;
            if state == State::Sleeping && r.dumping == Some(exit.pid) {
                r.dump_exit = Some(exit);
                drop(r);
                self.dump_exited.notify_waiters();
                return;
            }
            if exit.pid != self.init.pid() || matches!(state, State::Asleep | State::Exited) {
                // An earlier incarnation (the one a sleep dumped), or already handled.
                debug!(id = %self.id, pid = exit.pid, %state, "exit of a past incarnation");
                return;
            }
        }
        // A task that dies while its pages are still coming may have died of a page that
        // never came: the page fill's verdict decides the status it is reported with.
        self.fill_verdict(Duration::from_secs(2)).await;
        if self.claim_exit(None) {
            let status = self
                .lock()
                .forced_exit_status
                .take()
                .unwrap_or(exit.status as u32);
            self.complete_exit(exit.pid, status, exit.at).await;
        }
    }

    /// Waits (at most `limit`) for a running page fill to end, so its outcome is known.
    async fn fill_verdict(&self, limit: Duration) {
        let rx = self.lock().fill.as_ref().map(|f| f.done.clone());
        if let Some(mut rx) = rx {
            let _ = tokio::time::timeout(limit, rx.wait_for(|d| *d)).await;
        }
    }

    /// Moves to Exited (only from `only_from`, if given) and lets go of everything a
    /// sleep held. False when the exit was claimed already or the state did not match.
    pub(crate) fn claim_exit(&self, only_from: Option<State>) -> bool {
        let claimed = self.transition_if(
            Transition::Exit,
            |r| only_from.is_none_or(|s| s == r.status.state),
            |r| {
                r.status.held_ports.clear();
                r.status.not_sleeping = None;
                (r.held.take(), r.dumping.take(), r.doze.take())
            },
        );
        let Ok(Some((held, dumping, doze))) = claimed else {
            return false;
        };
        // A task that ended while frozen (killed from outside): the rest of its cgroup
        // must run to end too.
        if let Some(Err(e)) = doze.map(crate::hold::DozeHold::release) {
            warn!(id = %self.id, "thaw at exit: {e}");
        }
        let from_sleep = held.is_some() || dumping.is_some();
        drop(held);
        if from_sleep {
            // Nothing will ever be restored from these.
            self.discard_images();
        }
        self.stop_fill();
        true
    }

    /// The rest of an exit claimed by [`Container::claim_exit`]: the OOM check, the
    /// output drained, the exit recorded and reported.
    pub(crate) async fn complete_exit(&self, pid: i32, status: u32, at: SystemTime) {
        let memcg = self.memcg.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(cg) = memcg {
            if cg.oom_kills() > self.oom_baseline.load(Ordering::Relaxed) {
                info!(id = %self.id, "OOM kill in container");
                self.emit(Event::Oom {
                    id: self.id.clone(),
                });
            }
        }
        self.finish_process(&self.init, pid, status, at).await;
    }

    /// Drains a process's output, records its exit and reports it, in that order: a
    /// client that sees the exit has all the output.
    pub(crate) async fn finish_process(&self, p: &Process, pid: i32, status: u32, at: SystemTime) {
        if let Some(stdio) = p.stdio() {
            stdio.finish(IO_DRAIN).await;
        }
        if p.exec_id.is_empty() {
            // A kill (runc's, a program) may outlive the task it killed. Reported first,
            // the exit makes containerd's CRI delete the task and close its connection to
            // the shim while the kill is unanswered: StopContainer then fails with
            // "ttrpc: closed". Bounded: a kill stuck in the runtime delays no exit long.
            self.kills_answered(KILL_ANSWER_WAIT).await;
        }
        let info = ExitInfo { status, at };
        let _order = self.event_order.lock().await;
        p.set_exited(info);
        info!(id = %self.id, exec = %p.exec_id, pid, status, "process exited");
        self.emit(Event::Exited {
            id: self.id.clone(),
            exec_id: p.exec_id.clone(),
            pid,
            status,
            at,
        });
    }

    /// Waits (at most `limit`) until no kill of init is under way.
    async fn kills_answered(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let answered = self.kill_answered.notified();
            if self.kills_in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, answered).await.is_err() {
                return;
            }
        }
    }

    /// Counts a kill of init as under way until the guard drops.
    pub(crate) fn kill_under_way(&self) -> KillUnderWay<'_> {
        self.kills_in_flight.fetch_add(1, Ordering::SeqCst);
        KillUnderWay(self)
    }

    /// Remembers a background task of this container, stopped when it is deleted.
    pub(crate) fn own_task(&self, t: JoinHandle<()>) {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(t);
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Relaxed)
    }

    pub(crate) fn write_initial_status(&self) {
        let r = self.lock();
        self.persist(&r.status);
    }
}
