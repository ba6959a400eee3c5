//! When to sleep (policy): the task is put to sleep after `idle-timeout` without inbound
//! TCP traffic and with its CPU use under the threshold. A sleep that fails or is refused
//! backs off (5 s doubling, up to 5 minutes) before the next try.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::activity::{IdleTracker, Probe};
use crate::container::Container;
use crate::state::State;

const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

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
            match c.state() {
                State::Exited => return,
                State::Awake if c.running_execs() == 0 => {}
                _ => {
                    tracker.touch(now);
                    continue;
                }
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
            match c.sleep().await {
                Ok(()) => backoff = FIRST_BACKOFF,
                Err(e) => {
                    if e.is_refusal() {
                        info!(id = %c.id, "idle, but {e}");
                    } else {
                        warn!(id = %c.id, "sleep failed, retrying in {backoff:?}: {e}");
                    }
                    not_before = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            tracker.touch(Instant::now());
        }
    });
    c.own_task(task);
}
