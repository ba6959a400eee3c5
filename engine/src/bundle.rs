//! What lightwhale set up for a container, saved in its bundle so that cleanup undoes
//! exactly that, even after the shim process is gone (containerd runs the shim's
//! `delete` subcommand for a shim that died).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::netns;

const BUNDLE_STATE: &str = "lightwhale-state.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BundleState {
    pub runc_binary: String,
    pub runc_root: PathBuf,
    pub systemd_cgroup: bool,
    pub rootfs_mounted: bool,
    pub netns: Option<PathBuf>,
    /// Checkpoint images of this container (its memory: removed with it).
    #[serde(default)]
    pub image_root: Option<PathBuf>,
    /// Status file and control socket for `lightwhale`.
    #[serde(default)]
    pub status_file: Option<PathBuf>,
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
}

impl BundleState {
    pub fn save(&self, bundle: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let tmp = bundle.join(format!("{BUNDLE_STATE}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, bundle.join(BUNDLE_STATE))
    }

    pub fn load(bundle: &Path) -> Option<BundleState> {
        let bytes = std::fs::read(bundle.join(BUNDLE_STATE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Undoes the mounts and the pinned namespace (a failed create, a delete).
    pub fn release_bundle(&self, bundle: &Path) {
        if self.rootfs_mounted {
            let rootfs = bundle.join("rootfs");
            if let Err(e) = nix::mount::umount2(&rootfs, nix::mount::MntFlags::empty()) {
                if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
                    warn!("unmount {}: {e}; detaching", rootfs.display());
                    let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        if let Some(ns) = &self.netns {
            if let Err(e) = netns::remove_pinned(ns) {
                warn!("{e}");
            }
        }
    }

    /// Removes what lightwhale kept for the container outside its bundle: checkpoint
    /// images, status file, control socket. Missing is fine (idempotent).
    pub fn remove_records(&self) {
        if let Some(dir) = &self.image_root {
            remove_dir_quiet(dir);
        }
        for f in [&self.status_file, &self.control_socket]
            .into_iter()
            .flatten()
        {
            if let Err(e) = std::fs::remove_file(f) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!("remove {}: {e}", f.display());
                }
            }
        }
    }
}

pub(crate) fn remove_dir_quiet(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!("remove {}: {e}", dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_removed_and_removal_is_idempotent() {
        let d = tempfile::tempdir().expect("tempdir");
        let images = d.path().join("img/ns/id");
        std::fs::create_dir_all(images.join("images")).expect("mkdir");
        std::fs::write(images.join("images/pages-1.img"), b"secret").expect("write");
        let status = d.path().join("id.json");
        std::fs::write(&status, b"{}").expect("write");
        let st = BundleState {
            image_root: Some(images.clone()),
            status_file: Some(status.clone()),
            control_socket: Some(d.path().join("id.sock")),
            ..Default::default()
        };
        st.save(d.path()).expect("save");
        let back = BundleState::load(d.path()).expect("load");
        back.remove_records();
        assert!(!images.exists() && !status.exists());
        back.remove_records();
    }

    #[test]
    fn an_older_state_file_still_loads() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            d.path().join(BUNDLE_STATE),
            br#"{"runc_binary":"/usr/sbin/runc","runc_root":"/run/x","systemd_cgroup":false,"rootfs_mounted":true,"netns":null}"#,
        )
        .expect("write");
        let st = BundleState::load(d.path()).expect("load");
        assert!(st.rootfs_mounted && st.image_root.is_none());
    }
}
