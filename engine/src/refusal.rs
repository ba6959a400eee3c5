//! Why a container did not go to sleep although asked or idle: each reason, and how
//! `lightwhale` shows it (`NotSleeping`).

use lightwhale_status::NotSleeping;

use crate::cancel::CancelPoint;
use crate::events::Trigger;
use crate::state::State;

/// Why a container did not go to sleep although asked (or idle). Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("sleep is off for this container")]
    Disabled,
    #[error("it uses the host's network namespace: a wake there would reset the first connection")]
    HostNetwork,
    #[error("it is its pod's sandbox container, which holds the pod's network namespace")]
    PodSandbox,
    #[error("the container is {0}")]
    NotAwake(State),
    #[error("tasks with a terminal do not sleep")]
    Terminal,
    #[error("an exec is running")]
    ExecRunning,
    #[error("pages of the last lazy wake are still being filled")]
    FillRunning,
    #[error("it was sent a stop signal and is in its grace period")]
    Stopping,
    #[error("no listening TCP socket to wake on")]
    NoListener,
    #[error("only UDP sockets listen (ports {0:?}): lightwhale wakes on TCP connections")]
    UdpOnly(Vec<u16>),
    #[error("nothing listens on the ports lightwhale.io/ports names ({0:?})")]
    PortsNotListening(Vec<u16>),
    #[error("no process of the task holds its listening sockets")]
    NoHolder,
    #[error("a request is in flight")]
    InFlight,
    #[error("CRIU cannot dump it on this host: {0}")]
    CannotDump(String),
    #[error(
        "its checkpoint (~{needed} bytes) would exceed the node's image budget ({used} of {budget} bytes used)"
    )]
    DiskBudget { needed: u64, used: u64, budget: u64 },
    /// A request came during the dump and the sleep was called off (see `cancel`); the
    /// task serves on. `waited_ms`: from the request to the thaw.
    #[error(
        "a {} came during the dump: the sleep was called off ({}, {waited_ms} ms after it came)",
        by.as_str(),
        at.as_str()
    )]
    Cancelled {
        by: Trigger,
        at: CancelPoint,
        waited_ms: u64,
    },
}

impl Refusal {
    /// The reason `lightwhale` shows for it; None for a passing state (a transition).
    pub fn not_sleeping(&self) -> Option<NotSleeping> {
        Some(match self {
            Refusal::Disabled => NotSleeping::Disabled,
            Refusal::HostNetwork => NotSleeping::HostNetwork,
            Refusal::PodSandbox => NotSleeping::PodSandbox,
            Refusal::NotAwake(State::Paused) => NotSleeping::Paused,
            Refusal::NotAwake(_) => return None,
            Refusal::Terminal => NotSleeping::Terminal,
            Refusal::ExecRunning => NotSleeping::ExecRunning,
            Refusal::FillRunning => NotSleeping::FillRunning,
            Refusal::Stopping => NotSleeping::Stopping,
            Refusal::NoListener | Refusal::NoHolder => NotSleeping::NoListener,
            Refusal::UdpOnly(ports) => NotSleeping::UdpOnly {
                ports: ports.clone(),
            },
            Refusal::PortsNotListening(ports) => NotSleeping::PortsNotListening {
                ports: ports.clone(),
            },
            Refusal::InFlight => NotSleeping::InFlight,
            Refusal::CannotDump(detail) => NotSleeping::CannotDump {
                detail: detail.clone(),
            },
            Refusal::DiskBudget {
                needed,
                used,
                budget,
            } => NotSleeping::DiskBudget {
                needed_bytes: *needed,
                used_bytes: *used,
                budget_bytes: *budget,
            },
            Refusal::Cancelled { by, at, waited_ms } => NotSleeping::Cancelled {
                by: by.as_str().to_string(),
                at: at.as_str().to_string(),
                waited_ms: *waited_ms,
            },
        })
    }
}
