//! Unit tests of the reference NetworkPolicy evaluator (tests/common/reference.rs),
//! one behaviour of the networking.k8s.io/v1 spec each.

mod common;

use common::reference::{self, allows, allows_ip, allows_packet, cidr_contains};
use common::*;
use nftpol::compiler::snapshot::{PodInfo, Protocol, Snapshot};

use Protocol::{Sctp, Tcp, Udp};

/// Two namespaces, `prod` (team=red) and `dev` (team=blue), with a web pod,
/// a db pod and a client pod; then the given policies.
fn cluster(policies: Vec<k8s_openapi::api::networking::v1::NetworkPolicy>) -> Snapshot {
    snapshot(
        [
            mk_ns("prod", &[("team", "red")]),
            mk_ns("dev", &[("team", "blue")]),
        ],
        [
            mk_pod("prod", "web", "node-0", "10.244.0.10", &[("app", "web")]),
            mk_pod("prod", "db", "node-1", "10.244.1.11", &[("app", "db")]),
            mk_pod(
                "dev",
                "client",
                "node-0",
                "10.244.0.12",
                &[("app", "client")],
            ),
        ],
        policies,
    )
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

/// The db pod accepts ingress only from the given peers on the given ports.
fn db_ingress(rule: serde_json::Value) -> k8s_openapi::api::networking::v1::NetworkPolicy {
    mk_policy(
        "prod",
        "db-ingress",
        json!({
            "podSelector": { "matchLabels": { "app": "db" } },
            "ingress": [rule],
        }),
    )
}

#[test]
fn no_policy_allows_everything() {
    let snap = cluster(vec![]);
    assert!(allows(
        &snap,
        &key("dev/client"),
        &key("prod/db"),
        Tcp,
        5432
    ));
    assert!(allows(&snap, &key("prod/db"), &key("dev/client"), Sctp, 1));
    assert!(allows_ip(&snap, &key("prod/web"), ip("192.0.2.1"), Udp, 53));
}

#[test]
fn ingress_isolated_pod_denies_unlisted_peer() {
    let snap = cluster(vec![db_ingress(json!({
        "from": [{ "podSelector": { "matchLabels": { "app": "web" } } }],
    }))]);
    assert!(allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 5432));
    assert!(!allows(
        &snap,
        &key("dev/client"),
        &key("prod/db"),
        Tcp,
        5432
    ));
    // Pods the policy does not select stay open.
    assert!(allows(&snap, &key("dev/client"), &key("prod/web"), Tcp, 80));
}

#[test]
fn policy_in_another_namespace_does_not_isolate() {
    let snap = cluster(vec![mk_policy(
        "dev",
        "deny-all",
        json!({ "podSelector": {} }),
    )]);
    assert!(allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 80));
    assert!(!allows(
        &snap,
        &key("prod/web"),
        &key("dev/client"),
        Tcp,
        80
    ));
}

#[test]
fn empty_ingress_list_denies_all_ingress() {
    let snap = cluster(vec![mk_policy(
        "prod",
        "deny",
        json!({ "podSelector": {}, "ingress": [], "policyTypes": ["Ingress"] }),
    )]);
    assert!(!allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 80));
    assert!(!allows(
        &snap,
        &key("dev/client"),
        &key("prod/web"),
        Udp,
        53
    ));
    // Egress from the isolated pods is untouched.
    assert!(allows(&snap, &key("prod/web"), &key("dev/client"), Tcp, 80));
}

#[test]
fn absent_policy_types_with_egress_rules_isolates_egress_too() {
    let snap = cluster(vec![mk_policy(
        "prod",
        "web",
        json!({
            "podSelector": { "matchLabels": { "app": "web" } },
            "egress": [{ "ports": [{ "port": 53, "protocol": "UDP" }] }],
        }),
    )]);
    let web = key("prod/web");
    assert!(allows_ip(&snap, &web, ip("10.96.0.10"), Udp, 53));
    assert!(!allows_ip(&snap, &web, ip("10.96.0.10"), Tcp, 443));
    // Ingress is isolated as well (implicit "Ingress") with no rule: denied.
    assert!(!allows(&snap, &key("prod/db"), &web, Tcp, 80));
}

