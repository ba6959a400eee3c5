//! Export: what moving a sleeping container to another host needs, written into a new
//! directory: its checkpoint images (as they are: nothing is dumped again), its
//! filesystem changes, what a container restored from them must match, and the CPU it was
//! dumped on (`criu cpuinfo dump`), for the importing host to check. The `lightwhale` CLI
//! adds the container's spec and checksums and makes one archive of it; the importing
//! host restores it as it would a template (`template`).

use std::path::Path;
use std::sync::Arc;

use lightwhale_status::TemplateMeta;
use tracing::info;

use crate::container::Container;
use crate::rootfs::{keep_fs_changes, overlay_at, rootfs_of};
use crate::state::State;
use crate::template::{criu_version, fit_of, pages_bytes, read_spec, TemplateError};

impl Container {
    /// Writes the sleeping container's checkpoint and filesystem changes into `dir` (which
    /// must not exist). Refuses unless it is asleep, and fails if it woke meanwhile (the
    /// images would not be what it now is).
    pub async fn export_to(self: &Arc<Self>, dir: &Path) -> Result<TemplateMeta, TemplateError> {
        let name = format!("export of {}", self.id);
        let io = |what, path: &Path| {
            let (name, path) = (name.clone(), path.to_path_buf());
            move |source| TemplateError::Io {
                name,
                what,
                path,
                source,
            }
        };
        let _gate = self.sleep_gate.lock().await;
        let sleeps = self.status().sleeps;
        match self.state() {
            State::Asleep => {}
            other => return Err(TemplateError::NotAsleep(other)),
        }
        std::fs::create_dir(dir).map_err(io("create", dir))?;
        let images = dir.join("images");
        std::fs::create_dir(&images).map_err(io("create", &images))?;
        for e in std::fs::read_dir(self.images()).map_err(io("read", &self.images()))? {
            let e = e.map_err(io("read", &self.images()))?;
            let to = images.join(e.file_name());
            // Linked where it can be (a sleep writes a new set of files, it never
            // rewrites these), copied across file systems.
            if std::fs::hard_link(e.path(), &to).is_err() {
                std::fs::copy(e.path(), &to).map_err(io("copy into", &to))?;
            }
        }
        let mut cmd = std::process::Command::new("criu");
        cmd.args(["cpuinfo", "dump", "-D"]).arg(dir);
        let cpu = crate::reaper::output(cmd).await;
        if !cpu.as_ref().is_ok_and(|o| o.status.success()) {
            return Err(TemplateError::FsChanges {
                name,
                why: format!("criu cpuinfo dump failed: {cpu:?}"),
            });
        }
        let spec = read_spec(&self.bundle).map_err(io("read the spec in", &self.bundle))?;
        let overlay = overlay_at(&rootfs_of(&self.bundle, &spec));
        let fs_changes_bytes =
            match overlay.as_ref().and_then(|o| o.upper.as_deref()) {
                Some(upper) => Some(keep_fs_changes(upper, dir).await.map_err(|why| {
                    TemplateError::FsChanges {
                        name: name.clone(),
                        why,
                    }
                })?),
                None => None,
            };
        let status = self.status();
        let meta = TemplateMeta {
            schema: lightwhale_status::template::TEMPLATE_SCHEMA,
            name: self.id.clone(),
            created_unix_ms: crate::container::now_ms(),
            source_namespace: self.namespace.clone(),
            source_id: self.id.clone(),
            source_name: status.name.clone(),
            fit: fit_of(&spec, overlay.as_ref()),
            images_bytes: crate::bundle::dir_bytes(&images),
            pages_bytes: pages_bytes(&images),
            fs_changes_bytes,
            checkpoint_ms: status.last_sleep_ms.unwrap_or(0) as f64,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            criu_version: criu_version().await,
        };
        let path = dir.join("meta.json");
        serde_json::to_vec_pretty(&meta)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&path, b))
            .map_err(io("write", &path))?;
        if self.state() != State::Asleep || self.status().sleeps != sleeps {
            return Err(TemplateError::WokeDuringExport);
        }
        info!(id = %self.id, dir = %dir.display(), "exported");
        Ok(meta)
    }
}
