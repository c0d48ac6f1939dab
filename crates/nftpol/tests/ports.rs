//! Pod port discovery (`watch::ports`) on the real kernel: lab nodes with
//! pods on a bridge, each port found with exactly its pod's addresses.
//! Root only: each test prints why and returns when it cannot run.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use nftpol::watch::ports::{Port, RouteSocket, pod_ports};
use nftpol_lab::lab::{self, Netns, Node, NodeConfig, Pod};

fn lab_unavailable() -> bool {
    match lab::unavailable() {
        Some(why) => {
            eprintln!("skipped: {why}");
            true
        }
        None => false,
    }
}

fn discover(node: &Node) -> Vec<Port> {
    pod_ports(Some(&node.netns().path())).expect("discover the node's pod ports")
}

/// The ifindex of `dev` in `ns`, from `ip -o link`.
fn ifindex(ns: &Netns, dev: &str) -> u32 {
    let line = ns.ip(&["-o", "link", "show", dev]).expect("ip link show");
    line.split(':').next().unwrap().trim().parse().unwrap()
}

/// The id `node` knows the namespace `other` by (`ip netns list-id`).
fn netnsid(node: &Netns, other: &Netns) -> Option<i32> {
    let ids = node.ip(&["netns", "list-id"]).expect("ip netns list-id");
    ids.lines().find_map(|line| {
        let rest = line.strip_prefix("nsid ")?;
        let (id, name) = rest.split_once(" (iproute2 netns name: ")?;
        (name.trim_end_matches(')') == other.name()).then(|| id.parse().unwrap())
    })
}

/// The port whose peer is `pod`'s `eth0`.
fn port_of<'a>(node: &Node, ports: &'a [Port], pod: &Pod) -> &'a Port {
    let id = netnsid(node.netns(), pod.netns()).expect("the node has an id for the pod");
    let peer = ifindex(pod.netns(), "eth0");
    let found: Vec<&Port> = ports
        .iter()
        .filter(|p| p.netnsid == id && p.peer_ifindex == peer)
        .collect();
    assert_eq!(found.len(), 1, "one port for {}: {ports:#?}", pod.name());
    found[0]
}

