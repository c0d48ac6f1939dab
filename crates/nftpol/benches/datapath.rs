//! Datapath benchmark (issue #5, part 3): what nftpol's ruleset costs the
//! packets, against no table and against the same allow-lists as linear
//! rules.
//!
//! ```text
//! cargo bench --bench datapath                 # 10k cluster, 5 rounds, iperf3 -t 5
//! NFTPOL_BENCH_QUICK=1 cargo bench --bench datapath    # 1 round, -t 2, 1 s conn loops (or: -- --quick)
//! NFTPOL_BENCH_ROUNDS=5 NFTPOL_BENCH_SECS=10 cargo bench --bench datapath
//! NFTPOL_BENCH_POLICIES_PER_POD=40 cargo bench --bench datapath   # policies added per probed pod
//! NFTPOL_BENCH_SIZE=1000/100/50 cargo bench --bench datapath      # another cluster
//! ```
//!
//! 1. The synthetic 10k-pod / 1k-policy / 500-namespace cluster, 110 pods
//!    on `node-local`. Two of its local pods are picked: a server that
//!    policy isolates for ingress and a client, in another namespace, that
//!    policy isolates for egress. Policies are added so that each is
//!    selected by many (20 by default, the usual mix: app-to-app by named
//!    port, team namespaces, Prometheus, ipBlocks, every namespace, DNS);
//!    the last of them in policy order allows client → server on the
//!    server's named port `http` and on TCP 5201 (iperf3).
//! 2. A lab node (`cni0` bridge in a namespace, br_netfilter on) with three
//!    pods carrying exactly the synthetic pods' addresses: client, server,
//!    and an "intruder" (another local pod the plan denies to the server).
//! 3. Rulesets, one at a time, in the node's namespace:
//!    - (a) no table (conntrack is then off in the namespace: nothing asks
//!      for it);
//!    - (a') conntrack only: one base chain with one rule, `ct state
//!      established,related accept`, to tell conntrack's own cost (which
//!      every stateful ruleset, and a node with kube-proxy, pays) from the
//!      policy rules';
//!    - (b) nftpol: the node's plan rendered ([`render`]) and applied by
//!      [`Syncer`], as `nftpol run` does;
//!    - (c) linear: the same allow-lists as one rule per (pod address, peer
//!      address or range, protocol, port or range), in pod order, then
//!      policy order, then peer order, in one chain per direction walked
//!      by every new connection, `ct state established,related accept`
//!      first, as iptables engines order it; then a drop per isolated pod;
//!    - (c') the same linear rules walked by every packet: the conntrack
//!      accept comes after the walk (replies need it), not before.
//! 4. Rounds (5; each runs every ruleset once, starting one later each
//!    time, so that a busy spell of the shared machine hits all alike).
//!    Per ruleset: in the first round a probe check that allowed pairs
//!    connect and denied pairs do not (the comparison is only honest when
//!    both enforce); then TCP throughput (`iperf3 -c -t 5 -O 1`, client →
//!    server, a fresh `iperf3 -s -1` each time) and new connections per
//!    second (one thread connecting and closing with SO_LINGER 0 for 3 s:
//!    every connection is a full handshake and an RST, no TIME_WAIT).
//!    Reported: medians, and the median of the per-round ratios to (a).
//!
//! Root only; prints `skipped` otherwise. Everything lives in network
//! namespaces the bench creates and removes.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nftpol::compiler::{
    AddrSetKind, Direction, ObjectKey, Plan, PodInfo, PolicyId, PortMatch, Protocol, Snapshot,
    compile,
};
use nftpol::nft::guard::GuardSyncer;
use nftpol::nft::{Ruleset, Syncer, render};
use nftpol::watch::guard::PortGuard;
use nftpol_lab::fixtures::mk_policy;
use nftpol_lab::lab::{DEFAULT_TIMEOUT, Netns, Node, NodeConfig, Pod, Probe, probe_all};
use nftpol_lab::report::{self, loadavg, table};
use nftpol_lab::synth::{SynthSpec, synth_cluster};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde_json::{Value, json};
use socket2::{Domain, Socket, Type};

const TABLE: &str = "nftpol";
const LINEAR_TABLE: &str = "linear";
const CT_TABLE: &str = "ctonly";
const IPERF_PORT: u16 = 5201;

const THROUGHPUT_TARGET: f64 = 0.95;
const CONN_RATE_TARGET: f64 = 0.90;

