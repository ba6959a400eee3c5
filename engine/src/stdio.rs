//! Stdio owned by the shim.
//!
//! The container never sees the client's fifos: it gets pipes (or a pty) whose other ends
//! the shim holds and copies to the fifos. Pipes, unlike fifo files outside the container,
//! can be checkpointed (runc hands them to CRIU as inherited fds), and because the shim
//! keeps the container's ends of the pipes too, a restored task can be given the very
//! same pipes: output written before and after a sleep reaches the same log.
//!
//! One file past 600 lines: the sinks (fifo, file, `binary://` logger), pipes and ptys
//! share one copier and one drain at exit, and their tests; split, each would need the
//! others' internals.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::OFlag;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::runc::ProcessIo;
use crate::{Error, Result};

/// Where the client wants one stream. containerd passes fifo paths, or `file://` and
/// `binary://` URIs (log drivers), or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    None,
    Fifo(PathBuf),
    File(PathBuf),
    /// A logging binary (containerd's `binary://` URI): it reads stdout on fd 3 and
    /// stderr on fd 4, and closes fd 5 once it is ready. Query pairs become arguments.
    Binary {
        path: PathBuf,
        args: Vec<String>,
    },
}

impl Sink {
    pub fn parse(uri: &str) -> Result<Sink> {
        if uri.is_empty() {
            return Ok(Sink::None);
        }
        if let Some(rest) = uri.strip_prefix("file://") {
            return Ok(Sink::File(PathBuf::from(rest)));
        }
        if let Some(rest) = uri.strip_prefix("fifo://") {
            return Ok(Sink::Fifo(PathBuf::from(rest)));
        }
        if let Some(rest) = uri.strip_prefix("binary://") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if path.is_empty() {
                return Err(Error::StdioUri {
                    uri: uri.to_string(),
                    reason: "binary:// URI without a path",
                });
            }
            let mut args = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                args.push(percent_decode(k));
                if !v.is_empty() {
                    args.push(percent_decode(v));
                }
            }
            return Ok(Sink::Binary {
                path: PathBuf::from(percent_decode(path)),
                args,
            });
        }
        if uri.contains("://") {
            return Err(Error::StdioUri {
                uri: uri.to_string(),
                reason: "unsupported stdio URI scheme (supported: fifo paths, file://, binary://)",
            });
        }
        Ok(Sink::Fifo(PathBuf::from(uri)))
    }
}

/// The client's view of a process's stdio, as given in Create or Exec.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
    /// Container id and namespace, for a `binary://` logger's environment.
    pub id: String,
    pub namespace: String,
}

/// The container's ends of its stdio pipes, kept for the life of the process so they
/// can be handed to runc again (restore).
struct ContainerEnds {
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

/// A process's stdio and the tasks that copy it.
pub struct Stdio {
    ends: Mutex<Option<ContainerEnds>>,
    stdin_copier: Mutex<Option<JoinHandle<()>>>,
    copiers: Mutex<Vec<JoinHandle<()>>>,
    console: Mutex<Option<File>>,
    console_threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

fn pipe_pair() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    fd.try_clone().map_err(|e| Error::io("dup", "fd", e))
}

impl Stdio {
    /// Creates pipes for a process without a terminal and starts copying them.
    pub fn pipes(paths: &StdioPaths) -> Result<Stdio> {
        let stdin_sink = Sink::parse(&paths.stdin)?;
        let stdout_sink = Sink::parse(&paths.stdout)?;
        let stderr_sink = Sink::parse(&paths.stderr)?;

        let mut copiers = Vec::new();
        let mut stdin_copier = None;
        let stdin = match stdin_sink {
            Sink::None => None,
            source => {
                let (r, w) = pipe_pair()?;
                stdin_copier = Some(tokio::spawn(copy_in(source, w)));
                Some(r)
            }
        };
        let (out_r, out_w) = pipe_pair()?;
        let (err_r, err_w) = pipe_pair()?;
        if let Sink::Binary { path, args } = &stdout_sink {
            // One logger for both streams, fed through pipes of its own so the
            // container's pipes stay the shim's (they must survive a checkpoint).
            let (log_out_r, log_out_w) = pipe_pair()?;
            let (log_err_r, log_err_w) = pipe_pair()?;
            spawn_logger(
                path,
                args,
                &paths.id,
                &paths.namespace,
                log_out_r,
                log_err_r,
            )?;
            copiers.push(tokio::spawn(copy_to_fd(out_r, log_out_w)));
            copiers.push(tokio::spawn(copy_to_fd(err_r, log_err_w)));
        } else {
            copiers.push(tokio::spawn(copy_out(out_r, stdout_sink)));
            copiers.push(tokio::spawn(copy_out(err_r, stderr_sink)));
        }

        Ok(Stdio {
            ends: Mutex::new(Some(ContainerEnds {
                stdin,
                stdout: out_w,
                stderr: err_w,
            })),
            stdin_copier: Mutex::new(stdin_copier),
            copiers: Mutex::new(copiers),
            console: Mutex::new(None),
            console_threads: Mutex::new(Vec::new()),
        })
    }