#[test]
fn absent_policy_types_with_empty_egress_list_leaves_egress_open() {
    let snap = cluster(vec![mk_policy(
        "prod",
        "web",
        json!({ "podSelector": { "matchLabels": { "app": "web" } }, "egress": [] }),
    )]);
    assert!(allows_ip(
        &snap,
        &key("prod/web"),
        ip("192.0.2.1"),
        Tcp,
        443
    ));
    assert!(!allows(&snap, &key("prod/db"), &key("prod/web"), Tcp, 80));
}

#[test]
fn empty_policy_types_list_is_defaulted_like_an_absent_one() {
    let snap = cluster(vec![mk_policy(
        "prod",
        "web",
        json!({
            "podSelector": { "matchLabels": { "app": "web" } },
            "policyTypes": [],
            "egress": [{ "ports": [{ "port": 53, "protocol": "UDP" }] }],
        }),
    )]);
    assert!(!allows(&snap, &key("prod/db"), &key("prod/web"), Tcp, 80));
    assert!(!allows_ip(
        &snap,
        &key("prod/web"),
        ip("192.0.2.1"),
        Tcp,
        443
    ));
}

#[test]
fn egress_only_policy_leaves_ingress_open() {
    let snap = cluster(vec![mk_policy(
        "prod",
        "egress",
        json!({ "podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}] }),
    )]);
    assert!(allows(&snap, &key("dev/client"), &key("prod/db"), Tcp, 80));
    assert!(!allows(&snap, &key("prod/db"), &key("dev/client"), Tcp, 80));
    // Same namespace: egress of web is denied even though db's ingress is open.
    assert!(!allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 80));
}

#[test]
fn connection_needs_both_source_egress_and_destination_ingress() {
    let snap = cluster(vec![
        mk_policy(
            "dev",
            "client-egress",
            json!({
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{ "ports": [{ "port": 80 }] }],
            }),
        ),
        db_ingress(json!({ "ports": [{ "port": 5432 }] })),
    ]);
    let (client, db) = (key("dev/client"), key("prod/db"));
    assert!(
        !allows(&snap, &client, &db, Tcp, 80),
        "db ingress denies 80"
    );
    assert!(
        !allows(&snap, &client, &db, Tcp, 5432),
        "client egress denies 5432"
    );
    assert!(allows(&snap, &client, &key("prod/web"), Tcp, 80));
}

#[test]
fn policies_selecting_the_same_pod_add_up() {
    let snap = cluster(vec![
        db_ingress(json!({ "from": [{ "podSelector": { "matchLabels": { "app": "web" } } }] })),
        mk_policy(
            "prod",
            "from-dev",
            json!({
                "podSelector": {},
                "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": { "team": "blue" } } }] }],
            }),
        ),
    ]);
    assert!(allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 1));
    assert!(allows(&snap, &key("dev/client"), &key("prod/db"), Tcp, 1));
    // web is selected by from-dev only.
    assert!(!allows(&snap, &key("prod/db"), &key("prod/web"), Tcp, 1));
}

#[test]
fn rule_needs_a_matching_peer_and_a_matching_port() {
    let snap = cluster(vec![db_ingress(json!({
        "from": [{ "podSelector": { "matchLabels": { "app": "web" } } }],
        "ports": [{ "port": 5432 }],
    }))]);
    assert!(allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 5432));
    assert!(!allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 80));
    assert!(!allows(
        &snap,
        &key("dev/client"),
        &key("prod/db"),
        Tcp,
        5432
    ));
}

#[test]
fn notin_matches_missing_key() {
    let snap = cluster(vec![db_ingress(json!({
        "from": [{ "podSelector": { "matchExpressions": [
            { "key": "tier", "operator": "NotIn", "values": ["fe"] },
        ] } }],
    }))]);
    // web has no tier label at all.
    assert!(allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 80));
}

