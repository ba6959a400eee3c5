//! Templates: a warmed container is checkpointed while it keeps running, and new
//! containers start by restoring that checkpoint instead of running their entrypoint.
//!
//! Taking one ([`Container::make_template`]) is `runc checkpoint --leave-running` into a
//! directory of its own, plus what a clone must share with the source ([`TemplateFit`])
//! and the source's filesystem changes (`rootfs`: its overlay upper layer, as a tar and a
//! list of deletions). Using one ([`clone_source`], called by `create`) checks the fit, lays the
//! filesystem changes over the clone's root, and lets `create` restore instead of create.
//! Clones read the template's images and never write them: any number restore from one
//! copy on disk (eagerly, or post-copy from a lazy-pages daemon each); a clone needs them
//! until its memory is all back (at once, or when its fill ends: `TemplateUse::fill_ms`),
//! and `lightwhale template rm` refuses while one still does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightwhale_status::{TemplateFit, TemplateMeta, TemplateUse};
use serde_json::Value;
use tracing::{info, warn};

use crate::config::SleepConfig;
use crate::container::{ms, tail, Container};
use crate::events::Trigger;
use crate::lazy::LazyPages;
use crate::rootfs::{apply_fs_changes, keep_fs_changes, overlay_at, rootfs_of, Overlay};
use crate::runc::{CheckpointOpts, RestoreOpts};
use crate::runtime::OciRuntime;
use crate::state::State;
use crate::wake::WakeError;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{0}")]
    Name(String),
    #[error("template {0} exists already: remove it first (lightwhale template rm {0})")]
    Exists(String),
    #[error("cannot wake it to take the template: {0}")]
    Wake(#[from] WakeError),
    #[error("cannot take a template of a container that is {0}")]
    NotAwake(State),
    #[error("only a sleeping container is exported, and this one is {0}: put it to sleep first (lightwhale sleep ID)")]
    NotAsleep(State),
    #[error("it woke while being exported: export it again once it sleeps")]
    WokeDuringExport,
    #[error("cannot take a template of a container with a terminal (CRIU cannot restore a pty into another container)")]
    Terminal,
    #[error("template {name}: checkpoint failed (the container runs on): {source}\n--- CRIU dump.log (tail) ---\n{criu_log}")]
    Checkpoint {
        name: String,
        #[source]
        source: crate::Error,
        criu_log: String,
    },
    #[error("template {name}: {what} {}: {source}", path.display())]
    Io {
        name: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("template {name}: cannot keep the container's filesystem changes: {why}")]
    FsChanges { name: String, why: String },
}