    /// For a terminal process: the pty master arrives later through a console socket.
    pub fn terminal() -> Stdio {
        Stdio {
            ends: Mutex::new(None),
            stdin_copier: Mutex::new(None),
            copiers: Mutex::new(Vec::new()),
            console: Mutex::new(None),
            console_threads: Mutex::new(Vec::new()),
        }
    }

    /// Fresh duplicates of the container's ends, for a runc command to pass on.
    pub fn process_io(&self) -> Result<ProcessIo> {
        let ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ends) = ends.as_ref() else {
            return Ok(ProcessIo::default());
        };
        Ok(ProcessIo {
            stdin: ends.stdin.as_ref().map(dup).transpose()?,
            stdout: Some(dup(&ends.stdout)?),
            stderr: Some(dup(&ends.stderr)?),
        })
    }

    /// Takes the pty master and copies it to and from the client's fifos.
    pub fn attach_console(&self, master: OwnedFd, paths: &StdioPaths) -> Result<()> {
        let master = File::from(master);
        let reader = master
            .try_clone()
            .map_err(|e| Error::io("dup", "console", e))?;
        let writer = master
            .try_clone()
            .map_err(|e| Error::io("dup", "console", e))?;
        let mut threads = self
            .console_threads
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let out = Sink::parse(&paths.stdout)?;
        threads.push(std::thread::spawn(move || {
            if let Ok(Some(mut w)) = open_sink_blocking(&out) {
                copy_blocking(reader, &mut w);
            } else {
                copy_blocking(reader, &mut std::io::sink());
            }
        }));
        let input = Sink::parse(&paths.stdin)?;
        if input != Sink::None {
            // Not joined: it ends when the client closes stdin or the pty goes away.
            std::thread::spawn(move || {
                let mut writer = writer;
                if let Ok(Some(r)) = open_source_blocking(&input) {
                    copy_blocking(r, &mut writer);
                }
            });
        }
        *self.console.lock().unwrap_or_else(|p| p.into_inner()) = Some(master);
        Ok(())
    }