#[test]
fn in_requires_key_present_with_listed_value() {
    let sel = |op: &str, values: &[&str]| {
        let mut req = json!({ "key": "app", "operator": op });
        if !values.is_empty() {
            req["values"] = json!(values);
        }
        serde_json::from_value(json!({ "matchExpressions": [req] })).unwrap()
    };
    let web = labels(&[("app", "web")]);
    let none = labels(&[]);
    let m = common::reference::selector_matches;
    assert!(m(&sel("In", &["web", "db"]), &web));
    assert!(!m(&sel("In", &["db"]), &web));
    assert!(!m(&sel("In", &["web"]), &none));
    assert!(!m(&sel("NotIn", &["web"]), &web));
    assert!(m(&sel("NotIn", &["web"]), &none));
    assert!(m(&sel("Exists", &[]), &web));
    assert!(!m(&sel("Exists", &[]), &none));
    assert!(!m(&sel("DoesNotExist", &[]), &web));
    assert!(m(&sel("DoesNotExist", &[]), &none));
}

#[test]
fn match_labels_and_match_expressions_are_anded() {
    let sel = serde_json::from_value(json!({
        "matchLabels": { "app": "web" },
        "matchExpressions": [{ "key": "tier", "operator": "Exists" }],
    }))
    .unwrap();
    let m = common::reference::selector_matches;
    assert!(m(&sel, &labels(&[("app", "web"), ("tier", "fe")])));
    assert!(!m(&sel, &labels(&[("app", "web")])));
    assert!(!m(&sel, &labels(&[("app", "db"), ("tier", "fe")])));
}

#[test]
fn pod_selector_peer_only_matches_the_policy_namespace() {
    let snap = cluster(vec![db_ingress(json!({
        "from": [{ "podSelector": { "matchLabels": { "app": "client" } } }],
    }))]);
    // The client pod lives in dev, the policy in prod.
    assert!(!allows(&snap, &key("dev/client"), &key("prod/db"), Tcp, 80));
}

#[test]
fn namespace_selector_alone_matches_every_pod_of_matching_namespaces() {
    let snap = cluster(vec![db_ingress(json!({
        "from": [{ "namespaceSelector": { "matchLabels": { "team": "blue" } } }],
    }))]);
    assert!(allows(&snap, &key("dev/client"), &key("prod/db"), Tcp, 80));
    assert!(!allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 80));
}

#[test]
fn empty_namespace_selector_matches_every_namespace() {
    let snap = cluster(vec![db_ingress(
        json!({ "from": [{ "namespaceSelector": {} }] }),
    )]);
    assert!(allows(&snap, &key("dev/client"), &key("prod/db"), Tcp, 80));
    assert!(allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 80));
    // ...but only pods: a non-pod address is no member of any namespace.
    let snap = cluster(vec![mk_policy(
        "prod",
        "egress",
        json!({
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{ "to": [{ "namespaceSelector": {} }] }],
        }),
    )]);
    assert!(!allows_ip(
        &snap,
        &key("prod/web"),
        ip("192.0.2.1"),
        Tcp,
        80
    ));
    assert!(allows(&snap, &key("prod/web"), &key("dev/client"), Tcp, 80));
}

#[test]
fn namespace_selector_can_use_the_automatic_name_label() {
    let snap = cluster(vec![db_ingress(json!({
        "from": [{ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "dev" } } }],
    }))]);
    assert!(allows(&snap, &key("dev/client"), &key("prod/db"), Tcp, 80));
    assert!(!allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 80));
}

#[test]
fn pod_and_namespace_selector_in_one_peer_are_anded() {
    let rule = json!({
        "from": [{
            "namespaceSelector": { "matchLabels": { "team": "blue" } },
            "podSelector": { "matchLabels": { "app": "web" } },
        }],
    });
    let mut snap = cluster(vec![db_ingress(rule)]);
    snap.add_pod(mk_pod(
        "dev",
        "web",
        "node-1",
        "10.244.1.13",
        &[("app", "web")],
    ));
    assert!(allows(&snap, &key("dev/web"), &key("prod/db"), Tcp, 80));
    assert!(
        !allows(&snap, &key("dev/client"), &key("prod/db"), Tcp, 80),
        "wrong pod labels"
    );
    assert!(
        !allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 80),
        "wrong namespace"
    );
}

#[test]
fn separate_peers_of_a_rule_are_ored() {
    let snap = cluster(vec![db_ingress(json!({
        "from": [
            { "namespaceSelector": { "matchLabels": { "team": "blue" } } },
            { "podSelector": { "matchLabels": { "app": "web" } } },
        ],
    }))]);
    assert!(allows(&snap, &key("dev/client"), &key("prod/db"), Tcp, 80));
    assert!(allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 80));
}

