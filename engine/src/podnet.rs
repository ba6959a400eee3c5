//! A pod's inbound traffic, with the kubelet's probes left out: what counts as activity
//! for a pod, and how the probes to answer while it sleeps are learned.
//!
//! The kubelet probes a pod from the node's own address every `periodSeconds`: counted
//! as traffic, the probes would keep every probed pod awake. Two packet sockets in the
//! pod's network namespace, with classic BPF filters ([`crate::bpf::tcp_payload`]):
//!
//! - **others**: inbound TCP segments carrying data from any address but the node's.
//!   Only counted (`PACKET_STATISTICS`), never read.
//! - **node**: the same from the node's address (probes, NodePort traffic after SNAT,
//!   host-network clients). Read: a segment whose data is an HTTP request with a
//!   `User-Agent: kube-probe/...` header is a probe (its request is kept, to be replayed
//!   before a sleep); any other is activity.
//!
//! Handshakes and closes carry no data, so TCP probes (connect, close) never count.
//! IPv4 only: a pod on IPv6 alone keeps the namespace's TCP counters (see `activity`).

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::bpf::{self, Sources};

use crate::{netns, Error, Result};

/// The header every kubelet HTTP probe carries (k8s `pkg/probe/http/request.go`).
pub const PROBE_AGENT: &[u8] = b"User-Agent: kube-probe/";

/// How much of a node segment is read: an HTTP probe request fits easily.
const SNAP: u32 = 2048;

/// A probe request seen on the wire: where it went and its bytes (the request as sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRequest {
    pub port: u16,
    pub bytes: Vec<u8>,
}

impl ProbeRequest {
    /// What identifies the probe: its port and request line (`GET /healthz HTTP/1.1`).
    pub fn key(&self) -> (u16, Vec<u8>) {
        probe_key(self.port, &self.bytes)
    }
}

/// A probe's identity: the port and the request's first line.
pub fn probe_key(port: u16, request: &[u8]) -> (u16, Vec<u8>) {
    let line = request
        .split(|b| *b == b'\n')
        .next()
        .unwrap_or_default()
        .strip_suffix(b"\r")
        .map(<[u8]>::to_vec)
        .unwrap_or_else(|| {
            request
                .split(|b| *b == b'\n')
                .next()
                .unwrap_or_default()
                .to_vec()
        });
    (port, line)
}

/// Whether `data` (the start of a connection's first bytes) is a kubelet HTTP probe.
pub fn is_probe(data: &[u8]) -> bool {
    data.windows(PROBE_AGENT.len())
        .any(|w| w.eq_ignore_ascii_case(PROBE_AGENT))
}

pub struct PodTraffic {
    others: OwnedFd,
    node: OwnedFd,
}

/// What one look at the pod's traffic found.
#[derive(Debug, Default)]
pub struct Seen {
    /// Data segments that count as activity.
    pub active: u64,
    /// Probe requests seen (not activity).
    pub probes: Vec<ProbeRequest>,
}

fn packet_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: socket() has no memory effects; the fd is owned right after.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            (libc::ETH_P_IP as u16).to_be() as libc::c_int,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

impl PodTraffic {
    /// Opens the two sockets in the network namespace at `netns`; `node` are the node's
    /// addresses as the pod sees them.
    pub fn open(netns: &Path, node: &[Ipv4Addr]) -> Result<PodTraffic> {
        let (others, node_fd) = netns::in_netns(netns, || (packet_socket(), packet_socket()))?;
        let sys = |what| {
            move |e: std::io::Error| Error::Io {
                what,
                path: netns.to_path_buf(),
                source: e,
            }
        };
        let others = others.map_err(sys("open a packet socket in"))?;
        let node_fd = node_fd.map_err(sys("open a packet socket in"))?;
        bpf::attach_filter(others.as_fd(), &bpf::tcp_payload(node, Sources::AllBut, 1))?;
        bpf::attach_filter(
            node_fd.as_fd(),
            &bpf::tcp_payload(node, Sources::Only, SNAP),
        )?;
        // Counted only: the smallest buffer; what overflows is counted as dropped, which
        // PACKET_STATISTICS adds to the packets.
        let small: libc::c_int = 0;
        // SAFETY: setsockopt reads `small`, which outlives the call, on a valid fd.
        unsafe {
            libc::setsockopt(
                others.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &small as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Ok(PodTraffic {
            others,
            node: node_fd,
        })
    }

    /// The traffic since the last look.
    pub fn take(&self) -> Seen {
        let mut seen = Seen {
            active: stats(&self.others),
            probes: Vec::new(),
        };
        let mut buf = vec![0u8; SNAP as usize];
        let mut read = 0u64;
        // Bounded: a busy node client must not keep the monitor reading.
        for _ in 0..256 {
            // SAFETY: recv writes at most buf.len() bytes into buf, which lives across it.
            let n = unsafe {
                libc::recv(
                    self.node.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n <= 0 {
                break;
            }
            read += 1;
            match tcp_data(&buf[..n as usize]) {
                Some((port, data)) if is_probe(data) => seen.probes.push(ProbeRequest {
                    port,
                    bytes: data.to_vec(),
                }),
                _ => seen.active += 1,
            }
        }
        // Segments left unread, or lost to a full buffer, were not probes we saw: activity.
        seen.active += stats(&self.node).saturating_sub(read);
        seen
    }
}

/// Packets that passed the filter since the last call, dropped ones included (the kernel
/// resets the counters on each read).
fn stats(fd: &OwnedFd) -> u64 {
    // tpacket_stats: tp_packets, tp_drops (u32 each).
    let mut st = [0u32; 2];
    let mut len = std::mem::size_of_val(&st) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `st`, which lives across it.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            6, /* PACKET_STATISTICS */
            st.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return 0;
    }
    u64::from(st[0])
}

/// (destination port, data) of an IPv4 TCP segment; None when it is not one.
pub fn tcp_data(packet: &[u8]) -> Option<(u16, &[u8])> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
    let tcp = packet.get(ihl..)?;
    let port = u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]);
    let thl = usize::from(tcp.get(12)? >> 4) * 4;
    let end = total.min(packet.len());
    Some((port, packet.get(ihl + thl..end)?))
}

