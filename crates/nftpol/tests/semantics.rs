//! One behaviour per test: every NetworkPolicy semantic the compiler must
//! honour, decided through the compiled plans of both nodes (the way the
//! rendered rulesets decide a packet).

mod common;

use std::net::IpAddr;

use common::{PodExt, json, key, mk_ns, mk_pod, mk_policy, snapshot};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use nftpol::compiler::{Direction, Protocol, Severity, Snapshot, compile};

use Protocol::{Sctp, Tcp, Udp};

/// Namespaces x (team=blue) and y (team=red); pods x/a, y/a on node-1 and
/// x/b, y/c on node-2; named port `http` is 8080 on x/b and 9090 on y/c.
fn cluster(policies: Vec<NetworkPolicy>) -> Snapshot {
    snapshot(
        [
            mk_ns("x", &[("team", "blue")]),
            mk_ns("y", &[("team", "red")]),
        ],
        [
            mk_pod(
                "x",
                "a",
                "node-1",
                "10.0.1.1",
                &[("app", "a"), ("tier", "web")],
            ),
            mk_pod("x", "b", "node-2", "10.0.2.1", &[("app", "b")])
                .named_port("http", Tcp, 8080)
                .named_port("dns", Udp, 5353),
            mk_pod("y", "a", "node-1", "10.0.1.2", &[("app", "a")]),
            mk_pod(
                "y",
                "c",
                "node-2",
                "10.0.2.2",
                &[("app", "c"), ("tier", "db")],
            )
            .named_port("http", Tcp, 9090),
        ],
        policies,
    )
}

fn ip_of(snap: &Snapshot, pod: &str) -> (IpAddr, String) {
    let p = snap.pod(&key(pod)).expect("pod exists");
    (p.ips[0], p.node.as_deref().unwrap().to_string())
}

/// Whether a new connection from pod `from` to pod `to` gets through both
/// nodes' rulesets.
fn allowed(snap: &Snapshot, from: &str, to: &str, proto: Protocol, port: u16) -> bool {
    let (src, src_node) = ip_of(snap, from);
    let (dst, dst_node) = ip_of(snap, to);
    allowed_ips(snap, &src_node, &dst_node, src, dst, proto, port)
}

fn allowed_ips(
    snap: &Snapshot,
    src_node: &str,
    dst_node: &str,
    src: IpAddr,
    dst: IpAddr,
    proto: Protocol,
    port: u16,
) -> bool {
    let a = compile(snap, src_node).plan.allows(src, dst, proto, port);
    a && (src_node == dst_node || compile(snap, dst_node).plan.allows(src, dst, proto, port))
}

/// Egress from a pod to an address that is no pod.
fn allowed_to_ip(snap: &Snapshot, from: &str, dst: &str, proto: Protocol, port: u16) -> bool {
    let (src, node) = ip_of(snap, from);
    compile(snap, &node)
        .plan
        .allows(src, dst.parse().unwrap(), proto, port)
}

fn deny_ingress(ns: &str, name: &str, selector: serde_json::Value) -> NetworkPolicy {
    mk_policy(
        ns,
        name,
        json!({"podSelector": selector, "policyTypes": ["Ingress"]}),
    )
}

fn ingress(
    ns: &str,
    name: &str,
    selector: serde_json::Value,
    rules: serde_json::Value,
) -> NetworkPolicy {
    mk_policy(
        ns,
        name,
        json!({"podSelector": selector, "policyTypes": ["Ingress"], "ingress": rules}),
    )
}

fn egress(
    ns: &str,
    name: &str,
    selector: serde_json::Value,
    rules: serde_json::Value,
) -> NetworkPolicy {
    mk_policy(
        ns,
        name,
        json!({"podSelector": selector, "policyTypes": ["Egress"], "egress": rules}),
    )
}

// ---- selection and isolation ----

#[test]
fn without_policies_everything_is_allowed() {
    let s = cluster(vec![]);
    assert!(allowed(&s, "x/a", "y/c", Tcp, 80));
    assert!(allowed(&s, "y/c", "x/a", Udp, 53));
    assert!(compile(&s, "node-1").plan.pods.is_empty());
}