#[test]
fn empty_from_matches_every_peer() {
    let snap = cluster(vec![db_ingress(
        json!({ "from": [], "ports": [{ "port": 80 }] }),
    )]);
    assert!(allows(&snap, &key("dev/client"), &key("prod/db"), Tcp, 80));
    let snap = cluster(vec![mk_policy(
        "prod",
        "egress",
        json!({ "podSelector": {}, "policyTypes": ["Egress"], "egress": [{ "ports": [{ "port": 80 }] }] }),
    )]);
    assert!(allows_ip(&snap, &key("prod/web"), ip("192.0.2.1"), Tcp, 80));
}

#[test]
fn ipblock_matches_pod_addresses() {
    let snap = cluster(vec![db_ingress(
        json!({ "from": [{ "ipBlock": { "cidr": "10.244.0.0/24" } }] }),
    )]);
    assert!(allows(&snap, &key("dev/client"), &key("prod/db"), Tcp, 80));
    assert!(allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 80));
}

#[test]
fn ipblock_except_excludes_address() {
    let snap = cluster(vec![db_ingress(json!({
        "from": [{ "ipBlock": { "cidr": "10.244.0.0/16", "except": ["10.244.0.12/32"] } }],
    }))]);
    assert!(allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 80));
    assert!(!allows(&snap, &key("dev/client"), &key("prod/db"), Tcp, 80));
}

#[test]
fn ipblock_matches_external_addresses_of_either_family() {
    let snap = cluster(vec![mk_policy(
        "prod",
        "egress",
        json!({
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{ "to": [
                { "ipBlock": { "cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"] } },
                { "ipBlock": { "cidr": "2001:db8::/32" } },
            ] }],
        }),
    )]);
    let web = key("prod/web");
    assert!(allows_ip(&snap, &web, ip("192.0.2.1"), Tcp, 443));
    assert!(!allows_ip(&snap, &web, ip("10.96.0.10"), Tcp, 443));
    assert!(allows_ip(&snap, &web, ip("2001:db8::1"), Tcp, 443));
    assert!(!allows_ip(&snap, &web, ip("fd00::1"), Tcp, 443));
}

#[test]
fn ipblock_of_one_family_matches_a_dual_stack_pod_only_by_that_address_per_packet() {
    let mut snap = cluster(vec![db_ingress(json!({
        "from": [{ "ipBlock": { "cidr": "fd00:10:244::/48" } }],
    }))]);
    snap.pods.retain(|p| p.key != key("dev/client"));
    snap.add_pod(
        mk_pod(
            "dev",
            "client",
            "node-0",
            "10.244.0.12",
            &[("app", "client")],
        )
        .extra_ip("fd00:10:244::c"),
    );
    snap.pods.retain(|p| p.key != key("prod/db"));
    snap.add_pod(
        mk_pod("prod", "db", "node-1", "10.244.1.11", &[("app", "db")])
            .extra_ip("fd00:10:244:1::b"),
    );
    let (client, db) = (key("dev/client"), key("prod/db"));
    // Pod level: some address of the client is in the block.
    assert!(allows(&snap, &client, &db, Tcp, 80));
    // Packet level: only the IPv6 packet carries that address.
    assert!(allows_packet(
        &snap,
        &client,
        ip("fd00:10:244::c"),
        &db,
        ip("fd00:10:244:1::b"),
        Tcp,
        80
    ));
    assert!(!allows_packet(
        &snap,
        &client,
        ip("10.244.0.12"),
        &db,
        ip("10.244.1.11"),
        Tcp,
        80
    ));
}

#[test]
fn port_range_includes_both_ends() {
    let snap = cluster(vec![db_ingress(
        json!({ "ports": [{ "port": 8000, "endPort": 8080 }] }),
    )]);
    let (web, db) = (key("prod/web"), key("prod/db"));
    assert!(!allows(&snap, &web, &db, Tcp, 7999));
    assert!(allows(&snap, &web, &db, Tcp, 8000));
    assert!(allows(&snap, &web, &db, Tcp, 8080));
    assert!(!allows(&snap, &web, &db, Tcp, 8081));
}

