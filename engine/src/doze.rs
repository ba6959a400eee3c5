//! Doze: the cheap tier before sleep. An idle task is frozen where it is (its cgroup's
//! freezer) and its memory pushed out to swap (zram compresses it); its processes, their
//! sockets and their kernel state stay. The shim watches duplicates of its listening
//! sockets and open connections: a new connection completes its handshake in the kernel
//! and makes a listener readable, data makes a connection readable, and either thaws
//! the task at once: no restore, the pages it touches come back on demand.
//!
//! Transitions: Awake → Dozing (claimed and frozen in one step) → Awake (thawed, in one
//! step). Anything else that needs the task (an exec, a signal, `docker pause`, a
//! checkpoint, the sleep after `idle-timeout`) thaws it first and goes on from Awake.
//! A pod's containers doze one by one (nothing is restored, so there is no unit to keep);
//! their kubelet probes are answered by the shim meanwhile, as while the pod sleeps.
//! When to doze is the monitor's call; this is the mechanism.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use lightwhale_status::{DozeRecord, THAW_BUCKETS};

use crate::container::{ms, Container};
use crate::events::{Event, Trigger};
use crate::freezer::{FreezeError, Freezer};
use crate::hold::{DozeHold, Held};
use crate::pageout::{self, keep_working_set, WorkingSet};
use crate::sleep::Refusal;
use crate::sockets;
use crate::state::{State, Transition};

/// How long a freeze may take before the doze is given up (the task thawed).
const FREEZE_LIMIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DozeError {
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error("freeze: {0}")]
    Freeze(#[from] FreezeError),
    #[error("list the task's processes: {0}")]
    Ps(String),
    #[error("watch the task's sockets: {0}")]
    Sockets(String),
}

