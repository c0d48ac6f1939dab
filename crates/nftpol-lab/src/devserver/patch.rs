//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic
//! merge patch as kubectl sends it, and server-side apply (YAML).
//!
//! The strategic merge patch knows the merge keys of the lists of the kinds
//! served (containers by name, ports by containerPort, conditions by type,
//! ...); every other list is replaced whole, as for a merge patch. The
//! directives kubectl emits (`$patch: replace|delete|merge`, `$retainKeys`,
//! `$setElementOrder/...`, `$deleteFromPrimitiveList/...`) are honoured and
//! never stored.

use serde_json::{Map, Value};

use super::error::ApiError;

/// The patch types, by request Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let mime = ct.split(';').next().unwrap_or_default().trim();
        match mime {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Parses a patch body (JSON; YAML for apply).
pub fn parse_body(pt: PatchType, body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the patch body is not UTF-8"))?;
    match pt {
        PatchType::Apply => serde_saphyr::from_str::<Value>(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}"))),
        _ => serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}"))),
    }
}

/// Applies a patch to a copy of `target`.
pub fn apply_patch(pt: PatchType, target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut doc = target.clone();
    match pt {
        PatchType::Merge => json_patch::merge(&mut doc, patch),
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut doc, &p).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
        }
        PatchType::Strategic | PatchType::Apply => {
            let Some(p) = patch.as_object() else {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be an object",
                ));
            };
            if !doc.is_object() {
                doc = Value::Object(Map::new());
            }
            let m = doc.as_object_mut().expect("object");
            if merge_map(m, p, "") {
                *m = Map::new();
            }
        }
    }
    Ok(doc)
}

/// How a list at a path merges.
enum ListStrategy {
    /// Replaced whole.
    Atomic,
    /// Elements are maps merged by this key.
    Key(&'static str),
    /// A set of scalars: patch values are added.
    Primitives,
}

/// Merge keys of the lists of Pods, Nodes, Namespaces, Events and
/// NetworkPolicies (from the API types' `patchMergeKey` tags).
fn list_strategy(path: &str) -> ListStrategy {
    const KEYED: &[(&str, &str)] = &[
        ("metadata.ownerReferences", "uid"),
        ("spec.containers", "name"),
        ("spec.initContainers", "name"),
        ("spec.ephemeralContainers", "name"),
        ("spec.volumes", "name"),
        ("spec.imagePullSecrets", "name"),
        ("spec.hostAliases", "ip"),
        ("spec.topologySpreadConstraints", "topologyKey"),
        ("spec.resourceClaims", "name"),
        ("spec.schedulingGates", "name"),
        ("status.conditions", "type"),
        ("status.podIPs", "ip"),
        ("status.hostIPs", "ip"),
        ("status.addresses", "type"),
    ];
    const CONTAINER_KEYED: &[(&str, &str)] = &[
        ("ports", "containerPort"),
        ("env", "name"),
        ("volumeMounts", "mountPath"),
        ("volumeDevices", "devicePath"),
        ("resizePolicy", "resourceName"),
    ];
    if let Some((_, k)) = KEYED.iter().find(|(p, _)| *p == path) {
        return ListStrategy::Key(k);
    }
    for list in [
        "spec.containers.",
        "spec.initContainers.",
        "spec.ephemeralContainers.",
    ] {
        if let Some(rest) = path.strip_prefix(list)
            && let Some((_, k)) = CONTAINER_KEYED.iter().find(|(p, _)| *p == rest)
        {
            return ListStrategy::Key(k);
        }
    }
    if matches!(path, "metadata.finalizers" | "spec.podCIDRs") {
        return ListStrategy::Primitives;
    }
    ListStrategy::Atomic
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn directive(m: &Map<String, Value>) -> Option<&str> {
    m.get("$patch").and_then(Value::as_str)
}

/// A patch value with every directive and null dropped (a new value).
fn clean(v: &Value, path: &str) -> Value {
    match v {
        Value::Object(p) => {
            let mut m = Map::new();
            merge_map(&mut m, p, path);
            Value::Object(m)
        }
        Value::Array(items) => {
            let mut out = Vec::new();
            merge_list(&mut out, items, path);
            Value::Array(out)
        }
        other => other.clone(),
    }
}

/// Merges `patch` into `orig`; returns true when the map is to be deleted
/// (`$patch: delete`).
fn merge_map(orig: &mut Map<String, Value>, patch: &Map<String, Value>, path: &str) -> bool {
    match directive(patch) {
        Some("delete") => return true,
        Some("replace") => {
            *orig = Map::new();
            let mut rest = patch.clone();
            rest.remove("$patch");
            merge_map(orig, &rest, path);
            return false;
        }
        _ => {}
    }
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        let sub = join(path, k);
        match (orig.get_mut(k), v) {
            (_, Value::Null) => {
                orig.remove(k);
            }
            (Some(Value::Object(o)), Value::Object(p)) => {
                if merge_map(o, p, &sub) {
                    orig.remove(k);
                }
            }
            (_, Value::Object(p)) => {
                if directive(p) == Some("delete") {
                    orig.remove(k);
                } else {
                    orig.insert(k.clone(), clean(v, &sub));
                }
            }
            (Some(Value::Array(o)), Value::Array(p)) => merge_list(o, p, &sub),
            (_, Value::Array(_)) => {
                orig.insert(k.clone(), clean(v, &sub));
            }
            (_, scalar) => {
                orig.insert(k.clone(), scalar.clone());
            }
        }
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/")
            && let (Some(Value::Array(list)), Some(del)) = (orig.get_mut(field), v.as_array())
        {
            list.retain(|x| !del.contains(x));
        }
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$setElementOrder/")
            && let Some(order) = v.as_array()
        {
            let key = match list_strategy(&join(path, field)) {
                ListStrategy::Key(key) => Some(key),
                _ => None,
            };
            if let Some(Value::Array(list)) = orig.get_mut(field) {
                let pos = |x: &Value| {
                    order
                        .iter()
                        .position(|o| match key {
                            Some(key) => o.get(key).is_some() && o.get(key) == x.get(key),
                            None => o == x,
                        })
                        .unwrap_or(usize::MAX)
                };
                list.sort_by_key(|x| pos(x));
            }
        }
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        orig.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k.as_str())));
    }
    false
}

