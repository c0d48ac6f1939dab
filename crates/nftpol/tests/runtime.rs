//! The runtime edge on the real kernel: nftpol's conntrack client and its
//! check of a node's settings, both working in a network namespace other
//! than the test's own (as `nftpol run --netns` does). Root only: each
//! test prints why and returns when it cannot run.

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use common::lab_ready;
use nftpol::conntrack::{Conntrack, Entry};
use nftpol::watch::node;
use nftpol_lab::lab::{self, DEFAULT_TIMEOUT, Node, NodeConfig, Pod, Port};

/// Conntrack tracks flows in a namespace only once a rule there needs it.
fn track_connections(node: &Node) {
    node.nft()
        .run(
            &["-f", "-"],
            Some(
                b"table inet ct-on {\n\
                  chain forward {\n\
                  type filter hook forward priority 0;\n\
                  ct state established,related accept\n\
                  }\n\
                  }\n",
            ),
        )
        .expect("a table that uses conntrack");
}

fn involves(e: &Entry, ip: IpAddr) -> bool {
    [e.original.src, e.original.dst, e.reply.src, e.reply.dst].contains(&ip)
}

/// Opens a flow from `from` to `to` (answered: the servers echo).
fn flow(from: &Pod, to: IpAddr, port: Port) {
    let answered = lab::probe(
        from.netns(),
        SocketAddr::new(to, port.port),
        port.proto,
        DEFAULT_TIMEOUT,
    )
    .expect("probe");
    assert!(
        answered,
        "{} -> {to} {port} should be answered",
        from.name()
    );
}

#[test]
fn conntrack_entries_of_one_address_are_deleted_and_the_others_stay() {
    if !lab_ready("conntrack_entries_of_one_address_are_deleted_and_the_others_stay") {
        return;
    }
    let node = Node::new(NodeConfig::new("node-1", 1).dual_stack()).expect("create the node");
    track_connections(&node);
    let ports = [Port::tcp(80), Port::udp(53)];
    let pods: Vec<Pod> = [("a", 10), ("b", 11), ("c", 12)]
        .into_iter()
        .map(|(name, host)| {
            let pod = node.add_pod(name, host).expect("create a pod");
            pod.serve(&ports).expect("start the pod's servers");
            pod
        })
        .collect();
    let (a, b, c) = (&pods[0], &pods[1], &pods[2]);
    let b6 = IpAddr::V6(b.ipv6().expect("dual-stack"));
    // a: TCP and UDP over both families to b and to c; and c -> a.
    for to in [b, c] {
        for port in ports {
            flow(a, to.ipv4().into(), port);
            flow(a, IpAddr::V6(to.ipv6().unwrap()), port);
        }
    }
    flow(c, a.ipv4().into(), Port::udp(53));

    // From the test's own namespace, into the node's.
    let mut ct = Conntrack::open(Some(&node.netns().path())).expect("a conntrack socket");
    let before = ct.entries().expect("dump");
    let of_b = |entries: &[Entry]| -> Vec<(u8, bool)> {
        entries
            .iter()
            .filter(|e| involves(e, b.ipv4().into()) || involves(e, b6))
            .map(|e| (e.original.proto, e.original.dst.is_ipv6()))
            .collect()
    };
    let mut seen = of_b(&before);
    seen.sort();
    assert_eq!(
        seen,
        [(6, false), (6, true), (17, false), (17, true)],
        "a's TCP and UDP flows to b over IPv4 and IPv6: {before:?}"
    );
    let others = before.len() - seen.len();
    assert!(others >= 5, "flows to c and from c: {before:?}");

    let deleted = ct
        .delete_involving(&HashSet::from([b.ipv4().into(), b6]))
        .expect("delete");
    assert_eq!(deleted, 4);
    let after = ct.entries().expect("dump");
    assert_eq!(of_b(&after), [], "{after:?}");
    assert_eq!(after.len(), others, "the other flows stay: {after:?}");
    // The conntrack tool agrees.
    let listed = node
        .netns()
        .exec(&["conntrack", "-L"])
        .expect("conntrack -L");
    assert!(!listed.contains(&format!("={} ", b.ipv4())), "{listed}");
    assert!(listed.contains(&format!("dst={} ", c.ipv4())), "{listed}");
    // Nothing left to delete.
    assert_eq!(
        ct.delete_involving(&HashSet::from([b.ipv4().into()]))
            .unwrap(),
        0
    );
}

#[test]
fn the_node_check_reads_the_enforced_namespace() {
    if !lab_ready("the_node_check_reads_the_enforced_namespace") {
        return;
    }
    let node = Node::new(NodeConfig::new("node-1", 1)).expect("create the node");
    let path = node.netns().path();
    let check = node::check(Some(&path));
    assert_eq!(check.problems, Vec::<String>::new());
    assert_eq!(
        (
            check.bridge_nf_call_iptables,
            check.bridge_nf_call_ip6tables
        ),
        (Some(true), Some(true))
    );
    assert_eq!(
        (check.ipv4_forwarding, check.ipv6_forwarding),
        (Some(true), Some(true))
    );

    node.netns()
        .sysctl(&[
            "net.bridge.bridge-nf-call-ip6tables=0",
            "net.ipv6.conf.all.forwarding=0",
        ])
        .unwrap();
    let check = node::check(Some(&path));
    assert_eq!(check.bridge_nf_call_ip6tables, Some(false));
    assert_eq!(check.ipv6_forwarding, Some(false));
    assert_eq!(check.problems.len(), 1, "{check:?}");
    assert!(
        check.problems[0].contains("net.bridge.bridge-nf-call-ip6tables is 0"),
        "{check:?}"
    );
    node.netns()
        .sysctl(&["net.bridge.bridge-nf-call-ip6tables=1"])
        .unwrap();
    assert_eq!(node::check(Some(&path)).problems, Vec::<String>::new());

    node.netns()
        .ip(&["link", "add", node::IPVS_DEVICE, "type", "bridge"])
        .unwrap();
    let check = node::check(Some(&path));
    assert!(check.kube_proxy_ipvs);
    assert!(check.problems[0].contains("IPVS"), "{check:?}");
}
