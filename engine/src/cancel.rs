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
//!
//! A killed runc may leave its `criu swrk` behind (the shim, a subreaper, inherits it),
//! still on its way to `pre-dump`. It must find the flag there: the flag lives in a
//! directory of its own for each attempt (never the next sleep's, never removed with the
//! images), and that directory goes only once no process started for the attempt is left
//! (found by the `LIGHTWHALE_SLEEP_CANCEL` in their environment, and killed: they cannot
//! have seized anything).

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
    /// A flag for one sleep's dump, in a directory of its own under `dir` named by `name`
    /// and the time (so an attempt never shares it with the next one).
    pub fn new(dir: &Path, name: &str) -> std::io::Result<Arc<CancelFlag>> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let own = dir.join(format!("{name}-{nanos}"));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&own)?;
        }
        Ok(Arc::new(CancelFlag {
            path: own.join("flag"),
            inner: Mutex::new(Inner::default()),
        }))
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

    /// The dump is over (whatever its end): its runc is never signalled again, and the
    /// flag's directory goes once nothing started for this dump is left (at once when
    /// runc ended by itself: it waits for its CRIU).
    pub fn finish(self: &Arc<Self>) {
        let killed = {
            let mut inner = self.inner();
            inner.runc = None;
            inner.killed
        };
        let dir = self.path.parent().map(Path::to_path_buf);
        if !killed {
            if let Some(d) = dir {
                let _ = std::fs::remove_dir_all(d);
            }
            return;
        }
        let flag = self.path.clone();
        let spawned = std::thread::Builder::new()
            .name("cancel-reaper".into())
            .spawn(move || {
                if end_leftovers(&flag, std::time::Duration::from_secs(30)) {
                    if let Some(d) = dir {
                        let _ = std::fs::remove_dir_all(d);
                    }
                } else {
                    // Left in place: a CRIU that never went is still pointed at the flag.
                    tracing::warn!("a CRIU of a called-off sleep outlived 30 s; its flag stays");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot watch a called-off dump's CRIU ({e}); its flag stays");
        }
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

/// Kills every process started for the dump behind `flag` (its environment names the
/// flag) and waits until none is left, at most `limit`: true when none is.
fn end_leftovers(flag: &Path, limit: std::time::Duration) -> bool {
    let mut wanted = b"LIGHTWHALE_SLEEP_CANCEL=".to_vec();
    wanted.extend_from_slice(flag.as_os_str().as_encoded_bytes());
    let t = Instant::now();
    loop {
        let left = processes_with_env(&wanted);
        if left.is_empty() {
            return true;
        }
        if t.elapsed() >= limit {
            return false;
        }
        for pid in left {
            if let Ok(fd) = crate::pidfd::open(pid) {
                let _ = crate::pidfd::signal(&fd, libc::SIGKILL);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Pids whose environment holds the exact entry `entry` (`NAME=value`).
fn processes_with_env(entry: &[u8]) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(env) = std::fs::read(e.path().join("environ")) {
            if env.split(|b| *b == 0).any(|v| v == entry) {
                out.push(pid);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_dropped_once_and_the_point_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flag = CancelFlag::new(dir.path(), "t").expect("flag");
        assert_eq!(flag.asked(), None);
        assert_eq!(flag.taken(), None);
        let first = Instant::now();
        assert!(flag.ask(Trigger::Connection, first));
        assert!(flag.ask(Trigger::Exec, Instant::now()));
        assert_eq!(flag.asked(), Some((first, Trigger::Connection)));
        assert!(flag.path().is_file());
        let taken = flag.marker(".taken");
        std::fs::write(&taken, "post-dump").expect("marker");
        assert_eq!(flag.taken(), Some(CancelPoint::PostDump));
        std::fs::write(&taken, "pre-dump").expect("marker");
        assert_eq!(flag.taken(), Some(CancelPoint::PreDump));
        std::fs::write(&taken, "garbage").expect("marker");
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
        let flag = CancelFlag::new(dir.path(), "t").expect("flag");
        assert!(flag.ask(Trigger::Request, Instant::now()));
        let (mut child, fd) = spawn();
        (flag.spawn_hook().0)(fd);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().expect("wait").signal(), Some(libc::SIGKILL));
        assert_eq!(flag.taken(), Some(CancelPoint::BeforeSeize));

        // CRIU has reached pre-dump: never killed, whatever is asked after.
        let dir = tempfile::tempdir().expect("tempdir");
        let flag = CancelFlag::new(dir.path(), "t").expect("flag");
        let (mut child, fd) = spawn();
        (flag.spawn_hook().0)(fd);
        std::fs::write(flag.marker(".reached"), "").expect("reached");
        assert!(flag.ask(Trigger::Connection, Instant::now()));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(child.try_wait().expect("try_wait").is_none(), "killed");
        assert_eq!(flag.taken(), None);
        flag.finish();
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_flag_that_cannot_be_made_says_so() {
        assert!(CancelFlag::new(Path::new("/proc/lightwhale-no"), "t").is_err());
    }

    #[test]
    fn what_a_killed_dump_left_running_is_ended_before_its_flag_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flag = CancelFlag::new(dir.path(), "t").expect("flag");
        // A stand-in for the orphaned `criu swrk`: started with the dump's environment.
        let mut orphan = std::process::Command::new("sleep")
            .arg("30")
            .env("LIGHTWHALE_SLEEP_CANCEL", flag.path())
            .spawn()
            .expect("spawn");
        let mut bystander = std::process::Command::new("sleep")
            .arg("30")
            .env("LIGHTWHALE_SLEEP_CANCEL", dir.path().join("another"))
            .spawn()
            .expect("spawn");
        assert!(flag.ask(Trigger::Connection, Instant::now()));
        let (mut runc, fd) = {
            let c = std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .expect("spawn");
            let fd = crate::pidfd::open(c.id() as i32).expect("pidfd");
            (c, fd)
        };
        (flag.spawn_hook().0)(fd);
        let _ = runc.wait();
        flag.finish();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(orphan.wait().expect("wait").signal(), Some(libc::SIGKILL));
        let own = flag.path().parent().expect("own dir").to_path_buf();
        let t = Instant::now();
        while own.exists() && t.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            !own.exists(),
            "the flag's directory goes once nothing is left"
        );
        assert!(
            bystander.try_wait().expect("try_wait").is_none(),
            "not another dump's"
        );
        let _ = bystander.kill();
        let _ = bystander.wait();
    }
}
