//! Kernel tests: real network namespaces, a Flannel-like node (cni0 bridge,
//! br_netfilter), pods with servers, nftpol's ruleset applied with `nft`
//! inside the node, and real connections probed. Root only: each test
//! prints why and returns when it cannot run (CI runs them as root).
//!
//! Every test builds its own namespaces (see `nftpol_lab::lab`), so they run in
//! parallel.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::reference;
use common::*;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use nftpol::compiler::{Protocol, Snapshot, compile};
use nftpol::net::Family;
use nftpol::nft::{self, SyncReport, Syncer};
use nftpol_lab::lab::{self, DEFAULT_TIMEOUT, Node, NodeConfig, Pod, Port, Probe};

const NODE: &str = "node-1";
const TABLE: &str = nft::DEFAULT_TABLE;

/// Every lab pod serves these; the matrices probe all of them.
const PORTS: [Port; 4] = [Port::tcp(80), Port::tcp(81), Port::tcp(8080), Port::udp(80)];

/// A node with lab pods, the snapshot that describes them (namespaces and
/// pods, no policies) and the syncer that keeps the node's table.
struct World {
    node: Node,
    pods: Vec<Pod>,
    base: Snapshot,
    /// Behind a lock so that a test can sync while other threads probe.
    syncer: Mutex<Syncer>,
}

impl World {
    fn new(config: NodeConfig) -> Self {
        let node = Node::new(config).expect("create the node");
        // As `nftpol run` keeps it: element updates over netlink.
        let syncer = Mutex::new(node.syncer(TABLE).expect("a netlink socket in the node"));
        Self {
            node,
            pods: Vec::new(),
            base: Snapshot::default(),
            syncer,
        }
    }

    fn namespace(&mut self, name: &str, labels: &[(&str, &str)]) {
        self.base.add_namespace(mk_ns(name, labels));
    }

    /// A pod `ns/name` on this node with host number `host`, serving
    /// [`PORTS`]; `named` are its named container ports.
    fn pod(
        &mut self,
        ns: &str,
        name: &str,
        host: u8,
        labels: &[(&str, &str)],
        named: &[(&str, Protocol, u16)],
    ) {
        let pod = self
            .node
            .add_pod(&format!("{ns}-{name}"), host)
            .expect("create a pod");
        pod.serve(&PORTS).expect("start the pod's servers");
        let mut info = mk_pod(ns, name, NODE, &pod.ipv4().to_string(), labels);
        if let Some(v6) = pod.ipv6() {
            info = info.extra_ip(&v6.to_string());
        }
        for (n, proto, port) in named {
            info = info.named_port(n, *proto, *port);
        }
        self.base.add_pod(info);
        self.pods.push(pod);
    }

    /// A pod that only exists in the snapshot (on another node).
    fn remote_pod(&mut self, ns: &str, name: &str, node: &str, ip: &str, labels: &[(&str, &str)]) {
        self.base.add_pod(mk_pod(ns, name, node, ip, labels));
    }

    /// The lab pod of `ns/name`.
    fn lab_pod(&self, key: &str) -> &Pod {
        let (ns, name) = key.split_once('/').expect("ns/name");
        let want = format!("{ns}-{name}");
        self.pods
            .iter()
            .find(|p| p.name() == want)
            .unwrap_or_else(|| panic!("no lab pod {key}"))
    }

    /// Keys of the local (lab) pods, in creation order.
    fn local_keys(&self) -> Vec<String> {
        self.base
            .pods
            .iter()
            .filter(|p| p.node.as_deref() == Some(NODE))
            .map(|p| p.key.to_string())
            .collect()
    }

    fn with_policies(&self, policies: Vec<NetworkPolicy>) -> Snapshot {
        let mut snap = self.base.clone();
        policies.into_iter().for_each(|p| snap.add_policy(p));
        snap
    }

    /// Compiles `snap` for the node and syncs the node's table.
    fn enforce(&self, snap: &Snapshot) -> SyncReport {
        let compiled = compile(snap, NODE);
        assert!(
            compiled.diagnostics.is_empty(),
            "the test's policies should be valid: {:#?}",
            compiled.diagnostics
        );
        let rs = nft::render(&compiled.plan, TABLE);
        self.syncer
            .lock()
            .unwrap()
            .sync(rs)
            .unwrap_or_else(|e| panic!("sync: {e}"))
    }

    /// One probe from `from` to `to` on `port`, over IPv4 or IPv6.
    fn probe(&self, from: &str, to: &str, port: Port, family: Family) -> bool {
        let dst = addr_of(self.lab_pod(to), family);
        lab::probe(
            self.lab_pod(from).netns(),
            SocketAddr::new(dst, port.port),
            port.proto,
            DEFAULT_TIMEOUT,
        )
        .expect("probe")
    }

