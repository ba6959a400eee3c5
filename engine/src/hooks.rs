//! Lifecycle hooks: a command run in the container before it sleeps (failing cancels the
//! sleep) or after it wakes (off the wake path), as the init process's user, env and cwd.

use std::time::Duration;

use serde_json::Value;

use crate::container::Container;
use crate::runc::{ExecOpts, ProcessIo};

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot read the container's spec: {0}")]
    Spec(#[source] std::io::Error),
    #[error("the container's spec has no process to take the user, env and cwd from")]
    NoProcess,
    #[error("cannot prepare the hook: {0}")]
    Io(#[source] std::io::Error),
    #[error("{source}; output: {output:?}")]
    Failed {
        #[source]
        source: crate::Error,
        output: String,
    },
    #[error("timed out after {0:?}; output: {1:?}")]
    TimedOut(Duration, String),
}

/// Runs hook `name` (`args`) in the container, waits for it within the configured
/// timeout, and returns its output on failure.
pub async fn run(c: &Container, name: &str, args: &[String]) -> Result<(), HookError> {
    let spec: Value = std::fs::read(c.bundle.join("config.json"))
        .and_then(|b| serde_json::from_slice(&b).map_err(std::io::Error::other))
        .map_err(HookError::Spec)?;
    let mut process = spec.get("process").cloned().unwrap_or(Value::Null);
    let Some(obj) = process.as_object_mut() else {
        return Err(HookError::NoProcess);
    };
    obj.insert("args".into(), serde_json::json!(args));
    obj.insert("terminal".into(), Value::Bool(false));
    let process_json = c.bundle.join(format!(".lightwhale-hook-{name}.json"));
    let pid_file = c.bundle.join(format!(".lightwhale-hook-{name}.pid"));
    let log_file = c.bundle.join(format!(".lightwhale-hook-{name}.log"));
    std::fs::write(&process_json, process.to_string()).map_err(HookError::Io)?;
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| HookError::Io(e.into()))?;
    let w2 = w.try_clone().map_err(HookError::Io)?;
    let io = ProcessIo {
        stdin: None,
        stdout: Some(w),
        stderr: Some(w2),
    };
    let opts = ExecOpts {
        wait: true,
        process_json: process_json.clone(),
        pid_file: pid_file.clone(),
        log_file: log_file.clone(),
        console_socket: None,
    };
    let output = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        if let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(r) {
            let _ = rx.take(64 * 1024).read_to_end(&mut buf).await;
        }
        buf
    });
    let timeout = c.config.hook_timeout;
    let result = tokio::time::timeout(timeout, c.runtime.exec(&c.id, &opts, io)).await;
    if result.is_err() {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    for f in [&process_json, &pid_file, &log_file] {
        let _ = std::fs::remove_file(f);
    }
    let out = || async {
        let out = tokio::time::timeout(Duration::from_secs(1), output)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        String::from_utf8_lossy(&out).trim().to_string()
    };
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(HookError::Failed {
            source,
            output: out().await,
        }),
        Err(_) => Err(HookError::TimedOut(timeout, out().await)),
    }
}