#[test]
fn an_empty_pod_selector_isolates_every_pod_of_its_namespace_only() {
    let s = cluster(vec![deny_ingress("x", "deny", json!({}))]);
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 80));
    assert!(!allowed(&s, "y/a", "x/b", Tcp, 80));
    assert!(allowed(&s, "x/a", "y/a", Tcp, 80));
}

#[test]
fn an_absent_pod_selector_selects_every_pod_too() {
    let s = cluster(vec![mk_policy(
        "x",
        "deny",
        json!({"policyTypes": ["Ingress"]}),
    )]);
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 80));
    assert!(!allowed(&s, "y/a", "x/b", Tcp, 80));
}

#[test]
fn match_labels_isolate_only_matching_pods() {
    let s = cluster(vec![deny_ingress(
        "x",
        "deny",
        json!({"matchLabels": {"app": "b"}}),
    )]);
    assert!(!allowed(&s, "y/a", "x/b", Tcp, 80));
    assert!(allowed(&s, "y/a", "x/a", Tcp, 80));
}

#[test]
fn match_expressions_support_all_four_operators() {
    let sel = |op: &str, values: serde_json::Value| {
        let mut req = json!({"key": "tier", "operator": op});
        if !values.is_null() {
            req["values"] = values;
        }
        deny_ingress("y", "deny", json!({"matchExpressions": [req]}))
    };
    // y/a has no tier label; y/c has tier=db.
    let cases = [
        (sel("In", json!(["db"])), false, true),
        (sel("NotIn", json!(["db"])), true, false),
        (sel("Exists", serde_json::Value::Null), false, true),
        (sel("DoesNotExist", serde_json::Value::Null), true, false),
    ];
    for (policy, a_isolated, c_isolated) in cases {
        let s = cluster(vec![policy]);
        assert_eq!(!allowed(&s, "x/a", "y/a", Tcp, 80), a_isolated);
        assert_eq!(!allowed(&s, "x/a", "y/c", Tcp, 80), c_isolated);
    }
}

#[test]
fn without_policy_types_a_policy_isolates_ingress_and_egress_only_if_it_has_egress_rules() {
    let s = cluster(vec![mk_policy(
        "x",
        "p",
        json!({"podSelector": {}, "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}),
    )]);
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 80), "ingress is isolated");
    assert!(!allowed(&s, "x/a", "y/a", Tcp, 80), "egress is isolated");
    assert!(allowed(&s, "x/a", "y/a", Udp, 53));

    let s = cluster(vec![mk_policy("x", "p", json!({"podSelector": {}}))]);
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 80));
    assert!(allowed(&s, "x/a", "y/a", Tcp, 80), "egress stays open");
}

#[test]
fn rules_of_a_direction_not_in_policy_types_are_ignored() {
    let s = cluster(vec![mk_policy(
        "x",
        "p",
        json!({"podSelector": {}, "policyTypes": ["Ingress"], "egress": [{"ports": [{"port": 53}]}]}),
    )]);
    assert!(allowed(&s, "x/a", "y/a", Tcp, 80));
}

#[test]
fn an_isolated_pod_accepts_the_union_of_its_policies() {
    let s = cluster(vec![
        ingress(
            "x",
            "from-y-a",
            json!({}),
            json!([{"from": [{"namespaceSelector": {"matchLabels": {"team": "red"}}, "podSelector": {"matchLabels": {"app": "a"}}}]}]),
        ),
        ingress(
            "x",
            "port-81",
            json!({}),
            json!([{"ports": [{"port": 81}]}]),
        ),
    ]);
    assert!(allowed(&s, "y/a", "x/b", Tcp, 80));
    assert!(!allowed(&s, "y/c", "x/b", Tcp, 80));
    assert!(allowed(&s, "y/c", "x/b", Tcp, 81));
}

#[test]
fn an_empty_rule_list_denies_everything() {
    let s = cluster(vec![ingress("x", "p", json!({}), json!([]))]);
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 80));
    assert!(!allowed(&s, "x/b", "x/a", Udp, 53));
}

#[test]
fn an_empty_rule_allows_every_peer_and_port() {
    let s = cluster(vec![ingress("x", "p", json!({}), json!([{}]))]);
    assert!(allowed(&s, "y/c", "x/a", Sctp, 7));
}