    pub fn resize(&self, width: u16, height: u16) -> Result<()> {
        let console = self.console.lock().unwrap_or_else(|p| p.into_inner());
        let Some(master) = console.as_ref() else {
            return Ok(());
        };
        let ws = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize struct that lives for the whole call, on an
        // fd we own.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(master),
                libc::TIOCSWINSZ,
                &ws,
            )
        };
        if rc != 0 {
            return Err(Error::io(
                "resize",
                "console",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// CloseIO: the client has no more input; the process sees EOF on stdin.
    pub fn close_stdin(&self) {
        if let Some(h) = self
            .stdin_copier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.abort();
        }
        if let Some(ends) = self.ends.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            ends.stdin = None;
        }
    }

    /// The process has exited for good: let go of its ends so the copiers reach EOF,
    /// then wait (bounded) until everything it wrote has reached the client.
    pub async fn finish(&self, timeout: std::time::Duration) {
        self.ends.lock().unwrap_or_else(|p| p.into_inner()).take();
        let copiers: Vec<_> =
            std::mem::take(&mut *self.copiers.lock().unwrap_or_else(|p| p.into_inner()));
        let threads: Vec<_> = std::mem::take(
            &mut *self
                .console_threads
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let all = async {
            for c in copiers {
                let _ = c.await;
            }
            let _ = tokio::task::spawn_blocking(move || {
                for t in threads {
                    let _ = t.join();
                }
            })
            .await;
        };
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!(
                "stdio copy did not finish within {timeout:?}; a child may still hold the pipe"
            );
        }
        if let Some(h) = self
            .stdin_copier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.abort();
        }
        self.console
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

/// Starts a `binary://` logger: fd 3 = stdout, fd 4 = stderr, fd 5 = readiness pipe
/// (the logger closes it when ready; we wait for that, as containerd's shims do).
fn spawn_logger(
    path: &Path,
    args: &[String],
    id: &str,
    ns: &str,
    out: OwnedFd,
    err: OwnedFd,
) -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (ready_r, ready_w) = pipe_pair()?;
    // Above 100, so placing them at 3, 4 and 5 in the child never clobbers one another.
    let high = |fd: &OwnedFd| -> Result<OwnedFd> {
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100))
            .map(|raw| {
                // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
                unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) }
            })
            .map_err(|e| Error::sys("fcntl(F_DUPFD_CLOEXEC)", e))
    };
    let (o, e, w) = (high(&out)?, high(&err)?, high(&ready_w)?);
    drop((out, err, ready_w));
    let fds = [o.as_raw_fd(), e.as_raw_fd(), w.as_raw_fd()];
    let mut cmd = std::process::Command::new(path);
    cmd.args(args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", ns)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: between fork and exec only dup2 runs, which is async-signal-safe; it
    // touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            for (target, src) in (3..).zip(fds) {
                if libc::dup2(src, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| Error::Spawn {
        binary: path.display().to_string(),
        source: e,
    })?;
    // Its exit is collected by the reaper; nobody needs the status.
    drop(child);
    drop((o, e, w));
    // Wait (bounded) for the logger to be ready: EOF or a byte on the readiness pipe.
    let mut ready = File::from(ready_r);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let _ = tx.send(ready.read(&mut b));
    });
    match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Error::io("logging binary", path, e)),
        Err(_) => Err(Error::io(
            "logging binary did not get ready within 10 s",
            path,
            std::io::Error::from(std::io::ErrorKind::TimedOut),
        )),
    }
}

async fn copy_to_fd(from: OwnedFd, to: OwnedFd) {
    let Ok(mut from) = pipe::Receiver::from_owned_fd(from) else {
        return;
    };
    let Ok(mut to) = pipe::Sender::from_owned_fd(to) else {
        return;
    };
    let _ = tokio::io::copy(&mut from, &mut to).await;
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn copy_blocking(mut from: impl Read, to: &mut dyn Write) {
    let mut buf = [0u8; 32 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO: the pty's last slave fd is gone (the process exited).
            Err(_) => return,
        }
    }
}

fn open_sink_blocking(sink: &Sink) -> std::io::Result<Option<File>> {
    match sink {
        // A terminal's output to a logging binary is drained (not supported yet).
        Sink::None | Sink::Binary { .. } => Ok(None),
        // Blocks until the client's reader is there, as it is before Create returns.
        Sink::Fifo(p) => OpenOptions::new().write(true).open(p).map(Some),
        Sink::File(p) => {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(p)
                .map(Some)
        }
    }
}

