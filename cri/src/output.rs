//! What the commands print, in crictl's shapes: JSON with lowerCamelCase keys and enum
//! names (`"state": "SANDBOX_READY"`), and aligned tables with relative times.

use std::time::{SystemTime, UNIX_EPOCH};

use k8s_cri::v1::{ContainerState, NamespaceMode, PodSandboxState};
use serde::Serialize;
use serde_json::{Map, Value};

/// Fields whose values are maps with the user's own keys: never renamed.
const USER_MAPS: [&str; 5] = ["labels", "annotations", "unified", "sysctls", "info"];

/// How timestamps (nanoseconds since the epoch) are shown.
#[derive(Clone, Copy, PartialEq)]
pub enum Times {
    /// RFC 3339, as crictl shows them in `inspect` and `inspectp`.
    Rfc3339,
    /// The number as a string, as protobuf's JSON mapping (and crictl's lists) show int64s.
    Nanos,
}

/// A CRI message as crictl prints it. `kind` says which enum a `state` field holds.
pub fn to_json<T: Serialize>(message: &T, kind: StateKind, times: Times) -> Value {
    let value = serde_json::to_value(message).unwrap_or(Value::Null);
    convert(value, kind, times)
}

#[derive(Clone, Copy)]
pub enum StateKind {
    Pod,
    Container,
}

fn convert(value: Value, kind: StateKind, times: Times) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, v) in map {
                let v = match (key.as_str(), v) {
                    ("state", Value::Number(n)) => {
                        Value::String(state_name(kind, n.as_i64().unwrap_or(-1)))
                    }
                    ("created_at" | "started_at" | "finished_at", Value::Number(n)) => {
                        let nanos = n.as_i64().unwrap_or(0);
                        match times {
                            Times::Rfc3339 => Value::String(rfc3339(nanos)),
                            Times::Nanos => Value::String(nanos.to_string()),
                        }
                    }
                    ("network" | "pid" | "ipc", Value::Number(n)) => Value::String(
                        i32::try_from(n.as_i64().unwrap_or(-1))
                            .ok()
                            .and_then(|m| NamespaceMode::try_from(m).ok())
                            .map_or_else(|| n.to_string(), |m| m.as_str_name().to_string()),
                    ),
                    (k, Value::Object(m)) if USER_MAPS.contains(&k) => Value::Object(m),
                    (_, v) => convert(v, kind, times),
                };
                out.insert(camel(&key), v);
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| convert(v, kind, times)).collect())
        }
        other => other,
    }
}

pub fn state_name(kind: StateKind, state: i64) -> String {
    let name = i32::try_from(state).ok().and_then(|s| match kind {
        StateKind::Pod => PodSandboxState::try_from(s).ok().map(|s| s.as_str_name()),
        StateKind::Container => ContainerState::try_from(s).ok().map(|s| s.as_str_name()),
    });
    name.map_or_else(|| state.to_string(), str::to_string)
}

/// The state as crictl's tables show it.
pub fn state_word(kind: StateKind, state: i32) -> &'static str {
    match kind {
        StateKind::Pod => match PodSandboxState::try_from(state) {
            Ok(PodSandboxState::SandboxReady) => "Ready",
            Ok(PodSandboxState::SandboxNotready) => "NotReady",
            Err(_) => "Unknown",
        },
        StateKind::Container => match ContainerState::try_from(state) {
            Ok(ContainerState::ContainerCreated) => "Created",
            Ok(ContainerState::ContainerRunning) => "Running",
            Ok(ContainerState::ContainerExited) => "Exited",
            _ => "Unknown",
        },
    }
}

/// snake_case to lowerCamelCase.
fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Nanoseconds since the epoch as RFC 3339 in UTC ("2026-11-26T02:51:07.123456789Z").
pub fn rfc3339(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let frac = nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if frac != 0 {
        text.push_str(format!(".{frac:09}").trim_end_matches('0'));
    }
    text.push('Z');
    text
}

