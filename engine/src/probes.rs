//! Kubelet probes of a sleeping pod, answered without waking it.
//!
//! While a pod sleeps, beside each listener the shim holds (H) it opens a listener of its
//! own (P) in the same reuseport group, and attaches a classic BPF program to the group
//! that sends new connections from the node's address to P and every other one to H
//! ([`crate::bpf::steer_by_source`]). Connections on H wake the pod as before. Connections
//! on P are read:
//!
//! - closed without a byte (a TCP probe): the handshake was the answer;
//! - an HTTP request with `User-Agent: kube-probe/...` whose answer is known: answered
//!   with the bytes the app last gave that request (refreshed by replaying it to the app
//!   right before each sleep), so a pod failing its probe keeps failing it;
//! - anything else (a client from the node's address: NodePort traffic after SNAT, a
//!   host-network client, or a probe never answered yet): the pod is woken and the
//!   connection is relayed to the app with its bytes intact. The app sees it come from
//!   the pod's loopback. Such a probe's answer is learned on the way.
//!
//! When the pod wakes, the program is detached and P closed before H: connections still
//! queued on P move to the restored listener (`tcp_migrate_req`) like H's.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::podnet::{is_probe, probe_key, ProbeRequest};
use crate::{bpf, netns, Error, Result};

/// The most probes remembered per pod (a pod has a few: liveness, readiness, startup).
const MAX_PROBES: usize = 16;
/// The largest answer kept (the kubelet reads at most 10 KiB of a body).
const MAX_ANSWER: usize = 64 << 10;
/// How long the shim waits for a node client's first bytes before taking it for a real
/// client of a protocol in which the server speaks first.
const FIRST_BYTES: Duration = Duration::from_millis(500);
/// How long a replay to the app may take.
const REPLAY: Duration = Duration::from_secs(2);

type Key = (u16, Vec<u8>);

/// What is known of a pod's probes: each request seen, and the answer the app last gave.
#[derive(Default)]
pub struct ProbeBook {
    entries: HashMap<Key, (Vec<u8>, Option<Vec<u8>>)>,
    /// Probes answered by the shim while the pod slept.
    pub answered: u64,
}

impl ProbeBook {
    /// Remembers a probe request seen on the wire (while awake, or while relaying one).
    pub fn learn(&mut self, r: ProbeRequest) {
        let key = r.key();
        if self.entries.contains_key(&key) || self.entries.len() < MAX_PROBES {
            let answer = self.entries.remove(&key).and_then(|(_, a)| a);
            self.entries.insert(key, (r.bytes, answer));
        }
    }

    pub fn answer(&self, port: u16, request: &[u8]) -> Option<&[u8]> {
        self.entries
            .get(&probe_key(port, request))
            .and_then(|(_, a)| a.as_deref())
    }

    fn set_answer(&mut self, key: Key, answer: Vec<u8>) {
        if let Some(e) = self.entries.get_mut(&key) {
            e.1 = Some(answer);
        }
    }

