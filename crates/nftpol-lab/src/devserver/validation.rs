//! Defaulting and validation, as the API server does them for the kinds served.

use std::sync::LazyLock;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use regex::Regex;
use serde_json::{Value, json};

use super::error::{ApiError, Cause};
use super::resources::ResourceType;
use nftpol::compiler::parse_policy;
use nftpol::compiler::snapshot::NAMESPACE_NAME_LABEL;

static DNS_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        .expect("valid regex")
});
static DNS_LABEL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").expect("valid regex"));

fn cause(reason: &str, field: impl Into<String>, message: impl Into<String>) -> Cause {
    Cause {
        reason: reason.into(),
        field: field.into(),
        message: message.into(),
    }
}

/// Checks `metadata.name` (DNS-1123 label for namespaces, subdomain otherwise).
pub fn validate_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    let (ok, what) = if rt.plural == "namespaces" {
        (
            name.len() <= 63 && DNS_LABEL.is_match(name),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
        )
    } else {
        (
            name.len() <= 253 && DNS_SUBDOMAIN.is_match(name),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        )
    };
    if name.is_empty() {
        return Err(ApiError::invalid(
            rt,
            name,
            vec![cause(
                "FieldValueRequired",
                "metadata.name",
                "Required value: name or generateName is required",
            )],
        ));
    }
    if !ok {
        return Err(ApiError::invalid(
            rt,
            name,
            vec![cause(
                "FieldValueInvalid",
                "metadata.name",
                format!("Invalid value: {name:?}: {what}"),
            )],
        ));
    }
    Ok(())
}

/// Fills in defaults, then validates. `obj` is in stored form with its name set.
pub fn default_and_validate(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    validate_name(rt, &name)?;
    if let Some(labels) = obj.pointer("/metadata/labels")
        && !labels.is_null()
        && !labels
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string))
    {
        return Err(ApiError::invalid(
            rt,
            &name,
            vec![cause(
                "FieldValueInvalid",
                "metadata.labels",
                "Invalid value: labels must be a map of strings",
            )],
        ));
    }
    match rt.storage {
        "namespaces" => {
            obj["metadata"]["labels"][NAMESPACE_NAME_LABEL] = json!(name);
            if obj.pointer("/status/phase").is_none() {
                obj["status"] = json!({"phase": "Active"});
            }
            Ok(())
        }
        "pods" => default_and_validate_pod(rt, &name, obj),
        "networkpolicies" => default_and_validate_policy(rt, &name, obj),
        _ => Ok(()),
    }
}

fn default_and_validate_pod(
    rt: &ResourceType,
    name: &str,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    for list in ["initContainers", "containers"] {
        let Some(containers) = obj
            .get_mut("spec")
            .and_then(|s| s.get_mut(list))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for (i, c) in containers.iter_mut().enumerate() {
            for field in ["name", "image"] {
                if c.get(field)
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    causes.push(cause(
                        "FieldValueRequired",
                        format!("spec.{list}[{i}].{field}"),
                        "Required value",
                    ));
                }
            }
            for p in c
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if p.get("protocol").is_none_or(Value::is_null) && p.is_object() {
                    p["protocol"] = json!("TCP");
                }
            }
        }
    }
    if obj
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        causes.push(cause(
            "FieldValueRequired",
            "spec.containers",
            "Required value",
        ));
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(rt, name, causes));
    }
    if obj.pointer("/status/phase").is_none() {
        if !obj.get("status").is_some_and(Value::is_object) {
            obj["status"] = json!({});
        }
        obj["status"]["phase"] = json!("Pending");
    }
    Ok(())
}

/// The API server's defaulting of a NetworkPolicy.
pub fn default_policy(obj: &mut Value) {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    if spec.get("podSelector").is_none_or(Value::is_null) {
        spec["podSelector"] = json!({});
    }
    if spec.get("policyTypes").is_none_or(Value::is_null) {
        let mut types = vec![json!("Ingress")];
        if spec
            .get("egress")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty())
        {
            types.push(json!("Egress"));
        }
        spec["policyTypes"] = Value::Array(types);
    }
    for dir in ["ingress", "egress"] {
        for rule in spec
            .get_mut(dir)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            for port in rule
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if port.is_object() && port.get("protocol").is_none_or(Value::is_null) {
                    port["protocol"] = json!("TCP");
                }
            }
        }
    }
}

