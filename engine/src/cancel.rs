//! A sleep called off: something that needs the task (a connection on a held socket, an
//! exec, a signal, `lightwhale wake`) arrives while its dump is under way.
//!
//! Until now such a request waited for the dump to end and then for the whole wake: in
//! a soak, p50 162 ms against 1.4 ms for an awake task. The task is frozen, not gone,
//! until CRIU kills it at the very end of the dump; calling the sleep off costs a thaw
//! instead of a restore.
//!
//! CRIU cannot be stopped at any moment: killed (or interrupted) while its parasite code
//! runs inside the task, it would leave the task broken. So the dump is given up only
//! where that is clean:
//! - before CRIU's `pre-dump` point, nothing is seized: the `runc checkpoint` process
//!   (and the CRIU it started) is simply killed;
//! - at `pre-dump` and at `post-dump` (images written, task not yet killed) CRIU asks its
//!   action script, `lightwhale-criu-action`, which fails the dump when the flag this
//!   module drops exists: CRIU then cures the task and leaves it as it found it, frozen;
//! - after `post-dump` the task is killed: the request wakes it as from any sleep.
//!
//! Killing runc is safe only while CRIU cannot get past `pre-dump`, and the two sides
//! decide that without a lock: the script writes `<flag>.reached` before it looks for the
//! flag, and the shim drops the flag before it looks for `<flag>.reached`. If the shim
//! finds no `.reached`, the script has not written it yet, so it will see the flag and
//! give up at `pre-dump` whatever happens to runc; then runc may be killed.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::events::Trigger;
use crate::runc::SpawnHook;

/// Where the sleep was called off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelPoint {
    /// Before runc was started: nothing of the dump had begun.
    BeforeDump,
    /// runc was killed before CRIU reached `pre-dump`: nothing seized.
    BeforeSeize,
    /// At CRIU's `pre-dump`: nothing seized yet.
    PreDump,
    /// At CRIU's `post-dump`: images written, the task cured and left frozen.
    PostDump,
}

impl CancelPoint {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelPoint::BeforeDump => "before_dump",
            CancelPoint::BeforeSeize => "before_seize",
            CancelPoint::PreDump => "pre_dump",
            CancelPoint::PostDump => "post_dump",
        }
    }

    fn from_script(action: &str) -> Option<CancelPoint> {
        match action.trim() {
            "pre-dump" => Some(CancelPoint::PreDump),
            "post-dump" => Some(CancelPoint::PostDump),
            _ => None,
        }
    }
}

/// One dump's flag: armed for the dump, asked for by whoever needs the task.
#[derive(Debug)]
pub struct CancelFlag {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    asked: Option<(Instant, Trigger)>,
    /// The `runc checkpoint` process, while it may still be killed.
    runc: Option<OwnedFd>,
    killed: bool,
}

