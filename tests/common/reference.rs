//! A plain, slow reference evaluator for Kubernetes NetworkPolicy
//! (networking.k8s.io/v1), written straight from the API documentation.
//!
//! It shares no code with the compiler: from `nftpol` it uses only the
//! snapshot's data types and their accessors (`PodInfo::is_active`,
//! `Snapshot::namespace_labels`, `Snapshot::pod`). Label selectors and CIDRs
//! are matched by hand below. Everything is evaluated per question, by
//! walking every policy: no caching, no precomputation, no cleverness.
//!
//! Two flavours of the same question:
//! - [`allows`] works at pod level: an `ipBlock` peer matches a pod when ANY
//!   of the pod's addresses is in the block.
//! - [`allows_packet`] works at packet level: an `ipBlock` peer is matched
//!   against the one address the packet carries for that pod (what a
//!   packet filter can see). For single-stack pods both agree.

use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nftpol::compiler::snapshot::{Labels, ObjectKey, PodInfo, Protocol, Snapshot};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The spelling used in `spec.policyTypes`.
    fn policy_type(self) -> &'static str {
        match self {
            Self::Ingress => "Ingress",
            Self::Egress => "Egress",
        }
    }
}

/// The other end of a connection, as a rule's peer list sees it.
#[derive(Clone, Copy)]
enum Remote<'a> {
    /// A pod, with the addresses an `ipBlock` may match it by.
    Pod {
        pod: &'a PodInfo,
        addrs: &'a [IpAddr],
    },
    /// An address that belongs to no pod.
    Address(IpAddr),
}

/// May a new connection from pod `from` to pod `to`'s IP on `proto`/`port`
/// be established? Pod level: an `ipBlock` matches a pod by any of its IPs.
///
/// Panics when either pod is not in the snapshot.
pub fn allows(
    snap: &Snapshot,
    from: &ObjectKey,
    to: &ObjectKey,
    proto: Protocol,
    port: u16,
) -> bool {
    let src = pod(snap, from);
    let dst = pod(snap, to);
    connection_allowed(snap, src, &src.ips, dst, &dst.ips, proto, port)
}

/// Like [`allows`], for one packet from `src_ip` (an address of `from`) to
/// `dst_ip` (an address of `to`): `ipBlock` peers are matched against these
/// two addresses only.
///
/// Panics when either pod is not in the snapshot or does not own its address.
pub fn allows_packet(
    snap: &Snapshot,
    from: &ObjectKey,
    src_ip: IpAddr,
    to: &ObjectKey,
    dst_ip: IpAddr,
    proto: Protocol,
    port: u16,
) -> bool {
    let src = pod(snap, from);
    let dst = pod(snap, to);
    assert!(
        src.ips.contains(&src_ip),
        "{src_ip} is not an address of {from}"
    );
    assert!(
        dst.ips.contains(&dst_ip),
        "{dst_ip} is not an address of {to}"
    );
    connection_allowed(snap, src, &[src_ip], dst, &[dst_ip], proto, port)
}

/// May pod `from` open a connection to `to_ip`, an address that belongs to
/// no pod? Only the source's egress matters; pod and namespace selectors
/// never match such an address, `ipBlock`s do, named ports never do.
pub fn allows_ip(
    snap: &Snapshot,
    from: &ObjectKey,
    to_ip: IpAddr,
    proto: Protocol,
    port: u16,
) -> bool {
    let src = pod(snap, from);
    direction_allows(
        snap,
        src,
        Direction::Egress,
        Remote::Address(to_ip),
        None,
        proto,
        port,
    )
}

fn pod<'a>(snap: &'a Snapshot, key: &ObjectKey) -> &'a PodInfo {
    snap.pod(key)
        .unwrap_or_else(|| panic!("reference: no pod {key} in the snapshot"))
}