impl Container {
    /// Dozes now: freezes the task in place, watches its sockets, pages its memory out.
    /// Refused without harm when it cannot (the monitor calls it after `doze-after`).
    pub async fn doze(self: &Arc<Self>) -> Result<(), DozeError> {
        let _gate = self.sleep_gate.lock().await;
        if let Some(r) = self.static_refusal() {
            return Err(r.into());
        }
        match self.settled().await {
            State::Dozing => return Ok(()),
            State::Awake => {}
            other => return Err(Refusal::NotAwake(other).into()),
        }
        if self.running_execs() > 0 {
            return Err(Refusal::ExecRunning.into());
        }
        // Something must listen for a connection to thaw it.
        self.check_listeners()?;
        // A pod's probes are answered while it dozes, as while it sleeps, with what the
        // app answers now: they must not thaw it every period.
        if let (Some(_), Some(netns)) = (self.pod.group(), &self.netns_path) {
            crate::probes::refresh(&self.probes, netns).await;
        }
        let pid = self.init.pid();
        let freezer = Freezer::of_pid(pid)?;
        // The listeners first, while the task runs: a pod's node connections (its probes)
        // go to the shim from here on, never into the queue of a task about to freeze.
        let pids = self
            .runtime
            .ps(&self.id)
            .await
            .map_err(|e| DozeError::Ps(e.to_string()))?;
        let mut held = self.hold_listeners(&pids, pid)?;
        let cancel = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        // Claimed and frozen in one step, under the record's lock: a thaw (which takes
        // the same lock) either comes before and finds it Awake, or after and thaws it.
        let claimed = self.transition_if(
            Transition::Doze,
            |r| !r.stopping,
            |r| {
                let frozen = freezer.start_freeze();
                r.doze = Some(DozeHold {
                    freezer: freezer.clone(),
                    held: None,
                    cancel: cancel.clone(),
                });
                // The record of this doze, filled in as it goes (a thaw may come first).
                r.status.doze = Some(DozeRecord::default());
                frozen
            },
        );
        match claimed {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => {
                self.undo_doze();
                return Err(e.into());
            }
            Ok(None) => return Err(Refusal::Stopping.into()),
            Err(e) => return Err(Refusal::NotAwake(e.from).into()),
        }
        let f = freezer.clone();
        let frozen = tokio::task::spawn_blocking(move || f.wait_frozen(FREEZE_LIMIT))
            .await
            .unwrap_or(Err(FreezeError::Timeout(FREEZE_LIMIT)));
        if let Err(e) = frozen {
            self.undo_doze();
            return Err(e.into());
        }
        let pids = match self.runtime.ps(&self.id).await {
            Ok(p) => p,
            Err(e) => {
                self.undo_doze();
                return Err(DozeError::Ps(e.to_string()));
            }
        };
        match self.watch_connections(&mut held, &pids) {
            Ok(()) => {
                let mut r = self.lock();
                let dozing = r.status.state == State::Dozing;
                match r.doze.as_mut() {
                    Some(d) if dozing => d.held = Some(held),
                    // Thawed meanwhile (an exec, a signal): nothing to watch.
                    _ => drop(held),
                }
            }
            Err(e) => {
                self.undo_doze();
                return Err(e);
            }
        }
        let before = pageout::footprint(&pids);
        let keep = {
            let r = self.lock();
            keep_working_set(&r.working_set, before.rss)
        };
        let (reclaimed, note) = if pageout::swap_free_bytes() == 0 {
            (
                false,
                Some("no free swap on the node: frozen only, its memory stays resident".into()),
            )
        } else if keep {
            (
                true,
                Some(format!(
                    "kept resident what it touched since its last doze ({} KiB)",
                    before
                        .rss
                        .saturating_sub(self.lock().working_set.resident_after_full)
                        >> 10
                )),
            )
        } else {
            let (p, c) = (pids.clone(), cancel.clone());
            match tokio::task::spawn_blocking(move || pageout::page_out(&p, &c)).await {
                Ok(Ok(_)) => (true, None),
                Ok(Err(e)) => {
                    warn!(id = %self.id, "doze: {e}");
                    (false, Some(e.to_string()))
                }
                Err(e) => (false, Some(format!("page-out did not finish: {e}"))),
            }
        };
        let after = pageout::footprint(&pids);
        {
            let mut r = self.lock();
            let ws = &mut r.working_set;
            if keep {
                ws.dozes_since_full += 1;
            } else if reclaimed {
                *ws = WorkingSet {
                    dozes_since_full: 0,
                    resident_after_full: after.rss,
                };
            }
        }
        let compressed = pageout::zram_ratio()
            .map(|(orig, used)| (after.swap as u128 * used as u128 / orig as u128) as u64);
        let took = t0.elapsed();
        info!(
            id = %self.id,
            rss_before = before.rss,
            rss_after = after.rss,
            swap = after.swap,
            "dozing ({:.1} ms)",
            ms(took)
        );
        self.update_status(|s| {
            s.dozes += 1;
            let d = s.doze.get_or_insert_with(DozeRecord::default);
            d.rss_before_bytes = before.rss;
            d.rss_after_bytes = after.rss;
            d.swap_bytes = after.swap;
            d.swap_compressed_bytes = compressed;
            d.reclaimed = reclaimed;
            d.note = note;
            d.took_ms = ms(took);
        });
        self.emit(Event::Dozing {
            id: self.id.clone(),
            took_ms: took.as_millis() as u64,
            rss_before: before.rss,
            rss_after: after.rss,
        });
        Ok(())
    }

