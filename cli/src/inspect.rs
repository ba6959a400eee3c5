//! `lightwhale inspect --format table`: one container's record, readable.

use std::fmt::Write as _;

use lightwhale_status::{ContainerStatus, DozeRecord, WakePhases};

use crate::view::{age, clean, mib, ms};

/// The multi-line view of `s`; `name` is the name to show when the record has none (from
/// Docker), `now_ms` the current time.
pub fn table(s: &ContainerStatus, name: Option<&str>, now_ms: u64) -> String {
    let mut out = String::new();
    let mut field = |label: &str, value: &str| {
        // Continuation lines (a CRIU log tail in an error) are indented under the value.
        let value = value
            .lines()
            .map(clean)
            .collect::<Vec<_>>()
            .join(&format!("\n{:18}", ""));
        let _ = writeln!(out, "{label:<17} {value}");
    };
    field("id:", &s.id);
    field("name:", s.name.as_deref().or(name).unwrap_or("-"));
    field("namespace:", &s.namespace);
    field(
        "state:",
        &format!("{} (for {})", s.state, age(s.since_unix_ms, now_ms)),
    );
    if let Some(why) = &s.not_sleeping {
        field("why not asleep:", &why.to_string());
    }
    field("sleeps / wakes:", &format!("{} / {}", s.sleeps, s.wakes));
    field("last sleep:", &ms(s.last_sleep_ms));
    field("last wake:", &ms(s.last_wake_ms));
    if let Some(p) = &s.last_wake_phases {
        field("wake phases:", &phases(p));
    }
    if s.dozes > 0 || s.doze.is_some() {
        field("dozes / thaws:", &format!("{} / {}", s.dozes, s.thaws));
    }
    if let Some(d) = &s.doze {
        field("doze:", &doze(d));
    }
    field("memory freed:", &mib(s.memory_freed_bytes));
    field("checkpoint pages:", &mib(s.pages_bytes));
    field("held ports:", &ports(&s.held_ports, "none"));
    field("last error:", s.last_error.as_deref().unwrap_or("-"));

    let c = &s.config;
    field("sleep:", if c.sleep { "on" } else { "off" });
    field("idle timeout:", &ms(Some(c.idle_timeout_ms)));
    field(
        "doze after:",
        &c.doze_after_ms.map_or("off".to_string(), |d| ms(Some(d))),
    );
    field("ports:", &ports(&c.ports, "any listening TCP port"));
    field(
        "criu profile:",
        &format!("{} ({})", c.criu_profile, c.criu_profile_path.display()),
    );
    field("image dir:", &c.image_dir.display().to_string());
    field(
        "lazy pages:",
        &format!(
            "{} (threshold {})",
            c.lazy_pages,
            mib(Some(c.lazy_pages_threshold_bytes))
        ),
    );
    out
}

fn ports(p: &[u16], none: &str) -> String {
    if p.is_empty() {
        return none.to_string();
    }
    p.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
}

/// The current (or last) doze, on one line.
fn doze(d: &DozeRecord) -> String {
    let mut parts = vec![
        format!(
            "resident {} -> {}",
            mib(Some(d.rss_before_bytes)),
            mib(Some(d.rss_after_bytes))
        ),
        format!("swapped {}", mib(Some(d.swap_bytes))),
    ];
    if let Some(c) = d.swap_compressed_bytes {
        parts.push(format!("{} compressed", mib(Some(c))));
    }
    parts.push(format!("took {:.1}ms", d.took_ms));
    if let (Some(t), Some(ms)) = (&d.thaw_trigger, d.thaw_ms) {
        parts.push(format!("thawed by {t} in {ms:.2}ms"));
    }
    if let Some(n) = &d.note {
        parts.push(n.clone());
    }
    parts.join(", ")
}

/// Where the last wake's time went, on one line.
fn phases(p: &WakePhases) -> String {
    let mut parts = vec![
        format!(
            "trigger {}",
            if p.trigger.is_empty() {
                "-"
            } else {
                &p.trigger
            }
        ),
        (if p.lazy { "lazy" } else { "eager" }).to_string(),
        format!("queued {:.1}ms", p.queued_ms),
    ];
    if let Some(d) = p.lazy_daemon_ms {
        parts.push(format!("lazy daemon {d:.1}ms"));
    }
    parts.push(format!("runc restore {:.1}ms", p.runc_restore_ms));
    if let Some(c) = p.criu_restore_ms {
        parts.push(format!("criu {c:.1}ms"));
    }
    parts.push(format!("total {:.1}ms", p.total_ms));
    if let Some(f) = p.fill_ms {
        parts.push(format!("fill {f:.1}ms"));
    }
    if let Some(f) = &p.fallback {
        parts.push(format!("fell back to eager: {f}"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lightwhale_status::{NotSleeping, State};

    #[test]
    fn the_table_says_why_and_shows_the_error() {
        let mut s = ContainerStatus::new("moby", "abc", Default::default());
        s.state = State::Awake;
        s.not_sleeping = Some(NotSleeping::Terminal);
        s.last_error = Some("checkpoint failed: CRIU said\nline two of the log".into());
        s.last_wake_phases = Some(WakePhases {
            trigger: "connection".into(),
            total_ms: 42.0,
            ..WakePhases::default()
        });
        let t = table(&s, Some("web"), 0);
        assert!(
            t.contains(&format!("why not asleep:   {}", NotSleeping::Terminal)),
            "{t}"
        );
        assert!(t.contains("checkpoint failed: CRIU said\n"), "{t}");
        assert!(t.contains("\n                  line two of the log"), "{t}");
        assert!(t.contains("name:             web"), "{t}");
        assert!(t.contains("total 42.0ms"), "{t}");
        assert!(t.contains("state:            awake"), "{t}");
    }

    #[test]
    fn no_reason_no_line() {
        let s = ContainerStatus::new("moby", "abc", Default::default());
        let t = table(&s, None, 0);
        assert!(!t.contains("why not asleep"), "{t}");
        assert!(t.contains("last error:       -"), "{t}");
    }
}
