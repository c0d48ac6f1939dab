//! The fixed cluster of the case format: namespaces x, y, z; pods a, b, c
//! in each; `a` and `c` on node 1, `b` on node 2; every pod serving ports
//! 80 and 81 over TCP, UDP and SCTP, named `serve-<port>-<proto>`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde_json::json;

use crate::lab::Port;
use nftpol::compiler::Protocol;

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const NODES: [&str; 2] = ["node-1", "node-2"];
pub const PORTS: [u16; 2] = [80, 81];
pub const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];
/// The label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `ns/pod` of every pod, in model order.
pub fn pod_keys() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

/// The node a pod runs on (0: node 1).
pub fn node_of(pod: &str) -> usize {
    usize::from(pod == "b")
}

/// The address of `ns/pod`: node 1 holds x/a x/c y/a y/c z/a z/c as
/// 10.244.1.10–15, node 2 holds x/b y/b z/b as 10.244.2.10–12.
pub fn pod_ip(key: &str) -> Option<Ipv4Addr> {
    let (ns, pod) = key.split_once('/')?;
    let n = NAMESPACES.iter().position(|x| *x == ns)? as u8;
    let host = match pod {
        "a" => 10 + 2 * n,
        "c" => 11 + 2 * n,
        "b" => 10 + n,
        _ => return None,
    };
    Some(Ipv4Addr::new(10, 244, 1 + node_of(pod) as u8, host))
}

/// The default labels of a namespace (the case format's, plus the API
/// server's name label).
pub fn namespace_labels(ns: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("ns".to_string(), ns.to_string()),
        (NAMESPACE_NAME_LABEL.to_string(), ns.to_string()),
    ])
}

/// The default labels of a pod.
pub fn pod_labels(pod: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("pod".to_string(), pod.to_string())])
}

/// Every port a pod serves.
pub fn served_ports() -> Vec<Port> {
    PROTOCOLS
        .iter()
        .flat_map(|&proto| PORTS.iter().map(move |&port| Port { proto, port }))
        .collect()
}

/// The Namespace objects.
pub fn namespaces() -> Vec<Namespace> {
    NAMESPACES
        .iter()
        .map(|ns| {
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": namespace_labels(ns)},
            }))
            .expect("a valid Namespace")
        })
        .collect()
}

/// The Pod objects: node, running, one IPv4 address, named container ports.
pub fn pods() -> Vec<Pod> {
    let ports: Vec<_> = served_ports()
        .iter()
        .map(|p| {
            json!({
                "name": format!("serve-{}-{}", p.port, p.proto.keyword()),
                "containerPort": p.port,
                "protocol": p.proto.keyword().to_uppercase(),
            })
        })
        .collect();
    pod_keys()
        .iter()
        .map(|key| {
            let (ns, pod) = key.split_once('/').expect("model keys are ns/pod");
            let ip = pod_ip(key).expect("a model pod");
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": ns, "labels": pod_labels(pod)},
                "spec": {
                    "nodeName": NODES[node_of(pod)],
                    "containers": [{"name": "server", "image": "agnhost", "ports": ports}],
                },
                "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]},
            }))
            .expect("a valid Pod")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_on_the_pods_nodes() {
        let ips: Vec<_> = pod_keys().iter().map(|k| pod_ip(k).unwrap()).collect();
        let mut unique = ips.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 9);
        assert_eq!(pod_ip("y/b"), Some(Ipv4Addr::new(10, 244, 2, 11)));
        assert_eq!(pod_ip("z/c"), Some(Ipv4Addr::new(10, 244, 1, 15)));
        assert_eq!(pod_ip("x/d"), None);
    }

    #[test]
    fn pods_name_their_ports_as_the_format_says() {
        let pod = &pods()[0];
        let names: Vec<_> = pod.spec.as_ref().unwrap().containers[0]
            .ports
            .iter()
            .flatten()
            .map(|p| p.name.clone().unwrap())
            .collect();
        assert!(names.contains(&"serve-80-tcp".to_string()));
        assert!(names.contains(&"serve-81-sctp".to_string()));
        assert_eq!(names.len(), 6);
    }
}
