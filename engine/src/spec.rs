//! The shim's edits to a bundle's `config.json`.
//!
//! The document is kept as JSON, not as `oci_spec::runtime::Spec`: a round trip through
//! typed structs would drop fields the typed model does not know, and runc must see the
//! client's spec exactly as it was written, changed only where the shim means to.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::{Error, Result};

pub struct BundleSpec {
    path: PathBuf,
    doc: Value,
}

impl BundleSpec {
    pub fn load(bundle: &Path) -> Result<BundleSpec> {
        let path = bundle.join("config.json");
        let bytes = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        let doc: Value = serde_json::from_slice(&bytes).map_err(|source| Error::Spec {
            path: path.clone(),
            source,
        })?;
        if !doc.is_object() {
            return Err(Error::SpecNotObject { path });
        }
        // Typed parsing catches specs runc would reject anyway, with a clearer message.
        if let Err(source) = serde_json::from_value::<oci_spec::runtime::Spec>(doc.clone()) {
            return Err(Error::Spec { path, source });
        }
        Ok(BundleSpec { path, doc })
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.doc.get("annotations")?.get(key)?.as_str()
    }

    pub fn annotations(&self) -> Vec<(String, String)> {
        self.doc
            .get("annotations")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn set_annotation(&mut self, key: &str, value: &str) {
        let Some(root) = self.doc.as_object_mut() else {
            return;
        };
        let ann = root.entry("annotations").or_insert_with(|| json!({}));
        if let Some(m) = ann.as_object_mut() {
            m.insert(key.to_string(), Value::String(value.to_string()));
        }
    }

    pub fn terminal(&self) -> bool {
        self.doc
            .pointer("/process/terminal")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    fn namespaces(&self) -> impl Iterator<Item = &Value> {
        self.doc
            .pointer("/linux/namespaces")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    }

    pub fn has_namespace(&self, kind: &str) -> bool {
        self.namespaces()
            .any(|n| n.get("type").and_then(Value::as_str) == Some(kind))
    }

    /// True when the spec asks runc to create a private network namespace itself.
    pub fn network_ns_without_path(&self) -> bool {
        self.namespaces().any(|n| {
            n.get("type").and_then(Value::as_str) == Some("network")
                && n.get("path")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
        })
    }

    /// The network namespace the spec asks for: None for the host's (no entry), or the
    /// path it gives (empty when runc is to create one).
    pub fn network_ns(&self) -> Option<String> {
        self.namespaces()
            .find(|n| n.get("type").and_then(Value::as_str) == Some("network"))
            .map(|n| {
                n.get("path")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            })
    }

    pub fn set_network_ns_path(&mut self, netns: &Path) {
        let Some(list) = self
            .doc
            .pointer_mut("/linux/namespaces")
            .and_then(Value::as_array_mut)
        else {
            return;
        };
        for n in list.iter_mut() {
            if n.get("type").and_then(Value::as_str) == Some("network") {
                if let Some(o) = n.as_object_mut() {
                    o.insert("path".into(), Value::String(netns.display().to_string()));
                }
            }
        }
    }

    /// Writes the spec back atomically (a crash never leaves half a config.json).
    pub fn save(&self) -> Result<()> {
        let tmp = self.path.with_extension("json.lightwhale-tmp");
        let bytes = serde_json::to_vec(&self.doc).map_err(|e| Error::Json {
            what: "config.json",
            source: e,
        })?;
        std::fs::write(&tmp, bytes).map_err(|e| Error::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| Error::io("replace", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(doc: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.json"), doc).expect("write");
        dir
    }

    const SPEC: &str = r#"{"ociVersion":"1.0.2","process":{"terminal":true,"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0}},
        "root":{"path":"rootfs"},"annotations":{"a":"b"},"x-unknown":{"kept":1},
        "linux":{"namespaces":[{"type":"pid"},{"type":"network"},{"type":"mount"}]}}"#;

    #[test]
    fn network_namespace_gets_a_path_and_unknown_fields_survive() {
        let dir = bundle(SPEC);
        let mut spec = BundleSpec::load(dir.path()).expect("load");
        assert!(spec.terminal());
        assert!(spec.network_ns_without_path());
        spec.set_network_ns_path(Path::new("/run/lightwhale/netns/x"));
        spec.set_annotation("org.criu.config", "/etc/lightwhale/criu.conf");
        spec.save().expect("save");
        let again = BundleSpec::load(dir.path()).expect("reload");
        assert!(!again.network_ns_without_path());
        assert_eq!(again.annotation("a"), Some("b"));
        assert_eq!(
            again.annotation("org.criu.config"),
            Some("/etc/lightwhale/criu.conf")
        );
        let raw = std::fs::read_to_string(dir.path().join("config.json")).expect("read");
        assert!(
            raw.contains("x-unknown"),
            "unknown fields must be preserved"
        );
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = bundle("{not json");
        let e = BundleSpec::load(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("not a valid OCI spec"), "{e}");
        let missing = tempfile::tempdir().expect("tempdir");
        assert!(BundleSpec::load(missing.path()).is_err());
    }
}
