//! Wake: a sleeping task is restored from its checkpoint and handed its sockets back.
//!
//! Transitions: Asleep → Waking (claimed here) → Awake, or Exited when the restore fails
//! twice (the held sockets close, so queued clients are reset rather than left hanging).
//! Eager or lazy is the policy's call (`SleepConfig::lazy_for`); this is the mechanism:
//! the lazy-pages daemon, `runc restore`, the background page fill.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lightwhale_status::WakePhases;
use serde_json::Value;
use tracing::{info, warn};

use crate::cgroup::MemoryCgroup;
use crate::container::{ms, tail, Container, Fill};
use crate::events::{Event, Trigger};
use crate::lazy::LazyPages;
use crate::runc::{RestoreOpts, Runc};
use crate::state::{State, Transition};

#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    #[error("the container has exited")]
    Exited,
    #[error("restore failed: cannot write the restore bundle: {0}")]
    Bundle(#[source] std::io::Error),
    #[error("restore failed: cannot hand the task its stdio: {0}")]
    Stdio(#[source] crate::Error),
    #[error("restore failed: {source}\n--- CRIU restore.log (tail) ---\n{criu_log}")]
    Restore {
        #[source]
        source: crate::Error,
        criu_log: String,
    },
    #[error("restore failed: the restored task left no pid in {0}")]
    NoPid(PathBuf),
    #[error("the task exited right after its restore")]
    ExitedAfterRestore,
    /// The restore would not leave the node's memory reserve: not started, the container
    /// stays asleep (a restore the OOM killer ends would lose it).
    #[error(
        "not enough memory to wake: the restore needs {needed} bytes and {reserve} more must \
         remain, {available} are available (waited {waited:?}); it stays asleep"
    )]
    NoMemory {
        needed: u64,
        reserve: u64,
        available: u64,
        waited: Duration,
    },
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
pub(crate) fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The status a task is ended with when its wake fails (documented in the README).
pub const WAKE_FAILED_STATUS: u32 = 255;

impl Container {
    /// Wakes the task if it sleeps (waiting for a sleep under way to end first); a no-op
    /// when it is awake.
    pub async fn wake(self: &Arc<Self>, trigger: Trigger) -> Result<(), WakeError> {
        self.wake_since(trigger, Instant::now()).await
    }

