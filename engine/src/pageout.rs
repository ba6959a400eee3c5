//! Pushing a frozen task's memory out to swap, and measuring what it holds.
//!
//! `process_madvise(MADV_PAGEOUT)` over each process's private writable mappings: the
//! kernel reclaims those pages now (to swap for anonymous ones; zram compresses them),
//! and they come back one fault at a time when the task touches them after its thaw. A
//! task that is frozen cannot fault them back in meanwhile. One call covers at most
//! `UIO_MAXIOV` ranges and about 2 GiB (it returns a partial count past that): the rest
//! is asked for again from where it stopped.
//!
//! v1 cgroups have no `memory.reclaim`, and v2's would also take the page cache the
//! task's files share with others: per-process advice works on both and touches only
//! the task's own pages.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// What a set of processes holds in memory and in swap (sums of their `VmRSS` and
/// `VmSwap`), in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    pub rss: u64,
    pub swap: u64,
}

/// The footprint of `pids` now (processes that are gone count nothing).
pub fn footprint(pids: &[i32]) -> Footprint {
    let mut f = Footprint::default();
    for pid in pids {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let (rss, swap) = parse_status(&text);
            f.rss += rss;
            f.swap += swap;
        }
    }
    f
}

/// `VmRSS` and `VmSwap` of a `/proc/<pid>/status`, in bytes.
fn parse_status(text: &str) -> (u64, u64) {
    let kib = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (kib("VmRSS:"), kib("VmSwap:"))
}

/// Whether the node has swap with room left: without it a page-out reclaims nothing of
/// a task's anonymous memory.
pub fn swap_free_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("SwapFree:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// The node's zram compression as (original bytes, bytes in memory) over its zram swap
/// devices (`mm_stat`: orig_data_size, compr_data_size, mem_used_total), or None when no
/// zram device is in use as swap.
pub fn zram_ratio() -> Option<(u64, u64)> {
    let swaps = std::fs::read_to_string("/proc/swaps").ok()?;
    let (mut orig, mut used) = (0u64, 0u64);
    let mut any = false;
    for line in swaps.lines().skip(1) {
        let Some(dev) = line.split_whitespace().next() else {
            continue;
        };
        let Some(name) = dev.strip_prefix("/dev/").filter(|n| n.starts_with("zram")) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/sys/block/{name}/mm_stat")) else {
            continue;
        };
        let f: Vec<u64> = stat
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() >= 3 {
            orig += f[0];
            used += f[2];
            any = true;
        }
    }
    (any && orig > 0).then_some((orig, used))
}

/// The private writable mappings of a `/proc/<pid>/maps`, as (start, length): where a
/// process's own pages are (heap, stacks, anonymous mappings, written data of files).
pub fn private_writable(maps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let path = f.nth(3).unwrap_or("");
        if !perms.starts_with("rw") || perms.as_bytes().get(3) != Some(&b'p') {
            continue;
        }
        // The kernel's own pages for the process: nothing to page out.
        if matches!(path, "[vvar]" | "[vdso]" | "[vsyscall]" | "[vvar_vclock]") {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        if b > a {
            out.push((a, b - a));
        }
    }
    out
}

/// What the last full page-out left, for the next doze to keep the working set: after a
/// full page-out, every page resident at the next doze was touched since (faulted back in
/// by a request, or new). Paging those out again would make each thaw fault them back
/// (measured: first byte 7-9 ms for a python service after a full page-out, against
/// 1.5 ms for a task whose pages stay); so the next dozes keep them, while they stay
/// few, and every [`FULL_PAGEOUT_EVERY`]th doze pages everything out again, so that pages
/// touched once do not stay resident for ever.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkingSet {
    pub dozes_since_full: u32,
    /// Resident bytes right after the last full page-out (0: none yet).
    pub resident_after_full: u64,
}

/// Every this many dozes, a full page-out (see [`WorkingSet`]).
pub const FULL_PAGEOUT_EVERY: u32 = 8;
/// The most a kept working set may have grown since the last full page-out.
pub const WORKING_SET_MAX: u64 = 32 << 20;

/// Whether this doze keeps what is resident (`resident` bytes now) rather than paging out.
pub fn keep_working_set(ws: &WorkingSet, resident: u64) -> bool {
    ws.resident_after_full > 0
        && ws.dozes_since_full + 1 < FULL_PAGEOUT_EVERY
        && resident <= ws.resident_after_full + WORKING_SET_MAX
}

#[derive(Debug, thiserror::Error)]
pub enum PageoutError {
    #[error("pidfd_open({pid}): {errno}")]
    Open { pid: i32, errno: nix::errno::Errno },
    #[error("process_madvise(MADV_PAGEOUT) on pid {pid}: {errno}")]
    Advise { pid: i32, errno: nix::errno::Errno },
}

/// Most ranges one `process_madvise` call takes (the kernel's UIO_MAXIOV).
const MAX_IOV: usize = 1024;

/// Pages out the private writable memory of each of `pids` (frozen), stopping early when
/// `cancel` is set (the task was thawed meanwhile: its pages would only come back).
/// Returns the bytes advised. A process that is gone is skipped.
pub fn page_out(pids: &[i32], cancel: &AtomicBool) -> Result<u64, PageoutError> {
    let mut advised = 0u64;
    for &pid in pids {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        let ranges = private_writable(&maps);
        if ranges.is_empty() {
            continue;
        }
        let pidfd = match crate::pidfd::open(pid) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ESRCH) => continue,
            Err(errno) => return Err(PageoutError::Open { pid, errno }),
        };
        advised += advise_all(&pidfd, pid, ranges, cancel)?;
        if cancel.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok(advised)
}

