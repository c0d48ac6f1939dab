//! Reads cluster objects from YAML (or JSON) files for the offline commands:
//! multi-document files, directories, and `List` objects as
//! `kubectl get -o yaml` writes them. Later objects replace earlier ones
//! with the same namespace/name, as `kubectl apply` would.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::Value;

use crate::compiler::{NamespaceInfo, ObjectKey, PodInfo, Snapshot, policy_key};

/// A file that cannot be read as cluster objects.
#[derive(Debug, thiserror::Error)]
pub struct LoadError {
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// Objects read so far, keyed so that later ones replace earlier ones.
#[derive(Default)]
struct Objects {
    namespaces: BTreeMap<String, NamespaceInfo>,
    pods: BTreeMap<ObjectKey, PodInfo>,
    policies: BTreeMap<ObjectKey, NetworkPolicy>,
}

/// How Kubernetes YAML is read: YAML 1.2 booleans only, so that `y`, `n`,
/// `on` or `no` stay strings (a namespace called `y`), as kubectl reads them.
pub fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true }
}

/// Reads every path (files, or directories of `*.yaml`, `*.yml`, `*.json`,
/// recursively, in name order) into one snapshot.
pub fn load_paths(paths: &[PathBuf]) -> Result<Snapshot, LoadError> {
    let mut objects = Objects::default();
    for path in paths {
        for file in expand(path)? {
            let text = std::fs::read_to_string(&file).map_err(|e| LoadError {
                path: file.clone(),
                line: None,
                message: e.to_string(),
            })?;
            load_str(&file, &text, &mut objects)?;
        }
    }
    let mut snap = Snapshot::default();
    for ns in objects.namespaces.into_values() {
        snap.add_namespace(ns);
    }
    for pod in objects.pods.into_values() {
        snap.add_pod(pod);
    }
    for np in objects.policies.into_values() {
        snap.add_policy(np);
    }
    Ok(snap)
}

/// Reads objects from YAML text (for tests and embedded defaults).
pub fn snapshot_from_str(name: &str, text: &str) -> Result<Snapshot, LoadError> {
    let mut objects = Objects::default();
    load_str(Path::new(name), text, &mut objects)?;
    let mut snap = Snapshot::default();
    objects
        .namespaces
        .into_values()
        .for_each(|n| snap.add_namespace(n));
    objects.pods.into_values().for_each(|p| snap.add_pod(p));
    objects
        .policies
        .into_values()
        .for_each(|p| snap.add_policy(p));
    Ok(snap)
}

fn expand(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let err = |e: std::io::Error| LoadError {
        path: path.to_path_buf(),
        line: None,
        message: e.to_string(),
    };
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(err)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    entries.sort();
    let mut out = Vec::new();
    for p in entries {
        if p.is_dir() {
            out.extend(expand(&p)?);
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(p);
        }
    }
    Ok(out)
}

/// 1-based first line of each YAML document in `text`.
fn document_lines(text: &str) -> Vec<usize> {
    let mut starts = vec![1];
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("---") && (line.len() == 3 || line[3..].starts_with([' ', '\t'])) {
            if i == 0 {
                starts[0] = 2;
            } else {
                starts.push(i + 2);
            }
        }
    }
    starts
}

fn load_str(path: &Path, text: &str, out: &mut Objects) -> Result<(), LoadError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple_with_options(text, yaml_options()).map_err(|e| LoadError {
            path: path.to_path_buf(),
            line: None,
            message: format!("not valid YAML: {e}"),
        })?;
    // Empty documents are dropped by the parser; the line is then a best guess.
    let lines = document_lines(text);
    for (i, doc) in docs.into_iter().enumerate() {
        let line = lines.get(i).copied();
        add_object(doc, out).map_err(|message| LoadError {
            path: path.to_path_buf(),
            line,
            message,
        })?;
    }
    Ok(())
}

fn add_object(doc: Value, out: &mut Objects) -> Result<(), String> {
    if doc.is_null() {
        return Ok(());
    }
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("object without a kind")?
        .to_string();
    let what = |e: serde_json::Error| format!("cannot read {kind}: {e}");
    match kind.as_str() {
        "List" | "NamespaceList" | "PodList" | "NetworkPolicyList" => {
            let items = doc.get("items").and_then(Value::as_array).cloned();
            for (i, item) in items.into_iter().flatten().enumerate() {
                add_object(item, out).map_err(|e| format!("items[{i}]: {e}"))?;
            }
        }
        "Namespace" => {
            let ns: Namespace = serde_json::from_value(doc).map_err(what)?;
            let info = NamespaceInfo::from_namespace(&ns);
            if info.name.is_empty() {
                return Err("Namespace without metadata.name".into());
            }
            out.namespaces.insert(info.name.clone(), info);
        }
        "Pod" => {
            let pod: Pod = serde_json::from_value(doc).map_err(what)?;
            let info = PodInfo::from_pod(&pod);
            if info.key.name.is_empty() {
                return Err("Pod without metadata.name".into());
            }
            out.pods.insert(info.key.clone(), info);
        }
        "NetworkPolicy" => {
            let np: NetworkPolicy = serde_json::from_value(doc).map_err(what)?;
            out.policies.insert(policy_key(&np), np);
        }
        other => tracing::debug!(
            kind = other,
            "ignoring object of a kind nftpol does not read"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_numbered_from_their_separator() {
        assert_eq!(document_lines("a: 1\n---\nb: 2\n--- \nc: 3\n"), [1, 3, 5]);
        assert_eq!(document_lines("---\na: 1\n"), [2]);
    }

    #[test]
    fn yaml_1_1_booleans_stay_strings() {
        let snap = snapshot_from_str(
            "y.yaml",
            "kind: Namespace\nmetadata: {name: y, labels: {team: no}}\n---\nkind: Pod\nmetadata: {name: n, namespace: y, labels: {on: off}}\n",
        )
        .unwrap();
        assert_eq!(snap.namespaces["y"].labels["team"], "no");
        assert_eq!(&*snap.pods[0].key.namespace, "y");
        assert_eq!(snap.pods[0].labels.get("on"), Some("off"));
    }

    #[test]
    fn bad_yaml_names_the_file_and_line() {
        let err = snapshot_from_str("bad.yaml", "kind: Pod\nmetadata: {name: [\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("bad.yaml"), "{text}");
        assert!(text.contains("line") || text.contains(":2"), "{text}");
    }

    #[test]
    fn a_typed_error_names_the_document_line() {
        let err = snapshot_from_str(
            "c.yaml",
            "kind: Namespace\nmetadata: {name: x}\n---\nkind: Pod\nmetadata: {name: 3}\nspec: 7\n",
        )
        .unwrap_err();
        assert_eq!(err.line, Some(4), "{err}");
        assert!(err.message.contains("Pod"), "{err}");
    }

    #[test]
    fn lists_and_later_objects_win() {
        let snap = snapshot_from_str(
            "l.yaml",
            "kind: List\nitems:\n- {kind: Namespace, metadata: {name: x, labels: {a: b}}}\n\
             ---\nkind: Namespace\nmetadata: {name: x, labels: {a: c}}\n",
        )
        .unwrap();
        assert_eq!(snap.namespaces["x"].labels["a"], "c");
        assert_eq!(
            snap.namespaces["x"].labels["kubernetes.io/metadata.name"],
            "x"
        );
    }
}