fn sorted(mut ips: Vec<IpAddr>) -> Vec<IpAddr> {
    ips.sort();
    ips
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn every_pod_port_is_found_with_exactly_its_addresses() {
    if lab_unavailable() {
        return;
    }
    let node = Node::new(NodeConfig::new("node-1", 1).dual_stack()).unwrap();
    let pods: Vec<Pod> = (10..13)
        .map(|host| node.add_pod(&format!("p{host}"), host).unwrap())
        .collect();
    let ports = discover(&node);

    // Exactly the bridge's members as `ip` lists them.
    let listing = node.netns().ip(&["-o", "link"]).unwrap();
    let members: BTreeSet<(u32, String)> = listing
        .lines()
        .filter(|l| l.contains(" master cni0 "))
        .map(|l| {
            let mut fields = l.split(": ");
            let index = fields.next().unwrap().parse().unwrap();
            let name = fields.next().unwrap().split('@').next().unwrap();
            (index, name.to_string())
        })
        .collect();
    let found: BTreeSet<(u32, String)> =
        ports.iter().map(|p| (p.ifindex, p.name.clone())).collect();
    assert_eq!(found, members);
    assert_eq!(ports.len(), 3);
    let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
    assert!(names.is_sorted(), "{names:?}");

    for pod in &pods {
        let port = port_of(&node, &ports, pod);
        assert_eq!(port.bridge, "cni0");
        assert_eq!(port.addrs, sorted(pod.ips()), "{}", pod.name());
        // The kernel's own link-local address of the pod's eth0.
        let ll = pod
            .netns()
            .ip(&["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"])
            .unwrap();
        let ll: Vec<IpAddr> = ll
            .lines()
            .map(|l| {
                ip(l.split_whitespace()
                    .nth(3)
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap())
            })
            .collect();
        assert_eq!(ll.len(), 1, "{ll:?}");
        assert_eq!(port.link_local, ll, "{}", pod.name());
    }
}

#[test]
fn a_second_address_on_a_pod_shows_with_the_first() {
    if lab_unavailable() {
        return;
    }
    let node = Node::new(NodeConfig::new("node-1", 1)).unwrap();
    let pod = node.add_pod("a", 10).unwrap();
    let other = node.add_pod("b", 11).unwrap();
    // `a` claims `b`'s address too: both ports list it.
    pod.netns()
        .ip(&["addr", "add", "10.244.1.11/24", "dev", "eth0"])
        .unwrap();
    let ports = discover(&node);
    assert_eq!(
        port_of(&node, &ports, &pod).addrs,
        [ip("10.244.1.10"), ip("10.244.1.11")]
    );
    assert_eq!(port_of(&node, &ports, &other).addrs, [ip("10.244.1.11")]);
}

#[test]
fn link_local_addresses_are_apart_and_host_scope_ones_left_out() {
    if lab_unavailable() {
        return;
    }
    let node = Node::new(NodeConfig::new("node-1", 1)).unwrap();
    let pod = node.add_pod("a", 10).unwrap();
    let ns = pod.netns();
    ns.ip(&["addr", "add", "169.254.7.7/16", "dev", "eth0"])
        .unwrap();
    ns.ip(&[
        "addr",
        "add",
        "10.244.1.77/32",
        "dev",
        "eth0",
        "scope",
        "host",
    ])
    .unwrap();
    ns.ip(&["addr", "add", "fe80::77/64", "dev", "eth0", "nodad"])
        .unwrap();
    ns.ip(&["addr", "add", "2001:db8::7/64", "dev", "eth0", "nodad"])
        .unwrap();
    let ports = discover(&node);
    let port = port_of(&node, &ports, &pod);
    assert_eq!(port.addrs, [ip("10.244.1.10"), ip("2001:db8::7")]);
    assert!(port.link_local.contains(&ip("169.254.7.7")), "{port:?}");
    assert!(port.link_local.contains(&ip("fe80::77")), "{port:?}");
    assert!(port.link_local.iter().all(|a| link_local(*a)));
}

#[test]
fn links_that_are_not_pod_ports_are_not_reported() {
    if lab_unavailable() {
        return;
    }
    let node = Node::new(NodeConfig::new("node-1", 1)).unwrap();
    let pod = node.add_pod("a", 10).unwrap();
    let stray = Netns::create("stray").unwrap();
    let ns = node.netns();
    // A bridge port that is no veth, though it too has a link in
    // another namespace (a VXLAN made there and moved here).
    stray
        .ip(&[
            "link", "add", "vx0", "type", "vxlan", "id", "7", "dstport", "4789",
        ])
        .unwrap();
    stray
        .ip(&["link", "set", "vx0", "netns", ns.name()])
        .unwrap();
    ns.ip(&["link", "set", "vx0", "master", "cni0"]).unwrap();
    // A veth into another namespace, on no bridge.
    let netns_arg = stray.name();
    ns.ip(&[
        "link", "add", "loose0", "type", "veth", "peer", "name", "eth0", "netns", netns_arg,
    ])
    .unwrap();
    stray
        .ip(&["addr", "add", "10.244.1.50/24", "dev", "eth0"])
        .unwrap();
    // A veth pair on the bridge whose peer stays in the node.
    ns.ip(&[
        "link", "add", "local0", "type", "veth", "peer", "name", "local1",
    ])
    .unwrap();
    ns.ip(&["link", "set", "local0", "master", "cni0"]).unwrap();
    // A veth into another namespace on a bridge of another name: found.
    let other = Netns::create("other").unwrap();
    ns.ip(&["link", "add", "br1", "type", "bridge"]).unwrap();
    ns.ip(&[
        "link",
        "add",
        "side0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        other.name(),
    ])
    .unwrap();
    ns.ip(&["link", "set", "side0", "master", "br1"]).unwrap();

    let ports = discover(&node);
    let names: Vec<(&str, &str)> = ports
        .iter()
        .map(|p| (p.name.as_str(), p.bridge.as_str()))
        .collect();
    let pod_port = port_of(&node, &ports, &pod).name.as_str();
    assert_eq!(names, [("side0", "br1"), (pod_port, "cni0")]);
}

/// The kernel tears a deleted namespace down after `ip netns del` has
/// returned: for a few milliseconds its port is still listed, with the
/// old addresses, then the address dump refuses its id (EINVAL), and
/// then the port is gone. No discovery fails on the way.
#[test]
fn a_removed_pod_disappears_once_its_namespace_is_torn_down() {
    if lab_unavailable() {
        return;
    }
    let node = Node::new(NodeConfig::new("node-1", 1)).unwrap();
    let stays = node.add_pod("stays", 10).unwrap();
    let goes = node.add_pod("goes", 11).unwrap();
    let mut socket = RouteSocket::open(Some(&node.netns().path())).unwrap();
    let before = socket.pod_ports().unwrap();
    assert_eq!(before.len(), 2);
    let kept = port_of(&node, &before, &stays).clone();
    drop(goes);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = socket.pod_ports().expect("no failure while a pod goes");
        if after == [kept.clone()] {
            break;
        }
        assert_eq!(after, before, "only the old state until the pod is gone");
        assert!(Instant::now() < deadline, "the pod's port stayed");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A pair made from the pod's side leaves the node without an id for
/// the pod's namespace; a link dump makes one (so does any change to
/// the link in the node, such as joining the bridge).
#[test]
fn a_pair_made_from_the_pod_side_gets_a_netnsid() {
    if lab_unavailable() {
        return;
    }
    let node = Node::new(NodeConfig::new("node-1", 1)).unwrap();
    let pod = Netns::create("pod").unwrap();
    pod.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "vpod",
        "netns",
        node.netns().name(),
    ])
    .unwrap();
    pod.ip(&["addr", "add", "10.244.1.20/24", "dev", "eth0"])
        .unwrap();
    assert_eq!(netnsid(node.netns(), &pod), None, "no id yet");
    assert_eq!(discover(&node), [], "not on the bridge yet");
    let id = netnsid(node.netns(), &pod).expect("the dump assigned an id");

    node.netns()
        .ip(&["link", "set", "vpod", "master", "cni0"])
        .unwrap();
    let ports = discover(&node);
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].name, "vpod");
    assert_eq!(ports[0].netnsid, id);
    assert_eq!(ports[0].peer_ifindex, ifindex(&pod, "eth0"));
    assert_eq!(ports[0].addrs, [ip("10.244.1.20")]);
}

