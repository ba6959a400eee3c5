//! The listening sockets of a task, found and duplicated so the shim can hold them while
//! the task sleeps.
//!
//! While the shim holds a duplicate of a listening socket, the kernel keeps completing
//! handshakes into its accept queue even though every process of the task is gone: clients
//! connect and wait, nobody is refused. With `SO_REUSEPORT` set on the socket before the
//! dump, CRIU restores it with the flag and binds beside the held one, so both join one
//! reuseport group; when the shim then closes its duplicate, `tcp_migrate_req=1` moves the
//! queued connections to the restored socket.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::{Error, Result};

/// A TCP socket in LISTEN state, as the kernel's socket table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub inode: u64,
    pub port: u16,
    pub ipv6: bool,
}

const TCP_LISTEN: &str = "0A";

/// Parses `/proc/<pid>/net/tcp` or `tcp6` text into its listening sockets.
pub fn parse_tcp_table(text: &str, ipv6: bool) -> Vec<Listener> {
    parse_state(text, ipv6, TCP_LISTEN)
}

/// Puts a held connection into repair mode, so closing it sends neither FIN nor RST:
/// the restored copy of the connection takes over with the same sequence numbers.
pub fn set_repair(fd: &OwnedFd) -> Result<()> {
    const TCP_REPAIR: libc::c_int = 19;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `on` (a c_int that outlives the call) on an fd we own.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_REPAIR,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(Error::sys(
            "setsockopt(TCP_REPAIR)",
            nix::errno::Errno::last(),
        ));
    }
    Ok(())
}

const RECENT_MS: u32 = 1000;

/// True when the connection's last inbound data is newer than its last outbound data:
/// a request the app has read (or not yet) and not answered. Sleeping then would leave
/// the client waiting for an answer from a task nobody is going to wake.
pub fn awaiting_reply(fd: &OwnedFd) -> Result<bool> {
    let info = tcp_info(fd).map_err(|e| Error::sys("getsockopt(TCP_INFO)", e))?;
    // Both count milliseconds since the event; a connection that never carried data in
    // one direction reports its age there. A connection younger than a second, or with
    // data in the last second, is in the middle of something: its request may still be
    // on the way.
    Ok(info.tcpi_last_data_recv < info.tcpi_last_data_sent || info.tcpi_last_data_recv < RECENT_MS)
}

fn parse_state(text: &str, ipv6: bool, state: &str) -> Vec<Listener> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != state {
                return None;
            }
            let port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
            let inode = f[9].parse().ok()?;
            (inode != 0).then_some(Listener { inode, port, ipv6 })
        })
        .collect()
}

/// Local ports of the bound, unconnected UDP sockets in the network namespace of `pid`
/// (a UDP service): lightwhale wakes on TCP only, and says so.
pub fn udp_ports(pid: i32) -> Vec<u16> {
    const UDP_UNCONNECTED: &str = "07";
    let mut ports = Vec::new();
    for file in ["udp", "udp6"] {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) {
            for l in parse_state(&text, file == "udp6", UDP_UNCONNECTED) {
                if l.port != 0 && !ports.contains(&l.port) {
                    ports.push(l.port);
                }
            }
        }
    }
    ports
}

/// The TCP listeners in the network namespace of `pid`, v4 and v6, limited to `ports`
/// when that is not empty.
pub fn listeners(pid: i32, ports: &[u16]) -> Vec<Listener> {
    let mut out = Vec::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) {
            out.extend(parse_tcp_table(&text, v6));
        }
    }
    if !ports.is_empty() {
        out.retain(|l| ports.contains(&l.port));
    }
    out
}

/// Where each socket inode is open: (pid, fd) of the first holder found among `pids`.
pub fn socket_holders(pids: &[i32], inodes: &[u64]) -> HashMap<u64, (i32, RawFd)> {
    let mut found = HashMap::new();
    for &pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for entry in dir.flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) else {
                continue;
            };
            let Ok(inode) = inode.parse::<u64>() else {
                continue;
            };
            if !inodes.contains(&inode) || found.contains_key(&inode) {
                continue;
            }
            if let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                found.insert(inode, (pid, fd));
            }
        }
    }
    found
}

/// Duplicates fd `fd` of process `pid` into this process (`pidfd_getfd`, Linux >= 5.6).
pub fn dup_from(pid: i32, fd: RawFd) -> Result<OwnedFd> {
    let pidfd = crate::pidfd::open(pid).map_err(|e| Error::sys("pidfd_open", e))?;
    getfd(&pidfd, fd)
}

/// The TCP sockets a task's processes hold, each duplicated once: its listeners (with
/// their ports) and its established connections.
#[derive(Debug, Default)]
pub struct TaskSockets {
    pub listeners: Vec<(u16, OwnedFd)>,
    pub conns: Vec<OwnedFd>,
}

/// What kind of TCP socket `fd` is (None: not a TCP socket, or neither kind).
enum Kind {
    Listener(u16),
    Established,
}

fn tcp_kind(fd: &OwnedFd) -> Option<Kind> {
    use nix::sys::socket::{getsockopt, sockopt, SockType};
    let addr: nix::sys::socket::SockaddrStorage =
        nix::sys::socket::getsockname(fd.as_raw_fd()).ok()?;
    let port = addr
        .as_sockaddr_in()
        .map(|a| a.port())
        .or_else(|| addr.as_sockaddr_in6().map(|a| a.port()))?;
    if getsockopt(fd, sockopt::SockType).ok()? != SockType::Stream {
        return None;
    }
    if getsockopt(fd, sockopt::AcceptConn).ok()? {
        return Some(Kind::Listener(port));
    }
    const TCP_ESTABLISHED: u8 = 1;
    (tcp_info(fd).ok()?.tcpi_state == TCP_ESTABLISHED).then_some(Kind::Established)
}