    fn requests(&self) -> Vec<(Key, Vec<u8>)> {
        self.entries
            .iter()
            .map(|(k, (r, _))| (k.clone(), r.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

pub type Book = Arc<Mutex<ProbeBook>>;

fn lock(book: &Book) -> std::sync::MutexGuard<'_, ProbeBook> {
    book.lock().unwrap_or_else(|p| p.into_inner())
}

/// A TCP connection to `port` on the pod's loopback, made from inside its namespace.
async fn connect_in(netns: &Path, port: u16) -> Result<TcpStream> {
    let sock = netns::in_netns(netns, || {
        nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC | nix::sys::socket::SockFlag::SOCK_NONBLOCK,
            None,
        )
    })?
    .map_err(|e| Error::sys("socket in the pod's namespace", e))?;
    let std_sock = std::net::TcpStream::from(sock);
    let s = tokio::net::TcpSocket::from_std_stream(std_sock);
    s.connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .map_err(|e| {
            Error::io(
                "connect to the app on port",
                PathBuf::from(port.to_string()),
                e,
            )
        })
}

/// Replays each known probe to the app and keeps its answers: done right before a sleep,
/// so that the answers given while it sleeps are the app's latest.
pub async fn refresh(book: &Book, netns: &Path) {
    let requests = lock(book).requests();
    for ((port, line), request) in requests {
        let got = tokio::time::timeout(REPLAY, async {
            let mut s = connect_in(netns, port).await?;
            s.write_all(&request).await.map_err(|e| {
                Error::io("replay a probe on port", PathBuf::from(port.to_string()), e)
            })?;
            let mut answer = Vec::new();
            (&mut s)
                .take(MAX_ANSWER as u64)
                .read_to_end(&mut answer)
                .await
                .map_err(|e| {
                    Error::io(
                        "read a probe's answer on port",
                        PathBuf::from(port.to_string()),
                        e,
                    )
                })?;
            Ok::<_, Error>(answer)
        })
        .await;
        match got {
            Ok(Ok(answer)) if !answer.is_empty() => lock(book).set_answer((port, line), answer),
            Ok(Ok(_)) => debug!(port, "a probe replay got no answer"),
            Ok(Err(e)) => debug!(port, "probe replay: {e}"),
            Err(_) => debug!(port, "probe replay timed out"),
        }
    }
}

/// Wakes the pod; true when it runs (or ran already).
pub type Waker = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// The shim's listeners beside the held ones, while the pod sleeps.
pub struct Responder {
    /// A duplicate of a held listener per group, to detach the program with.
    groups: Vec<OwnedFd>,
    accepts: Vec<JoinHandle<()>>,
}

impl Responder {
    /// Starts answering the node's connections to each of `held` (the listeners held for
    /// the sleeping pod, with their ports). `node`: the node's addresses.
    pub fn start(
        netns: &Path,
        held: &[(u16, &OwnedFd)],
        node: &[Ipv4Addr],
        book: Book,
        wake: Waker,
    ) -> Result<Responder> {
        let mut r = Responder {
            groups: Vec::new(),
            accepts: Vec::new(),
        };
        // One probe listener per distinct address:port (several held sockets may share
        // one group, e.g. workers with SO_REUSEPORT of their own).
        let mut groups: Vec<(SocketAddr, u32, &OwnedFd)> = Vec::new();
        for (_, fd) in held {
            let Some(addr) = crate::podnet::local_addr(fd) else {
                continue;
            };
            match groups.iter_mut().find(|(a, _, _)| *a == addr) {
                Some(g) => g.1 += 1,
                None => groups.push((addr, 1, fd)),
            }
        }
        for (addr, members, fd) in groups {
            let listener = netns::in_netns(netns, move || probe_listener(addr))?.map_err(|e| {
                Error::io(
                    "open a probe listener on",
                    PathBuf::from(addr.to_string()),
                    e,
                )
            })?;
            // The probe listener joined last: its index is the count before it.
            let program = bpf::steer_by_source(node, members, 0);
            bpf::attach_reuseport(listener.as_fd(), &program)?;
            r.groups.push(
                fd.try_clone()
                    .map_err(|e| Error::io("duplicate", PathBuf::from(addr.to_string()), e))?,
            );
            let std_listener = std::net::TcpListener::from(listener);
            let tokio_listener = tokio::net::TcpListener::from_std(std_listener).map_err(|e| {
                Error::io(
                    "watch the probe listener on",
                    PathBuf::from(addr.to_string()),
                    e,
                )
            })?;
            let (book, wake, netns) = (book.clone(), wake.clone(), netns.to_path_buf());
            r.accepts.push(tokio::spawn(async move {
                while let Ok((stream, peer)) = tokio_listener.accept().await {
                    debug!(%peer, port = addr.port(), "a node connection while asleep");
                    tokio::spawn(serve(
                        stream,
                        addr.port(),
                        book.clone(),
                        wake.clone(),
                        netns.clone(),
                    ));
                }
            }));
        }
        Ok(r)
    }

    /// Stops taking connections (at the start of a wake): the program is detached and the
    /// probe listeners closed; what was queued on them moves to the held listeners, and
    /// from there to the restored ones. Connections taken already are served through.
    pub fn stop(&mut self) {
        for g in &self.groups {
            if let Err(e) = bpf::detach_reuseport(g.as_fd()) {
                warn!("{e}");
            }
        }
        for a in self.accepts.drain(..) {
            a.abort();
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A listener bound like `addr`, in the reuseport group there (made inside the pod's
/// namespace by the caller).
fn probe_listener(addr: SocketAddr) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{self as s, sockopt};
    let family = match addr {
        SocketAddr::V4(_) => s::AddressFamily::Inet,
        SocketAddr::V6(_) => s::AddressFamily::Inet6,
    };
    let fd = s::socket(
        family,
        s::SockType::Stream,
        s::SockFlag::SOCK_CLOEXEC | s::SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    s::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    s::setsockopt(&fd, sockopt::ReusePort, &true)?;
    match addr {
        SocketAddr::V4(a) => s::bind(fd.as_raw_fd(), &s::SockaddrIn::from(a))?,
        SocketAddr::V6(a) => {
            // A dual-stack [::] listener's group takes only dual-stack members.
            s::setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
            s::bind(fd.as_raw_fd(), &s::SockaddrIn6::from(a))?
        }
    }
    s::listen(&fd, s::Backlog::new(128).map_err(std::io::Error::from)?)?;
    Ok(fd)
}

/// One connection from the node while the pod sleeps (see the module's description).
async fn serve(mut stream: TcpStream, port: u16, book: Book, wake: Waker, netns: PathBuf) {
    let mut first = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + FIRST_BYTES;
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => {
                first.extend_from_slice(&buf[..n]);
                if first.windows(4).any(|w| w == b"\r\n\r\n") || first.len() >= 8192 {
                    break false;
                }
            }
            Err(_) => break false,
        }
    };
    if closed && first.is_empty() {
        // A TCP probe: connected, and that was all it asked.
        lock(&book).answered += 1;
        return;
    }
    let probe = is_probe(&first);
    if probe {
        let known = lock(&book).answer(port, &first).map(<[u8]>::to_vec);
        if let Some(answer) = known {
            if stream.write_all(&answer).await.is_ok() {
                let _ = stream.shutdown().await;
                lock(&book).answered += 1;
            }
            return;
        }
        lock(&book).learn(ProbeRequest {
            port,
            bytes: first.clone(),
        });
    }
    // A real client (or a probe not answered yet): wake the pod and relay.
    if !wake().await {
        return;
    }
    let learn = probe.then(|| probe_key(port, &first));
    if let Err(e) = relay(stream, first, port, &netns, learn, &book).await {
        debug!(port, "relay: {e}");
    }
}

/// Relays a connection the shim accepted to the woken app, its first bytes first; with
/// `learn`, keeps the app's answer as that probe's.
async fn relay(
    client: TcpStream,
    first: Vec<u8>,
    port: u16,
    netns: &Path,
    learn: Option<Key>,
    book: &Book,
) -> Result<()> {
    // The restored app may take a moment to listen again after the hand-over.
    let mut app = None;
    for _ in 0..50 {
        match connect_in(netns, port).await {
            Ok(s) => {
                app = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let Some(app) = app else {
        return Err(Error::io(
            "connect to the woken app on port",
            PathBuf::from(port.to_string()),
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ));
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut ar, mut aw) = app.into_split();
    let upstream = async move {
        aw.write_all(&first).await?;
        tokio::io::copy(&mut cr, &mut aw).await?;
        aw.shutdown().await
    };
    let book = book.clone();
    let downstream = async move {
        let mut kept = Vec::new();
        let mut buf = [0u8; 16 << 10];
        loop {
            let n = ar.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if learn.is_some() && kept.len() < MAX_ANSWER {
                kept.extend_from_slice(&buf[..n.min(MAX_ANSWER - kept.len())]);
            }
            cw.write_all(&buf[..n]).await?;
        }
        if let Some(key) = learn {
            lock(&book).set_answer(key, kept);
        }
        cw.shutdown().await
    };
    let (up, down) = tokio::join!(upstream, downstream);
    up.and(down)
        .map_err(|e| Error::io("relay on port", PathBuf::from(port.to_string()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_book_keeps_requests_and_answers_by_port_and_line() {
        let mut b = ProbeBook::default();
        let req =
            b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.5:8080\r\nUser-Agent: kube-probe/1.30\r\n\r\n"
                .to_vec();
        b.learn(ProbeRequest {
            port: 8080,
            bytes: req.clone(),
        });
        assert_eq!(b.answer(8080, &req), None, "learned, not answered yet");
        b.set_answer(probe_key(8080, &req), b"HTTP/1.1 503 x\r\n\r\n".to_vec());
        assert_eq!(b.answer(8080, &req), Some(&b"HTTP/1.1 503 x\r\n\r\n"[..]));
        assert_eq!(b.answer(8081, &req), None, "another port is another probe");
        // Seen again: its answer is kept until refreshed.
        b.learn(ProbeRequest {
            port: 8080,
            bytes: req.clone(),
        });
        assert!(b.answer(8080, &req).is_some());
        for i in 0..40 {
            b.learn(ProbeRequest {
                port: 9000 + i,
                bytes: req.clone(),
            });
        }
        assert_eq!(b.len(), MAX_PROBES, "bounded");
    }
}
