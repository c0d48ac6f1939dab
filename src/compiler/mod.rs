//! The pure core: a cluster [`Snapshot`] and a node name in, a [`Plan`] out.
//!
//! ```text
//!  Snapshot ──parse_policy──► Policy (validated) ──┐
//!     │                                            ├─► Plan: pod chains, policy chains,
//!     └──────── Index (active pods by namespace) ──┘         address sets, port sets
//! ```
//!
//! No I/O happens here. Only policies that select a pod on the node are
//! compiled, and every peer set is resolved once per distinct selector.

pub mod explain;
pub mod plan;
pub mod policy;
pub mod ranges;
pub mod snapshot;
mod trace;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

pub use plan::{
    AddrSet, AddrSetKind, IpRange, Match, Plan, PodChain, PolicyChain, PolicyId, PortMatch,
    PortSet, SetId,
};
pub use policy::{Diagnostic, Direction, Peer, Policy, PortSpec, Severity, parse_policy};
pub use snapshot::{Labels, NamedPort, NamespaceInfo, ObjectKey, PodInfo, Protocol, Snapshot};
pub use trace::Decision;

use policy::{NamespaceScope, Rule};

/// The result of one compilation.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    pub plan: Plan,
    /// Findings about invalid policies.
    pub diagnostics: Vec<Diagnostic>,
    /// Findings about the cluster state (e.g. two local pods with one IP).
    pub warnings: Vec<String>,
}

/// Stable 64-bit FNV-1a, for set names that must not change between runs.
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// [`stable_hash`] as 16 hex digits.
pub fn stable_hash_hex(s: &str) -> String {
    format!("{:016x}", stable_hash(s))
}

/// Active pods grouped by namespace, and every namespace's labels.
pub(crate) struct Index<'a> {
    pub namespaces: BTreeMap<&'a str, Labels>,
    pub pods_by_ns: BTreeMap<&'a str, Vec<&'a PodInfo>>,
}

impl<'a> Index<'a> {
    pub fn new(snap: &'a Snapshot) -> Self {
        let mut grouped: HashMap<&str, Vec<&PodInfo>> = HashMap::new();
        for pod in snap.pods.iter().filter(|p| p.is_active()) {
            grouped.entry(&pod.key.namespace).or_default().push(pod);
        }
        // Within a namespace the names decide the order.
        let pods_by_ns: BTreeMap<&str, Vec<&PodInfo>> = grouped
            .into_iter()
            .map(|(ns, mut pods)| {
                pods.sort_unstable_by(|a, b| a.key.name.cmp(&b.key.name));
                (ns, pods)
            })
            .collect();
        let mut namespaces: BTreeMap<&str, Labels> = snap
            .namespaces
            .iter()
            .map(|(k, v)| (k.as_str(), v.labels.clone()))
            .collect();
        for ns in pods_by_ns.keys() {
            namespaces
                .entry(ns)
                .or_insert_with(|| snap.namespace_labels(ns));
        }
        Self {
            namespaces,
            pods_by_ns,
        }
    }

    /// Active pods a pod peer covers.
    pub fn peer_pods(&self, scope: &NamespaceScope, pods: &policy::LabelSel) -> Vec<&'a PodInfo> {
        let in_ns = |ns: &str| {
            self.pods_by_ns
                .get(ns)
                .into_iter()
                .flatten()
                .copied()
                .filter(|p| pods.matches(&p.labels))
        };
        match scope {
            NamespaceScope::Own(ns) => in_ns(ns).collect(),
            NamespaceScope::Selected(sel) => self
                .namespaces
                .iter()
                .filter(|(_, labels)| sel.matches(labels))
                .flat_map(|(ns, _)| in_ns(ns))
                .collect(),
        }
    }
}

/// Validates every policy, sorted by key; a second policy with the same key
/// is reported and ignored.
pub fn parse_policies(snap: &Snapshot, diags: &mut Vec<Diagnostic>) -> Vec<Policy> {
    let mut out: BTreeMap<ObjectKey, Policy> = BTreeMap::new();
    for np in &snap.policies {
        if let Some(p) = parse_policy(np, diags) {
            if out.contains_key(&p.key) {
                diags.push(Diagnostic {
                    severity: Severity::Error,
                    policy: p.key.clone(),
                    field: "metadata.name".into(),
                    message: "duplicate policy; only the first is used".into(),
                });
                continue;
            }
            out.insert(p.key.clone(), p);
        }
    }
    out.into_values().collect()
}

