//! The `criu lazy-pages` daemon of one post-copy restore.
//!
//! A lazy restore brings a task back with its anonymous memory missing; the daemon serves
//! each page the task faults on (userfaultfd) from the checkpoint images, then copies the
//! rest in the background and exits 0 once every page is back. It must be listening on
//! `lazy-pages.socket` in the work directory before `runc restore --lazy-pages` starts.
//!
//! The daemon is not daemonized (`-d`): it stays the shim's child, so its exit is collected
//! by [`crate::reaper`] and tells whether the fill completed.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::LazyFailure;
use crate::reaper::{self, Exit};
use crate::{Error, Result};

/// The name CRIU gives the daemon's socket, relative to the work directory.
pub const SOCKET_NAME: &str = "lazy-pages.socket";
/// Log file of the daemon, in the work directory.
pub const LOG_NAME: &str = "lazy-pages.log";
/// The fd number the daemon writes its readiness byte to (`--status-fd`).
const STATUS_FD: i32 = 3;

/// A running `criu lazy-pages` daemon.
pub struct LazyPages {
    pid: i32,
    exit: Option<oneshot::Receiver<Exit>>,
    log: PathBuf,
}

impl LazyPages {
    /// Starts the daemon for the images in `images` and waits until it listens, at most
    /// `ready_within`. On failure the daemon is killed and the error carries its log tail.
    pub async fn start(
        criu: &Path,
        images: &Path,
        work: &Path,
        ready_within: Duration,
    ) -> Result<LazyPages> {
        // A socket left by an earlier wake would make bind() fail.
        let sock = work.join(SOCKET_NAME);
        if let Err(e) = std::fs::remove_file(&sock) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(Error::io("remove stale lazy-pages socket", sock, e));
            }
        }
        let log = work.join(LOG_NAME);
        let (status_r, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::sys("pipe for the lazy-pages status fd", e))?;
        let mut cmd = Command::new(criu);
        cmd.arg("lazy-pages")
            .arg("--images-dir")
            .arg(images)
            .arg("--work-dir")
            .arg(work)
            .arg("--log-file")
            .arg(&log)
            .arg("--status-fd")
            .arg(STATUS_FD.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let raw_w = status_w.as_raw_fd();
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec; `raw_w` stays
        // open in the parent until spawn() returns, so the child's copy is valid.
        unsafe {
            cmd.pre_exec(move || {
                // dup2 clears FD_CLOEXEC on the new descriptor, so the daemon keeps it;
                // if the pipe already is that fd, clear the flag by hand.
                let rc = if raw_w == STATUS_FD {
                    libc::fcntl(STATUS_FD, libc::F_SETFD, 0)
                } else {
                    libc::dup2(raw_w, STATUS_FD)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let since = Instant::now();
        let child = cmd.spawn().map_err(|e| Error::Spawn {
            binary: criu.display().to_string(),
            source: e,
        })?;
        drop(cmd);
        drop(status_w);
        let pid = child.id() as i32;
        let mut exit = reaper::subscribe(pid, since);
        let mut daemon = LazyPages {
            pid,
            exit: None,
            log,
        };

        // The status fd gets one byte when the daemon listens, or EOF if it dies first.
        let ready = tokio::task::spawn_blocking(move || wait_byte(status_r));
        let outcome = tokio::select! {
            r = tokio::time::timeout(ready_within, ready) => match r {
                Ok(Ok(true)) => Ok(()),
                Ok(Ok(false)) => Err(LazyFailure::ExitedEarly),
                Ok(Err(_)) => Err(LazyFailure::ReadinessLost),
                Err(_) => Err(LazyFailure::NotReady(ready_within)),
            },
            e = &mut exit => Err(LazyFailure::ExitedWith(e.map(|e| e.status).unwrap_or(255))),
        };
        daemon.exit = Some(exit);
        match outcome {
            Ok(()) => Ok(daemon),
            Err(why) => {
                daemon.kill();
                Err(Error::LazyPages {
                    why,
                    log_tail: daemon.log_tail(10),
                })
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the daemon to finish: status 0 means every page reached the task.
    pub async fn wait(&mut self) -> Exit {
        match self.exit.take() {
            Some(rx) => rx.await.unwrap_or(Exit {
                pid: self.pid,
                status: 255,
                at: std::time::SystemTime::now(),
            }),
            None => Exit {
                pid: self.pid,
                status: 255,
                at: std::time::SystemTime::now(),
            },
        }
    }

    /// Stops the daemon (when the restore it served failed, or its task is gone).
    pub fn kill(&self) {
        // The exit receiver still holds the pid's reaping: it cannot be recycled yet.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

fn wait_byte(fd: OwnedFd) -> bool {
    let mut f = std::fs::File::from(fd);
    let mut b = [0u8; 1];
    loop {
        match f.read(&mut b) {
            Ok(n) => return n == 1,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// Bytes of memory pages in a checkpoint (the `pages-*.img` files): what an eager
/// restore must read back before the task runs.
pub fn pages_bytes(images: &Path) -> u64 {
    let Ok(dir) = std::fs::read_dir(images) else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("pages-") && name.ends_with(".img")
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_bytes_counts_only_page_images() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("pages-1.img"), vec![0u8; 8192]).expect("write");
        std::fs::write(d.path().join("pages-2.img"), vec![0u8; 4096]).expect("write");
        std::fs::write(d.path().join("pagemap-1.img"), vec![0u8; 100]).expect("write");
        std::fs::write(d.path().join("core-1.img"), vec![0u8; 100]).expect("write");
        assert_eq!(pages_bytes(d.path()), 12288);
        assert_eq!(pages_bytes(&d.path().join("absent")), 0);
    }

    #[test]
    fn wait_byte_sees_eof_and_byte() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        drop(w);
        assert!(!wait_byte(r));
        let (r, w) = nix::unistd::pipe().expect("pipe");
        nix::unistd::write(&w, b"\0").expect("write");
        assert!(wait_byte(r));
    }
}
