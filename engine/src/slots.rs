//! A node-wide limit on restores running at once, shared by every shim process: `n` lock
//! files, one `flock` each. A restore holds one for its duration; the kernel releases it
//! when the holder ends, even a shim that is killed, so a slot is never lost.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

/// A held slot; released when dropped.
pub struct Slot {
    _file: File,
}

/// How often a waiter looks for a free slot.
const POLL: Duration = Duration::from_millis(2);

/// Takes one of `n` slots under `dir`, waiting for one to be free. None when the slots
/// cannot be used (no directory, no lock): then the restore runs unlimited rather than
/// not at all.
pub async fn acquire(dir: &Path, n: u32) -> Option<Slot> {
    if n == 0 {
        return None;
    }
    std::fs::create_dir_all(dir).ok()?;
    let files: Vec<File> = (0..n)
        .filter_map(|i| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("restore-{i}.lock")))
                .ok()
        })
        .collect();
    if files.is_empty() {
        return None;
    }
    // Start at a different slot per process, so waiters do not all contend for slot 0.
    let start = std::process::id() as usize % files.len();
    let mut files: Vec<Option<File>> = files.into_iter().map(Some).collect();
    loop {
        for k in 0..files.len() {
            let i = (start + k) % files.len();
            let Some(f) = files[i].as_ref() else { continue };
            // SAFETY: flock on an fd we own; LOCK_NB never blocks.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return files[i].take().map(|f| Slot { _file: f });
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_n_are_held_at_once() {
        let d = tempfile::tempdir().expect("tempdir");
        let a = acquire(d.path(), 2).await.expect("first");
        let b = acquire(d.path(), 2).await.expect("second");
        let third = tokio::time::timeout(Duration::from_millis(100), acquire(d.path(), 2)).await;
        assert!(third.is_err(), "a third waits while two are held");
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(2), acquire(d.path(), 2))
            .await
            .expect("freed")
            .expect("slot");
        drop((b, c));
        assert!(acquire(d.path(), 0).await.is_none(), "0: no limit");
    }
}