/// Ad-hoc cost of one discovery on a node with 110 pods (printed, not
/// asserted). `cargo test -p nftpol --test ports discovery_cost -- --ignored --nocapture`
#[test]
#[ignore = "builds 110 namespaces; run by hand for the figure"]
fn discovery_cost_with_110_pods() {
    if lab_unavailable() {
        return;
    }
    let node = Node::new(NodeConfig::new("node-1", 1).dual_stack()).unwrap();
    let started = Instant::now();
    let pods: Vec<Pod> = (10..120)
        .map(|host| node.add_pod(&format!("p{host}"), host).unwrap())
        .collect();
    eprintln!("110 pods built in {:?}", started.elapsed());
    let mut socket = RouteSocket::open(Some(&node.netns().path())).unwrap();
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let ports = socket.pod_ports().unwrap();
        times.push(started.elapsed());
        assert_eq!(ports.len(), pods.len());
    }
    let started = Instant::now();
    pod_ports(Some(&node.netns().path())).unwrap();
    let with_open = started.elapsed();
    times.sort();
    eprintln!(
        "one discovery of 110 pods: median {:?}, min {:?}, max {:?}; \
         with opening the socket in the namespace: {with_open:?}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
    );
}

/// `fe80::/10` or `169.254.0.0/16`.
fn link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}