struct Settings {
    spec: SynthSpec,
    rounds: usize,
    iperf_secs: u32,
    conn_secs: f64,
    per_pod: usize,
    quick: bool,
}

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn settings() -> Settings {
    let quick = std::env::var("NFTPOL_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
        || std::env::args().any(|a| a == "--quick");
    let spec = match std::env::var("NFTPOL_BENCH_SIZE") {
        Ok(s) if !s.trim().is_empty() => {
            let n: Vec<usize> = s
                .split('/')
                .map(|x| {
                    x.trim()
                        .parse()
                        .expect("NFTPOL_BENCH_SIZE=PODS/POLICIES/NAMESPACES")
                })
                .collect();
            let [p, pol, ns] = n[..] else {
                panic!("NFTPOL_BENCH_SIZE=PODS/POLICIES/NAMESPACES, not {s:?}");
            };
            SynthSpec::new(p, pol, ns)
        }
        _ => SynthSpec::new(10_000, 1_000, 500),
    };
    Settings {
        spec,
        rounds: env_num("NFTPOL_BENCH_ROUNDS").unwrap_or(if quick { 1 } else { 5 }),
        iperf_secs: env_num("NFTPOL_BENCH_SECS").unwrap_or(if quick { 2 } else { 5 }),
        conn_secs: env_num("NFTPOL_BENCH_CONN_SECS").unwrap_or(if quick { 1.0 } else { 3.0 }),
        per_pod: env_num("NFTPOL_BENCH_POLICIES_PER_POD").unwrap_or(20),
        quick,
    }
}

fn main() {
    let s = settings();
    if let Some(why) = nftpol_lab::lab::unavailable() {
        println!("\nnftpol datapath benchmark: skipped ({why})");
        return;
    }
    for tool in ["iperf3", "conntrack"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            println!(
                "\nnftpol datapath benchmark: skipped (`{tool}` is not installed: apt-get install -y iperf3 conntrack)"
            );
            return;
        }
    }
    let load_before = loadavg();

    // 1. The cluster, the probed pair, and the policies that select them.
    let t = Instant::now();
    let base = synth_cluster(&s.spec);
    let pair = pick_pair(&base, &s.spec);
    let snap = add_policies(&base, &pair, s.per_pod);
    let plan = compile(&snap, &s.spec.node).plan;
    let pair = pair.with_denied(&snap, &plan, &s.spec);
    let rs = render(&plan, TABLE);
    let linear = Linear::from_plan(&plan);
    eprintln!(
        "cluster, policies and rulesets ready in {:.1?}: {pair:?}",
        t.elapsed()
    );
    assert!(
        plan.allows(
            pair.client_ip.into(),
            pair.server_ip.into(),
            Protocol::Tcp,
            IPERF_PORT
        ) && plan.allows(
            pair.client_ip.into(),
            pair.server_ip.into(),
            Protocol::Tcp,
            pair.http
        ),
        "the added policies must allow client → server"
    );
    let nftpol_walk = nftpol_rules_walked(&rs, &pair);
    let (in_pos, eg_pos) = linear.position(&pair, IPERF_PORT);
    eprintln!(
        "linear: {} rules ({} ingress, {} egress); the probed SYN matches ingress rule #{in_pos} and egress rule #{eg_pos}",
        linear.rule_count(),
        linear.ingress.len(),
        linear.egress.len()
    );

    // 2. The lab: a node, three pods with the synthetic pods' addresses.
    let node = Node::new(NodeConfig::new(&s.spec.node, 0)).expect("lab node");
    let client = add_pod(&node, "client", pair.client_ip);
    let server = add_pod(&node, "server", pair.server_ip);
    let intruder = add_pod(&node, "intruder", pair.intruder_ip);
    let _acceptors = [pair.http, pair.denied_port].map(|p| Acceptor::start(server.netns(), p));

    // 3. The rulesets; the linear table's chains stay loaded throughout,
    // its base chains come and go.
    let t = Instant::now();
    node.nft()
        .run(&["-f", "-"], Some(linear.text().as_bytes()))
        .expect("loading the linear rules");
    let linear_load = t.elapsed();
    eprintln!("linear rules loaded in {linear_load:.1?}");
    let mut syncer = Syncer::new(node.nft(), TABLE);
    let variants = [
        Variant::None,
        Variant::ConntrackOnly,
        Variant::Nftpol,
        Variant::NftpolGuarded,
        Variant::Linear,
        Variant::LinearEveryPacket,
    ];
    let mut results: Vec<VariantResult> = variants.iter().map(|v| VariantResult::new(*v)).collect();
    let t = Instant::now();
    syncer.sync(rs.clone()).expect("nftpol apply");
    let nftpol_apply = t.elapsed();
    syncer.cleanup().expect("nftpol cleanup");

    // 4. Rounds. Each round runs every ruleset once, starting one later
    // each time, so that neither a busy spell of the shared machine nor
    // the position in the round favours one of them.
    for round in 0..s.rounds {
        for k in 0..results.len() {
            let r = &mut results[(round + k) % variants.len()];
            r.variant.activate(&node, &mut syncer, &rs, &plan);
            if round == 0 {
                node.conntrack_flush().expect("conntrack -F");
                // iperf3 -s would take the probe for a test of its own:
                // a plain server on its port for the check.
                let iperf_port = Acceptor::start(server.netns(), IPERF_PORT);
                r.check = Some(enforcement_check(r.variant, &pair, &client, &intruder));
                drop(iperf_port);
            }
            node.conntrack_flush().expect("conntrack -F");
            let gbps = iperf(client.netns(), server.netns(), pair.server_ip, s.iperf_secs);
            node.conntrack_flush().expect("conntrack -F");
            let (rate, errors) = conn_rate(
                client.netns(),
                SocketAddr::from((pair.server_ip, pair.http)),
                Duration::from_secs_f64(s.conn_secs),
            );
            eprintln!(
                "round {round} {:<34} {gbps:7.3} Gbit/s {rate:7.0} conn/s{}",
                r.variant.name(),
                if errors > 0 {
                    format!(" ({errors} connects failed)")
                } else {
                    String::new()
                }
            );
            r.gbps.push(gbps);
            r.conns.push(rate);
            r.conn_errors += errors;
            r.variant.deactivate(&node, &mut syncer);
        }
    }

    // 5. Report.
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nnftpol datapath benchmark{} — {} pods / {} policies / {} namespaces, {} on the node",
        if s.quick { " (quick)" } else { "" },
        s.spec.pods,
        s.spec.policies,
        s.spec.namespaces,
        s.spec.local_pods
    );
    let _ = writeln!(
        out,
        "machine: {}; load average before: {load_before}, after: {}",
        machine(),
        loadavg()
    );
    let _ = writeln!(
        out,
        "probed: client {} ({}) → server {} ({}), TCP {IPERF_PORT} (iperf3) and {} (named port http, connection loop)",
        pair.client, pair.client_ip, pair.server, pair.server_ip, pair.http
    );
    let server_in = plan
        .pods
        .iter()
        .find(|p| p.direction == Direction::Ingress && p.pod == pair.server)
        .map_or(0, |p| p.policies.len());
    let client_eg = plan
        .pods
        .iter()
        .find(|p| p.direction == Direction::Egress && p.pod == pair.client)
        .map_or(0, |p| p.policies.len());
    let stats = rs.stats();
    let _ = writeln!(
        out,
        "policies selecting the server (ingress) / the client (egress): {server_in} / {client_eg}; \
         the allowing one is the last of each in policy order"
    );
    let _ = writeln!(
        out,
        "(b) nftpol: {} rules, {} chains, {} set elements; applied in {} (full); \
         the probed SYN meets {} rules before its accepts (each a set lookup at most)",
        stats.rules,
        stats.chains,
        stats.set_elements,
        ms(nftpol_apply),
        nftpol_walk
    );
    let _ = writeln!(
        out,
        "(c) linear: {} rules ({} ingress + {} egress, plus {} per-pod drops), loaded in {} (text); \
         the probed SYN matches ingress rule #{in_pos} and egress rule #{eg_pos}",
        linear.rule_count(),
        linear.ingress.len(),
        linear.egress.len(),
        linear.drops_in.len() + linear.drops_eg.len(),
        ms(linear_load)
    );
    let _ = writeln!(
        out,
        "rounds: {}, iperf3 -t {} -O 1, connection loop {} s; medians, and the median of the per-round ratios to (a)\n",
        s.rounds, s.iperf_secs, s.conn_secs
    );
    // Ratios per round (both figures from the same round), then their
    // median: steadier than a ratio of medians on a shared machine.
    let ratio = |v: &[f64], base: &[f64]| {
        let r: Vec<f64> = v.iter().zip(base).map(|(x, b)| x / b).collect();
        median_f(&r)
    };
    let (base_g, base_c) = (results[0].gbps.clone(), results[0].conns.clone());
    // And to (a'): what the policy rules cost beyond conntrack itself.
    let ct_c = results[1].conns.clone();
    assert_eq!(results[1].variant, Variant::ConntrackOnly);
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let (g, c) = (ratio(&r.gbps, &base_g), ratio(&r.conns, &base_c));
            let (tv, cv) = if r.variant == Variant::Nftpol {
                (target(g, THROUGHPUT_TARGET), target(c, CONN_RATE_TARGET))
            } else {
                (String::new(), String::new())
            };
            let list = |v: &[f64], digits: usize| {
                v.iter()
                    .map(|x| format!("{x:.digits$}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            vec![
                r.variant.name().to_string(),
                format!("{:.3}", median_f(&r.gbps)),
                format!("{g:.3}{tv}"),
                format!("{:.0}", median_f(&r.conns)),
                format!("{c:.3}{cv}"),
                format!("{:.3}", ratio(&r.conns, &ct_c)),
                list(&r.gbps, 2),
                list(&r.conns, 0),
                r.check.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "ruleset",
            "TCP Gbit/s",
            "÷ (a) per round",
            "new conn/s",
            "÷ (a) per round",
            "÷ (a')",
            "Gbit/s per round",
            "conn/s per round",
            "enforcement check",
        ],
        &rows,
    );
    let errors: usize = results.iter().map(|r| r.conn_errors).sum();
    if errors > 0 {
        let _ = writeln!(
            out,
            "\n{errors} connects of the connection loops failed (1 s timeout)"
        );
    }
    print!("{out}");
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| r.check.as_deref().is_some_and(|c| !c.starts_with("ok")))
        .map(|r| r.variant.name())
        .collect();
    assert!(
        failed.is_empty(),
        "enforcement check failed for {failed:?}: the comparison is not valid"
    );
}