    /// Flushes conntrack, probes every ordered pair of local pods on every
    /// port of `ports` and compares each answer with the reference
    /// evaluator (packet level, for the family probed). `Err` holds a
    /// readable table of the whole matrix.
    fn check_matrix(&self, snap: &Snapshot, ports: &[Port], family: Family) -> Result<(), String> {
        self.node.conntrack_flush().expect("conntrack -F");
        let keys = self.local_keys();
        let mut cases = Vec::new();
        for port in ports {
            for from in &keys {
                for to in keys.iter().filter(|t| *t != from) {
                    cases.push((*port, from.clone(), to.clone()));
                }
            }
        }
        let probes: Vec<Probe> = cases
            .iter()
            .map(|(port, from, to)| Probe {
                from: self.lab_pod(from).netns(),
                to: SocketAddr::new(addr_of(self.lab_pod(to), family), port.port),
                proto: port.proto,
            })
            .collect();
        let got = lab::probe_all(&probes, DEFAULT_TIMEOUT).expect("probes");
        let want: Vec<bool> = cases
            .iter()
            .map(|(port, from, to)| {
                let (f, t) = (key(from), key(to));
                let src = addr_of(self.lab_pod(from), family);
                let dst = addr_of(self.lab_pod(to), family);
                reference::allows_packet(snap, &f, src, &t, dst, port.proto, port.port)
            })
            .collect();
        if got == want {
            return Ok(());
        }
        Err(matrix_table(&keys, ports, &cases, &got, &want))
    }
}

fn addr_of(pod: &Pod, family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(pod.ipv4()),
        Family::V6 => IpAddr::V6(pod.ipv6().expect("a dual-stack pod")),
    }
}

