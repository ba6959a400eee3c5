//! The shim v2 Task service: each RPC containerd sends, mapped to the engine.
//!
//! This file only translates: requests into engine calls, engine errors into ttrpc
//! codes. What a container does (and what sleeping means for each call) is the engine's.
//! One service holds many containers: containerd groups a pod's containers into one shim.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::cgroup::{collect_metrics, get_cgroup};
use containerd_shim::util::convert_to_any;
use containerd_shim_protos::api::*;
use containerd_shim_protos::events::task::{TaskCreate, TaskIO};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{self, Code};
use lightwhale_engine::bundle::BundleState;
use lightwhale_engine::config::{self, NodeConfig};
use lightwhale_engine::container::{Pod, PodRole};
use lightwhale_engine::process::{ExitInfo, TaskStatus};
use lightwhale_engine::runc::{CheckpointOpts, Runc};
use lightwhale_engine::spec::BundleSpec;
use lightwhale_engine::stdio::StdioPaths;
use lightwhale_engine::{Container, ContainerError, CreateRequest, Dirs, ErrorKind, State};
use tracing::{info, warn};

use crate::options::{self, STATE_DIR};
use crate::publisher::{self, EventQueue, Queued};

type RpcResult<T> = ttrpc::Result<T>;

fn status(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

/// The one mapping from the engine's error kinds to containerd's codes.
fn rpc_error(e: ContainerError) -> ttrpc::Error {
    let code = match e.kind() {
        ErrorKind::NotFound => Code::NOT_FOUND,
        ErrorKind::AlreadyExists => Code::ALREADY_EXISTS,
        ErrorKind::InvalidArgument => Code::INVALID_ARGUMENT,
        ErrorKind::FailedPrecondition => Code::FAILED_PRECONDITION,
        ErrorKind::Internal => Code::UNKNOWN,
    };
    status(code, e.to_string())
}

fn internal(e: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::UNKNOWN, e.to_string())
}

fn ts(t: std::time::SystemTime) -> MessageField<Timestamp> {
    MessageField::some(Timestamp::from(t))
}

fn exit_fields(exit: Option<ExitInfo>) -> (u32, MessageField<Timestamp>) {
    exit.map(|e| (e.status, ts(e.at)))
        .unwrap_or((0, MessageField::none()))
}

fn task_status(s: TaskStatus) -> Status {
    match s {
        TaskStatus::Created => Status::CREATED,
        TaskStatus::Running => Status::RUNNING,
        TaskStatus::Paused => Status::PAUSED,
        TaskStatus::Stopped => Status::STOPPED,
    }
}

/// Annotations by which containerd's CRI (and CRI-O) say what a container is in its pod.
const CONTAINER_TYPE: &[&str] = &[
    "io.kubernetes.cri.container-type",
    "io.kubernetes.cri-o.ContainerType",
];
const SANDBOX_ID: &[&str] = &[
    "io.kubernetes.cri.sandbox-id",
    "io.kubernetes.cri-o.SandboxID",
];

pub struct Service {
    namespace: String,
    node: NodeConfig,
    dirs: Dirs,
    events: Arc<EventQueue>,
    exit: Arc<ExitSignal>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// The pods served by this shim, by sandbox id.
    pods: Mutex<HashMap<String, std::sync::Weak<Pod>>>,
}

impl Service {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Service {
        let node = NodeConfig::load().unwrap_or_else(|e| {
            warn!("{e}; using built-in defaults");
            NodeConfig::default()
        });
        let dirs = Dirs {
            images: node.image_dir(),
            templates: node.image_dir().join(".templates"),
            ..Dirs::default()
        };
        // What a reboot (or a crash containerd never saw) left: images nobody owns.
        for orphan in lightwhale_engine::bundle::sweep_orphan_images(&dirs.images, &dirs.status) {
            info!("removed orphaned checkpoint images {}", orphan.display());
        }
        Service {
            namespace: namespace.to_string(),
            node,
            dirs,
            events: publisher::start(publisher, namespace.to_string()),
            exit,
            containers: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
        }
    }