#[test]
fn port_without_number_matches_the_whole_protocol() {
    let snap = cluster(vec![db_ingress(
        json!({ "ports": [{ "protocol": "UDP" }] }),
    )]);
    let (web, db) = (key("prod/web"), key("prod/db"));
    assert!(allows(&snap, &web, &db, Udp, 1));
    assert!(allows(&snap, &web, &db, Udp, 65535));
    assert!(!allows(&snap, &web, &db, Tcp, 53));
}

#[test]
fn protocol_defaults_to_tcp() {
    let snap = cluster(vec![db_ingress(json!({ "ports": [{ "port": 53 }] }))]);
    let (web, db) = (key("prod/web"), key("prod/db"));
    assert!(allows(&snap, &web, &db, Tcp, 53));
    assert!(!allows(&snap, &web, &db, Udp, 53));
    assert!(!allows(&snap, &web, &db, Sctp, 53));
}

#[test]
fn named_port_resolves_per_destination_pod() {
    let snap = snapshot(
        [mk_ns("prod", &[])],
        [
            mk_pod("prod", "a", "node-0", "10.244.0.10", &[("app", "srv")])
                .named_port("http", Tcp, 8080),
            mk_pod("prod", "b", "node-1", "10.244.1.11", &[("app", "srv")])
                .named_port("http", Tcp, 9090),
            mk_pod("prod", "c", "node-1", "10.244.1.12", &[("app", "client")]),
        ],
        [mk_policy(
            "prod",
            "srv",
            json!({ "podSelector": { "matchLabels": { "app": "srv" } }, "ingress": [{ "ports": [{ "port": "http" }] }] }),
        )],
    );
    let c = key("prod/c");
    assert!(allows(&snap, &c, &key("prod/a"), Tcp, 8080));
    assert!(!allows(&snap, &c, &key("prod/a"), Tcp, 9090));
    assert!(allows(&snap, &c, &key("prod/b"), Tcp, 9090));
    assert!(!allows(&snap, &c, &key("prod/b"), Tcp, 8080));
}

#[test]
fn named_port_in_egress_resolves_against_the_destination_pod() {
    let snap = snapshot(
        [mk_ns("prod", &[])],
        [
            mk_pod("prod", "client", "node-0", "10.244.0.10", &[]).named_port("dns", Udp, 5353),
            mk_pod("prod", "dns", "node-1", "10.244.1.11", &[]).named_port("dns", Udp, 53),
        ],
        [mk_policy(
            "prod",
            "egress",
            json!({
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{ "ports": [{ "port": "dns", "protocol": "UDP" }] }],
            }),
        )],
    );
    let (client, dns) = (key("prod/client"), key("prod/dns"));
    assert!(allows(&snap, &client, &dns, Udp, 53));
    assert!(
        !allows(&snap, &client, &dns, Udp, 5353),
        "the source's own dns port is irrelevant"
    );
    // Named ports never match an address that is no pod.
    assert!(!allows_ip(&snap, &client, ip("10.96.0.10"), Udp, 53));
}

#[test]
fn named_port_requires_the_same_protocol() {
    let snap = snapshot(
        [mk_ns("prod", &[])],
        [
            mk_pod("prod", "dns", "node-0", "10.244.0.10", &[("app", "dns")])
                .named_port("dns", Udp, 53)
                .named_port("dns", Tcp, 5353),
            mk_pod("prod", "client", "node-1", "10.244.1.11", &[]),
        ],
        [mk_policy(
            "prod",
            "dns",
            json!({ "podSelector": { "matchLabels": { "app": "dns" } }, "ingress": [{ "ports": [{ "port": "dns" }] }] }),
        )],
    );
    let (client, dns) = (key("prod/client"), key("prod/dns"));
    // The rule's protocol defaults to TCP: dns/TCP is 5353.
    assert!(allows(&snap, &client, &dns, Tcp, 5353));
    assert!(!allows(&snap, &client, &dns, Tcp, 53));
    assert!(!allows(&snap, &client, &dns, Udp, 53));
}