/// Compiles what `node` must enforce.
pub fn compile(snap: &Snapshot, node: &str) -> Compiled {
    let mut diagnostics = Vec::new();
    let policies = parse_policies(snap, &mut diagnostics);
    let index = Index::new(snap);
    let mut b = Builder {
        index: &index,
        plan: Plan {
            node: node.to_string(),
            ..Plan::default()
        },
        peer_ids: HashMap::new(),
        warnings: Vec::new(),
    };

    let mut by_ns: BTreeMap<&str, Vec<&Policy>> = BTreeMap::new();
    for p in &policies {
        by_ns.entry(&p.key.namespace).or_default().push(p);
    }
    let mut local: Vec<&PodInfo> = index
        .pods_by_ns
        .values()
        .flatten()
        .copied()
        .filter(|p| p.node.as_deref() == Some(node))
        .collect();
    local.sort_by(|a, b| a.key.cmp(&b.key));

    for direction in Direction::BOTH {
        // Which local pods each policy selects in this direction.
        let mut selected: BTreeMap<&ObjectKey, Vec<&PodInfo>> = BTreeMap::new();
        let mut seen_ips: BTreeMap<IpAddr, &ObjectKey> = BTreeMap::new();
        for pod in &local {
            let isolating: Vec<&Policy> = by_ns
                .get(pod.key.namespace.as_str())
                .into_iter()
                .flatten()
                .copied()
                .filter(|p| p.rules(direction).is_some() && p.pod_selector.matches(&pod.labels))
                .collect();
            if isolating.is_empty() {
                continue;
            }
            let mut ips = Vec::new();
            for ip in &pod.ips {
                match seen_ips.get(ip) {
                    Some(other) => b.warnings.push(format!(
                        "pods {other} and {} on node {node} share the address {ip}; \
                         {direction} traffic of {ip} is checked against {other} only",
                        pod.key
                    )),
                    None => {
                        seen_ips.insert(*ip, &pod.key);
                        ips.push(*ip);
                    }
                }
            }
            for p in &isolating {
                selected.entry(&p.key).or_default().push(pod);
            }
            b.plan.pods.push(PodChain {
                pod: pod.key.clone(),
                direction,
                ips,
                policies: isolating.iter().map(|p| p.key.clone()).collect(),
            });
        }
        for policy in &policies {
            let Some(pods) = selected.get(&policy.key) else {
                continue;
            };
            let rules = policy.rules(direction).unwrap_or_default();
            let matches: Vec<Match> = rules
                .iter()
                .flat_map(|r| b.rule_matches(policy, direction, r, pods))
                .collect();
            if !matches.is_empty() {
                let id = PolicyId {
                    policy: policy.key.clone(),
                    direction,
                };
                b.plan
                    .policies
                    .insert(id.clone(), PolicyChain { id, matches });
            }
        }
    }
    Compiled {
        plan: b.plan,
        diagnostics,
        warnings: b.warnings,
    }
}

struct Builder<'a> {
    index: &'a Index<'a>,
    plan: Plan,
    /// Content key → set id, for sets already built in this compilation.
    peer_ids: HashMap<String, Option<SetId>>,
    warnings: Vec<String>,
}

/// The content key of a pod peer (shared by identical selectors).
fn pods_peer_key(scope: &NamespaceScope, pods: &policy::LabelSel) -> String {
    match scope {
        NamespaceScope::Own(ns) => format!("pods|ns={ns}|{}", pods.canonical()),
        NamespaceScope::Selected(sel) => {
            format!("pods|nssel={}|{}", sel.canonical(), pods.canonical())
        }
    }
}

fn set_id(prefix: &str, key: &str) -> SetId {
    format!("{prefix}-{:016x}", stable_hash(key))
}

fn describe_pods(scope: &NamespaceScope, pods: &policy::LabelSel) -> String {
    match scope {
        NamespaceScope::Own(ns) => format!("pods {pods} in namespace {ns}"),
        NamespaceScope::Selected(sel) => format!("pods {pods} in namespaces {sel}"),
    }
}

