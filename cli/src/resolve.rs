//! Which container the user means by `ID` in `sleep`, `wake` and `inspect`.

use anyhow::{bail, Result};

use crate::store::Entry;
use crate::view::short_id;

/// Finds the one container `query` names among `all`, within namespace `ns` if given.
///
/// Tried in order, the first that matches anything wins:
/// 1. a full id;
/// 2. a name recorded in a status record (`status.name`);
/// 3. a unique id prefix;
/// 4. a Docker container name: `docker` maps it to a full id, which is then matched.
///
/// Docker comes last because it costs a request and the others are free; it is also asked
/// when the prefix is ambiguous, since the query may be a name that happens to be hex.
/// `docker` is a parameter so the tests need no Docker.
pub fn resolve<'a>(
    all: &'a [Entry],
    query: &str,
    ns: Option<&str>,
    docker: impl FnOnce(&str) -> Option<String>,
) -> Result<&'a Entry> {
    if query.is_empty() {
        bail!("an empty ID matches nothing");
    }
    let scope: Vec<&Entry> = all
        .iter()
        .filter(|e| ns.is_none_or(|n| n == e.namespace))
        .collect();
    let matching = |pred: &dyn Fn(&Entry) -> bool| -> Vec<&'a Entry> {
        scope.iter().copied().filter(|e| pred(e)).collect()
    };

    let exact = matching(&|e| e.id == query);
    if !exact.is_empty() {
        return one(query, exact);
    }
    let named = matching(&|e| e.status.name.as_deref() == Some(query));
    if !named.is_empty() {
        return one(query, named);
    }
    let prefixed = matching(&|e| e.id.starts_with(query));
    if prefixed.len() == 1 {
        return one(query, prefixed);
    }
    if let Some(id) = docker(query) {
        let by_docker = matching(&|e| e.id == id);
        if !by_docker.is_empty() {
            return one(query, by_docker);
        }
    }
    if !prefixed.is_empty() {
        return one(query, prefixed);
    }
    match ns {
        Some(ns) => bail!("no lightwhale container in namespace {ns:?} matches {query:?}"),
        None => bail!("no lightwhale container matches {query:?}"),
    }
}

/// The single entry of `found` (never empty), or an error that lists the candidates.
fn one<'a>(query: &str, found: Vec<&'a Entry>) -> Result<&'a Entry> {
    match found.as_slice() {
        [one] => Ok(one),
        many => bail!(
            "{query:?} is ambiguous: it matches {}; give more of the ID, or -n NAMESPACE",
            many.iter()
                .map(|e| format!("{}/{}", e.namespace, short_id(&e.id)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lightwhale_status::ContainerStatus;
    use std::path::PathBuf;

    fn e(ns: &str, id: &str, name: Option<&str>) -> Entry {
        Entry {
            namespace: ns.into(),
            id: id.into(),
            path: PathBuf::from(format!("/nowhere/{ns}/{id}.json")),
            status: ContainerStatus {
                name: name.map(str::to_string),
                ..ContainerStatus::default()
            },
        }
    }

    fn no_docker(_: &str) -> Option<String> {
        None
    }

    fn all() -> Vec<Entry> {
        vec![
            e("moby", "abc123", None),
            e("moby", "abd999", None),
            e("default", "zzz", None),
            e("k8s.io", "f00d", Some("shop/web/nginx")),
            e("moby", "same", None),
            e("default", "same", None),
        ]
    }

    fn id_of(r: Result<&Entry>) -> Option<String> {
        r.ok().map(|e| format!("{}/{}", e.namespace, e.id))
    }

    #[test]
    fn full_ids_and_unique_prefixes_resolve() {
        let all = all();
        assert_eq!(
            id_of(resolve(&all, "abc", None, no_docker)).as_deref(),
            Some("moby/abc123")
        );
        assert_eq!(
            id_of(resolve(&all, "abc123", None, no_docker)).as_deref(),
            Some("moby/abc123")
        );
        assert!(resolve(&all, "", None, no_docker).is_err());
        assert!(resolve(&all, "nothing", None, no_docker).is_err());
    }

    #[test]
    fn ambiguity_lists_the_candidates() {
        let all = all();
        let msg = resolve(&all, "ab", None, no_docker)
            .expect_err("ambiguous")
            .to_string();
        assert!(msg.contains("ambiguous"), "{msg}");
        assert!(
            msg.contains("moby/abc123") && msg.contains("moby/abd999"),
            "{msg}"
        );
        let msg = resolve(&all, "same", None, no_docker)
            .expect_err("same id in two namespaces")
            .to_string();
        assert!(
            msg.contains("default/same") && msg.contains("moby/same"),
            "{msg}"
        );
    }

    #[test]
    fn the_namespace_narrows_the_search() {
        let all = all();
        assert!(resolve(&all, "zzz", Some("moby"), no_docker).is_err());
        assert_eq!(
            id_of(resolve(&all, "zzz", Some("default"), no_docker)).as_deref(),
            Some("default/zzz")
        );
        assert_eq!(
            id_of(resolve(&all, "same", Some("moby"), no_docker)).as_deref(),
            Some("moby/same")
        );
    }

    #[test]
    fn recorded_names_resolve() {
        let all = all();
        assert_eq!(
            id_of(resolve(&all, "shop/web/nginx", None, no_docker)).as_deref(),
            Some("k8s.io/f00d")
        );
        assert!(resolve(&all, "shop/web/nginx", Some("moby"), no_docker).is_err());
    }

    #[test]
    fn docker_names_resolve_through_the_lookup() {
        let all = all();
        let docker = |q: &str| (q == "web").then(|| "abd999".to_string());
        assert_eq!(
            id_of(resolve(&all, "web", None, docker)).as_deref(),
            Some("moby/abd999")
        );
        // Docker knows the name but the container is not lightwhale's: no match.
        let other = |_: &str| Some("not-ours".to_string());
        let msg = resolve(&all, "web", None, other)
            .expect_err("not ours")
            .to_string();
        assert!(msg.contains("no lightwhale container matches"), "{msg}");
        // An ambiguous prefix that Docker knows as a name is that container.
        let named_ab = |q: &str| (q == "ab").then(|| "abc123".to_string());
        assert_eq!(
            id_of(resolve(&all, "ab", None, named_ab)).as_deref(),
            Some("moby/abc123")
        );
    }

    #[test]
    fn docker_is_not_asked_when_the_id_is_known() {
        let all = all();
        let panicky = |_: &str| -> Option<String> { panic!("docker asked for a known id") };
        assert!(resolve(&all, "abc", None, panicky).is_ok());
    }

    #[test]
    fn odd_queries_do_not_panic() {
        let all = vec![e("moby", "ééé", None), e("moby", "日本語", None)];
        assert_eq!(
            id_of(resolve(&all, "é", None, no_docker)).as_deref(),
            Some("moby/ééé")
        );
        for q in ["\u{0}", "日", "\u{301}", "../..", "%2F"] {
            let _ = resolve(&all, q, None, no_docker);
        }
    }
}
