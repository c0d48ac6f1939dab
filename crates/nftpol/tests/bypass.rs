//! The ways around isolation an attacker's audit found (issue #11), each
//! reproduced on the real kernel with nftpol's `inet` table alone, then
//! shown closed once the port guard (`table bridge nftpol`) is in place.
//! Root only: each test prints why and returns when it cannot run.
//!
//! One node, dual stack, four pods:
//! - x/a (10.244.1.10): egress-isolated, allowed nowhere;
//! - x/b (10.244.1.11): not isolated;
//! - x/c (10.244.1.12): ingress-isolated, allows only x/b;
//! - x/d (10.244.1.13): not isolated.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket,
};
use std::time::{Duration, Instant};

use common::*;
use nftpol::compiler::{Snapshot, compile};
use nftpol::nft::guard::{self, Guard, PortAddrs};
use nftpol::nft::{self, Syncer};
use nftpol_lab::lab::{Node, NodeConfig, Pod};
use serde_json::json;

const NODE: &str = "node-1";
const TABLE: &str = nft::DEFAULT_TABLE;
const WAIT: Duration = Duration::from_millis(400);

struct World {
    node: Node,
    pods: BTreeMap<&'static str, Pod>,
    snap: Snapshot,
    syncer: Syncer,
}

impl World {
    fn new() -> Self {
        let node = Node::new(NodeConfig::new(NODE, 1).dual_stack()).expect("node");
        let mut snap = Snapshot::default();
        snap.add_namespace(mk_ns("x", &[("ns", "x")]));
        let mut pods = BTreeMap::new();
        for (name, host) in [("a", 10), ("b", 11), ("c", 12), ("d", 13)] {
            let pod = node.add_pod(&format!("x-{name}"), host).expect("pod");
            let info = mk_pod("x", name, NODE, &pod.ipv4().to_string(), &[("pod", name)])
                .extra_ip(&pod.ipv6().expect("dual stack").to_string());
            snap.add_pod(info);
            pods.insert(name, pod);
        }
        snap.add_policy(mk_policy(
            "x",
            "a-egress-none",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}),
        ));
        snap.add_policy(mk_policy(
            "x",
            "c-from-b",
            json!({"podSelector": {"matchLabels": {"pod": "c"}}, "policyTypes": ["Ingress"],
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
        ));
        let syncer = node.syncer(TABLE).expect("netlink");
        let mut w = Self {
            node,
            pods,
            snap,
            syncer,
        };
        let compiled = compile(&w.snap, NODE);
        assert!(
            compiled.diagnostics.is_empty(),
            "{:?}",
            compiled.diagnostics
        );
        w.syncer
            .sync(nft::render(&compiled.plan, TABLE))
            .expect("sync the inet table");
        w
    }

    fn pod(&self, name: &str) -> &Pod {
        &self.pods[name]
    }

    /// The port guard as the controller builds it: the lab knows each pod's
    /// port; addresses are bound when the API (the snapshot) has them.
    fn guard(&self) {
        let compiled = compile(&self.snap, NODE);
        let ports: Vec<PortAddrs> = self
            .pods
            .values()
            .map(|p| PortAddrs {
                port: p.veth().to_string(),
                ifindex: 0,
                addrs: p.ips(),
            })
            .collect();
        let local: BTreeSet<IpAddr> = self.pods.values().flat_map(|p| p.ips()).collect();
        let binding = guard::bind(&ports, &local, &BTreeMap::new());
        assert!(binding.unbound.is_empty() && binding.contested.is_empty());
        let isolated = |d| {
            compiled
                .plan
                .pods
                .iter()
                .filter(|p| p.direction == d)
                .flat_map(|p| p.ips.iter().copied())
                .collect::<BTreeSet<IpAddr>>()
        };
        use nftpol::compiler::Direction;
        let g = Guard::new(
            &ports,
            &binding,
            &isolated(Direction::Ingress),
            &isolated(Direction::Egress),
            &mut BTreeSet::new(),
        );
        self.node
            .nft()
            .run(&["-f", "-"], Some(g.to_text(TABLE).as_bytes()))
            .expect("load the guard");
    }

    /// A UDP socket in pod `name` bound to `addr:port`.
    fn udp_listener(&self, name: &str, addr: IpAddr, port: u16) -> UdpSocket {
        self.pod(name)
            .netns()
            .run(move || {
                let s = UdpSocket::bind(SocketAddr::new(addr, port)).expect("bind");
                s.set_read_timeout(Some(WAIT)).unwrap();
                s
            })
            .expect("enter pod")
    }

    /// Sends a datagram from pod `name` as the kernel would (its own source).
    fn udp_send(&self, name: &str, to: SocketAddr, broadcast: bool) {
        self.pod(name)
            .netns()
            .run(move || {
                let any: SocketAddr = if to.is_ipv6() {
                    "[::]:0".parse().unwrap()
                } else {
                    "0.0.0.0:0".parse().unwrap()
                };
                let s = UdpSocket::bind(any).unwrap();
                s.set_broadcast(broadcast).unwrap();
                s.send_to(b"hello", to).expect("send");
            })
            .expect("enter pod");
    }

    /// Sends a UDP datagram from pod `name` with a forged IPv4 source, on a
    /// raw socket (CAP_NET_RAW, which pods hold by default).
    fn udp_spoofed(&self, name: &str, src: Ipv4Addr, dst: Ipv4Addr, port: u16) {
        let packet = ipv4_udp(src, dst, 4242, port, b"spoofed");
        self.pod(name)
            .netns()
            .run(move || {
                let s = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::RAW,
                    Some(socket2::Protocol::from(255)), // IPPROTO_RAW: we write the header
                )
                .expect("raw socket");
                let to = SocketAddr::new(IpAddr::V4(dst), 0);
                s.send_to(&packet, &to.into()).expect("send raw");
            })
            .expect("enter pod");
    }

    /// The pod's link-local address on eth0, once it is usable.
    fn link_local(&self, name: &str) -> Ipv6Addr {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = self
                .pod(name)
                .netns()
                .ip(&["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"])
                .expect("ip addr");
            if !out.contains("tentative")
                && let Some(addr) = out.split_whitespace().skip_while(|w| *w != "inet6").nth(1)
            {
                return addr.split('/').next().unwrap().parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "no usable link-local address: {out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether pod `from` completes a TCP connection to `to` (a link-local
    /// address is reached over its eth0, from `from`'s own once usable).
    fn connects(&self, from: &str, to: SocketAddr) -> bool {
        if let SocketAddr::V6(v6) = to
            && v6.ip().is_unicast_link_local()
        {
            // The source is `from`'s own link-local address: while it is
            // tentative (duplicate address detection), the connection fails
            // whatever the rules say.
            self.link_local(from);
        }
        self.pod(from)
            .netns()
            .run(move || {
                let to = match to {
                    SocketAddr::V6(v6) if v6.ip().is_unicast_link_local() => {
                        let scope = nix::net::if_::if_nametoindex("eth0").expect("eth0");
                        SocketAddr::V6(SocketAddrV6::new(*v6.ip(), v6.port(), 0, scope))
                    }
                    other => other,
                };
                TcpStream::connect_timeout(&to, WAIT).is_ok()
            })
            .expect("enter pod")
    }
}

fn received(s: &UdpSocket) -> bool {
    let mut buf = [0u8; 64];
    s.recv_from(&mut buf).is_ok()
}

/// An IPv4 header (checksum and id left to the kernel) and a UDP datagram
/// (checksum 0: none).
fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let total = (20 + 8 + data.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend(total.to_be_bytes());
    p.extend([0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend(sport.to_be_bytes());
    p.extend(dport.to_be_bytes());
    p.extend(((8 + data.len()) as u16).to_be_bytes());
    p.extend([0, 0]);
    p.extend(data);
    p
}

fn v4(p: &Pod) -> Ipv4Addr {
    p.ipv4()
}

#[test]
fn a_spoofed_source_passes_isolation_until_the_guard_binds_sources_to_ports() {
    if !lab_ready("a_spoofed_source_passes_isolation_until_the_guard_binds_sources_to_ports") {
        return;
    }
    let w = World::new();
    let (a, b, c, d) = (
        v4(w.pod("a")),
        v4(w.pod("b")),
        v4(w.pod("c")),
        v4(w.pod("d")),
    );
    let at_c = w.udp_listener("c", IpAddr::V4(c), 9000);
    let at_d = w.udp_listener("d", IpAddr::V4(d), 9000);

    // Ingress: x/d forges x/b's address (the one peer x/c allows).
    w.udp_spoofed("d", b, c, 9000);
    assert!(
        received(&at_c),
        "the attack reproduces: forged x/b reaches x/c"
    );
    // Egress: x/a (allowed nowhere) forges x/b's address.
    w.udp_spoofed("a", b, d, 9000);
    assert!(received(&at_d), "the attack reproduces: x/a escapes as x/b");

    w.guard();
    w.udp_spoofed("d", b, c, 9000);
    assert!(!received(&at_c), "forged x/b must not reach x/c");
    w.udp_spoofed("a", b, d, 9000);
    assert!(!received(&at_d), "x/a must not escape as x/b");
    w.udp_spoofed("a", Ipv4Addr::new(10, 244, 1, 99), d, 9000);
    assert!(
        !received(&at_d),
        "x/a must not escape from an unused address"
    );
    // The node's own addresses, forged into the ingress-isolated pod.
    for forged in [w.node.ipv4(), Ipv4Addr::new(192, 168, 56, 11)] {
        w.udp_spoofed("d", forged, c, 9000);
        assert!(
            !received(&at_c),
            "a forged node address {forged} must not reach x/c"
        );
    }
    // Genuine traffic still flows: x/b to x/c, x/d to x/b, x/a nowhere.
    w.udp_send("b", SocketAddr::new(IpAddr::V4(c), 9000), false);
    assert!(received(&at_c), "x/b is allowed to x/c");
    w.udp_send("a", SocketAddr::new(IpAddr::V4(d), 9000), false);
    assert!(!received(&at_d), "x/a is egress-isolated");
    let _ = a;
}

#[test]
fn the_node_address_forged_into_an_isolated_pod_is_dropped_by_the_inet_table() {
    if !lab_ready("the_node_address_forged_into_an_isolated_pod_is_dropped_by_the_inet_table") {
        return;
    }
    // Before issue #11 every pod chain ended in `fib saddr type local
    // accept`, which on the forward hook only ever matches forged packets.
    let w = World::new();
    let c = v4(w.pod("c"));
    let at_c = w.udp_listener("c", IpAddr::V4(c), 9001);
    w.udp_spoofed("d", w.node.ipv4(), c, 9001);
    assert!(
        !received(&at_c),
        "the bridge address forged by x/d reached x/c"
    );
}

#[test]
fn link_local_reaches_isolated_pods_until_the_guard_stops_it_and_nd_still_works() {
    if !lab_ready("link_local_reaches_isolated_pods_until_the_guard_stops_it_and_nd_still_works") {
        return;
    }
    let w = World::new();
    // A server on every address of x/c, IPv6 included.
    let listener = w
        .pod("c")
        .netns()
        .run(|| TcpListener::bind("[::]:9100").expect("bind [::]"))
        .unwrap();
    let c_ll = w.link_local("c");
    let to_ll = SocketAddr::new(IpAddr::V6(c_ll), 9100);
    let c_global = SocketAddr::new(IpAddr::V6(w.pod("c").ipv6().unwrap()), 9100);
    assert!(
        w.connects("d", to_ll),
        "the attack reproduces: x/d reaches x/c over fe80::"
    );
    assert!(!w.connects("d", c_global), "x/d is not allowed to x/c");
    // Egress: x/a (allowed nowhere) reaches x/d's link-local address.
    let d_listener = w
        .pod("d")
        .netns()
        .run(|| TcpListener::bind("[::]:9100").expect("bind [::]"))
        .unwrap();
    let d_ll = SocketAddr::new(IpAddr::V6(w.link_local("d")), 9100);
    assert!(
        w.connects("a", d_ll),
        "the attack reproduces: x/a escapes over fe80::"
    );

    w.guard();
    assert!(
        !w.connects("d", to_ll),
        "fe80:: must not reach an isolated pod"
    );
    assert!(
        !w.connects("a", d_ll),
        "an egress-isolated pod must not send on fe80::"
    );
    // Neighbour discovery still works: x/b reaches x/c over IPv6 (after
    // the neighbour entries are forgotten, so ND runs again).
    w.node.netns().ip(&["-6", "neigh", "flush", "all"]).unwrap();
    w.pod("b")
        .netns()
        .ip(&["-6", "neigh", "flush", "all"])
        .unwrap();
    w.pod("c")
        .netns()
        .ip(&["-6", "neigh", "flush", "all"])
        .unwrap();
    assert!(w.connects("b", c_global), "x/b is allowed to x/c over IPv6");
    drop((listener, d_listener));
}

#[test]
fn broadcast_reaches_isolated_pods_until_the_guard_stops_it() {
    if !lab_ready("broadcast_reaches_isolated_pods_until_the_guard_stops_it") {
        return;
    }
    let w = World::new();
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let at_c = w.udp_listener("c", any, 9200);
    let at_d = w.udp_listener("d", any, 9200);
    let subnet = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 255)), 9200);
    let all = SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), 9200);
    w.udp_send("d", subnet, true);
    assert!(
        received(&at_c),
        "the attack reproduces: subnet broadcast reaches x/c"
    );
    w.udp_send("a", all, true);
    assert!(received(&at_d), "the attack reproduces: x/a broadcasts out");

    w.guard();
    for to in [subnet, all] {
        w.udp_send("d", to, true);
        assert!(
            !received(&at_c),
            "broadcast to {to} must not reach ingress-isolated x/c"
        );
        let _ = received(&at_d); // x/d hears its own broadcast
        w.udp_send("a", to, true);
        assert!(
            !received(&at_d),
            "egress-isolated x/a must not broadcast to {to}"
        );
        // Pods that no policy isolates keep broadcast between them.
        w.udp_send("b", to, true);
        assert!(
            received(&at_d),
            "x/b to x/d, neither isolated, is kept ({to})"
        );
    }
}

