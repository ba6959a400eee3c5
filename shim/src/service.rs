//! The shim v2 Task service: every RPC containerd sends, carried out with runc.
//!
//! State is keyed by container id from the start: containerd groups a pod's containers
//! into one shim (by the sandbox-id annotation), so one service holds many containers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::cgroup::{collect_metrics, get_cgroup};
use containerd_shim::event::Event;
use containerd_shim::util::convert_to_any;
use containerd_shim_protos::api::*;
use containerd_shim_protos::events::task::{
    TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO,
    TaskOOM, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::context::Context;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{self, Code};
use lightwhale_engine::cgroup::MemoryCgroup;
use lightwhale_engine::runc::{CheckpointOpts, CreateOpts, ExecOpts, Runc};
use lightwhale_engine::spec::BundleSpec;
use lightwhale_engine::stdio::{ConsoleSocket, Stdio, StdioPaths};
use lightwhale_engine::{netns, reaper};
use tracing::{info, warn};

use crate::config::{self, NodeConfig, SleepConfig};
use crate::options::{self, BundleState, STATE_DIR};
use crate::process::{ExitInfo, Phase, Process};
use crate::sleep::{self, Held, Status};

/// How long a finished process's output may take to drain to the client.
const IO_DRAIN: Duration = Duration::from_secs(3);

type RpcResult<T> = ttrpc::Result<T>;

fn status(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn not_found(msg: impl Into<String>) -> ttrpc::Error {
    status(Code::NOT_FOUND, msg)
}

fn internal(e: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::UNKNOWN, e.to_string())
}

fn ts(t: std::time::SystemTime) -> MessageField<Timestamp> {
    MessageField::some(Timestamp::from(t))
}

pub struct Container {
    pub id: String,
    pub namespace: String,
    pub bundle: PathBuf,
    pub runc: Runc,
    state: BundleState,
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    pub memcg: Mutex<Option<MemoryCgroup>>,
    oom_baseline: AtomicU64,
    /// Orders a process's start event before its exit event.
    event_order: tokio::sync::Mutex<()>,
    pub sleep_cfg: SleepConfig,
    /// `<image dir>/<namespace>/<id>`: checkpoint images, CRIU logs, the restore bundle.
    pub image_root: PathBuf,
    /// One sleep/wake transition at a time.
    pub transition: tokio::sync::Mutex<()>,
    pub ckpt: Mutex<CheckpointGuard>,
    pub held: Mutex<Held>,
    /// The page fill of the last lazy wake, while it runs.
    pub fill: Mutex<Option<crate::sleep::Fill>>,
    pub status: Mutex<Status>,
    /// Resources sent by Update while asleep, applied at wake.
    pub pending_update: Mutex<Option<PathBuf>>,
    activity: AtomicBool,
    pub deleted: AtomicBool,
    pub control_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The init pid being checkpointed: its exit is the dump's doing, not the task's end.
#[derive(Default)]
pub struct CheckpointGuard {
    pub pid: i32,
    pub swallowed: Option<reaper::Exit>,
}

impl Container {
    pub fn running_execs(&self) -> usize {
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|p| matches!(p.phase(), Phase::Running | Phase::Paused))
            .count()
    }

    pub fn record_error(&self, e: &dyn std::fmt::Display) {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error = Some(e.to_string());
        self.write_status();
    }

    /// Marks activity the monitor cannot see in counters (an exec, a wake).
    pub fn touch_activity(&self) {
        self.activity.store(true, Ordering::Relaxed);
    }

    pub fn take_activity(&self) -> bool {
        self.activity.swap(false, Ordering::Relaxed)
    }

    fn process(&self, exec_id: &str) -> RpcResult<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| not_found(format!("exec {exec_id} not found in container {}", self.id)))
    }
}

pub struct Shared {
    namespace: String,
    node: NodeConfig,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

impl Shared {
    pub async fn publish(&self, topic: &str, event: Box<dyn Event>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            warn!("publish {topic}: {e}");
        }
    }
}

pub struct Service {
    shared: Arc<Shared>,
}