impl Builder<'_> {
    /// The address set of a peer; `None` when it holds no address.
    fn peer_set(&mut self, peer: &Peer) -> Option<SetId> {
        let key = match peer {
            Peer::Pods { namespaces, pods } => pods_peer_key(namespaces, pods),
            Peer::Block(b) => format!("block|{b}"),
        };
        if let Some(id) = self.peer_ids.get(&key) {
            return id.clone();
        }
        let set = match peer {
            Peer::Pods { namespaces, pods } => {
                let mut ips: Vec<IpAddr> = self
                    .index
                    .peer_pods(namespaces, pods)
                    .iter()
                    .flat_map(|p| p.ips.iter().copied())
                    .collect();
                ips.sort_unstable();
                ips.dedup();
                let hosts: BTreeSet<IpAddr> = ips.into_iter().collect();
                (!hosts.is_empty()).then(|| AddrSet {
                    description: describe_pods(namespaces, pods),
                    kind: AddrSetKind::Hosts(hosts),
                })
            }
            Peer::Block(b) => {
                let ranges = ranges::merge(ranges::subtract(&b.cidr, &b.except));
                (!ranges.is_empty()).then(|| AddrSet {
                    description: format!("ipBlock {b}"),
                    kind: AddrSetKind::Ranges(ranges),
                })
            }
        };
        let id = set.map(|set| {
            let id = set_id("peer", &key);
            self.plan.addr_sets.insert(id.clone(), set);
            id
        });
        self.peer_ids.insert(key, id.clone());
        id
    }

    /// A named-port set; `None` when no pod has the port.
    fn port_set(
        &mut self,
        key: String,
        description: String,
        pods: &[&PodInfo],
        name: &str,
        protocol: Protocol,
    ) -> Option<SetId> {
        if let Some(id) = self.peer_ids.get(&key) {
            return id.clone();
        }
        let elements: BTreeSet<(IpAddr, Protocol, u16)> = pods
            .iter()
            .filter_map(|p| p.resolve_port(name, protocol).map(|port| (p, port)))
            .flat_map(|(p, port)| p.ips.iter().map(move |ip| (*ip, protocol, port)))
            .collect();
        let id = (!elements.is_empty()).then(|| {
            let id = set_id("port", &key);
            self.plan.port_sets.insert(
                id.clone(),
                PortSet {
                    description,
                    elements,
                },
            );
            id
        });
        self.peer_ids.insert(key, id.clone());
        id
    }

    /// The allow lines of one rule. `selected` are the local pods the policy
    /// selects (named ports of ingress rules resolve against them).
    fn rule_matches(
        &mut self,
        policy: &Policy,
        direction: Direction,
        rule: &Rule,
        selected: &[&PodInfo],
    ) -> Vec<Match> {
        // Numeric ports grouped per protocol; a whole protocol absorbs its ports.
        let mut numeric: BTreeMap<Protocol, Option<Vec<(u16, u16)>>> = BTreeMap::new();
        let mut named: BTreeSet<(Protocol, &str)> = BTreeSet::new();
        let any_port = rule.ports.is_none();
        for spec in rule.ports.iter().flatten() {
            match spec {
                PortSpec::All(p) => {
                    numeric.insert(*p, None);
                }
                PortSpec::Range(p, s, e) => {
                    if let Some(list) = numeric.entry(*p).or_insert_with(|| Some(Vec::new())) {
                        list.push((*s, *e));
                    }
                }
                PortSpec::Named(p, n) => {
                    named.insert((*p, n.as_str()));
                }
            }
        }
        let port_matches: Vec<PortMatch> = if any_port {
            vec![PortMatch::Any]
        } else {
            numeric
                .into_iter()
                .map(|(p, ranges)| match ranges {
                    None => PortMatch::Proto(p),
                    Some(r) => PortMatch::Ports(p, merge_ports(r)),
                })
                .collect()
        };

        let peers: Vec<Option<&Peer>> = match &rule.peers {
            None => vec![None],
            Some(list) => list.iter().map(Some).collect(),
        };
        let mut out = Vec::new();
        for peer in peers {
            let peer_id = match peer {
                None => None,
                Some(p) => match self.peer_set(p) {
                    Some(id) => Some(id),
                    None => continue, // no address: never matches
                },
            };
            for ports in &port_matches {
                out.push(Match {
                    rule: rule.index,
                    peer: peer_id.clone(),
                    ports: ports.clone(),
                });
            }
            for &(protocol, name) in &named {
                let named_match = match direction {
                    Direction::Ingress => {
                        // The destination is the selected pod itself.
                        let key = format!("named-in|{}|{name}|{protocol}", policy.key);
                        let description = format!(
                            "port {name}/{protocol} of local pods selected by {}",
                            policy.key
                        );
                        self.port_set(key, description, selected, name, protocol)
                            .map(|id| (peer_id.clone(), id))
                    }
                    Direction::Egress => {
                        // The destination is the peer: its pods' own numbers.
                        let key = match peer {
                            Some(Peer::Block(_)) => continue, // never a named port
                            Some(Peer::Pods { namespaces, pods }) => {
                                format!(
                                    "named|{}|{name}|{protocol}",
                                    pods_peer_key(namespaces, pods)
                                )
                            }
                            None => format!("named|all|{name}|{protocol}"),
                        };
                        // Built once per compilation: scan the pods only then.
                        let id = match self.peer_ids.get(&key) {
                            Some(id) => id.clone(),
                            None => {
                                let (description, pods) = match peer {
                                    Some(Peer::Pods { namespaces, pods }) => (
                                        format!(
                                            "port {name}/{protocol} of {}",
                                            describe_pods(namespaces, pods)
                                        ),
                                        self.index.peer_pods(namespaces, pods),
                                    ),
                                    _ => (
                                        format!("port {name}/{protocol} of every pod"),
                                        self.index.pods_by_ns.values().flatten().copied().collect(),
                                    ),
                                };
                                self.port_set(key, description, &pods, name, protocol)
                            }
                        };
                        id.map(|id| (None, id))
                    }
                };
                if let Some((peer, id)) = named_match {
                    out.push(Match {
                        rule: rule.index,
                        peer,
                        ports: PortMatch::Named(id),
                    });
                }
            }
        }
        out
    }
}

/// Sorts and merges overlapping or adjacent port ranges.
fn merge_ports(mut r: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    r.sort();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(r.len());
    for (s, e) in r {
        if let Some(last) = out.last_mut()
            && s as u32 <= last.1 as u32 + 1
        {
            last.1 = last.1.max(e);
            continue;
        }
        out.push((s, e));
    }
    out
}