#[test]
fn a_flushed_pod_chain_denies_instead_of_opening_the_pod() {
    if !lab_ready("a_flushed_pod_chain_denies_instead_of_opening_the_pod") {
        return;
    }
    let w = World::new();
    let c = v4(w.pod("c"));
    let at_c = w.udp_listener("c", IpAddr::V4(c), 9300);
    let a = w.pod("a").ipv4();
    let at_a = w.udp_listener("a", IpAddr::V4(a), 9300);
    w.node
        .nft()
        .run(&["flush", "chain", "inet", TABLE, "pod-in/x/c"], None)
        .expect("flush");
    w.node
        .nft()
        .run(&["flush", "chain", "inet", TABLE, "pod-eg/x/a"], None)
        .expect("flush");
    w.udp_send("d", SocketAddr::new(IpAddr::V4(c), 9300), false);
    assert!(!received(&at_c), "x/c opened by a flushed chain");
    w.udp_send(
        "a",
        SocketAddr::new(IpAddr::V4(w.pod("d").ipv4()), 9300),
        false,
    );
    let at_d = w.udp_listener("d", IpAddr::V4(w.pod("d").ipv4()), 9301);
    w.udp_send(
        "a",
        SocketAddr::new(IpAddr::V4(w.pod("d").ipv4()), 9301),
        false,
    );
    assert!(!received(&at_d), "x/a let out by a flushed chain");
    drop(at_a);
}

