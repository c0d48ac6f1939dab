//! Proptest generators for small random clusters: 2-3 namespaces, 3-8 pods
//! over two nodes, 1-4 valid NetworkPolicies using every feature of the API.
//!
//! Addresses are structured so that ipBlocks hit pods often:
//! pod `i` (0-based, in generation order) on node `n` gets
//! `10.244.<n>.<10+i>` and, when dual-stack, `fd00:10:244:<n>::<10+i>`.
//! Host-network pods get the node's address `172.18.0.<n+2>`. Some pods
//! take an earlier pod's node and host instead (its addresses, so that
//! claims on one address are settled by creation time and deletion mark),
//! and some namespaces have no Namespace object.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nftpol::compiler::snapshot::{
    Labels, NamedPort, NamespaceInfo, ObjectKey, PodInfo, Protocol, Snapshot,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{Index, select};

pub const NODES: [&str; 2] = ["node-0", "node-1"];
pub const NAMESPACES: [&str; 3] = ["ns-a", "ns-b", "ns-c"];

/// Addresses outside every pod network that pods may try to reach.
pub const EXTERNAL_ADDRESSES: [&str; 4] = ["10.96.0.10", "192.0.2.1", "fd00:96::a", "2001:db8::1"];

pub type Vocab = &'static [(&'static str, &'static [&'static str])];

/// `retired app` is a legacy value the API server no longer accepts but
/// still serves: matched literally like any other.
pub const POD_VOCAB: Vocab = &[
    ("app", &["web", "db", "retired app"]),
    ("tier", &["fe", "be"]),
];
pub const NS_VOCAB: Vocab = &[("team", &["red", "blue"]), ("env", &["prod", "dev"])];
/// Namespace selectors may also use the automatic name label.
const NS_SELECTOR_VOCAB: Vocab = &[
    ("team", &["red", "blue"]),
    ("env", &["prod", "dev"]),
    ("kubernetes.io/metadata.name", &["ns-a", "ns-b", "ns-c"]),
];
const OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

/// Numeric ports policies use, and `port..=endPort` ranges.
const PORTS: [i32; 5] = [53, 80, 81, 5353, 8080];
/// `(82, 8080)` leaves a one-port gap (81) after port 80, to catch sloppy
/// range merging.
const RANGES: [(i32, i32); 8] = [
    (1, 65535),
    (82, 8080),
    (53, 80),
    (80, 81),
    (81, 8080),
    (5000, 6000),
    (8000, 9090),
    (80, 80),
];
/// Port names policies use; `metrics` exists on no pod.
const PORT_NAMES: [&str; 3] = ["http", "dns", "metrics"];

/// A generated cluster. Its `Debug` output is a compact listing (policies as
/// JSON), which is what proptest prints for a failing case.
#[derive(Clone)]
pub struct Cluster {
    pub snap: Snapshot,
}

