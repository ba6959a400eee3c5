//! A process the shim runs: a container's init, or an exec.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use containerd_shim_protos::api::Status;
use lightwhale_engine::stdio::{Stdio, StdioPaths};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, Clone, Copy)]
pub struct ExitInfo {
    pub status: u32,
    pub at: SystemTime,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    pid: i32,
    exit: Option<ExitInfo>,
}

pub struct Process {
    /// Empty for a container's init process.
    pub exec_id: String,
    pub paths: StdioPaths,
    pub stdio: Mutex<Option<Arc<Stdio>>>,
    /// An exec's process spec (JSON), kept from Exec until Start.
    pub spec: Vec<u8>,
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
            inner: Mutex::new(Inner {
                phase: Phase::Created,
                pid: 0,
                exit: None,
            }),
            exited: watch::channel(None).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pid(&self) -> i32 {
        self.lock().pid
    }

    pub fn phase(&self) -> Phase {
        self.lock().phase
    }

    pub fn exit(&self) -> Option<ExitInfo> {
        self.lock().exit
    }

    pub fn set_pid(&self, pid: i32) {
        self.lock().pid = pid;
    }

    /// Moves to `phase` unless the process has already stopped (an exit can race a
    /// Start or Resume reply; the exit wins).
    pub fn set_phase(&self, phase: Phase) {
        let mut i = self.lock();
        if i.phase != Phase::Stopped {
            i.phase = phase;
        }
    }

    pub fn set_exited(&self, info: ExitInfo) {
        {
            let mut i = self.lock();
            i.phase = Phase::Stopped;
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

    pub fn status(&self) -> Status {
        match self.phase() {
            Phase::Created => Status::CREATED,
            Phase::Running => Status::RUNNING,
            Phase::Paused => Status::PAUSED,
            Phase::Stopped => Status::STOPPED,
        }
    }

    pub fn stdio(&self) -> Option<Arc<Stdio>> {
        self.stdio.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_stdio(&self, s: Arc<Stdio>) {
        *self.stdio.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
    }
}