    /// Duplicates of the task's listeners, held while it dozes; for a pod, with the
    /// shim's probe listener in their reuseport group (see `probes`).
    fn hold_listeners(self: &Arc<Self>, pids: &[i32], pid: i32) -> Result<Held, DozeError> {
        let listeners = sockets::listeners(pid, &self.config.ports);
        let inodes: Vec<u64> = listeners.iter().map(|l| l.inode).collect();
        let holders = sockets::socket_holders(pids, &inodes);
        let probed = self.pod.group().is_some();
        let mut held = Vec::new();
        for l in &listeners {
            let Some(&(hpid, fd)) = holders.get(&l.inode) else {
                continue;
            };
            let dup = sockets::dup_from(hpid, fd).map_err(|e| DozeError::Sockets(e.to_string()))?;
            if probed {
                sockets::set_reuseport(&dup).map_err(|e| DozeError::Sockets(e.to_string()))?;
            }
            held.push((l.port, dup));
        }
        if held.is_empty() {
            return Err(Refusal::NoHolder.into());
        }
        let mut h = Held::new(held, Vec::new());
        self.answer_probes(&mut h);
        Ok(h)
    }

    /// Once frozen: duplicates of its open connections join the held listeners, and all
    /// of them are watched; the first to turn readable thaws the task. A connection
    /// with a request the task has not answered yet (it came just before the freeze)
    /// refuses the doze: nobody would thaw the task for it.
    fn watch_connections(self: &Arc<Self>, held: &mut Held, pids: &[i32]) -> Result<(), DozeError> {
        // Through the task's fds: the namespace's socket table costs ~7 ms to read, all
        // of it while the task is frozen and its watch not yet armed.
        let conns = sockets::task_sockets(pids, &self.config.ports)
            .map_err(|e| DozeError::Sockets(e.to_string()))?
            .conns;
        for conn in &conns {
            if sockets::awaiting_reply(conn).unwrap_or(false) {
                return Err(Refusal::InFlight.into());
            }
        }
        held.add_conns(conns);
        let weak = Arc::downgrade(self);
        held.watch(move |seen| {
            if let Some(c) = weak.upgrade() {
                c.thaw_at(Trigger::Connection, seen);
            }
        });
        Ok(())
    }

    /// Takes back a doze that did not get under way (the freeze or the watch failed):
    /// thawed, Awake, and not counted as a doze or a thaw.
    fn undo_doze(&self) {
        let undone = self.transition_with(Transition::Thaw, |r| {
            r.status.doze = None;
            r.doze.take().map(DozeHold::release)
        });
        if let Ok(Some(Err(e))) = undone {
            warn!(id = %self.id, "thaw after a failed doze: {e}");
            self.record_error(&e);
        }
    }

    /// Thaws a dozing task (no-op otherwise): the freezer first, then the state and its
    /// file, so the task runs again before any bookkeeping. `seen` is when the trigger
    /// came. True when this call thawed it.
    pub(crate) fn thaw_at(&self, trigger: Trigger, seen: Instant) -> bool {
        let thawed = self.transition_with(Transition::Thaw, |r| {
            // The file says awake, with the thaw counted, before the task can run: once
            // it has answered, nobody reading the file may still see it dozing.
            r.status.thaws += 1;
            lightwhale_status::Counters::bump(
                &mut r.status.counters.thaws_by_trigger,
                trigger.as_str(),
            );
            if let Some(d) = r.status.doze.as_mut() {
                d.thaw_trigger = Some(trigger.as_str().to_string());
            }
            self.persist(&r.status);
            self.announce(r.status.state);
            let hold = r.doze.take();
            let result = hold.map(DozeHold::release);
            (result, ms(seen.elapsed()))
        });
        let Ok((result, took_ms)) = thawed else {
            return false;
        };
        if let Some(Err(e)) = &result {
            warn!(id = %self.id, "thaw: {e}");
            self.record_error(e);
        }
        self.touch_activity();
        info!(id = %self.id, %trigger, "thawed ({took_ms:.2} ms)");
        self.update_status(|s| {
            s.counters
                .thaw_seconds
                .observe_in(took_ms / 1000.0, &THAW_BUCKETS);
            if let Some(d) = s.doze.as_mut() {
                d.thaw_ms = Some(took_ms);
            }
        });
        self.emit(Event::Thawed {
            id: self.id.clone(),
            trigger,
            took_us: (took_ms * 1000.0) as u64,
        });
        true
    }
}