    /// The container's place in a pod, from the CRI's annotations.
    fn pod_role(&self, spec: &BundleSpec) -> PodRole {
        let first = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| spec.annotation(k).filter(|v| !v.is_empty()))
                .map(str::to_string)
        };
        if first(CONTAINER_TYPE).as_deref() == Some("sandbox") {
            return PodRole::Sandbox;
        }
        let Some(sandbox) = first(SANDBOX_ID) else {
            return PodRole::None;
        };
        let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        pods.retain(|_, g| g.strong_count() > 0);
        let group = match pods.get(&sandbox).and_then(std::sync::Weak::upgrade) {
            Some(g) => g,
            None => {
                let g = Pod::new(&sandbox);
                pods.insert(sandbox, Arc::downgrade(&g));
                g
            }
        };
        PodRole::Member(group)
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn container(&self, id: &str) -> RpcResult<Arc<Container>> {
        self.containers()
            .get(id)
            .cloned()
            .ok_or_else(|| status(Code::NOT_FOUND, format!("container {id} not found")))
    }

    fn process(
        &self,
        c: &Container,
        exec_id: &str,
    ) -> RpcResult<Arc<lightwhale_engine::process::Process>> {
        c.process(exec_id).ok_or_else(|| {
            status(
                Code::NOT_FOUND,
                format!("exec {exec_id} not found in container {}", c.id),
            )
        })
    }
}