    /// Wakes the task; `since` is when the trigger was seen (the phases count from there).
    pub async fn wake_since(
        self: &Arc<Self>,
        trigger: Trigger,
        since: Instant,
    ) -> Result<(), WakeError> {
        match self.state() {
            State::Asleep => self.wait_for_memory().await?,
            // Still frozen and not yet killed: called off, it only needs a thaw.
            State::Sleeping if self.ask_sleep_off(trigger, since) => {
                info!(id = %self.id, "a {} during the dump: the sleep is called off", trigger.as_str());
            }
            _ => {}
        }
        loop {
            match self.settled().await {
                State::Asleep => {}
                // A doze ends with a thaw, not a restore.
                State::Dozing => {
                    self.thaw_at(trigger, since);
                    continue;
                }
                State::Exited => return Err(WakeError::Exited),
                _ => return Ok(()),
            }
            // Another waker may have claimed it between the two looks: look again.
            if self.transition(Transition::BeginWake).is_ok() {
                break;
            }
        }
        let pages = self.lock().status.pages_bytes.unwrap_or(0);
        let mut phases = WakePhases {
            trigger: trigger.as_str().to_string(),
            lazy: self.config.lazy_for(pages),
            queued_ms: ms(since.elapsed()),
            ..Default::default()
        };
        // A node-wide limit on restores at once, if configured: the slot is held until
        // this restore (and its retry) is done.
        let _slot = crate::slots::acquire(
            &self.dirs.state.join("restore-slots"),
            self.config.restore_slots,
        )
        .await;
        phases.queued_ms = ms(since.elapsed());
        let mut last = None;
        for attempt in 1..=2 {
            match self.restore_once(&mut phases).await {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    warn!(id = %self.id, attempt, "{e}");
                    let _ = self.runtime.delete(&self.id, true).await;
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
            // sockets close (queued clients are reset), and the error is kept.
            self.update_status(|s| {
                lightwhale_status::Counters::bump(&mut s.counters.failures, "restore")
            });
            self.record_error(&err);
            self.emit(Event::WakeFailed {
                id: self.id.clone(),
                reason: err.to_string(),
            });
            if self.claim_exit(Some(State::Waking)) {
                self.complete_exit(self.init.pid(), WAKE_FAILED_STATUS, SystemTime::now())
                    .await;
            }
            return Err(err);
        }
        let took = since.elapsed();
        phases.total_ms = ms(took);
        let done = self.transition_with(Transition::WakeDone, |r| {
            phases.fill_ms = r.early_fill_ms.take();
            // Restored whole: the next doze starts from a full page-out again.
            r.working_set = Default::default();
            let s = &mut r.status;
            s.wakes += 1;
            s.last_wake_ms = Some(took.as_millis() as u64);
            s.held_ports.clear();
            if let Some(f) = &phases.fallback {
                s.last_error = Some(format!("lazy restore failed, restored eagerly: {f}"));
            }
            s.last_wake_phases = Some(phases.clone());
            s.counters.wake_seconds.observe(took.as_secs_f64());
            lightwhale_status::Counters::bump(&mut s.counters.wakes_by_trigger, trigger.as_str());
            r.held.take()
        });
        let Ok(held) = done else {
            // The restored task died at once and its exit was reported.
            return Err(WakeError::ExitedAfterRestore);
        };
        // Persisted first, so whoever the task answers finds it awake. The restored
        // listeners are in the reuseport group now: closing ours hands every queued
        // connection over to them.
        drop(held);
        self.touch_activity();
        info!(
            id = %self.id,
            ms = took.as_millis() as u64,
            %trigger,
            lazy = phases.lazy,
            queued_ms = phases.queued_ms,
            lazy_daemon_ms = ?phases.lazy_daemon_ms,
            runc_ms = phases.runc_restore_ms,
            criu_ms = ?phases.criu_restore_ms,
            "awake"
        );
        self.emit(Event::Awake {
            id: self.id.clone(),
            trigger,
            took_ms: took.as_millis() as u64,
            lazy: phases.lazy,
        });
        // A pod wakes whole: its other containers may be what this one needs next.
        if let Some(g) = self.pod.group() {
            wake_others(g, self);
        }
        self.spawn_post_wake();
        Ok(())
    }

    /// Runs the post-wake hook, if any, in the background: after a wake, and after a
    /// clone's start from a template (where it re-seeds what the clone inherited). Off
    /// the request's path: the client's first byte never waits for it.
    pub(crate) fn spawn_post_wake(self: &Arc<Self>) {
        if let Some(cmd) = self.config.post_wake_exec.clone() {
            let c = self.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::hooks::run(&c, "post-wake", &cmd).await {
                    warn!(id = %c.id, "post-wake-exec failed: {e}");
                    c.record_error(&PostWakeFailed(e));
                }
            });
        }
    }

    /// Waits (at most the configured time) until the restore fits in the host's available
    /// memory with the reserve left over; the container stays asleep meanwhile.
    async fn wait_for_memory(&self) -> Result<(), WakeError> {
        let needed = self.lock().status.pages_bytes.unwrap_or(0);
        let reserve = self.config.wake_memory_reserve;
        let t = Instant::now();
        loop {
            // A host whose meminfo cannot be read is not held back by it.
            let available = mem_available().unwrap_or(u64::MAX);
            if available >= needed.saturating_add(reserve) {
                return Ok(());
            }
            if t.elapsed() >= self.config.wake_memory_wait || self.state() != State::Asleep {
                let err = WakeError::NoMemory {
                    needed,
                    reserve,
                    available,
                    waited: t.elapsed(),
                };
                if self.state() == State::Asleep {
                    warn!(id = %self.id, "{err}");
                    self.update_status(|s| {
                        lightwhale_status::Counters::bump(&mut s.counters.failures, "no_memory")
                    });
                    self.record_error(&err);
                    self.emit(Event::WakeFailed {
                        id: self.id.clone(),
                        reason: err.to_string(),
                    });
                }
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn restore_once(self: &Arc<Self>, phases: &mut WakePhases) -> Result<(), WakeError> {
        let prepared = self.image_root.join("bundle");
        let bundle = if prepared.join("config.json").is_file() {
            prepared
        } else {
            write_restore_bundle(&self.bundle, &self.image_root).map_err(WakeError::Bundle)?
        };
        let io = self
            .init
            .stdio()
            .map(|s| s.process_io())
            .transpose()
            .map_err(WakeError::Stdio)?
            .unwrap_or_default();
        let pid_file = self.image_root.join("restored.pid");
        let _ = std::fs::remove_file(&pid_file);
        let mut daemon = None;
        if phases.lazy {
            let t = Instant::now();
            let started = match Runc::find_binary("criu") {
                Some(criu) => {
                    LazyPages::start(&criu, &self.images(), &self.work(), Duration::from_secs(2))
                        .await
                        .map_err(|e| e.to_string())
                }
                None => Err("criu not found in PATH".to_string()),
            };
            match started {
                Ok(d) => {
                    phases.lazy_daemon_ms = Some(ms(t.elapsed()));
                    daemon = Some(d);
                }
                Err(e) => {
                    warn!(id = %self.id, "lazy restore unavailable, restoring eagerly: {e}");
                    phases.lazy = false;
                    phases.fallback = Some(e);
                }
            }
        }
        if let Some(h) = self.lock().held.as_mut() {
            h.stop_responder();
            h.release_conns();
        }
        let since = Instant::now();
        let restored = self
            .runtime
            .restore(
                &self.id,
                &bundle,
                &RestoreOpts {
                    image_path: self.images(),
                    work_path: Some(self.work()),
                    pid_file: pid_file.clone(),
                    log_file: self.image_root.join("restore.json"),
                    detach: true,
                    lazy_pages: daemon.is_some(),
                    ..Default::default()
                },
                io,
            )
            .await;
        phases.runc_restore_ms = ms(since.elapsed());
        phases.criu_restore_ms = criu_restore_ms(&self.work().join("restore.log"));
        if let Err(source) = restored {
            if let Some(mut d) = daemon {
                d.kill();
                d.wait().await;
            }
            return Err(WakeError::Restore {
                source,
                criu_log: tail(&self.work().join("restore.log"), 20),
            });
        }
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| WakeError::NoPid(pid_file.clone()))?;
        self.init.set_pid(pid);
        *self.memcg.lock().unwrap_or_else(|p| p.into_inner()) = MemoryCgroup::of_pid(pid);
        self.watch_init(pid, since);
        if let Some(d) = daemon {
            self.watch_fill(d, pid, true);
        }
        let pending = self.lock().pending_update.take();
        if let Some(resources) = pending {
            if let Err(e) = self.runtime.update(&self.id, &resources).await {
                warn!(id = %self.id, "update deferred to wake failed: {e}");
            }
            let _ = std::fs::remove_file(&resources);
        }
        Ok(())
    }

    /// Follows the lazy-pages daemon of a restored task until every page is back. A daemon
    /// that dies first leaves holes the kernel would fill with zeros: the task is ended
    /// (with [`WAKE_FAILED_STATUS`]) rather than left to run on memory not its own.
    /// `for_wake`: the fill's time goes to the wake's phases (a clone's start has none).
    pub(crate) fn watch_fill(self: &Arc<Self>, mut daemon: LazyPages, pid: i32, for_wake: bool) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let wake_no = {
            let mut r = self.lock();
            r.fill = Some(Fill {
                daemon_pid: daemon.pid(),
                done: rx,
            });
            r.status.wakes + 1
        };
        let c = self.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let exit = daemon.wait().await;
            let fill_ms = ms(t.elapsed());
            let task_alive = c.init.pid() == pid && c.state() != State::Exited;
            if exit.status == 0 {
                info!(id = %c.id, fill_ms, "lazy restore: every page is back");
                if !for_wake {
                    c.update_status(|s| {
                        if let Some(t) = s.template.as_mut() {
                            t.fill_ms = Some(fill_ms);
                        }
                    });
                    let _ = tx.send(true);
                    return;
                }
                let mut r = c.lock();
                if r.status.wakes >= wake_no {
                    if let Some(p) = r.status.last_wake_phases.as_mut() {
                        p.fill_ms = Some(fill_ms);
                    }
                } else {
                    // The wake has not recorded its phases yet: it takes this figure.
                    r.early_fill_ms = Some(fill_ms);
                }
                drop(r);
                c.update_status(|_| {});
            } else if task_alive {
                let err = FillFailed {
                    status: exit.status,
                    log_tail: daemon.log_tail(10),
                };
                warn!(id = %c.id, "{err}");
                c.update_status(|s| {
                    lightwhale_status::Counters::bump(&mut s.counters.failures, "lazy_fill")
                });
                c.record_error(&err);
                c.lock().forced_exit_status = Some(WAKE_FAILED_STATUS);
                if let Err(e) = c.runtime.kill(&c.id, libc::SIGKILL, true).await {
                    warn!(id = %c.id, "kill after a failed page fill: {e}");
                }
            }
            let _ = tx.send(true);
        });
    }

    /// Waits (at most `limit`) for the last lazy wake's pages to be all back; the next
    /// dump must not read memory the daemon still has to fill, nor replace the images
    /// it serves them from.
    pub(crate) async fn fill_finished(&self, limit: Duration) -> bool {
        let rx = self.lock().fill.as_ref().map(|f| f.done.clone());
        let Some(mut rx) = rx else { return true };
        // A dropped sender means the watcher is gone: nothing left to wait for.
        let finished = tokio::time::timeout(limit, rx.wait_for(|d| *d))
            .await
            .is_ok();
        finished
    }
}

