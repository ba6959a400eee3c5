//! A process the shim runs: a container's init, or an exec. It holds what outlives any
//! one incarnation of the process (its stdio, its exit once it comes); whether the
//! container as a whole is awake, asleep or paused is the container's state, not this.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::stdio::{Stdio, StdioPaths};

/// How a process ended, as containerd reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub status: u32,
    pub at: SystemTime,
}

/// A process's status as containerd's Task API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, Default)]
struct Inner {
    /// Host pid of the current incarnation (0 before it starts).
    pid: i32,
    started: bool,
    exit: Option<ExitInfo>,
}

pub struct Process {
    /// Empty for a container's init process.
    pub exec_id: String,
    pub paths: StdioPaths,
    /// An exec's process spec (JSON), kept from Exec until Start.
    pub spec: Vec<u8>,
    stdio: Mutex<Option<Arc<Stdio>>>,
    inner: Mutex<Inner>,
    exited: watch::Sender<Option<ExitInfo>>,
}

impl Process {
    pub fn new(exec_id: &str, paths: StdioPaths, spec: Vec<u8>) -> Arc<Process> {
        Arc::new(Process {
            exec_id: exec_id.to_string(),
            paths,
            stdio: Mutex::new(None),
            spec,
            inner: Mutex::new(Inner::default()),
            exited: watch::channel(None).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Each update is a single field write: a poisoned lock holds consistent data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_init(&self) -> bool {
        self.exec_id.is_empty()
    }

    pub fn pid(&self) -> i32 {
        self.lock().pid
    }

    pub fn set_pid(&self, pid: i32) {
        self.lock().pid = pid;
    }

    pub fn mark_started(&self) {
        self.lock().started = true;
    }

    pub fn exit(&self) -> Option<ExitInfo> {
        self.lock().exit
    }

    /// Started (or starting) and not ended.
    pub fn is_running(&self) -> bool {
        let i = self.lock();
        i.started && i.exit.is_none()
    }

    pub fn has_exited(&self) -> bool {
        self.lock().exit.is_some()
    }

    /// An exec's status (a container's init takes its status from the container's state).
    pub fn exec_status(&self, container_paused: bool) -> TaskStatus {
        let i = self.lock();
        match (i.exit, i.started) {
            (Some(_), _) => TaskStatus::Stopped,
            (None, false) => TaskStatus::Created,
            (None, true) if container_paused => TaskStatus::Paused,
            (None, true) => TaskStatus::Running,
        }
    }

    /// Records the exit and releases every `wait`er. The first exit wins.
    pub fn set_exited(&self, info: ExitInfo) {
        {
            let mut i = self.lock();
            if i.exit.is_some() {
                return;
            }
            i.exit = Some(info);
        }
        self.exited.send_replace(Some(info));
    }

    pub async fn wait(&self) -> ExitInfo {
        let mut rx = self.exited.subscribe();
        loop {
            if let Some(info) = *rx.borrow_and_update() {
                return info;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as the process; unreachable in practice.
                return ExitInfo {
                    status: 255,
                    at: SystemTime::now(),
                };
            }
        }
    }

    pub fn stdio(&self) -> Option<Arc<Stdio>> {
        self.stdio.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_stdio(&self, s: Arc<Stdio>) {
        *self.stdio.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Arc<Process> {
        Process::new("e1", StdioPaths::default(), Vec::new())
    }

    #[test]
    fn exec_status_follows_its_life() {
        let p = p();
        assert_eq!(p.exec_status(false), TaskStatus::Created);
        p.mark_started();
        assert_eq!(p.exec_status(false), TaskStatus::Running);
        assert_eq!(p.exec_status(true), TaskStatus::Paused);
        let at = SystemTime::now();
        p.set_exited(ExitInfo { status: 3, at });
        p.set_exited(ExitInfo { status: 9, at });
        assert_eq!(p.exec_status(false), TaskStatus::Stopped);
        assert_eq!(p.exit().map(|e| e.status), Some(3), "the first exit wins");
    }

    #[tokio::test]
    async fn wait_returns_the_exit() {
        let p = p();
        let p2 = p.clone();
        let t = tokio::spawn(async move { p2.wait().await.status });
        p.set_exited(ExitInfo {
            status: 7,
            at: SystemTime::now(),
        });
        assert_eq!(t.await.ok(), Some(7));
    }
}