impl Container {
    /// Takes a template named `name` of this container, which keeps running (a sleeping
    /// or dozing one is woken first). Serialised with sleeps: no sleep starts meanwhile.
    pub async fn make_template(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<TemplateMeta, TemplateError> {
        lightwhale_status::template::check_name(name).map_err(TemplateError::Name)?;
        let root = &self.dirs.templates;
        let dest = lightwhale_status::template::template_dir(root, name);
        if dest.exists() {
            return Err(TemplateError::Exists(name.to_string()));
        }
        let io = |what, path: &Path| {
            let (name, path) = (name.to_string(), path.to_path_buf());
            move |source| TemplateError::Io {
                name,
                what,
                path,
                source,
            }
        };
        let spec = read_spec(&self.bundle).map_err(io("read the spec in", &self.bundle))?;
        if spec.pointer("/process/terminal").and_then(Value::as_bool) == Some(true) {
            return Err(TemplateError::Terminal);
        }
        self.wake(Trigger::Checkpoint).await?;
        let _gate = self.sleep_gate.lock().await;
        match self.state() {
            State::Awake => {}
            other => return Err(TemplateError::NotAwake(other)),
        }
        // The idle clock starts again: the monitor does not reach for a sleep meanwhile.
        self.touch_activity();
        let tmp = root.join(format!(".{name}.{}.tmp", std::process::id()));
        crate::bundle::remove_dir_quiet(&tmp);
        std::fs::create_dir_all(tmp.join("work")).map_err(io("create", &tmp))?;
        let t = Instant::now();
        let dumped = self
            .runtime
            .checkpoint(
                &self.id,
                &CheckpointOpts {
                    image_path: tmp.join("images"),
                    work_path: Some(tmp.join("work")),
                    leave_running: true,
                    log_file: tmp.join("checkpoint.json"),
                    ..Default::default()
                },
            )
            .await;
        let checkpoint_ms = ms(t.elapsed());
        if let Err(source) = dumped {
            let criu_log = tail(&tmp.join("work/dump.log"), 20);
            crate::bundle::remove_dir_quiet(&tmp);
            return Err(TemplateError::Checkpoint {
                name: name.to_string(),
                source,
                criu_log,
            });
        }
        let criu_version = criu_version().await;
        let rootfs = rootfs_of(&self.bundle, &spec);
        let overlay = overlay_at(&rootfs);
        let fs_changes = match overlay.as_ref().and_then(|o| o.upper.as_deref()) {
            Some(upper) => keep_fs_changes(upper, &tmp).await.map(Some),
            None => Ok(None),
        };
        let kept = (|| {
            let fs_changes_bytes = fs_changes.map_err(|why| TemplateError::FsChanges {
                name: name.to_string(),
                why,
            })?;
            let meta = TemplateMeta {
                schema: lightwhale_status::template::TEMPLATE_SCHEMA,
                name: name.to_string(),
                created_unix_ms: crate::container::now_ms(),
                source_namespace: self.namespace.clone(),
                source_id: self.id.clone(),
                source_name: self.status().name,
                fit: fit_of(&spec, overlay.as_ref()),
                images_bytes: crate::bundle::dir_bytes(&tmp.join("images")),
                pages_bytes: pages_bytes(&tmp.join("images")),
                fs_changes_bytes,
                checkpoint_ms,
                kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default(),
                criu_version,
            };
            let bytes = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other);
            bytes
                .and_then(|b| std::fs::write(tmp.join("meta.json"), b))
                .map_err(io("write", &tmp.join("meta.json")))?;
            std::fs::rename(&tmp, &dest).map_err(io("move into place", &dest))?;
            Ok(meta)
        })();
        match &kept {
            Ok(meta) => info!(
                id = %self.id,
                template = name,
                checkpoint_ms,
                images_bytes = meta.images_bytes,
                "template taken"
            ),
            Err(e) => {
                warn!(id = %self.id, "{e}");
                crate::bundle::remove_dir_quiet(&tmp);
            }
        }
        kept
    }
}

/// A template a new container can start from: where its images are.
#[derive(Debug)]
pub(crate) struct CloneSource {
    pub images: PathBuf,
    /// Bytes of memory pages in the images (what an eager restore reads back).
    pub pages_bytes: u64,
}

