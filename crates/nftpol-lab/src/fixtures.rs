//! Small builders of namespaces, pods, policies and snapshots, for the
//! tests and benches of both crates, and for the synthetic clusters.
//!
//! Two forms of the same objects, one builder each:
//! - snapshot objects, what the compiler reads: [`mk_ns`]
//!   ([`NamespaceInfo`]), [`mk_pod`] and [`running_pod`] ([`PodInfo`],
//!   tweaked with [`PodExt`]), [`mk_policy`] ([`NetworkPolicy`], which
//!   the snapshot keeps as it is), [`snapshot`];
//! - API objects, what a client writes to an API server:
//!   [`namespace_object`], [`pod_object`], [`policy_object`], each made
//!   from the snapshot object it trims back to.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use nftpol::compiler::snapshot::{
    Labels, NamedPort, NamespaceInfo, ObjectKey, PodInfo, Protocol, Snapshot,
};
use serde_json::Value;
pub use serde_json::json;

/// True when a test that needs network namespaces can run; prints why not
/// otherwise (the test then returns: CI runs as root, so it runs there).
pub fn lab_ready(test: &str) -> bool {
    match crate::lab::unavailable() {
        None => true,
        Some(why) => {
            eprintln!("skipping {test}: needs root and nft/ip (network namespaces) [{why}]");
            false
        }
    }
}

// === Snapshot objects ===

/// Labels from `(key, value)` pairs.
pub fn labels<'a>(pairs: impl IntoIterator<Item = &'a (&'a str, &'a str)>) -> Labels {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `ns/name`.
pub fn key(s: &str) -> ObjectKey {
    ObjectKey::parse(s).unwrap_or_else(|| panic!("not a namespace/name key: {s:?}"))
}

/// A namespace (it gets its `kubernetes.io/metadata.name` label too).
pub fn mk_ns(name: &str, pairs: &[(&str, &str)]) -> NamespaceInfo {
    NamespaceInfo::new(name, labels(pairs))
}

/// A running pod with one IP. Chain [`PodExt`] methods for the rest.
pub fn mk_pod(ns: &str, name: &str, node: &str, ip: &str, pairs: &[(&str, &str)]) -> PodInfo {
    running_pod(
        ObjectKey::new(ns, name),
        node,
        vec![parse_ip(ip)],
        labels(pairs),
    )
}

/// A running pod `key` on `node` with these addresses and labels, no
/// named port: [`mk_pod`] from parts already parsed (the synthetic
/// clusters make 100k of them).
pub fn running_pod(
    key: ObjectKey,
    node: impl Into<Arc<str>>,
    ips: Vec<IpAddr>,
    labels: Labels,
) -> PodInfo {
    PodInfo {
        key,
        labels: labels.into(),
        node: Some(node.into()),
        ips: ips.into(),
        host_network: false,
        deleting: false,
        created: 0,
        phase: Some("Running".into()),
        named_ports: Vec::new().into(),
    }
}

/// A named container port.
pub fn named_port(name: &str, protocol: Protocol, port: u16) -> NamedPort {
    NamedPort {
        name: name.to_string(),
        protocol,
        port,
    }
}

fn parse_ip(ip: &str) -> IpAddr {
    ip.parse().unwrap_or_else(|e| panic!("bad IP {ip:?}: {e}"))
}

/// Builder-style tweaks of a [`PodInfo`].
pub trait PodExt: Sized {
    /// Adds a named container port.
    fn named_port(self, name: &str, protocol: Protocol, port: u16) -> Self;
    /// Adds another address (e.g. the IPv6 one of a dual-stack pod).
    fn extra_ip(self, ip: &str) -> Self;
    /// Marks the pod as using the host's network.
    fn host_network(self) -> Self;
    /// Sets `status.phase`.
    fn phase(self, phase: &str) -> Self;
    /// Removes every address (a pod not yet started).
    fn no_ip(self) -> Self;
    /// Sets `metadata.creationTimestamp` (seconds since the Unix epoch).
    fn created(self, seconds: u32) -> Self;
    /// Sets `metadata.deletionTimestamp`: the pod is being deleted.
    fn deleting(self) -> Self;
}

impl PodExt for PodInfo {
    fn named_port(mut self, name: &str, protocol: Protocol, port: u16) -> Self {
        let mut ports = self.named_ports.to_vec();
        ports.push(named_port(name, protocol, port));
        self.named_ports = ports.into();
        self
    }

    fn extra_ip(mut self, ip: &str) -> Self {
        self.ips.push(parse_ip(ip));
        self
    }

    fn host_network(mut self) -> Self {
        self.host_network = true;
        self
    }

    fn phase(mut self, phase: &str) -> Self {
        self.phase = Some(phase.into());
        self
    }

    fn no_ip(mut self) -> Self {
        self.ips.clear();
        self
    }

    fn created(mut self, seconds: u32) -> Self {
        self.created = seconds;
        self
    }

    fn deleting(mut self) -> Self {
        self.deleting = true;
        self
    }
}

// === Policies (the snapshot keeps them as API objects) ===

/// A NetworkPolicy from its full JSON (or YAML-shaped `json!`) form.
pub fn policy(value: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(value).unwrap_or_else(|e| panic!("not a NetworkPolicy: {e}"))
}

/// A NetworkPolicy `ns/name` with the given `spec`.
pub fn mk_policy(ns: &str, name: &str, spec: serde_json::Value) -> NetworkPolicy {
    policy(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "namespace": ns, "name": name },
        "spec": spec,
    }))
}