#[test]
fn a_rule_needs_both_a_matching_peer_and_a_matching_port() {
    let s = cluster(vec![ingress(
        "x",
        "p",
        json!({}),
        json!([{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": 80}]}]),
    )]);
    assert!(allowed(&s, "x/b", "x/a", Tcp, 80));
    assert!(!allowed(&s, "x/b", "x/a", Tcp, 81));
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 80));
}

// ---- peers ----

#[test]
fn a_pod_selector_peer_covers_only_the_policy_namespace() {
    let s = cluster(vec![ingress(
        "x",
        "p",
        json!({}),
        json!([{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}]}]),
    )]);
    assert!(allowed(&s, "x/a", "x/b", Tcp, 80));
    assert!(
        !allowed(&s, "y/a", "x/b", Tcp, 80),
        "same labels, other namespace"
    );
}

#[test]
fn a_namespace_selector_peer_covers_every_pod_of_matching_namespaces() {
    let s = cluster(vec![ingress(
        "x",
        "p",
        json!({}),
        json!([{"from": [{"namespaceSelector": {"matchLabels": {"team": "red"}}}]}]),
    )]);
    assert!(allowed(&s, "y/a", "x/a", Tcp, 80));
    assert!(allowed(&s, "y/c", "x/a", Tcp, 80));
    assert!(!allowed(&s, "x/b", "x/a", Tcp, 80));
}

#[test]
fn an_empty_namespace_selector_covers_all_namespaces() {
    let s = cluster(vec![ingress(
        "x",
        "p",
        json!({}),
        json!([{"from": [{"namespaceSelector": {}}]}]),
    )]);
    assert!(allowed(&s, "y/c", "x/a", Tcp, 80));
    assert!(allowed(&s, "x/b", "x/a", Tcp, 80));
    // ...but only pods: other addresses are not covered.
    let src: IpAddr = "192.0.2.9".parse().unwrap();
    let dst: IpAddr = "10.0.1.1".parse().unwrap();
    assert!(!compile(&s, "node-1").plan.allows(src, dst, Tcp, 80));
}

#[test]
fn pod_and_namespace_selectors_in_one_peer_must_both_match() {
    let s = cluster(vec![ingress(
        "x",
        "p",
        json!({}),
        json!([{"from": [{"namespaceSelector": {"matchLabels": {"team": "red"}}, "podSelector": {"matchLabels": {"app": "c"}}}]}]),
    )]);
    assert!(allowed(&s, "y/c", "x/a", Tcp, 80));
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 80));
    assert!(!allowed(&s, "x/b", "x/a", Tcp, 80));
}

#[test]
fn two_peers_in_one_rule_are_alternatives() {
    let s = cluster(vec![ingress(
        "x",
        "p",
        json!({}),
        json!([{"from": [{"namespaceSelector": {"matchLabels": {"team": "red"}}}, {"podSelector": {"matchLabels": {"app": "b"}}}]}]),
    )]);
    assert!(allowed(&s, "y/a", "x/a", Tcp, 80));
    assert!(allowed(&s, "x/b", "x/a", Tcp, 80));
}

