//! The status files the shims write: `<dir>/<namespace>/<id>.json`, one per container.
//!
//! The directory is a parameter (not [`lightwhale_status::CONTAINERS_DIR`] hard-wired) so
//! the tests can point it at a temporary directory without root.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lightwhale_status::{ContainerStatus, ReadError};

/// One container found on disk.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The containerd namespace: the name of the directory the file is in.
    pub namespace: String,
    /// The container id: the file's name without `.json`. The file name is what the shim
    /// keys its socket on, so it is trusted over the `id` field inside.
    pub id: String,
    /// The status file itself; the control socket is beside it (see [`Entry::socket`]).
    pub path: PathBuf,
    pub status: ContainerStatus,
}

impl Entry {
    /// The control socket beside the status file. Derived from the file's own path rather
    /// than rebuilt from `namespace`/`id`, which went through a lossy UTF-8 conversion.
    pub fn socket(&self) -> PathBuf {
        self.path.with_extension("sock")
    }
}

/// What a scan of the status directory found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Readable records, sorted by namespace then id.
    pub entries: Vec<Entry>,
    /// One message per file this CLI must not read (written by a newer shim): shown once
    /// on stderr by the caller, so that the user learns to upgrade instead of wondering
    /// where a container went.
    pub warnings: Vec<String>,
    /// Status files that could not be read or are not status records (newer ones are in
    /// `warnings` instead); one that vanished between the listing and the read (its
    /// container was deleted) is not counted. `lightwhale metrics` exposes the count.
    pub unreadable: usize,
    /// The namespace directories found, those without any record included.
    pub namespaces: Vec<String>,
}

/// Reads every status record under `dir`.
///
/// Files that cannot be read or are not status records (half-written by a crash, stray
/// files, directories named `*.json`) are skipped silently: a shim may be rewriting or
/// deleting its file right now, and one bad file must not hide the others. A missing
/// `dir` means no shim has run yet: an empty scan, not an error.
pub fn scan(dir: &Path) -> Result<Scan> {
    let mut out = Scan::default();
    let namespaces = match std::fs::read_dir(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
        // Anything else (usually permission denied for a non-root user) would otherwise
        // look like "no containers", which is wrong and confusing.
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    for ns in namespaces.flatten() {
        let Ok(files) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        let namespace = ns.file_name().to_string_lossy().into_owned();
        out.namespaces.push(namespace.clone());
        for f in files.flatten() {
            let path = f.path();
            // `.json.tmp` files (an atomic rewrite in progress) end in `tmp` and are skipped.
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let status = match lightwhale_status::read_status(&path) {
                Ok(s) => s,
                Err(e @ ReadError::Newer { .. }) => {
                    out.warnings.push(e.to_string());
                    continue;
                }
                Err(ReadError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                    continue
                }
                Err(ReadError::Io { .. } | ReadError::Json { .. }) => {
                    out.unreadable += 1;
                    continue;
                }
            };
            let id = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.entries.push(Entry {
                namespace: namespace.clone(),
                id,
                path,
                status,
            });
        }
    }
    out.entries
        .sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
    out.namespaces.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lightwhale_status::{ConfigView, State};

    fn write(dir: &Path, ns: &str, file: &str, bytes: &[u8]) {
        let d = dir.join(ns);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join(file), bytes).expect("write");
    }

    #[test]
    fn garbage_and_stray_files_are_skipped_without_panic() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut good = ContainerStatus::new("moby", "abc123", ConfigView::default());
        good.state = State::Asleep;
        let good_bytes = serde_json::to_vec(&good).expect("json");
        write(tmp.path(), "moby", "abc123.json", &good_bytes);
        write(tmp.path(), "moby", "garbage.json", b"{ not json");
        write(tmp.path(), "moby", "binary.json", b"\xff\xfe\x00");
        write(tmp.path(), "moby", "array.json", b"[1, 2]");
        write(tmp.path(), "moby", "empty.json", b"");
        write(tmp.path(), "moby", "abc123.json.tmp", b"{");
        write(tmp.path(), "moby", "abc123.sock", b"");
        std::fs::create_dir_all(tmp.path().join("moby/dir.json")).expect("mkdir");
        // A stray file at the namespace level is not a namespace.
        std::fs::write(tmp.path().join("stray.json"), b"{}").expect("write");

        let scan = scan(tmp.path()).expect("scan");
        let ids: Vec<&str> = scan.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["abc123"]);
        assert!(scan.warnings.is_empty(), "{:?}", scan.warnings);
        // garbage, binary, array, empty and the directory named `dir.json`.
        assert_eq!(scan.unreadable, 5);
        let e = &scan.entries[0];
        assert_eq!(e.namespace, "moby");
        assert_eq!(e.status.state, State::Asleep);
        assert_eq!(e.socket(), tmp.path().join("moby/abc123.sock"));
    }

    #[test]
    fn a_newer_shims_file_is_reported_once_and_skipped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        write(
            tmp.path(),
            "moby",
            "future.json",
            br#"{"schema": 99, "id": "future", "state": "hibernating"}"#,
        );
        let scan = scan(tmp.path()).expect("scan");
        assert!(scan.entries.is_empty());
        assert_eq!(scan.warnings.len(), 1, "{:?}", scan.warnings);
        assert!(
            scan.warnings[0].contains("upgrade the lightwhale CLI"),
            "{:?}",
            scan.warnings
        );
    }

    #[test]
    fn a_missing_directory_is_empty_not_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let scan = scan(&tmp.path().join("nothing-here")).expect("scan");
        assert!(scan.entries.is_empty());
    }
}
