//! How records are shown to a person: short ids, ages, sizes and the `ps` table.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use lightwhale_status::{ContainerStatus, State};

use crate::store::Entry;

/// Characters of an id shown where space is short, as Docker does.
const SHORT_ID: usize = 12;

/// The widest NAME shown in `ps`: Kubernetes names (`namespace/pod/container`) can be long
/// enough to push every other column off the screen.
const NAME_WIDTH: usize = 32;

/// The first 12 characters of `id`. Counted in characters, not bytes: ids come from file
/// names and a byte slice could split a character and panic.
pub fn short_id(id: &str) -> &str {
    match id.char_indices().nth(SHORT_ID) {
        Some((end, _)) => &id[..end],
        None => id,
    }
}

/// `s` cut to `max` characters, the last one replaced by `…` when something was cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `s` with control characters replaced: ids and names come from files and annotations,
/// and an escape sequence in one must not reach the terminal.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Milliseconds since the Unix epoch now (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How long ago `since_ms` was: `5s`, `3m2s`, `1h4m`; `-` when it was never set.
pub fn age(since_ms: u64, now_ms: u64) -> String {
    if since_ms == 0 {
        return "-".into();
    }
    let s = now_ms.saturating_sub(since_ms) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// A duration in milliseconds, or `-`.
pub fn ms(v: Option<u64>) -> String {
    v.map(|m| format!("{m}ms")).unwrap_or_else(|| "-".into())
}

/// A size in MiB with one decimal, or `-`.
pub fn mib(v: Option<u64>) -> String {
    v.map(|b| format!("{:.1}MiB", b as f64 / 1_048_576.0))
        .unwrap_or_else(|| "-".into())
}

/// The name to show for `e`: the one in its record, else Docker's, else none.
pub fn name_of<'a>(e: &'a Entry, docker_names: &'a HashMap<String, String>) -> Option<&'a str> {
    e.status
        .name
        .as_deref()
        .or_else(|| docker_names.get(&e.id).map(String::as_str))
}

/// Whether `ps` shows a container without `--all`: as `docker ps`, those that ended are
/// hidden (their record lives on only until the container is deleted).
pub fn shown_by_default(s: &ContainerStatus) -> bool {
    s.state != State::Exited
}

const HEADERS: [&str; 11] = [
    "CONTAINER",
    "NAME",
    "NAMESPACE",
    "STATE",
    "SINCE",
    "SLEEP",
    "WAKE",
    "FREED",
    "SLEEPS",
    "WAKES",
    "WHY",
];

/// Columns aligned right: the numbers, so that their digits line up.
const RIGHT: [bool; 11] = [
    false, false, false, false, true, true, true, true, true, true, false,
];

/// One `ps` row. The id comes first, so a line starts with the short id (scripts and the
/// end-to-end tests rely on it).
pub fn ps_row(e: &Entry, name: Option<&str>, now_ms: u64) -> [String; 11] {
    let s = &e.status;
    [
        clean(short_id(&e.id)),
        name.map(|n| clean(&truncate(n, NAME_WIDTH)))
            .unwrap_or_else(|| "-".into()),
        clean(&e.namespace),
        s.state.to_string(),
        age(s.since_unix_ms, now_ms),
        ms(s.last_sleep_ms),
        ms(s.last_wake_ms),
        // Memory freed means something only while the container is asleep, or dozing
        // (what its page-out gave back, its compressed copy counted against it).
        match (s.state, &s.doze) {
            (State::Asleep, _) => mib(s.memory_freed_bytes),
            (State::Dozing, Some(d)) if d.reclaimed => {
                mib(Some(d.rss_before_bytes.saturating_sub(
                    d.rss_after_bytes + d.swap_compressed_bytes.unwrap_or(d.swap_bytes),
                )))
            }
            _ => "-".into(),
        },
        s.sleeps.to_string(),
        s.wakes.to_string(),
        s.not_sleeping
            .as_ref()
            .map(|w| clean(&w.short(now_ms)))
            .unwrap_or_else(|| "-".into()),
    ]
}

/// The `ps` table, header included, each column as wide as its widest cell.
pub fn ps_table(rows: &[[String; 11]]) -> String {
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADERS.map(String::from);
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let w = widths[i];
            if RIGHT[i] {
                line.push_str(&format!("{cell:>w$}"));
            } else {
                line.push_str(&format!("{cell:<w$}"));
            }
        }
        // The last column is left-aligned: its padding would only be trailing blanks.
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lightwhale_status::NotSleeping;
    use std::path::PathBuf;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn entry(state: State) -> Entry {
        Entry {
            namespace: "moby".into(),
            id: ID.into(),
            path: PathBuf::from("/nowhere/moby/x.json"),
            status: ContainerStatus {
                id: ID.into(),
                namespace: "moby".into(),
                state,
                since_unix_ms: 1_000_000,
                sleeps: 3,
                wakes: 2,
                last_sleep_ms: Some(850),
                last_wake_ms: Some(120),
                memory_freed_bytes: Some(12 * 1_048_576),
                ..ContainerStatus::default()
            },
        }
    }

    #[test]
    fn short_ids_never_split_a_character() {
        assert_eq!(short_id(ID), "0123456789ab");
        assert_eq!(short_id("ééééééééééééé"), "éééééééééééé");
        assert_eq!(
            short_id("日本語日本語日本語日本語日本語"),
            "日本語日本語日本語日本語"
        );
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(short_id(""), "");
        assert_eq!(truncate("ééééé", 3), "éé…");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(clean("a\u{1b}[2Jb\n"), "a?[2Jb?");
    }

    #[test]
    fn ages_read_like_durations() {
        let now = 10_000_000;
        assert_eq!(age(0, now), "-");
        assert_eq!(age(now - 5_000, now), "5s");
        assert_eq!(age(now - 182_000, now), "3m2s");
        assert_eq!(age(now - 3_840_000, now), "1h4m");
        assert_eq!(
            age(now + 5_000, now),
            "0s",
            "a clock step back is not a panic"
        );
    }

    #[test]
    fn an_asleep_row_starts_with_the_id_and_says_asleep() {
        let e = entry(State::Asleep);
        let now = 1_005_000;
        let table = ps_table(&[ps_row(&e, Some("web"), now)]);
        let line = table.lines().nth(1).expect("a row");
        assert!(line.starts_with(&ID[..12]), "{line}");
        assert!(line.contains("asleep"), "{line}");
        assert!(line.contains("web") && line.contains("12.0MiB"), "{line}");
        assert!(line.contains("5s") && line.contains("850ms"), "{line}");
        assert!(table.starts_with("CONTAINER"), "{table}");
    }

    #[test]
    fn a_dozing_row_shows_what_its_page_out_gave_back() {
        let mut e = entry(State::Dozing);
        e.status.doze = Some(lightwhale_status::DozeRecord {
            rss_before_bytes: 200 << 20,
            rss_after_bytes: 10 << 20,
            swap_bytes: 190 << 20,
            swap_compressed_bytes: Some(20 << 20),
            reclaimed: true,
            ..Default::default()
        });
        let row = ps_row(&e, None, 0);
        assert_eq!(row[3], "dozing");
        assert_eq!(row[7], "170.0MiB", "200 MiB resident, 10 left, 20 in zram");
        e.status.doze.as_mut().expect("doze").reclaimed = false;
        assert_eq!(ps_row(&e, None, 0)[7], "-", "frozen only: nothing freed");
    }

    #[test]
    fn freed_memory_shows_only_while_asleep() {
        let row = ps_row(&entry(State::Awake), None, 0);
        assert_eq!(row[7], "-");
        assert_eq!(row[1], "-", "no name");
    }

    #[test]
    fn the_why_column_uses_the_short_form() {
        let mut e = entry(State::Awake);
        let why = NotSleeping::SleepFailed {
            error: "checkpoint failed: a long CRIU story".into(),
            next_try_unix_ms: 300_000,
        };
        e.status.not_sleeping = Some(why.clone());
        let row = ps_row(&e, None, 60_000);
        assert_eq!(row[10], why.short(60_000));
        assert_eq!(row[10], "sleep failed, retry in 4m0s");
        let table = ps_table(&[row]);
        assert!(!table.contains("long CRIU story"), "{table}");
        assert!(table.lines().all(|l| l == l.trim_end()), "{table:?}");
    }

    #[test]
    fn names_come_from_the_record_then_docker() {
        let mut e = entry(State::Awake);
        let mut docker = HashMap::new();
        assert_eq!(name_of(&e, &docker), None);
        docker.insert(ID.to_string(), "web".to_string());
        assert_eq!(name_of(&e, &docker), Some("web"));
        e.status.name = Some("shop/web/nginx".into());
        assert_eq!(name_of(&e, &docker), Some("shop/web/nginx"));
    }

    #[test]
    fn exited_containers_are_hidden_by_default() {
        assert!(!shown_by_default(&entry(State::Exited).status));
        assert!(shown_by_default(&entry(State::Asleep).status));
    }
}
