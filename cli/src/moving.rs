//! `lightwhale export` and `lightwhale import`: a sleeping container moved to another host.
//!
//! Export asks the container's shim for its checkpoint images, filesystem changes and
//! CPU description (the shim knows where they are), adds containerd's record of the
//! container (its spec and image) and a SHA-256 of every file, and writes one tar.
//! Import checks the archive whole (every checksum, nothing missing or added), the host
//! (kernel, CRIU, `criu cpuinfo check`), installs it as a template, creates the
//! container through containerd with that template, and puts it to sleep once it runs:
//! it then wakes on its first connection with its memory and files. The source is
//! removed (`--remove-source`) only after that, so a failed move loses nothing.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use lightwhale_status::template::{check_name, template_dir};
use lightwhale_status::{Command, State, TemplateMeta};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::control;
use crate::store::Entry;
use crate::view;

/// containerd's socket unless told otherwise.
pub const CONTAINERD: &str = "/run/containerd/containerd.sock";

const MANIFEST: &str = "manifest.json";
const FORMAT: u32 = 1;

/// What the archive holds, and how to check it.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    /// Where the container ran: containerd's socket, namespace and id.
    source_address: String,
    source_namespace: String,
    source_id: String,
    /// Its image as containerd knows it (none for a container Docker made).
    image: Option<String>,
    /// SHA-256 of every other file, by path in the archive.
    files: BTreeMap<String, String>,
}

/// Removes a directory when dropped (a staging area, whatever happens).
struct Staging(PathBuf);

