//! The resource types the server knows, and how each is stored.

use serde_json::{Map, Value};

/// One served resource (a group/version/plural), e.g. `networking.k8s.io/v1 networkpolicies`.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Serves a `status` subresource (and main-resource writes keep the old status).
    pub status_subresource: bool,
    /// `metadata.generation` is set, and bumped when `spec` changes.
    pub generation: bool,
    /// The stored kind: resources with the same storage share objects
    /// (`events.k8s.io/v1` events are core events in another form).
    pub storage: &'static str,
}

impl ResourceType {
    /// `v1` or `networking.k8s.io/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods` or `networkpolicies.networking.k8s.io`, as error messages name it.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Pod` or `NetworkPolicy.networking.k8s.io`, as validation errors name it.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// Stored form → what clients of this resource see.
    pub fn to_external(&self, stored: &Value) -> Value {
        let mut v = if self.group == "events.k8s.io" {
            core_event_to_events_v1(stored)
        } else {
            stored.clone()
        };
        if let Some(m) = v.as_object_mut() {
            set_type_meta(m, &self.api_version(), self.kind);
        }
        v
    }

    /// What a client sent → the stored form (type meta of the storage kind).
    pub fn to_internal(&self, external: &Value) -> Value {
        let mut v = if self.group == "events.k8s.io" {
            events_v1_to_core_event(external)
        } else {
            external.clone()
        };
        let p = primary(self.storage);
        if let Some(m) = v.as_object_mut() {
            set_type_meta(m, &p.api_version(), p.kind);
        }
        v
    }
}

fn set_type_meta(m: &mut Map<String, Value>, api_version: &str, kind: &str) {
    // apiVersion and kind first, as the API server prints them.
    let rest = std::mem::take(m);
    m.insert("apiVersion".into(), Value::String(api_version.into()));
    m.insert("kind".into(), Value::String(kind.into()));
    for (k, v) in rest {
        if k != "apiVersion" && k != "kind" {
            m.insert(k, v);
        }
    }
}

const fn res(
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
) -> ResourceType {
    ResourceType {
        group,
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        short_names,
        status_subresource: false,
        generation: false,
        storage: plural,
    }
}

/// Every served resource.
pub static RESOURCES: &[ResourceType] = &[
    ResourceType {
        status_subresource: true,
        ..res("", "namespaces", "namespace", "Namespace", false, &["ns"])
    },
    ResourceType {
        status_subresource: true,
        generation: true,
        ..res("", "pods", "pod", "Pod", true, &["po"])
    },
    ResourceType {
        status_subresource: true,
        ..res("", "nodes", "node", "Node", false, &["no"])
    },
    res("", "events", "event", "Event", true, &["ev"]),
    ResourceType {
        generation: true,
        ..res(
            "networking.k8s.io",
            "networkpolicies",
            "networkpolicy",
            "NetworkPolicy",
            true,
            &["netpol"],
        )
    },
    ResourceType {
        storage: "events",
        ..res("events.k8s.io", "events", "event", "Event", true, &["ev"])
    },
];

/// Served API groups other than the core group, in discovery order.
pub const GROUPS: &[&str] = &["networking.k8s.io", "events.k8s.io"];

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn in_group_version<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static ResourceType> + 'a {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

/// The resource that owns a storage (its first, canonical form).
pub fn primary(storage: &str) -> &'static ResourceType {
    RESOURCES
        .iter()
        .find(|r| r.storage == storage)
        .expect("every storage has a resource")
}

pub fn namespaces() -> &'static ResourceType {
    primary("namespaces")
}

// events.k8s.io/v1 <-> core/v1 Event field names (the API server converts
// between them the same way; both are one stored object).
const EVENT_FIELD_MAP: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename_fields(v: &Value, from_events_v1: bool) -> Value {
    let Some(m) = v.as_object() else {
        return v.clone();
    };
    let mut out = Map::new();
    for (k, val) in m {
        let renamed = EVENT_FIELD_MAP.iter().find_map(|(ev1, core)| {
            if from_events_v1 {
                (k == ev1).then_some(*core)
            } else {
                (k == core).then_some(*ev1)
            }
        });
        out.insert(renamed.unwrap_or(k).to_string(), val.clone());
    }
    Value::Object(out)
}

fn core_event_to_events_v1(v: &Value) -> Value {
    let mut out = rename_fields(v, false);
    if let Some(m) = out.as_object_mut() {
        // events.k8s.io requires eventTime; old core events may only have timestamps.
        if m.get("eventTime").is_none_or(Value::is_null) {
            let t = m
                .get("deprecatedLastTimestamp")
                .or_else(|| m.get("deprecatedFirstTimestamp"))
                .cloned()
                .unwrap_or(Value::Null);
            if let Some(s) = t.as_str() {
                m.insert(
                    "eventTime".into(),
                    Value::String(s.replace('Z', ".000000Z")),
                );
            }
        }
    }
    out
}

fn events_v1_to_core_event(v: &Value) -> Value {
    rename_fields(v, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_round_trip() {
        let ev1 = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e"}, "note": "hi", "regarding": {"kind": "Pod"},
            "reportingController": "nftpol", "eventTime": "2025-01-01T00:00:00.000000Z"});
        let rt = find("events.k8s.io", "v1", "events").unwrap();
        let core = rt.to_internal(&ev1);
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["message"], "hi");
        assert_eq!(core["involvedObject"]["kind"], "Pod");
        assert_eq!(rt.to_external(&core), ev1);
    }
}