#[test]
fn an_ip_block_matches_pod_addresses_minus_its_excepts() {
    let s = cluster(vec![ingress(
        "x",
        "p",
        json!({}),
        json!([{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.2/32"]}}]}]),
    )]);
    assert!(allowed(&s, "y/a", "x/a", Tcp, 80));
    assert!(!allowed(&s, "y/c", "x/a", Tcp, 80), "excepted");
}

#[test]
fn an_ip_block_matches_addresses_that_are_no_pods() {
    let s = cluster(vec![egress(
        "x",
        "p",
        json!({}),
        json!([{"to": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}]}]),
    )]);
    assert!(allowed_to_ip(&s, "x/a", "192.0.2.1", Tcp, 443));
    assert!(!allowed_to_ip(&s, "x/a", "192.0.2.200", Tcp, 443));
    assert!(!allowed_to_ip(&s, "x/a", "198.51.100.1", Tcp, 443));
}

#[test]
fn ipv6_ip_blocks_and_dual_stack_pods_are_enforced_per_family() {
    let mut s = cluster(vec![ingress(
        "x",
        "p",
        json!({}),
        json!([{"from": [{"ipBlock": {"cidr": "fd00::/64"}}]}]),
    )]);
    let mut pods: Vec<_> = s.pods.iter().map(|p| (**p).clone()).collect();
    pods[0] = pods[0].clone().extra_ip("fd00::1"); // x/a
    pods[2] = pods[2].clone().extra_ip("fd00::2"); // y/a
    pods[3] = pods[3].clone().extra_ip("fd01::3"); // y/c
    s.pods = pods.into_iter().map(std::sync::Arc::new).collect();
    let ip = |t: &str| t.parse::<IpAddr>().unwrap();
    assert!(allowed_ips(
        &s,
        "node-1",
        "node-1",
        ip("fd00::2"),
        ip("fd00::1"),
        Tcp,
        80
    ));
    assert!(!allowed_ips(
        &s,
        "node-2",
        "node-1",
        ip("fd01::3"),
        ip("fd00::1"),
        Tcp,
        80
    ));
    assert!(
        !allowed(&s, "y/a", "x/a", Tcp, 80),
        "IPv4 address is outside the block"
    );
    // Both addresses of x/a dispatch to its chain.
    let plan = compile(&s, "node-1").plan;
    assert!(plan.pod_chain(Direction::Ingress, ip("fd00::1")).is_some());
    assert!(plan.pod_chain(Direction::Ingress, ip("10.0.1.1")).is_some());
}

// ---- ports ----

#[test]
fn the_protocol_defaults_to_tcp() {
    let s = cluster(vec![ingress(
        "x",
        "p",
        json!({}),
        json!([{"ports": [{"port": 53}]}]),
    )]);
    assert!(allowed(&s, "y/a", "x/a", Tcp, 53));
    assert!(!allowed(&s, "y/a", "x/a", Udp, 53));
}

#[test]
fn a_port_entry_without_port_allows_every_port_of_its_protocol() {
    let s = cluster(vec![ingress(
        "x",
        "p",
        json!({}),
        json!([{"ports": [{"protocol": "UDP"}]}]),
    )]);
    assert!(allowed(&s, "y/a", "x/a", Udp, 1));
    assert!(allowed(&s, "y/a", "x/a", Udp, 65535));
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 80));
}

#[test]
fn end_port_allows_an_inclusive_range() {
    let s = cluster(vec![ingress(
        "x",
        "p",
        json!({}),
        json!([{"ports": [{"port": 8000, "endPort": 8010}]}]),
    )]);
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 7999));
    assert!(allowed(&s, "y/a", "x/a", Tcp, 8000));
    assert!(allowed(&s, "y/a", "x/a", Tcp, 8010));
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 8011));
}

#[test]
fn sctp_ports_are_matched_as_sctp_only() {
    let s = cluster(vec![ingress(
        "x",
        "p",
        json!({}),
        json!([{"ports": [{"port": 80, "protocol": "SCTP"}]}]),
    )]);
    assert!(allowed(&s, "y/a", "x/a", Sctp, 80));
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 80));
}

#[test]
fn an_ingress_named_port_resolves_against_the_selected_pod() {
    let s = cluster(vec![ingress(
        "x",
        "p",
        json!({}),
        json!([{"ports": [{"port": "http"}]}]),
    )]);
    assert!(allowed(&s, "y/a", "x/b", Tcp, 8080));
    assert!(
        !allowed(&s, "y/a", "x/b", Tcp, 9090),
        "9090 is http on y/c, not on x/b"
    );
    assert!(
        !allowed(&s, "y/a", "x/a", Tcp, 8080),
        "x/a has no port named http"
    );
}

#[test]
fn an_egress_named_port_resolves_per_destination_pod() {
    let s = cluster(vec![egress(
        "x",
        "p",
        json!({"matchLabels": {"app": "a"}}),
        json!([{"ports": [{"port": "http"}]}]),
    )]);
    assert!(allowed(&s, "x/a", "x/b", Tcp, 8080));
    assert!(allowed(&s, "x/a", "y/c", Tcp, 9090));
    assert!(!allowed(&s, "x/a", "x/b", Tcp, 9090));
    assert!(!allowed(&s, "x/a", "y/c", Tcp, 8080));
}

