//! The sockets the shim holds while a task sleeps, and the watch on them that wakes it;
//! and what a doze holds (the freezer it thaws, the same watch).
//!
//! Listening sockets keep completing handshakes into their queues while no process of
//! the task exists; held established connections keep their peers from seeing a close.
//! A new connection on a listener, or data on a held connection, makes one readable.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::freezer::{FreezeError, Freezer};
use crate::sockets;

pub struct Held {
    /// Listeners (with SO_REUSEPORT) and their ports.
    listeners: Vec<(u16, OwnedFd)>,
    /// Established connections of the task, held so that the dump's end (the task is
    /// killed) closes nothing: no RST reaches a client whose request was in flight.
    conns: Vec<OwnedFd>,
    watcher: Option<JoinHandle<()>>,
    /// A sleeping pod's probe answerer (see `probes`).
    responder: Option<crate::probes::Responder>,
}

impl Held {
    pub fn new(listeners: Vec<(u16, OwnedFd)>, conns: Vec<OwnedFd>) -> Held {
        Held {
            listeners,
            conns,
            watcher: None,
            responder: None,
        }
    }

    /// Adds connections to hold (and watch, if the watch starts after).
    pub fn add_conns(&mut self, conns: Vec<OwnedFd>) {
        self.conns.extend(conns);
    }

    /// The held listeners, with their ports.
    pub fn listeners(&self) -> Vec<(u16, &OwnedFd)> {
        self.listeners.iter().map(|(p, fd)| (*p, fd)).collect()
    }

    pub fn set_responder(&mut self, r: crate::probes::Responder) {
        self.responder = Some(r);
    }

    /// Stops answering probes (a wake begins); see `probes::Responder::stop`.
    pub fn stop_responder(&mut self) {
        if let Some(r) = self.responder.as_mut() {
            r.stop();
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        self.listeners.iter().map(|(p, _)| *p).collect()
    }

    /// Calls `on_ready` (once, with the moment it was seen) when any held socket turns
    /// readable. The watch ends when `self` is dropped.
    pub fn watch(&mut self, on_ready: impl FnOnce(Instant) + Send + 'static) {
        self.watcher = Some(self.on_readable(on_ready));
    }

    /// As [`Held::watch`], but the watch is the caller's: it ends when the handle is
    /// aborted (a sleep's dump watches this way before the wake's watch begins).
    pub fn on_readable(&self, on_ready: impl FnOnce(Instant) + Send + 'static) -> JoinHandle<()> {
        let fds: Vec<OwnedFd> = self
            .listeners
            .iter()
            .map(|(_, fd)| fd)
            .chain(self.conns.iter())
            .filter_map(|fd| fd.try_clone().ok())
            .collect();
        tokio::spawn(async move {
            let mut registered = Vec::new();
            for fd in fds {
                // SAFETY: the AsyncFd owns this duplicate outright; it stays open and
                // registered until the AsyncFd is dropped with this task.
                match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
                    Ok(a) => registered.push(a),
                    Err(e) => warn!("watch held socket: {e}"),
                }
            }
            if registered.is_empty() {
                return;
            }
            let ready = registered.iter().map(|a| Box::pin(a.readable()));
            // The first readable socket wins; the others stay queued for the task.
            let _ = futures_select_all(ready).await;
            on_ready(Instant::now());
        })
    }

    /// Lets go of the held connections without a FIN or RST, right before CRIU restores
    /// them (their 4-tuples must be free again).
    pub fn release_conns(&mut self) {
        for fd in std::mem::take(&mut self.conns) {
            if let Err(e) = sockets::set_repair(&fd) {
                warn!("{e}");
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Whoever drops the held sockets has decided the task's fate: no wake from here.
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        // The probe listeners go before the held ones: what is queued on them moves on.
        drop(self.responder.take());
    }
}

/// A doze in force: what thawing it needs.
pub struct DozeHold {
    pub(crate) freezer: Freezer,
    /// The watch on the task's sockets (set once the task is frozen).
    pub(crate) held: Option<Held>,
    /// Set by the thaw: a page-out under way stops.
    pub(crate) cancel: Arc<AtomicBool>,
}

impl DozeHold {
    /// Lets the task run again (the watch goes with the hold).
    pub fn release(self) -> Result<(), FreezeError> {
        self.cancel.store(true, Ordering::Relaxed);
        self.freezer.thaw()
    }
}

/// Resolves with the first of `futures` to complete.
async fn futures_select_all<F: std::future::Future + Unpin>(futures: impl Iterator<Item = F>) {
    let mut futures: Vec<F> = futures.collect();
    std::future::poll_fn(move |cx| {
        for f in futures.iter_mut() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}
