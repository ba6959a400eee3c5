//! Docker container names, from the Docker Engine API on its unix socket.
//!
//! A hand-written HTTP/1.0 GET over a std `UnixStream` rather than an HTTP client crate:
//! two read-only requests do not justify an async runtime and a TLS stack in the CLI.
//! HTTP/1.0 makes the daemon close the connection after one answer, so the body ends at
//! end of stream. Every failure (no Docker, a timeout, a 404, an odd answer) is `None`:
//! Docker is a convenience for finding a container, never required.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Where Docker listens by default.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The most time one request may take, connect to last byte: a name lookup must not
/// make `lightwhale ps` hang on a wedged daemon.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The largest answer read. A container list on a busy host is well below this; the cap
/// only keeps a misbehaving peer from filling memory.
const MAX_RESPONSE: u64 = 16 << 20;

/// A Docker Engine API endpoint on a unix socket.
#[derive(Debug, Clone)]
pub struct Docker {
    socket: PathBuf,
}

impl Default for Docker {
    fn default() -> Self {
        Docker::at(DOCKER_SOCKET)
    }
}

impl Docker {
    pub fn at(socket: impl Into<PathBuf>) -> Self {
        Docker {
            socket: socket.into(),
        }
    }

    /// The full id of the Docker container called `name` (or with that id or id prefix,
    /// as Docker resolves them), if Docker answers.
    pub fn id_of(&self, name: &str) -> Option<String> {
        // Docker stores names with a leading `/` and people paste them that way.
        let name = name.strip_prefix('/').unwrap_or(name);
        if !is_docker_name(name) {
            return None;
        }
        let raw = self.get(&format!("/containers/{}/json", escape(name)))?;
        inspect_id(&raw)
    }

    /// Every Docker container's name by full id (one request for all of them, so `ps`
    /// costs one round trip however many containers there are).
    pub fn names(&self) -> HashMap<String, String> {
        self.get("/containers/json?all=1")
            .map(|raw| list_names(&raw))
            .unwrap_or_default()
    }

    /// The raw answer (status line, headers, body) to `GET path`, or None on any I/O
    /// failure.
    fn get(&self, path: &str) -> Option<Vec<u8>> {
        let deadline = Instant::now() + TIMEOUT;
        let mut s = UnixStream::connect(&self.socket).ok()?;
        s.set_write_timeout(Some(TIMEOUT)).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").as_bytes())
            .ok()?;
        // A read timeout bounds each read; the deadline bounds their sum, so a peer that
        // trickles bytes cannot stretch the wait either.
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let mut limited = (&s).take(MAX_RESPONSE);
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            s.set_read_timeout(Some(left)).ok()?;
            match limited.read(&mut buf) {
                Ok(0) => return Some(raw),
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }
}

/// Whether `s` can be a Docker container name or id: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
/// Anything else cannot name a Docker container, so Docker is not asked.
fn is_docker_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so that no input can
/// change the request line.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The body of a `200` answer, de-chunked if the server chunked it anyway; None for any
/// other status or a malformed answer.
fn ok_body(raw: &[u8]) -> Option<Vec<u8>> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?;
    if status != "200" {
        return None;
    }
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if chunked {
        dechunk(body)
    } else {
        Some(body.to_vec())
    }
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n")?;
        let size_line = std::str::from_utf8(&body[..eol]).ok()?;
        let size_hex = size_line.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        body = body.get(eol + 2..)?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// The container's full id from an answer to `GET /containers/<name>/json`.
fn inspect_id(raw: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Inspect {
        #[serde(rename = "Id")]
        id: String,
    }
    let body = ok_body(raw)?;
    let parsed: Inspect = serde_json::from_slice(&body).ok()?;
    Some(parsed.id).filter(|id| !id.is_empty())
}

/// Name by full id from an answer to `GET /containers/json`.
fn list_names(raw: &[u8]) -> HashMap<String, String> {
    #[derive(Deserialize)]
    struct Summary {
        #[serde(rename = "Id", default)]
        id: String,
        #[serde(rename = "Names", default)]
        names: Vec<String>,
    }
    let Some(body) = ok_body(raw) else {
        return HashMap::new();
    };
    let list: Vec<Summary> = serde_json::from_slice(&body).unwrap_or_default();
    list.into_iter()
        .filter_map(|c| {
            let name = c.names.first()?;
            let name = name.strip_prefix('/').unwrap_or(name).to_string();
            (!c.id.is_empty()).then_some((c.id, name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    const ID: &str = "4f5e6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f";

    #[test]
    fn an_inspect_reply_gives_the_id() {
        let raw = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n\
             {{\"Id\":\"{ID}\",\"Name\":\"/web\",\"State\":{{\"Running\":true}}}}"
        );
        assert_eq!(inspect_id(raw.as_bytes()).as_deref(), Some(ID));
    }

    #[test]
    fn a_chunked_reply_is_decoded() {
        let json = format!("{{\"Id\":\"{ID}\"}}");
        let (a, b) = json.split_at(10);
        let raw = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        );
        assert_eq!(inspect_id(raw.as_bytes()).as_deref(), Some(ID));
    }

    #[test]
    fn a_404_or_garbage_is_none() {
        let not_found = b"HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"No such container: web\"}";
        assert_eq!(inspect_id(not_found), None);
        for bad in [
            &b""[..],
            b"HTTP/1.0 200 OK\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\n{\"Id\":\"\"}",
            b"HTTP/1.0 200 OK\r\n\r\n[]",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert_eq!(inspect_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_list_reply_gives_names_by_id() {
        let raw = format!(
            "HTTP/1.0 200 OK\r\n\r\n[{{\"Id\":\"{ID}\",\"Names\":[\"/web\"]}},{{\"Id\":\"x\",\"Names\":[]}}]"
        );
        let names = list_names(raw.as_bytes());
        assert_eq!(names.get(ID).map(String::as_str), Some("web"));
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn names_are_escaped_and_odd_ones_not_sent() {
        assert_eq!(escape("web-1.a_b~"), "web-1.a_b~");
        assert_eq!(escape("a b/é"), "a%20b%2F%C3%A9");
        assert!(is_docker_name("web_1.x-y"));
        assert!(!is_docker_name(""));
        assert!(!is_docker_name("-web"));
        assert!(!is_docker_name("a b"));
        assert!(!is_docker_name("ü"));
    }

    #[test]
    fn asks_a_fake_daemon_over_its_socket() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sock = tmp.path().join("docker.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut request_line = String::new();
            BufReader::new(&stream)
                .read_line(&mut request_line)
                .expect("read");
            let answer = format!("HTTP/1.0 200 OK\r\n\r\n{{\"Id\":\"{ID}\"}}");
            (&stream).write_all(answer.as_bytes()).expect("write");
            request_line
        });
        assert_eq!(Docker::at(&sock).id_of("/web").as_deref(), Some(ID));
        let request_line = server.join().expect("server");
        assert_eq!(request_line, "GET /containers/web/json HTTP/1.0\r\n");
    }

    #[test]
    fn no_daemon_is_none() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let docker = Docker::at(tmp.path().join("absent.sock"));
        assert_eq!(docker.id_of("web"), None);
        assert!(docker.names().is_empty());
    }
}
