//! A container's cgroup freezer, written directly: a doze freezes and thaws a task in
//! about a millisecond this way, against ~10 ms for `runc pause` (a Go program started
//! per call) and 23-29 ms for `docker pause`. runc itself stays in charge of every other
//! freeze (`docker pause`, the dump), and the engine thaws before handing a task to runc.
//!
//! v1 (and hybrid) hosts: `freezer.state` (`FROZEN`/`THAWED`; it reads `FREEZING` until
//! every task has stopped). v2: `cgroup.freeze` (`1`/`0`), `cgroup.events` says
//! `frozen 1` once done.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freezer {
    /// The v1 freezer controller's `freezer.state` of the cgroup.
    V1(PathBuf),
    /// The v2 cgroup's directory.
    V2(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("no freezer cgroup found for pid {0}")]
    NotFound(i32),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the task did not freeze within {0:?} (a process in uninterruptible sleep?)")]
    Timeout(Duration),
}

impl Freezer {
    /// The freezer of `pid`'s cgroup on a v1, hybrid or v2 host.
    pub fn of_pid(pid: i32) -> Result<Freezer, FreezeError> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(|_| FreezeError::NotFound(pid))?;
        Self::from_proc_cgroup(&text, Path::new("/sys/fs/cgroup")).ok_or(FreezeError::NotFound(pid))
    }

    fn from_proc_cgroup(text: &str, root: &Path) -> Option<Freezer> {
        let mut v2 = None;
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let rel = path.trim_start_matches('/');
            if controllers.split(',').any(|c| c == "freezer") {
                return Some(Freezer::V1(
                    root.join("freezer").join(rel).join("freezer.state"),
                ));
            }
            if controllers.is_empty() {
                v2 = Some(rel.to_string());
            }
        }
        // A hybrid host without the v1 freezer mounted has none to offer: v2's unified
        // tree there holds no controllers.
        if root.join("unified").is_dir() {
            return None;
        }
        Some(Freezer::V2(root.join(v2?)))
    }

    fn write(&self, frozen: bool) -> Result<(), FreezeError> {
        let (path, value) = match self {
            Freezer::V1(p) => (p.clone(), if frozen { "FROZEN" } else { "THAWED" }),
            Freezer::V2(d) => (d.join("cgroup.freeze"), if frozen { "1" } else { "0" }),
        };
        std::fs::write(&path, value).map_err(|source| FreezeError::Io { path, source })
    }

    /// Asks the kernel to freeze every task of the cgroup; returns before they all have
    /// stopped ([`Freezer::wait_frozen`]).
    pub fn start_freeze(&self) -> Result<(), FreezeError> {
        self.write(true)
    }

    /// Whether every task of the cgroup is frozen now.
    pub fn is_frozen(&self) -> Result<bool, FreezeError> {
        let path = match self {
            Freezer::V1(p) => p.clone(),
            Freezer::V2(d) => d.join("cgroup.events"),
        };
        let text = std::fs::read_to_string(&path).map_err(|source| FreezeError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(match self {
            Freezer::V1(_) => text.trim() == "FROZEN",
            Freezer::V2(_) => text.lines().any(|l| l.trim() == "frozen 1"),
        })
    }

    /// Waits (polling, at most `limit`) until the cgroup is frozen. v1 may stay in
    /// FREEZING when a task is busy in the kernel: the request is repeated meanwhile, as
    /// runc does.
    pub fn wait_frozen(&self, limit: Duration) -> Result<(), FreezeError> {
        let start = Instant::now();
        let mut pause = Duration::from_micros(100);
        loop {
            if self.is_frozen()? {
                return Ok(());
            }
            if start.elapsed() >= limit {
                return Err(FreezeError::Timeout(limit));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
            if matches!(self, Freezer::V1(_)) {
                self.write(true)?;
            }
        }
    }

    /// The processes of the cgroup (empty if it cannot be read).
    pub fn procs(&self) -> Vec<i32> {
        let dir = match self {
            Freezer::V1(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
            Freezer::V2(d) => d.clone(),
        };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Lets every task of the cgroup run again.
    pub fn thaw(&self) -> Result<(), FreezeError> {
        self.write(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_freezer_line() {
        let text = "6:freezer:/docker/abc\n4:memory:/docker/abc\n0::/docker/abc\n";
        let f = Freezer::from_proc_cgroup(text, Path::new("/nonexistent")).expect("freezer");
        assert_eq!(
            f,
            Freezer::V1(PathBuf::from(
                "/nonexistent/freezer/docker/abc/freezer.state"
            ))
        );
    }

    #[test]
    fn v2_cgroup() {
        let f = Freezer::from_proc_cgroup("0::/system.slice/x.scope\n", Path::new("/nonexistent"))
            .expect("freezer");
        assert_eq!(
            f,
            Freezer::V2(PathBuf::from("/nonexistent/system.slice/x.scope"))
        );
    }

    #[test]
    fn garbage_has_none() {
        assert_eq!(
            Freezer::from_proc_cgroup("nonsense", Path::new("/nonexistent")),
            None
        );
    }
}
