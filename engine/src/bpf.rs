//! Classic BPF programs, small enough to read instruction by instruction, and the socket
//! options that attach them. No eBPF toolchain, no maps: the kernel has run these for
//! thirty years.
//!
//! - [`steer_by_source`]: for a listener's reuseport group, sends new connections from
//!   given source addresses (the node: kubelet probes) to one member and the rest to
//!   another. Runs once per SYN.
//! - [`tcp_payload`]: for an `AF_PACKET`/`SOCK_DGRAM` socket in a pod's network
//!   namespace, passes inbound IPv4 TCP segments that carry data, from the given sources
//!   or from all but them. Pure ACKs, handshakes and closes (a TCP probe) never pass.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::{Error, Result};

/// Socket options (x86_64 and most architectures; asm-generic/socket.h).
const SO_ATTACH_FILTER: libc::c_int = 26;
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
const SO_DETACH_REUSEPORT_BPF: libc::c_int = 68;

type Insn = libc::sock_filter;

fn stmt(code: u32, k: u32) -> Insn {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> Insn {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The network header, at negative offsets from the data a reuseport program sees (the
/// TCP payload, empty in a SYN).
const NET: u32 = libc::SKF_NET_OFF as u32;

/// A reuseport program: connections whose IPv4 source is in `sources` go to the member at
/// `to`, every other one to the member at `otherwise`. Indexes count the group's members
/// in the order they joined it.
pub fn steer_by_source(sources: &[Ipv4Addr], to: u32, otherwise: u32) -> Vec<Insn> {
    use libc::*;
    let n = sources.len();
    let mut p = vec![
        // A = the IP version nibble; anything but IPv4 takes the default.
        stmt(BPF_LD | BPF_B | BPF_ABS, NET),
        stmt(BPF_ALU | BPF_AND | BPF_K, 0xf0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 0x40, 0, (n + 1) as u8),
        // A = the source address.
        stmt(BPF_LD | BPF_W | BPF_ABS, NET + 12),
    ];
    for (i, ip) in sources.iter().enumerate() {
        // Match: jump over the remaining compares and the default return.
        p.push(jump(
            BPF_JMP | BPF_JEQ | BPF_K,
            u32::from(*ip),
            (n - i) as u8,
            0,
        ));
    }
    p.push(stmt(BPF_RET | BPF_K, otherwise));
    p.push(stmt(BPF_RET | BPF_K, to));
    p
}

/// Which sources a [`tcp_payload`] filter passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sources {
    /// Only segments from the given addresses.
    Only,
    /// Segments from every address but the given ones.
    AllBut,
}

/// A packet-socket filter (data at offset 0 = the IP header): inbound IPv4 TCP segments
/// with a payload, from `sources` as `which` says, cut to `snap` bytes (1 when only
/// counted).
pub fn tcp_payload(sources: &[Ipv4Addr], which: Sources, snap: u32) -> Vec<Insn> {
    use libc::*;
    let n = sources.len();
    let mut p = vec![
        // Inbound only: the pod's own answers are not activity.
        stmt(
            BPF_LD | BPF_W | BPF_ABS,
            (SKF_AD_OFF + SKF_AD_PKTTYPE) as u32,
        ),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 0 /* PACKET_HOST */, 0, DROP),
        stmt(BPF_LD | BPF_B | BPF_ABS, 0),
        stmt(BPF_ALU | BPF_AND | BPF_K, 0xf0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 0x40, 0, DROP),
        stmt(BPF_LD | BPF_B | BPF_ABS, 9),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 6 /* TCP */, 0, DROP),
        // Later fragments carry no TCP header.
        stmt(BPF_LD | BPF_H | BPF_ABS, 6),
        jump(BPF_JMP | BPF_JSET | BPF_K, 0x1fff, DROP, 0),
        stmt(BPF_LD | BPF_W | BPF_ABS, 12),
    ];
    for (i, ip) in sources.iter().enumerate() {
        // A listed source: to the payload check (Only) or out (AllBut).
        let to_end_of_list = (n - i - 1) as u8;
        let (jt, jf) = match which {
            Sources::Only => (to_end_of_list + 1, 0),
            Sources::AllBut => (DROP, 0),
        };
        p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, u32::from(*ip), jt, jf));
    }
    if which == Sources::Only {
        // None of the sources matched.
        p.push(stmt(BPF_RET | BPF_K, 0));
    }
    p.extend([
        // payload = total length - IP header - TCP header
        stmt(BPF_LD | BPF_H | BPF_ABS, 2),
        stmt(BPF_ST, 0),
        stmt(BPF_LDX | BPF_B | BPF_MSH, 0),
        stmt(BPF_LD | BPF_B | BPF_IND, 12),
        stmt(BPF_ALU | BPF_RSH | BPF_K, 4),
        stmt(BPF_ALU | BPF_MUL | BPF_K, 4),
        stmt(BPF_ST, 1),
        stmt(BPF_LD | BPF_MEM, 0),
        stmt(BPF_ALU | BPF_SUB | BPF_X, 0),
        stmt(BPF_LDX | BPF_MEM, 1),
        stmt(BPF_ALU | BPF_SUB | BPF_X, 0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0),
        stmt(BPF_RET | BPF_K, snap),
        stmt(BPF_RET | BPF_K, 0),
    ]);
    resolve_drops(p)
}

/// Placeholder jump target meaning "to the final `ret 0`"; see [`resolve_drops`].
const DROP: u8 = u8::MAX;