/// "About a minute ago", like crictl's CREATED column (Docker's go-units wording).
pub fn ago(nanos: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let secs = (now.saturating_sub(nanos) / 1_000_000_000).max(0);
    let text = match secs {
        0 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        s if s < 60 => format!("{s} seconds"),
        s if s / 60 == 1 => "About a minute".to_string(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if (s as f64 / 3600.0).round() == 1.0 => "About an hour".to_string(),
        s if s < 48 * 3600 => format!("{} hours", (s as f64 / 3600.0).round()),
        s if s < 7 * 24 * 3600 * 2 => format!("{} days", s / 86_400),
        s if s < 30 * 24 * 3600 * 3 => format!("{} weeks", s / (7 * 86_400)),
        s if s < 365 * 24 * 3600 * 2 => format!("{} months", s / (30 * 86_400)),
        s => format!("{} years", s / (365 * 86_400)),
    };
    format!("{text} ago")
}

/// An id as tables show it: 13 characters, as crictl does without --no-trunc.
pub fn short_id(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    id.char_indices().nth(13).map_or(id, |(i, _)| &id[..i])
}

/// Rows aligned in columns three spaces apart (crictl's tabwriter).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// What `inspect` and `inspectp` print, as crictl does: `status` first, then each key of
/// the reply's `info` map beside it (containerd's one key is `info`: `.info.pid`), its
/// value parsed when it is JSON.
pub fn inspect(status: Value, info: &std::collections::HashMap<String, String>) -> String {
    let mut text = format!("{{\n  \"status\": {}", indent(&pretty(&status)));
    let mut keys: Vec<&String> = info.keys().collect();
    keys.sort();
    for key in keys {
        let raw = &info[key];
        let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.clone()));
        text.push_str(&format!(
            ",\n  {}: {}",
            Value::String(key.clone()),
            indent(&pretty(&value))
        ));
    }
    text.push_str("\n}");
    text
}

/// A pretty-printed value nested one level deeper.
fn indent(text: &str) -> String {
    text.replace('\n', "\n  ")
}

pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{PodSandboxNetworkStatus, PodSandboxStatus};
    use serde_json::json;

    #[test]
    fn status_as_crictl_shows_it() {
        let status = PodSandboxStatus {
            id: "abc".into(),
            state: PodSandboxState::SandboxNotready as i32,
            created_at: 1_700_000_000_123_000_000,
            network: Some(PodSandboxNetworkStatus {
                ip: "10.99.0.5".into(),
                additional_ips: vec![],
            }),
            annotations: [("lightwhale.io/idle_x".to_string(), "1".to_string())].into(),
            runtime_handler: "lightwhale".into(),
            ..Default::default()
        };
        let json = to_json(&status, StateKind::Pod, Times::Rfc3339);
        assert_eq!(json["state"], "SANDBOX_NOTREADY");
        assert_eq!(json["network"]["ip"], "10.99.0.5");
        assert_eq!(json["network"]["additionalIps"], Value::Array(vec![]));
        assert_eq!(json["createdAt"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["runtimeHandler"], "lightwhale");
        assert_eq!(json["annotations"]["lightwhale.io/idle_x"], "1");
        let json = to_json(&status, StateKind::Pod, Times::Nanos);
        assert_eq!(json["createdAt"], "1700000000123000000");
    }

    #[test]
    fn inspect_puts_status_first_and_info_beside_it() {
        let info = [
            ("info".to_string(), r#"{"pid":42}"#.to_string()),
            ("x".into(), "plain".into()),
        ];
        let text = inspect(
            json!({"state": "SANDBOX_READY"}),
            &info.into_iter().collect(),
        );
        let parsed: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(parsed["status"]["state"], "SANDBOX_READY");
        assert_eq!(parsed["info"]["pid"], 42);
        assert_eq!(parsed["x"], "plain");
        assert!(text.starts_with("{\n  \"status\""), "{text}");
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789abc");
        assert_eq!(short_id("abc"), "abc");
        assert!(ago(0).ends_with("years ago"));
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["xxxx".into(), "y".into()]]);
        assert_eq!(t, "A      BB\nxxxx   y\n");
    }
}
