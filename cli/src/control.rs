//! A container's control socket: one [`Command`] line out, one [`Reply`] line of JSON in.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use lightwhale_status::{Command, Reply};

/// How long the answer may take. A sleep waits for CRIU's dump and a wake of a large task
/// for its restore: seconds, occasionally tens of them.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The longest answer read: a status record is a few KiB even with a CRIU log tail, and
/// a peer that never sends a newline must not fill memory.
const MAX_REPLY: u64 = 4 << 20;

/// Sends `command` to the shim listening at `socket` and returns its answer.
pub fn request(socket: &Path, command: &Command) -> Result<Reply> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        let hint = match e.kind() {
            ErrorKind::PermissionDenied => " (the control socket is root's: run as root)",
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                " (is the container's shim still running?)"
            }
            _ => "",
        };
        anyhow!(
            "cannot connect to the shim at {}: {e}{hint}",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(READ_TIMEOUT))
        .context("set a read timeout on the control socket")?;
    s.write_all(format!("{}\n", command.line()).as_bytes())
        .with_context(|| format!("send {:?} to the shim", command.line()))?;
    let mut line = String::new();
    BufReader::new(s.take(MAX_REPLY))
        .read_line(&mut line)
        .map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => anyhow!(
                "the shim did not answer {:?} within {} s",
                command.line(),
                READ_TIMEOUT.as_secs()
            ),
            _ => anyhow!("read the shim's answer: {e}"),
        })?;
    parse_reply(&line)
}

/// As [`request`], where a refusal is an error: the shim's reason, or a plain one.
pub fn command(socket: &Path, command: &Command) -> Result<Reply> {
    let reply = request(socket, command)?;
    if !reply.ok {
        return Err(anyhow!(
            "{}",
            reply
                .error
                .as_deref()
                .unwrap_or("the shim refused, giving no reason")
        ));
    }
    Ok(reply)
}

fn parse_reply(line: &str) -> Result<Reply> {
    if line.trim().is_empty() {
        return Err(anyhow!("the shim closed the connection without an answer"));
    }
    serde_json::from_str(line)
        .map_err(|e| anyhow!("bad answer from the shim ({e}): {:?}", line.trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lightwhale_status::{ContainerStatus, State};
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_command_gets_the_shims_reply() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sock = tmp.path().join("abc.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let shim = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).expect("read");
            let mut status = ContainerStatus::new("moby", "abc", Default::default());
            status.state = State::Awake;
            let reply = Reply {
                ok: false,
                error: Some("checkpoint failed: CRIU said no".into()),
                status,
            };
            let body = serde_json::to_string(&reply).expect("json");
            (&stream)
                .write_all(format!("{body}\n").as_bytes())
                .expect("write");
            line
        });
        let reply = request(&sock, &Command::Sleep).expect("reply");
        assert_eq!(shim.join().expect("shim"), "sleep\n");
        assert!(!reply.ok);
        assert_eq!(reply.status.state, State::Awake);
        assert!(reply
            .error
            .unwrap_or_default()
            .contains("checkpoint failed"));
    }

    #[test]
    fn no_shim_is_an_error_with_a_hint() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let msg = request(&tmp.path().join("gone.sock"), &Command::Wake)
            .expect_err("no socket")
            .to_string();
        assert!(msg.contains("shim still running"), "{msg}");
    }

    #[test]
    fn odd_answers_are_errors() {
        assert!(parse_reply("").is_err());
        assert!(parse_reply("{\"ok\":false,\"error\":\"x\"}\n").is_err());
        assert!(parse_reply("\u{0}garbage").is_err());
    }
}