// ---------------------------------------------------------------------------
// The probed pair and the policies that select it.

#[derive(Clone, Debug)]
struct Pair {
    client: ObjectKey,
    client_ip: Ipv4Addr,
    client_app: String,
    server: ObjectKey,
    server_ip: Ipv4Addr,
    server_app: String,
    /// The server's named port `http`.
    http: u16,
    /// A local pod that may not reach the server.
    intruder: ObjectKey,
    intruder_ip: Ipv4Addr,
    /// A server port the client may not reach.
    denied_port: u16,
}

fn v4(pod: &PodInfo) -> Ipv4Addr {
    pod.ips
        .iter()
        .find_map(|ip| match ip {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        })
        .expect("synthetic pods have an IPv4 address")
}

/// The first server (by key) isolated for ingress with a named `http` port,
/// and the first client in another namespace isolated for egress.
fn pick_pair(snap: &Snapshot, spec: &SynthSpec) -> Pair {
    let plan = compile(snap, &spec.node).plan;
    let isolated = |d: Direction| -> BTreeSet<&ObjectKey> {
        plan.pods
            .iter()
            .filter(|p| p.direction == d)
            .map(|p| &p.pod)
            .collect()
    };
    let (ingress, egress) = (isolated(Direction::Ingress), isolated(Direction::Egress));
    let local = |key: &ObjectKey| snap.pod(key).expect("plan pods exist").clone();
    let server = ingress
        .iter()
        .map(|k| local(k))
        .find(|p| {
            p.resolve_port("http", Protocol::Tcp)
                .is_some_and(|port| port != IPERF_PORT)
        })
        .expect("an ingress-isolated local pod with a named http port");
    let client = egress
        .iter()
        .map(|k| local(k))
        .find(|p| p.key.namespace != server.key.namespace)
        .expect("an egress-isolated local pod in another namespace");
    let app = |p: &PodInfo| p.labels.get("app").unwrap_or_default().to_string();
    Pair {
        client: client.key.clone(),
        client_ip: v4(&client),
        client_app: app(&client),
        server: server.key.clone(),
        server_ip: v4(&server),
        server_app: app(&server),
        http: server
            .resolve_port("http", Protocol::Tcp)
            .expect("checked above"),
        // Chosen on the final plan, by `with_denied`.
        intruder: ObjectKey::new("", ""),
        intruder_ip: Ipv4Addr::UNSPECIFIED,
        denied_port: 0,
    }
}