/// Checks that the container in `bundle` can start from the template `name` and lays
/// the template's filesystem changes over its root. Err: why it starts cold instead
/// (nothing has been changed in the root then, unless the changes were half applied,
/// which is said).
pub(crate) async fn clone_source(
    templates: &Path,
    name: &str,
    bundle: &Path,
) -> Result<CloneSource, String> {
    let meta =
        lightwhale_status::template::read_template(templates, name).map_err(|e| e.to_string())?;
    let spec = read_spec(bundle).map_err(|e| format!("cannot read its spec: {e}"))?;
    let rootfs = rootfs_of(bundle, &spec);
    let fit = fit_of(&spec, overlay_at(&rootfs).as_ref());
    if let Some(why) = meta.fit.mismatch(&fit) {
        return Err(format!("template {name} does not fit: {why}"));
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if kernel.trim() != meta.kernel {
        return Err(format!(
            "template {name} was taken under kernel {}, this host runs {}",
            meta.kernel,
            kernel.trim()
        ));
    }
    let dir = lightwhale_status::template::template_dir(templates, name);
    apply_fs_changes(&dir, &rootfs)
        .await
        .map_err(|e| format!("template {name}: its filesystem changes: {e}"))?;
    Ok(CloneSource {
        images: dir.join("images"),
        pages_bytes: meta.pages_bytes,
    })
}

/// Starts the container in `bundle` by restoring the template `name`: its fit checked,
/// its filesystem changes laid over the root, its images restored by `restore` (the task
/// runs from there: a restore has no created stage). Any failure leaves nothing of the
/// restore behind and says why the container starts cold instead.
///
/// Post-copy when the configuration says so for the template's pages (as for a wake): the
/// task runs once its registers and mappings are back, a `criu lazy-pages` daemon serving
/// its memory from the template's images, which any number of clones share; the daemon
/// is returned, for `create` to follow until every page is back.
pub(crate) async fn start_from_template<F, Fut>(
    runtime: &dyn OciRuntime,
    id: &str,
    bundle: &Path,
    templates: &Path,
    name: &str,
    config: &SleepConfig,
    restore: F,
) -> (TemplateUse, Option<LazyPages>)
where
    F: FnOnce(RestoreOpts) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let cold = |reason: String| {
        warn!(%id, template = name, "starting cold: {reason}");
        let used = TemplateUse {
            name: name.to_string(),
            restored: false,
            reason: Some(reason),
            ..Default::default()
        };
        (used, None)
    };
    let source = match clone_source(templates, name, bundle).await {
        Ok(s) => s,
        Err(reason) => return cold(reason),
    };
    // In the bundle, not the image directory: a shim starting meanwhile sweeps image
    // directories that have no status file yet, and this one's is written after create.
    let work = bundle.join("template-work");
    if let Err(e) = std::fs::create_dir_all(&work) {
        return cold(format!("cannot create {}: {e}", work.display()));
    }
    let t = Instant::now();
    let mut daemon = None;
    if config.lazy_for(source.pages_bytes) {
        let started = match crate::runc::Runc::find_binary("criu") {
            Some(criu) => LazyPages::start(&criu, &source.images, &work, Duration::from_secs(2))
                .await
                .map_err(|e| e.to_string()),
            None => Err("criu not found in PATH".to_string()),
        };
        match started {
            Ok(d) => daemon = Some(d),
            Err(e) => warn!(%id, template = name, "post-copy unavailable, restoring eagerly: {e}"),
        }
    }
    let restored = restore(RestoreOpts {
        image_path: source.images,
        work_path: Some(work.clone()),
        pid_file: bundle.join("init.pid"),
        log_file: bundle.join("log.json"),
        detach: true,
        lazy_pages: daemon.is_some(),
        ..Default::default()
    })
    .await;
    match restored {
        Ok(()) => {
            let restore_ms = ms(t.elapsed());
            let lazy = daemon.is_some();
            info!(%id, template = name, restore_ms, lazy, "started from its template");
            let used = TemplateUse {
                name: name.to_string(),
                restored: true,
                reason: None,
                restore_ms: Some(restore_ms),
                lazy,
                fill_ms: None,
            };
            (used, daemon)
        }
        Err(e) => {
            if let Some(mut d) = daemon {
                d.kill();
                d.wait().await;
            }
            let _ = runtime.delete(id, true).await;
            cold(format!(
                "restoring template {name} failed: {e}\n--- CRIU restore.log (tail) ---\n{}",
                tail(&work.join("restore.log"), 20)
            ))
        }
    }
}

pub(crate) fn read_spec(bundle: &Path) -> std::io::Result<Value> {
    let bytes = std::fs::read(bundle.join("config.json"))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

pub(crate) fn fit_of(spec: &Value, overlay: Option<&Overlay>) -> TemplateFit {
    let strings = |ptr: &str| -> Vec<String> {
        spec.pointer(ptr)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut env = strings("/process/env");
    env.retain(|e| !e.starts_with("HOSTNAME="));
    env.sort();
    let mut mounts: Vec<String> = spec
        .pointer("/mounts")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| m.get("destination").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    mounts.sort();
    let id = |ptr: &str| {
        spec.pointer(ptr)
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0)
    };
    TemplateFit {
        args: strings("/process/args"),
        cwd: spec
            .pointer("/process/cwd")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_string(),
        env,
        uid: id("/process/user/uid"),
        gid: id("/process/user/gid"),
        terminal: spec.pointer("/process/terminal").and_then(Value::as_bool) == Some(true),
        mounts,
        image_layers: overlay.map(|o| o.image_layers.clone()).unwrap_or_default(),
    }
}

pub(crate) fn pages_bytes(images: &Path) -> u64 {
    std::fs::read_dir(images)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("pages-") && n.ends_with(".img")
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// CRIU's version as it says it ("4.2.1").
pub(crate) async fn criu_version() -> Option<String> {
    let criu = crate::runc::Runc::find_binary("criu")?;
    let mut cmd = std::process::Command::new(criu);
    cmd.arg("--version");
    let out = crate::reaper::output(cmd).await.ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_gives_its_fit() {
        let spec: Value = serde_json::json!({
            "process": {"args": ["python3", "-c", "x"], "env": ["PORT=1", "HOSTNAME=abc", "A=b"],
                        "cwd": "/srv", "user": {"uid": 0, "gid": 0}},
            "mounts": [{"destination": "/sys"}, {"destination": "/proc"}]
        });
        let f = fit_of(&spec, None);
        assert_eq!(f.env, vec!["A=b".to_string(), "PORT=1".to_string()]);
        assert_eq!(f.mounts, vec!["/proc".to_string(), "/sys".to_string()]);
        assert_eq!(f.cwd, "/srv");
        assert!(!f.terminal);
    }
}
