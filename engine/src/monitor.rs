//! When to doze and when to sleep (policy): the task dozes after `doze-after` (when set)
//! and is put to sleep after `idle-timeout`, both counted without inbound TCP traffic and
//! with its CPU use under the threshold; a dozing task counts on being idle (a connection
//! thaws it, and that is activity). A sleep that fails or is refused backs off (5 s
//! doubling, up to 5 minutes) before the next try; a refused doze waits as long as
//! `doze-after` again.
//!
//! Under memory pressure (available memory below the node's `memory-floor`) a container
//! idle for [`PRESSURE_MIN_IDLE`] sleeps before its idle timeout if no other container on
//! the node has been idle longer (their status files say since when): the longest idle
//! go first, one a look, until the floor is cleared; busy ones are never touched.
//!
//! Every look also records why the container is not asleep (`NotSleeping`), so that
//! `lightwhale ps` and `inspect` can answer the question every scale-to-zero system is
//! asked: why didn't it sleep?

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lightwhale_status::NotSleeping;
use tracing::{info, warn};

use crate::activity::{IdleTracker, Probe};
use crate::config::PRESSURE_MIN_IDLE;
use crate::container::{now_ms, Container};
use crate::podnet::{self, PodTraffic};
use crate::state::State;

const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

fn unix_ms_at(t: Instant) -> u64 {
    let now = Instant::now();
    let wall = if t <= now {
        SystemTime::now().checked_sub(now - t)
    } else {
        SystemTime::now().checked_add(t - now)
    };
    wall.and_then(|w| w.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or_else(now_ms)
}

/// Starts the idle monitor of `c`; it ends with the container.
pub fn spawn(c: &Arc<Container>) {
    let weak = Arc::downgrade(c);
    let timeout = c.config.idle_timeout;
    let cpu_permille = c.config.cpu_permille;
    let task = tokio::spawn(async move {
        let tick = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut tracker = IdleTracker::new(timeout, cpu_permille, Instant::now());
        let mut probe: Option<(i32, Probe)> = None;
        let mut backoff = FIRST_BACKOFF;
        let mut not_before = Instant::now();
        // The reason the last failed or refused sleep gave, shown until the next try.
        let mut held_back: Option<NotSleeping> = None;
        // A pod's traffic without the kubelet's probes (see `podnet`); opened once the
        // pod's network is up, i.e. at the first look.
        let mut traffic: Option<PodTraffic> = None;
        let mut traffic_tried = false;
        let mut pod_segments: u64 = 0;
        let mut doze_not_before = Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            let Some(c) = weak.upgrade() else { return };
            if c.is_deleted() {
                return;
            }
            let now = Instant::now();
            if c.take_activity() {
                tracker.touch(now);
            }
            if !traffic_tried {
                traffic_tried = true;
                traffic = pod_traffic(&c);
            }
            match c.state() {
                State::Exited => return,
                State::Awake => {}
                State::Dozing => c.note_probes_answered(),
                State::Paused => {
                    tracker.touch(now);
                    c.set_not_sleeping(Some(NotSleeping::Paused));
                    continue;
                }
                _ => {
                    // Asleep, or a transition under way: nothing to decide.
                    tracker.touch(now);
                    c.note_probes_answered();
                    continue;
                }
            }
            if let Some(r) = c.static_refusal() {
                c.set_not_sleeping(r.not_sleeping());
                continue;
            }
            if c.lock().stopping {
                c.set_not_sleeping(Some(NotSleeping::Stopping));
                continue;
            }
            if c.running_execs() > 0 {
                tracker.touch(now);
                c.set_not_sleeping(Some(NotSleeping::ExecRunning));
                continue;
            }
            let pid = c.init.pid();
            if probe.as_ref().map(|(p, _)| *p) != Some(pid) {
                probe = Some((pid, Probe::of_pid(pid)));
                tracker.touch(now);
            }
            let Some(mut sample) = probe.as_ref().and_then(|(_, p)| p.sample()) else {
                continue;
            };
            if let Some(t) = &traffic {
                // A pod: its data segments but the probes' count, and the probes are
                // remembered (to be answered while it sleeps).
                let seen = t.take();
                pod_segments += seen.active;
                for p in seen.probes {
                    c.learn_probe(p);
                }
                sample.in_segs = pod_segments;
                sample.passive_opens = 0;
            }
            let mut idle = tracker.observe(sample, now);
            let mut pressed = false;
            let quiet = tracker.busy_cpu_permille().is_none();
            if !idle && quiet && c.pod.group().is_none() {
                let quiet_since = unix_ms_at(now - tracker.idle_for(now));
                if tracker.idle_for(now) >= PRESSURE_MIN_IDLE && pressed_to_sleep(&c, quiet_since) {
                    info!(id = %c.id, "memory under the node's floor: idle the longest, it sleeps now");
                    pressed = true;
                    idle = true;
                }
            }
            c.set_idle_ready(idle);
            if let Some(after) = c.config.doze_after {
                let quiet = tracker.busy_cpu_permille().is_none() && tracker.idle_for(now) >= after;
                if !idle && quiet && now >= doze_not_before && c.state() == State::Awake {
                    if let Err(e) = c.doze().await {
                        info!(id = %c.id, "idle, but no doze: {e}");
                        doze_not_before = Instant::now() + after;
                    }
                }
            }
            if !idle {
                c.set_not_sleeping(Some(match tracker.busy_cpu_permille() {
                    Some(permille) => NotSleeping::CpuBusy {
                        permille,
                        threshold_permille: cpu_permille,
                    },
                    None => NotSleeping::Active {
                        quiet_since_unix_ms: unix_ms_at(now - tracker.idle_for(now)),
                        idle_timeout_ms: timeout.as_millis() as u64,
                    },
                }));
                continue;
            }
            if now < not_before {
                c.set_not_sleeping(held_back.clone());
                continue;
            }
            // A pod sleeps as one: only when every other member that may sleep is idle
            // too, and then all of them together.
            let others = c.pod.group().map(|g| g.others(&c)).unwrap_or_default();
            let sleepers: Vec<_> = others
                .into_iter()
                .filter(|o| !o.is_deleted() && o.static_refusal().is_none())
                .collect();
            if let Some(busy) = sleepers
                .iter()
                .find(|o| o.state() == State::Awake && !o.is_idle_ready())
            {
                c.set_not_sleeping(Some(NotSleeping::PodBusy {
                    container: busy.display_name(),
                }));
                continue;
            }
            for o in sleepers {
                if o.state() == State::Awake {
                    tokio::spawn(async move {
                        if let Err(e) = o.sleep().await {
                            info!(id = %o.id, "with its pod: {e}");
                        }
                    });
                }
            }
            match c.sleep().await {
                Ok(()) => {
                    if pressed {
                        c.update_status(|s| s.counters.pressure_sleeps += 1);
                    }
                    backoff = FIRST_BACKOFF;
                    held_back = None;
                }
                Err(e) => {
                    not_before = Instant::now() + backoff;
                    held_back = match e.refusal() {
                        Some(r) => {
                            info!(id = %c.id, "idle, but {e}");
                            r.not_sleeping()
                        }
                        None => {
                            warn!(id = %c.id, "sleep failed, retrying in {backoff:?}: {e}");
                            Some(NotSleeping::SleepFailed {
                                error: e.to_string(),
                                next_try_unix_ms: unix_ms_at(not_before),
                            })
                        }
                    };
                    c.set_not_sleeping(held_back.clone());
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            tracker.touch(Instant::now());
        }
    });
    c.own_task(task);
}

/// Whether the node is under memory pressure (available memory below the configured
/// floor) and, of the node's awake or dozing containers that have been quiet for
/// [`PRESSURE_MIN_IDLE`], `c` (quiet since `quiet_since`) has been so the longest: it is
/// the one to sleep now. One at a time, by their status files: each sleep gives memory
/// back, and the next look decides again whether another must go.
fn pressed_to_sleep(c: &Container, quiet_since: u64) -> bool {
    let Some(floor) = c.config.memory_floor else {
        return false;
    };
    if crate::wake::mem_available().is_none_or(|a| a >= floor) {
        return false;
    }
    let limit = now_ms().saturating_sub(PRESSURE_MIN_IDLE.as_millis() as u64);
    let mine = (quiet_since, c.namespace.clone(), c.id.clone());
    let dir = &c.dirs.status;
    for ns in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            let path = f.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(s) = lightwhale_status::read_status(&path) else {
                continue;
            };
            if !matches!(
                s.state,
                lightwhale_status::State::Awake | lightwhale_status::State::Dozing
            ) {
                continue;
            }
            let Some(NotSleeping::Active {
                quiet_since_unix_ms,
                ..
            }) = s.not_sleeping
            else {
                continue;
            };
            let theirs = (quiet_since_unix_ms, s.namespace.clone(), s.id.clone());
            if quiet_since_unix_ms <= limit && theirs < mine {
                return false;
            }
        }
    }
    true
}

/// The traffic counter of a pod member, and the node's addresses as its pod sees them;
/// None for other containers (their namespace's counters hold only their own traffic and
/// nobody probes them), or when it cannot be opened (then probes count as activity).
fn pod_traffic(c: &Arc<Container>) -> Option<PodTraffic> {
    c.pod.group()?;
    let netns = c.netns_path.as_ref()?;
    let node = podnet::node_addresses(netns, &[]);
    if node.is_empty() {
        warn!(id = %c.id, "no route to the node in the pod's namespace: probes count as activity");
        return None;
    }
    *c.node_addrs.lock().unwrap_or_else(|p| p.into_inner()) = node.clone();
    match PodTraffic::open(netns, &node) {
        Ok(t) => Some(t),
        Err(e) => {
            warn!(id = %c.id, "pod traffic: {e}; probes count as activity");
            None
        }
    }
}
