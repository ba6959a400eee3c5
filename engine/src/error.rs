use std::path::PathBuf;

/// Errors of the engine's mechanisms (runtime calls, files, sockets). Each says what was
/// being done, so a message that reaches `docker run` is enough to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{runtime} {op} failed (exit status {status}): {message}")]
    Runtime {
        runtime: String,
        op: &'static str,
        status: i32,
        /// The runtime's own words (the last error line of its log).
        message: String,
        kind: RuntimeErrorKind,
    },
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid OCI spec: {source}")]
    Spec {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: not a valid OCI spec: the top level is not an object")]
    SpecNotObject { path: PathBuf },
    #[error("stdio {uri:?}: {reason}")]
    StdioUri { uri: String, reason: &'static str },
    #[error("invalid JSON from {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("network namespace {path}: cannot {what}: {source}")]
    Netns {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("criu lazy-pages {why}\n--- lazy-pages.log (tail) ---\n{log_tail}")]
    LazyPages { why: LazyFailure, log_tail: String },
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error(transparent)]
    Freeze(#[from] crate::freezer::FreezeError),
}

/// What a failed runtime call means for the caller, decided once by the driver that
/// knows the runtime's words (see `runc::classify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeErrorKind {
    /// The runtime has no such container.
    NotFound,
    /// The container exists but its process has stopped.
    NotRunning,
    Other,
}

/// Why a `criu lazy-pages` daemon could not serve a restore.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LazyFailure {
    #[error("exited before it was ready")]
    ExitedEarly,
    #[error("exited with status {0} before it was ready")]
    ExitedWith(i32),
    #[error("was not ready within {0:?}")]
    NotReady(std::time::Duration),
    #[error("readiness could not be awaited")]
    ReadinessLost,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sys(what: &'static str, source: nix::Error) -> Self {
        Error::Sys { what, source }
    }

    /// How a runtime call failed; `Other` for every error that is not a runtime's.
    pub fn runtime_kind(&self) -> RuntimeErrorKind {
        match self {
            Error::Runtime { kind, .. } => *kind,
            _ => RuntimeErrorKind::Other,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.runtime_kind() == RuntimeErrorKind::NotFound
    }

    pub fn is_not_running(&self) -> bool {
        self.runtime_kind() == RuntimeErrorKind::NotRunning
    }
}
