//! A fake OCI runtime for the state machine's tests: no root, no runc, no CRIU.
//!
//! The "task" is the test process itself (so socket discovery and `pidfd_getfd` work on
//! real sockets); its incarnations end when the fake says so (a dump, a kill, a delete),
//! which is how the engine's exit handling is exercised. Every call is recorded, and
//! dumps and restores can be made to fail or to wait for the test's word.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use lightwhale_engine::config::{sleep_config, LazyMode, NodeConfig, SleepConfig};
use lightwhale_engine::reaper::Exit;
use lightwhale_engine::runc::{CheckpointOpts, CreateOpts, ExecOpts, ProcessIo, RestoreOpts};
use lightwhale_engine::runtime::OciRuntime;
use lightwhale_engine::stdio::StdioPaths;
use lightwhale_engine::{Container, CreateRequest, Dirs, Error, MemorySink, RuntimeErrorKind};
use tokio::sync::{oneshot, Semaphore};

#[derive(Default)]
pub struct Fake {
    calls: Mutex<Vec<String>>,
    /// Waiters for the current init incarnation (the test process's pid).
    init_waiters: Mutex<Vec<oneshot::Sender<Exit>>>,
    /// Waiters for exec pids (fake numbers), by pid.
    exec_waiters: Mutex<Vec<(i32, oneshot::Sender<Exit>)>>,
    next_exec_pid: AtomicI32,
    pub fail_checkpoint: AtomicBool,
    /// A failing dump during which the task also dies.
    pub die_during_checkpoint: AtomicBool,
    pub fail_restores: AtomicU32,
    /// When set, checkpoint/restore wait for a permit (the test's word) before acting.
    pub checkpoint_gate: Mutex<Option<Arc<Semaphore>>>,
    pub restore_gate: Mutex<Option<Arc<Semaphore>>>,
    /// How long `kill` takes after the signal ended the task (runc's kill is a program:
    /// the task may be gone well before it returns).
    pub kill_returns_after: Mutex<Duration>,
}

pub fn me() -> i32 {
    std::process::id() as i32
}

fn failed(op: &'static str, message: &str) -> Error {
    Error::Runtime {
        runtime: "fake".into(),
        op,
        status: 1,
        message: message.into(),
        kind: RuntimeErrorKind::Other,
    }
}

impl Fake {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets the calls recorded so far.
    pub fn forget_calls(&self) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn record(&self, call: String) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
    }

    /// Whether the engine watches the current init incarnation yet (an exit before that
    /// would go unseen: the fake's ends are messages to its waiters).
    pub fn init_watched(&self) -> bool {
        !self
            .init_waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Whether the engine watches exec `pid` yet.
    pub fn exec_watched(&self, pid: i32) -> bool {
        self.exec_waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(p, _)| *p == pid)
    }

    /// Ends the current init incarnation with `status`.
    pub fn end_init(&self, status: i32) {
        let waiters =
            std::mem::take(&mut *self.init_waiters.lock().unwrap_or_else(|p| p.into_inner()));
        for w in waiters {
            let _ = w.send(Exit {
                pid: me(),
                status,
                at: SystemTime::now(),
            });
        }
    }

    /// Ends exec `pid` with `status`.
    pub fn end_exec(&self, pid: i32, status: i32) {
        let mut all = self.exec_waiters.lock().unwrap_or_else(|p| p.into_inner());
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut *all)
            .into_iter()
            .partition(|(p, _)| *p == pid);
        *all = rest;
        for (_, w) in mine {
            let _ = w.send(Exit {
                pid,
                status,
                at: SystemTime::now(),
            });
        }
    }

    async fn pass(gate: &Mutex<Option<Arc<Semaphore>>>) {
        let g = gate.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(g) = g {
            if let Ok(p) = g.acquire().await {
                p.forget();
            }
        }
    }
}

fn write_pid(path: &Path, pid: i32) {
    std::fs::write(path, pid.to_string()).expect("write pid file");
}