#[test]
fn host_network_pod_is_never_selected_nor_matched_by_selectors() {
    let snap = snapshot(
        [mk_ns("prod", &[])],
        [
            mk_pod("prod", "host", "node-0", "172.18.0.2", &[("app", "web")]).host_network(),
            mk_pod("prod", "web", "node-1", "10.244.1.11", &[("app", "web")]),
            mk_pod("prod", "db", "node-1", "10.244.1.12", &[("app", "db")]),
        ],
        [mk_policy(
            "prod",
            "deny-but-web",
            json!({ "podSelector": {}, "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "app": "web" } } }] }] }),
        )],
    );
    // Not selected: its ingress stays open.
    assert!(allows(&snap, &key("prod/db"), &key("prod/host"), Tcp, 80));
    // Not matched as a peer, despite its labels.
    assert!(!allows(&snap, &key("prod/host"), &key("prod/db"), Tcp, 80));
    assert!(allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 80));
}

#[test]
fn finished_or_unaddressed_pods_are_never_selected_nor_matched() {
    let snap = snapshot(
        [mk_ns("prod", &[])],
        [
            mk_pod("prod", "done", "node-0", "10.244.0.10", &[("app", "web")]).phase("Succeeded"),
            mk_pod("prod", "failed", "node-0", "10.244.0.11", &[("app", "web")]).phase("Failed"),
            mk_pod(
                "prod",
                "pending",
                "node-0",
                "10.244.0.12",
                &[("app", "web")],
            )
            .no_ip(),
            mk_pod("prod", "db", "node-1", "10.244.1.12", &[("app", "db")]),
        ],
        [mk_policy(
            "prod",
            "deny-but-web",
            json!({ "podSelector": {}, "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "app": "web" } } }] }] }),
        )],
    );
    assert!(!allows(&snap, &key("prod/done"), &key("prod/db"), Tcp, 80));
    assert!(!allows(
        &snap,
        &key("prod/failed"),
        &key("prod/db"),
        Tcp,
        80
    ));
    assert!(!allows(
        &snap,
        &key("prod/pending"),
        &key("prod/db"),
        Tcp,
        80
    ));
    assert!(allows(&snap, &key("prod/db"), &key("prod/done"), Tcp, 80));
}

#[test]
fn pod_selectors_never_match_a_non_pod_address() {
    let snap = cluster(vec![mk_policy(
        "prod",
        "egress",
        json!({
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{ "to": [{ "podSelector": {} }] }],
        }),
    )]);
    assert!(!allows_ip(
        &snap,
        &key("prod/web"),
        ip("192.0.2.1"),
        Tcp,
        80
    ));
    assert!(allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 80));
    assert!(!allows(
        &snap,
        &key("prod/web"),
        &key("dev/client"),
        Tcp,
        80
    ));
}

#[test]
fn cidr_matching_respects_prefix_and_family() {
    assert!(cidr_contains("10.244.0.0/16", ip("10.244.255.1")));
    assert!(!cidr_contains("10.244.0.0/16", ip("10.245.0.1")));
    assert!(cidr_contains("0.0.0.0/0", ip("192.0.2.1")));
    assert!(!cidr_contains("0.0.0.0/0", ip("::1")));
    assert!(cidr_contains("::/0", ip("2001:db8::1")));
    assert!(cidr_contains("fd00:10:244:1::/64", ip("fd00:10:244:1::a")));
    assert!(!cidr_contains("fd00:10:244:1::/64", ip("fd00:10:244:2::a")));
    assert!(cidr_contains("10.244.0.12/32", ip("10.244.0.12")));
    assert!(!cidr_contains("10.244.0.12/32", ip("10.244.0.13")));
}

/// dev/client → prod/db on TCP 5432.
fn client_reaches_db(snap: &Snapshot) -> bool {
    allows(snap, &key("dev/client"), &key("prod/db"), Tcp, 5432)
}

#[test]
fn a_namespace_without_its_object_matches_no_namespace_selector() {
    let mut snap = cluster(vec![db_ingress(json!({
        "from": [{ "namespaceSelector": {} }],
    }))]);
    snap.add_pod(mk_pod("evil", "x", "node-0", "10.244.0.66", &[]));
    assert!(!allows(&snap, &key("evil/x"), &key("prod/db"), Tcp, 5432));
    assert!(client_reaches_db(&snap));
    snap.add_namespace(mk_ns("evil", &[]));
    assert!(allows(&snap, &key("evil/x"), &key("prod/db"), Tcp, 5432));
}

#[test]
fn pod_selector_peers_of_a_namespace_without_its_object_still_match() {
    let mut snap = cluster(vec![]);
    snap.namespaces.remove("prod");
    snap.add_policy(db_ingress(json!({
        "from": [{ "podSelector": { "matchLabels": { "app": "web" } } }],
    })));
    assert!(allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 5432));
}