fn open_source_blocking(source: &Sink) -> std::io::Result<Option<File>> {
    match source {
        Sink::None | Sink::Binary { .. } => Ok(None),
        // A blocking open waits for the client's writer; a non-blocking one would read
        // EOF before the client attached and close the container's stdin too early.
        Sink::Fifo(p) | Sink::File(p) => File::open(p).map(Some),
    }
}

async fn copy_in(source: Sink, to: OwnedFd) {
    let opened = tokio::task::spawn_blocking(move || open_source_blocking(&source)).await;
    let Ok(Ok(Some(file))) = opened else { return };
    let Ok(mut from) = pipe::Receiver::from_file(file) else {
        return;
    };
    let Ok(mut to) = pipe::Sender::from_owned_fd(to) else {
        return;
    };
    let _ = tokio::io::copy(&mut from, &mut to).await;
    // Dropping `to` closes the process's stdin: it reads EOF.
}

async fn copy_out(from: OwnedFd, sink: Sink) {
    let Ok(mut from) = pipe::Receiver::from_owned_fd(from) else {
        return;
    };
    let opened = tokio::task::spawn_blocking(move || open_sink_blocking(&sink)).await;
    match opened {
        Ok(Ok(Some(file))) => {
            let is_fifo = file
                .metadata()
                .map(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()))
                .unwrap_or(false);
            if is_fifo {
                if let Ok(mut to) = pipe::Sender::from_file(file) {
                    let _ = tokio::io::copy(&mut from, &mut to).await;
                    let _ = to.flush().await;
                    return;
                }
            } else {
                let mut to = tokio::fs::File::from_std(file);
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.flush().await;
                return;
            }
            drain(from).await
        }
        _ => drain(from).await,
    }
}

/// Nobody listens: keep reading so the process never blocks on a full pipe.
async fn drain(mut from: pipe::Receiver) {
    let _ = tokio::io::copy(&mut from, &mut tokio::io::sink()).await;
}

/// A unix socket runc connects to, to send the pty master of a terminal process.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    pub fn new(dir: &Path) -> Result<ConsoleSocket> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        // unix socket paths are limited to 108 bytes: keep the name short.
        let name = format!("c{}-{}.sock", std::process::id(), next_seq());
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).map_err(|e| Error::io("bind console socket", &path, e))?;
        Ok(ConsoleSocket { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives the pty master. Call after runc returned: it has sent it by then.
    pub fn receive_master(&self) -> Result<OwnedFd> {
        self.listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("console socket", &self.path, e))?;
        let (stream, _) = self
            .listener
            .accept()
            .map_err(|e| Error::io("runc sent no console on", &self.path, e))?;
        stream
            .set_nonblocking(false)
            .map_err(|e| Error::io("console socket", &self.path, e))?;
        recv_fd(&stream).map_err(|e| Error::io("receive console from", &self.path, e))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn next_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

fn recv_fd(stream: &std::os::unix::net::UnixStream) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: SCM_RIGHTS just installed this fd in our table; nothing else
                // owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "no fd in console message",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_parsing() {
        assert_eq!(Sink::parse("").ok(), Some(Sink::None));
        assert_eq!(
            Sink::parse("/run/x/stdout").ok(),
            Some(Sink::Fifo("/run/x/stdout".into()))
        );
        assert_eq!(
            Sink::parse("file:///var/log/a").ok(),
            Some(Sink::File("/var/log/a".into()))
        );
        assert!(Sink::parse("http://x").is_err());
        assert_eq!(
            Sink::parse("binary:///usr/local/bin/nerdctl?_NERDCTL_INTERNAL_LOGGING=%2Fvar%2Flib%2Fnerdctl&x").ok(),
            Some(Sink::Binary {
                path: "/usr/local/bin/nerdctl".into(),
                args: vec!["_NERDCTL_INTERNAL_LOGGING".into(), "/var/lib/nerdctl".into(), "x".into()],
            })
        );
        assert!(Sink::parse("binary://").is_err());
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }
}
