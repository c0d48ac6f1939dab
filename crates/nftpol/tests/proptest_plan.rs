//! Holds the compiled per-node plans against the reference evaluator on
//! random small clusters.
//!
//! For every ordered pair of distinct active pods and a handful of
//! (protocol, port) probes, a packet between their first addresses (and
//! between their IPv6 addresses when both have one) is allowed by the plans
//! iff the reference says so. Only the addresses a pod owns are its own
//! (two pods may claim one address: a packet with it is the owner's). A packet crossing nodes must pass the source
//! node's plan and the destination node's plan. Egress to non-pod addresses
//! is checked against the source node's plan alone.
//!
//! The same packets are also traced through each node's rendered ruleset
//! (`nftpol_lab::eval`), which merges every pod's policies into per-pod sets: it
//! must decide exactly as the plan and the reference do.

mod common;

use std::net::IpAddr;

use common::r#gen::{self as g, Cluster, NODES};
use common::reference;
use nftpol::compiler::{
    Compiled, Direction, Incremental, Plan, PodInfo, Protocol, Severity, compile,
};
use nftpol::net::Family;
use nftpol::nft::{Ruleset, render};
use nftpol_lab::eval::{self, Packet};
use proptest::prelude::*;

/// At most this many mismatches are spelled out in a failure.
const SHOWN: usize = 12;

struct Plans {
    compiled: Vec<(&'static str, Compiled, Ruleset)>,
}

impl Plans {
    fn new(cluster: &Cluster) -> Self {
        Self {
            compiled: NODES
                .iter()
                .map(|n| {
                    let c = compile(&cluster.snap, n);
                    let rs = render(&c.plan, "nftpol");
                    (*n, c, rs)
                })
                .collect(),
        }
    }

    fn node(&self, pod: &PodInfo) -> &(&'static str, Compiled, Ruleset) {
        let node = pod.node.as_deref().expect("generated pods have a node");
        self.compiled
            .iter()
            .find(|(n, _, _)| *n == node)
            .expect("generated pods are on a known node")
    }

    fn of(&self, pod: &PodInfo) -> &Plan {
        &self.node(pod).1.plan
    }

    fn ruleset_of(&self, pod: &PodInfo) -> &Ruleset {
        &self.node(pod).2
    }

