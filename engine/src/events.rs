//! What the engine tells the outside world, through one seam: the shim turns these into
//! containerd events, tests collect them in memory.
//!
//! `emit` must not block: the engine calls it at the moment something happened, often
//! with a transition just made. A sink that talks to a daemon queues and sends later
//! (the shim publishes with a deadline, in order, outside every lock).

use std::sync::Mutex;
use std::time::SystemTime;

/// What woke a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A new connection on a held listener, or data on a held connection.
    Connection,
    /// An exec into the container.
    Exec,
    /// A signal other than SIGKILL, meant for the app.
    Signal,
    /// `docker pause` (a checkpoint cannot be frozen).
    Pause,
    /// A checkpoint asked of containerd (`ctr c checkpoint`, `docker checkpoint`).
    Checkpoint,
    /// `lightwhale wake`.
    Request,
    /// Another container of its pod woke.
    Pod,
    /// A dozing task about to be checkpointed (thaws only).
    Sleep,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Connection => "connection",
            Trigger::Exec => "exec",
            Trigger::Signal => "signal",
            Trigger::Pause => "pause",
            Trigger::Checkpoint => "checkpoint",
            Trigger::Request => "request",
            Trigger::Pod => "pod",
            Trigger::Sleep => "sleep",
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The entrypoint started.
    Started {
        id: String,
        pid: i32,
    },
    ExecAdded {
        id: String,
        exec_id: String,
    },
    ExecStarted {
        id: String,
        exec_id: String,
        pid: i32,
    },
    /// A process ended for good; `exec_id` is empty for the container's init.
    Exited {
        id: String,
        exec_id: String,
        pid: i32,
        status: u32,
        at: SystemTime,
    },
    /// The kernel's OOM killer struck in the container (sent before its exit).
    Oom {
        id: String,
    },
    Paused {
        id: String,
    },
    Resumed {
        id: String,
    },
    /// Images were written: by a sleep (`images` is the checkpoint) or on request.
    Checkpointed {
        id: String,
        images: String,
    },
    /// The container is asleep: no process, its memory given back.
    Asleep {
        id: String,
        took_ms: u64,
        pages_bytes: u64,
    },
    /// The container runs again after a sleep.
    Awake {
        id: String,
        trigger: Trigger,
        took_ms: u64,
        lazy: bool,
    },
    /// The container dozes: frozen, its memory paged out (`rss_*`: its resident memory
    /// before and after).
    Dozing {
        id: String,
        took_ms: u64,
        rss_before: u64,
        rss_after: u64,
    },
    /// A dozing container runs again.
    Thawed {
        id: String,
        trigger: Trigger,
        /// The trigger to the task running again, in microseconds.
        took_us: u64,
    },
    /// A sleep was attempted and did not happen; the container runs on.
    SleepFailed {
        id: String,
        reason: String,
    },
    /// A wake failed; the container was ended with an error status.
    WakeFailed {
        id: String,
        reason: String,
    },
    /// The container was deleted.
    Deleted {
        id: String,
        pid: i32,
        status: u32,
        at: SystemTime,
    },
}

impl Event {
    pub fn container_id(&self) -> &str {
        match self {
            Event::Started { id, .. }
            | Event::ExecAdded { id, .. }
            | Event::ExecStarted { id, .. }
            | Event::Exited { id, .. }
            | Event::Oom { id }
            | Event::Paused { id }
            | Event::Resumed { id }
            | Event::Checkpointed { id, .. }
            | Event::Asleep { id, .. }
            | Event::Awake { id, .. }
            | Event::Dozing { id, .. }
            | Event::Thawed { id, .. }
            | Event::SleepFailed { id, .. }
            | Event::WakeFailed { id, .. }
            | Event::Deleted { id, .. } => id,
        }
    }
}

pub trait EventSink: Send + Sync {
    /// Takes an event; must return at once.
    fn emit(&self, event: Event);
}

/// Keeps every event, in order: for tests, and for anyone who wants to look back.
#[derive(Default)]
pub struct MemorySink {
    events: Mutex<Vec<Event>>,
}

impl MemorySink {
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes the events recorded so far, leaving none.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The events matching `f`, in order.
    pub fn matching(&self, f: impl Fn(&Event) -> bool) -> Vec<Event> {
        self.events().into_iter().filter(|e| f(e)).collect()
    }
}

impl EventSink for MemorySink {
    fn emit(&self, event: Event) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
    }
}