impl Cluster {
    /// Pods policy applies to (IP, not host network, not finished).
    pub fn active_pods(&self) -> Vec<&PodInfo> {
        self.snap
            .pods
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| p.is_active())
            .collect()
    }

    /// (protocol, port) pairs worth probing: TCP 80, TCP 81, UDP 53,
    /// SCTP 80, and every named-port number in the cluster under every
    /// protocol (so a name resolved for the wrong protocol shows).
    pub fn port_checks(&self) -> Vec<(Protocol, u16)> {
        let mut checks = vec![
            (Protocol::Tcp, 80),
            (Protocol::Tcp, 81),
            (Protocol::Udp, 53),
            (Protocol::Sctp, 80),
        ];
        for pod in &self.snap.pods {
            for np in pod.named_ports.iter() {
                for proto in Protocol::ALL {
                    checks.push((proto, np.port));
                }
            }
        }
        checks.sort();
        checks.dedup();
        checks
    }

    /// Addresses that belong to no active pod: [`EXTERNAL_ADDRESSES`] plus
    /// those of inactive pods (host-network and finished ones).
    pub fn non_pod_addresses(&self) -> Vec<IpAddr> {
        let active: Vec<IpAddr> = self
            .active_pods()
            .iter()
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        let mut out: Vec<IpAddr> = EXTERNAL_ADDRESSES
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        for pod in &self.snap.pods {
            out.extend(pod.ips.iter().copied().filter(|ip| !active.contains(ip)));
        }
        out.sort();
        out.dedup();
        out
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Cluster {{")?;
        writeln!(f, "  namespaces:")?;
        for ns in self.snap.namespaces.values() {
            let labels: Labels = ns
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != "kubernetes.io/metadata.name")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            writeln!(f, "    {} {}", ns.name, show_labels(&labels))?;
        }
        let mut unseen: Vec<&str> = self
            .snap
            .pods
            .iter()
            .map(|p| &*p.key.namespace)
            .filter(|ns| !self.snap.namespaces.contains_key(*ns))
            .collect();
        unseen.sort();
        unseen.dedup();
        for ns in unseen {
            writeln!(f, "    {ns} (no Namespace object)")?;
        }
        writeln!(f, "  pods:")?;
        for pod in &self.snap.pods {
            let ips: Vec<String> = pod.ips.iter().map(|ip| ip.to_string()).collect();
            let ports: Vec<String> = pod
                .named_ports
                .iter()
                .map(|p| format!("{}/{}={}", p.name, p.protocol, p.port))
                .collect();
            write!(
                f,
                "    {} on {} [{}] {}",
                pod.key,
                pod.node.as_deref().unwrap_or("-"),
                ips.join(", "),
                show_labels(&pod.labels.to_map()),
            )?;
            if !ports.is_empty() {
                write!(f, " ports[{}]", ports.join(", "))?;
            }
            write!(f, " created={}", pod.created)?;
            if pod.deleting {
                write!(f, " DELETING")?;
            }
            if let Some(why) = pod.inactive_reason() {
                write!(f, " INACTIVE: {why}")?;
            }
            writeln!(f)?;
        }
        writeln!(f, "  policies:")?;
        for pol in &self.snap.policies {
            let spec = serde_json::to_string(&pol.spec).unwrap();
            writeln!(
                f,
                "    {}/{} {spec}",
                pol.metadata.namespace.as_deref().unwrap_or("?"),
                pol.metadata.name.as_deref().unwrap_or("?"),
            )?;
        }
        write!(f, "}}")
    }
}

fn show_labels(labels: &Labels) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", parts.join(","))
}

/// Labels drawing at most one value per vocabulary key.
pub fn labels_from(vocab: Vocab) -> impl Strategy<Value = Labels> {
    vec(option::of(any::<Index>()), vocab.len()).prop_map(move |choices| {
        vocab
            .iter()
            .zip(choices)
            .filter_map(|((k, vals), c)| c.map(|i| (k.to_string(), i.get(vals).to_string())))
            .collect()
    })
}

/// A label selector over `vocab`: matchLabels and/or matchExpressions with
/// every operator (each possibly absent or empty, so `{}` comes up too).
pub fn selector(vocab: Vocab) -> impl Strategy<Value = LabelSelector> {
    let pair = (0..vocab.len(), any::<Index>());
    let expr = (
        0..vocab.len(),
        select(&OPERATORS[..]),
        any::<Index>(),
        any::<bool>(),
    );
    (option::of(vec(pair, 0..=2)), option::of(vec(expr, 0..=2))).prop_map(move |(pairs, exprs)| {
        LabelSelector {
            match_labels: pairs.map(|pairs| {
                pairs
                    .into_iter()
                    .map(|(k, v)| {
                        let (key, vals) = vocab[k];
                        (key.to_string(), v.get(vals).to_string())
                    })
                    .collect()
            }),
            match_expressions: exprs.map(|exprs| {
                exprs
                    .into_iter()
                    .map(|(k, op, v, all_values)| {
                        let (key, vals) = vocab[k];
                        let values = match op {
                            "In" | "NotIn" if all_values => {
                                Some(vals.iter().map(|s| s.to_string()).collect())
                            }
                            "In" | "NotIn" => Some(vec![v.get(vals).to_string()]),
                            _ => None,
                        };
                        LabelSelectorRequirement {
                            key: key.to_string(),
                            operator: op.to_string(),
                            values,
                        }
                    })
                    .collect()
            }),
        }
    })
}