    /// Both directions' decisions of a plan, for a failure message.
    fn explain(plan: &Plan, src: IpAddr, dst: IpAddr, proto: Protocol, port: u16) -> String {
        let e = plan.decide(Direction::Egress, src, dst, proto, port);
        let i = plan.decide(Direction::Ingress, src, dst, proto, port);
        format!("{}: egress {e:?}, ingress {i:?}", plan.node)
    }
}

/// The address pairs probed between two pods, of the addresses they own:
/// the first of each family both have.
fn address_pairs(src: &[IpAddr], dst: &[IpAddr]) -> Vec<(IpAddr, IpAddr)> {
    let first = |ips: &[IpAddr], family| ips.iter().copied().find(|ip| Family::of(*ip) == family);
    Family::BOTH
        .into_iter()
        .filter_map(|family| Some((first(src, family)?, first(dst, family)?)))
        .collect()
}

/// Every disagreement between the plans and the reference, spelled out.
fn mismatches(cluster: &Cluster) -> Vec<String> {
    let snap = &cluster.snap;
    let plans = Plans::new(cluster);
    let probes = cluster.port_checks();
    let active = cluster.active_pods();
    let mut out = Vec::new();

    for src in &active {
        for dst in &active {
            if src.key == dst.key {
                continue;
            }
            let (src_plan, dst_plan) = (plans.of(src), plans.of(dst));
            let same_node = src.node == dst.node;
            let owned = |p: &PodInfo| reference::owned_ips(snap, p);
            for (s, d) in address_pairs(&owned(src), &owned(dst)) {
                for &(proto, port) in &probes {
                    let want =
                        reference::allows_packet(snap, &src.key, s, &dst.key, d, proto, port);
                    let got = src_plan.allows(s, d, proto, port)
                        && (same_node || dst_plan.allows(s, d, proto, port));
                    let packet = Packet {
                        src: s,
                        dst: d,
                        proto,
                        port,
                    };
                    let traced = eval::forward(plans.ruleset_of(src), &packet).accepted
                        && (same_node || eval::forward(plans.ruleset_of(dst), &packet).accepted);
                    if traced != got {
                        out.push(format!(
                            "{proto} {port}: {} ({s}) -> {} ({d}): plans {}, rendered rulesets {}",
                            src.key,
                            dst.key,
                            verdict(got),
                            verdict(traced),
                        ));
                    }
                    if want != got {
                        let mut why = Plans::explain(src_plan, s, d, proto, port);
                        if !same_node {
                            why += &format!("; {}", Plans::explain(dst_plan, s, d, proto, port));
                        }
                        out.push(format!(
                            "{proto} {port}: {} ({s}) -> {} ({d}): reference {}, plans {} [{why}]",
                            src.key,
                            dst.key,
                            verdict(want),
                            verdict(got),
                        ));
                    }
                }
            }
        }
    }

    let outside = cluster.non_pod_addresses();
    for src in &active {
        let plan = plans.of(src);
        let own = reference::owned_ips(snap, src);
        for &addr in &outside {
            let Some(s) = own
                .iter()
                .copied()
                .find(|ip| ip.is_ipv4() == addr.is_ipv4())
            else {
                continue;
            };
            for &(proto, port) in &probes {
                let want = reference::allows_ip(snap, &src.key, addr, proto, port);
                let got = plan.allows(s, addr, proto, port);
                let packet = Packet {
                    src: s,
                    dst: addr,
                    proto,
                    port,
                };
                let traced = eval::forward(plans.ruleset_of(src), &packet).accepted;
                if traced != got {
                    out.push(format!(
                        "{proto} {port}: {} ({s}) -> non-pod {addr}: plan {}, rendered ruleset {}",
                        src.key,
                        verdict(got),
                        verdict(traced),
                    ));
                }
                if want != got {
                    out.push(format!(
                        "{proto} {port}: {} ({s}) -> non-pod {addr}: reference {}, plan {} [{}]",
                        src.key,
                        verdict(want),
                        verdict(got),
                        Plans::explain(plan, s, addr, proto, port),
                    ));
                }
            }
        }
    }
    out
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "ALLOW" } else { "DENY" }
}

