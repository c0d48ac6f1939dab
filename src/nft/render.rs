//! Plan → nftables objects.
//!
//! The static skeleton (base chains, dispatch maps) is data at the top. Per
//! direction there is one base chain per hook, so that an `accept` in the
//! egress check ends only that check and the packet still meets the ingress
//! check (an accept ends only the current base chain; a drop is final).
//!
//! ```text
//! forward-egress  (forward, prio 0) ─┐ ct established → accept
//! input-egress    (input,   prio 0) ─┤ ip saddr vmap @dispatch-eg-4 ─► pod-eg/NS/POD
//! forward-ingress (forward, prio 1) ─┘ ip daddr vmap @dispatch-in-4 ─► pod-in/NS/POD
//!   pod-in/NS/POD:  jump pol-in/NS/POLICY ... ; counter drop
//!   pol-in/NS/POLICY: ip saddr @peer-… meta l4proto tcp th dport 80 accept ...
//! ```

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::compiler::plan::{AddrSetKind, PodChain};
use crate::compiler::{Direction, Match, ObjectKey, Plan, PortMatch, stable_hash_hex};

use super::model::{
    Action, AddrField, Cond, Elem, Hook, KeyType, NftChain, NftMap, NftRule, NftSet, Ruleset,
};

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

pub fn policy_chain_name(d: Direction, policy: &ObjectKey) -> String {
    bounded(format!(
        "pol-{}/{}/{}",
        dir_tag(d),
        policy.namespace,
        policy.name
    ))
}

fn family_set(id: &str, v6: bool) -> String {
    format!("{id}-{}", if v6 { 6 } else { 4 })
}

fn truncate_comment(s: &str) -> String {
    // The kernel keeps at most 256 bytes of user data per object.
    if s.len() <= 200 {
        return s.to_string();
    }
    let mut cut = 197;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &s[..cut])
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

    // Sets, one per family that has elements.
    for (id, set) in &plan.addr_sets {
        for v6 in [false, true] {
            let elements: BTreeSet<Elem> = match &set.kind {
                AddrSetKind::Hosts(h) => h
                    .iter()
                    .filter(|ip| ip.is_ipv6() == v6)
                    .map(|ip| Elem::Addr(*ip))
                    .collect(),
                AddrSetKind::Ranges(r) => r
                    .iter()
                    .filter(|r| r.start.is_ipv6() == v6)
                    .map(|r| Elem::Range(r.start, r.end))
                    .collect(),
            };
            if elements.is_empty() {
                continue;
            }
            rs.sets.insert(
                family_set(id, v6),
                NftSet {
                    key: if v6 { KeyType::Ipv6 } else { KeyType::Ipv4 },
                    interval: matches!(set.kind, AddrSetKind::Ranges(_)),
                    comment: truncate_comment(&set.description),
                    elements,
                },
            );
        }
    }
    for (id, set) in &plan.port_sets {
        for v6 in [false, true] {
            let elements: BTreeSet<Elem> = set
                .elements
                .iter()
                .filter(|(ip, _, _)| ip.is_ipv6() == v6)
                .map(|(ip, p, port)| Elem::Tuple(*ip, *p, *port))
                .collect();
            if elements.is_empty() {
                continue;
            }
            rs.sets.insert(
                family_set(id, v6),
                NftSet {
                    key: if v6 { KeyType::Tuple6 } else { KeyType::Tuple4 },
                    interval: false,
                    comment: truncate_comment(&set.description),
                    elements,
                },
            );
        }
    }

    // Policy chains.
    for (id, chain) in &plan.policies {
        let field = match id.direction {
            Direction::Ingress => AddrField::Saddr,
            Direction::Egress => AddrField::Daddr,
        };
        let rules = chain
            .matches
            .iter()
            .flat_map(|m| match_rules(&rs, m, field))
            .collect();
        rs.chains.insert(
            policy_chain_name(id.direction, &id.policy),
            NftChain { hook: None, rules },
        );
    }

    // Pod chains and their dispatch entries.
    for pod in &plan.pods {
        let name = pod_chain_name(pod.direction, &pod.pod);
        rs.chains.insert(
            name.clone(),
            NftChain {
                hook: None,
                rules: pod_rules(&rs, pod),
            },
        );
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

fn rule(conds: Vec<Cond>, action: Action) -> NftRule {
    NftRule { conds, action }
}

fn pod_rules(rs: &Ruleset, pod: &PodChain) -> Vec<NftRule> {
    let mut rules: Vec<NftRule> = pod
        .policies
        .iter()
        .map(|p| policy_chain_name(pod.direction, p))
        .filter(|c| rs.chains.contains_key(c))
        .map(|c| rule(vec![], Action::Jump(c)))
        .collect();
    rules.push(rule(vec![], Action::CountDrop));
    rules
}

/// The nft rules of one plan line: one per address family that has
/// something to match.
fn match_rules(rs: &Ruleset, m: &Match, field: AddrField) -> Vec<NftRule> {
    let mut out = Vec::new();
    // Family-independent line: no peer set, no named-port set.
    if m.peer.is_none() && !matches!(m.ports, PortMatch::Named(_)) {
        out.push(rule(port_conds(&m.ports), Action::Accept));
        return out;
    }
    for v6 in [false, true] {
        let mut conds = Vec::new();
        if let Some(peer) = &m.peer {
            let set = family_set(peer, v6);
            if !rs.sets.contains_key(&set) {
                continue;
            }
            conds.push(Cond::AddrIn { v6, field, set });
        }
        match &m.ports {
            PortMatch::Named(id) => {
                let set = family_set(id, v6);
                if !rs.sets.contains_key(&set) {
                    continue;
                }
                conds.push(Cond::DstTupleIn { v6, set });
            }
            other => conds.extend(port_conds(other)),
        }
        out.push(rule(conds, Action::Accept));
    }
    out
}

fn port_conds(p: &PortMatch) -> Vec<Cond> {
    match p {
        PortMatch::Any => vec![],
        PortMatch::Proto(proto) => vec![Cond::L4Proto(*proto)],
        PortMatch::Ports(proto, ranges) => {
            vec![Cond::L4Proto(*proto), Cond::DPorts(ranges.clone())]
        }
        PortMatch::Named(_) => unreachable!("named ports are matched by their set"),
    }
}

/// Addresses in a rendered ruleset, for tests and explanations.
pub fn dispatch_targets(rs: &Ruleset, d: Direction, ip: IpAddr) -> Option<&String> {
    rs.maps
        .get(&dispatch_map(d, ip.is_ipv6()))?
        .elements
        .get(&ip)
}
