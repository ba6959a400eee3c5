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
    /// Where the status record goes when the container is deleted.
    #[serde(default)]
    pub exited_file: Option<PathBuf>,
    /// Where the CRIU logs of a container that failed are kept after it is deleted.
    #[serde(default)]
    pub logs_dir: Option<PathBuf>,
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

    /// Removes what lightwhale kept for the container outside its bundle (checkpoint
    /// images, control socket) and retires its status record to the exited records, as
    /// exited. `died` says why, when the shim did not see the end itself (it died). The
    /// CRIU logs of a container whose last sleep or wake failed are kept. Idempotent.
    pub fn retire_records(&self, died: Option<&str>) {
        if let (Some(from), Some(to)) = (&self.status_file, &self.exited_file) {
            if let Ok(mut status) = lightwhale_status::read_status(from) {
                if status.state != lightwhale_status::State::Exited {
                    status.state = lightwhale_status::State::Exited;
                    status.held_ports.clear();
                    status.not_sleeping = None;
                    if let Some(why) = died {
                        status.last_error = Some(why.to_string());
                    }
                }
                if status.last_error.is_some() {
                    status.kept_logs = self.keep_logs();
                }
                if let Err(e) = lightwhale_status::write_status(to, &status) {
                    warn!("keep the record {}: {e}", to.display());
                }
                if let Some(root) = to.parent().and_then(Path::parent) {
                    lightwhale_status::prune_exited(root, lightwhale_status::EXITED_KEEP);
                }
            }
        }
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

    /// Copies CRIU's logs (not its images: those hold memory) out of the image root, the
    /// last [`LOG_KEEP_BYTES`] of each; returns where they went.
    fn keep_logs(&self) -> Option<PathBuf> {
        let (root, dest) = (self.image_root.as_ref()?, self.logs_dir.as_ref()?);
        let logs: Vec<PathBuf> = std::fs::read_dir(root.join("work"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        if logs.is_empty() {
            return None;
        }
        std::fs::create_dir_all(dest).ok()?;
        for log in logs {
            let Some(name) = log.file_name() else {
                continue;
            };
            let Ok(bytes) = std::fs::read(&log) else {
                continue;
            };
            let tail = &bytes[bytes.len().saturating_sub(LOG_KEEP_BYTES)..];
            if let Err(e) = std::fs::write(dest.join(name), tail) {
                warn!("keep {}: {e}", log.display());
            }
        }
        Some(dest.clone())
    }
}

/// How much of each CRIU log is kept for a container that failed.
pub const LOG_KEEP_BYTES: usize = 1 << 20;

/// Removes checkpoint images that no container owns any more: a directory
/// `<images>/<namespace>/<id>` whose container has no live status file under `status`.
/// Status files live on tmpfs, so this is what a reboot leaves (containerd does not clean
/// up shims it no longer knows). Safe beside running shims: a container's status file is
/// written at create, before it can sleep, and removed after its images. Returns what
/// was removed.
pub fn sweep_orphan_images(images: &Path, status: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for ns in std::fs::read_dir(images).into_iter().flatten().flatten() {
        // A dot-name is no namespace (containerd allows none): the templates live there.
        if !ns.file_type().is_ok_and(|t| t.is_dir())
            || ns.file_name().as_encoded_bytes().starts_with(b".")
        {
            continue;
        }
        let namespace = ns.file_name();
        for c in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            let id = c.file_name();
            let live = status
                .join(&namespace)
                .join(format!("{}.json", id.to_string_lossy()));
            if !live.exists() && c.file_type().is_ok_and(|t| t.is_dir()) {
                remove_dir_quiet(&c.path());
                removed.push(c.path());
            }
        }
    }
    removed
}

/// Pids of `runc restore` processes of container `id` under runc root `root`: a wake that
/// a dead shim had started, still running.
pub fn restores_in_flight(id: &str, root: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .collect();
        let is = |s: &str| args.contains(&s.as_bytes());
        if is("restore") && is(root) && args.last() == Some(&id.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits (at most `limit`) until no restore of container `id` runs any more. A shim
/// killed mid-wake leaves its `runc restore` running: deleting the container before it
/// ends would let the restore bring the task back afterwards, with nobody to end it.
pub async fn wait_for_restores(id: &str, root: &str, limit: std::time::Duration) -> bool {
    let t = std::time::Instant::now();
    loop {
        if restores_in_flight(id, root).is_empty() {
            return true;
        }
        if t.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub(crate) fn remove_dir_quiet(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!("remove {}: {e}", dir.display());
        }
    }
}

/// Bytes of the files under `dir` (checkpoint images), without following links.
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// `root` emptied and made again, with `subdirs`, all root-only (0700): they hold a
/// task's memory. The path that could not be made, with why.
pub(crate) fn fresh_private_dirs(
    root: &Path,
    subdirs: &[&str],
) -> Result<(), (PathBuf, std::io::Error)> {
    remove_dir_quiet(root);
    let all = std::iter::once(root.to_path_buf()).chain(subdirs.iter().map(|d| root.join(d)));
    for d in all {
        create_private_dir(&d).map_err(|e| (d.clone(), e))?;
    }
    Ok(())
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_retired_and_retiring_is_idempotent() {
        let d = tempfile::tempdir().expect("tempdir");
        let images = d.path().join("img/ns/id");
        std::fs::create_dir_all(images.join("images")).expect("mkdir");
        std::fs::create_dir_all(images.join("work")).expect("mkdir");
        std::fs::write(images.join("images/pages-1.img"), b"secret").expect("write");
        std::fs::write(images.join("work/restore.log"), b"criu said no").expect("write");
        let status = d.path().join("run/ns/id.json");
        let mut s = lightwhale_status::ContainerStatus::new("ns", "id", Default::default());
        s.state = lightwhale_status::State::Asleep;
        lightwhale_status::write_status(&status, &s).expect("write");
        let exited = d.path().join("exited/ns/id.json");
        let st = BundleState {
            image_root: Some(images.clone()),
            status_file: Some(status.clone()),
            control_socket: Some(d.path().join("id.sock")),
            exited_file: Some(exited.clone()),
            logs_dir: Some(d.path().join("logs/ns/id")),
            ..Default::default()
        };
        st.save(d.path()).expect("save");
        let back = BundleState::load(d.path()).expect("load");
        back.retire_records(Some("the shim died while the container was asleep"));
        assert!(!images.exists() && !status.exists());
        let kept = lightwhale_status::read_status(&exited).expect("kept record");
        assert_eq!(kept.state, lightwhale_status::State::Exited);
        assert!(kept.last_error.unwrap_or_default().contains("shim died"));
        let logs = kept.kept_logs.expect("logs kept");
        assert_eq!(
            std::fs::read(logs.join("restore.log")).ok().as_deref(),
            Some(&b"criu said no"[..])
        );
        back.retire_records(None);
    }

    #[tokio::test]
    async fn a_restore_in_flight_is_found_and_waited_for() {
        let id = format!("lw-restore-test-{}", std::process::id());
        // Looks like `runc --root /x restore ... <id>` to the scan: a shell that waits on
        // a builtin (it forks nothing that could match too) until its stdin closes.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x", "--root", "/x/runc", "restore", &id])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdin = child.stdin.take();
        // The command line is the shell's once it has started.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut found = restores_in_flight(&id, "/x/runc");
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            found = restores_in_flight(&id, "/x/runc");
        }
        assert_eq!(found, vec![child.id() as i32]);
        assert!(restores_in_flight(&id, "/other/root").is_empty());
        assert!(restores_in_flight("another-id", "/x/runc").is_empty());
        let waited = tokio::task::spawn_blocking(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(stdin);
            child.wait()
        });
        assert!(wait_for_restores(&id, "/x/runc", std::time::Duration::from_secs(10)).await);
        waited.await.expect("join").expect("wait");
    }

    #[test]
    fn images_without_a_live_record_are_swept() {
        let d = tempfile::tempdir().expect("tempdir");
        let (images, status) = (d.path().join("images"), d.path().join("status"));
        for id in ["live", "orphan"] {
            std::fs::create_dir_all(images.join("ns").join(id).join("images")).expect("mkdir");
        }
        let template = images.join(".templates/warm/images");
        std::fs::create_dir_all(&template).expect("mkdir");
        std::fs::create_dir_all(status.join("ns")).expect("mkdir");
        std::fs::write(status.join("ns/live.json"), b"{}").expect("write");
        let removed = sweep_orphan_images(&images, &status);
        assert_eq!(removed, vec![images.join("ns/orphan")]);
        assert!(images.join("ns/live/images").exists());
        assert!(template.exists(), "templates are no container's images");
        assert!(sweep_orphan_images(&d.path().join("absent"), &status).is_empty());
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
        assert!(st.rootfs_mounted && st.image_root.is_none() && st.exited_file.is_none());
    }
}