#[derive(Clone, Copy, Debug)]
pub enum PodState {
    Running,
    HostNetwork,
    Succeeded,
    Pending,
}

/// A generated pod, before it gets its name and addresses.
#[derive(Clone, Debug)]
pub struct PodGen {
    /// Index into the cluster's namespaces (modulo their number).
    pub ns: usize,
    /// Index into [`NODES`].
    pub node: u16,
    pub labels: Labels,
    pub dual_stack: bool,
    pub state: PodState,
    /// http/TCP, http/SCTP, dns/UDP, dns/TCP.
    pub ports: [Option<u16>; 4],
    /// `creationTimestamp`, from a few seconds (so that ties come up).
    pub created: u32,
    /// `deletionTimestamp` set.
    pub deleting: bool,
    /// In a generated cluster: the node and host of an earlier pod (picked
    /// by this index), so that both claim the same address.
    pub twin: Option<Index>,
}

pub fn pod_gen() -> impl Strategy<Value = PodGen> {
    let state = prop_oneof![
        8 => Just(PodState::Running),
        1 => Just(PodState::HostNetwork),
        1 => Just(PodState::Succeeded),
        1 => Just(PodState::Pending),
    ];
    let ports = (
        option::of(select(&[80u16, 8080, 81][..])),
        option::of(select(&[80u16, 9090][..])),
        option::of(select(&[53u16, 5353][..])),
        option::of(select(&[53u16, 5353][..])),
    );
    let claim = (
        0..3u32,
        prop::bool::weighted(0.2),
        option::weighted(0.2, any::<Index>()),
    );
    (
        0..3usize,
        0..2u16,
        labels_from(POD_VOCAB),
        any::<bool>(),
        state,
        ports,
        claim,
    )
        .prop_map(
            |(ns, node, labels, dual_stack, state, (a, b, c, d), (created, deleting, twin))| {
                PodGen {
                    ns,
                    node,
                    labels,
                    dual_stack,
                    state,
                    ports: [a, b, c, d],
                    created,
                    deleting,
                    twin,
                }
            },
        )
}

fn v4(node: u16, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node as u8, host)
}

fn v6(node: u16, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, node, 0, 0, 0, host)
}

/// An ipBlock over the cluster's address plan (both families), with a
/// random subset of excepts, each inside the CIDR. `node`/`host` pick the
/// pod addresses the block or its excepts single out.
fn ip_block() -> impl Strategy<Value = IPBlock> {
    (
        0..11usize,
        0..2u16,
        10..18u8,
        vec(any::<bool>(), 3),
        any::<bool>(),
    )
        .prop_map(|(template, n, x, mask, empty_except_list)| {
            let other = 1 - n;
            let (cidr, excepts): (String, Vec<String>) = match template {
                0 => (
                    "10.244.0.0/16".into(),
                    vec![
                        format!("10.244.{n}.0/24"),
                        format!("{}/32", v4(n, x)),
                        format!("{}/32", v4(other, x)),
                    ],
                ),
                1 => (
                    format!("10.244.{n}.0/24"),
                    vec![format!("{}/32", v4(n, x)), format!("{}/31", v4(n, x & !1))],
                ),
                2 => (format!("{}/32", v4(n, x)), vec![]),
                3 => (
                    "0.0.0.0/0".into(),
                    vec![
                        "10.244.0.0/16".into(),
                        "10.96.0.0/12".into(),
                        "192.0.2.0/24".into(),
                    ],
                ),
                4 => (
                    "10.0.0.0/8".into(),
                    vec!["10.244.0.0/16".into(), format!("10.244.{n}.0/24")],
                ),
                5 => ("192.0.2.0/24".into(), vec![]),
                6 => (
                    "172.18.0.0/16".into(),
                    vec![format!("172.18.0.{}/32", n + 2)],
                ),
                7 => (
                    "fd00:10:244::/48".into(),
                    vec![
                        format!("{}/64", v6(n, 0)),
                        format!("{}/128", v6(other, x.into())),
                    ],
                ),
                8 => (
                    "::/0".into(),
                    vec!["fd00:10:244::/48".into(), "2001:db8::/32".into()],
                ),
                9 => (format!("{}/128", v6(n, x.into())), vec![]),
                _ => (
                    format!("{}/64", v6(n, 0)),
                    vec![format!("{}/128", v6(n, x.into()))],
                ),
            };
            let except: Vec<String> = excepts
                .into_iter()
                .zip(mask)
                .filter_map(|(e, keep)| keep.then_some(e))
                .collect();
            IPBlock {
                cidr,
                except: if except.is_empty() && !empty_except_list {
                    None
                } else {
                    Some(except)
                },
            }
        })
}