fn default_and_validate_policy(
    rt: &ResourceType,
    name: &str,
    obj: &mut Value,
) -> Result<(), ApiError> {
    default_policy(obj);
    let np: NetworkPolicy = serde_json::from_value(obj.clone()).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"v1\" cannot be handled as a NetworkPolicy: {e}",
            rt.qualified_kind()
        ))
    })?;
    let mut diags = Vec::new();
    parse_policy(&np, &mut diags);
    if diags.is_empty() {
        return Ok(());
    }
    let causes = diags
        .into_iter()
        .map(|d| {
            // nftpol's messages end with what enforcement does ("; this rule
            // allows nothing"): the API server only says what is wrong.
            let what = d.message.split("; ").next().unwrap_or_default();
            cause(
                "FieldValueInvalid",
                d.field,
                format!("Invalid value: {what}"),
            )
        })
        .collect();
    Err(ApiError::invalid(rt, name, causes))
}

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    v: &Value,
) -> Result<Value, String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    Ok(serde_json::to_value(&t).expect("API types serialize"))
}

/// Removes (and lists) the fields of `input` that the typed round trip dropped.
fn prune_unknown(input: &mut Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(i), Value::Object(k)) => {
            i.retain(|key, val| {
                let sub = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match k.get(key) {
                    _ if val.is_null() => true,
                    None => {
                        out.push(sub);
                        false
                    }
                    Some(kv) => {
                        prune_unknown(val, kv, &sub, out);
                        true
                    }
                }
            });
        }
        (Value::Array(i), Value::Array(k)) => {
            for (n, (a, b)) in i.iter_mut().zip(k).enumerate() {
                prune_unknown(a, b, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes an object (client form) as its API type: a type error is a 400,
/// as from the API server. Removes the fields the type does not know, as
/// decoding on the API server drops them, and returns their paths (what
/// `fieldValidation=Strict|Warn` reports).
pub fn check_fields(rt: &ResourceType, v: &mut Value) -> Result<Vec<String>, ApiError> {
    use k8s_openapi::api::{core::v1 as core, events::v1 as events};
    let known = match (rt.group, rt.plural) {
        ("", "namespaces") => round_trip::<core::Namespace>(v),
        ("", "pods") => round_trip::<core::Pod>(v),
        ("", "nodes") => round_trip::<core::Node>(v),
        ("", "events") => round_trip::<core::Event>(v),
        ("events.k8s.io", "events") => round_trip::<events::Event>(v),
        ("networking.k8s.io", "networkpolicies") => round_trip::<NetworkPolicy>(v),
        _ => return Ok(Vec::new()),
    }
    .map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            rt.kind, rt.version, rt.kind
        ))
    })?;
    let mut out = Vec::new();
    prune_unknown(v, &known, "", &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devserver::resources::find;

    #[test]
    fn policy_defaults_and_bad_cidr() {
        let rt = find("networking.k8s.io", "v1", "networkpolicies").unwrap();
        let mut ok = json!({"metadata": {"name": "p", "namespace": "x"},
            "spec": {"egress": [{"ports": [{"port": 53}]}]}});
        default_and_validate(rt, &mut ok).unwrap();
        assert_eq!(ok["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(ok["spec"]["egress"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(ok["spec"]["podSelector"], json!({}));

        let mut bad = json!({"metadata": {"name": "p", "namespace": "x"},
            "spec": {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}});
        let e = default_and_validate(rt, &mut bad).unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(
            e.details.unwrap()["causes"][0]["field"],
            "spec.ingress[0].from[0].ipBlock.cidr"
        );
    }

    #[test]
    fn names() {
        let ns = find("", "v1", "namespaces").unwrap();
        assert!(validate_name(ns, "shop").is_ok());
        assert!(validate_name(ns, "a.b").is_err());
        let pods = find("", "v1", "pods").unwrap();
        assert!(validate_name(pods, "a.b").is_ok());
        assert!(validate_name(pods, "A").is_err());
    }
}