impl Pair {
    /// Picks the intruder and the denied port on the final plan: a local
    /// pod (not client or server) denied to the server on both probed
    /// ports, and a server port denied to the client.
    fn with_denied(mut self, snap: &Snapshot, plan: &Plan, spec: &SynthSpec) -> Pair {
        let server = IpAddr::V4(self.server_ip);
        let mut locals: Vec<&PodInfo> = snap
            .pods
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| p.node.as_deref() == Some(spec.node.as_str()))
            .filter(|p| p.key != self.client && p.key != self.server)
            .collect();
        locals.sort_by(|a, b| a.key.cmp(&b.key));
        let intruder = locals
            .into_iter()
            .find(|p| {
                let ip = IpAddr::V4(v4(p));
                [IPERF_PORT, self.http]
                    .iter()
                    .all(|port| !plan.allows(ip, server, Protocol::Tcp, *port))
            })
            .expect("some local pod may not reach the server");
        self.intruder = intruder.key.clone();
        self.intruder_ip = v4(intruder);
        self.denied_port = [5202, 6000, 6379, 7001, 12345]
            .into_iter()
            .find(|port| !plan.allows(IpAddr::V4(self.client_ip), server, Protocol::Tcp, *port))
            .expect("some port of the server is denied to the client");
        self
    }
}

const TEAMS: [&str; 6] = [
    "payments", "search", "identity", "catalog", "checkout", "data",
];

