//! Whether a task is busy: inbound TCP segments in its network namespace and CPU time of
//! its cgroup, sampled cheaply (a few small /proc and cgroup reads) about once a second.

use std::path::PathBuf;

/// One reading of a task's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// TCP segments received in the namespace (Tcp InSegs).
    pub in_segs: u64,
    /// TCP passive opens (accepted connections) in the namespace.
    pub passive_opens: u64,
    /// CPU time of the cgroup, nanoseconds.
    pub cpu_ns: u64,
}

#[derive(Debug, Clone)]
pub struct Probe {
    snmp: PathBuf,
    cpu: Option<CpuFile>,
}

#[derive(Debug, Clone)]
enum CpuFile {
    /// cgroup v1 `cpuacct.usage`, nanoseconds.
    V1(PathBuf),
    /// cgroup v2 `cpu.stat`, `usage_usec`.
    V2(PathBuf),
}

impl Probe {
    /// Probes the namespace and cgroup of `pid`, resolved now (they outlive the pid's
    /// identity only as paths).
    pub fn of_pid(pid: i32) -> Probe {
        let cpu = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|t| cpu_file(&t, std::path::Path::new("/sys/fs/cgroup")));
        Probe {
            snmp: PathBuf::from(format!("/proc/{pid}/net/snmp")),
            cpu,
        }
    }

    pub fn sample(&self) -> Option<Sample> {
        let snmp = std::fs::read_to_string(&self.snmp).ok()?;
        let (in_segs, passive_opens) = parse_snmp(&snmp)?;
        let cpu_ns = match &self.cpu {
            Some(CpuFile::V1(p)) => std::fs::read_to_string(p).ok()?.trim().parse().ok()?,
            Some(CpuFile::V2(p)) => {
                let t = std::fs::read_to_string(p).ok()?;
                t.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse::<u64>().ok())?
                    * 1000
            }
            None => 0,
        };
        Some(Sample {
            in_segs,
            passive_opens,
            cpu_ns,
        })
    }
}

fn cpu_file(proc_cgroup: &str, root: &std::path::Path) -> Option<CpuFile> {
    let mut v2 = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "cpuacct") {
            return Some(CpuFile::V1(
                root.join("cpuacct").join(rel).join("cpuacct.usage"),
            ));
        }
        if controllers.is_empty() {
            v2 = Some(rel.to_string());
        }
    }
    let unified = root.join("unified");
    let base = if unified.is_dir() {
        unified
    } else {
        root.to_path_buf()
    };
    v2.map(|rel| CpuFile::V2(base.join(rel).join("cpu.stat")))
}