fn peer() -> impl Strategy<Value = NetworkPolicyPeer> {
    prop_oneof![
        selector(POD_VOCAB).prop_map(|pods| NetworkPolicyPeer {
            pod_selector: Some(pods),
            ..Default::default()
        }),
        selector(NS_SELECTOR_VOCAB).prop_map(|nss| NetworkPolicyPeer {
            namespace_selector: Some(nss),
            ..Default::default()
        }),
        (selector(POD_VOCAB), selector(NS_SELECTOR_VOCAB)).prop_map(|(pods, nss)| {
            NetworkPolicyPeer {
                pod_selector: Some(pods),
                namespace_selector: Some(nss),
                ..Default::default()
            }
        }),
        ip_block().prop_map(|block| NetworkPolicyPeer {
            ip_block: Some(block),
            ..Default::default()
        }),
    ]
}

fn policy_port() -> impl Strategy<Value = NetworkPolicyPort> {
    let protocol = prop_oneof![
        2 => Just(None),
        1 => Just(Some("TCP")),
        1 => Just(Some("UDP")),
        1 => Just(Some("SCTP")),
    ];
    let port = prop_oneof![
        1 => Just((None, None)),
        3 => select(&PORTS[..]).prop_map(|p| (Some(IntOrString::Int(p)), None)),
        2 => select(&RANGES[..]).prop_map(|(a, b)| (Some(IntOrString::Int(a)), Some(b))),
        3 => select(&PORT_NAMES[..]).prop_map(|n| (Some(IntOrString::String(n.into())), None)),
    ];
    (protocol, port).prop_map(|(protocol, (port, end_port))| NetworkPolicyPort {
        protocol: protocol.map(str::to_string),
        port,
        end_port,
    })
}

type RuleParts = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

fn rule() -> impl Strategy<Value = RuleParts> {
    (
        option::of(vec(peer(), 0..=2)),
        option::of(vec(policy_port(), 0..=2)),
    )
}

/// A podSelector that cannot be read: the policy then isolates every pod
/// of its namespace and allows nothing.
fn unreadable_selector() -> impl Strategy<Value = LabelSelector> {
    const EXPRS: [(&str, Option<&[&str]>); 4] = [
        ("In", Some(&[])),
        ("NotIn", Some(&[])),
        ("Exists", Some(&["web"])),
        ("Matches", Some(&["web"])),
    ];
    select(&EXPRS[..]).prop_map(|(op, values)| LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "app".into(),
            operator: op.into(),
            values: values.map(|vs| vs.iter().map(|v| v.to_string()).collect()),
        }]),
        ..Default::default()
    })
}

pub fn policy_spec() -> impl Strategy<Value = NetworkPolicySpec> {
    let types = prop_oneof![
        2 => Just(None),
        1 => Just(Some(vec!["Ingress"])),
        1 => Just(Some(vec!["Egress"])),
        1 => Just(Some(vec!["Ingress", "Egress"])),
        // The API server defaults an empty list like an absent one.
        1 => Just(Some(vec![])),
    ];
    let pod_selector = prop_oneof![
        12 => option::of(selector(POD_VOCAB)),
        1 => unreadable_selector().prop_map(Some),
    ];
    (
        pod_selector,
        types,
        option::of(vec(rule(), 0..=2)),
        option::of(vec(rule(), 0..=2)),
    )
        .prop_map(|(pod_selector, types, ingress, egress)| NetworkPolicySpec {
            pod_selector,
            policy_types: types.map(|ts| ts.into_iter().map(str::to_string).collect()),
            ingress: ingress.map(|rules| {
                rules
                    .into_iter()
                    .map(|(from, ports)| NetworkPolicyIngressRule { from, ports })
                    .collect()
            }),
            egress: egress.map(|rules| {
                rules
                    .into_iter()
                    .map(|(to, ports)| NetworkPolicyEgressRule { to, ports })
                    .collect()
            }),
        })
}