impl Service {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Service {
        Service {
            shared: Arc::new(Shared {
                namespace: namespace.to_string(),
                node: NodeConfig::load().unwrap_or_else(|e| {
                    warn!("{e}; using built-in defaults");
                    NodeConfig::default()
                }),
                publisher,
                exit,
                containers: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn container(&self, id: &str) -> RpcResult<Arc<Container>> {
        self.shared
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(format!("container {id} not found")))
    }
}

/// Undoes what Create set up; used on a failed Create and on Delete.
pub fn cleanup_bundle(bundle: &Path, state: &BundleState) {
    if state.rootfs_mounted {
        let rootfs = bundle.join("rootfs");
        if let Err(e) = nix::mount::umount2(&rootfs, nix::mount::MntFlags::empty()) {
            if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
                warn!("unmount {}: {e}; detaching", rootfs.display());
                let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    if let Some(ns) = &state.netns {
        if let Err(e) = netns::remove_pinned(ns) {
            warn!("{e}");
        }
    }
}

fn valid_exec_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && id != "."
        && id != ".."
}

fn read_pid(path: &Path) -> RpcResult<i32> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| internal(format!("read {}: {e}", path.display())))?;
    text.trim()
        .parse()
        .map_err(|_| internal(format!("bad pid file {}: {text:?}", path.display())))
}

/// Watches a process until it exits, then drains its output and reports the exit.
pub fn spawn_exit_watcher(
    shared: Arc<Shared>,
    c: Arc<Container>,
    p: Arc<Process>,
    pid: i32,
    since: Instant,
) {
    tokio::spawn(async move {
        let exit = reaper::wait(pid, since).await;
        if p.exec_id.is_empty() {
            let mut g = c.ckpt.lock().unwrap_or_else(|p| p.into_inner());
            if g.pid == pid {
                // CRIU ended it for a checkpoint; the sleep path decides what it means.
                g.swallowed = Some(exit);
                return;
            }
        }
        handle_exit(shared, c, p, exit).await;
    });
}

/// A process ended for good: OOM check, drain its output, report the exit.
pub async fn handle_exit(
    shared: Arc<Shared>,
    c: Arc<Container>,
    p: Arc<Process>,
    exit: reaper::Exit,
) {
    let is_init = p.exec_id.is_empty();
    let pid = exit.pid;
    if is_init {
        let memcg = c.memcg.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(cg) = memcg {
            if cg.oom_kills() > c.oom_baseline.load(Ordering::Relaxed) {
                info!(id = %c.id, "OOM kill in container");
                shared
                    .publish(
                        containerd_shim_protos::topics::TASK_OOM_EVENT_TOPIC,
                        Box::new(TaskOOM {
                            container_id: c.id.clone(),
                            ..Default::default()
                        }),
                    )
                    .await;
            }
        }
    }
    if let Some(stdio) = p.stdio() {
        stdio.finish(IO_DRAIN).await;
    }
    let info = ExitInfo {
        status: exit.status as u32,
        at: exit.at,
    };
    let _order = c.event_order.lock().await;
    p.set_exited(info);
    info!(id = %c.id, exec = %p.exec_id, pid, status = exit.status, "process exited");
    shared
        .publish(
            containerd_shim_protos::topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: c.id.clone(),
                id: if is_init {
                    c.id.clone()
                } else {
                    p.exec_id.clone()
                },
                pid: pid as u32,
                exit_status: info.status,
                exited_at: ts(info.at),
                ..Default::default()
            }),
        )
        .await;
}

