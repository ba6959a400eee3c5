//! The single `waitpid` caller of the process.
//!
//! The shim is a child subreaper: container init processes are re-parented to it once
//! `runc create` exits, and every runc command is its child too. If two places reaped
//! (a per-child `wait` and a SIGCHLD loop), one of them would steal the other's status.
//! So the reaper collects every exit and hands it to whoever asks for that pid, even
//! when the exit happened before anyone asked (a fast `runc` or a container that dies
//! at once); the `since` stamp keeps a recycled pid from picking up a stale status.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How a process ended: its exit code, or 128 + the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    pub status: i32,
    pub at: SystemTime,
}

#[derive(Default)]
struct Table {
    waiters: HashMap<i32, Vec<oneshot::Sender<Exit>>>,
    unclaimed: HashMap<i32, (Exit, Instant)>,
}

/// Unclaimed exits are kept this long: long enough for any caller that spawned the
/// process to ask (it subscribes right after the spawn: an exit can only beat it by
/// moments), short enough that the exits of orphans re-parented to us (a restore's
/// helpers) do not pile up in a shim that sleeps and wakes all night.
const UNCLAIMED_TTL: Duration = Duration::from_secs(30);
/// And at most this many, whatever their age.
const UNCLAIMED_MAX: usize = 1024;

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

fn lock() -> std::sync::MutexGuard<'static, Table> {
    // A panic while holding the lock cannot leave the maps inconsistent (each update
    // is a single insert or remove), so a poisoned lock is still usable.
    table().lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes this process a child subreaper, so orphaned container processes come to it.
pub fn set_subreaper() -> crate::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a flag on this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(crate::Error::sys(
            "prctl(PR_SET_CHILD_SUBREAPER)",
            Errno::last(),
        ));
    }
    Ok(())
}

/// Starts the SIGCHLD loop on a thread of its own. Idempotent.
///
/// The loop gets its own small runtime rather than a task on the caller's: a task would
/// die with whichever runtime installed it first, and every later exit would go unreaped.
pub fn install() -> crate::Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    RUNNING.store(true, std::sync::atomic::Ordering::Relaxed);
    let result = INSTALLED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("lightwhale-reaper".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(format!("reaper runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut sigchld = match signal(SignalKind::child()) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(Err(format!("listen for SIGCHLD: {e}")));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(()));
                    // Children may have exited before the handler existed.
                    reap_all();
                    while sigchld.recv().await.is_some() {
                        reap_all();
                    }
                });
            });
        match spawned {
            Ok(_) => rx
                .recv()
                .unwrap_or_else(|_| Err("reaper thread ended early".into())),
            Err(e) => Err(format!("spawn reaper thread: {e}")),
        }
    });
    result.clone().map_err(|message| crate::Error::Io {
        what: "start the child reaper",
        path: "SIGCHLD".into(),
        source: std::io::Error::other(message),
    })
}

/// Set once [`install`] has been called: from then on only the reaper may wait.
static RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs `cmd` to its end with its stdout and stderr captured. Where the reaper runs, the
/// exit comes from it (a wait of our own would race it for the status and lose: ECHILD);
/// elsewhere (a unit test) a plain wait.
pub async fn output(mut cmd: std::process::Command) -> std::io::Result<std::process::Output> {
    use std::os::unix::process::ExitStatusExt;
    if !RUNNING.load(std::sync::atomic::Ordering::Relaxed) {
        return tokio::task::spawn_blocking(move || cmd.output())
            .await
            .map_err(std::io::Error::other)?;
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let since = Instant::now();
    let mut child = cmd.spawn()?;
    let exit = subscribe(child.id() as i32, since);
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        tokio::task::spawn_blocking(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = read(child.stdout.take().map(|p| Box::new(p) as _));
    let err = read(child.stderr.take().map(|p| Box::new(p) as _));
    let (stdout, stderr) = (out.await.unwrap_or_default(), err.await.unwrap_or_default());
    let status = exit.await.map(|e| e.status).unwrap_or(255);
    Ok(std::process::Output {
        status: std::process::ExitStatus::from_raw((status & 0xff) << 8),
        stdout,
        stderr,
    })
}

/// Reaps every exited child; signals coalesce, so one SIGCHLD may stand for many.
pub fn reap_all() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => dispatch(pid.as_raw(), code),
            Ok(WaitStatus::Signaled(pid, sig, _)) => dispatch(pid.as_raw(), 128 + sig as i32),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!("waitpid: {e}");
                break;
            }
        }
    }
}

fn dispatch(pid: i32, status: i32) {
    let exit = Exit {
        pid,
        status,
        at: SystemTime::now(),
    };
    let mut t = lock();
    if let Some(waiters) = t.waiters.remove(&pid) {
        for w in waiters {
            let _ = w.send(exit);
        }
        return;
    }
    let now = Instant::now();
    t.unclaimed
        .retain(|_, (_, seen)| now.duration_since(*seen) < UNCLAIMED_TTL);
    if t.unclaimed.len() >= UNCLAIMED_MAX {
        if let Some(oldest) = t
            .unclaimed
            .iter()
            .min_by_key(|(_, (_, seen))| *seen)
            .map(|(pid, _)| *pid)
        {
            t.unclaimed.remove(&oldest);
        }
    }
    t.unclaimed.insert(pid, (exit, now));
}

/// Registers interest in `pid`; the returned receiver resolves when it exits.
/// `since` is when the caller learned of the process (before spawning it): an
/// unclaimed exit older than that belongs to an earlier process with the same pid.
pub fn subscribe(pid: i32, since: Instant) -> oneshot::Receiver<Exit> {
    let (tx, rx) = oneshot::channel();
    let mut t = lock();
    if let Some((exit, seen)) = t.unclaimed.remove(&pid) {
        if seen >= since {
            let _ = tx.send(exit);
            return rx;
        }
    }
    t.waiters.entry(pid).or_default().push(tx);
    rx
}

/// Waits for `pid` to exit (see [`subscribe`]).
pub async fn wait(pid: i32, since: Instant) -> Exit {
    match subscribe(pid, since).await {
        Ok(exit) => exit,
        // The sender is only dropped with the table, which lives for the process.
        Err(_) => Exit {
            pid,
            status: 255,
            at: SystemTime::now(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_before_subscribe_is_delivered() {
        let since = Instant::now();
        dispatch(999_001, 3);
        let mut rx = subscribe(999_001, since);
        assert_eq!(rx.try_recv().map(|e| e.status).ok(), Some(3));
    }

    #[test]
    fn stale_exit_of_recycled_pid_is_not_delivered() {
        dispatch(999_002, 1);
        std::thread::sleep(Duration::from_millis(2));
        let mut rx = subscribe(999_002, Instant::now());
        assert!(
            rx.try_recv().is_err(),
            "a status older than the process must not be used"
        );
        dispatch(999_002, 0);
        assert_eq!(rx.try_recv().map(|e| e.status).ok(), Some(0));
    }
}