#[test]
fn a_named_port_never_matches_an_ip_block_destination() {
    let s = cluster(vec![egress(
        "x",
        "p",
        json!({"matchLabels": {"app": "a"}}),
        json!([{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": "http"}]}]),
    )]);
    assert!(!allowed_to_ip(&s, "x/a", "192.0.2.1", Tcp, 8080));
    assert!(!allowed(&s, "x/a", "x/b", Tcp, 8080));
}

#[test]
fn a_named_port_must_match_the_protocol_too() {
    let s = cluster(vec![ingress(
        "x",
        "p",
        json!({}),
        json!([{"ports": [{"port": "dns", "protocol": "TCP"}]}]),
    )]);
    assert!(
        !allowed(&s, "y/a", "x/b", Tcp, 5353),
        "dns is a UDP port on x/b"
    );
    let s = cluster(vec![ingress(
        "x",
        "p",
        json!({}),
        json!([{"ports": [{"port": "dns", "protocol": "UDP"}]}]),
    )]);
    assert!(allowed(&s, "y/a", "x/b", Udp, 5353));
}

// ---- which pods count ----

#[test]
fn host_network_pods_are_never_selected_nor_matched_by_selectors() {
    let mut s = cluster(vec![
        deny_ingress("x", "deny", json!({})),
        ingress(
            "y",
            "from-x",
            json!({}),
            json!([{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]),
        ),
    ]);
    s.add_pod(mk_pod("x", "host", "node-1", "192.168.0.1", &[]).host_network());
    let plan = compile(&s, "node-1").plan;
    assert!(plan.pods.iter().all(|p| p.pod != key("x/host")));
    let host: IpAddr = "192.168.0.1".parse().unwrap();
    let ya: IpAddr = "10.0.1.2".parse().unwrap();
    assert!(
        !plan.allows(host, ya, Tcp, 80),
        "its node address is no pod of x"
    );
}

#[test]
fn pods_without_an_address_or_that_finished_are_ignored() {
    let mut s = cluster(vec![ingress(
        "x",
        "p",
        json!({}),
        json!([{"from": [{"podSelector": {}}]}]),
    )]);
    s.add_pod(mk_pod("x", "done", "node-1", "10.0.1.50", &[]).phase("Succeeded"));
    s.add_pod(mk_pod("x", "failed", "node-1", "10.0.1.51", &[]).phase("Failed"));
    s.add_pod(mk_pod("x", "pending", "node-1", "10.0.1.52", &[]).no_ip());
    let plan = compile(&s, "node-1").plan;
    assert_eq!(plan.pods.len(), 1, "only x/a gets a chain on node-1");
    let done: IpAddr = "10.0.1.50".parse().unwrap();
    assert!(!plan.allows(done, "10.0.1.1".parse().unwrap(), Tcp, 80));
}

#[test]
fn a_node_compiles_chains_only_for_its_own_pods() {
    let s = cluster(vec![deny_ingress("x", "deny", json!({}))]);
    let plan = compile(&s, "node-1").plan;
    let pods: Vec<String> = plan.pods.iter().map(|p| p.pod.to_string()).collect();
    assert_eq!(pods, ["x/a"]);
}

#[test]
fn egress_isolation_covers_destinations_that_are_no_pods() {
    let s = cluster(vec![egress(
        "x",
        "p",
        json!({}),
        json!([{"to": [{"podSelector": {}}]}]),
    )]);
    assert!(!allowed_to_ip(&s, "x/a", "8.8.8.8", Udp, 53));
    assert!(allowed(&s, "x/a", "x/b", Udp, 53));
}

// ---- invalid policies fail closed ----

fn diagnostics(s: &Snapshot) -> Vec<(Severity, String, String)> {
    compile(s, "node-1")
        .diagnostics
        .into_iter()
        .map(|d| (d.severity, d.policy.to_string(), d.field))
        .collect()
}

#[test]
fn a_bad_cidr_is_reported_and_its_rule_allows_nothing_while_pods_stay_isolated() {
    let s = cluster(vec![ingress(
        "x",
        "bad",
        json!({}),
        json!([{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}, {"ports": [{"port": 81}]}]),
    )]);
    assert_eq!(
        diagnostics(&s),
        [(
            Severity::Warning,
            "x/bad".into(),
            "spec.ingress[0].from[0].ipBlock.cidr".into()
        )]
    );
    assert!(
        !allowed(&s, "y/a", "x/a", Tcp, 80),
        "still isolated; broken rule allows nothing"
    );
    assert!(
        allowed(&s, "y/a", "x/a", Tcp, 81),
        "the valid rule is enforced"
    );
}

#[test]
fn an_except_outside_its_cidr_is_reported() {
    let s = cluster(vec![ingress(
        "x",
        "bad",
        json!({}),
        json!([{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]),
    )]);
    assert_eq!(
        diagnostics(&s)[0].2,
        "spec.ingress[0].from[0].ipBlock.except[0]"
    );
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 80));
}

#[test]
fn bad_ports_are_reported_by_field() {
    let cases = [
        (
            json!({"protocol": "ICMP"}),
            "spec.ingress[0].ports[0].protocol",
        ),
        (
            json!({"port": 90, "endPort": 80}),
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            json!({"port": "http", "endPort": 80}),
            "spec.ingress[0].ports[0].endPort",
        ),
        (json!({"port": 0}), "spec.ingress[0].ports[0].port"),
        (
            json!({"port": "Not_A_Name"}),
            "spec.ingress[0].ports[0].port",
        ),
    ];
    for (port, field) in cases {
        let s = cluster(vec![ingress(
            "x",
            "bad",
            json!({}),
            json!([{"ports": [port]}]),
        )]);
        assert_eq!(
            diagnostics(&s),
            [(Severity::Warning, "x/bad".into(), field.into())]
        );
        assert!(
            !allowed(&s, "y/a", "x/a", Tcp, 80),
            "{field}: isolated, nothing allowed"
        );
    }
}

#[test]
fn a_peer_selector_that_cannot_be_read_disables_its_rule() {
    let unreadable = [
        (
            json!({"key": "app", "operator": "In", "values": []}),
            "matchExpressions[0].values",
        ),
        // Read as "not in nothing", it would match every pod.
        (
            json!({"key": "app", "operator": "NotIn", "values": []}),
            "matchExpressions[0].values",
        ),
        (
            json!({"key": "app", "operator": "Exists", "values": ["a"]}),
            "matchExpressions[0].values",
        ),
        (
            json!({"key": "app", "operator": "DoesNotExist", "values": ["x"]}),
            "matchExpressions[0].values",
        ),
        (
            json!({"key": "app", "operator": "Matches", "values": ["b"]}),
            "matchExpressions[0].operator",
        ),
    ];
    for (expr, field) in unreadable {
        for selector in ["podSelector", "namespaceSelector"] {
            let s = cluster(vec![ingress(
                "x",
                "bad",
                json!({}),
                json!([{"from": [{selector: {"matchExpressions": [expr]}}]}]),
            )]);
            assert_eq!(
                diagnostics(&s),
                [(
                    Severity::Warning,
                    "x/bad".into(),
                    format!("spec.ingress[0].from[0].{selector}.{field}")
                )],
                "{expr}"
            );
            assert!(!allowed(&s, "x/b", "x/a", Tcp, 80), "{selector} {expr}");
            assert!(!allowed(&s, "y/a", "x/a", Tcp, 80), "{selector} {expr}");
        }
    }
}

#[test]
fn a_peer_with_ip_block_and_selector_together_is_rejected() {
    let s = cluster(vec![ingress(
        "x",
        "bad",
        json!({}),
        json!([{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}, "podSelector": {}}]}]),
    )]);
    assert_eq!(diagnostics(&s)[0].2, "spec.ingress[0].from[0]");
    assert!(!allowed(&s, "x/b", "x/a", Tcp, 80));
}

