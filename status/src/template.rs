//! Templates: the record of a warmed container's checkpoint that new containers start
//! from (`lightwhale template ...`, annotation `lightwhale.io/template`). Written by the
//! engine that takes the checkpoint, read by the engine that restores a clone from it and
//! by the CLI that lists them: one definition, as for the status records.
//!
//! A template is a directory `<TEMPLATES_DIR>/<name>/`: `meta.json` (a [`TemplateMeta`]),
//! `images/` (CRIU's), and, when the container had changed its filesystem, `fs.tar` with
//! `whiteouts` (paths it had deleted).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where templates live by default. A dot-name beside the containerd namespaces'
/// directories of checkpoint images: no namespace can be called that.
pub const TEMPLATES_DIR: &str = "/var/lib/lightwhale/.templates";

/// The schema of `meta.json` this build writes and reads.
pub const TEMPLATE_SCHEMA: u32 = 1;

/// What a clone must share with the container the template was taken from for the
/// restore to be the same service: its image, its command, its mounts.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(default)]
pub struct TemplateFit {
    pub args: Vec<String>,
    pub cwd: String,
    /// The environment without `HOSTNAME` (Docker sets it to each container's id).
    pub env: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub terminal: bool,
    /// Mount destinations, sorted (their sources are each container's own).
    pub mounts: Vec<String>,
    /// The image's layers under the container's overlay root, resolved (empty when the
    /// root is not an overlay mount).
    pub image_layers: Vec<String>,
}

impl TemplateFit {
    /// Why a container described by `other` cannot start from this template (None: it can).
    pub fn mismatch(&self, other: &TemplateFit) -> Option<String> {
        // A template without layers (a root that is no overlay; an imported one, whose
        // layers were another host's paths) leaves the image to whoever made the clone.
        if !self.image_layers.is_empty() && self.image_layers != other.image_layers {
            return Some("a different image (its layers differ)".into());
        }
        if self.args != other.args {
            return Some(format!(
                "a different command ({:?}, the template's is {:?})",
                other.args, self.args
            ));
        }
        if self.env != other.env {
            let extra: Vec<_> = other.env.iter().filter(|e| !self.env.contains(e)).collect();
            let missing: Vec<_> = self.env.iter().filter(|e| !other.env.contains(e)).collect();
            return Some(format!(
                "a different environment (not in the template: {extra:?}; not in this container: {missing:?})"
            ));
        }
        if self.cwd != other.cwd || (self.uid, self.gid) != (other.uid, other.gid) {
            return Some("a different working directory or user".into());
        }
        if self.terminal != other.terminal {
            return Some("a terminal on one side only".into());
        }
        if self.mounts != other.mounts {
            return Some(format!(
                "different mounts ({:?}, the template's are {:?})",
                other.mounts, self.mounts
            ));
        }
        None
    }
}

/// `meta.json` of a template.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct TemplateMeta {
    pub schema: u32,
    pub name: String,
    pub created_unix_ms: u64,
    /// The container it was taken from (which kept running).
    pub source_namespace: String,
    pub source_id: String,
    pub source_name: Option<String>,
    pub fit: TemplateFit,
    /// Bytes of CRIU images, and of memory pages among them.
    pub images_bytes: u64,
    pub pages_bytes: u64,
    /// Bytes of the filesystem changes kept with it (None: none were found).
    pub fs_changes_bytes: Option<u64>,
    /// How long the checkpoint took (the source was frozen for about that long).
    pub checkpoint_ms: f64,
    /// What took it: a restore elsewhere compares these.
    pub kernel: String,
    pub criu_version: Option<String>,
}

/// How a container used the template it named (`ContainerStatus::template`).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct TemplateUse {
    pub name: String,
    /// Restored from it; false: started cold, for `reason`.
    pub restored: bool,
    pub reason: Option<String>,
    /// The restore's time (runc restore, CRIU included).
    pub restore_ms: Option<f64>,
    /// Post-copy: its memory came back from the template's images as it touched it.
    pub lazy: bool,
    /// Post-copy: when every page was back (until then it reads the template's images).
    pub fill_ms: Option<f64>,
}

impl TemplateUse {
    /// Whether the container still reads its template's images.
    pub fn reads_images(&self) -> bool {
        self.restored && self.lazy && self.fill_ms.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateReadError {
    #[error("no template {name} (in {dir}): create it with `lightwhale template create {name} --from CONTAINER`")]
    Missing { name: String, dir: PathBuf },
    #[error("template {name}: cannot read {path}: {source}")]
    Io {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("template {name}: {path} is not a template record: {source}")]
    Json {
        name: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("template {name} was written by a newer lightwhale (template schema {found}; this one reads up to {TEMPLATE_SCHEMA}): upgrade lightwhale")]
    Newer { name: String, found: u32 },
}

/// A template name: what is safe as one path component and in an annotation.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a template name: 1 to 63 of a-z A-Z 0-9 - _ . starting with a letter or digit"
        ))
    }
}

pub fn template_dir(root: &Path, name: &str) -> PathBuf {
    root.join(name)
}

/// Reads the template `name` under `root`.
pub fn read_template(root: &Path, name: &str) -> Result<TemplateMeta, TemplateReadError> {
    let path = template_dir(root, name).join("meta.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TemplateReadError::Missing {
                name: name.to_string(),
                dir: root.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(TemplateReadError::Io {
                name: name.to_string(),
                path,
                source,
            })
        }
    };
    let meta: TemplateMeta =
        serde_json::from_slice(&bytes).map_err(|source| TemplateReadError::Json {
            name: name.to_string(),
            path: path.clone(),
            source,
        })?;
    if meta.schema > TEMPLATE_SCHEMA {
        return Err(TemplateReadError::Newer {
            name: name.to_string(),
            found: meta.schema,
        });
    }
    Ok(meta)
}

/// The templates under `root`, by name (a directory being written has a dot-name and is
/// not listed).
pub fn list_templates(root: &Path) -> Vec<Result<TemplateMeta, TemplateReadError>> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| check_name(n).is_ok())
        .collect();
    names.sort();
    names.iter().map(|n| read_template(root, n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["counter", "jvm-17.warm", "a", "A_1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".x", "-x", "a/b", "..", "a b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_mismatch_is_named() {
        let t = TemplateFit {
            args: vec!["python3".into(), "-c".into(), "x".into()],
            env: vec!["PORT=8080".into()],
            mounts: vec!["/proc".into()],
            ..Default::default()
        };
        assert_eq!(t.mismatch(&t.clone()), None);
        let mut o = t.clone();
        o.env.push("MODE=b".into());
        assert!(
            t.mismatch(&o).is_some_and(|m| m.contains("MODE=b")),
            "{o:?}"
        );
        let mut o = t.clone();
        o.image_layers = vec!["/l/1".into()];
        assert_eq!(
            t.mismatch(&o),
            None,
            "a template without layers leaves the image be"
        );
        let with_layers = TemplateFit {
            image_layers: vec!["/l/2".into()],
            ..t.clone()
        };
        assert!(with_layers
            .mismatch(&o)
            .is_some_and(|m| m.contains("image")));
        let mut o = t.clone();
        o.mounts.push("/data".into());
        assert!(t.mismatch(&o).is_some_and(|m| m.contains("/data")));
    }

    #[test]
    fn a_missing_template_says_how_to_make_one() {
        let dir = std::env::temp_dir().join(format!("lw-tpl-{}", std::process::id()));
        let e = read_template(&dir, "nope").expect_err("missing");
        assert!(
            e.to_string().contains("lightwhale template create nope"),
            "{e}"
        );
        assert!(list_templates(&dir).is_empty());
    }
}
