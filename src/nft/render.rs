//! Plan → nftables objects.
//!
//! The static skeleton (base chains, dispatch maps) is data at the top. Per
//! direction there is one base chain per hook, so that an `accept` in the
//! egress check ends only that check and the packet still meets the ingress
//! check (an accept ends only the current base chain; a drop is final).
//!
//! Each isolated pod gets one chain per direction, and per address family
//! two interval sets holding its allow-list merged over all the policies
//! that select it: the peers allowed on every port, and
//! `peer . protocol . port` boxes (ipBlocks and pod addresses as ranges,
//! port ranges, named ports resolved). So a new connection costs one
//! dispatch lookup and two set lookups per direction, however many policies
//! select the pod; the chains never change shape when policies or peers
//! change, only set elements do.
//!
//! ```text
//! forward-egress  (forward, prio 0) ─┐ ct established → accept
//! input-egress    (input,   prio 0) ─┤ ip saddr vmap @dispatch-eg-4 ─► pod-eg/NS/POD
//! forward-ingress (forward, prio 1) ─┘ ip daddr vmap @dispatch-in-4 ─► pod-in/NS/POD
//!   pod-in/NS/POD:  ip saddr @pod-in/NS/POD.any4 accept
//!                   ip saddr . meta l4proto . th dport @pod-in/NS/POD.ports4 accept
//!                   counter drop
//! ```
//!
//! Which policy line allows a packet is the plan's business
//! ([`Plan::decide`], `nftpol explain`); the kernel only needs the union.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use crate::compiler::plan::{AddrSetKind, PodChain, PolicyId, SetId};
use crate::compiler::ranges::to_u128;
use crate::compiler::{Direction, ObjectKey, Plan, PortMatch, stable_hash_hex};

use super::model::{
    Action, AddrField, Cond, Elem, Hook, KeyType, NftChain, NftMap, NftRule, NftSet, Ruleset,
};
use super::region::{Builder, Span, normalize};

pub const DEFAULT_TABLE: &str = "nftpol";

/// Names longer than this are shortened, keeping a readable head and a hash.
const MAX_NAME: usize = 120;

pub const FORWARD_EGRESS: &str = "forward-egress";
pub const INPUT_EGRESS: &str = "input-egress";
pub const FORWARD_INGRESS: &str = "forward-ingress";

/// Base chains: (name, hook, priority, direction). Egress is checked before
/// ingress; the order does not change the outcome, since both must accept.
pub const BASE_CHAINS: [(&str, &str, i32, Direction); 3] = [
    (FORWARD_EGRESS, "forward", 0, Direction::Egress),
    (INPUT_EGRESS, "input", 0, Direction::Egress),
    (FORWARD_INGRESS, "forward", 1, Direction::Ingress),
];

fn dir_tag(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "in",
        Direction::Egress => "eg",
    }
}

pub fn dispatch_map(d: Direction, v6: bool) -> String {
    format!("dispatch-{}-{}", dir_tag(d), if v6 { 6 } else { 4 })
}

/// `head` as is when short enough, else its start and a hash of the whole.
fn bounded(head: String) -> String {
    if head.len() <= MAX_NAME {
        return head;
    }
    let hash = stable_hash_hex(&head);
    let mut cut = MAX_NAME - hash.len() - 1;
    while !head.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{hash}", &head[..cut])
}

pub fn pod_chain_name(d: Direction, pod: &ObjectKey) -> String {
    bounded(format!("pod-{}/{}/{}", dir_tag(d), pod.namespace, pod.name))
}

/// Renders a plan into the table `table`.
pub fn render(plan: &Plan, table: &str) -> Ruleset {
    let mut rs = Ruleset {
        table: table.to_string(),
        ..Ruleset::default()
    };

    // Skeleton: dispatch maps and base chains.
    for d in Direction::BOTH {
        for v6 in [false, true] {
            rs.maps.insert(
                dispatch_map(d, v6),
                NftMap {
                    key: if v6 { KeyType::Ipv6 } else { KeyType::Ipv4 },
                    elements: Default::default(),
                },
            );
        }
    }
    for (name, hook, priority, d) in BASE_CHAINS {
        let field = match d {
            Direction::Ingress => AddrField::Daddr,
            Direction::Egress => AddrField::Saddr,
        };
        let mut rules = vec![
            rule(vec![Cond::CtEstablished], Action::Accept),
            rule(vec![Cond::Icmpv6Discovery], Action::Accept),
        ];
        if d == Direction::Ingress {
            // The node itself (kubelet probes) always reaches its pods.
            rules.push(rule(vec![Cond::FromLocalNode], Action::Accept));
        }
        for v6 in [false, true] {
            rules.push(rule(
                vec![],
                Action::Dispatch {
                    v6,
                    field,
                    map: dispatch_map(d, v6),
                },
            ));
        }
        rs.chains.insert(
            name.to_string(),
            NftChain {
                hook: Some(Hook { hook, priority }),
                rules,
            },
        );
    }

    // Pod chains, their allow-list sets and their dispatch entries.
    let peers = PeerSpans::new(plan);
    for pod in &plan.pods {
        let name = pod_chain_name(pod.direction, &pod.pod);
        let field = match pod.direction {
            Direction::Ingress => AddrField::Saddr,
            Direction::Egress => AddrField::Daddr,
        };
        let mut rules = Vec::new();
        for v6 in [false, true] {
            if !pod.ips.iter().any(|ip| ip.is_ipv6() == v6) {
                continue;
            }
            let (any, ports) = allow_list(plan, &peers, pod, v6);
            let (any_set, ports_set) = (
                pod_set_name(&name, "any", v6),
                pod_set_name(&name, "ports", v6),
            );
            let what = format!("{} {}", pod.pod, dir_word(pod.direction));
            rs.sets.insert(
                any_set.clone(),
                NftSet {
                    key: if v6 { KeyType::Ipv6 } else { KeyType::Ipv4 },
                    interval: true,
                    comment: format!("{what}: peers allowed on every port"),
                    elements: any,
                },
            );
            rs.sets.insert(
                ports_set.clone(),
                NftSet {
                    key: if v6 { KeyType::Tuple6 } else { KeyType::Tuple4 },
                    interval: true,
                    comment: format!("{what}: peer . protocol . port allowed"),
                    elements: ports,
                },
            );
            rules.push(rule(
                vec![Cond::AddrIn {
                    v6,
                    field,
                    set: any_set,
                }],
                Action::Accept,
            ));
            rules.push(rule(
                vec![Cond::TupleIn {
                    v6,
                    field,
                    set: ports_set,
                }],
                Action::Accept,
            ));
        }
        rules.push(rule(vec![], Action::CountDrop));
        rs.chains
            .insert(name.clone(), NftChain { hook: None, rules });
        for ip in &pod.ips {
            let map = dispatch_map(pod.direction, ip.is_ipv6());
            rs.maps
                .get_mut(&map)
                .expect("dispatch maps are created above")
                .elements
                .insert(*ip, name.clone());
        }
    }
    rs
}

