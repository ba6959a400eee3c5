//! The OCI runtime seam: what the engine needs of runc (or crun, or a driver speaking to
//! CRIU directly), so the state machine can be driven by a fake in tests.
//!
//! Process supervision is part of the seam: the runtime's processes are children of the
//! shim (a subreaper), and `wait` is how the engine learns that one ended.

use std::path::Path;
use std::time::Instant;

use async_trait::async_trait;

use crate::reaper::Exit;
use crate::runc::{CheckpointOpts, CreateOpts, ExecOpts, ProcessIo, RestoreOpts, Runc};
use crate::Result;

#[async_trait]
pub trait OciRuntime: Send + Sync {
    /// For messages and logs ("runc").
    fn name(&self) -> &str;
    async fn create(&self, id: &str, bundle: &Path, opts: &CreateOpts, io: ProcessIo)
        -> Result<()>;
    async fn start(&self, id: &str) -> Result<()>;
    /// Runs a process in the container; with `opts.wait`, until it ends.
    async fn exec(&self, id: &str, opts: &ExecOpts, io: ProcessIo) -> Result<()>;
    async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()>;
    async fn delete(&self, id: &str, force: bool) -> Result<()>;
    /// Freezes every process of the container.
    async fn pause(&self, id: &str) -> Result<()>;
    async fn resume(&self, id: &str) -> Result<()>;
    /// Host pids of the container's processes.
    async fn ps(&self, id: &str) -> Result<Vec<i32>>;
    /// Applies an OCI `LinuxResources` document.
    async fn update(&self, id: &str, resources: &Path) -> Result<()>;
    /// Dumps the container with CRIU; without `leave_running` its processes end.
    async fn checkpoint(&self, id: &str, opts: &CheckpointOpts) -> Result<()>;
    /// Recreates the container from a checkpoint, its pid in `opts.pid_file`.
    async fn restore(
        &self,
        id: &str,
        bundle: &Path,
        opts: &RestoreOpts,
        io: ProcessIo,
    ) -> Result<()>;
    /// Resolves when process `pid` ends. `since` is when the caller learned of the
    /// process: an exit older than that belongs to an earlier process with that pid.
    async fn wait(&self, pid: i32, since: Instant) -> Exit;
    /// Whether a checkpoint honours `CheckpointOpts::cancel_flag`.
    fn can_cancel_dump(&self) -> bool {
        false
    }
    /// Whether the task's freezer cgroup may be written directly in place of `pause` and
    /// `resume` (the runtime reads its paused state from the same file).
    fn shares_freezer(&self) -> bool {
        false
    }
    /// Why the checkpoint of processes `pids` cannot succeed on this host, if it cannot.
    fn checkpoint_blocker(&self, pids: &[i32]) -> Option<String> {
        criu_blocker(pids)
    }
}

/// CRIU without `CAP_SYS_RESOURCE` (some VMs and sandboxes withhold it even from root)
/// cannot dump a process that does not run as root: it fails every time.
pub fn criu_blocker(pids: &[i32]) -> Option<String> {
    if crate::privilege::has(caps::Capability::CAP_SYS_RESOURCE) {
        return None;
    }
    for pid in pids {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let uid = text
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if let Some(uid) = uid.filter(|u| *u != 0) {
            return Some(format!(
                "process {pid} runs as uid {uid}, and this host gives CRIU no \
                 CAP_SYS_RESOURCE, without which it cannot dump processes that are not root's"
            ));
        }
    }
    None
}

#[async_trait]
impl OciRuntime for Runc {
    fn name(&self) -> &str {
        "runc"
    }
    async fn create(
        &self,
        id: &str,
        bundle: &Path,
        opts: &CreateOpts,
        io: ProcessIo,
    ) -> Result<()> {
        Runc::create(self, id, bundle, opts, io).await
    }
    async fn start(&self, id: &str) -> Result<()> {
        Runc::start(self, id).await
    }
    async fn exec(&self, id: &str, opts: &ExecOpts, io: ProcessIo) -> Result<()> {
        Runc::exec(self, id, opts, io).await
    }
    async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        Runc::kill(self, id, signal, all).await
    }
    async fn delete(&self, id: &str, force: bool) -> Result<()> {
        Runc::delete(self, id, force).await
    }
    async fn pause(&self, id: &str) -> Result<()> {
        Runc::pause(self, id).await
    }
    async fn resume(&self, id: &str) -> Result<()> {
        Runc::resume(self, id).await
    }
    async fn ps(&self, id: &str) -> Result<Vec<i32>> {
        Runc::ps(self, id).await
    }
    async fn update(&self, id: &str, resources: &Path) -> Result<()> {
        Runc::update(self, id, resources).await
    }
    async fn checkpoint(&self, id: &str, opts: &CheckpointOpts) -> Result<()> {
        Runc::checkpoint(self, id, opts).await
    }
    fn can_cancel_dump(&self) -> bool {
        Runc::can_cancel_dump(self)
    }
    fn shares_freezer(&self) -> bool {
        // runc 1.1 derives "paused" from the freezer's state on every call.
        true
    }
    async fn restore(
        &self,
        id: &str,
        bundle: &Path,
        opts: &RestoreOpts,
        io: ProcessIo,
    ) -> Result<()> {
        Runc::restore(self, id, bundle, opts, io).await
    }
    async fn wait(&self, pid: i32, since: Instant) -> Exit {
        crate::reaper::wait(pid, since).await
    }
}