/// The kernel's `TCP_INFO` for a TCP socket.
fn tcp_info(fd: &OwnedFd) -> std::result::Result<libc::tcp_info, nix::errno::Errno> {
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which lives across the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(info)
}

/// The TCP sockets open in `pids` (listeners limited to `ports` when that is not empty),
/// found through their fds rather than the namespace's socket table: reading
/// `/proc/<pid>/net/tcp` walks the host's whole connection hash, ~3.4 ms a file on these
/// VMs, and a sleep needed four of them while the task was frozen.
pub fn task_sockets(pids: &[i32], ports: &[u16]) -> Result<TaskSockets> {
    let mut seen = std::collections::HashSet::new();
    let mut out = TaskSockets::default();
    for &pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut pidfd = None;
        for entry in dir.flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            let Some(inode) = t
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|i| i.parse::<u64>().ok())
            else {
                continue;
            };
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<RawFd>().ok())
            else {
                continue;
            };
            if !seen.insert(inode) {
                continue;
            }
            let pidfd = match &pidfd {
                Some(p) => p,
                None => {
                    pidfd.insert(crate::pidfd::open(pid).map_err(|e| Error::sys("pidfd_open", e))?)
                }
            };
            let dup = getfd(pidfd, fd)?;
            match tcp_kind(&dup) {
                Some(Kind::Listener(port)) if ports.is_empty() || ports.contains(&port) => {
                    out.listeners.push((port, dup))
                }
                Some(Kind::Established) => out.conns.push(dup),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Fd `fd` of the process behind `pidfd`, duplicated into this one (`pidfd_getfd`).
fn getfd(pidfd: &OwnedFd, fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes (pidfd, target fd, flags) and returns a new fd or -1.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(Error::sys("pidfd_getfd", nix::errno::Errno::last()));
    }
    // SAFETY: the kernel just installed this fd (close-on-exec) in our table.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as RawFd) })
}

/// Sets SO_REUSEPORT on a socket (shared by the task's fd: the flag is the socket's).
pub fn set_reuseport(fd: &OwnedFd) -> Result<()> {
    nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::ReusePort, &true)
        .map_err(|e| Error::sys("setsockopt(SO_REUSEPORT)", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 17 1 0000000000000000 100 0 0 10 5
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn only_listeners_are_taken() {
        let l = parse_tcp_table(TCP, false);
        assert_eq!(
            l,
            vec![
                Listener {
                    inode: 4242,
                    port: 8080,
                    ipv6: false
                },
                Listener {
                    inode: 17,
                    port: 53,
                    ipv6: false
                }
            ]
        );
    }

    #[test]
    fn a_udp_socket_of_our_own_is_seen() {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = u.local_addr().expect("addr").port();
        assert!(udp_ports(std::process::id() as i32).contains(&port));
    }

    #[test]
    fn garbage_lines_are_ignored() {
        assert!(parse_tcp_table("header\nnot a table line\n\n   0: zz", true).is_empty());
    }

    #[test]
    fn a_socket_of_our_own_is_found_and_duplicated() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let me = std::process::id() as i32;
        let found = listeners(me, &[port]);
        assert_eq!(found.len(), 1, "{found:?}");
        let holders = socket_holders(&[me], &[found[0].inode]);
        let (pid, fd) = holders[&found[0].inode];
        assert_eq!(pid, me);
        let dup = dup_from(pid, fd).expect("pidfd_getfd");
        set_reuseport(&dup).expect("reuseport");
        let on: bool =
            nix::sys::socket::getsockopt(&dup, nix::sys::socket::sockopt::ReusePort).expect("get");
        assert!(on);
        drop(l);
        // The duplicate keeps the socket listening: a client still connects.
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    }

    #[test]
    fn a_task_s_listeners_and_connections_are_found_through_its_fds() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (server, _) = l.accept().expect("accept");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let me = std::process::id() as i32;
        let found = task_sockets(&[me, me], &[port]).expect("task sockets");
        let ports: Vec<u16> = found.listeners.iter().map(|(p, _)| *p).collect();
        assert_eq!(ports, vec![port], "only the port asked for, once");
        let mine = |a: std::net::SocketAddr| {
            found.conns.iter().any(|c| {
                nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(c.as_raw_fd())
                    .ok()
                    .and_then(|s| s.as_sockaddr_in().map(|a| a.port()))
                    == Some(a.port())
            })
        };
        // Both ends of the loopback connection are this process's.
        assert!(mine(client.local_addr().expect("addr")));
        assert!(mine(server.local_addr().expect("addr")));
        let all = task_sockets(&[me], &[]).expect("task sockets");
        assert!(all.listeners.len() >= 2);
        drop((other, udp));
    }

    #[test]
    fn a_request_without_a_reply_is_seen_in_flight() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client =
            std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (mut server, _) = l.accept().expect("accept");
        let fd = OwnedFd::from(server.try_clone().expect("clone"));
        assert!(
            awaiting_reply(&fd).expect("tcp_info"),
            "a fresh connection's request may be on the way"
        );
        client.write_all(b"GET /").expect("write");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(
            awaiting_reply(&fd).expect("tcp_info"),
            "request received, not answered"
        );
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).expect("read");
        assert!(
            awaiting_reply(&fd).expect("tcp_info"),
            "read but not answered is still in flight"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
        server.write_all(b"200").expect("reply");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(
            !awaiting_reply(&fd).expect("tcp_info"),
            "answered and quiet: idle keep-alive"
        );
    }
}