#[test]
fn a_policy_whose_pod_selector_cannot_be_read_isolates_its_whole_namespace_and_allows_nothing() {
    let s = cluster(vec![
        mk_policy(
            "x",
            "bad",
            json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["b"]}]},
                   "policyTypes": ["Ingress"], "ingress": [{}]}),
        ),
        deny_ingress("y", "deny", json!({"matchLabels": {"app": "c"}})),
    ]);
    assert_eq!(
        diagnostics(&s),
        [(
            Severity::Error,
            "x/bad".into(),
            "spec.podSelector.matchExpressions[0].operator".into()
        )]
    );
    // Every pod of x, on both nodes, whatever the selector meant; its
    // allow-all rule is not applied.
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 80));
    assert!(!allowed(&s, "y/a", "x/b", Tcp, 80));
    assert!(!allowed(&s, "x/b", "x/a", Tcp, 80));
    // Egress is not among its directions; other policies still apply.
    assert!(allowed(&s, "x/a", "y/a", Tcp, 80));
    assert!(!allowed(&s, "x/a", "y/c", Tcp, 80));
    let plan = compile(&s, "node-1").plan;
    let chain = plan
        .pod_chain(Direction::Ingress, "10.0.1.1".parse().unwrap())
        .expect("x/a is isolated");
    assert_eq!(chain.policies, [key("x/bad")]);
}