/// `per_pod - 1` policies of the usual kinds selecting the server (ingress)
/// and as many selecting the client (egress), then the two that allow
/// client → server, named so that they come last in policy order.
fn add_policies(snap: &Snapshot, pair: &Pair, per_pod: usize) -> Snapshot {
    let mut out = snap.clone();
    let sns: &str = &pair.server.namespace;
    let cns: &str = &pair.client.namespace;
    let server_sel = json!({ "matchLabels": { "app": pair.server_app } });
    let client_sel = json!({ "matchLabels": { "app": pair.client_app } });
    let other_app = |ns: &str, not: &str| {
        snap.pods
            .iter()
            .filter(|p| *p.key.namespace == *ns)
            .filter_map(|p| p.labels.get("app"))
            .find(|a| *a != not)
            .unwrap_or(not)
            .to_string()
    };
    for i in 0..per_pod.saturating_sub(1) {
        let team = TEAMS[i % TEAMS.len()];
        let (kind, body) = match i % 7 {
            0 => (
                "from-app",
                json!({ "podSelector": server_sel, "ingress": [{
                    "from": [{ "podSelector": { "matchLabels": { "app": other_app(sns, &pair.server_app) } } }],
                    "ports": [{ "port": "http" }],
                }] }),
            ),
            1 => (
                "from-team",
                json!({ "podSelector": server_sel, "policyTypes": ["Ingress"], "ingress": [{
                    "from": [{ "namespaceSelector": { "matchLabels": { "team": team } } }],
                    "ports": [{ "protocol": "TCP", "port": 8443 }, { "protocol": "TCP", "port": 7000 + i }],
                }] }),
            ),
            2 => (
                "from-prometheus",
                json!({ "podSelector": {}, "ingress": [{
                    "from": [{
                        "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "monitoring" } },
                        "podSelector": { "matchLabels": { "app": "prometheus" } },
                    }],
                    "ports": [{ "port": "metrics" }],
                }] }),
            ),
            3 => (
                "from-pod-network",
                json!({ "podSelector": server_sel, "ingress": [{
                    "from": [{ "ipBlock": { "cidr": "10.240.0.0/12", "except": [format!("10.244.{}.0/24", 1 + i), "10.250.0.0/16"] } }],
                    "ports": [{ "protocol": "UDP", "port": 5353 }, { "protocol": "TCP", "port": 5000, "endPort": 5100 }],
                }] }),
            ),
            4 => (
                "from-tiers",
                json!({ "podSelector": { "matchExpressions": [{ "key": "app", "operator": "In", "values": [pair.server_app] }] },
                    "ingress": [{
                        "from": [{ "podSelector": { "matchExpressions": [
                            { "key": "tier", "operator": "In", "values": ["frontend", "backend"] },
                            { "key": "version", "operator": "NotIn", "values": ["canary"] },
                        ] } }],
                        "ports": [{ "protocol": "UDP" }, { "protocol": "TCP", "port": 9000, "endPort": 9010 }],
                    }] }),
            ),
            5 => (
                "from-prod-frontends",
                json!({ "podSelector": server_sel, "ingress": [{
                    "from": [{
                        "namespaceSelector": { "matchLabels": { "env": "prod", "team": team } },
                        "podSelector": { "matchLabels": { "tier": "frontend" } },
                    }],
                    "ports": [{ "port": "http" }],
                }] }),
            ),
            // Once: every namespace reaches the front door (10k peers).
            _ if i == 6 => (
                "from-all-namespaces",
                json!({ "podSelector": server_sel, "ingress": [{
                    "from": [{ "namespaceSelector": {} }],
                    "ports": [{ "protocol": "TCP", "port": 80 }, { "protocol": "TCP", "port": 443 },
                              { "protocol": "TCP", "port": 30000, "endPort": 32767 }],
                }] }),
            ),
            _ => (
                "from-team-apps",
                json!({ "podSelector": server_sel, "ingress": [{
                    "from": [{
                        "namespaceSelector": { "matchLabels": { "team": team } },
                        "podSelector": { "matchLabels": { "tier": "backend" } },
                    }],
                    "ports": [{ "protocol": "TCP", "port": 8080 }],
                }] }),
            ),
        };
        out.add_policy(mk_policy(sns, &format!("extra-{i:02}-{kind}"), body));

        let (kind, body) = match i % 6 {
            0 => (
                "to-app",
                json!({ "podSelector": client_sel, "policyTypes": ["Egress"], "egress": [{
                    "to": [{ "podSelector": { "matchLabels": { "app": other_app(cns, &pair.client_app) } } }],
                    "ports": [{ "port": "http" }, { "port": "metrics" }],
                }] }),
            ),
            1 => (
                "to-prod-backends",
                json!({ "podSelector": client_sel, "policyTypes": ["Egress"], "egress": [{
                    "to": [{
                        "namespaceSelector": { "matchLabels": { "env": "prod", "team": team } },
                        "podSelector": { "matchLabels": { "tier": "backend" } },
                    }],
                    "ports": [{ "port": "http" }],
                }] }),
            ),
            2 => (
                "to-internet",
                json!({ "podSelector": client_sel, "policyTypes": ["Egress"], "egress": [{
                    "to": [{ "ipBlock": { "cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.169.254/32"] } }],
                    "ports": [{ "protocol": "TCP", "port": 443 }, { "protocol": "TCP", "port": 8000, "endPort": 8999 }],
                }] }),
            ),
            3 => (
                "to-dns",
                json!({ "podSelector": {}, "policyTypes": ["Egress"], "egress": [{
                    "to": [{
                        "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "kube-system" } },
                        "podSelector": { "matchLabels": { "k8s-app": "kube-dns" } },
                    }],
                    "ports": [{ "protocol": "UDP", "port": "dns" }, { "protocol": "TCP", "port": 53 }],
                }] }),
            ),
            4 => (
                "to-team",
                json!({ "podSelector": client_sel, "policyTypes": ["Egress"], "egress": [{
                    "to": [{ "namespaceSelector": { "matchLabels": { "team": team } } }],
                    "ports": [{ "protocol": "TCP", "port": 8080 }, { "protocol": "TCP", "port": 6000 + i }],
                }] }),
            ),
            _ => (
                "to-data",
                json!({ "podSelector": client_sel, "policyTypes": ["Egress"], "egress": [{
                    "to": [{ "podSelector": { "matchLabels": { "tier": "data" } } }],
                    "ports": [{ "protocol": "TCP", "port": 5432 }, { "protocol": "TCP", "port": 6379 }],
                }] }),
            ),
        };
        out.add_policy(mk_policy(cns, &format!("extra-{i:02}-{kind}"), body));
    }
    // The allowing pair, last in policy order ("probe-" sorts after
    // "allow-", "default-" and "extra-").
    out.add_policy(mk_policy(
        sns,
        "probe-allow-client",
        json!({ "podSelector": server_sel, "ingress": [{
            "from": [{
                "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": cns } },
                "podSelector": { "matchLabels": { "app": pair.client_app } },
            }],
            "ports": [{ "port": "http" }, { "protocol": "TCP", "port": IPERF_PORT }],
        }] }),
    ));
    out.add_policy(mk_policy(
        cns,
        "probe-allow-to-server",
        json!({ "podSelector": client_sel, "policyTypes": ["Egress"], "egress": [{
            "to": [{
                "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": sns } },
                "podSelector": { "matchLabels": { "app": pair.server_app } },
            }],
            "ports": [{ "port": "http" }, { "protocol": "TCP", "port": IPERF_PORT }],
        }] }),
    ));
    out
}

/// Rules the probed SYN meets in nftpol's ruleset on the forward hook, as
/// the ruleset tracer (`nftpol_lab::eval`) walks it: the base chains' rules up to
/// each dispatch, and the rules of the client's and the server's pod chains
/// up to their accepts. Panics if the tracer would not let the SYN through.
fn nftpol_rules_walked(rs: &Ruleset, pair: &Pair) -> usize {
    let trace = nftpol_lab::eval::forward(
        rs,
        &nftpol_lab::eval::Packet {
            src: IpAddr::V4(pair.client_ip),
            dst: IpAddr::V4(pair.server_ip),
            proto: Protocol::Tcp,
            port: pair.http,
        },
    );
    assert!(trace.accepted, "the probed connection must be allowed");
    trace.rules
}

// ---------------------------------------------------------------------------
// The linear baseline: one rule per address, protocol and port.

/// An inclusive address range (one address when both ends are equal).
type Range = (IpAddr, IpAddr);
/// An inclusive port range.
type PortRange = (u16, u16);

#[derive(Clone, Debug)]
struct LinRule {
    saddr: Option<Range>,
    daddr: Option<Range>,
    proto: Option<Protocol>,
    dport: Option<(u16, u16)>,
}

impl LinRule {
    fn matches(&self, src: IpAddr, dst: IpAddr, proto: Protocol, port: u16) -> bool {
        let within = |r: &Option<Range>, ip: IpAddr| {
            r.is_none_or(|(a, b)| a.is_ipv4() == ip.is_ipv4() && a <= ip && ip <= b)
        };
        within(&self.saddr, src)
            && within(&self.daddr, dst)
            && self.proto.is_none_or(|p| p == proto)
            && self.dport.is_none_or(|(a, b)| a <= port && port <= b)
    }