/// Starts a process's stdio and runs `launch` (runc create or exec) with it; for a
/// terminal, receives the pty master afterwards.
async fn with_stdio<F, Fut>(p: &Process, launch: F) -> RpcResult<()>
where
    F: FnOnce(lightwhale_engine::runc::ProcessIo, Option<PathBuf>) -> Fut,
    Fut: std::future::Future<Output = lightwhale_engine::Result<()>>,
{
    if p.paths.terminal {
        let console =
            ConsoleSocket::new(&Path::new(STATE_DIR).join("console")).map_err(internal)?;
        let stdio = Arc::new(Stdio::terminal());
        p.set_stdio(stdio.clone());
        launch(Default::default(), Some(console.path().to_path_buf()))
            .await
            .map_err(internal)?;
        let master = console.receive_master().map_err(internal)?;
        stdio.attach_console(master, &p.paths).map_err(internal)?;
    } else {
        let stdio = Arc::new(
            Stdio::pipes(&p.paths).map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?,
        );
        p.set_stdio(stdio.clone());
        let io = stdio.process_io().map_err(internal)?;
        if let Err(e) = launch(io, None).await {
            stdio.finish(Duration::from_millis(100)).await;
            return Err(internal(e));
        }
    }
    Ok(())
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> RpcResult<CreateTaskResponse> {
        let id = req.id.clone();
        info!(%id, bundle = %req.bundle, "create");
        let opts = options::runc_options(req.options.as_ref())
            .map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        if !req.checkpoint.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "creating a task from a checkpoint is not supported by io.containerd.lightwhale.v2 yet",
            ));
        }
        if self.container(&id).is_ok() {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {id} already exists"),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let mut spec =
            BundleSpec::load(&bundle).map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        let sleep_cfg = config::sleep_config(
            &spec.annotations(),
            &self.shared.node,
            &config::profile_dirs(),
        )
        .map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        let binary_name = if opts.binary_name.is_empty() {
            "runc"
        } else {
            opts.binary_name.as_str()
        };
        let binary = Runc::find_binary(binary_name).ok_or_else(|| {
            status(
                Code::FAILED_PRECONDITION,
                format!("runtime binary {binary_name:?} not found in PATH"),
            )
        })?;
        let ns = self.shared.namespace.clone();
        let mut state = BundleState {
            runc_binary: binary.display().to_string(),
            runc_root: options::runc_root(&opts, &ns),
            systemd_cgroup: opts.systemd_cgroup,
            rootfs_mounted: false,
            netns: None,
        };
        let runc = Runc::new(&binary, &state.runc_root, opts.systemd_cgroup)
            .with_criu_helpers(config::criu_helpers_dir(&self.shared.node));

        let setup = async {
            if !req.rootfs.is_empty() {
                let rootfs = bundle.join("rootfs");
                std::fs::create_dir_all(&rootfs).map_err(internal)?;
                for m in &req.rootfs {
                    containerd_shim::asynchronous::util::mount_rootfs(m, &rootfs)
                        .await
                        .map_err(|e| internal(format!("mount rootfs: {e}")))?;
                    state.rootfs_mounted = true;
                }
            }
            if spec.network_ns_without_path() {
                if spec.has_namespace("user") {
                    // A namespace we made would belong to the host's user namespace.
                    info!(%id, "user namespace in spec: leaving the network namespace to runc");
                } else {
                    let pin = netns::pin_path(Path::new(STATE_DIR), &ns, &id);
                    let _ = netns::remove_pinned(&pin);
                    netns::create_pinned(&pin).map_err(internal)?;
                    state.netns = Some(pin.clone());
                    spec.set_network_ns_path(&pin);
                    spec.save().map_err(internal)?;
                }
            }
            if sleep_cfg.enabled {
                // runc passes this file to CRIU on checkpoint and restore alike.
                spec.set_annotation(
                    "org.criu.config",
                    &sleep_cfg.criu_profile_path.display().to_string(),
                );
                spec.save().map_err(internal)?;
            }
            state.save(&bundle).map_err(internal)?;

            let paths = StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                id: id.clone(),
                namespace: ns.clone(),
            };
            let init = Process::new("", paths, Vec::new());
            let pid_file = bundle.join("init.pid");
            let since = Instant::now();
            with_stdio(&init, |io, console_socket| {
                let copts = CreateOpts {
                    pid_file: pid_file.clone(),
                    log_file: bundle.join("log.json"),
                    console_socket,
                    no_pivot: opts.no_pivot_root,
                    no_new_keyring: opts.no_new_keyring,
                };
                let runc = runc.clone();
                let id = id.clone();
                let bundle = bundle.clone();
                async move { runc.create(&id, &bundle, &copts, io).await }
            })
            .await?;
            let pid = read_pid(&pid_file)?;
            init.set_pid(pid);
            RpcResult::Ok((init, pid, since))
        };
        let (init, pid, since) = match setup.await {
            Ok(v) => v,
            Err(e) => {
                warn!(%id, "create failed: {e:?}");
                let _ = runc.delete(&id, true).await;
                cleanup_bundle(&bundle, &state);
                return Err(e);
            }
        };

        let memcg = MemoryCgroup::of_pid(pid);
        let baseline = memcg.as_ref().map(MemoryCgroup::oom_kills).unwrap_or(0);
        let image_root = self.shared.node.image_dir().join(&ns).join(&id);
        let status_doc = Status {
            id: id.clone(),
            namespace: ns.clone(),
            since_unix_ms: 0,
            config: serde_json::json!({
                "sleep": sleep_cfg.enabled,
                "idle_timeout_ms": sleep_cfg.idle_timeout.as_millis() as u64,
                "ports": sleep_cfg.ports,
                "criu_profile": sleep_cfg.criu_profile,
                "criu_profile_path": sleep_cfg.criu_profile_path,
                "image_dir": image_root,
                "lazy_pages": sleep_cfg.lazy_pages,
                "lazy_pages_threshold_bytes": sleep_cfg.lazy_threshold,
            }),
            ..Default::default()
        };
        let c = Arc::new(Container {
            id: id.clone(),
            namespace: ns.clone(),
            bundle: bundle.clone(),
            runc,
            state,
            init: init.clone(),
            execs: Mutex::new(HashMap::new()),
            memcg: Mutex::new(memcg),
            oom_baseline: AtomicU64::new(baseline),
            event_order: tokio::sync::Mutex::new(()),
            sleep_cfg,
            image_root,
            transition: tokio::sync::Mutex::new(()),
            ckpt: Mutex::new(CheckpointGuard::default()),
            held: Mutex::new(Held::default()),
            fill: Mutex::new(None),
            status: Mutex::new(status_doc),
            pending_update: Mutex::new(None),
            activity: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            control_task: Mutex::new(None),
        });
        c.write_status();
        sleep::spawn_control(self.shared.clone(), c.clone());
        self.shared
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), c.clone());
        spawn_exit_watcher(self.shared.clone(), c, init, pid, since);

        self.shared
            .publish(
                containerd_shim_protos::topics::TASK_CREATE_EVENT_TOPIC,
                Box::new(TaskCreate {
                    container_id: id,
                    bundle: req.bundle.clone(),
                    rootfs: req.rootfs.clone(),
                    io: MessageField::some(TaskIO {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                        ..Default::default()
                    }),
                    checkpoint: req.checkpoint.clone(),
                    pid: pid as u32,
                    ..Default::default()
                }),
            )
            .await;
        Ok(CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> RpcResult<StartResponse> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if p.phase() != Phase::Created {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("process {} is not in created state", req.id),
            ));
        }
        let _order = c.event_order.lock().await;
        if req.exec_id.is_empty() {
            c.runc.start(&c.id).await.map_err(internal)?;
            p.set_phase(Phase::Running);
            {
                let mut st = c.status.lock().unwrap_or_else(|p| p.into_inner());
                st.since_unix_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
            }
            c.write_status();
            if c.sleep_cfg.enabled {
                sleep::spawn_monitor(self.shared.clone(), c.clone());
            }
            let pid = p.pid();
            self.shared
                .publish(
                    containerd_shim_protos::topics::TASK_START_EVENT_TOPIC,
                    Box::new(TaskStart {
                        container_id: c.id.clone(),
                        pid: pid as u32,
                        ..Default::default()
                    }),
                )
                .await;
            return Ok(StartResponse {
                pid: pid as u32,
                ..Default::default()
            });
        }

        drop(_order);
        c.touch_activity();
        sleep::wake(&self.shared, &c, "exec")
            .await
            .map_err(internal)?;
        let _order = c.event_order.lock().await;
        let exec_id = req.exec_id.clone();
        let process_json = c.bundle.join(format!(".lightwhale-exec-{exec_id}.json"));
        std::fs::write(&process_json, &p.spec).map_err(internal)?;
        let pid_file = c.bundle.join(format!(".lightwhale-exec-{exec_id}.pid"));
        let since = Instant::now();
        let result = with_stdio(&p, |io, console_socket| {
            let eopts = ExecOpts {
                wait: false,
                process_json: process_json.clone(),
                pid_file: pid_file.clone(),
                log_file: c.bundle.join(format!(".lightwhale-exec-{exec_id}.log")),
                console_socket,
            };
            let runc = c.runc.clone();
            let id = c.id.clone();
            async move { runc.exec(&id, &eopts, io).await }
        })
        .await;
        let _ = std::fs::remove_file(&process_json);
        let _ = std::fs::remove_file(c.bundle.join(format!(".lightwhale-exec-{exec_id}.log")));
        if let Err(e) = result {
            p.set_exited(ExitInfo {
                status: 255,
                at: std::time::SystemTime::now(),
            });
            return Err(e);
        }
        let pid = read_pid(&pid_file)?;
        let _ = std::fs::remove_file(&pid_file);
        p.set_pid(pid);
        p.set_phase(Phase::Running);
        spawn_exit_watcher(self.shared.clone(), c.clone(), p.clone(), pid, since);
        self.shared
            .publish(
                containerd_shim_protos::topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: c.id.clone(),
                    exec_id,
                    pid: pid as u32,
                    ..Default::default()
                }),
            )
            .await;
        Ok(StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> RpcResult<StateResponse> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let exit = p.exit();
        Ok(StateResponse {
            id: if req.exec_id.is_empty() {
                c.id.clone()
            } else {
                req.exec_id.clone()
            },
            bundle: c.bundle.display().to_string(),
            pid: p.pid() as u32,
            status: p.status().into(),
            stdin: p.paths.stdin.clone(),
            stdout: p.paths.stdout.clone(),
            stderr: p.paths.stderr.clone(),
            terminal: p.paths.terminal,
            exit_status: exit.map(|e| e.status).unwrap_or(0),
            exited_at: exit.map(|e| ts(e.at)).unwrap_or_default(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> RpcResult<DeleteResponse> {
        let c = self.container(&req.id)?;
        if !req.exec_id.is_empty() {
            let p = c.process(&req.exec_id)?;
            if matches!(p.phase(), Phase::Running | Phase::Paused) {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("exec {} is still running", req.exec_id),
                ));
            }
            c.execs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&req.exec_id);
            let exit = p.exit();
            return Ok(DeleteResponse {
                pid: p.pid() as u32,
                exit_status: exit.map(|e| e.status).unwrap_or(0),
                exited_at: exit.map(|e| ts(e.at)).unwrap_or_default(),
                ..Default::default()
            });
        }
        let p = c.init.clone();
        c.deleted.store(true, Ordering::Relaxed);
        sleep::kill_asleep(&self.shared, &c).await;
        if let Err(e) = c.runc.delete(&c.id, true).await {
            // Gone already is what we want.
            if !e.to_string().contains("does not exist") {
                return Err(internal(e));
            }
        }
        // A created task that never ran is killed by `delete --force`; report its exit.
        let exit = match tokio::time::timeout(Duration::from_secs(10), p.wait()).await {
            Ok(e) => e,
            Err(_) => {
                return Err(internal(format!(
                    "container {} did not exit after delete",
                    c.id
                )))
            }
        };
        cleanup_bundle(&c.bundle, &c.state);
        c.stop_fill();
        c.discard_images();
        if let Some(t) = c
            .control_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.abort();
        }
        let _ = std::fs::remove_file(c.control_path());
        let _ = std::fs::remove_file(c.status_path());
        self.shared
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&c.id);
        self.shared
            .publish(
                containerd_shim_protos::topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: c.id.clone(),
                    pid: p.pid() as u32,
                    exit_status: exit.status,
                    exited_at: ts(exit.at),
                    id: c.id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(DeleteResponse {
            pid: p.pid() as u32,
            exit_status: exit.status,
            exited_at: ts(exit.at),
            ..Default::default()
        })
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> RpcResult<PidsResponse> {
        let c = self.container(&req.id)?;
        if c.init.phase() == Phase::Stopped || c.is_asleep() {
            // Asleep: truthfully no processes, and never an error.
            return Ok(PidsResponse::default());
        }
        let pids = c.runc.ps(&c.id).await.map_err(internal)?;
        let execs: HashMap<i32, String> = c
            .execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|p| (p.pid(), p.exec_id.clone()))
            .collect();
        let processes = pids
            .into_iter()
            .map(|pid| {
                let mut info = ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                };
                if let Some(exec_id) = execs.get(&pid) {
                    let details = containerd_shim_protos::shim::oci::ProcessDetails {
                        exec_id: exec_id.clone(),
                        ..Default::default()
                    };
                    if let Ok(any) = convert_to_any(Box::new(details)) {
                        info.info = MessageField::some(any);
                    }
                }
                info
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> RpcResult<Empty> {
        let c = self.container(&req.id)?;
        sleep::wake(&self.shared, &c, "pause")
            .await
            .map_err(internal)?;
        c.runc.pause(&c.id).await.map_err(internal)?;
        c.init.set_phase(Phase::Paused);
        self.shared
            .publish(
                containerd_shim_protos::topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id: c.id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> RpcResult<Empty> {
        let c = self.container(&req.id)?;
        c.runc.resume(&c.id).await.map_err(internal)?;
        c.init.set_phase(Phase::Running);
        self.shared
            .publish(
                containerd_shim_protos::topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id: c.id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: CheckpointTaskRequest,
    ) -> RpcResult<Empty> {
        let c = self.container(&req.id)?;
        let o = options::checkpoint_options(req.options.as_ref())
            .map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        sleep::wake(&self.shared, &c, "checkpoint request")
            .await
            .map_err(internal)?;
        let image_path = if o.image_path.is_empty() {
            PathBuf::from(&req.path)
        } else {
            PathBuf::from(&o.image_path)
        };
        if image_path.as_os_str().is_empty() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "checkpoint needs an image path",
            ));
        }
        let copts = CheckpointOpts {
            image_path,
            work_path: (!o.work_path.is_empty()).then(|| PathBuf::from(&o.work_path)),
            leave_running: !o.exit,
            tcp_established: o.open_tcp,
            ext_unix_sk: o.external_unix_sockets,
            shell_job: o.terminal,
            file_locks: o.file_locks,
            empty_ns: o.empty_namespaces.clone(),
            manage_cgroups_mode: (!o.cgroups_mode.is_empty()).then(|| o.cgroups_mode.clone()),
            log_file: c.bundle.join("checkpoint-log.json"),
            ..Default::default()
        };
        c.runc.checkpoint(&c.id, &copts).await.map_err(internal)?;
        self.shared
            .publish(
                containerd_shim_protos::topics::TASK_CHECKPOINTED_EVENT_TOPIC,
                Box::new(TaskCheckpointed {
                    container_id: c.id.clone(),
                    checkpoint: req.path.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> RpcResult<Empty> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if p.phase() == Phase::Stopped {
            return Err(not_found("process already finished"));
        }
        if req.exec_id.is_empty() {
            if c.is_asleep() {
                if req.signal as i32 == libc::SIGKILL && sleep::kill_asleep(&self.shared, &c).await
                {
                    return Ok(Empty::new());
                }
                // Any other signal is meant for the app: wake it, then deliver.
                sleep::wake(&self.shared, &c, "signal")
                    .await
                    .map_err(internal)?;
            }
            if let Err(e) = c.runc.kill(&c.id, req.signal as i32, req.all).await {
                if p.phase() == Phase::Stopped || e.to_string().contains("not running") {
                    return Err(not_found("process already finished"));
                }
                return Err(internal(e));
            }
            return Ok(Empty::new());
        }
        let pid = p.pid();
        if pid <= 0 {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("exec {} has not started", req.exec_id),
            ));
        }
        let sig = nix::sys::signal::Signal::try_from(req.signal as i32).map_err(|_| {
            status(
                Code::INVALID_ARGUMENT,
                format!("invalid signal {}", req.signal),
            )
        })?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
            Ok(()) => Ok(Empty::new()),
            Err(nix::errno::Errno::ESRCH) => Err(not_found("process already finished")),
            Err(e) => Err(internal(e)),
        }
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> RpcResult<Empty> {
        let c = self.container(&req.id)?;
        if !valid_exec_id(&req.exec_id) {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("invalid exec id {:?}", req.exec_id),
            ));
        }
        if c.init.phase() == Phase::Stopped {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {} is not running", c.id),
            ));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        if serde_json::from_slice::<serde_json::Value>(&spec).is_err() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "exec process spec is not valid JSON",
            ));
        }
        {
            let mut execs = c.execs.lock().unwrap_or_else(|p| p.into_inner());
            if execs.contains_key(&req.exec_id) {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!("exec {} already exists", req.exec_id),
                ));
            }
            let paths = StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                id: c.id.clone(),
                namespace: self.shared.namespace.clone(),
            };
            execs.insert(req.exec_id.clone(), Process::new(&req.exec_id, paths, spec));
        }
        self.shared
            .publish(
                containerd_shim_protos::topics::TASK_EXEC_ADDED_EVENT_TOPIC,
                Box::new(TaskExecAdded {
                    container_id: c.id.clone(),
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> RpcResult<Empty> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if let Some(s) = p.stdio() {
            let w = u16::try_from(req.width).unwrap_or(u16::MAX);
            let h = u16::try_from(req.height).unwrap_or(u16::MAX);
            s.resize(w, h).map_err(internal)?;
        }
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> RpcResult<Empty> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if req.stdin {
            if let Some(s) = p.stdio() {
                s.close_stdin();
            }
        }
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> RpcResult<Empty> {
        let c = self.container(&req.id)?;
        let Some(res) = req.resources.as_ref() else {
            return Err(status(Code::INVALID_ARGUMENT, "update without resources"));
        };
        if serde_json::from_slice::<oci_spec::runtime::LinuxResources>(&res.value).is_err() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "resources are not a valid OCI LinuxResources document",
            ));
        }
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let file = c.bundle.join(format!(
            ".lightwhale-resources-{}.json",
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&file, &res.value).map_err(internal)?;
        if c.is_asleep() {
            let _t = c.transition.lock().await;
            if c.is_asleep() {
                // Applied by the wake, right after restore.
                let old = c
                    .pending_update
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .replace(file);
                if let Some(old) = old {
                    let _ = std::fs::remove_file(old);
                }
                return Ok(Empty::new());
            }
        }
        let r = c.runc.update(&c.id, &file).await;
        let _ = std::fs::remove_file(&file);
        r.map_err(internal)?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> RpcResult<WaitResponse> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let exit = p.wait().await;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: ts(exit.at),
            ..Default::default()
        })
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> RpcResult<StatsResponse> {
        let c = self.container(&req.id)?;
        let pid = c.init.pid();
        if pid <= 0 || c.init.phase() == Phase::Stopped {
            return Err(not_found(format!("container {} is not running", c.id)));
        }
        if c.is_asleep() {
            // Asleep: no process and (almost) no memory, reported as such.
            let metrics = containerd_shim_protos::cgroups::metrics::Metrics::new();
            let any = convert_to_any(Box::new(metrics)).map_err(internal)?;
            return Ok(StatsResponse {
                stats: MessageField::some(any),
                ..Default::default()
            });
        }
        let metrics = get_cgroup(pid as u32)
            .and_then(|cg| collect_metrics(&cg))
            .map_err(internal)?;
        let any = convert_to_any(Box::new(metrics)).map_err(internal)?;
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> RpcResult<ConnectResponse> {
        let task_pid = self.container(&req.id).map(|c| c.init.pid()).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: task_pid as u32,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> RpcResult<Empty> {
        let empty = self
            .shared
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        info!(empty, "shutdown requested");
        if empty {
            self.shared.exit.signal();
        }
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::valid_exec_id;

    #[test]
    fn exec_ids_cannot_escape_the_bundle() {
        assert!(valid_exec_id("abc-123_x.y"));
        assert!(!valid_exec_id("../x"));
        assert!(!valid_exec_id(".."));
        assert!(!valid_exec_id(""));
        assert!(!valid_exec_id("a/b"));
    }
}
