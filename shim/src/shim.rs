//! The shim's process lifecycle: `start` (spawn the long-lived shim, grouped per pod),
//! `delete` (clean up after a shim that died) and the serving process itself.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::{Config, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use lightwhale_engine::bundle::BundleState;
use lightwhale_engine::reaper;
use lightwhale_engine::runc::Runc;
use lightwhale_engine::spec::BundleSpec;
use tracing::warn;

use crate::service::Service;

/// Annotations by which containerd's CRI groups a pod's containers into one shim.
const SANDBOX_ANNOTATIONS: &[&str] = &[
    "io.kubernetes.cri.sandbox-id",
    "io.kubernetes.cri-o.SandboxID",
];

/// glibc malloc settings for the long-lived shim. Its thread caches (tcache: up to 7 freed
/// chunks per size class per thread) count as memory in use, and filled slowly over a
/// night of sleep/wake cycles: the 1000-cycle soak showed the shim's anonymous memory
/// rising from 1236 to 1352 KiB after warm-up while what Rust kept stayed flat (measured
/// with a counting allocator). Without them it is flat, and ~400 KiB smaller; a shim
/// allocates too little for the caches to matter to speed. Settings already in the
/// environment are kept.
fn tunables() -> String {
    const OURS: &str = "glibc.malloc.tcache_count=0";
    match std::env::var("GLIBC_TUNABLES") {
        Ok(t) if !t.is_empty() => format!("{t}:{OURS}"),
        _ => OURS.to_string(),
    }
}

pub struct LightwhaleShim {
    exit: Arc<ExitSignal>,
    id: String,
    namespace: String,
}

#[async_trait]
impl Shim for LightwhaleShim {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        // The serving shim spawns runc and adopts container processes, and `delete` runs
        // runc: one reaper for all. Not for `start`: there the crate spawns the serving
        // shim and then writes its /proc/<pid>/oom_score_adj; a second container of a pod
        // finds the pod's shim serving already and its would-be server exits at once, and
        // a reaper would take it before that write (start fails: "write oom score").
        if args.action != "start" {
            if let Err(e) = reaper::install() {
                warn!("cannot install the child reaper: {e}");
            }
        }
        if let Some(m) = lightwhale_engine::privilege::describe_missing() {
            warn!("running without {m}: containers may fail to start, and sleep will fail");
        }
        LightwhaleShim {
            exit: Arc::new(ExitSignal::default()),
            id: args.id.clone(),
            namespace: args.namespace.clone(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // containerd runs `start` in the bundle directory.
        let grouping = BundleSpec::load(Path::new("."))
            .ok()
            .and_then(|s| {
                SANDBOX_ANNOTATIONS.iter().find_map(|k| {
                    s.annotation(k)
                        .filter(|v| !v.is_empty())
                        .map(str::to_string)
                })
            })
            .unwrap_or_else(|| opts.id.clone());
        let address = spawn(opts, &grouping, vec![("GLIBC_TUNABLES", &tunables())]).await?;
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    /// containerd runs this after a shim went away: after every normal delete (so it
    /// must be idempotent) and after a shim died. Whatever lightwhale kept for the
    /// container goes: the runtime's container, mounts, the pinned namespace, the
    /// checkpoint images, the status file and control socket.
    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle =
            std::env::current_dir().map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
        if let Some(state) = BundleState::load(&bundle) {
            let runc = Runc::new(&state.runc_binary, &state.runc_root, state.systemd_cgroup);
            // A wake the dead shim had started ends first: its task would come back
            // after this delete otherwise, with no shim to end it.
            let root = state.runc_root.display().to_string();
            if !lightwhale_engine::bundle::wait_for_restores(
                &self.id,
                &root,
                Duration::from_secs(60),
            )
            .await
            {
                warn!(id = %self.id, "a restore of it still runs after 60 s: deleting anyway");
            }
            if let Err(e) = runc.delete(&self.id, true).await {
                if !e.is_not_found() {
                    warn!(id = %self.id, ns = %self.namespace, "runc delete: {e}");
                }
            }
            state.release_bundle(&bundle);
            state.retire_records(Some(
                "the shim ended without deleting the container (killed or crashed): \
                 its task was stopped and its checkpoint removed",
            ));
        }
        Ok(DeleteResponse {
            // As containerd's runc shim reports a task it had to kill: SIGKILL.
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(Timestamp::now()),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        Service::new(&self.namespace, publisher, self.exit.clone())
    }
}