fn connection_allowed(
    snap: &Snapshot,
    src: &PodInfo,
    src_addrs: &[IpAddr],
    dst: &PodInfo,
    dst_addrs: &[IpAddr],
    proto: Protocol,
    port: u16,
) -> bool {
    // Named ports always resolve against the destination pod, in both
    // directions.
    let egress = direction_allows(
        snap,
        src,
        Direction::Egress,
        Remote::Pod {
            pod: dst,
            addrs: dst_addrs,
        },
        Some(dst),
        proto,
        port,
    );
    let ingress = direction_allows(
        snap,
        dst,
        Direction::Ingress,
        Remote::Pod {
            pod: src,
            addrs: src_addrs,
        },
        Some(dst),
        proto,
        port,
    );
    egress && ingress
}

/// Does `subject`'s policy for one direction let this connection through?
fn direction_allows(
    snap: &Snapshot,
    subject: &PodInfo,
    dir: Direction,
    remote: Remote<'_>,
    destination: Option<&PodInfo>,
    proto: Protocol,
    port: u16,
) -> bool {
    let empty = NetworkPolicySpec::default();
    let mut isolated = false;
    for policy in &snap.policies {
        if policy_namespace(policy) != &*subject.key.namespace {
            continue;
        }
        // An absent spec is an empty one: selects every pod, Ingress only,
        // no rules.
        let spec = policy.spec.as_ref().unwrap_or(&empty);
        if !has_policy_type(spec, dir) || !selects(spec, subject) {
            continue;
        }
        isolated = true;
        let ns = policy_namespace(policy);
        for (peers, ports) in rules(spec, dir) {
            let matching_peers: Vec<Option<&NetworkPolicyPeer>> = match peers {
                None | Some([]) => vec![None],
                Some(peers) => peers
                    .iter()
                    .filter(|p| peer_matches(snap, ns, p, remote))
                    .map(Some)
                    .collect(),
            };
            // The nftpol spec (issue #2): a named port never matches an
            // ipBlock destination, even one that covers a pod's address.
            let port_ok = |peer: Option<&NetworkPolicyPeer>| match ports {
                None | Some([]) => true,
                Some(ports) => ports.iter().any(|p| {
                    let named = matches!(p.port, Some(IntOrString::String(_)));
                    let block_dst = dir == Direction::Egress
                        && peer.is_some_and(|peer| peer.ip_block.is_some());
                    !(named && block_dst) && port_matches(p, destination, proto, port)
                }),
            };
            if matching_peers.into_iter().any(port_ok) {
                return true;
            }
        }
    }
    // Not isolated: everything allowed. Isolated and no rule matched: denied.
    !isolated
}

fn policy_namespace(policy: &NetworkPolicy) -> &str {
    policy.metadata.namespace.as_deref().unwrap_or("default")
}

/// Effective policyTypes: as given; when absent (or empty, which the API
/// server's defaulting treats the same), `Ingress`, plus `Egress` when
/// `spec.egress` has at least one rule.
fn has_policy_type(spec: &NetworkPolicySpec, dir: Direction) -> bool {
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => types.iter().any(|t| t == dir.policy_type()),
        _ => match dir {
            Direction::Ingress => true,
            Direction::Egress => spec.egress.as_ref().is_some_and(|rules| !rules.is_empty()),
        },
    }
}

/// Whether `spec.podSelector` selects the pod (the namespace was checked by
/// the caller). Inactive pods are never selected.
fn selects(spec: &NetworkPolicySpec, pod: &PodInfo) -> bool {
    pod.is_active()
        && match &spec.pod_selector {
            None => true,
            Some(sel) => selector_matches(sel, &pod.labels.to_map()),
        }
}

type Rule<'a> = (
    Option<&'a [NetworkPolicyPeer]>,
    Option<&'a [NetworkPolicyPort]>,
);

