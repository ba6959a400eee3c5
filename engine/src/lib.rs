//! The runtime engine of lightwhale.
//!
//! Everything here works on plain runc containers and knows nothing of containerd, so the
//! engine can be tested (and later driven by the sleep/wake machinery) without a daemon:
//! - [`runc`]: a driver for the runc binary, checkpoint and restore included.
//! - [`reaper`]: the one place that calls `waitpid`, so exits of runc commands and of
//!   container processes never race each other.
//! - [`stdio`]: pipes and consoles owned by the shim, copied to the client's fifos; they
//!   outlive a checkpoint because the shim, not the container, holds them.
//! - [`netns`]: network namespaces the shim creates and pins so they outlive the task.
//! - [`spec`]: the edits the shim makes to a bundle's `config.json`.
//! - [`lazy`]: the `criu lazy-pages` daemon of a post-copy restore.
//! - [`cgroup`]: the few cgroup reads the shim needs (OOM counters), v1 and v2.

pub mod activity;
pub mod cgroup;
pub mod error;
pub mod lazy;
pub mod netns;
pub mod privilege;
pub mod reaper;
pub mod runc;
pub mod sockets;
pub mod spec;
pub mod stdio;

pub use error::{Error, Result};
