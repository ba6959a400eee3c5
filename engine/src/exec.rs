//! Execs: processes started in a running container (`docker exec`, exec probes). An exec
//! into a sleeping container wakes it first, and counts as running from the moment it is
//! started, so no sleep begins under it.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::container::Container;
use crate::events::{Event, Trigger};
use crate::lifecycle::{read_pid, with_stdio, ContainerError};
use crate::process::{ExitInfo, Process};
use crate::runc::ExecOpts;
use crate::state::State;
use crate::stdio::StdioPaths;
use crate::wake::WakeError;
use crate::Error;

fn valid_exec_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && id != "."
        && id != ".."
}

impl Container {
    pub(crate) async fn start_exec(self: &Arc<Self>, exec_id: &str) -> Result<i32, ContainerError> {
        let p = self.exec_process(exec_id)?;
        if p.pid() > 0 || p.has_exited() {
            return Err(ContainerError::NotCreated(exec_id.to_string()));
        }
        // Counted as running from here: no sleep begins while it starts.
        p.mark_started();
        self.touch_activity();
        if let Err(e) = self.wake(Trigger::Exec).await {
            p.set_exited(ExitInfo {
                status: 255,
                at: SystemTime::now(),
            });
            return Err(match e {
                WakeError::Exited => ContainerError::NotRunning(self.id.clone()),
                other => other.into(),
            });
        }
        let _order = self.event_order.lock().await;
        let process_json = self.bundle.join(format!(".lightwhale-exec-{exec_id}.json"));
        let pid_file = self.bundle.join(format!(".lightwhale-exec-{exec_id}.pid"));
        let log_file = self.bundle.join(format!(".lightwhale-exec-{exec_id}.log"));
        let since = Instant::now();
        let result = async {
            std::fs::write(&process_json, &p.spec).map_err(|source| ContainerError::Io {
                what: "write",
                path: process_json.clone(),
                source,
            })?;
            with_stdio(
                &p,
                &self.dirs.state.join("console"),
                |io, console_socket| {
                    let eopts = ExecOpts {
                        wait: false,
                        process_json: process_json.clone(),
                        pid_file: pid_file.clone(),
                        log_file: log_file.clone(),
                        console_socket,
                    };
                    let runtime = self.runtime.clone();
                    let id = self.id.clone();
                    async move { runtime.exec(&id, &eopts, io).await }
                },
            )
            .await?;
            read_pid(&pid_file)
        }
        .await;
        for f in [&process_json, &pid_file, &log_file] {
            let _ = std::fs::remove_file(f);
        }
        let pid = match result {
            Ok(pid) => pid,
            Err(e) => {
                p.set_exited(ExitInfo {
                    status: 255,
                    at: SystemTime::now(),
                });
                return Err(e);
            }
        };
        p.set_pid(pid);
        let (c, p2) = (self.clone(), p.clone());
        tokio::spawn(async move {
            let exit = c.runtime.wait(pid, since).await;
            c.finish_process(&p2, pid, exit.status as u32, exit.at)
                .await;
        });
        self.emit(Event::ExecStarted {
            id: self.id.clone(),
            exec_id: exec_id.to_string(),
            pid,
        });
        Ok(pid)
    }

    pub(crate) fn exec_process(&self, exec_id: &str) -> Result<Arc<Process>, ContainerError> {
        self.process(exec_id)
            .ok_or_else(|| ContainerError::ExecNotFound {
                id: self.id.clone(),
                exec_id: exec_id.to_string(),
            })
    }

    /// Registers an exec (started by [`Container::start`]).
    pub fn add_exec(
        &self,
        exec_id: &str,
        spec: Vec<u8>,
        stdio: StdioPaths,
    ) -> Result<(), ContainerError> {
        if !valid_exec_id(exec_id) {
            return Err(ContainerError::InvalidExecId(exec_id.to_string()));
        }
        if self.state() == State::Exited {
            return Err(ContainerError::NotRunning(self.id.clone()));
        }
        serde_json::from_slice::<serde_json::Value>(&spec)
            .map_err(ContainerError::InvalidExecSpec)?;
        {
            let mut execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
            if execs.contains_key(exec_id) {
                return Err(ContainerError::ExecExists(exec_id.to_string()));
            }
            execs.insert(exec_id.to_string(), Process::new(exec_id, stdio, spec));
        }
        self.emit(Event::ExecAdded {
            id: self.id.clone(),
            exec_id: exec_id.to_string(),
        });
        Ok(())
    }

    pub(crate) fn kill_exec(&self, exec_id: &str, signal: u32) -> Result<(), ContainerError> {
        let p = self.exec_process(exec_id)?;
        if p.has_exited() {
            return Err(ContainerError::ProcessFinished);
        }
        let pid = p.pid();
        if pid <= 0 {
            return Err(ContainerError::ExecNotStarted(exec_id.to_string()));
        }
        let sig = nix::sys::signal::Signal::try_from(signal as i32)
            .map_err(|_| ContainerError::InvalidSignal(signal))?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::ESRCH) => Err(ContainerError::ProcessFinished),
            Err(e) => Err(Error::Sys {
                what: "kill an exec",
                source: e,
            }
            .into()),
        }
    }

    /// Forgets an exec that has ended; returns its pid and exit.
    pub fn delete_exec(&self, exec_id: &str) -> Result<(i32, Option<ExitInfo>), ContainerError> {
        let p = self.exec_process(exec_id)?;
        if p.pid() > 0 && !p.has_exited() {
            return Err(ContainerError::ExecRunning(exec_id.to_string()));
        }
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(exec_id);
        Ok((p.pid(), p.exit()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_ids_cannot_escape_the_bundle() {
        assert!(valid_exec_id("abc-123_x.y"));
        assert!(!valid_exec_id("../x"));
        assert!(!valid_exec_id(".."));
        assert!(!valid_exec_id(""));
        assert!(!valid_exec_id("a/b"));
        assert!(!valid_exec_id(&"x".repeat(129)));
    }
}