fn dir_word(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// `CHAIN.any4`, `CHAIN.ports6`, ...
pub fn pod_set_name(chain: &str, part: &str, v6: bool) -> String {
    format!("{chain}.{part}{}", if v6 { 6 } else { 4 })
}

/// The plan's address sets as normalized spans per family, computed once
/// per render.
struct PeerSpans<'a> {
    sets: HashMap<&'a str, [Vec<Span>; 2]>,
}

impl<'a> PeerSpans<'a> {
    fn new(plan: &'a Plan) -> Self {
        let sets = plan
            .addr_sets
            .iter()
            .map(|(id, set)| {
                let mut fams: [Vec<Span>; 2] = [Vec::new(), Vec::new()];
                match &set.kind {
                    AddrSetKind::Hosts(h) => {
                        for ip in h {
                            let n = to_u128(*ip);
                            fams[ip.is_ipv6() as usize].push((n, n));
                        }
                    }
                    AddrSetKind::Ranges(r) => {
                        for r in r {
                            fams[r.start.is_ipv6() as usize]
                                .push((to_u128(r.start), to_u128(r.end)));
                        }
                    }
                }
                (id.as_str(), fams.map(normalize))
            })
            .collect();
        Self { sets }
    }

    /// A line's peers in one family: every address when it names none, and
    /// nothing when its set is unknown (as [`Plan::decide`] reads it).
    fn of(&self, peer: Option<&SetId>, v6: bool) -> &[Span] {
        const ALL4: [Span; 1] = [(0, u32::MAX as u128)];
        const ALL6: [Span; 1] = [(0, u128::MAX)];
        match peer {
            None if v6 => &ALL6,
            None => &ALL4,
            Some(id) => self
                .sets
                .get(id.as_str())
                .map_or(&[], |f| f[v6 as usize].as_slice()),
        }
    }
}

/// One isolated pod's allow-list in one direction and family, merged over
/// all the lines of all its policies: the peers allowed on every port, and
/// the `peer . protocol . port` boxes.
fn allow_list(
    plan: &Plan,
    peers: &PeerSpans,
    pod: &PodChain,
    v6: bool,
) -> (BTreeSet<Elem>, BTreeSet<Elem>) {
    let mut b = Builder::new(v6);
    for policy in &pod.policies {
        let id = PolicyId {
            policy: policy.clone(),
            direction: pod.direction,
        };
        let Some(chain) = plan.policies.get(&id) else {
            continue;
        };
        for m in &chain.matches {
            let spans = peers.of(m.peer.as_ref(), v6);
            match &m.ports {
                PortMatch::Any => b.any(spans),
                PortMatch::Proto(p) => b.ports(*p, 0, u16::MAX, spans),
                PortMatch::Ports(p, ranges) => {
                    for (lo, hi) in ranges {
                        b.ports(*p, *lo, *hi, spans);
                    }
                }
                PortMatch::Named(set) => {
                    let Some(set) = plan.port_sets.get(set) else {
                        continue;
                    };
                    let family = set.elements.iter().filter(|(ip, _, _)| ip.is_ipv6() == v6);
                    match pod.direction {
                        // The name is resolved on the pod itself, the
                        // destination.
                        Direction::Ingress => {
                            for (ip, proto, port) in family {
                                if pod.ips.contains(ip) {
                                    b.ports(*proto, *port, *port, spans);
                                }
                            }
                        }
                        // On each destination peer that has it.
                        Direction::Egress => {
                            for (ip, proto, port) in family {
                                let n = to_u128(*ip);
                                if spans
                                    .binary_search_by(|s| {
                                        if s.1 < n {
                                            std::cmp::Ordering::Less
                                        } else if s.0 > n {
                                            std::cmp::Ordering::Greater
                                        } else {
                                            std::cmp::Ordering::Equal
                                        }
                                    })
                                    .is_ok()
                                {
                                    b.ports(*proto, *port, *port, &[(n, n)]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let (any, ports) = b
        .build()
        .elems()
        .into_iter()
        .partition(|e| matches!(e, Elem::Range(..)));
    (any, ports)
}

fn rule(conds: Vec<Cond>, action: Action) -> NftRule {
    NftRule { conds, action }
}

/// Addresses in a rendered ruleset, for tests and explanations.
pub fn dispatch_targets(rs: &Ruleset, d: Direction, ip: IpAddr) -> Option<&String> {
    rs.maps
        .get(&dispatch_map(d, ip.is_ipv6()))?
        .elements
        .get(&ip)
}
