//! A container's root filesystem as the host sees it: the overlay mounted there (its
//! image layers, its upper layer), and its changes kept as a tar and a list of deletions,
//! to be laid over another container's root (templates, moves).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

pub(crate) fn rootfs_of(bundle: &Path, spec: &Value) -> PathBuf {
    let p = PathBuf::from(
        spec.pointer("/root/path")
            .and_then(Value::as_str)
            .unwrap_or("rootfs"),
    );
    if p.is_absolute() {
        p
    } else {
        bundle.join(p)
    }
}

/// The overlay mounted at a container's root, as the host sees it.
#[derive(Debug)]
pub(crate) struct Overlay {
    /// Lower layers, resolved, without Docker's per-container `-init` layer.
    pub image_layers: Vec<String>,
    pub upper: Option<PathBuf>,
}

pub(crate) fn overlay_at(rootfs: &Path) -> Option<Overlay> {
    let rootfs = std::fs::canonicalize(rootfs).ok()?;
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // The last mount at that point is the one in force.
    let line = text.lines().rev().find(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| Path::new(&unescape(m)) == rootfs)
    })?;
    let (_, after) = line.split_once(" - ")?;
    let mut fields = after.split(' ');
    if fields.next()? != "overlay" {
        return None;
    }
    let options = fields.nth(1)?;
    let mut layers = Vec::new();
    let mut upper = None;
    for o in options.split(',') {
        if let Some(l) = o.strip_prefix("lowerdir=") {
            for dir in l.split(':') {
                let dir = unescape(dir);
                let resolved = std::fs::canonicalize(&dir)
                    .map(|p| p.display().to_string())
                    .unwrap_or(dir);
                if !resolved.ends_with("-init/diff") {
                    layers.push(resolved);
                }
            }
        } else if let Some(u) = o.strip_prefix("upperdir=") {
            upper = Some(PathBuf::from(unescape(u)));
        }
    }
    Some(Overlay {
        image_layers: layers,
        upper,
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Keeps the upper layer `upper` in `dir`: `fs.tar` of what it added or changed, and
/// `whiteouts` (one path a line) of what it deleted. Returns the tar's size.
pub(crate) async fn keep_fs_changes(upper: &Path, dir: &Path) -> Result<u64, String> {
    let mut files = Vec::new();
    let mut whiteouts = Vec::new();
    walk(upper, Path::new("."), &mut files, &mut whiteouts)
        .map_err(|e| format!("read {}: {e}", upper.display()))?;
    let list = dir.join("fs.list");
    let mut nul = Vec::new();
    for f in &files {
        nul.extend_from_slice(f.as_os_str().as_encoded_bytes());
        nul.push(0);
    }
    std::fs::write(&list, nul).map_err(|e| format!("write {}: {e}", list.display()))?;
    let tar = dir.join("fs.tar");
    let mut cmd = std::process::Command::new("tar");
    cmd.args(["--create", "--no-recursion", "--null", "--numeric-owner"])
        .arg("--file")
        .arg(&tar)
        .arg("--directory")
        .arg(upper)
        .arg("--files-from")
        .arg(&list);
    let out = crate::reaper::output(cmd)
        .await
        .map_err(|e| format!("run tar: {e}"))?;
    let _ = std::fs::remove_file(&list);
    if !out.status.success() {
        return Err(format!(
            "tar: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let lines: String = whiteouts
        .iter()
        .map(|w| format!("{}\n", w.display()))
        .collect();
    std::fs::write(dir.join("whiteouts"), lines).map_err(|e| format!("write whiteouts: {e}"))?;
    Ok(std::fs::metadata(&tar).map(|m| m.len()).unwrap_or(0))
}

/// Collects the entries under `base/rel`: overlay whiteouts (0/0 character devices) apart,
/// sockets left out (a socket file cannot be archived; a listener re-creates its own).
fn walk(
    base: &Path,
    rel: &Path,
    files: &mut Vec<PathBuf>,
    whiteouts: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    for e in std::fs::read_dir(base.join(rel))? {
        let e = e?;
        let rel = rel.join(e.file_name());
        let meta = e.metadata()?;
        let t = meta.file_type();
        if t.is_char_device() && meta.rdev() == 0 {
            whiteouts.push(rel);
        } else if t.is_socket() {
            continue;
        } else if t.is_dir() {
            files.push(rel.clone());
            walk(base, &rel, files, whiteouts)?;
        } else {
            files.push(rel);
        }
    }
    Ok(())
}

pub(crate) async fn apply_fs_changes(dir: &Path, rootfs: &Path) -> Result<(), String> {
    let tar = dir.join("fs.tar");
    if !tar.exists() {
        return Ok(());
    }
    let whiteouts = std::fs::read_to_string(dir.join("whiteouts")).unwrap_or_default();
    for w in whiteouts.lines().filter(|l| !l.is_empty()) {
        let p = rootfs.join(w);
        // Only below the root: the list is the engine's own, but a path is a path.
        if Path::new(w)
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            continue;
        }
        let r = match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
            Ok(_) => std::fs::remove_file(&p),
            Err(_) => Ok(()),
        };
        r.map_err(|e| format!("remove {}: {e}", p.display()))?;
    }
    let mut cmd = std::process::Command::new("tar");
    cmd.args([
        "--extract",
        "--same-owner",
        "--same-permissions",
        "--numeric-owner",
    ])
    .arg("--file")
    .arg(&tar)
    .arg("--directory")
    .arg(rootfs);
    let out = crate::reaper::output(cmd)
        .await
        .map_err(|e| format!("run tar: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tar: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[tokio::test]
    async fn filesystem_changes_go_over_another_root() {
        let d = tempfile::tempdir().expect("tempdir");
        let (upper, keep, root) = (d.path().join("u"), d.path().join("t"), d.path().join("r"));
        for p in [&upper, &keep, &root] {
            std::fs::create_dir_all(p).expect("mkdir");
        }
        std::fs::create_dir_all(upper.join("var/data")).expect("mkdir");
        std::fs::write(upper.join("var/data/state"), b"42").expect("write");
        std::fs::write(root.join("gone"), b"x").expect("write");
        // A whiteout is a 0/0 character device: needs root to make; without root only
        // the additions are checked.
        let c = std::ffi::CString::new(upper.join("gone").as_os_str().as_encoded_bytes())
            .expect("path");
        // SAFETY: a valid NUL-terminated path; mknod does not keep it.
        let whiteout = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, 0) } == 0;
        keep_fs_changes(&upper, &keep).await.expect("keep");
        apply_fs_changes(&keep, &root).await.expect("apply");
        assert_eq!(
            std::fs::read(root.join("var/data/state")).expect("read"),
            b"42"
        );
        if whiteout {
            assert!(!root.join("gone").exists(), "a deletion is carried over");
        }
    }
}