proptest! {
    #![proptest_config(g::config())]

    /// The compiled plans decide every probed connection as the reference does.
    #[test]
    fn plans_agree_with_reference(cluster in g::cluster()) {
        let found = mismatches(&cluster);
        prop_assert!(
            found.is_empty(),
            "{} mismatch(es) between plans and reference, first {}:\n  {}",
            found.len(),
            found.len().min(SHOWN),
            found[..found.len().min(SHOWN)].join("\n  "),
        );
    }

    /// The generator makes valid policies, but for podSelectors that
    /// cannot be read on purpose: the compiler rejects nothing else.
    #[test]
    fn generated_policies_are_accepted(cluster in g::cluster()) {
        for node in NODES {
            let c = compile(&cluster.snap, node);
            let errors: Vec<String> = c
                .diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Error && !d.field.starts_with("spec.podSelector"))
                .map(|d| d.to_string())
                .collect();
            prop_assert!(errors.is_empty(), "compiler rejected a valid policy:\n  {}", errors.join("\n  "));
            let warnings: Vec<String> = c.diagnostics.iter().filter(|d| d.severity == Severity::Warning).map(|d| d.to_string()).collect();
            prop_assert!(warnings.is_empty(), "compiler found fault with a valid rule:\n  {}", warnings.join("\n  "));
        }
    }

    /// The compiler gives every address the owner the reference does.
    #[test]
    fn address_owners_agree_with_reference(cluster in g::cluster()) {
        let snap = &cluster.snap;
        let inc = Incremental::from_snapshot(snap, NODES[0]);
        let mut addresses: Vec<IpAddr> = snap.pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
        addresses.extend(cluster.non_pod_addresses());
        for ip in addresses {
            prop_assert_eq!(
                inc.address_owner(ip),
                reference::owner(snap, ip).map(|p| &p.key),
                "owner of {}", ip
            );
        }
        prop_assert_eq!(
            inc.address_owners().count(),
            cluster.active_pods().iter().flat_map(|p| p.ips.iter()).collect::<std::collections::BTreeSet<_>>().len()
        );
    }

    /// Sanity of the reference itself: for single-stack pods, the pod-level
    /// and the packet-level questions are the same question.
    #[test]
    fn reference_pod_and_packet_level_agree_for_single_stack_pods(cluster in g::cluster()) {
        let snap = &cluster.snap;
        // Single-stack pods that own their address.
        let single: Vec<&PodInfo> = cluster
            .active_pods()
            .into_iter()
            .filter(|p| p.ips.len() == 1 && reference::owned_ips(snap, p).len() == 1)
            .collect();
        for src in &single {
            for dst in single.iter().filter(|p| p.key != src.key) {
                for (proto, port) in cluster.port_checks() {
                    prop_assert_eq!(
                        reference::allows(snap, &src.key, &dst.key, proto, port),
                        reference::allows_packet(snap, &src.key, src.ips[0], &dst.key, dst.ips[0], proto, port),
                        "{} -> {} {} {}", src.key, dst.key, proto, port
                    );
                }
            }
        }
    }
}

/// Minimal cases the property found, kept as plain tests.
mod found {
    use super::*;
    use common::{PodExt, json, mk_ns, mk_pod, mk_policy, snapshot};

    fn assert_agrees(cluster: Cluster) {
        let found = mismatches(&cluster);
        assert!(
            found.is_empty(),
            "{cluster:?}\n{} mismatch(es):\n  {}",
            found.len(),
            found.join("\n  ")
        );
    }

    /// A named port never matches an ipBlock destination (issue #2), even
    /// when the block covers a pod that has the port: found by the property,
    /// kept as a regression case for both sides.
    #[test]
    fn egress_named_port_never_matches_an_ip_block_destination() {
        assert_agrees(Cluster {
            snap: snapshot(
                [mk_ns("ns-a", &[]), mk_ns("ns-b", &[])],
                [
                    mk_pod("ns-b", "p0", "node-0", "10.244.0.10", &[("tier", "fe")]),
                    mk_pod("ns-a", "p1", "node-0", "10.244.0.11", &[]),
                    mk_pod("ns-a", "p2", "node-0", "10.244.0.12", &[]).named_port(
                        "dns",
                        Protocol::Tcp,
                        53,
                    ),
                ],
                [mk_policy(
                    "ns-b",
                    "pol-0",
                    json!({
                        "policyTypes": ["Egress"],
                        "egress": [{
                            "to": [{ "ipBlock": { "cidr": "10.244.0.0/16" } }],
                            "ports": [{ "port": "dns" }],
                        }],
                    }),
                )],
            ),
        });
    }

    /// `policyTypes: []` is defaulted by the API server like an absent list
    /// (`len(PolicyTypes) == 0` in SetDefaults_NetworkPolicy,
    /// pkg/apis/networking/v1/defaults.go): the policy isolates for ingress.
    #[test]
    fn empty_policy_types_list_isolates_ingress() {
        assert_agrees(Cluster {
            snap: snapshot(
                [mk_ns("ns-a", &[]), mk_ns("ns-b", &[])],
                [
                    mk_pod("ns-a", "p0", "node-0", "10.244.0.10", &[]),
                    mk_pod("ns-b", "p1", "node-0", "10.244.0.11", &[]),
                    mk_pod("ns-a", "p2", "node-1", "10.244.1.12", &[]),
                ],
                [mk_policy("ns-a", "pol-0", json!({ "policyTypes": [] }))],
            ),
        });
    }
}