/// The rules of one direction as (peers, ports) pairs.
fn rules(spec: &NetworkPolicySpec, dir: Direction) -> Vec<Rule<'_>> {
    match dir {
        Direction::Ingress => spec
            .ingress
            .iter()
            .flatten()
            .map(|r| (r.from.as_deref(), r.ports.as_deref()))
            .collect(),
        Direction::Egress => spec
            .egress
            .iter()
            .flatten()
            .map(|r| (r.to.as_deref(), r.ports.as_deref()))
            .collect(),
    }
}

fn peer_matches(
    snap: &Snapshot,
    policy_ns: &str,
    peer: &NetworkPolicyPeer,
    remote: Remote<'_>,
) -> bool {
    if let Some(block) = &peer.ip_block {
        // A valid peer with an ipBlock has nothing else.
        let addrs: &[IpAddr] = match &remote {
            Remote::Pod { addrs, .. } => addrs,
            Remote::Address(addr) => std::slice::from_ref(addr),
        };
        return addrs.iter().any(|a| ip_block_contains(block, *a));
    }
    // Selectors only ever match active pods.
    let pod = match remote {
        Remote::Pod { pod, .. } if pod.is_active() => pod,
        _ => return false,
    };
    let ns_labels = || snap.namespace_labels(&pod.key.namespace);
    match (&peer.pod_selector, &peer.namespace_selector) {
        // Invalid (an empty peer): matches nothing.
        (None, None) => false,
        (Some(pods), None) => {
            *pod.key.namespace == *policy_ns && selector_matches(pods, &pod.labels.to_map())
        }
        (None, Some(nss)) => selector_matches(nss, &ns_labels()),
        (Some(pods), Some(nss)) => {
            selector_matches(nss, &ns_labels()) && selector_matches(pods, &pod.labels.to_map())
        }
    }
}

fn port_matches(
    rule_port: &NetworkPolicyPort,
    destination: Option<&PodInfo>,
    proto: Protocol,
    port: u16,
) -> bool {
    let rule_proto = rule_port.protocol.as_deref().unwrap_or("TCP");
    if rule_proto != protocol_name(proto) {
        return false;
    }
    match &rule_port.port {
        None => true,
        Some(IntOrString::Int(first)) => {
            let last = rule_port.end_port.unwrap_or(*first);
            *first <= i32::from(port) && i32::from(port) <= last
        }
        // A named port: the destination pod's container port of that name
        // and protocol. A destination that is no pod has no named ports.
        Some(IntOrString::String(name)) => destination.is_some_and(|pod| {
            pod.named_ports
                .iter()
                .any(|np| np.name == *name && np.protocol == proto && np.port == port)
        }),
    }
}

fn protocol_name(proto: Protocol) -> &'static str {
    match proto {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

/// The label selector semantics of apimachinery: every `matchLabels` pair
/// AND every `matchExpressions` requirement. An empty selector matches
/// everything. An unknown operator makes the selector match nothing.
pub fn selector_matches(sel: &LabelSelector, labels: &Labels) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|req| {
        let values = req.values.as_deref().unwrap_or_default();
        let value = labels.get(&req.key);
        match req.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => !value.is_some_and(|v| values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// In `cidr` and in none of `except`.
fn ip_block_contains(block: &IPBlock, addr: IpAddr) -> bool {
    cidr_contains(&block.cidr, addr)
        && !block
            .except
            .iter()
            .flatten()
            .any(|e| cidr_contains(e, addr))
}

/// Whether `addr` is inside `cidr` ("a.b.c.d/n" or "x:y::z/n"). Addresses
/// of the other family never are. Unparseable CIDRs contain nothing.
pub fn cidr_contains(cidr: &str, addr: IpAddr) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<IpAddr>(), len.parse::<u32>()) else {
        return false;
    };
    match (net, addr) {
        (IpAddr::V4(net), IpAddr::V4(addr)) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(net) & mask == u32::from(addr) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(addr)) if len <= 128 => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(net) & mask == u128::from(addr) & mask
        }
        _ => false,
    }
}