#[async_trait]
impl OciRuntime for Fake {
    fn name(&self) -> &str {
        "fake"
    }
    async fn create(
        &self,
        id: &str,
        _bundle: &Path,
        opts: &CreateOpts,
        _io: ProcessIo,
    ) -> lightwhale_engine::Result<()> {
        self.record(format!("create {id}"));
        write_pid(&opts.pid_file, me());
        Ok(())
    }
    async fn start(&self, id: &str) -> lightwhale_engine::Result<()> {
        self.record(format!("start {id}"));
        Ok(())
    }
    async fn exec(
        &self,
        _id: &str,
        opts: &ExecOpts,
        _io: ProcessIo,
    ) -> lightwhale_engine::Result<()> {
        let pid = 4_000_000 + self.next_exec_pid.fetch_add(1, Ordering::Relaxed);
        self.record(format!("exec {pid}"));
        write_pid(&opts.pid_file, pid);
        Ok(())
    }
    async fn kill(&self, _id: &str, signal: i32, _all: bool) -> lightwhale_engine::Result<()> {
        self.record(format!("kill {signal}"));
        if signal == libc::SIGKILL || signal == libc::SIGTERM {
            self.end_init(128 + signal);
        }
        let after = *self
            .kill_returns_after
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        tokio::time::sleep(after).await;
        Ok(())
    }
    async fn delete(&self, _id: &str, _force: bool) -> lightwhale_engine::Result<()> {
        self.record("delete".into());
        self.end_init(128 + libc::SIGKILL);
        Ok(())
    }
    async fn pause(&self, _id: &str) -> lightwhale_engine::Result<()> {
        self.record("pause".into());
        Ok(())
    }
    async fn resume(&self, _id: &str) -> lightwhale_engine::Result<()> {
        self.record("resume".into());
        Ok(())
    }
    async fn ps(&self, _id: &str) -> lightwhale_engine::Result<Vec<i32>> {
        Ok(vec![me()])
    }
    async fn update(&self, _id: &str, _resources: &Path) -> lightwhale_engine::Result<()> {
        self.record("update".into());
        Ok(())
    }
    async fn checkpoint(&self, _id: &str, opts: &CheckpointOpts) -> lightwhale_engine::Result<()> {
        Self::pass(&self.checkpoint_gate).await;
        self.record("checkpoint".into());
        if self.die_during_checkpoint.load(Ordering::Relaxed) {
            self.end_init(128 + libc::SIGSEGV);
            return Err(failed("checkpoint", "the task died during the dump"));
        }
        if self.fail_checkpoint.load(Ordering::Relaxed) {
            return Err(failed("checkpoint", "criu failed: dump is impossible here"));
        }
        std::fs::write(opts.image_path.join("pages-1.img"), vec![0u8; 8192]).expect("pages");
        // CRIU ends the dumped task.
        self.end_init(128 + libc::SIGKILL);
        Ok(())
    }
    async fn restore(
        &self,
        _id: &str,
        _bundle: &Path,
        opts: &RestoreOpts,
        _io: ProcessIo,
    ) -> lightwhale_engine::Result<()> {
        Self::pass(&self.restore_gate).await;
        self.record("restore".into());
        if self
            .fail_restores
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(failed("restore", "criu failed: images are corrupt"));
        }
        write_pid(&opts.pid_file, me());
        Ok(())
    }
    fn checkpoint_blocker(&self, _pids: &[i32]) -> Option<String> {
        // The fake dumps anything: its "task" is the test process, root or not.
        None
    }
    async fn wait(&self, pid: i32, _since: Instant) -> Exit {
        let (tx, rx) = oneshot::channel();
        if pid == me() {
            self.init_waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(tx);
        } else {
            self.exec_waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((pid, tx));
        }
        rx.await.unwrap_or(Exit {
            pid,
            status: 255,
            at: SystemTime::now(),
        })
    }
}

/// A container of the fake runtime, its events, its listener and its directories.
pub struct Rig {
    pub c: Arc<Container>,
    pub fake: Arc<Fake>,
    pub sink: Arc<MemorySink>,
    pub listener: std::net::TcpListener,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Rig {
    pub fn images(&self) -> PathBuf {
        self.c.image_root.clone()
    }
}

/// Creates and starts a container on the fake runtime that holds a real listener.
pub async fn rig() -> Rig {
    rig_with(true, |_| {}).await
}

/// As [`rig`], with a network namespace of its own or the host's, and `tweak` applied to
/// its configuration.
pub async fn rig_with(own_netns: bool, tweak: impl FnOnce(&mut SleepConfig)) -> Rig {
    rig_full(own_netns, Default::default(), tweak).await
}

/// As [`rig_with`], in a pod (`pod`).
pub async fn rig_full(
    own_netns: bool,
    pod: lightwhale_engine::container::PodRole,
    tweak: impl FnOnce(&mut SleepConfig),
) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs")).expect("bundle");
    // A network namespace of its own, by path (a host-network container never sleeps);
    // the fake never enters it, so a plain file stands for it.
    let netns = dir.path().join("netns");
    std::fs::write(&netns, b"").expect("netns stand-in");
    let mut namespaces = vec![
        serde_json::json!({"type": "pid"}),
        serde_json::json!({"type": "mount"}),
    ];
    if own_netns {
        namespaces
            .push(serde_json::json!({"type": "network", "path": netns.display().to_string()}));
    }
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["app"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "linux": {"namespaces": namespaces}
    });
    std::fs::write(bundle.join("config.json"), spec.to_string()).expect("spec");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let fake = Arc::new(Fake::default());
    let sink = Arc::new(MemorySink::default());
    std::fs::write(dir.path().join("default.conf"), "network-lock skip\n").expect("profile");
    let mut config = SleepConfig {
        idle_timeout: std::time::Duration::from_secs(3600),
        ports: vec![port],
        lazy_pages: LazyMode::Off,
        // The test process's memory is counted against no budget and no reserve.
        wake_memory_reserve: 0,
        ..sleep_config(&[], &NodeConfig::default(), &[dir.path().to_path_buf()]).expect("config")
    };
    tweak(&mut config);
    let c = Container::create(CreateRequest {
        id: format!("fake-{port}"),
        namespace: "test".into(),
        bundle,
        stdio: StdioPaths::default(),
        config,
        runtime: fake.clone(),
        sink: sink.clone(),
        dirs: Dirs::under(dir.path()),
        bundle_state: Default::default(),
        no_pivot: false,
        no_new_keyring: false,
        pod,
    })
    .await
    .expect("create");
    c.start("").await.expect("start");
    Rig {
        c,
        fake,
        sink,
        listener,
        port,
        dir,
    }
}
