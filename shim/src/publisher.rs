//! The engine's events, published to containerd in order, outside every lock, each with
//! a deadline: a stalled containerd delays its own events, never a wake.
//!
//! Besides containerd's task events, lightwhale's own go out under `/lightwhale/container/`
//! (`asleep`, `awake`, `sleep-failed`, `wake-failed`). Their payload is containerd's
//! `ContainerUpdate` (the container's id, lightwhale's fields as `lightwhale.io/...`
//! labels): a type every containerd client can decode, so `ctr events` shows them (it
//! skips types it does not know, and cannot know ours).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim_protos::events::container::ContainerUpdate;
use containerd_shim_protos::events::task::{
    TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM,
    TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::context::Context;
use lightwhale_engine::events::{Event, EventSink};
use tokio::sync::Notify;
use tracing::warn;

/// How long one event may take to reach containerd's queue before it is dropped.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(5);
/// Events kept while containerd is unreachable; the oldest go first beyond this.
const QUEUE_LIMIT: usize = 4096;

pub enum Queued {
    Engine(Event),
    /// TaskCreate carries the client's request (rootfs mounts), which only the shim has.
    Create(TaskCreate),
}

pub struct EventQueue {
    items: Mutex<VecDeque<Queued>>,
    ready: Notify,
}

impl EventQueue {
    pub fn push(&self, item: Queued) {
        let mut q = self.items.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= QUEUE_LIMIT {
            q.pop_front();
            warn!("event queue full: the oldest event was dropped");
        }
        q.push_back(item);
        drop(q);
        self.ready.notify_one();
    }

    fn pop(&self) -> Option<Queued> {
        self.items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }
}

impl EventSink for EventQueue {
    fn emit(&self, event: Event) {
        self.push(Queued::Engine(event));
    }
}

/// Starts the task that drains the queue into containerd's event service.
pub fn start(publisher: RemotePublisher, namespace: String) -> Arc<EventQueue> {
    let queue = Arc::new(EventQueue {
        items: Mutex::new(VecDeque::new()),
        ready: Notify::new(),
    });
    let q = queue.clone();
    tokio::spawn(async move {
        loop {
            q.ready.notified().await;
            while let Some(item) = q.pop() {
                if let Queued::Engine(Event::Asleep { .. }) = &item {
                    trim_heap();
                }
                let Some((topic, message)) = to_containerd(item) else {
                    continue;
                };
                let sent = tokio::time::timeout(
                    PUBLISH_DEADLINE,
                    publisher.publish(Context::default(), topic, &namespace, message),
                )
                .await;
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!("publish {topic}: {e}"),
                    Err(_) => warn!("publish {topic}: no answer within {PUBLISH_DEADLINE:?}"),
                }
            }
        }
    });
    queue
}

/// A sleeping container's cost is mostly its shim: give back what the dump's
/// bookkeeping left free in the heap rather than keep it resident all night.
fn trim_heap() {
    // SAFETY: malloc_trim only returns free heap memory to the kernel; it is thread-safe
    // and touches no allocation in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn ts(t: SystemTime) -> MessageField<Timestamp> {
    MessageField::some(Timestamp::from(t))
}