/// Wakes, in the background, the members of `pod` other than `woke` that sleep.
///
/// A plain function rather than code inside the wake: a wake that spawned wakes would be
/// a future containing itself, whose `Send` the compiler cannot settle.
fn wake_others(pod: &crate::container::Pod, woke: &Container) {
    for other in pod.others(woke) {
        if other.is_asleep() && !other.is_deleted() {
            tokio::spawn(async move {
                if let Err(e) = other.wake(Trigger::Pod).await {
                    warn!(id = %other.id, "woken with its pod: {e}");
                }
            });
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("post-wake-exec failed: {0}")]
struct PostWakeFailed(#[source] crate::hooks::HookError);

#[derive(Debug, thiserror::Error)]
#[error(
    "criu lazy-pages exited with status {status} before every page was back; the task was \
     ended rather than run on missing memory\n--- lazy-pages.log (tail) ---\n{log_tail}"
)]
struct FillFailed {
    status: i32,
    log_tail: String,
}

/// The bundle runc restores from: the client's spec without the hooks that already ran
/// (Docker's network hook must not configure the pinned namespace twice), with an
/// absolute root path. Written at sleep time, off the wake path.
pub(crate) fn write_restore_bundle(bundle: &Path, image_root: &Path) -> std::io::Result<PathBuf> {
    let dir = image_root.join("bundle");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)
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
        let abs = if p.is_absolute() { p } else { bundle.join(p) };
        *root = Value::String(abs.display().to_string());
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec(&spec).map_err(std::io::Error::other)?,
    )?;
    Ok(dir)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_bundle_drops_hooks_and_anchors_the_root() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            d.path().join("config.json"),
            br#"{"root":{"path":"rootfs"},"hooks":{"prestart":[{"path":"/x"}],"poststop":[{"path":"/y"}]}}"#,
        )
        .expect("write");
        let dir = write_restore_bundle(d.path(), &d.path().join("img")).expect("bundle");
        let v: Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("read"))
                .expect("json");
        assert!(v.pointer("/hooks/prestart").is_none());
        assert!(v.pointer("/hooks/poststop").is_some());
        assert_eq!(
            v.pointer("/root/path").and_then(Value::as_str),
            Some(d.path().join("rootfs").display().to_string().as_str())
        );
    }

    #[test]
    fn criu_time_is_read_from_its_log() {
        let d = tempfile::tempdir().expect("tempdir");
        let log = d.path().join("restore.log");
        std::fs::write(
            &log,
            "(00.001) a\n(00.021337) Restore finished successfully. Tasks resumed.\n",
        )
        .expect("write");
        assert_eq!(criu_restore_ms(&log), Some(21.3));
        assert_eq!(criu_restore_ms(&d.path().join("absent")), None);
    }
}
