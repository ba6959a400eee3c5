//! The smallest HTTP server Prometheus can scrape: `GET /metrics` on one thread.
//!
//! Hand-written over `std::net::TcpListener` rather than a server crate (hyper, tiny_http):
//! one route, one client that asks every 15 s or so, no TLS, no keep-alive, no request
//! body. That is ~150 lines of HTTP/1.0 here, against an async runtime and a dozen
//! crates in the operator's CLI. Each connection gets one answer and is closed. A request
//! is read up to [`MAX_REQUEST`] bytes and for at most [`READ_TIMEOUT`], so a client that
//! sends too much, or nothing, costs one bounded wait and then is dropped; on one thread
//! that bound is what keeps the next scrape from waiting long. For TLS or authentication,
//! put a proxy in front, or use `--once` with node_exporter's textfile collector.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};

/// The most a request (line and headers) may take; a scraper's is a few hundred bytes.
pub const MAX_REQUEST: usize = 8 * 1024;

/// How long a client has to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long writing the answer may block on a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The only path served.
pub const PATH: &str = "/metrics";

/// Binds `addr` and serves `render` at `/metrics` until the process is ended.
pub fn serve(addr: &str, render: impl FnMut() -> Result<String>) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!(
        "lightwhale metrics: serving http://{}{PATH}",
        listener.local_addr()?
    );
    serve_on(&listener, render, None);
    Ok(())
}

/// Answers the connections `listener` accepts, one at a time; stops after `limit` of
/// them when given (for the tests), else never.
pub fn serve_on(
    listener: &TcpListener,
    mut render: impl FnMut() -> Result<String>,
    limit: Option<usize>,
) {
    for (n, conn) in listener.incoming().enumerate() {
        match conn {
            // A client that went away or stalled is its own problem, not the server's.
            Ok(stream) => {
                let _ = answer(stream, &mut render);
            }
            Err(e) => {
                // Out of file descriptors, usually: wait rather than spin.
                eprintln!("lightwhale metrics: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if limit.is_some_and(|l| n + 1 >= l) {
            return;
        }
    }
}

/// What a request asked for, as far as this server cares.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
    /// `HEAD`: the headers only.
    head_only: bool,
}

impl Answer {
    fn text(status: u16, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            head_only: false,
        }
    }
}

/// Reads one request from `stream` and writes the answer.
fn answer(mut stream: TcpStream, render: &mut impl FnMut() -> Result<String>) -> Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let a = match read_head(&mut stream)? {
        Some(head) => route(&head, render),
        None => Answer::text(431, "request too large"),
    };
    let reason = match a.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    };
    let mut out = format!(
        "HTTP/1.0 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        a.status,
        a.content_type,
        a.body.len()
    );
    if a.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !a.head_only {
        out.push_str(&a.body);
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()?;
    // Closing with unread bytes would reset the connection and could lose the answer:
    // say we are done, then read what the client still sends, briefly.
    stream.shutdown(std::net::Shutdown::Write)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let _ = std::io::copy(
        &mut (&stream).take(MAX_REQUEST as u64),
        &mut std::io::sink(),
    );
    Ok(())
}

/// The request's line and headers, up to the blank line (or the end of what the client
/// sent); None when that is over [`MAX_REQUEST`] bytes. At most [`READ_TIMEOUT`] in all,
/// however slowly the bytes come.
fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let deadline = std::time::Instant::now() + READ_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .or_else(|| buf.windows(2).position(|w| w == b"\n\n"));
        if let Some(end) = end {
            buf.truncate(end);
            break;
        }
        if buf.len() > MAX_REQUEST {
            return Ok(None);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break; // the client finished sending without a blank line: take what came
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if buf.len() > MAX_REQUEST {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// The answer to request `head` (its line and headers).
fn route(head: &str, render: &mut impl FnMut() -> Result<String>) -> Answer {
    let line = head.lines().next().unwrap_or("");
    let mut words = line.split_whitespace();
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return Answer::text(400, "expected a request line such as GET /metrics HTTP/1.1");
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Answer::text(405, "only GET and HEAD"),
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path != PATH {
        return Answer::text(404, "not found: lightwhale serves /metrics");
    }
    match render() {
        Ok(body) => Answer {
            status: 200,
            content_type: crate::metrics::CONTENT_TYPE,
            body,
            head_only,
        },
        Err(e) => {
            eprintln!("lightwhale metrics: {e:#}");
            Answer::text(500, &format!("{e:#}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Shutdown;

    /// Starts a server on a free loopback port for `n` connections; returns its port.
    fn server(n: usize, body: &'static str) -> (u16, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let t = std::thread::spawn(move || {
            serve_on(
                &l,
                || {
                    if body.is_empty() {
                        anyhow::bail!("cannot read /run/lightwhale/containers: denied")
                    }
                    Ok(body.to_string())
                },
                Some(n),
            )
        });
        (port, t)
    }

    fn exchange(port: u16, request: &[u8]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(request).expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    #[test]
    fn metrics_is_served_and_nothing_else() {
        let (port, t) = server(7, "lightwhale_sleeps_total{namespace=\"moby\"} 3\n");
        let ok = exchange(
            port,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
        );
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{ok}"
        );
        assert!(ok.contains("Content-Length: 44\r\n"), "{ok}");
        assert!(
            ok.ends_with("\r\n\r\nlightwhale_sleeps_total{namespace=\"moby\"} 3\n"),
            "{ok}"
        );
        let q = exchange(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(q.starts_with("HTTP/1.0 200"), "{q}");
        let head = exchange(port, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.0 200") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let nf = exchange(port, b"GET / HTTP/1.1\r\n\r\n");
        assert!(nf.starts_with("HTTP/1.0 404 Not Found\r\n"), "{nf}");
        let post = exchange(
            port,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
        );
        assert!(post.starts_with("HTTP/1.0 405"), "{post}");
        assert!(post.contains("Allow: GET, HEAD\r\n"), "{post}");
        let bad = exchange(port, b"\r\n\r\n");
        assert!(bad.starts_with("HTTP/1.0 400"), "{bad}");
        // A bare request line, no headers, the client's side shut: still answered.
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(b"GET /metrics").expect("send");
        s.shutdown(Shutdown::Write).expect("shutdown");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        assert!(out.starts_with("HTTP/1.0 200"), "{out}");
        t.join().expect("server");
    }

    #[test]
    fn an_oversized_request_is_refused_and_the_next_is_served() {
        let (port, t) = server(2, "x 1\n");
        let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while big.len() <= MAX_REQUEST + 100 {
            big.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = s.write_all(&big);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.0 431"), "{out}");
        let ok = exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.0 200"), "{ok}");
        t.join().expect("server");
    }

    #[test]
    fn a_failed_read_of_the_node_is_a_500_not_an_empty_page() {
        let (port, t) = server(1, "");
        let out = exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(out.starts_with("HTTP/1.0 500"), "{out}");
        assert!(out.contains("denied"), "{out}");
        t.join().expect("server");
    }

    #[test]
    fn a_silent_client_is_dropped_after_the_timeout_and_the_next_is_served() {
        let (port, t) = server(2, "x 1\n");
        let silent = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let started = std::time::Instant::now();
        let ok = exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.0 200"), "{ok}");
        let waited = started.elapsed();
        assert!(
            waited >= READ_TIMEOUT - Duration::from_millis(500) && waited < READ_TIMEOUT * 3,
            "{waited:?}"
        );
        drop(silent);
        t.join().expect("server");
    }
}