impl CancelFlag {
    /// A flag for a dump whose work directory is `work` (made fresh for each sleep).
    pub fn new(work: &Path) -> Arc<CancelFlag> {
        Arc::new(CancelFlag {
            path: work.join("cancel"),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file CRIU's action script looks for.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn marker(&self, suffix: &str) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(suffix);
        PathBuf::from(p)
    }

    /// Asks for the sleep to be called off (the first asker's moment and reason count).
    /// False if the flag could not be dropped: the dump then runs to its end and the
    /// task wakes as from any sleep.
    pub fn ask(&self, trigger: Trigger, seen: Instant) -> bool {
        let mut inner = self.inner();
        if inner.asked.is_some() {
            return true;
        }
        if let Err(e) = std::fs::write(&self.path, trigger.as_str()) {
            tracing::warn!("drop the sleep's cancel flag {}: {e}", self.path.display());
            return false;
        }
        inner.asked = Some((seen, trigger));
        self.kill_if_unseized(&mut inner);
        true
    }

    /// Kills runc if CRIU has not reached `pre-dump` (see the module's notes): the flag
    /// is down, so it never will get past it.
    fn kill_if_unseized(&self, inner: &mut Inner) {
        if inner.asked.is_none() || self.marker(".reached").exists() {
            return;
        }
        if let Some(runc) = inner.runc.take() {
            match crate::pidfd::signal(&runc, libc::SIGKILL) {
                Ok(()) => inner.killed = true,
                Err(e) => tracing::debug!("kill runc checkpoint: {e}"),
            }
        }
    }

    /// What `runc checkpoint` reports its process to: asked already, it is killed at
    /// once if CRIU has not gone far.
    pub fn spawn_hook(self: &Arc<Self>) -> SpawnHook {
        let me = Arc::downgrade(self);
        SpawnHook(Arc::new(move |runc: OwnedFd| {
            if let Some(me) = me.upgrade() {
                let mut inner = me.inner();
                inner.runc = Some(runc);
                me.kill_if_unseized(&mut inner);
            }
        }))
    }

    /// The dump is over (whatever its end): its runc is never signalled again.
    pub fn finish(&self) {
        self.inner().runc = None;
    }

    /// When, and by what, the sleep was asked off.
    pub fn asked(&self) -> Option<(Instant, Trigger)> {
        self.inner().asked
    }

    /// Where the dump was given up because of the flag (None: it was not, whatever else
    /// failed).
    pub fn taken(&self) -> Option<CancelPoint> {
        if self.inner().killed {
            return Some(CancelPoint::BeforeSeize);
        }
        let text = std::fs::read_to_string(self.marker(".taken")).ok()?;
        CancelPoint::from_script(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_dropped_once_and_the_point_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flag = CancelFlag::new(dir.path());
        assert_eq!(flag.asked(), None);
        assert_eq!(flag.taken(), None);
        let first = Instant::now();
        assert!(flag.ask(Trigger::Connection, first));
        assert!(flag.ask(Trigger::Exec, Instant::now()));
        assert_eq!(flag.asked(), Some((first, Trigger::Connection)));
        assert!(flag.path().is_file());
        std::fs::write(dir.path().join("cancel.taken"), "post-dump").expect("marker");
        assert_eq!(flag.taken(), Some(CancelPoint::PostDump));
        std::fs::write(dir.path().join("cancel.taken"), "pre-dump").expect("marker");
        assert_eq!(flag.taken(), Some(CancelPoint::PreDump));
        std::fs::write(dir.path().join("cancel.taken"), "garbage").expect("marker");
        assert_eq!(flag.taken(), None);
    }

    #[test]
    fn runc_is_killed_only_while_criu_has_not_reached_pre_dump() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spawn = || {
            let child = std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .expect("spawn");
            let fd = crate::pidfd::open(child.id() as i32).expect("pidfd");
            (child, fd)
        };
        // Asked before CRIU got anywhere: killed, as soon as the process is known.
        let flag = CancelFlag::new(dir.path());
        assert!(flag.ask(Trigger::Request, Instant::now()));
        let (mut child, fd) = spawn();
        (flag.spawn_hook().0)(fd);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().expect("wait").signal(), Some(libc::SIGKILL));
        assert_eq!(flag.taken(), Some(CancelPoint::BeforeSeize));

        // CRIU has reached pre-dump: never killed, whatever is asked after.
        let dir = tempfile::tempdir().expect("tempdir");
        let flag = CancelFlag::new(dir.path());
        let (mut child, fd) = spawn();
        (flag.spawn_hook().0)(fd);
        std::fs::write(dir.path().join("cancel.reached"), "").expect("reached");
        assert!(flag.ask(Trigger::Connection, Instant::now()));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(child.try_wait().expect("try_wait").is_none(), "killed");
        assert_eq!(flag.taken(), None);
        flag.finish();
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_flag_that_cannot_be_dropped_says_so() {
        let flag = CancelFlag::new(Path::new("/nonexistent/lightwhale/work"));
        assert!(!flag.ask(Trigger::Connection, Instant::now()));
        assert_eq!(flag.asked(), None);
    }
}
