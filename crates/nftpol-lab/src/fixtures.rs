//! Small builders of namespaces, pods, policies and snapshots, for the
//! tests and benches of both crates.

use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use nftpol::compiler::snapshot::{
    Labels, NamedPort, NamespaceInfo, ObjectKey, PodInfo, Protocol, Snapshot,
};
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

/// Labels from `(key, value)` pairs.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
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
    PodInfo {
        key: ObjectKey::new(ns, name),
        labels: labels(pairs).into(),
        node: Some(node.into()),
        ips: vec![parse_ip(ip)].into(),
        host_network: false,
        deleting: false,
        created: 0,
        phase: Some("Running".into()),
        named_ports: Vec::new().into(),
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
        ports.push(NamedPort {
            name: name.to_string(),
            protocol,
            port,
        });
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

/// A path in the repository (the workspace root): `examples/`,
/// `conformance/`, `deploy/`.
pub fn repo_path(relative: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}