/// One block per port: rows are sources, columns destinations; a cell is
/// what the kernel did, with `!` where the reference says otherwise.
fn matrix_table(
    keys: &[String],
    ports: &[Port],
    cases: &[(Port, String, String)],
    got: &[bool],
    want: &[bool],
) -> String {
    use std::fmt::Write as _;
    let width = keys.iter().map(String::len).max().unwrap_or(4).max(8) + 1;
    let mut out = String::from(
        "kernel result per probe (allow / deny); `!` marks a disagreement with the reference\n",
    );
    for port in ports {
        let _ = write!(out, "\n{:width$}", format!("{port}"));
        for to in keys {
            let _ = write!(out, "{to:>width$}");
        }
        out.push('\n');
        for from in keys {
            let _ = write!(out, "{from:width$}");
            for to in keys {
                let cell = match cases
                    .iter()
                    .position(|c| c.0 == *port && &c.1 == from && &c.2 == to)
                {
                    None => "·".to_string(),
                    Some(i) => format!(
                        "{}{}",
                        if got[i] { "allow" } else { "deny" },
                        if got[i] == want[i] { "" } else { "!" }
                    ),
                };
                let _ = write!(out, "{cell:>width$}");
            }
            out.push('\n');
        }
    }
    let wrong: Vec<String> = cases
        .iter()
        .zip(got.iter().zip(want))
        .filter(|(_, (g, w))| g != w)
        .map(|((port, from, to), (g, w))| {
            format!(
                "  {from} -> {to} {port}: kernel {}, reference {}",
                verdict(*g),
                verdict(*w)
            )
        })
        .collect();
    let _ = write!(
        out,
        "\n{} disagreement(s):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    out
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allows" } else { "denies" }
}

/// `nft list table inet nftpol` in the node: `Some(listing)` when present.
fn our_table(node: &Node) -> Option<String> {
    node.nft().run(&["list", "table", "inet", TABLE], None).ok()
}

// ---------------------------------------------------------------------------

/// Six pods in three namespaces on node-1, one more on node-2 (only in the
/// snapshot, its address exists nowhere).
fn three_namespaces() -> World {
    use Protocol::{Tcp, Udp};
    let mut w = World::new(NodeConfig::new(NODE, 1));
    w.namespace("frontend", &[("team", "web")]);
    w.namespace("backend", &[("team", "api")]);
    w.namespace("ops", &[("team", "ops")]);
    w.pod(
        "frontend",
        "web-1",
        10,
        &[("app", "web")],
        &[("http", Tcp, 80)],
    );
    w.pod(
        "frontend",
        "web-2",
        11,
        &[("app", "web"), ("track", "canary")],
        &[("http", Tcp, 81)],
    );
    w.pod(
        "backend",
        "api-1",
        20,
        &[("app", "api")],
        &[("http", Tcp, 81), ("metrics", Tcp, 8080), ("dns", Udp, 80)],
    );
    w.pod(
        "backend",
        "api-2",
        21,
        &[("app", "api")],
        &[("http", Tcp, 80), ("metrics", Tcp, 8080)],
    );
    w.pod("ops", "mon-1", 30, &[("app", "mon")], &[]);
    w.pod(
        "ops",
        "db-1",
        31,
        &[("app", "db")],
        &[("http", Tcp, 80), ("metrics", Tcp, 8080)],
    );
    w.remote_pod(
        "backend",
        "api-9",
        "node-2",
        "10.244.2.20",
        &[("app", "api")],
    );
    w
}

/// Named scenarios of policies for [`three_namespaces`].
fn scenarios() -> Vec<(&'static str, Vec<NetworkPolicy>)> {
    vec![
        (
            "deny all ingress in backend",
            vec![mk_policy(
                "backend",
                "deny-ingress",
                json!({ "podSelector": {}, "policyTypes": ["Ingress"] }),
            )],
        ),
        (
            "ingress from a namespace selector, and from namespace AND pod selector",
            vec![
                mk_policy(
                    "backend",
                    "from-web",
                    json!({
                        "podSelector": { "matchLabels": { "app": "api" } },
                        "ingress": [{
                            "from": [{ "namespaceSelector": { "matchLabels": { "team": "web" } } }],
                            "ports": [{ "protocol": "TCP", "port": 80 }, { "protocol": "UDP", "port": 80 }],
                        }],
                    }),
                ),
                mk_policy(
                    "ops",
                    "db-from-api",
                    json!({
                        "podSelector": { "matchLabels": { "app": "db" } },
                        "ingress": [{
                            "from": [{
                                "namespaceSelector": { "matchLabels": { "team": "api" } },
                                "podSelector": { "matchLabels": { "app": "api" } },
                            }],
                        }],
                    }),
                ),
            ],
        ),
        (
            "egress to an ipBlock with an except, on a port range",
            vec![mk_policy(
                "frontend",
                "egress-block",
                json!({
                    "podSelector": {},
                    "policyTypes": ["Egress"],
                    "egress": [
                        {
                            "to": [{ "ipBlock": { "cidr": "10.244.0.0/16", "except": ["10.244.1.20/32", "10.244.1.30/31"] } }],
                            "ports": [{ "protocol": "TCP", "port": 80, "endPort": 81 }],
                        },
                        {
                            "to": [{ "ipBlock": { "cidr": "10.244.1.0/24" } }],
                            "ports": [{ "protocol": "UDP", "port": 80 }],
                        },
                    ],
                }),
            )],
        ),
        (
            "named ports in ingress and egress",
            vec![
                mk_policy(
                    "backend",
                    "http-in",
                    json!({
                        "podSelector": {},
                        "ingress": [{ "ports": [{ "port": "http" }, { "protocol": "UDP", "port": "dns" }] }],
                    }),
                ),
                mk_policy(
                    "frontend",
                    "scrape-out",
                    json!({
                        "podSelector": { "matchLabels": { "app": "web" } },
                        "policyTypes": ["Egress"],
                        "egress": [
                            {
                                "to": [{
                                    "namespaceSelector": { "matchLabels": { "team": "api" } },
                                    "podSelector": { "matchLabels": { "app": "api" } },
                                }],
                                "ports": [{ "port": "metrics" }],
                            },
                            {
                                "to": [{ "namespaceSelector": { "matchLabels": { "team": "ops" } } }],
                                "ports": [{ "port": "http" }],
                            },
                        ],
                    }),
                ),
            ],
        ),
        (
            "ingress on a port range from every namespace",
            vec![mk_policy(
                "ops",
                "range-in",
                json!({
                    "podSelector": {},
                    "ingress": [{
                        "from": [{ "namespaceSelector": {} }],
                        "ports": [{ "protocol": "TCP", "port": 81, "endPort": 8080 }],
                    }],
                }),
            )],
        ),
        (
            "policies in both directions, peers on another node",
            vec![
                mk_policy(
                    "ops",
                    "mon-egress",
                    json!({
                        "podSelector": { "matchLabels": { "app": "mon" } },
                        "policyTypes": ["Egress"],
                        "egress": [
                            {
                                "to": [{ "namespaceSelector": { "matchLabels": { "team": "api" } } }],
                                "ports": [{ "protocol": "TCP", "port": 8080 }],
                            },
                            { "ports": [{ "protocol": "UDP", "port": 80 }] },
                        ],
                    }),
                ),
                mk_policy(
                    "backend",
                    "api-ingress",
                    json!({
                        "podSelector": { "matchLabels": { "app": "api" } },
                        "policyTypes": ["Ingress"],
                        "ingress": [
                            {
                                "from": [{ "namespaceSelector": { "matchLabels": { "team": "ops" } },
                                           "podSelector": { "matchLabels": { "app": "mon" } } }],
                                "ports": [{ "port": "metrics" }],
                            },
                            {
                                "from": [{ "namespaceSelector": { "matchLabels": { "team": "web" } } },
                                         { "podSelector": { "matchLabels": { "app": "api" } } }],
                                "ports": [{ "protocol": "TCP", "port": 81 }],
                            },
                        ],
                    }),
                ),
                mk_policy(
                    "frontend",
                    "canary-both",
                    json!({
                        "podSelector": { "matchLabels": { "track": "canary" } },
                        "policyTypes": ["Ingress", "Egress"],
                        "ingress": [{ "from": [{ "podSelector": { "matchExpressions": [
                            { "key": "track", "operator": "DoesNotExist" } ] } }] }],
                        "egress": [{ "to": [{ "namespaceSelector": {},
                                              "podSelector": { "matchLabels": { "app": "api" } } }] }],
                    }),
                ),
            ],
        ),
    ]
}

#[test]
fn compiled_rulesets_enforce_what_the_reference_evaluator_says() {
    if !lab_ready("compiled_rulesets_enforce_what_the_reference_evaluator_says") {
        return;
    }
    let w = three_namespaces();

    let open = w.with_policies(vec![]);
    w.enforce(&open);
    let mut failures = Vec::new();
    if let Err(table) = w.check_matrix(&open, &PORTS, Family::V4) {
        failures.push(format!("scenario \"no policy\":\n{table}"));
    }
    for (name, policies) in scenarios() {
        let snap = w.with_policies(policies);
        let report = w.enforce(&snap);
        if let Err(table) = w.check_matrix(&snap, &PORTS, Family::V4) {
            failures.push(format!(
                "scenario \"{name}\" (sync full={}, {} commands):\n{table}",
                report.full, report.commands
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Two pods `default/a` and `default/b`, then `more`.
fn two_pods(config: NodeConfig) -> World {
    let mut w = World::new(config);
    w.namespace("default", &[]);
    w.pod("default", "a", 10, &[("app", "a")], &[]);
    w.pod("default", "b", 11, &[("app", "b")], &[]);
    w
}

fn deny_all(ns: &str, types: &[&str]) -> NetworkPolicy {
    mk_policy(
        ns,
        "deny-all",
        json!({ "podSelector": {}, "policyTypes": types }),
    )
}

#[test]
fn the_node_itself_always_reaches_its_pods() {
    if !lab_ready("the_node_itself_always_reaches_its_pods") {
        return;
    }
    let w = two_pods(NodeConfig::new(NODE, 1));
    let snap = w.with_policies(vec![deny_all("default", &["Ingress"])]);
    w.enforce(&snap);
    w.node.conntrack_flush().unwrap();

    let a = w.lab_pod("default/a");
    for port in PORTS {
        let to = SocketAddr::new(a.ipv4().into(), port.port);
        assert!(
            lab::probe(w.node.netns(), to, port.proto, DEFAULT_TIMEOUT).unwrap(),
            "the node should reach default/a on {port} despite deny-all ingress"
        );
    }
    assert!(
        !w.probe("default/b", "default/a", Port::tcp(80), Family::V4),
        "pod to pod should be denied"
    );
}

#[test]
fn egress_to_the_node_is_enforced_on_the_input_hook() {
    if !lab_ready("egress_to_the_node_is_enforced_on_the_input_hook") {
        return;
    }
    let w = two_pods(NodeConfig::new(NODE, 1));
    w.node
        .serve(&[Port::tcp(10250), Port::udp(53)])
        .expect("node servers");
    let node_addr = IpAddr::V4(w.node.ipv4());
    let reach = |w: &World, pod: &str, port: Port| {
        lab::probe(
            w.lab_pod(pod).netns(),
            SocketAddr::new(node_addr, port.port),
            port.proto,
            DEFAULT_TIMEOUT,
        )
        .unwrap()
    };

    let a_denied = w.with_policies(vec![mk_policy(
        "default",
        "a-no-egress",
        json!({ "podSelector": { "matchLabels": { "app": "a" } }, "policyTypes": ["Egress"] }),
    )]);
    w.enforce(&a_denied);
    w.node.conntrack_flush().unwrap();
    for port in [Port::tcp(10250), Port::udp(53)] {
        assert!(
            !reach(&w, "default/a", port),
            "a has deny-all egress: {port} to the node should be dropped"
        );
        assert!(
            reach(&w, "default/b", port),
            "b has no policy: {port} to the node should pass"
        );
    }

    let open = w.with_policies(vec![]);
    w.enforce(&open);
    w.node.conntrack_flush().unwrap();
    for port in [Port::tcp(10250), Port::udp(53)] {
        assert!(
            reach(&w, "default/a", port),
            "without policy a should reach the node on {port}"
        );
    }
}

/// Installs flanneld's iptables rules in the node (iptables-nft: its
/// FORWARD accepts for 10.244.0.0/16 land in `table ip filter`).
fn install_flannel_rules(node: &Node) {
    node.install_flannel_iptables("10.244.0.0/16".parse().unwrap())
        .expect("Flannel's iptables rules (apt-get install -y iptables)");
}

#[test]
fn a_foreign_table_is_untouched_and_cannot_undo_a_drop() {
    if !lab_ready("a_foreign_table_is_untouched_and_cannot_undo_a_drop") {
        return;
    }
    let mut w = two_pods(NodeConfig::new(NODE, 1));
    w.pod("default", "c", 12, &[("app", "c")], &[]);
    install_flannel_rules(&w.node);
    // -s: counters move with traffic; handles (-a) show nothing was re-added.
    let foreign = |w: &World| {
        w.node
            .nft()
            .run(&["-s", "-a", "list", "table", "ip", "filter"], None)
            .expect("list table ip filter")
    };
    let before = foreign(&w);
    assert!(before.contains("10.244.0.0/16"), "{before}");
    assert!(
        w.probe("default/a", "default/b", Port::tcp(80), Family::V4),
        "without nftpol a -> b passes"
    );

    let b_only_from = |peer: &str| {
        mk_policy(
            "default",
            "b-in",
            json!({
                "podSelector": { "matchLabels": { "app": "b" } },
                "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "app": peer } } }] }],
            }),
        )
    };
    let snap = w.with_policies(vec![b_only_from("c")]);
    assert!(w.enforce(&snap).full);
    w.node.conntrack_flush().unwrap();
    assert!(
        !w.probe("default/a", "default/b", Port::tcp(80), Family::V4),
        "a -> b should be dropped although table ip filter accepts 10.244.0.0/16"
    );
    assert!(w.probe("default/c", "default/b", Port::tcp(80), Family::V4));
    assert_eq!(
        foreign(&w),
        before,
        "the first sync changed table ip filter"
    );

    for peer in ["a", "c", "a"] {
        let snap = w.with_policies(vec![b_only_from(peer)]);
        let report = w.enforce(&snap);
        assert!(!report.full, "a later sync should be incremental");
        assert_eq!(
            foreign(&w),
            before,
            "an incremental sync changed table ip filter"
        );
    }

    w.syncer.lock().unwrap().cleanup().expect("cleanup");
    assert_eq!(foreign(&w), before, "cleanup changed table ip filter");
    assert_eq!(
        our_table(&w.node),
        None,
        "table inet {TABLE} should be gone"
    );
    w.node.conntrack_flush().unwrap();
    assert!(
        w.probe("default/c", "default/b", Port::tcp(80), Family::V4),
        "after cleanup c -> b should pass"
    );
    assert!(
        w.probe("default/a", "default/b", Port::tcp(80), Family::V4),
        "after cleanup a -> b should pass"
    );
}

/// Sends one byte on a long-lived connection to a lab server and reads the
/// echo.
fn echo(conn: &mut TcpStream, byte: u8) -> std::io::Result<()> {
    conn.write_all(&[byte])?;
    let mut got = [0u8; 1];
    conn.read_exact(&mut got)?;
    if got[0] == byte {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "echoed {got:?}, sent {byte}"
        )))
    }
}

#[test]
fn an_incremental_update_keeps_established_connections_and_has_no_window() {
    if !lab_ready("an_incremental_update_keeps_established_connections_and_has_no_window") {
        return;
    }
    let mut w = World::new(NodeConfig::new(NODE, 1));
    w.namespace("app", &[]);
    for (i, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
        w.pod("app", name, 10 + i as u8, &[("app", name)], &[]);
    }
    // b accepts a and c (and d every other step); d, every other step,
    // accepts only a: c -> d toggles, a -> b and c -> b always pass.
    let policies = |step: usize| {
        let mut b_peers = vec!["a", "c"];
        if step % 2 == 1 {
            b_peers.push("d");
        }
        let mut out = vec![mk_policy(
            "app",
            "b-in",
            json!({
                "podSelector": { "matchLabels": { "app": "b" } },
                "ingress": [{ "from": [{ "podSelector": { "matchExpressions": [
                    { "key": "app", "operator": "In", "values": b_peers } ] } }] }],
            }),
        )];
        if step % 2 == 1 {
            out.push(mk_policy(
                "app",
                "d-in",
                json!({
                    "podSelector": { "matchLabels": { "app": "d" } },
                    "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "app": "a" } } }] }],
                }),
            ));
        }
        out
    };
    let first = w.enforce(&w.with_policies(policies(0)));
    assert!(first.full);

    // The long-lived connection a -> b:80 (the server greets with `+`).
    let b_addr = SocketAddr::new(w.lab_pod("app/b").ipv4().into(), 80);
    let mut conn = w
        .lab_pod("app/a")
        .netns()
        .run(|| TcpStream::connect_timeout(&b_addr, Duration::from_secs(2)))
        .unwrap()
        .expect("a -> b connects");
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut greeting = [0u8; 1];
    conn.read_exact(&mut greeting).expect("greeting");
    echo(&mut conn, 0).expect("echo before the updates");

    std::thread::scope(|s| {
        let stop = Arc::new(AtomicBool::new(false));
        let (probes, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let c = w.lab_pod("app/c").netns();
        let background = {
            let (stop, probes, failures) = (stop.clone(), probes.clone(), failures.clone());
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<Probe> = [Port::tcp(80), Port::udp(80), Port::tcp(81)]
                        .iter()
                        .map(|p| Probe {
                            from: c,
                            to: SocketAddr::new(b_addr.ip(), p.port),
                            proto: p.proto,
                        })
                        .collect();
                    let got = lab::probe_all(&batch, DEFAULT_TIMEOUT).expect("probe");
                    probes.fetch_add(got.len(), Ordering::Relaxed);
                    failures.fetch_add(got.iter().filter(|ok| !**ok).count(), Ordering::Relaxed);
                }
            })
        };

        let started = Instant::now();
        for step in 1..=20 {
            let report = w.enforce(&w.with_policies(policies(step)));
            assert!(!report.full, "sync {step} should be incremental");
            assert!(report.commands > 0, "sync {step} should change something");
            // A fresh connection is a new conntrack entry: policy decides it.
            let d_isolated = step % 2 == 1;
            assert_eq!(
                w.probe("app/c", "app/d", Port::tcp(80), Family::V4),
                !d_isolated,
                "after sync {step}: c -> d should be {}",
                if d_isolated { "denied" } else { "allowed" }
            );
            echo(&mut conn, step as u8)
                .unwrap_or_else(|e| panic!("long-lived a -> b broke after sync {step}: {e}"));
        }
        stop.store(true, Ordering::Relaxed);
        background.join().unwrap();
        let (n, failed) = (
            probes.load(Ordering::Relaxed),
            failures.load(Ordering::Relaxed),
        );
        eprintln!(
            "{n} probes of c -> b during 20 incremental syncs in {:?}",
            started.elapsed()
        );
        assert!(n >= 20, "only {n} background probes");
        assert_eq!(
            failed, 0,
            "{failed} of {n} probes of c -> b failed during 20 incremental syncs"
        );
    });
    echo(&mut conn, 0xff).expect("the long-lived connection carries data at the end");
}

/// A temporary file removed on drop.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_apply_and_cleanup_commands_work_on_a_real_kernel() {
    if !lab_ready("the_apply_and_cleanup_commands_work_on_a_real_kernel") {
        return;
    }
    let mut w = two_pods(NodeConfig::new(NODE, 1));
    w.pod("default", "c", 12, &[("app", "c")], &[]);
    let mut yaml = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n");
    for name in ["a", "b", "c"] {
        let ip = w.lab_pod(&format!("default/{name}")).ipv4();
        yaml += &format!(
            "---\napiVersion: v1\nkind: Pod\n\
             metadata: {{name: {name}, namespace: default, labels: {{app: {name}}}}}\n\
             spec: {{nodeName: {NODE}, containers: [{{name: main, image: busybox}}]}}\n\
             status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
        );
    }
    yaml += "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {name: b-from-c, namespace: default}\n\
             spec:\n  podSelector: {matchLabels: {app: b}}\n\
             \x20 ingress: [{from: [{podSelector: {matchLabels: {app: c}}}]}]\n";
    let file = TempFile(std::env::temp_dir().join(format!(
        "nftpol-kernel-apply-{}-{}.yaml",
        std::process::id(),
        w.node.netns().name()
    )));
    std::fs::write(&file.0, yaml).unwrap();

    let bin = env!("CARGO_BIN_EXE_nftpol");
    let path = file.0.to_str().unwrap();
    w.node
        .netns()
        .exec(&[bin, "apply", "--cluster", path, "--node", NODE])
        .unwrap_or_else(|e| panic!("nftpol apply: {e}"));
    assert!(
        our_table(&w.node).is_some(),
        "apply should create the table"
    );
    w.node.conntrack_flush().unwrap();
    assert!(!w.probe("default/a", "default/b", Port::tcp(80), Family::V4));
    assert!(w.probe("default/c", "default/b", Port::tcp(80), Family::V4));
    assert!(w.probe("default/b", "default/a", Port::tcp(80), Family::V4));

    w.node
        .netns()
        .exec(&[bin, "cleanup"])
        .unwrap_or_else(|e| panic!("nftpol cleanup: {e}"));
    assert_eq!(our_table(&w.node), None, "cleanup should remove the table");
    w.node.conntrack_flush().unwrap();
    assert!(w.probe("default/a", "default/b", Port::tcp(80), Family::V4));
}

