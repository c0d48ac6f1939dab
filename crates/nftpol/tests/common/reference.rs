//! A plain, slow reference evaluator for Kubernetes NetworkPolicy
//! (networking.k8s.io/v1), written straight from the API documentation.
//!
//! It shares no code with the compiler: from `nftpol` it uses only the
//! snapshot's data types and their accessors (`PodInfo::is_active`,
//! `Snapshot::namespace_labels`, `Snapshot::pod`). Label selectors and CIDRs
//! are matched by hand below. Everything is evaluated per question, by
//! walking every policy: no caching, no precomputation, no cleverness.
//!
//! Rules beyond the API documentation, which nftpol holds to (issue #11):
//! - a namespace whose Namespace object is not in the snapshot has unknown
//!   labels: no namespaceSelector matches its pods, not even `{}`;
//! - label values are compared literally, whatever their syntax; a
//!   selector that cannot be read (bad key, unknown operator, In/NotIn
//!   without values, Exists/DoesNotExist with values) makes a rule that
//!   names it as a peer allow nothing, and as a policy's podSelector selects
//!   every pod of the namespace, with no rule applied;
//! - one address has one owner ([`owner`]); a packet carrying it is that
//!   pod's, and the other claimants are matched without it.
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
    let (src_ips, dst_ips) = (owned_ips(snap, src), owned_ips(snap, dst));
    connection_allowed(snap, src, &src_ips, dst, &dst_ips, proto, port)
}

/// The active pod that owns an address: of the active pods listing it,
/// those not being deleted if there are any; of these the newest
/// (`created`), and of equally new ones the greatest `namespace/name`.
pub fn owner(snap: &Snapshot, ip: IpAddr) -> Option<&PodInfo> {
    snap.pods
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| p.is_active() && p.ips.contains(&ip))
        .max_by(|a, b| (!a.deleting, a.created, &a.key).cmp(&(!b.deleting, b.created, &b.key)))
}

/// The addresses a pod owns, in its order.
pub fn owned_ips(snap: &Snapshot, pod: &PodInfo) -> Vec<IpAddr> {
    pod.ips
        .iter()
        .copied()
        .filter(|ip| owner(snap, *ip).is_some_and(|o| o.key == pod.key))
        .collect()
}

/// Like [`allows`], for one packet from `src_ip` (an address of `from`) to
/// `dst_ip` (an address of `to`): `ipBlock` peers are matched against these
/// two addresses only.
///
/// Panics when either pod is not in the snapshot or does not own its
/// address (a packet with an address is its owner's: ask about the owner).
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
        owned_ips(snap, src).contains(&src_ip),
        "{src_ip} is not an address {from} owns"
    );
    assert!(
        owned_ips(snap, dst).contains(&dst_ip),
        "{dst_ip} is not an address {to} owns"
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
        if spec.pod_selector.as_ref().is_some_and(|s| !readable(s)) {
            continue; // fails closed: isolates, allows nothing
        }
        let ns = policy_namespace(policy);
        for (peers, ports) in rules(spec, dir) {
            if peers.unwrap_or_default().iter().any(|p| !peer_readable(p)) {
                continue; // a broken rule allows nothing
            }
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
/// the caller). Inactive pods are never selected; a selector that cannot
/// be read selects every pod.
fn selects(spec: &NetworkPolicySpec, pod: &PodInfo) -> bool {
    pod.is_active()
        && match &spec.pod_selector {
            None => true,
            Some(sel) if !readable(sel) => true,
            Some(sel) => selector_matches(sel, &pod.labels.to_map()),
        }
}

fn peer_readable(peer: &NetworkPolicyPeer) -> bool {
    peer.pod_selector.as_ref().is_none_or(readable)
        && peer.namespace_selector.as_ref().is_none_or(readable)
}

/// Whether a selector can be read: valid keys, known operators, values
/// where the operator needs them and none where it takes none. (Values
/// themselves are not judged.)
pub fn readable(sel: &LabelSelector) -> bool {
    sel.match_labels.iter().flatten().all(|(k, _)| label_key(k))
        && sel.match_expressions.iter().flatten().all(|req| {
            let n = req.values.as_ref().map_or(0, Vec::len);
            label_key(&req.key)
                && match req.operator.as_str() {
                    "In" | "NotIn" => n > 0,
                    "Exists" | "DoesNotExist" => n == 0,
                    _ => false,
                }
        })
}

/// `[prefix/]name`: name 1-63 characters of `[A-Za-z0-9_.-]`, beginning
/// and ending alphanumeric; prefix a DNS subdomain.
fn label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let alnum_ends = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    let name_ok = (1..=63).contains(&name.len())
        && alnum_ends(name)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    let prefix_ok = prefix.is_none_or(|p| {
        (1..=253).contains(&p.len())
            && p.split('.').all(|part| {
                !part.is_empty()
                    && alnum_ends(part)
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    name_ok && prefix_ok
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
    // A namespace without its object has unknown labels: no selector.
    let ns_selected = |nss: &LabelSelector| {
        snap.namespace_labels(&pod.key.namespace)
            .is_some_and(|labels| selector_matches(nss, labels))
    };
    match (&peer.pod_selector, &peer.namespace_selector) {
        // Invalid (an empty peer): matches nothing.
        (None, None) => false,
        (Some(pods), None) => {
            *pod.key.namespace == *policy_ns && selector_matches(pods, &pod.labels.to_map())
        }
        (None, Some(nss)) => ns_selected(nss),
        (Some(pods), Some(nss)) => ns_selected(nss) && selector_matches(pods, &pod.labels.to_map()),
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