#[test]
fn an_unreadable_pod_selector_isolates_the_directions_the_policy_declares() {
    let s = cluster(vec![mk_policy(
        "x",
        "bad",
        json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": []}]},
               "egress": [{"to": [{"namespaceSelector": {}}]}]}),
    )]);
    assert_eq!(diagnostics(&s)[0].0, Severity::Error);
    // No policyTypes and an egress rule: Ingress and Egress, allowing nothing.
    assert!(!allowed(&s, "x/a", "y/a", Tcp, 80));
    assert!(!allowed(&s, "x/b", "y/c", Tcp, 80));
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 80));
    assert!(
        allowed(&s, "y/a", "y/c", Tcp, 80),
        "other namespaces stay open"
    );
}

#[test]
fn label_values_that_break_label_syntax_are_matched_literally() {
    let mut s = cluster(vec![
        // The legacy deny-all: a stored value with a space.
        mk_policy(
            "x",
            "deny-all",
            json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["retired app"]}]},
                   "policyTypes": ["Ingress", "Egress"]}),
        ),
        ingress(
            "y",
            "from-retired",
            json!({"matchLabels": {"app": "c"}}),
            json!([{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "retired app"}}}]}]),
        ),
    ]);
    s.add_pod(mk_pod(
        "x",
        "old",
        "node-2",
        "10.0.2.9",
        &[("app", "retired app")],
    ));
    assert_eq!(diagnostics(&s), []);
    // Every pod of x but the one labelled exactly "retired app".
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 80));
    assert!(!allowed(&s, "y/a", "x/b", Tcp, 80));
    assert!(!allowed(&s, "x/a", "y/a", Tcp, 80));
    assert!(allowed(&s, "y/a", "x/old", Tcp, 80));
    // The matchLabels value selects that pod, and only it.
    assert!(allowed(&s, "x/old", "y/c", Tcp, 80));
    assert!(!allowed(&s, "y/a", "y/c", Tcp, 80));
}

#[test]
fn a_value_with_commas_is_one_value_not_a_list() {
    // Two selectors kube would print alike (`app=a,tier=web`), in policies
    // of pods on one node, must not share one peer set.
    let mut s = cluster(vec![
        ingress(
            "x",
            "from-a-web",
            json!({"matchLabels": {"app": "t"}}),
            json!([{"from": [{"podSelector": {"matchLabels": {"app": "a", "tier": "web"}}}]}]),
        ),
        ingress(
            "x",
            "from-odd",
            json!({"matchLabels": {"app": "a"}}),
            json!([{"from": [{"podSelector": {"matchLabels": {"app": "a,tier=web"}}}]}]),
        ),
    ]);
    s.add_pod(mk_pod("x", "t", "node-1", "10.0.1.7", &[("app", "t")]));
    s.add_pod(mk_pod(
        "x",
        "a2",
        "node-2",
        "10.0.2.9",
        &[("app", "a"), ("tier", "web")],
    ));
    assert!(allowed(&s, "x/a2", "x/t", Tcp, 80));
    assert!(!allowed(&s, "x/a2", "x/a", Tcp, 80));
    s.add_pod(mk_pod(
        "x",
        "odd",
        "node-2",
        "10.0.2.8",
        &[("app", "a,tier=web")],
    ));
    assert!(allowed(&s, "x/odd", "x/a", Tcp, 80));
    assert!(!allowed(&s, "x/odd", "x/t", Tcp, 80));
}

#[test]
fn an_unknown_policy_type_isolates_both_directions() {
    let s = cluster(vec![mk_policy(
        "x",
        "typo",
        json!({"podSelector": {}, "policyTypes": ["ingress"], "ingress": [{}]}),
    )]);
    assert_eq!(diagnostics(&s)[0].2, "spec.policyTypes[0]");
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 80));
    assert!(!allowed(&s, "x/a", "y/a", Tcp, 80));
}