#[test]
fn label_values_are_compared_literally() {
    let mut snap = cluster(vec![mk_policy(
        "prod",
        "deny",
        json!({"podSelector": {"matchExpressions": [
            {"key": "app", "operator": "NotIn", "values": ["retired app"]}]}}),
    )]);
    snap.add_pod(mk_pod(
        "prod",
        "old",
        "node-1",
        "10.244.1.20",
        &[("app", "retired app")],
    ));
    assert!(!client_reaches_db(&snap));
    assert!(allows(&snap, &key("dev/client"), &key("prod/old"), Tcp, 80));
}

#[test]
fn an_unreadable_pod_selector_isolates_the_namespace_and_allows_nothing() {
    let snap = cluster(vec![mk_policy(
        "prod",
        "bad",
        json!({"podSelector": {"matchExpressions": [
            {"key": "app", "operator": "In", "values": []}]},
            "ingress": [{}]}),
    )]);
    assert!(!client_reaches_db(&snap));
    assert!(!allows(
        &snap,
        &key("dev/client"),
        &key("prod/web"),
        Tcp,
        80
    ));
    assert!(allows(&snap, &key("prod/web"), &key("dev/client"), Tcp, 80));
}

#[test]
fn a_rule_with_an_unreadable_peer_selector_allows_nothing() {
    let snap = cluster(vec![db_ingress(json!({
        "from": [
            { "podSelector": { "matchExpressions": [
                {"key": "app", "operator": "NotIn", "values": []}] } },
            { "namespaceSelector": {} },
        ],
    }))]);
    assert!(!client_reaches_db(&snap));
    assert!(!allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 5432));
}

#[test]
fn an_address_belongs_to_its_newest_claimant_not_being_deleted() {
    let old = mk_pod("dev", "old", "node-1", "10.244.1.11", &[]).created(100);
    let snap = |new: PodInfo| {
        let mut s = cluster(vec![]);
        s.pods.retain(|p| p.key != key("prod/db"));
        s.add_pod(old.clone());
        s.add_pod(new);
        s
    };
    let new = mk_pod("prod", "db", "node-1", "10.244.1.11", &[]).created(200);
    let owner = |s: &Snapshot| reference::owner(s, ip("10.244.1.11")).map(|p| p.key.to_string());
    assert_eq!(owner(&snap(new.clone())).as_deref(), Some("prod/db"));
    assert_eq!(
        owner(&snap(new.clone().deleting())).as_deref(),
        Some("dev/old")
    );
    assert_eq!(
        owner(&snap(new.clone().created(100))).as_deref(),
        Some("prod/db"),
        "equally new: the greater namespace/name"
    );
    let mut all_deleting = snap(new.clone().deleting());
    all_deleting.pods.retain(|p| p.key != key("dev/old"));
    all_deleting.add_pod(old.clone().deleting());
    assert_eq!(owner(&all_deleting).as_deref(), Some("prod/db"));
    let s = snap(new);
    assert!(reference::owned_ips(&s, s.pod(&key("dev/old")).unwrap()).is_empty());
}

#[test]
fn a_policy_selecting_an_address_loser_does_not_hold_the_address() {
    // dev/old lost 10.244.1.11 to prod/db: dev's deny-all does not apply to
    // the address, and a peer selecting dev/old does not match it.
    let mut snap = cluster(vec![mk_policy(
        "dev",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )]);
    snap.add_pod(mk_pod("dev", "old", "node-1", "10.244.1.11", &[]).created(1));
    snap.pods.retain(|p| p.key != key("prod/db"));
    snap.add_pod(mk_pod("prod", "db", "node-1", "10.244.1.11", &[("app", "db")]).created(2));
    assert!(allows(&snap, &key("prod/web"), &key("prod/db"), Tcp, 5432));
    assert!(!allows(
        &snap,
        &key("prod/web"),
        &key("dev/client"),
        Tcp,
        80
    ));
}