/// Mounts the rootfs containerd hands over; returns whether anything was mounted.
async fn mount_rootfs(bundle: &std::path::Path, mounts: &[Mount]) -> RpcResult<bool> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(internal)?;
    for m in mounts {
        containerd_shim::asynchronous::util::mount_rootfs(m, &rootfs)
            .await
            .map_err(|e| internal(format!("mount rootfs: {e}")))?;
    }
    Ok(true)
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
        if self.containers().contains_key(&id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {id} already exists"),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec =
            BundleSpec::load(&bundle).map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        let mut sleep_cfg =
            config::sleep_config(&spec.annotations(), &self.node, &config::profile_dirs())
                .map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        let pod = self.pod_role(&spec);
        if matches!(pod, PodRole::Sandbox) {
            // A pod's annotations reach its sandbox too: the template is its containers'.
            sleep_cfg.template = None;
        }
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
        let runc_root = options::runc_root(&opts, &self.namespace);
        let runc = Runc::new(&binary, &runc_root, opts.systemd_cgroup)
            .with_criu_helpers(config::criu_helpers_dir(&self.node))
            .with_dump_action(config::criu_dump_action());
        let mut bundle_state = BundleState {
            runc_binary: binary.display().to_string(),
            runc_root,
            systemd_cgroup: opts.systemd_cgroup,
            ..Default::default()
        };
        match mount_rootfs(&bundle, &req.rootfs).await {
            Ok(mounted) => bundle_state.rootfs_mounted = mounted,
            Err(e) => {
                bundle_state.rootfs_mounted = true;
                bundle_state.release_bundle(&bundle);
                return Err(e);
            }
        }
        let created = Container::create(CreateRequest {
            id: id.clone(),
            namespace: self.namespace.clone(),
            bundle,
            stdio: StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                id: id.clone(),
                namespace: self.namespace.clone(),
            },
            config: sleep_cfg,
            runtime: Arc::new(runc),
            sink: self.events.clone(),
            dirs: Dirs {
                state: PathBuf::from(STATE_DIR),
                ..self.dirs.clone()
            },
            bundle_state,
            no_pivot: opts.no_pivot_root,
            no_new_keyring: opts.no_new_keyring,
            pod,
        })
        .await
        .map_err(rpc_error)?;
        let pid = created.init.pid();
        self.containers().insert(id.clone(), created);
        self.events.push(Queued::Create(TaskCreate {
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
        }));
        Ok(CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> RpcResult<StartResponse> {
        let c = self.container(&req.id)?;
        let pid = c.start(&req.exec_id).await.map_err(rpc_error)?;
        Ok(StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> RpcResult<StateResponse> {
        let c = self.container(&req.id)?;
        let p = self.process(&c, &req.exec_id)?;
        let s = if p.is_init() {
            c.init_status()
        } else {
            p.exec_status(c.state() == State::Paused)
        };
        let (exit_status, exited_at) = exit_fields(p.exit());
        Ok(StateResponse {
            id: if p.is_init() {
                c.id.clone()
            } else {
                req.exec_id.clone()
            },
            bundle: c.bundle.display().to_string(),
            pid: p.pid() as u32,
            status: task_status(s).into(),
            stdin: p.paths.stdin.clone(),
            stdout: p.paths.stdout.clone(),
            stderr: p.paths.stderr.clone(),
            terminal: p.paths.terminal,
            exit_status,
            exited_at,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> RpcResult<DeleteResponse> {
        let c = self.container(&req.id)?;
        if !req.exec_id.is_empty() {
            let (pid, exit) = c.delete_exec(&req.exec_id).map_err(rpc_error)?;
            let (exit_status, exited_at) = exit_fields(exit);
            return Ok(DeleteResponse {
                pid: pid as u32,
                exit_status,
                exited_at,
                ..Default::default()
            });
        }
        let (pid, exit) = c.delete().await.map_err(rpc_error)?;
        self.containers().remove(&c.id);
        Ok(DeleteResponse {
            pid: pid as u32,
            exit_status: exit.status,
            exited_at: ts(exit.at),
            ..Default::default()
        })
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> RpcResult<PidsResponse> {
        let c = self.container(&req.id)?;
        let mut pids = c.pids().await.map_err(rpc_error)?;
        if pids.is_empty() && c.state().is_running() {
            // A sleeping task has no process, but containerd (1.7 and 2.x) deletes a
            // re-connected shim whose task lists none as "leaked" when it restarts. The
            // shim stands for the task while it sleeps: it holds its sockets and will
            // restore it, so it is the honest pid to list (`docker top` shows it).
            pids.push(std::process::id() as i32);
        }
        let execs = c.exec_pids();
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
        c.pause().await.map_err(rpc_error)?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> RpcResult<Empty> {
        let c = self.container(&req.id)?;
        c.resume().await.map_err(rpc_error)?;
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
        c.checkpoint(copts).await.map_err(rpc_error)?;
        Ok(Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> RpcResult<Empty> {
        let c = self.container(&req.id)?;
        c.kill(&req.exec_id, req.signal, req.all)
            .await
            .map_err(rpc_error)?;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> RpcResult<Empty> {
        let c = self.container(&req.id)?;
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            id: c.id.clone(),
            namespace: self.namespace.clone(),
        };
        c.add_exec(&req.exec_id, spec, paths).map_err(rpc_error)?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> RpcResult<Empty> {
        let c = self.container(&req.id)?;
        let p = self.process(&c, &req.exec_id)?;
        if let Some(s) = p.stdio() {
            let w = u16::try_from(req.width).unwrap_or(u16::MAX);
            let h = u16::try_from(req.height).unwrap_or(u16::MAX);
            s.resize(w, h).map_err(internal)?;
        }
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> RpcResult<Empty> {
        let c = self.container(&req.id)?;
        let p = self.process(&c, &req.exec_id)?;
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
        c.update(&res.value).await.map_err(rpc_error)?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> RpcResult<WaitResponse> {
        let c = self.container(&req.id)?;
        let exit = c.wait(&req.exec_id).await.map_err(rpc_error)?;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: ts(exit.at),
            ..Default::default()
        })
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> RpcResult<StatsResponse> {
        let c = self.container(&req.id)?;
        if c.state() == State::Exited || c.init.pid() <= 0 {
            return Err(status(
                Code::NOT_FOUND,
                format!("container {} is not running", c.id),
            ));
        }
        let metrics = match c.running_pid() {
            Some(pid) => get_cgroup(pid as u32)
                .and_then(|cg| collect_metrics(&cg))
                .map_err(internal)?,
            // Asleep: no process and (almost) no memory, reported as such.
            None => containerd_shim_protos::cgroups::metrics::Metrics::new(),
        };
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
        let empty = self.containers().is_empty();
        info!(empty, "shutdown requested");
        if empty {
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}
