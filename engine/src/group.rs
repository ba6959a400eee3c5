//! Containers that sleep and wake as one: a Kubernetes pod's app containers, which share
//! a network namespace (containerd's CRI runs them under one shim). A pod sleeps once all
//! its app containers are idle and wakes whole on the first connection to any of them:
//! a service and the sidecar it calls (or that calls it) come back together.
//!
//! The group only knows its members (of any type: the container module names it, so
//! that this one depends on nothing); the policy lives in `monitor` (when every member is
//! idle) and `wake` (waking the others), through [`Group::others`].

use std::sync::{Arc, Mutex, Weak};

pub struct Group<M> {
    /// The pod's sandbox id.
    pub key: String,
    members: Mutex<Vec<Weak<M>>>,
}

impl<M> Group<M> {
    pub fn new(key: &str) -> Arc<Group<M>> {
        Arc::new(Group {
            key: key.to_string(),
            members: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn join(&self, c: &Arc<M>) {
        let mut m = self.members.lock().unwrap_or_else(|p| p.into_inner());
        // Deleted members go: their containers are dropped with them.
        m.retain(|w| w.strong_count() > 0);
        m.push(Arc::downgrade(c));
    }

    /// The other live members of the group, in the order they joined.
    pub fn others(&self, of: &M) -> Vec<Arc<M>> {
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| !std::ptr::eq(Arc::as_ptr(c), of))
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