impl Staging {
    /// Keeps the directory after all.
    fn keep(mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Every file under `root`, by path relative to it (directories are walked, not listed).
fn files_under(root: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<String>) -> Result<()> {
        for e in std::fs::read_dir(root.join(rel))? {
            let e = e?;
            let rel = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                walk(root, &rel, out)?;
            } else {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out).with_context(|| format!("read {}", root.display()))?;
    out.sort();
    Ok(out)
}

fn ctr(address: &Path, namespace: &str, args: &[&str]) -> Result<String> {
    let out = Process::new("ctr")
        .arg("--address")
        .arg(address)
        .args(["--namespace", namespace])
        .args(args)
        .output()
        .context("run ctr (containerd's client)")?;
    if !out.status.success() {
        bail!(
            "ctr {}: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tar(args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = Process::new("tar").args(args).output().context("run tar")?;
    if !out.status.success() {
        bail!("tar: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Exports the container `e` (put to sleep first if it is awake) into `file`.
pub fn export(e: &Entry, file: &Path, address: &Path) -> Result<String> {
    if e.status.state != State::Asleep {
        let reply = control::request(&e.socket(), &Command::Sleep)?;
        if !reply.ok {
            bail!(
                "cannot put {} to sleep for its export: {}",
                e.id,
                reply.error.as_deref().unwrap_or("no reason given")
            );
        }
    }
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = std::fs::canonicalize(&parent)
        .with_context(|| format!("the directory of {}", file.display()))?;
    let staging = Staging(parent.join(format!(".lightwhale-export-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&staging.0);
    std::fs::create_dir(&staging.0).with_context(|| format!("create {}", staging.0.display()))?;
    let payload = staging.0.join("payload");
    control::command(&e.socket(), &Command::Export(payload.clone()))?;
    // containerd's own record: what `import` re-creates the container from.
    let mut image = None;
    if let Ok(info) = ctr(address, &e.namespace, &["containers", "info", &e.id]) {
        let info: serde_json::Value =
            serde_json::from_str(&info).context("containerd's record of the container")?;
        image = info["Image"]
            .as_str()
            .filter(|i| !i.is_empty())
            .map(str::to_string);
        std::fs::write(payload.join("config.json"), info["Spec"].to_string())
            .context("write config.json")?;
    }
    let mut files = BTreeMap::new();
    for f in files_under(&payload)? {
        let digest = sha256(&payload.join(&f))?;
        files.insert(f, digest);
    }
    let manifest = Manifest {
        format: FORMAT,
        source_address: address.display().to_string(),
        source_namespace: e.namespace.clone(),
        source_id: e.id.clone(),
        image,
        files,
    };
    std::fs::write(
        payload.join(MANIFEST),
        serde_json::to_vec_pretty(&manifest)?,
    )
    .context("write the manifest")?;
    let part = staging.0.join("archive.tar");
    tar(&[
        "--create".as_ref(),
        "--file".as_ref(),
        part.as_os_str(),
        "--directory".as_ref(),
        payload.as_os_str(),
        ".".as_ref(),
    ])?;
    let digest = sha256(&part)?;
    let bytes = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    std::fs::rename(&part, file).with_context(|| format!("write {}", file.display()))?;
    Ok(format!(
        "exported {} (asleep) to {}: {}, sha256 {digest}\n",
        view::short_id(&e.id),
        file.display(),
        view::mib(Some(bytes))
    ))
}

pub struct ImportOpts<'a> {
    pub file: &'a Path,
    pub templates: &'a Path,
    pub name: Option<String>,
    /// containerd to create the container in; None: install the template only.
    pub address: Option<PathBuf>,
    pub namespace: Option<String>,
    pub id: Option<String>,
    pub remove_source: bool,
    /// Where the shims keep status files and control sockets.
    pub status_dir: &'a Path,
}

/// Checks the unpacked archive in `dir` against its manifest: every file present with
/// its checksum, none added.
fn verify(dir: &Path, file: &Path) -> Result<Manifest> {
    let bytes = std::fs::read(dir.join(MANIFEST)).map_err(|_| {
        anyhow!(
            "{} is not a lightwhale export (no manifest)",
            file.display()
        )
    })?;
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow!("{} has a bad manifest: {e}", file.display()))?;
    if m.format > FORMAT {
        bail!(
            "{} was made by a newer lightwhale (format {}): upgrade lightwhale here",
            file.display(),
            m.format
        );
    }
    let found = files_under(dir)?;
    for f in &found {
        if f == MANIFEST {
            continue;
        }
        let Some(want) = m.files.get(f) else {
            bail!("{} is corrupt: {f} is not in its manifest", file.display());
        };
        if sha256(&dir.join(f))? != *want {
            bail!(
                "{} is corrupt: {f} does not match its checksum",
                file.display()
            );
        }
    }
    if let Some(missing) = m.files.keys().find(|f| !found.contains(f)) {
        bail!("{} is incomplete: {missing} is missing", file.display());
    }
    Ok(m)
}

/// Refuses a checkpoint this host cannot restore: another kernel, another CRIU, a CPU
/// without the features the task used.
fn check_host(dir: &Path, meta: &TemplateMeta) -> Result<()> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if kernel.trim() != meta.kernel {
        bail!(
            "it was checkpointed under kernel {}, this host runs {}: restore needs the same kernel",
            meta.kernel,
            kernel.trim()
        );
    }
    let out = Process::new("criu")
        .arg("--version")
        .output()
        .context("run criu")?;
    let criu = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string());
    if criu != meta.criu_version {
        bail!(
            "it was checkpointed with CRIU {:?}, this host has {:?}",
            meta.criu_version,
            criu
        );
    }
    let out = Process::new("criu")
        .args(["cpuinfo", "check", "-D"])
        .arg(dir)
        .output()
        .context("run criu cpuinfo check")?;
    if !out.status.success() {
        bail!(
            "this host's CPU lacks features the task was using (criu cpuinfo check: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn import(o: ImportOpts) -> Result<String> {
    std::fs::create_dir_all(o.templates)
        .with_context(|| format!("create {}", o.templates.display()))?;
    let staging = Staging(o.templates.join(format!(".import-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&staging.0);
    std::fs::create_dir(&staging.0)?;
    tar(&[
        "--extract".as_ref(),
        "--file".as_ref(),
        o.file.as_os_str(),
        "--directory".as_ref(),
        staging.0.as_os_str(),
    ])
    .map_err(|e| {
        anyhow!(
            "{} is not a complete lightwhale export ({e})",
            o.file.display()
        )
    })?;
    let manifest = verify(&staging.0, o.file)?;
    let meta_path = staging.0.join("meta.json");
    let mut meta: TemplateMeta =
        serde_json::from_slice(&std::fs::read(&meta_path)?).context("the export's meta.json")?;
    check_host(&staging.0, &meta).context("not imported")?;
    let name = o
        .name
        .clone()
        .unwrap_or_else(|| format!("moved-{}", view::short_id(&manifest.source_id)));
    check_name(&name).map_err(anyhow::Error::msg)?;
    let dest = template_dir(o.templates, &name);
    if dest.exists() {
        bail!("template {name} exists already: pass another --name, or remove it (lightwhale template rm {name})");
    }
    // The layers were another host's paths: the image is the one containerd runs here.
    meta.name = name.clone();
    meta.fit.image_layers.clear();
    std::fs::write(&meta_path, serde_json::to_vec_pretty(&meta)?)?;
    std::fs::rename(&staging.0, &dest).with_context(|| format!("install {}", dest.display()))?;
    let Some(address) = &o.address else {
        return Ok(format!(
            "installed as template {name}: start a container of the same image and command with --annotation lightwhale.io/template={name}\n"
        ));
    };
    let installed = Staging(dest.clone());
    let namespace = o
        .namespace
        .clone()
        .unwrap_or(manifest.source_namespace.clone());
    let id = o.id.clone().unwrap_or(manifest.source_id.clone());
    create(address, &namespace, &id, &name, &dest, &manifest)?;
    let status = lightwhale_status::status_path(o.status_dir, &namespace, &id);
    let used = wait_for(Duration::from_secs(60), || {
        lightwhale_status::read_status(&status)
            .ok()
            .and_then(|s| s.template)
    });
    match used {
        Some(u) if u.restored => {}
        other => {
            let why = other
                .and_then(|u| u.reason)
                .unwrap_or_else(|| "its shim never said".into());
            let _ = remove(address, &namespace, &id);
            bail!("the container did not start from its checkpoint here, and was removed (the source is untouched): {why}");
        }
    }
    let socket = lightwhale_status::control_path(o.status_dir, &namespace, &id);
    let asleep = wait_for(Duration::from_secs(30), || {
        control::request(&socket, &Command::Sleep)
            .ok()
            .filter(|r| r.ok)
    });
    // The template goes once the container no longer reads it (a post-copy restore
    // reads it until its memory is all back; a sleep waits for that too).
    let done = wait_for(Duration::from_secs(60), || {
        lightwhale_status::read_status(&status)
            .ok()
            .filter(|s| !s.template.as_ref().is_some_and(|t| t.reads_images()))
    });
    if done.is_some() {
        drop(installed);
    } else {
        installed.keep();
    }
    let mut out = match asleep {
        Some(_) => format!(
            "imported {} into {namespace}/{id}: asleep, it wakes on its first connection\n",
            view::short_id(&manifest.source_id)
        ),
        None => format!(
            "imported {} into {namespace}/{id}: running (it would not sleep yet: lightwhale inspect {id})\n",
            view::short_id(&manifest.source_id)
        ),
    };
    if o.remove_source {
        let src = PathBuf::from(&manifest.source_address);
        if src.exists() {
            remove(&src, &manifest.source_namespace, &manifest.source_id)
                .context("the import is done, but removing the source failed")?;
            out.push_str(&format!(
                "removed the source {}/{}\n",
                manifest.source_namespace, manifest.source_id
            ));
        } else {
            out.push_str(&format!(
                "the source is on another host: remove it there (ctr -n {} task kill -s SIGKILL {}; ctr -n {} containers rm {})\n",
                manifest.source_namespace, manifest.source_id, manifest.source_namespace, manifest.source_id
            ));
        }
    }
    Ok(out)
}

/// Creates and starts the container through containerd, with the source's image,
/// command, environment and lightwhale annotations, restoring template `name`.
fn create(
    address: &Path,
    namespace: &str,
    id: &str,
    name: &str,
    dir: &Path,
    m: &Manifest,
) -> Result<()> {
    let Some(image) = &m.image else {
        bail!("the export has no containerd image (a container Docker made): installed as template {name}; run it with --annotation lightwhale.io/template={name}");
    };
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)
        .context("the export's config.json")?;
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--runtime".into(),
        "io.containerd.lightwhale.v2".into(),
        "--annotation".into(),
        format!("lightwhale.io/template={name}"),
    ];
    if let Some(a) = spec["annotations"].as_object() {
        for (k, v) in a {
            if k.starts_with("lightwhale.io/") && k != "lightwhale.io/template" {
                args.push("--annotation".into());
                args.push(format!("{k}={}", v.as_str().unwrap_or_default()));
            }
        }
    }
    for e in spec["process"]["env"].as_array().into_iter().flatten() {
        if let Some(e) = e.as_str() {
            args.push("--env".into());
            args.push(e.to_string());
        }
    }
    if let Some(cwd) = spec["process"]["cwd"].as_str() {
        args.push("--cwd".into());
        args.push(cwd.to_string());
    }
    args.push(image.clone());
    args.push(id.to_string());
    for a in spec["process"]["args"].as_array().into_iter().flatten() {
        args.push(a.as_str().unwrap_or_default().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ctr(address, namespace, &args)
        .map(drop)
        .with_context(|| format!("create {namespace}/{id} from {image} (is the image there? ctr -n {namespace} images ls)"))
}

/// Kills and removes a container through containerd.
fn remove(address: &Path, namespace: &str, id: &str) -> Result<()> {
    let _ = ctr(address, namespace, &["task", "kill", "-s", "SIGKILL", id]);
    let gone = wait_for(Duration::from_secs(15), || {
        ctr(address, namespace, &["task", "rm", id]).ok()
    });
    if gone.is_none() {
        let _ = ctr(address, namespace, &["task", "rm", "-f", id]);
    }
    ctr(address, namespace, &["containers", "rm", id]).map(drop)
}

fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(dir: &Path) {
        std::fs::create_dir_all(dir.join("images")).expect("mkdir");
        std::fs::write(dir.join("images/pages-1.img"), vec![7u8; 4096]).expect("write");
        std::fs::write(dir.join("meta.json"), b"{}").expect("write");
        let mut files = BTreeMap::new();
        for f in files_under(dir).expect("walk") {
            files.insert(f.clone(), sha256(&dir.join(&f)).expect("digest"));
        }
        let m = Manifest {
            format: FORMAT,
            source_address: CONTAINERD.into(),
            source_namespace: "default".into(),
            source_id: "c1".into(),
            image: None,
            files,
        };
        std::fs::write(dir.join(MANIFEST), serde_json::to_vec(&m).expect("json")).expect("write");
    }

    #[test]
    fn a_sound_archive_verifies_and_a_changed_one_does_not() {
        let d = tempfile::tempdir().expect("tempdir");
        payload(d.path());
        let f = Path::new("x.tar");
        let m = verify(d.path(), f).expect("sound");
        assert_eq!(m.files.len(), 2);
        assert_eq!(
            m.files["images/pages-1.img"],
            // sha256 of 4096 bytes of 7.
            sha256(&d.path().join("images/pages-1.img")).expect("digest")
        );
        std::fs::write(d.path().join("images/pages-1.img"), vec![8u8; 4096]).expect("write");
        let e = verify(d.path(), f).expect_err("changed");
        assert!(e.to_string().contains("does not match its checksum"), "{e}");
        payload(d.path());
        std::fs::write(d.path().join("extra"), b"x").expect("write");
        assert!(verify(d.path(), f).is_err_and(|e| e.to_string().contains("not in its manifest")));
        std::fs::remove_file(d.path().join("extra")).expect("rm");
        std::fs::remove_file(d.path().join("meta.json")).expect("rm");
        assert!(verify(d.path(), f).is_err_and(|e| e.to_string().contains("meta.json is missing")));
    }

    #[test]
    fn digests_are_sha256() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("abc");
        std::fs::write(&p, b"abc").expect("write");
        assert_eq!(
            sha256(&p).expect("digest"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