/// The node's addresses as the pod at `netns` sees them: the gateways of its IPv4 routes
/// (a CNI bridge's gateway is the host's address on the bridge, the source of the
/// kubelet's probes). `extra` adds configured ones.
pub fn node_addresses(netns: &Path, extra: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
    let routes = netns::in_netns(netns, || {
        std::fs::read_to_string("/proc/thread-self/net/route").unwrap_or_default()
    })
    .unwrap_or_default();
    let mut out = gateways(&routes);
    for a in extra {
        if !out.contains(a) {
            out.push(*a);
        }
    }
    out
}

/// Gateways in `/proc/net/route` text (hex, little-endian per field).
fn gateways(routes: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for line in routes.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(gw) = f.get(2).and_then(|g| u32::from_str_radix(g, 16).ok()) else {
            continue;
        };
        if gw == 0 {
            continue;
        }
        let ip = Ipv4Addr::from(gw.to_le_bytes());
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// Reads what the listener socket is bound to (for a probe listener beside it).
pub fn local_addr(fd: &OwnedFd) -> Option<std::net::SocketAddr> {
    let addr: nix::sys::socket::SockaddrStorage =
        nix::sys::socket::getsockname(fd.as_raw_fd()).ok()?;
    if let Some(a) = addr.as_sockaddr_in() {
        return Some(std::net::SocketAddr::V4((*a).into()));
    }
    addr.as_sockaddr_in6()
        .map(|a| std::net::SocketAddr::V6((*a).into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100630A\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0000630A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
";

    #[test]
    fn the_gateway_is_read_from_the_route_table() {
        assert_eq!(gateways(ROUTES), vec![Ipv4Addr::new(10, 99, 0, 1)]);
        assert!(gateways("garbage\nx y").is_empty());
    }

    #[test]
    fn probes_are_told_from_requests() {
        let probe = b"GET /healthz HTTP/1.1\r\nHost: 10.99.0.5:8080\r\nUser-Agent: kube-probe/1.30\r\nAccept: */*\r\nConnection: close\r\n\r\n";
        assert!(is_probe(probe));
        assert!(!is_probe(
            b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/8\r\n\r\n"
        ));
        assert!(is_probe(
            b"GET / HTTP/1.1\r\nuser-agent: KUBE-PROBE/1.29+\r\n\r\n"
        ));
        assert_eq!(
            probe_key(8080, probe),
            (8080, b"GET /healthz HTTP/1.1".to_vec())
        );
    }

    #[test]
    fn tcp_data_is_found_in_a_segment() {
        // IPv4 (IHL 5), total 20 + 20 + 5, TCP to port 8080 with a 20-byte header.
        let mut p = vec![
            0x45, 0, 0, 45, 0, 0, 0, 0, 64, 6, 0, 0, 10, 99, 0, 1, 10, 99, 0, 5,
        ];
        let mut tcp = vec![0u8; 20];
        tcp[2..4].copy_from_slice(&8080u16.to_be_bytes());
        tcp[12] = 5 << 4;
        p.extend(tcp);
        p.extend(b"hello");
        assert_eq!(tcp_data(&p), Some((8080, &b"hello"[..])));
        assert_eq!(tcp_data(&p[..10]), None);
        assert_eq!(tcp_data(&[]), None);
    }
}