/// (InSegs, PassiveOpens) from `/proc/net/snmp`: a header line of names, then values.
pub fn parse_snmp(text: &str) -> Option<(u64, u64)> {
    let mut lines = text.lines().filter(|l| l.starts_with("Tcp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let get = |name: &str| -> Option<u64> {
        let i = names.iter().position(|n| *n == name)?;
        values.get(i)?.parse().ok()
    };
    Some((get("InSegs")?, get("PassiveOpens")?))
}

/// Decides idleness from successive samples: idle once, for `timeout`, no segment came
/// in and the cgroup used less than `cpu_permille` of one CPU.
#[derive(Debug)]
pub struct IdleTracker {
    timeout: std::time::Duration,
    cpu_permille: u64,
    last: Option<(Sample, std::time::Instant)>,
    active_at: std::time::Instant,
    /// CPU use over the last interval, per mille of one CPU.
    last_cpu_permille: Option<u64>,
    /// Whether the last activity seen was CPU use rather than traffic.
    busy_cpu: bool,
}

impl IdleTracker {
    pub fn new(timeout: std::time::Duration, cpu_permille: u64, now: std::time::Instant) -> Self {
        IdleTracker {
            timeout,
            cpu_permille,
            last: None,
            active_at: now,
            last_cpu_permille: None,
            busy_cpu: false,
        }
    }

    /// How long the task has been quiet.
    pub fn idle_for(&self, now: std::time::Instant) -> std::time::Duration {
        now.duration_since(self.active_at)
    }

    /// The CPU use of the last interval when it was above the threshold (per mille of
    /// one CPU): why the task is not idle, when that is the reason.
    pub fn busy_cpu_permille(&self) -> Option<u64> {
        self.busy_cpu.then_some(self.last_cpu_permille).flatten()
    }

    /// Something happened that counts as activity (a wake, an exec).
    pub fn touch(&mut self, now: std::time::Instant) {
        self.active_at = now;
        self.last = None;
        self.busy_cpu = false;
    }

    /// Feeds a sample; returns true when the task has been idle for the timeout.
    pub fn observe(&mut self, s: Sample, now: std::time::Instant) -> bool {
        if let Some((prev, at)) = self.last {
            let wall_ns = now.duration_since(at).as_nanos() as u64;
            let cpu = s.cpu_ns.saturating_sub(prev.cpu_ns);
            let permille = cpu.saturating_mul(1000).checked_div(wall_ns).unwrap_or(0);
            self.last_cpu_permille = Some(permille);
            let busy_cpu = wall_ns > 0 && permille > self.cpu_permille;
            let traffic = s.in_segs != prev.in_segs || s.passive_opens != prev.passive_opens;
            if traffic || busy_cpu {
                self.active_at = now;
                self.busy_cpu = busy_cpu && !traffic;
            }
        }
        self.last = Some((s, now));
        now.duration_since(self.active_at) >= self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs\nTcp: 1 200 120000 -1 5 7 0 0 1 1234 999\n";

    #[test]
    fn snmp_counters() {
        assert_eq!(parse_snmp(SNMP), Some((1234, 7)));
        assert_eq!(parse_snmp("garbage"), None);
    }

    #[test]
    fn idle_only_after_quiet_timeout() {
        let t0 = Instant::now();
        let mut t = IdleTracker::new(Duration::from_secs(2), 10, t0);
        let s = Sample {
            in_segs: 1,
            passive_opens: 1,
            cpu_ns: 0,
        };
        assert!(!t.observe(s, t0 + Duration::from_secs(1)));
        assert!(!t.observe(s, t0 + Duration::from_millis(1500)));
        assert!(t.observe(s, t0 + Duration::from_secs(2)));
        // A segment arrives: active again.
        let s2 = Sample { in_segs: 2, ..s };
        assert!(!t.observe(s2, t0 + Duration::from_secs(3)));
        assert!(t.observe(s2, t0 + Duration::from_secs(5)));
        // 50% of a CPU is busy; 0.5% is not.
        let busy = Sample {
            cpu_ns: s2.cpu_ns + 500_000_000,
            ..s2
        };
        assert!(!t.observe(busy, t0 + Duration::from_secs(6)));
        assert_eq!(
            t.busy_cpu_permille(),
            Some(500),
            "50% of a CPU, the reason shown"
        );
        let quiet = Sample {
            cpu_ns: busy.cpu_ns + 5_000_000,
            ..busy
        };
        assert!(!t.observe(quiet, t0 + Duration::from_secs(7)));
        assert!(t.observe(quiet, t0 + Duration::from_secs(8)));
    }

    #[test]
    fn cgroup_cpu_files() {
        let v1 = cpu_file(
            "4:cpu,cpuacct:/docker/x\n0::/docker/x\n",
            std::path::Path::new("/nonexistent"),
        );
        assert!(
            matches!(v1, Some(CpuFile::V1(p)) if p.ends_with("cpuacct/docker/x/cpuacct.usage"))
        );
        let v2 = cpu_file("0::/x.scope\n", std::path::Path::new("/nonexistent"));
        assert!(matches!(v2, Some(CpuFile::V2(p)) if p.ends_with("x.scope/cpu.stat")));
    }
}