#[test]
fn neighbour_discovery_types_pass_before_the_dispatch_only_with_hop_limit_255() {
    if !lab_ready("neighbour_discovery_types_pass_before_the_dispatch_only_with_hop_limit_255") {
        return;
    }
    // A neighbour solicitation carries a payload to any raw ICMPv6 socket;
    // one that was routed (hop limit below 255) is no neighbour discovery
    // and must meet x/c's chain like any other packet from x/d.
    let w = World::new();
    let c6 = w.pod("c").ipv6().unwrap();
    let listener = w
        .pod("c")
        .netns()
        .run(|| {
            let s = socket2::Socket::new(
                socket2::Domain::IPV6,
                socket2::Type::RAW,
                Some(socket2::Protocol::ICMPV6),
            )
            .expect("raw ICMPv6 socket");
            s.set_read_timeout(Some(WAIT)).unwrap();
            s
        })
        .unwrap();
    let heard = |hops: u32| {
        w.pod("d")
            .netns()
            .run(move || {
                let s = socket2::Socket::new(
                    socket2::Domain::IPV6,
                    socket2::Type::RAW,
                    Some(socket2::Protocol::ICMPV6),
                )
                .expect("raw ICMPv6 socket");
                s.set_unicast_hops_v6(hops).unwrap();
                // Type 135 (neighbour solicitation), code 0, checksum (the
                // kernel fills it), reserved, target, then a marker.
                let mut msg = vec![135, 0, 0, 0, 0, 0, 0, 0];
                msg.extend(c6.octets());
                msg.extend(b"covert");
                let to = SocketAddr::new(IpAddr::V6(c6), 0);
                s.send_to(&msg, &to.into()).expect("send");
            })
            .unwrap();
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 256];
        while Instant::now() < deadline {
            let Ok(n) = std::io::Read::read(&mut &listener, &mut buf) else {
                return false;
            };
            if buf[0] == 135 && buf[..n].ends_with(b"covert") {
                return true;
            }
        }
        false
    };
    assert!(
        !heard(64),
        "a routed-looking solicitation from x/d reached x/c"
    );
    assert!(heard(255), "a real one (hop limit 255) still passes");
}
