//! Network namespaces that outlive their task.
//!
//! runc marks a network namespace it created itself as empty on checkpoint, so CRIU
//! would restore a bare one (lo down, addresses and veth gone). A namespace given to runc
//! by path is external and survives. So when a spec asks for a private network namespace
//! without a path, the shim creates one, pins it with a bind mount, and gives runc its
//! path; the client's hooks (Docker's libnetwork) then configure that namespace.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::{Error, Result};

fn err(path: &Path, what: &'static str, source: impl Into<std::io::Error>) -> Error {
    Error::Netns {
        path: path.to_path_buf(),
        what,
        source: source.into(),
    }
}

/// Creates a network namespace pinned at `path`, with lo up and
/// `net.ipv4.tcp_migrate_req=1` (queued connections move between sockets of one
/// reuseport group, which the sleep/wake handover needs).
pub fn create_pinned(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io("create netns pin file", path, e))?;
    let target = path.to_path_buf();
    // unshare(CLONE_NEWNET) changes only the calling thread, so a short-lived thread
    // makes the namespace and leaves the shim's own threads where they were.
    let joined = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| err(&target, "unshare", e))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| err(&target, "bind-mount", e))?;
        loopback_up().map_err(|e| err(&target, "bring lo up", e))?;
        enable_migrate_req_here();
        Ok(())
    })
    .join();
    let result = match joined {
        Ok(r) => r,
        Err(_) => Err(err(
            path,
            "create",
            std::io::Error::other("the namespace thread panicked"),
        )),
    };
    if result.is_err() {
        let _ = remove_pinned(path);
    }
    result
}

/// Sets `net.ipv4.tcp_migrate_req=1` in the calling thread's network namespace. Absent
/// on kernels before 5.14: the namespace still works, only the wake handover of queued
/// connections would not (they would be reset).
fn enable_migrate_req_here() {
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1") {
        tracing::warn!("net.ipv4.tcp_migrate_req: {e}");
    }
}

/// Sets `net.ipv4.tcp_migrate_req=1` in the network namespace at `path` (one made by
/// someone else: CNI for a pod, `ctr run --with-ns`). The namespace is the container's:
/// the wake hands queued connections from the held listener to the restored one, and
/// without this setting the kernel resets them instead.
pub fn enable_migrate_req(path: &Path) -> Result<()> {
    in_netns(path, enable_migrate_req_here)
}

/// Runs `f` in the network namespace at `path`, on a short-lived thread: setns changes
/// only the calling thread, and sockets keep the namespace they were made in, so what `f`
/// opens there can be used from anywhere afterwards.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let ns = std::fs::File::open(path).map_err(|e| err(path, "open", e))?;
    let target = path.to_path_buf();
    let joined = std::thread::spawn(move || -> Result<T> {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| err(&target, "enter", e))?;
        Ok(f())
    })
    .join();
    match joined {
        Ok(r) => r,
        Err(_) => Err(err(
            path,
            "enter",
            std::io::Error::other("the namespace thread panicked"),
        )),
    }
}

/// Whether `path` names the host's own network namespace (the one of pid 1).
pub fn is_host(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), std::fs::metadata("/proc/1/ns/net")) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Unpins and removes a namespace made by [`create_pinned`]. Missing is fine.
pub fn remove_pinned(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(err(path, "unmount", e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Where the shim pins the namespace of container `id` in containerd namespace `ns`.
pub fn pin_path(state_dir: &Path, ns: &str, id: &str) -> PathBuf {
    state_dir.join("netns").join(format!("{ns}-{id}"))
}

fn loopback_up() -> std::io::Result<()> {
    // SAFETY: socket() has no memory effects; the fd is owned right after.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh, valid fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills ifr_ifru.ifru_flags of the ifreq we pass, which lives
    // across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the union member ifru_flags is the one SIOCGIFFLAGS just wrote.
    unsafe {
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads the ifreq we pass, which lives across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