fn advise_all(
    pidfd: &OwnedFd,
    pid: i32,
    mut ranges: Vec<(usize, usize)>,
    cancel: &AtomicBool,
) -> Result<u64, PageoutError> {
    let mut advised = 0u64;
    let mut next = 0;
    while next < ranges.len() && !cancel.load(Ordering::Relaxed) {
        let batch = &ranges[next..(next + MAX_IOV).min(ranges.len())];
        let iov: Vec<libc::iovec> = batch
            .iter()
            .map(|&(base, len)| libc::iovec {
                iov_base: base as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        // SAFETY: process_madvise reads `iov.len()` iovecs from `iov`, which lives across
        // the call; the addresses are the target's, never dereferenced here.
        let n = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                pidfd.as_raw_fd(),
                iov.as_ptr(),
                iov.len(),
                libc::MADV_PAGEOUT,
                0u32,
            )
        };
        if n < 0 {
            let errno = nix::errno::Errno::last();
            match errno {
                // The process ended: nothing more to page out of it.
                nix::errno::Errno::ESRCH => break,
                // The first range of the batch is not mapped (any more): skip it.
                nix::errno::Errno::ENOMEM | nix::errno::Errno::EINVAL => {
                    next += 1;
                    continue;
                }
                _ => return Err(PageoutError::Advise { pid, errno }),
            }
        }
        let mut done = n as usize;
        advised += done as u64;
        // Skip what was covered; a range covered in part is resumed where it stopped.
        let mut i = next;
        while i < next + batch.len() && done >= ranges[i].1 {
            done -= ranges[i].1;
            i += 1;
        }
        if i < next + batch.len() && done > 0 {
            ranges[i].0 += done;
            ranges[i].1 -= done;
        }
        if i == next && done == 0 && n == 0 {
            // No progress at all: do not spin.
            break;
        }
        next = i;
    }
    Ok(advised)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_working_set_is_kept_while_small_and_renewed_every_few_dozes() {
        let none = WorkingSet::default();
        assert!(!keep_working_set(&none, 1 << 20), "no full page-out yet");
        let ws = WorkingSet {
            dozes_since_full: 0,
            resident_after_full: 10 << 20,
        };
        assert!(keep_working_set(&ws, 14 << 20), "4 MiB touched since: kept");
        assert!(
            !keep_working_set(&ws, (10 << 20) + WORKING_SET_MAX + 1),
            "grown past the bound: paged out"
        );
        let old = WorkingSet {
            dozes_since_full: FULL_PAGEOUT_EVERY - 1,
            ..ws
        };
        assert!(!keep_working_set(&old, 11 << 20), "renewed every few dozes");
    }

    const MAPS: &str = "\
55d0c0a00000-55d0c0a21000 r--p 00000000 fd:01 1234 /usr/bin/python3.11
55d0c0c00000-55d0c0c40000 rw-p 00200000 fd:01 1234 /usr/bin/python3.11
55d0c1000000-55d0cd000000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000100000 rw-s 00000000 00:05 77 /dev/shm/x
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
7ffd00100000-7ffd00104000 r--p 00000000 00:00 0 [vvar]
7ffd00104000-7ffd00106000 r-xp 00000000 00:00 0 [vdso]
";

    #[test]
    fn private_writable_mappings_only() {
        let r = private_writable(MAPS);
        assert_eq!(
            r,
            vec![
                (0x55d0c0c00000, 0x40000),
                (0x55d0c1000000, 0xc000000),
                (0x7f0000200000, 0x100000),
                (0x7ffd00000000, 0x21000),
            ],
            "data of the binary, heap, anonymous, stack; never shared or read-only"
        );
    }

    #[test]
    fn status_sums() {
        let text =
            "Name:\tpython3\nVmRSS:\t  204800 kB\nRssAnon:\t 200000 kB\nVmSwap:\t    1024 kB\n";
        assert_eq!(parse_status(text), (204800 * 1024, 1024 * 1024));
        assert_eq!(parse_status("garbage"), (0, 0));
    }

    #[test]
    fn pages_out_this_process_memory() {
        // A page of our own, written, then advised out: the call succeeds and covers it
        // (whether it lands in swap depends on the host having any).
        let mut v = vec![1u8; 1 << 20];
        v[0] = 2;
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let ranges = private_writable(&maps);
        assert!(!ranges.is_empty());
        let cancel = AtomicBool::new(false);
        let pid = std::process::id() as i32;
        match page_out(&[pid], &cancel) {
            Ok(n) => assert!(n >= 1 << 20, "advised {n} bytes"),
            // Without CAP_SYS_NICE (an unprivileged `cargo test`) the kernel refuses.
            Err(PageoutError::Advise { errno, .. }) => {
                assert_eq!(errno, nix::errno::Errno::EPERM)
            }
            Err(e) => panic!("{e}"),
        }
        assert_eq!(v[0], 2, "the memory reads back the same after a page-out");
        let cancelled = AtomicBool::new(true);
        assert_eq!(page_out(&[pid], &cancelled).unwrap_or(0), 0);
    }
}