#[test]
fn two_local_pods_with_one_address_are_reported_with_owner_and_loser() {
    let mut s = cluster(vec![deny_ingress("x", "deny", json!({}))]);
    s.add_pod(mk_pod("x", "twin", "node-1", "10.0.1.1", &[]).created(5));
    let c = compile(&s, "node-1");
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let w = &c.warnings[0];
    assert!(
        w.contains("10.0.1.1")
            && w.contains("belongs to x/twin (node node-1)")
            && w.contains("x/a (node node-1) lost it"),
        "{w}"
    );
    assert!(
        compile(&s, "node-2").warnings.is_empty(),
        "reported where a claimant runs"
    );
}

#[test]
fn a_reused_address_gets_the_rules_of_its_newest_pod_only() {
    // Issue #11 row D: y/new is given x/a's address while x/a is still in
    // the API. x lets everything in, y denies; a policy of x admits x/a
    // (app=a) to x/b.
    let mut s = cluster(vec![
        ingress(
            "x",
            "open",
            json!({"matchLabels": {"app": "a"}}),
            json!([{}]),
        ),
        ingress(
            "x",
            "b-from-a",
            json!({"matchLabels": {"app": "b"}}),
            json!([{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}]}]),
        ),
        deny_ingress("y", "deny", json!({})),
    ]);
    let (reused, x_b) = ("10.0.1.1".parse().unwrap(), "10.0.2.1".parse().unwrap());
    let to_reused = |s: &Snapshot| allowed_ips(s, "node-2", "node-1", x_b, reused, Tcp, 80);
    let from_reused = |s: &Snapshot| allowed_ips(s, "node-1", "node-2", reused, x_b, Tcp, 80);
    assert!(to_reused(&s) && from_reused(&s), "x/a's rules");
    s.add_pod(mk_pod("y", "new", "node-1", "10.0.1.1", &[]).created(10));
    assert!(!to_reused(&s), "y/new's deny applies to the address");
    assert!(!from_reused(&s), "x's peer set no longer holds it");
    // The old pod, even being deleted, does not get it back while y/new
    // holds it; y/new being deleted gives it back.
    let key_new = key("y/new");
    s.pods.retain(|p| p.key != key_new);
    s.add_pod(
        mk_pod("y", "new", "node-1", "10.0.1.1", &[])
            .created(10)
            .deleting(),
    );
    assert!(to_reused(&s) && from_reused(&s), "x/a's rules again");
}

#[test]
fn a_pod_whose_namespace_object_is_unknown_matches_no_namespace_selector() {
    // Issue #11 row F: the intruder's pod is seen before its Namespace.
    let mut s = cluster(vec![ingress(
        "x",
        "not-untrusted",
        json!({}),
        json!([{"from": [{"namespaceSelector": {"matchExpressions": [
            {"key": "env", "operator": "NotIn", "values": ["untrusted"]}]}}]}]),
    )]);
    s.add_pod(mk_pod("evil", "intruder", "node-2", "10.0.2.66", &[]));
    assert!(!allowed(&s, "evil/intruder", "x/a", Tcp, 80));
    assert!(allowed(&s, "y/a", "x/a", Tcp, 80));
    s.add_namespace(mk_ns("evil", &[("env", "untrusted")]));
    assert!(!allowed(&s, "evil/intruder", "x/a", Tcp, 80));
    s.add_namespace(mk_ns("evil", &[("env", "dev")]));
    assert!(allowed(&s, "evil/intruder", "x/a", Tcp, 80));
}

#[test]
fn pod_selector_peers_need_no_namespace_object() {
    let mut s = cluster(vec![ingress(
        "x",
        "from-b",
        json!({"matchLabels": {"app": "a"}}),
        json!([{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]),
    )]);
    s.namespaces.remove("x");
    assert!(allowed(&s, "x/b", "x/a", Tcp, 80));
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 80));
}

#[test]
fn an_empty_policy_types_list_is_defaulted_like_an_absent_one() {
    let s = cluster(vec![mk_policy(
        "x",
        "p",
        json!({"podSelector": {}, "policyTypes": []}),
    )]);
    assert!(!allowed(&s, "y/a", "x/a", Tcp, 80), "ingress is isolated");
    assert!(allowed(&s, "x/a", "y/a", Tcp, 80), "egress stays open");
}
