//! `lightwhale template ls|rm|inspect`: the node's templates, read from their directory
//! (`template create` goes through the container's shim, which takes the checkpoint).

use std::path::Path;

use anyhow::{bail, Context, Result};
use lightwhale_status::template::{check_name, list_templates, read_template, template_dir};
use lightwhale_status::TemplateMeta;

use crate::store::Entry;
use crate::view;

/// One line per template: name, source, age, sizes.
pub fn table(dir: &Path, now_ms: u64) -> (String, Vec<String>) {
    let mut rows = vec![[
        "NAME".to_string(),
        "FROM".to_string(),
        "CREATED".to_string(),
        "CHECKPOINT".to_string(),
        "IMAGES".to_string(),
        "FS CHANGES".to_string(),
    ]];
    let mut warnings = Vec::new();
    for t in list_templates(dir) {
        match t {
            Ok(m) => rows.push(row(&m, now_ms)),
            Err(e) => warnings.push(e.to_string()),
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    (out, warnings)
}

fn row(m: &TemplateMeta, now_ms: u64) -> [String; 6] {
    let from = match &m.source_name {
        Some(n) => view::clean(n),
        None => view::clean(view::short_id(&m.source_id)),
    };
    [
        view::clean(&m.name),
        from,
        format!("{} ago", view::age(m.created_unix_ms, now_ms)),
        format!("{:.0} ms", m.checkpoint_ms),
        view::mib(Some(m.images_bytes)),
        view::mib(m.fs_changes_bytes),
    ]
}

pub fn inspect(dir: &Path, name: &str) -> Result<TemplateMeta> {
    check_name(name).map_err(anyhow::Error::msg)?;
    Ok(read_template(dir, name)?)
}

/// Removes a template. Its clones run on: once their memory is back they do not read it;
/// while a post-copy clone's still comes from it, the removal is refused.
pub fn remove(dir: &Path, name: &str, live: &[Entry]) -> Result<()> {
    check_name(name).map_err(anyhow::Error::msg)?;
    let path = template_dir(dir, name);
    if !path.join("meta.json").exists() {
        bail!("no template {name} in {}", dir.display());
    }
    if let Some(e) = live.iter().find(|e| {
        e.status
            .template
            .as_ref()
            .is_some_and(|t| t.name == name && t.reads_images())
    }) {
        bail!(
            "clone {} still reads template {name} (its memory is coming back from it): try again in a few seconds",
            view::short_id(&e.id)
        );
    }
    // Out of sight first (a dot-name is never listed nor used), then removed.
    let gone = dir.join(format!(".{name}.removing.{}", std::process::id()));
    std::fs::rename(&path, &gone).with_context(|| format!("remove {}", path.display()))?;
    std::fs::remove_dir_all(&gone).with_context(|| format!("remove {}", gone.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str) {
        let d = template_dir(dir, name);
        std::fs::create_dir_all(d.join("images")).expect("mkdir");
        let m = TemplateMeta {
            schema: 1,
            name: name.into(),
            created_unix_ms: 1_000,
            source_id: "0123456789abcdef0123".into(),
            images_bytes: 3 << 20,
            checkpoint_ms: 42.4,
            ..Default::default()
        };
        std::fs::write(d.join("meta.json"), serde_json::to_vec(&m).expect("json")).expect("write");
    }

    #[test]
    fn list_inspect_and_remove() {
        let d = tempfile::tempdir().expect("tempdir");
        write(d.path(), "warm");
        let (t, w) = table(d.path(), 61_000);
        assert!(w.is_empty(), "{w:?}");
        let line = t.lines().nth(1).expect("a row");
        assert!(line.starts_with("warm "), "{t}");
        assert!(
            line.contains("0123456789ab") && line.contains("42 ms") && line.contains("3.0"),
            "{t}"
        );
        assert_eq!(
            inspect(d.path(), "warm").expect("inspect").images_bytes,
            3 << 20
        );
        let mut status = lightwhale_status::ContainerStatus::new("moby", "c1", Default::default());
        status.template = Some(lightwhale_status::TemplateUse {
            name: "warm".into(),
            restored: true,
            lazy: true,
            ..Default::default()
        });
        let mut clone = Entry {
            namespace: "moby".into(),
            id: "c1".into(),
            path: d.path().join("c1.json"),
            status,
        };
        let e = remove(d.path(), "warm", std::slice::from_ref(&clone)).expect_err("in use");
        assert!(e.to_string().contains("still reads template warm"), "{e}");
        if let Some(t) = clone.status.template.as_mut() {
            t.fill_ms = Some(80.0);
        }
        remove(d.path(), "warm", &[clone]).expect("rm");
        assert!(table(d.path(), 0).0.lines().count() == 1);
        let e = remove(d.path(), "warm", &[]).expect_err("gone");
        assert!(e.to_string().contains("no template warm"), "{e}");
        assert!(inspect(d.path(), "../x").is_err());
    }
}