/// A snapshot of the given objects.
pub fn snapshot(
    namespaces: impl IntoIterator<Item = NamespaceInfo>,
    pods: impl IntoIterator<Item = PodInfo>,
    policies: impl IntoIterator<Item = NetworkPolicy>,
) -> Snapshot {
    let mut snap = Snapshot::default();
    namespaces.into_iter().for_each(|ns| snap.add_namespace(ns));
    pods.into_iter().for_each(|p| snap.add_pod(p));
    policies.into_iter().for_each(|p| snap.add_policy(p));
    snap
}

// === API objects ===

/// A Namespace object with the snapshot's labels.
pub fn namespace_object(ns: &NamespaceInfo) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": ns.name, "labels": ns.labels },
    })
}

/// A Pod object that [`PodInfo::from_pod`] trims back to `pod`: labels,
/// `spec.nodeName`, `hostNetwork`, one container carrying the named ports,
/// `status.phase`, `podIP` and `podIPs`. It also has what a Deployment's pod
/// usually carries besides (owner reference, resources, conditions), so that
/// lists and watch events are about the size of a real pod's (without
/// managed fields).
pub fn pod_object(pod: &PodInfo) -> Value {
    let app = pod.labels.get("app").unwrap_or("main");
    let hash = pod.labels.get("pod-template-hash").unwrap_or("0");
    let ports: Vec<Value> = pod
        .named_ports
        .iter()
        .map(|p| json!({ "name": p.name, "containerPort": p.port, "protocol": p.protocol.to_string() }))
        .collect();
    let mut container = json!({
        "name": app,
        "image": format!("registry.example.com/{app}:1.0.{hash}"),
        "imagePullPolicy": "IfNotPresent",
        "resources": {
            "requests": { "cpu": "100m", "memory": "128Mi" },
            "limits": { "memory": "256Mi" },
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    });
    if !ports.is_empty() {
        container["ports"] = Value::Array(ports);
    }
    let mut spec = json!({
        "containers": [container],
        "restartPolicy": "Always",
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "schedulerName": "default-scheduler",
        "terminationGracePeriodSeconds": 30,
    });
    if let Some(node) = &pod.node {
        spec["nodeName"] = json!(node.as_ref());
    }
    if pod.host_network {
        spec["hostNetwork"] = json!(true);
    }
    let mut status = json!({
        "conditions": [
            { "type": "Ready", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z" },
        ],
        "startTime": "2025-01-01T00:00:00Z",
        "qosClass": "Burstable",
    });
    if let Some(phase) = &pod.phase {
        status["phase"] = json!(phase.as_ref());
    }
    if let Some(first) = pod.ips.first() {
        status["podIP"] = json!(first.to_string());
        status["podIPs"] = pod
            .ips
            .iter()
            .map(|ip| json!({ "ip": ip.to_string() }))
            .collect();
    }
    let base = pod
        .key
        .name
        .rsplit_once('-')
        .map_or(pod.key.name.as_str(), |(head, _)| head);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.key.name,
            "namespace": &*pod.key.namespace,
            "labels": &pod.labels,
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": base,
                "uid": "00000000-0000-4000-8000-000000000000",
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
        "status": status,
    })
}

/// A NetworkPolicy object (apiVersion and kind set).
pub fn policy_object(policy: &NetworkPolicy) -> Value {
    let mut v = serde_json::to_value(policy).expect("policies serialize");
    v["apiVersion"] = json!("networking.k8s.io/v1");
    v["kind"] = json!("NetworkPolicy");
    v
}

// === The repository ===

/// A path in the repository (the workspace root): `examples/`,
/// `conformance/`, `deploy/`.
pub fn repo_path(relative: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}