    fn text(&self, out: &mut String) {
        let addr = |out: &mut String, field: &str, (a, b): Range| {
            let fam = if a.is_ipv4() { "ip" } else { "ip6" };
            if a == b {
                let _ = write!(out, "{fam} {field} {a} ");
            } else {
                let _ = write!(out, "{fam} {field} {a}-{b} ");
            }
        };
        if let Some(r) = self.saddr {
            addr(out, "saddr", r);
        }
        if let Some(r) = self.daddr {
            addr(out, "daddr", r);
        }
        match (self.proto, self.dport) {
            (Some(p), Some((a, b))) if a == b => {
                let _ = write!(out, "{} dport {a} ", p.keyword());
            }
            (Some(p), Some((a, b))) => {
                let _ = write!(out, "{} dport {a}-{b} ", p.keyword());
            }
            (Some(p), None) => {
                let _ = write!(out, "meta l4proto {} ", p.keyword());
            }
            _ => {}
        }
        out.push_str("accept");
    }
}

/// The node's allow-lists, linear: what an engine without sets ends up
/// with.
struct Linear {
    ingress: Vec<LinRule>,
    egress: Vec<LinRule>,
    /// Per isolated pod address: drop what no rule accepted.
    drops_in: Vec<IpAddr>,
    drops_eg: Vec<IpAddr>,
}

impl Linear {
    /// Pods by key, then their policies in order, then the policy's lines,
    /// peers and ports in order.
    fn from_plan(plan: &Plan) -> Self {
        let mut lin = Linear {
            ingress: vec![],
            egress: vec![],
            drops_in: vec![],
            drops_eg: vec![],
        };
        let mut pods: Vec<_> = plan.pods.iter().collect();
        pods.sort_by(|a, b| a.pod.cmp(&b.pod));
        for pc in pods {
            let (rules, drops) = match pc.direction {
                Direction::Ingress => (&mut lin.ingress, &mut lin.drops_in),
                Direction::Egress => (&mut lin.egress, &mut lin.drops_eg),
            };
            drops.extend(pc.ips.iter().copied());
            for policy in &pc.policies {
                let id = PolicyId {
                    policy: policy.clone(),
                    direction: pc.direction,
                };
                let Some(chain) = plan.policies.get(&id) else {
                    continue;
                };
                for m in &chain.matches {
                    for &pod_ip in &pc.ips {
                        lines(plan, pc.direction, pod_ip, m, rules);
                    }
                }
            }
        }
        lin
    }

    fn rule_count(&self) -> usize {
        self.ingress.len() + self.egress.len()
    }

    /// 1-based index of the first rule that accepts the probed SYN, per
    /// direction (0: none).
    fn position(&self, pair: &Pair, port: u16) -> (usize, usize) {
        let (c, s) = (IpAddr::V4(pair.client_ip), IpAddr::V4(pair.server_ip));
        let find = |rules: &[LinRule]| {
            rules
                .iter()
                .position(|r| r.matches(c, s, Protocol::Tcp, port))
                .map_or(0, |i| i + 1)
        };
        (find(&self.ingress), find(&self.egress))
    }

    /// The table with its regular chains (the base chains come with
    /// [`Variant::activate`]).
    fn text(&self) -> String {
        let mut out = String::with_capacity(self.rule_count() * 80);
        let _ = writeln!(
            out,
            "add table inet {LINEAR_TABLE}\ndelete table inet {LINEAR_TABLE}\ntable inet {LINEAR_TABLE} {{"
        );
        for (name, rules) in [("walk-in", &self.ingress), ("walk-eg", &self.egress)] {
            let _ = writeln!(out, "chain {name} {{");
            for r in rules.iter() {
                r.text(&mut out);
                out.push('\n');
            }
            out.push_str("}\n");
        }
        for (name, field, ips) in [
            ("drops-in", "daddr", &self.drops_in),
            ("drops-eg", "saddr", &self.drops_eg),
        ] {
            let _ = writeln!(out, "chain {name} {{");
            for ip in ips {
                let fam = if ip.is_ipv4() { "ip" } else { "ip6" };
                let _ = writeln!(out, "{fam} {field} {ip} drop");
            }
            out.push_str("}\n");
        }
        out.push_str("}\n");
        out
    }
}

