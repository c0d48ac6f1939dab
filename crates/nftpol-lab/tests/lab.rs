//! Tests of the lab itself on a real kernel: two Flannel nodes joined by
//! VXLAN over a LAN, with flanneld's iptables rules, pods on both, and
//! TCP, UDP and SCTP probes between them (SCTP over raw sockets where the
//! kernel has no SCTP). Root only: each test prints why and returns when
//! it cannot run (CI runs them as root).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use nftpol::compiler::{Protocol, Snapshot, compile};
use nftpol::nft::{self, Syncer};
use nftpol_lab::fixtures::*;
use nftpol_lab::lab::{self, DEFAULT_TIMEOUT, Lan, Node, NodeConfig, Pod, Port, Probe};

const CLUSTER_CIDR: &str = "10.244.0.0/16";
const NS: &str = "default";
/// Every serving pod serves these.
const PORTS: [Port; 6] = [
    Port::tcp(80),
    Port::tcp(81),
    Port::udp(80),
    Port::udp(81),
    Port::sctp(80),
    Port::sctp(81),
];

/// True when the test can run; prints why not otherwise.
fn lab_ready(test: &str) -> bool {
    let why = lab::unavailable().or_else(|| {
        ["iptables", "conntrack"]
            .into_iter()
            .find(|tool| {
                !Command::new(tool)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .map(|tool| format!("`{tool}` is not installed"))
    });
    match why {
        None => true,
        Some(why) => {
            eprintln!("skipping {test}: needs root, ip, nft, iptables and conntrack [{why}]");
            false
        }
    }
}

/// Two Flannel nodes on one LAN, joined by VXLAN, with flanneld's
/// iptables rules; pods named `node-I/NAME`.
struct Cluster {
    // Field order is drop order: pods, then nodes, then the LAN.
    pods: Vec<(String, Pod)>,
    nodes: Vec<Node>,
    _lan: Lan,
}

impl Cluster {
    fn new() -> Self {
        let lan = Lan::new().expect("create the LAN");
        let cidr: Ipv4Net = CLUSTER_CIDR.parse().unwrap();
        let nodes: Vec<Node> = (1..=2)
            .map(|i| {
                let node = Node::new(NodeConfig::new(&format!("node-{i}"), i).mtu(1450))
                    .expect("create a node");
                node.join_lan(&lan).expect("join the LAN");
                node.install_flannel_iptables(cidr)
                    .expect("install Flannel's iptables rules");
                node
            })
            .collect();
        lab::flannel_vxlan_mesh(&nodes.iter().collect::<Vec<_>>()).expect("VXLAN mesh");
        Self {
            pods: Vec::new(),
            nodes,
            _lan: lan,
        }
    }

    fn node(&self, index: u8) -> &Node {
        &self.nodes[usize::from(index) - 1]
    }

    /// Adds pod `name` on node `index` with host number `host`, serving `ports`.
    fn pod(&mut self, index: u8, name: &str, host: u8, ports: &[Port]) {
        let pod = self.node(index).add_pod(name, host).expect("create a pod");
        if !ports.is_empty() {
            pod.serve(ports).expect("start the pod's servers");
        }
        self.pods.push((format!("node-{index}"), pod));
    }

    fn get(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .map(|(_, p)| p)
            .find(|p| p.name() == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The cluster as nftpol sees it: namespace `default` and every pod
    /// (labelled `app=NAME`) on its node.
    fn snapshot(&self, policies: Vec<k8s_openapi::api::networking::v1::NetworkPolicy>) -> Snapshot {
        let pods = self.pods.iter().map(|(node, p)| {
            mk_pod(
                NS,
                p.name(),
                node,
                &p.ipv4().to_string(),
                &[("app", p.name())],
            )
        });
        snapshot([mk_ns(NS, &[])], pods, policies)
    }

    /// Compiles `snap` for each node and applies it there.
    fn enforce(&self, snap: &Snapshot) {
        for node in &self.nodes {
            let compiled = compile(snap, node.name());
            assert!(
                compiled.diagnostics.is_empty(),
                "{:#?}",
                compiled.diagnostics
            );
            Syncer::new(node.nft(), nft::DEFAULT_TABLE)
                .sync(nft::render(&compiled.plan, nft::DEFAULT_TABLE))
                .unwrap_or_else(|e| panic!("sync {}: {e}", node.name()));
        }
    }

    fn conntrack_flush(&self) {
        for node in &self.nodes {
            node.conntrack_flush().expect("conntrack -F");
        }
    }

    /// Probes `(from, to, port)` all at once.
    fn probe(&self, cases: &[(&str, &str, Port)]) -> Vec<bool> {
        let probes: Vec<Probe> = cases
            .iter()
            .map(|(from, to, port)| Probe {
                from: self.get(from).netns(),
                to: SocketAddr::new(IpAddr::V4(self.get(to).ipv4()), port.port),
                proto: port.proto,
            })
            .collect();
        lab::probe_all(&probes, DEFAULT_TIMEOUT).expect("probes")
    }
}

/// `case: got` lines of the cases where `got` differs from `want`.
fn mismatches(cases: &[(&str, &str, Port)], got: &[bool], want: &[bool]) -> String {
    cases
        .iter()
        .zip(got.iter().zip(want))
        .filter(|(_, (g, w))| g != w)
        .map(|((from, to, port), (g, _))| {
            format!(
                "  {from} -> {to} {port}: {}\n",
                if *g { "allowed" } else { "denied" }
            )
        })
        .collect()
}

/// a, b on node-1; c, d on node-2; `quiet` (node-2) serves nothing.
fn four_pods() -> Cluster {
    let mut c = Cluster::new();
    c.pod(1, "a", 10, &PORTS);
    c.pod(1, "b", 11, &PORTS);
    c.pod(2, "c", 10, &PORTS);
    c.pod(2, "d", 11, &PORTS);
    c.pod(2, "quiet", 12, &[]);
    c
}

#[test]
fn pods_reach_each_other_over_vxlan_and_on_one_node_with_tcp_udp_and_sctp() {
    if !lab_ready("pods_reach_each_other_over_vxlan_and_on_one_node_with_tcp_udp_and_sctp") {
        return;
    }
    let c = four_pods();
    eprintln!(
        "SCTP over {}",
        if lab::probe::kernel_has_sctp() {
            "kernel sockets"
        } else {
            "raw INIT / INIT-ACK"
        }
    );
    let mut cases = Vec::new();
    for port in PORTS {
        // Cross-node both ways, and same-node on each node.
        for (from, to) in [("a", "c"), ("c", "a"), ("a", "b"), ("d", "c")] {
            cases.push((from, to, port));
        }
    }
    let got = c.probe(&cases);
    let want = vec![true; cases.len()];
    assert!(
        got == want,
        "without policy every probe should pass; these did not:\n{}",
        mismatches(&cases, &got, &want)
    );

    // Nothing answers where nothing serves: no responder at all, or a
    // responder for other ports.
    let silent = [
        ("a", "quiet", Port::sctp(80)),
        ("d", "quiet", Port::sctp(80)),
        ("a", "quiet", Port::tcp(80)),
        ("a", "c", Port::sctp(82)),
        ("d", "c", Port::sctp(82)),
        ("a", "c", Port::udp(82)),
    ];
    let got = c.probe(&silent);
    assert!(
        got.iter().all(|ok| !ok),
        "probes of unserved ports should fail; these passed:\n{}",
        mismatches(&silent, &got, &[false; 6])
    );
}

#[test]
fn pods_get_the_vxlan_mtu_and_full_sized_segments_cross_the_tunnel() {
    if !lab_ready("pods_get_the_vxlan_mtu_and_full_sized_segments_cross_the_tunnel") {
        return;
    }
    let c = four_pods();
    let link = c
        .get("a")
        .netns()
        .ip(&["-o", "link", "show", "eth0"])
        .unwrap();
    assert!(link.contains("mtu 1450"), "{link}");
    let flannel = c
        .node(1)
        .netns()
        .ip(&["-d", "-o", "link", "show", "flannel.1"])
        .unwrap();
    for want in ["mtu 1450", "vxlan id 1", "dstport 8472", "nolearning"] {
        assert!(flannel.contains(want), "{want:?} not in {flannel}");
    }
    // Full-sized TCP segments (MSS 1410 from the pods' MTU) cross the
    // tunnel: 64 KiB echoed back by c's server on node-2.
    let to = SocketAddr::new(IpAddr::V4(c.get("c").ipv4()), 80);
    let echoed = c
        .get("a")
        .netns()
        .run(move || -> std::io::Result<Vec<u8>> {
            let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut greeting = [0u8; 1];
            conn.read_exact(&mut greeting)?;
            let data: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
            let mut back = vec![0u8; data.len()];
            std::thread::scope(|s| {
                let mut writer = conn.try_clone()?;
                let sent = s.spawn(move || writer.write_all(&data).map(|()| data));
                conn.read_exact(&mut back)?;
                let data = sent.join().expect("writer thread")?;
                assert_eq!(back, data, "the echo differs from what was sent");
                Ok(back)
            })
        })
        .unwrap()
        .expect("64 KiB echoed over TCP across the tunnel");
    assert_eq!(echoed.len(), 65_536);
}

/// Every pod is isolated for ingress; `c` admits SCTP/81 (and TCP/81)
/// from anywhere, nothing else.
fn c_admits_only_port_81() -> Vec<k8s_openapi::api::networking::v1::NetworkPolicy> {
    vec![
        mk_policy(
            NS,
            "deny-all-ingress",
            json!({ "podSelector": {}, "policyTypes": ["Ingress"] }),
        ),
        mk_policy(
            NS,
            "c-81",
            json!({
                "podSelector": { "matchLabels": { "app": "c" } },
                "ingress": [{ "ports": [
                    { "protocol": "SCTP", "port": 81 },
                    { "protocol": "TCP", "port": 81 },
                ] }],
            }),
        ),
    ]
}

#[test]
fn nftpol_rules_decide_sctp_by_port_across_nodes_and_on_one_node() {
    if !lab_ready("nftpol_rules_decide_sctp_by_port_across_nodes_and_on_one_node") {
        return;
    }
    let c = four_pods();
    let snap = c.snapshot(c_admits_only_port_81());
    c.enforce(&snap);
    let ruleset = c.node(2).nft().run(&["list", "ruleset"], None).unwrap();
    assert!(ruleset.contains("sctp"), "{ruleset}");
    c.conntrack_flush();
    // a is on node-1 (cross-node), d on node-2 (same node as c). Every
    // source is itself isolated for ingress: the INIT-ACK gets back only
    // as `ct state established`.
    let cases = [
        ("a", "c", Port::sctp(80)),
        ("a", "c", Port::sctp(81)),
        ("d", "c", Port::sctp(80)),
        ("d", "c", Port::sctp(81)),
        ("a", "c", Port::tcp(80)),
        ("a", "c", Port::tcp(81)),
        ("d", "c", Port::udp(81)),
        ("a", "d", Port::sctp(81)),
        ("c", "a", Port::sctp(81)),
    ];
    let want = [false, true, false, true, false, true, false, false, false];
    let got = c.probe(&cases);
    assert!(
        got == want,
        "the kernel disagrees with the policy on:\n{}",
        mismatches(&cases, &got, &want)
    );

    // Lifting the policies opens port 80 again (after a conntrack flush).
    c.enforce(&c.snapshot(Vec::new()));
    c.conntrack_flush();
    let got = c.probe(&cases);
    assert!(
        got.iter().all(|ok| *ok),
        "without policy everything passes; these did not:\n{}",
        mismatches(&cases, &got, &[true; 9])
    );
}

#[test]
fn a_hand_written_sctp_dport_rule_and_conntrack_see_the_raw_handshake() {
    if !lab_ready("a_hand_written_sctp_dport_rule_and_conntrack_see_the_raw_handshake") {
        return;
    }
    let c = four_pods();
    // Forward: drop unless established or SCTP to port 81; count invalid
    // packets (a bad checksum makes conntrack call a packet invalid).
    let table = "table inet t {\n\
                   chain check { type filter hook forward priority 0; policy drop;\n\
                     ct state invalid counter drop\n\
                     ct state established counter accept\n\
                     sctp dport 81 counter accept\n\
                   }\n\
                 }\n";
    for node in &c.nodes {
        node.nft()
            .run(&["-f", "-"], Some(table.as_bytes()))
            .unwrap();
    }
    let cases = [
        ("a", "c", Port::sctp(81)),
        ("d", "c", Port::sctp(81)),
        ("a", "c", Port::sctp(80)),
        ("d", "c", Port::sctp(80)),
    ];
    let want = [true, true, false, false];
    let got = c.probe(&cases);
    assert!(
        got == want,
        "sctp dport / ct state established disagree on:\n{}",
        mismatches(&cases, &got, &want)
    );
    let counters = c
        .node(2)
        .nft()
        .run(&["list", "table", "inet", "t"], None)
        .unwrap();
    let count = |rule: &str| -> u64 {
        let line = counters
            .lines()
            .find(|l| l.contains(rule))
            .unwrap_or_else(|| panic!("{rule} not in {counters}"));
        line.split("packets ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(count("ct state invalid"), 0, "{counters}");
    // Node-2 forwards both INITs to c on 81 and both INIT-ACKs back.
    assert!(count("sctp dport 81") >= 2, "{counters}");
    assert!(count("ct state established") >= 2, "{counters}");
    let tracked = c
        .node(2)
        .netns()
        .exec(&["conntrack", "-L", "-p", "sctp"])
        .unwrap();
    assert!(tracked.contains("dport=81"), "{tracked}");
}

#[test]
fn a_full_matrix_of_nine_pods_takes_milliseconds_when_all_is_allowed() {
    if !lab_ready("a_full_matrix_of_nine_pods_takes_milliseconds_when_all_is_allowed") {
        return;
    }
    let mut c = Cluster::new();
    for i in 0..9u8 {
        c.pod(1 + i % 2, &format!("p{i}"), 10 + i, &PORTS);
    }
    let names: Vec<String> = (0..9).map(|i| format!("p{i}")).collect();
    let mut cases = Vec::new();
    for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        for port in [80, 81] {
            for from in &names {
                for to in names.iter().filter(|t| *t != from) {
                    cases.push((from.as_str(), to.as_str(), Port { proto, port }));
                }
            }
        }
    }
    assert_eq!(cases.len(), 72 * 2 * 3);
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let got = c.probe(&cases);
        times.push(start.elapsed());
        let want = vec![true; cases.len()];
        assert!(got == want, "{}", mismatches(&cases, &got, &want));
    }
    times.sort();
    // Every probe passed, so none waited for the timeout: the batch is as
    // fast as the kernel answers.
    eprintln!(
        "full matrix, 9 pods on 2 nodes, {} probes (TCP, UDP, SCTP): min {:?}, median {:?}, max {:?}",
        cases.len(),
        times[0],
        times[2],
        times[4]
    );
}

#[test]
fn sctp_probes_work_over_ipv6_too() {
    if !lab_ready("sctp_probes_work_over_ipv6_too") {
        return;
    }
    let node = Node::new(NodeConfig::new("node-1", 1).dual_stack()).expect("create a node");
    let a = node.add_pod("a", 10).expect("pod a");
    let b = node.add_pod("b", 11).expect("pod b");
    b.serve(&[Port::sctp(80), Port::tcp(80)])
        .expect("b's servers");
    let b6 = IpAddr::V6(b.ipv6().expect("dual-stack"));
    let b4 = IpAddr::V4(b.ipv4());
    let cases = [
        (b6, Port::sctp(80), true),
        (b4, Port::sctp(80), true),
        (b6, Port::tcp(80), true),
        (b6, Port::sctp(81), false),
    ];
    let probes: Vec<Probe> = cases
        .iter()
        .map(|(ip, port, _)| Probe {
            from: a.netns(),
            to: SocketAddr::new(*ip, port.port),
            proto: port.proto,
        })
        .collect();
    let got = lab::probe_all(&probes, DEFAULT_TIMEOUT).expect("probes");
    let want: Vec<bool> = cases.iter().map(|c| c.2).collect();
    assert_eq!(got, want, "{cases:?}");
}
