use std::path::PathBuf;

/// Errors of the engine. Each says what was being done, so a message that reaches
/// `docker run` is enough to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("runc {op} failed (exit status {status}): {message}")]
    Runc {
        op: &'static str,
        status: i32,
        message: String,
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
    #[error("bundle {path}: {message}")]
    Bundle { path: PathBuf, message: String },
    #[error("invalid JSON from {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("network namespace {path}: {message}")]
    Netns { path: PathBuf, message: String },
    #[error("criu lazy-pages {message}\n--- lazy-pages.log (tail) ---\n{log_tail}")]
    LazyPages { message: String, log_tail: String },
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
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
}