fn merge_list(orig: &mut Vec<Value>, patch: &[Value], path: &str) {
    let replace = patch
        .iter()
        .any(|e| e.as_object().and_then(directive) == Some("replace"));
    let strategy = list_strategy(path);
    if replace || matches!(strategy, ListStrategy::Atomic) {
        let keep: Vec<Value> = patch
            .iter()
            .filter(|e| e.as_object().and_then(directive).is_none())
            .map(|e| clean(e, path))
            .collect();
        *orig = keep;
        return;
    }
    match strategy {
        ListStrategy::Atomic => unreachable!("handled above"),
        ListStrategy::Primitives => {
            for v in patch {
                if !orig.contains(v) {
                    orig.push(v.clone());
                }
            }
        }
        ListStrategy::Key(key) => {
            for e in patch {
                let Some(pm) = e.as_object() else {
                    orig.push(e.clone());
                    continue;
                };
                let id = pm.get(key);
                let found = orig.iter().position(|o| id.is_some() && o.get(key) == id);
                match (directive(pm), found) {
                    (Some("delete"), Some(i)) => {
                        orig.remove(i);
                    }
                    (Some("delete"), None) => {}
                    (_, Some(i)) => {
                        if let Value::Object(o) = &mut orig[i]
                            && merge_map(o, pm, path)
                        {
                            orig.remove(i);
                        }
                    }
                    (_, None) => orig.push(clean(e, path)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(target: Value, patch: Value) -> Value {
        apply_patch(PatchType::Strategic, &target, &patch).unwrap()
    }

    #[test]
    fn kubectl_label() {
        let pod = json!({"metadata": {"name": "a", "labels": {"app": "web"}}});
        let out = smp(
            pod,
            json!({"metadata": {"labels": {"tier": "x", "app": null}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"tier": "x"}));
    }

    #[test]
    fn keyed_lists_and_directives() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "image": "1", "ports": [{"containerPort": 80, "name": "http"}]},
            {"name": "b", "image": "2"}]}});
        let out = smp(
            pod.clone(),
            json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
                "containers": [{"name": "a", "image": "3"}]}}),
        );
        assert_eq!(out["spec"]["containers"][1]["image"], "3");
        assert_eq!(out["spec"]["containers"][1]["ports"][0]["name"], "http");
        assert_eq!(out["spec"]["containers"][0]["name"], "b");
        let out = smp(
            pod.clone(),
            json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}]}}),
        );
        assert_eq!(out["spec"]["containers"].as_array().unwrap().len(), 1);
        let out = smp(
            pod,
            json!({"spec": {"$retainKeys": ["containers"], "containers": [{"$patch": "replace"}, {"name": "c", "image": "4"}], "x": 1}}),
        );
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "c", "image": "4"}]}})
        );
    }

    #[test]
    fn atomic_lists_and_primitive_lists() {
        let np =
            json!({"spec": {"ingress": [{"from": []}, {}]}, "metadata": {"finalizers": ["a"]}});
        let out = smp(
            np,
            json!({"spec": {"ingress": [{"ports": [{"port": 1, "$x": null}]}]},
                "metadata": {"finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(out["spec"]["ingress"], json!([{"ports": [{"port": 1}]}]));
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn json_and_merge_patches() {
        let o = json!({"a": {"b": 1}, "l": [1, 2]});
        let out = apply_patch(
            PatchType::Merge,
            &o,
            &json!({"a": {"b": null, "c": 2}, "l": [3]}),
        )
        .unwrap();
        assert_eq!(out, json!({"a": {"c": 2}, "l": [3]}));
        let out = apply_patch(
            PatchType::Json,
            &o,
            &json!([{"op": "add", "path": "/l/-", "value": 9}, {"op": "remove", "path": "/a"}]),
        )
        .unwrap();
        assert_eq!(out, json!({"l": [1, 2, 9]}));
        let e = apply_patch(
            PatchType::Json,
            &o,
            &json!([{"op": "test", "path": "/a/b", "value": 2}]),
        )
        .unwrap_err();
        assert_eq!(e.code, 422);
    }
}
