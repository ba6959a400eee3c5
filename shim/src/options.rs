//! Runtime options sent by containerd with Create and Checkpoint: containerd's runc
//! options types, checked by type name before they are decoded.

use std::path::{Path, PathBuf};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::{CheckpointOptions, Options};

/// Where the shim keeps its runtime state (runc root, pinned network namespaces, console
/// sockets). On tmpfs: none of it must survive a reboot.
pub const STATE_DIR: &str = "/run/lightwhale";

const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
const CHECKPOINT_OPTIONS: &str = "containerd.runc.v1.CheckpointOptions";

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error(
        "unsupported runtime options type {0:?}: io.containerd.lightwhale.v2 accepts {RUNC_OPTIONS} (or none)"
    )]
    UnknownType(String),
    #[error("runtime options of type {0} do not decode: {1}")]
    Decode(&'static str, String),
}

fn type_name(url: &str) -> &str {
    // Any type URLs may carry a host prefix ("type.googleapis.com/...").
    url.rsplit('/').next().unwrap_or(url)
}

/// Decodes Create's runtime options, checking the type first: an options blob meant for
/// another runtime is an error, never silently misread as runc options.
pub fn runc_options(any: Option<&Any>) -> Result<Options, OptionsError> {
    let Some(any) = any else {
        return Ok(Options::default());
    };
    if any.type_url.is_empty() && any.value.is_empty() {
        return Ok(Options::default());
    }
    if type_name(&any.type_url) != RUNC_OPTIONS {
        return Err(OptionsError::UnknownType(any.type_url.clone()));
    }
    Options::parse_from_bytes(&any.value)
        .map_err(|e| OptionsError::Decode(RUNC_OPTIONS, e.to_string()))
}

pub fn checkpoint_options(any: Option<&Any>) -> Result<CheckpointOptions, OptionsError> {
    let Some(any) = any else {
        return Ok(CheckpointOptions::default());
    };
    if any.type_url.is_empty() && any.value.is_empty() {
        return Ok(CheckpointOptions::default());
    }
    if type_name(&any.type_url) != CHECKPOINT_OPTIONS {
        return Err(OptionsError::UnknownType(any.type_url.clone()));
    }
    CheckpointOptions::parse_from_bytes(&any.value)
        .map_err(|e| OptionsError::Decode(CHECKPOINT_OPTIONS, e.to_string()))
}

pub fn runc_root(opts: &Options, namespace: &str) -> PathBuf {
    if opts.root.is_empty() {
        Path::new(STATE_DIR).join("runc").join(namespace)
    } else {
        Path::new(&opts.root).join(namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_type_is_checked() {
        assert!(runc_options(None).is_ok());
        let empty = Any::new();
        assert!(runc_options(Some(&empty)).is_ok());

        let mut o = Options::new();
        o.binary_name = "runc".into();
        let good = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: o.write_to_bytes().unwrap_or_default(),
            ..Default::default()
        };
        assert_eq!(
            runc_options(Some(&good))
                .map(|o| o.binary_name)
                .ok()
                .as_deref(),
            Some("runc")
        );

        let prefixed = Any {
            type_url: "type.googleapis.com/containerd.runc.v1.Options".into(),
            ..good.clone()
        };
        assert!(runc_options(Some(&prefixed)).is_ok());

        let foreign = Any {
            type_url: "io.containerd.runhcs.v1.Options".into(),
            ..good
        };
        let err = runc_options(Some(&foreign))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unsupported runtime options type"), "{err}");

        let garbage = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![0xff, 0xff, 0xff],
            ..Default::default()
        };
        assert!(runc_options(Some(&garbage)).is_err());
    }
}
