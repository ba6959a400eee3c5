//! A sleep called off: something that needs the task (a connection on a held socket, an
//! exec, a signal, `lightwhale wake`) arrives while its dump is under way.
//!
//! Until now such a request waited for the dump to end and then for the whole wake: in
//! a soak, p50 162 ms against 1.4 ms for an awake task. The task is frozen, not gone,
//! until CRIU kills it at the very end of the dump; calling the sleep off there costs a
//! thaw instead of a restore.
//!
//! CRIU cannot be stopped at any moment: killed (or interrupted) while its parasite code
//! runs inside the task, it would leave the task broken. It gives up cleanly at two
//! points, where it asks its action script: `pre-dump`, before it seizes anything, and
//! `post-dump`, when the images are written and the task is not yet killed (it then
//! cures the task and leaves it as it found it, frozen). The flag this module drops is
//! what `lightwhale-criu-action` looks for there. A request that comes between the two
//! points waits for the rest of the dump, not for a restore; one that comes before runc
//! is started calls the sleep off at once; one that comes after `post-dump` wakes the
//! task as before.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::events::Trigger;

/// Where the sleep was called off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelPoint {
    /// Before runc was started: nothing of the dump had begun.
    BeforeDump,
    /// At CRIU's `pre-dump`: nothing seized yet.
    PreDump,
    /// At CRIU's `post-dump`: images written, the task cured and left frozen.
    PostDump,
}

impl CancelPoint {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelPoint::BeforeDump => "before_dump",
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
    asked: Mutex<Option<(Instant, Trigger)>>,
}

impl CancelFlag {
    /// A flag for a dump whose work directory is `work` (made fresh for each sleep).
    pub fn new(work: &Path) -> Arc<CancelFlag> {
        Arc::new(CancelFlag {
            path: work.join("cancel"),
            asked: Mutex::new(None),
        })
    }

    /// The file CRIU's action script looks for.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Asks for the sleep to be called off (the first asker's moment and reason count).
    /// False if the flag could not be dropped: the dump then runs to its end and the
    /// task wakes as from any sleep.
    pub fn ask(&self, trigger: Trigger, seen: Instant) -> bool {
        let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        if asked.is_some() {
            return true;
        }
        match std::fs::write(&self.path, trigger.as_str()) {
            Ok(()) => {
                *asked = Some((seen, trigger));
                true
            }
            Err(e) => {
                tracing::warn!("drop the sleep's cancel flag {}: {e}", self.path.display());
                false
            }
        }
    }

    /// When, and by what, the sleep was asked off.
    pub fn asked(&self) -> Option<(Instant, Trigger)> {
        *self.asked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where CRIU gave up because of the flag (None: it did not, whatever else failed).
    pub fn taken(&self) -> Option<CancelPoint> {
        let mut marker = self.path.clone().into_os_string();
        marker.push(".taken");
        let text = std::fs::read_to_string(PathBuf::from(marker)).ok()?;
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
    fn a_flag_that_cannot_be_dropped_says_so() {
        let flag = CancelFlag::new(Path::new("/nonexistent/lightwhale/work"));
        assert!(!flag.ask(Trigger::Connection, Instant::now()));
        assert_eq!(flag.asked(), None);
    }
}
