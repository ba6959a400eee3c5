//! The cgroup reads the shim needs beyond what runc reports: the OOM-kill counter.
//!
//! Resolved from `/proc/<pid>/cgroup` while the process lives, because the counter is
//! read after the process died (to tell containerd the exit was an OOM kill).

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct MemoryCgroup {
    /// The file holding the `oom_kill` counter.
    counter: PathBuf,
}

impl MemoryCgroup {
    /// Finds the memory cgroup of `pid` on a v1, hybrid or v2 host.
    pub fn of_pid(pid: i32) -> Option<MemoryCgroup> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        Self::from_proc_cgroup(&text, std::path::Path::new("/sys/fs/cgroup"))
    }

    fn from_proc_cgroup(text: &str, root: &std::path::Path) -> Option<MemoryCgroup> {
        let mut v2 = None;
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let rel = path.trim_start_matches('/');
            if controllers.split(',').any(|c| c == "memory") {
                return Some(MemoryCgroup {
                    counter: root.join("memory").join(rel).join("memory.oom_control"),
                });
            }
            if controllers.is_empty() {
                v2 = Some(rel.to_string());
            }
        }
        let rel = v2?;
        let unified = root.join("unified");
        let base = if unified.is_dir() {
            unified
        } else {
            root.to_path_buf()
        };
        Some(MemoryCgroup {
            counter: base.join(rel).join("memory.events"),
        })
    }

    /// Memory charged to the cgroup now, in bytes (v1 `memory.usage_in_bytes`, v2
    /// `memory.current`).
    pub fn usage_bytes(&self) -> Option<u64> {
        let dir = self.counter.parent()?;
        let file = if self.counter.ends_with("memory.oom_control") {
            dir.join("memory.usage_in_bytes")
        } else {
            dir.join("memory.current")
        };
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// Processes the kernel's OOM killer has killed in this cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        let Ok(text) = std::fs::read_to_string(&self.counter) else {
            return 0;
        };
        text.lines()
            .filter_map(|l| l.strip_prefix("oom_kill "))
            .filter_map(|v| v.trim().parse().ok())
            .next()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_memory_line_wins() {
        let text = "12:memory:/docker/abc\n0::/docker/abc\n";
        let cg =
            MemoryCgroup::from_proc_cgroup(text, std::path::Path::new("/nonexistent")).expect("cg");
        assert!(cg.counter.ends_with("memory/docker/abc/memory.oom_control"));
    }

    #[test]
    fn v2_only() {
        let cg = MemoryCgroup::from_proc_cgroup(
            "0::/system.slice/x.scope\n",
            std::path::Path::new("/nonexistent"),
        )
        .expect("cg");
        assert!(cg.counter.ends_with("system.slice/x.scope/memory.events"));
    }
}