/// A random small cluster.
pub fn cluster() -> impl Strategy<Value = Cluster> {
    (
        vec(option::weighted(0.8, labels_from(NS_VOCAB)), 2..=3),
        vec(pod_gen(), 3..=8),
        vec((0..3usize, policy_spec()), 1..=4),
    )
        .prop_map(|(ns_labels, pods, policies)| build(ns_labels, pods, policies))
}

/// `ns_labels`: the namespaces, each with its object's labels or without
/// an object.
fn build(
    ns_labels: Vec<Option<Labels>>,
    pods: Vec<PodGen>,
    policies: Vec<(usize, NetworkPolicySpec)>,
) -> Cluster {
    let mut snap = Snapshot::default();
    let n_ns = ns_labels.len();
    for (i, labels) in ns_labels.into_iter().enumerate() {
        if let Some(labels) = labels {
            snap.add_namespace(NamespaceInfo::new(NAMESPACES[i], labels));
        }
    }
    // (node, host) of each pod so far.
    let mut placed: Vec<(u16, u8)> = Vec::new();
    for (i, mut p) in pods.into_iter().enumerate() {
        let mut host = 10 + i as u8;
        if let Some(twin) = p.twin.filter(|_| i > 0) {
            (p.node, host) = placed[twin.index(i)];
        }
        placed.push((p.node, host));
        snap.add_pod(pod_info(NAMESPACES[p.ns % n_ns], &format!("p{i}"), host, p));
    }
    for (i, (ns, spec)) in policies.into_iter().enumerate() {
        snap.add_policy(NetworkPolicy {
            metadata: ObjectMeta {
                namespace: Some(NAMESPACES[ns % n_ns].to_string()),
                name: Some(format!("pol-{i}")),
                ..Default::default()
            },
            spec: Some(spec),
        });
    }
    Cluster { snap }
}

/// The pod `ns/name` a [`PodGen`] describes; `host` picks its addresses
/// (`10.244.<node>.<host>` and, dual-stack, `fd00:10:244:<node>::<host>`).
pub fn pod_info(ns: &str, name: &str, host: u8, p: PodGen) -> PodInfo {
    let mut ips: Vec<IpAddr> = vec![v4(p.node, host).into()];
    if p.dual_stack {
        ips.push(v6(p.node, host.into()).into());
    }
    let (host_network, phase) = match p.state {
        PodState::Running => (false, "Running"),
        PodState::HostNetwork => {
            ips = vec![Ipv4Addr::new(172, 18, 0, p.node as u8 + 2).into()];
            (true, "Running")
        }
        PodState::Succeeded => (false, "Succeeded"),
        PodState::Pending => {
            ips.clear();
            (false, "Pending")
        }
    };
    let slots = [
        ("http", Protocol::Tcp),
        ("http", Protocol::Sctp),
        ("dns", Protocol::Udp),
        ("dns", Protocol::Tcp),
    ];
    let named_ports: Vec<NamedPort> = slots
        .iter()
        .zip(p.ports)
        .filter_map(|(&(name, protocol), port)| {
            port.map(|port| NamedPort {
                name: name.to_string(),
                protocol,
                port,
            })
        })
        .collect();
    PodInfo {
        key: ObjectKey::new(ns, name),
        labels: p.labels.into(),
        node: Some(NODES[p.node as usize].into()),
        ips: ips.into(),
        host_network,
        deleting: p.deleting,
        created: p.created,
        phase: Some(phase.into()),
        named_ports: named_ports.into(),
    }
}

/// 256 cases unless `PROPTEST_CASES` says otherwise (for long bug hunts);
/// minimal failing cases belong in explicit tests, not in a file proptest
/// writes next to the sources.
pub fn config() -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            default.cases
        } else {
            256
        },
        failure_persistence: None,
        ..default
    }
}