/// Replaces each [`DROP`] target with the distance to the program's last instruction
/// (`ret 0`), so the program reads as checks that each may drop.
fn resolve_drops(mut p: Vec<Insn>) -> Vec<Insn> {
    let last = p.len() - 1;
    for (i, insn) in p.iter_mut().enumerate() {
        let to_last = last.saturating_sub(i + 1) as u8;
        if insn.jt == DROP {
            insn.jt = to_last;
        }
        if insn.jf == DROP {
            insn.jf = to_last;
        }
    }
    p
}

fn setsockopt_prog(
    fd: BorrowedFd<'_>,
    opt: libc::c_int,
    prog: &[Insn],
    what: &'static str,
) -> Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut Insn,
    };
    // SAFETY: the kernel copies `fprog` and the instructions it points to (which outlive
    // the call) during setsockopt; the fd is valid for the borrow.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            &fprog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(Error::sys(what, nix::errno::Errno::last()));
    }
    Ok(())
}

/// Attaches `prog` as the reuseport program of `fd`'s group (it replaces any other).
pub fn attach_reuseport(fd: BorrowedFd<'_>, prog: &[Insn]) -> Result<()> {
    setsockopt_prog(
        fd,
        SO_ATTACH_REUSEPORT_CBPF,
        prog,
        "setsockopt(SO_ATTACH_REUSEPORT_CBPF)",
    )
}

/// Removes the reuseport program of `fd`'s group; none attached is fine.
pub fn detach_reuseport(fd: BorrowedFd<'_>) -> Result<()> {
    let zero: libc::c_int = 0;
    // SAFETY: setsockopt reads `zero`, which outlives the call, on a valid fd.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_DETACH_REUSEPORT_BPF,
            &zero as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match nix::errno::Errno::last_raw() {
        _ if rc == 0 => Ok(()),
        libc::ENOENT => Ok(()),
        e => Err(Error::sys(
            "setsockopt(SO_DETACH_REUSEPORT_BPF)",
            nix::errno::Errno::from_raw(e),
        )),
    }
}

/// Attaches `prog` as `fd`'s socket filter (packet sockets).
pub fn attach_filter(fd: BorrowedFd<'_>, prog: &[Insn]) -> Result<()> {
    setsockopt_prog(fd, SO_ATTACH_FILTER, prog, "setsockopt(SO_ATTACH_FILTER)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    fn reuseport_listener(addr: SocketAddr) -> TcpListener {
        let s = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::ReusePort, &true)
            .expect("reuseport");
        let sa = nix::sys::socket::SockaddrIn::from(match addr {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => panic!("v4 only here"),
        });
        nix::sys::socket::bind(s.as_raw_fd(), &sa).expect("bind");
        nix::sys::socket::listen(&s, nix::sys::socket::Backlog::new(16).expect("backlog"))
            .expect("listen");
        TcpListener::from(s)
    }

    fn connect_from(src: Ipv4Addr, to: SocketAddr) -> TcpStream {
        let s = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        let local = nix::sys::socket::SockaddrIn::from(std::net::SocketAddrV4::new(src, 0));
        nix::sys::socket::bind(s.as_raw_fd(), &local).expect("bind source");
        let to = match to {
            SocketAddr::V4(a) => nix::sys::socket::SockaddrIn::from(a),
            SocketAddr::V6(_) => panic!("v4 only here"),
        };
        nix::sys::socket::connect(s.as_raw_fd(), &to).expect("connect");
        // SAFETY: a connected stream socket we own.
        TcpStream::from(unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(s)) })
    }

    /// Which of the two listeners took the connection: each writes its own mark.
    fn served_by(a: &TcpListener, b: &TcpListener, src: Ipv4Addr, to: SocketAddr) -> char {
        let mut c = connect_from(src, to);
        for (l, mark) in [(a, b'a'), (b, b'b')] {
            l.set_nonblocking(true).expect("nonblocking");
            for _ in 0..100 {
                if let Ok((mut s, _)) = l.accept() {
                    s.write_all(&[mark]).expect("mark");
                    let mut got = [0u8; 1];
                    c.read_exact(&mut got).expect("read mark");
                    return got[0] as char;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        panic!("nobody accepted");
    }

    #[test]
    fn the_node_goes_to_one_member_everyone_else_to_the_other() {
        let a = reuseport_listener("127.0.0.1:0".parse().expect("addr"));
        let addr = a.local_addr().expect("addr");
        let b = reuseport_listener(addr);
        let node = Ipv4Addr::new(127, 0, 0, 2);
        attach_reuseport(
            b.as_fd(),
            &steer_by_source(&[Ipv4Addr::new(10, 9, 9, 9), node], 1, 0),
        )
        .expect("attach");
        for _ in 0..8 {
            assert_eq!(served_by(&a, &b, node, addr), 'b', "the node's connections");
            assert_eq!(
                served_by(&a, &b, Ipv4Addr::new(127, 0, 0, 3), addr),
                'a',
                "everyone else's"
            );
        }
        detach_reuseport(a.as_fd()).expect("detach");
        detach_reuseport(a.as_fd()).expect("detaching twice is fine");
    }

    #[test]
    fn drop_targets_point_at_the_last_return() {
        let p = tcp_payload(&[Ipv4Addr::new(10, 0, 0, 1)], Sources::AllBut, 1);
        let last = p.len() - 1;
        for (i, insn) in p.iter().enumerate() {
            if insn.code as u32 & 0x07 != libc::BPF_JMP {
                continue;
            }
            for t in [insn.jt, insn.jf] {
                assert!(i + 1 + (t as usize) <= last, "insn {i} jumps past the end");
            }
        }
        assert_eq!(p[last].code as u32, libc::BPF_RET | libc::BPF_K);
        assert_eq!(p[last].k, 0);
    }
}