/// The linear rules of one plan line for one address of the pod.
fn lines(
    plan: &Plan,
    d: Direction,
    pod_ip: IpAddr,
    m: &nftpol::compiler::Match,
    out: &mut Vec<LinRule>,
) {
    let fam = |ip: &IpAddr| ip.is_ipv4() == pod_ip.is_ipv4();
    let peers: Vec<Option<Range>> = match &m.peer {
        None => vec![None],
        Some(id) => match &plan.addr_sets[id].kind {
            AddrSetKind::Hosts(h) => h
                .iter()
                .filter(|ip| fam(ip))
                .map(|ip| Some((*ip, *ip)))
                .collect(),
            AddrSetKind::Ranges(r) => r
                .iter()
                .filter(|r| fam(&r.start))
                .map(|r| Some((r.start, r.end)))
                .collect(),
        },
    };
    let pod = Some((pod_ip, pod_ip));
    let rule = |peer: Option<Range>, proto, dport| match d {
        Direction::Ingress => LinRule {
            saddr: peer,
            daddr: pod,
            proto,
            dport,
        },
        Direction::Egress => LinRule {
            saddr: pod,
            daddr: peer,
            proto,
            dport,
        },
    };
    match &m.ports {
        PortMatch::Named(id) => {
            let tuples = &plan.port_sets[id].elements;
            match d {
                // The named port resolves on the pod itself.
                Direction::Ingress => {
                    for peer in &peers {
                        for (ip, proto, port) in tuples.iter().filter(|t| t.0 == pod_ip) {
                            let _ = ip;
                            out.push(rule(*peer, Some(*proto), Some((*port, *port))));
                        }
                    }
                }
                // On each destination: one rule per destination tuple in
                // the peer set.
                Direction::Egress => {
                    for (ip, proto, port) in tuples.iter().filter(|t| fam(&t.0)) {
                        let in_peer = m
                            .peer
                            .as_ref()
                            .is_none_or(|id| plan.addr_sets[id].contains(*ip));
                        if in_peer {
                            out.push(rule(Some((*ip, *ip)), Some(*proto), Some((*port, *port))));
                        }
                    }
                }
            }
        }
        ports => {
            let ports: Vec<(Option<Protocol>, Option<PortRange>)> = match ports {
                PortMatch::Any => vec![(None, None)],
                PortMatch::Proto(p) => vec![(Some(*p), None)],
                PortMatch::Ports(p, ranges) => {
                    ranges.iter().map(|r| (Some(*p), Some(*r))).collect()
                }
                PortMatch::Named(_) => unreachable!("handled above"),
            };
            for peer in &peers {
                for (proto, dport) in &ports {
                    out.push(rule(*peer, *proto, *dport));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The rulesets under test.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    None,
    /// One base chain with only `ct state established,related accept`:
    /// what turning conntrack on costs (every stateful ruleset pays it;
    /// a real node has it on anyway for kube-proxy and Flannel's NAT).
    ConntrackOnly,
    Nftpol,
    /// nftpol with its port guard (`table bridge`): every frame from a pod
    /// port meets it, established traffic too.
    NftpolGuarded,
    Linear,
    LinearEveryPacket,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::None => "(a) no table",
            Variant::ConntrackOnly => "(a') conntrack only (1 ct rule)",
            Variant::Nftpol => "(b) nftpol",
            Variant::NftpolGuarded => "(b') nftpol + port guard",
            Variant::Linear => "(c) linear, ct established first",
            Variant::LinearEveryPacket => "(c') linear, every packet walks",
        }
    }

    fn activate(self, node: &Node, syncer: &mut Syncer, rs: &Ruleset, plan: &Plan) {
        match self {
            Variant::None => {}
            Variant::ConntrackOnly => {
                let text = format!(
                    "table inet {CT_TABLE} {{\nchain ct-only {{ type filter hook forward priority 0; policy accept;\nct state established,related accept\n}}\n}}\n"
                );
                node.nft()
                    .run(&["-f", "-"], Some(text.as_bytes()))
                    .expect("conntrack-only table");
            }
            Variant::Nftpol => {
                syncer.force_full();
                syncer.sync(rs.clone()).expect("nftpol apply");
            }
            Variant::NftpolGuarded => {
                syncer.force_full();
                syncer.sync(rs.clone()).expect("nftpol apply");
                let mut guard = PortGuard::new(
                    BTreeSet::from(["cni0".to_string()]),
                    Some(node.netns().path()),
                    node.nft(),
                    TABLE,
                );
                let report = guard.sync(plan, true).expect("port guard");
                assert_eq!(report.ports, 3, "client, server and intruder are guarded");
            }
            Variant::Linear | Variant::LinearEveryPacket => {
                let every = self == Variant::LinearEveryPacket;
                let mut text = format!("table inet {LINEAR_TABLE} {{\n");
                for (name, prio, walk, drops) in [
                    ("lin-eg", 0, "walk-eg", "drops-eg"),
                    ("lin-in", 1, "walk-in", "drops-in"),
                ] {
                    let ct = "ct state established,related accept";
                    let (before, after) = if every { ("", ct) } else { (ct, "") };
                    let _ = writeln!(
                        text,
                        "chain {name} {{ type filter hook forward priority {prio}; policy accept;\n{before}\njump {walk}\n{after}\njump {drops}\n}}"
                    );
                }
                text.push_str("}\n");
                node.nft()
                    .run(&["-f", "-"], Some(text.as_bytes()))
                    .expect("linear base chains");
            }
        }
    }

    fn deactivate(self, node: &Node, syncer: &mut Syncer) {
        match self {
            Variant::None => {}
            Variant::ConntrackOnly => {
                node.nft()
                    .run(&["delete", "table", "inet", CT_TABLE], None)
                    .expect("removing the conntrack-only table");
            }
            Variant::Nftpol => syncer.cleanup().expect("nftpol cleanup"),
            Variant::NftpolGuarded => {
                syncer.cleanup().expect("nftpol cleanup");
                GuardSyncer::new(node.nft(), TABLE)
                    .remove()
                    .expect("removing the port guard");
            }
            Variant::Linear | Variant::LinearEveryPacket => {
                let text = format!(
                    "delete chain inet {LINEAR_TABLE} lin-eg\ndelete chain inet {LINEAR_TABLE} lin-in\n"
                );
                node.nft()
                    .run(&["-f", "-"], Some(text.as_bytes()))
                    .expect("removing the linear base chains");
            }
        }
    }
}

struct VariantResult {
    variant: Variant,
    gbps: Vec<f64>,
    conns: Vec<f64>,
    conn_errors: usize,
    check: Option<String>,
}

impl VariantResult {
    fn new(variant: Variant) -> Self {
        Self {
            variant,
            gbps: vec![],
            conns: vec![],
            conn_errors: 0,
            check: None,
        }
    }
}

/// Allowed pairs connect, denied pairs do not (with no table: everything
/// connects, which also shows the servers are up). `ok (n probes)` or what
/// went wrong.
fn enforcement_check(v: Variant, pair: &Pair, client: &Pod, intruder: &Pod) -> String {
    let to = |port| SocketAddr::from((pair.server_ip, port));
    let enforcing = !matches!(v, Variant::None | Variant::ConntrackOnly);
    let cases: Vec<(&str, &Netns, SocketAddr, bool)> = vec![
        (
            "client → server iperf",
            client.netns(),
            to(IPERF_PORT),
            true,
        ),
        ("client → server http", client.netns(), to(pair.http), true),
        (
            "client → server denied port",
            client.netns(),
            to(pair.denied_port),
            !enforcing,
        ),
        (
            "intruder → server iperf",
            intruder.netns(),
            to(IPERF_PORT),
            !enforcing,
        ),
        (
            "intruder → server http",
            intruder.netns(),
            to(pair.http),
            !enforcing,
        ),
    ];
    let probes: Vec<Probe<'_>> = cases
        .iter()
        .map(|(_, from, to, _)| Probe {
            from,
            to: *to,
            proto: Protocol::Tcp,
        })
        .collect();
    let got = probe_all(&probes, DEFAULT_TIMEOUT).expect("probes");
    let wrong: Vec<String> = cases
        .iter()
        .zip(&got)
        .filter(|((_, _, _, want), got)| *want != **got)
        .map(|((name, _, _, want), _)| {
            format!("{name}: {}", if *want { "denied" } else { "allowed" })
        })
        .collect();
    if wrong.is_empty() {
        format!(
            "ok ({} allowed, {} denied)",
            got.iter().filter(|g| **g).count(),
            got.iter().filter(|g| !**g).count()
        )
    } else {
        format!("WRONG: {}", wrong.join("; "))
    }
}

// ---------------------------------------------------------------------------
// Lab pieces: pods, servers, the two measurements.

fn add_pod(node: &Node, role: &str, ip: Ipv4Addr) -> Pod {
    node.add_pod_with(role, ip, None)
        .unwrap_or_else(|e| panic!("lab pod {role} ({ip}): {e}"))
}

/// A TCP server that accepts and closes, on its own thread, until dropped.
struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    fn start(ns: &Netns, port: u16) -> Self {
        let listener = ns
            .run(move || -> std::io::Result<Socket> {
                let s = Socket::new(Domain::IPV4, Type::STREAM, Some(socket2::Protocol::TCP))?;
                s.set_reuse_address(true)?;
                s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
                s.listen(4096)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .expect("entering the server's namespace")
            .unwrap_or_else(|e| panic!("listening on {port}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(100u16));
                loop {
                    match listener.accept() {
                        Ok((conn, _)) => drop(conn),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `iperf3 -s -1` in the server's namespace (one test, then it exits),
/// killed on drop if it still runs.
struct IperfServer(Child);

impl IperfServer {
    fn start(ns: &Netns) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "iperf3", "-s", "-1", "-p"])
            .arg(IPERF_PORT.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting iperf3 -s");
        let server = Self(child);
        // Wait until it listens.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let listening = ns
                .exec(&["ss", "-ltnH", &format!("sport = :{IPERF_PORT}")])
                .is_ok_and(|o| !o.trim().is_empty());
            if listening {
                return server;
            }
            assert!(Instant::now() < deadline, "iperf3 -s did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// TCP throughput client → server in Gbit/s (`iperf3 -J`, the receiver's
/// figure), the first second omitted.
fn iperf(client: &Netns, server_ns: &Netns, server: Ipv4Addr, secs: u32) -> f64 {
    for attempt in 0..3 {
        let _server = IperfServer::start(server_ns);
        let out = Command::new("ip")
            .args(["netns", "exec", client.name(), "iperf3", "-J", "-O", "1"])
            .args(["-c", &server.to_string(), "-p", &IPERF_PORT.to_string()])
            .args(["-t", &secs.to_string(), "--connect-timeout", "3000"])
            .output()
            .expect("running iperf3 -c");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return bps / 1e9;
        }
        eprintln!(
            "iperf3 attempt {attempt} failed: {}",
            v["error"].as_str().unwrap_or("no result")
        );
    }
    panic!("iperf3 failed three times");
}

/// New connections per second from one thread: connect, then close with
/// SO_LINGER 0 (an RST, no TIME_WAIT). Returns the rate and the number of
/// connects that failed (1 s timeout).
fn conn_rate(client: &Netns, to: SocketAddr, dur: Duration) -> (f64, usize) {
    client
        .run(move || {
            let start = Instant::now();
            let (mut ok, mut failed) = (0usize, 0usize);
            while start.elapsed() < dur {
                let s = Socket::new(Domain::IPV4, Type::STREAM, Some(socket2::Protocol::TCP))
                    .expect("socket");
                s.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
                match s.connect_timeout(&to.into(), Duration::from_secs(1)) {
                    Ok(()) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok as f64 / start.elapsed().as_secs_f64(), failed)
        })
        .expect("entering the client's namespace")
}

// ---------------------------------------------------------------------------
// Output helpers.

fn median_f(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[(v.len() - 1) / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn target(ratio: f64, want: f64) -> String {
    let v = if ratio >= want { "PASS" } else { "MISS" };
    format!(" {v} (≥ {want})")
}

/// Cores, kernel, nft and iperf3 versions.
fn machine() -> String {
    let iperf = Command::new("iperf3")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    format!("{}, {iperf}", report::machine())
}
