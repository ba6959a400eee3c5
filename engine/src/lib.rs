//! The runtime engine of lightwhale: a container's whole life, sleep and wake included,
//! over two seams, and nothing of containerd.
//!
//! - [`runtime::OciRuntime`]: the OCI runtime (runc today, [`runc::Runc`]); a fake in tests.
//! - [`events::EventSink`]: where the engine reports what happened (the shim publishes
//!   to containerd; tests collect in memory).
//!
//! The state machine: [`state`] (every legal transition, one table), [`container`] (the
//! state and the one place it changes), then one module per concern that drives it:
//! [`lifecycle`] (create, start, kill, delete), [`exec`], [`sleep`], [`wake`], [`monitor`]
//! (when to sleep: policy, configured by [`config`]), [`group`] (a pod, which sleeps and
//! wakes as one), [`control`] (the CLI's socket).
//! Mechanisms they use: [`runc`] (driver), [`reaper`] (the one `waitpid`), [`stdio`],
//! [`netns`], [`sockets`] and [`hold`] (sockets held while asleep), [`lazy`] (post-copy
//! restore), [`slots`] (restores at once), [`podnet`], [`probes`] and [`bpf`] (a pod's
//! traffic without the kubelet's probes; probes answered while asleep), [`activity`],
//! [`cgroup`], [`spec`], [`bundle`], [`hooks`], [`privilege`].

pub mod activity;
pub mod bpf;
pub mod bundle;
pub mod cancel;
pub mod cgroup;
pub mod config;
pub mod container;
pub mod control;
pub mod doze;
pub mod error;
pub mod events;
pub mod exec;
pub mod export;
pub mod freezer;
pub mod group;
pub mod hold;
pub mod hooks;
pub mod lazy;
pub mod lifecycle;
pub mod monitor;
pub mod netns;
pub mod pageout;
pub mod pidfd;
pub mod podnet;
pub mod privilege;
pub mod probes;
pub mod process;
pub mod reaper;
pub mod refusal;
pub mod rootfs;
pub mod runc;
pub mod runtime;
pub mod sleep;
pub mod slots;
pub mod sockets;
pub mod spec;
pub mod state;
pub mod stdio;
pub mod template;
pub mod wake;

pub use container::{Container, Dirs};
pub use error::{Error, Result, RuntimeErrorKind};
pub use events::{Event, EventSink, MemorySink, Trigger};
pub use lifecycle::{ContainerError, CreateRequest, ErrorKind};
pub use sleep::{Refusal, SleepError};
pub use state::{State, Transition, TransitionError};
pub use wake::WakeError;