#[test]
fn an_ipv6_ip_block_is_enforced_over_ipv6() {
    if !lab_ready("an_ipv6_ip_block_is_enforced_over_ipv6") {
        return;
    }
    let mut w = World::new(NodeConfig::new(NODE, 1).dual_stack());
    w.namespace("default", &[]);
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        w.pod("default", name, 10 + i as u8, &[("app", name)], &[]);
    }
    let a6 = w.lab_pod("default/a").ipv6().unwrap();
    let snap = w.with_policies(vec![
        mk_policy(
            "default",
            "b-from-v6-block",
            json!({
                "podSelector": { "matchLabels": { "app": "b" } },
                "ingress": [{
                    "from": [{ "ipBlock": { "cidr": "fd00:10:244:1::/64", "except": [format!("{a6}/128")] } }],
                    "ports": [{ "protocol": "TCP", "port": 80 }, { "protocol": "UDP", "port": 80 }],
                }],
            }),
        ),
        mk_policy(
            "default",
            "c-egress-v6",
            json!({
                "podSelector": { "matchLabels": { "app": "c" } },
                "policyTypes": ["Egress"],
                "egress": [{ "to": [{ "ipBlock": { "cidr": "fd00:10:244:1::a/127" } }] }],
            }),
        ),
    ]);
    w.enforce(&snap);
    // Spot checks first, for a readable failure.
    assert!(
        !w.probe("default/a", "default/b", Port::tcp(80), Family::V6),
        "a's IPv6 address is excepted"
    );
    assert!(w.probe("default/c", "default/b", Port::tcp(80), Family::V6));
    assert!(
        !w.probe("default/c", "default/b", Port::tcp(80), Family::V4),
        "the block is IPv6 only"
    );
    let mut failures = Vec::new();
    for family in [Family::V6, Family::V4] {
        if let Err(table) = w.check_matrix(&snap, &PORTS, family) {
            failures.push(format!("over IPv{}:\n{table}", family.number()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Whether the kernel's set `set` holds the element `elem` (nft syntax), as
/// `nft get element` answers it for interval sets: any element covering it.
fn kernel_set_holds(node: &Node, set: &str, elem: &str) -> bool {
    let elem = format!("{{ {elem} }}");
    node.netns()
        .exec(&["nft", "get", "element", "inet", TABLE, set, &elem])
        .is_ok()
}

/// A pod's allow-list grows, shrinks and is cut anew through a series of
/// incremental syncs, its elements moving between the hash and the interval
/// set: the kernel accepts every transaction (nft rejects overlapping
/// elements and deletions of absent ones) and afterwards holds exactly the
/// wanted peers and ports.
#[test]
fn interval_allow_lists_follow_peers_and_ports_through_incremental_syncs() {
    if !lab_ready("interval_allow_lists_follow_peers_and_ports_through_incremental_syncs") {
        return;
    }
    let node = Node::new(NodeConfig::new(NODE, 1)).expect("create the node");
    for over_netlink in [false, true] {
        let mut syncer = if over_netlink {
            node.syncer(TABLE).expect("a netlink socket in the node")
        } else {
            Syncer::new(node.nft(), TABLE)
        };
        follow_steps(&node, &mut syncer, over_netlink);
    }
}

fn follow_steps(node: &Node, syncer: &mut Syncer, over_netlink: bool) {
    /// Peer host numbers (10.244.2.N) and allowed TCP port ranges.
    type Step = (&'static [u8], &'static [(u16, u16)]);
    let steps: [Step; 7] = [
        (&[1, 2, 3, 4, 5], &[(80, 80)]),
        (&[1, 2, 3, 4, 5, 6], &[(80, 80)]),
        (&[1, 2, 4, 5, 6], &[(80, 80)]),
        (&[1, 2, 3, 4, 5, 6], &[(80, 90)]),
        (&[1, 2, 3, 4, 5, 6], &[(85, 85)]),
        (&[1, 3, 5], &[(80, 80), (85, 86)]),
        (&[], &[(80, 80)]),
    ];
    for (i, (hosts, ports)) in steps.iter().enumerate() {
        let mut pods = vec![mk_pod("x", "srv", NODE, "10.244.1.2", &[("app", "srv")])];
        for h in *hosts {
            pods.push(mk_pod(
                "y",
                &format!("peer-{h}"),
                "node-2",
                &format!("10.244.2.{h}"),
                &[("app", "peer")],
            ));
        }
        let ports: Vec<_> = ports
            .iter()
            .map(|(lo, hi)| json!({ "port": lo, "endPort": hi }))
            .collect();
        let policy = mk_policy(
            "x",
            "srv-from-peers",
            json!({
                "podSelector": { "matchLabels": { "app": "srv" } },
                "ingress": [{
                    "from": [{ "namespaceSelector": {}, "podSelector": { "matchLabels": { "app": "peer" } } }],
                    "ports": ports,
                }],
            }),
        );
        let snap = snapshot([mk_ns("x", &[]), mk_ns("y", &[])], pods, [policy]);
        let report = syncer
            .sync(nft::render(&compile(&snap, NODE).plan, TABLE))
            .unwrap_or_else(|e| panic!("step {i}: the kernel refused the transaction: {e}"));
        assert_eq!(report.full, i == 0, "step {i}: {report:?}");
        if i > 0 && over_netlink {
            assert_eq!(report.via, nft::Via::Netlink, "step {i}: {report:?}");
        }
        for h in 1..=7u8 {
            for port in [79u16, 80, 85, 86, 90, 91] {
                let want = hosts.contains(&h)
                    && steps[i].1.iter().any(|(lo, hi)| *lo <= port && port <= *hi);
                // Single peers on single ports sit in the hash set, the rest
                // in the interval set.
                let elem = format!("10.244.2.{h} . tcp . {port}");
                let got = ["pod-in/x/srv.tuples4", "pod-in/x/srv.boxes4"]
                    .iter()
                    .any(|set| kernel_set_holds(node, set, &elem));
                assert_eq!(
                    got, want,
                    "step {i} (over netlink: {over_netlink}): 10.244.2.{h} on tcp {port}"
                );
            }
        }
    }
}

/// A full sync goes to nft as text (no quoted names there): a pod with the
/// longest names Kubernetes allows gets shortened names that nft takes, in
/// the full sync and in the diff after it.
#[test]
fn pods_with_the_longest_names_are_enforced_through_full_and_incremental_syncs() {
    if !lab_ready("pods_with_the_longest_names_are_enforced_through_full_and_incremental_syncs") {
        return;
    }
    let node = Node::new(NodeConfig::new(NODE, 1)).expect("create the node");
    let mut syncer = Syncer::new(node.nft(), TABLE);
    let ns = format!("n{}", "s".repeat(62));
    let name = format!("p{}", "o".repeat(252));
    let deny = mk_policy(&ns, "deny", json!({ "podSelector": {} }));
    let mut snap = snapshot(
        [mk_ns(&ns, &[])],
        [mk_pod(&ns, &name, NODE, "10.244.1.2", &[("app", "x")])],
        [deny.clone()],
    );
    let first = syncer
        .sync(nft::render(&compile(&snap, NODE).plan, TABLE))
        .expect("full sync of long names");
    assert!(first.full);
    snap.add_pod(mk_pod(
        &ns,
        &format!("{name}2"),
        NODE,
        "10.244.1.3",
        &[("app", "x")],
    ));
    let next = syncer
        .sync(nft::render(&compile(&snap, NODE).plan, TABLE))
        .expect("incremental sync of long names");
    assert!(!next.full && next.commands > 0, "{next:?}");
    let table = our_table(&node).expect("the table exists");
    assert_eq!(
        table
            .lines()
            .filter(|l| l.trim_start().starts_with("counter packets"))
            .count(),
        2,
        "one drop counter per isolated pod (its chain's last rule):\n{table}"
    );
}
