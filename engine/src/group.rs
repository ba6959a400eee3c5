//! Containers that sleep and wake as one: a Kubernetes pod's app containers, which share
//! a network namespace (containerd's CRI runs them under one shim). A pod sleeps once all
//! its app containers are idle and wakes whole on the first connection to any of them:
//! a service and the sidecar it calls (or that calls it) come back together.
//!
//! The group only knows its members; the policy lives in `monitor` (when every member is
//! idle) and `wake` (waking the others), through [`Group::others`].

use std::sync::{Arc, Mutex, Weak};

use crate::container::Container;
use crate::events::Trigger;

pub struct Group {
    /// The pod's sandbox id.
    pub key: String,
    members: Mutex<Vec<Weak<Container>>>,
}

impl Group {
    pub fn new(key: &str) -> Arc<Group> {
        Arc::new(Group {
            key: key.to_string(),
            members: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn join(&self, c: &Arc<Container>) {
        let mut m = self.members.lock().unwrap_or_else(|p| p.into_inner());
        // Deleted members go: their containers are dropped with them.
        m.retain(|w| w.strong_count() > 0);
        m.push(Arc::downgrade(c));
    }

    /// The other live members of the group, in the order they joined.
    pub fn others(&self, of: &Container) -> Vec<Arc<Container>> {
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| !std::ptr::eq(Arc::as_ptr(c), of) && !c.is_deleted())
            .collect()
    }

    /// How many live members the group has.
    pub fn len(&self) -> usize {
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Wakes, in the background, the members of `g` other than `woke` that sleep.
///
/// A plain function rather than code inside the wake: a wake that spawned wakes would be
/// a future containing itself, whose `Send` the compiler cannot settle.
pub(crate) fn wake_others(g: &Group, woke: &Container) {
    for other in g.others(woke) {
        if other.is_asleep() {
            tokio::spawn(async move {
                if let Err(e) = other.wake(Trigger::Pod).await {
                    tracing::warn!(id = %other.id, "woken with its pod: {e}");
                }
            });
        }
    }
}