/// The containerd event for an engine event; None for lightwhale's own events, which
/// containerd's task topics have no place for.
fn to_containerd(item: Queued) -> Option<(&'static str, Box<dyn MessageDyn>)> {
    let event = match item {
        Queued::Create(c) => return Some((topics::TASK_CREATE_EVENT_TOPIC, Box::new(c))),
        Queued::Engine(e) => e,
    };
    Some(match event {
        Event::Started { id, pid } => (
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: id,
                pid: pid as u32,
                ..Default::default()
            }),
        ),
        Event::ExecAdded { id, exec_id } => (
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: id,
                exec_id,
                ..Default::default()
            }),
        ),
        Event::ExecStarted { id, exec_id, pid } => (
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: id,
                exec_id,
                pid: pid as u32,
                ..Default::default()
            }),
        ),
        Event::Exited {
            id,
            exec_id,
            pid,
            status,
            at,
        } => (
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                id: if exec_id.is_empty() {
                    id.clone()
                } else {
                    exec_id
                },
                container_id: id,
                pid: pid as u32,
                exit_status: status,
                exited_at: ts(at),
                ..Default::default()
            }),
        ),
        Event::Oom { id } => (
            topics::TASK_OOM_EVENT_TOPIC,
            Box::new(TaskOOM {
                container_id: id,
                ..Default::default()
            }),
        ),
        Event::Paused { id } => (
            topics::TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused {
                container_id: id,
                ..Default::default()
            }),
        ),
        Event::Resumed { id } => (
            topics::TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed {
                container_id: id,
                ..Default::default()
            }),
        ),
        Event::Checkpointed { id, images } => (
            topics::TASK_CHECKPOINTED_EVENT_TOPIC,
            Box::new(TaskCheckpointed {
                container_id: id,
                checkpoint: images,
                ..Default::default()
            }),
        ),
        Event::Deleted {
            id,
            pid,
            status,
            at,
        } => (
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                id: id.clone(),
                container_id: id,
                pid: pid as u32,
                exit_status: status,
                exited_at: ts(at),
                ..Default::default()
            }),
        ),
        Event::Asleep {
            id,
            took_ms,
            pages_bytes,
        } => lightwhale_event(
            "/lightwhale/container/asleep",
            id,
            &[
                ("took-ms", took_ms.to_string()),
                ("pages-bytes", pages_bytes.to_string()),
            ],
        ),
        Event::Awake {
            id,
            trigger,
            took_ms,
            lazy,
        } => lightwhale_event(
            "/lightwhale/container/awake",
            id,
            &[
                ("trigger", trigger.as_str().to_string()),
                ("took-ms", took_ms.to_string()),
                ("lazy", lazy.to_string()),
            ],
        ),
        Event::Dozing {
            id,
            took_ms,
            rss_before,
            rss_after,
        } => lightwhale_event(
            "/lightwhale/container/dozing",
            id,
            &[
                ("took-ms", took_ms.to_string()),
                ("rss-before-bytes", rss_before.to_string()),
                ("rss-after-bytes", rss_after.to_string()),
            ],
        ),
        Event::Thawed {
            id,
            trigger,
            took_us,
        } => lightwhale_event(
            "/lightwhale/container/thawed",
            id,
            &[
                ("trigger", trigger.as_str().to_string()),
                ("took-us", took_us.to_string()),
            ],
        ),
        Event::SleepFailed { id, reason } => lightwhale_event(
            "/lightwhale/container/sleep-failed",
            id,
            &[("reason", reason)],
        ),
        Event::WakeFailed { id, reason } => lightwhale_event(
            "/lightwhale/container/wake-failed",
            id,
            &[("reason", reason)],
        ),
    })
}

/// The most of a reason an event carries (a CRIU log tail can be long; `lightwhale
/// inspect` has all of it).
const REASON_MAX: usize = 1024;

fn lightwhale_event(
    topic: &'static str,
    id: String,
    fields: &[(&str, String)],
) -> (&'static str, Box<dyn MessageDyn>) {
    let mut labels = std::collections::HashMap::new();
    let event = topic.rsplit('/').next().unwrap_or(topic);
    labels.insert("lightwhale.io/event".to_string(), event.to_string());
    for (k, v) in fields {
        let v = match v.char_indices().nth(REASON_MAX) {
            Some((cut, _)) => format!("{}...", &v[..cut]),
            None => v.clone(),
        };
        labels.insert(format!("lightwhale.io/{k}"), v);
    }
    (
        topic,
        Box::new(ContainerUpdate {
            id,
            labels,
            ..Default::default()
        }),
    )
}
