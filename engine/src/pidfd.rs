//! Process handles (pidfds): a process named by a pidfd stays that process, whatever pid
//! the kernel hands out after it is reaped, so signals and fd copies through one can never
//! reach a stranger that got the pid again.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

/// A handle on process `pid` (`pidfd_open`, Linux >= 5.3).
pub fn open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}

/// Sends `signal` to the process behind `pidfd` (`pidfd_send_signal`, Linux >= 5.1).
pub fn signal(pidfd: &OwnedFd, signal: i32) -> Result<(), Errno> {
    // SAFETY: pidfd_send_signal takes (pidfd, signal, siginfo or NULL, flags).
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_reaches_the_process_and_not_one_that_is_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let fd = open(child.id() as i32).expect("pidfd");
        signal(&fd, libc::SIGKILL).expect("kill");
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // Reaped: the handle now names nobody, and says so.
        assert_eq!(signal(&fd, libc::SIGKILL), Err(Errno::ESRCH));
    }
}
