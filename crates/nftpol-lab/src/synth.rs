//! Synthetic clusters for benchmarks and scale tests: deterministic for a
//! seed, shaped like a real multi-team cluster.
//!
//! ```text
//!  SynthSpec ──synth_cluster──► Snapshot
//!                                 │ with_local_pod_added / with_remote_pod_added /
//!                                 │ with_pod_relabeled / with_policy_added /
//!                                 ▼ with_namespace_relabeled
//!                               Snapshot (one object changed)
//! ```
//!
//! The layout:
//! - Namespaces `kube-system` (CoreDNS, label `k8s-app=kube-dns`, named
//!   ports `dns`/UDP 53 and `dns-tcp`/TCP 53) and `monitoring` (Prometheus),
//!   then `<team>-NNN` with labels `team` and `env`. Every tenth tenant
//!   namespace is dual-stack.
//! - Pods spread evenly over the namespaces, ~5 replicas per app, labels
//!   `app`, `tier`, `team`, `version`, `pod-template-hash`; named ports
//!   `http` and `metrics` whose numbers differ per (namespace, app).
//! - Exactly [`SynthSpec::local_pods`] pods on [`SynthSpec::node`], the rest
//!   on `worker-NNN` nodes with [`PODS_PER_NODE`] pods each. Node `k` owns
//!   `10.244.k.0/24` (continuing into 10.245… past 256 nodes) and
//!   `fd00:10:244:k::/64`.
//! - Policies: per-namespace default-deny (ingress for 4 in 5 namespaces,
//!   ingress and egress for 1 in 3, which then also get a DNS egress allow
//!   to kube-system), then app policies in turn over the namespaces:
//!   podSelector peers, namespaceSelector peers (`team=…` and `{}`),
//!   pod ∧ namespace peers, matchExpressions, named ports in ingress and
//!   egress, numeric ports and ranges, ipBlocks with `except`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};

use nftpol::compiler::{AddrSetKind, NamedPort, ObjectKey, PodInfo, Protocol, Snapshot, compile};

use crate::fixtures::{
    labels, mk_ns, mk_policy, named_port, namespace_object, pod_object, policy_object, running_pod,
};

/// Pods per remote node (the kubelet's default maximum).
pub const PODS_PER_NODE: usize = 110;

/// The size and shape of a synthetic cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthSpec {
    /// All pods, on every node.
    pub pods: usize,
    /// NetworkPolicies, exactly.
    pub policies: usize,
    /// Namespaces, including `kube-system` and `monitoring` (at least 3 are
    /// made).
    pub namespaces: usize,
    /// Pods on [`node`](Self::node), exactly (at most `pods`).
    pub local_pods: usize,
    /// The node the benchmark compiles for.
    pub node: String,
    pub seed: u64,
}

impl SynthSpec {
    /// `pods` / `policies` / `namespaces` with 110 pods on node `node-local`.
    pub fn new(pods: usize, policies: usize, namespaces: usize) -> Self {
        Self {
            pods,
            policies,
            namespaces,
            local_pods: PODS_PER_NODE.min(pods),
            node: "node-local".into(),
            seed: 1,
        }
    }
}

/// SplitMix64: small, fast and good enough for picking shapes.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// True with probability `num / den`.
    fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

const TEAMS: [&str; 12] = [
    "payments", "search", "identity", "catalog", "checkout", "data", "growth", "ml", "infra",
    "support", "mobile", "ads",
];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];

/// Tenant apps and their tier.
const APPS: [(&str, &str); 12] = [
    ("web", "frontend"),
    ("gateway", "frontend"),
    ("api", "backend"),
    ("auth", "backend"),
    ("cart", "backend"),
    ("search", "backend"),
    ("billing", "backend"),
    ("cache", "data"),
    ("db", "data"),
    ("queue", "data"),
    ("worker", "batch"),
    ("reports", "batch"),
];
const HTTP_PORTS: [u16; 7] = [80, 3000, 5000, 8000, 8080, 8443, 9000];
const METRICS_PORTS: [u16; 5] = [9090, 9100, 9102, 8081, 2112];

const KUBE_SYSTEM: &str = "kube-system";
const MONITORING: &str = "monitoring";

/// One app (a Deployment) of a namespace.
#[derive(Clone, Debug)]
struct App {
    name: &'static str,
    tier: &'static str,
    /// Extra labels (`k8s-app` for CoreDNS).
    extra: Vec<(&'static str, &'static str)>,
    ports: Vec<NamedPort>,
    template_hash: String,
}

#[derive(Clone, Debug)]
struct Ns {
    name: String,
    team: &'static str,
    env: &'static str,
    system: bool,
    dual_stack: bool,
    apps: Vec<App>,
    /// Default deny: (ingress, egress).
    deny: (bool, bool),
}

fn node_v4_addr(node: usize, slot: usize) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(10, 244, 0, 0));
    Ipv4Addr::from(base + ((node as u32) << 8) + slot as u32 + 2)
}

fn node_v4(node: usize, slot: usize) -> IpAddr {
    IpAddr::V4(node_v4_addr(node, slot))
}

fn node_v6(node: usize, slot: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0xfd00,
        0x10,
        0x244,
        node as u16,
        0,
        0,
        0,
        slot as u16 + 2,
    ))
}

fn remote_node_name(spec: &SynthSpec, k: usize) -> String {
    let name = format!("worker-{k:03}");
    if name == spec.node {
        format!("{name}-r")
    } else {
        name
    }
}

fn layout(spec: &SynthSpec, rng: &mut Rng) -> Vec<Ns> {
    let n = spec.namespaces.max(3);
    let pods_per_ns = spec.pods.div_ceil(n).max(1);
    let mut out = Vec::with_capacity(n);
    let tmpl = |rng: &mut Rng| format!("{:08x}", rng.next() as u32);
    out.push(Ns {
        name: KUBE_SYSTEM.into(),
        team: "infra",
        env: "prod",
        system: true,
        dual_stack: false,
        apps: vec![
            App {
                name: "coredns",
                tier: "system",
                extra: vec![("k8s-app", "kube-dns")],
                ports: vec![
                    named_port("dns", Protocol::Udp, 53),
                    named_port("dns-tcp", Protocol::Tcp, 53),
                    named_port("metrics", Protocol::Tcp, 9153),
                ],
                template_hash: tmpl(rng),
            },
            App {
                name: "metrics-server",
                tier: "system",
                extra: vec![("k8s-app", "metrics-server")],
                ports: vec![named_port("https", Protocol::Tcp, 10250)],
                template_hash: tmpl(rng),
            },
        ],
        deny: (false, false),
    });
    out.push(Ns {
        name: MONITORING.into(),
        team: "infra",
        env: "prod",
        system: true,
        dual_stack: false,
        apps: vec![
            App {
                name: "prometheus",
                tier: "system",
                extra: vec![],
                ports: vec![named_port("http", Protocol::Tcp, 9090)],
                template_hash: tmpl(rng),
            },
            App {
                name: "grafana",
                tier: "system",
                extra: vec![],
                ports: vec![named_port("http", Protocol::Tcp, 3000)],
                template_hash: tmpl(rng),
            },
        ],
        deny: (true, false),
    });
    for i in 2..n {
        let team = TEAMS[(i - 2) % TEAMS.len()];
        let env = *rng.pick(&ENVS);
        let mut vocab = APPS;
        rng.shuffle(&mut vocab);
        let n_apps = (pods_per_ns / 5).clamp(1, APPS.len());
        let apps = vocab[..n_apps]
            .iter()
            .map(|&(name, tier)| {
                let mut ports = Vec::new();
                if tier != "data" {
                    ports.push(named_port("http", Protocol::Tcp, *rng.pick(&HTTP_PORTS)));
                }
                if !rng.chance(1, 4) {
                    ports.push(named_port(
                        "metrics",
                        Protocol::Tcp,
                        *rng.pick(&METRICS_PORTS),
                    ));
                }
                App {
                    name,
                    tier,
                    extra: vec![],
                    ports,
                    template_hash: tmpl(rng),
                }
            })
            .collect();
        let egress = i % 3 == 0;
        out.push(Ns {
            name: format!("{team}-{i:03}"),
            team,
            env,
            system: false,
            dual_stack: i % 10 == 7,
            apps,
            deny: (egress || i % 5 != 4, egress),
        });
    }
    out
}

/// A synthetic cluster (see the module documentation for its shape).
pub fn synth_cluster(spec: &SynthSpec) -> Snapshot {
    let mut rng = Rng::new(spec.seed);
    let nss = layout(spec, &mut rng);
    let mut snap = Snapshot::default();
    for ns in &nss {
        snap.add_namespace(mk_ns(&ns.name, &[("team", ns.team), ("env", ns.env)]));
    }

    // Placement: a shuffled order of pods; the first `local` go to the local
    // node, the rest fill remote nodes 110 at a time.
    let local = spec.local_pods.min(spec.pods);
    let mut order: Vec<usize> = (0..spec.pods).collect();
    rng.shuffle(&mut order);
    let mut place = vec![(0usize, 0usize); spec.pods];
    for (rank, &pod) in order.iter().enumerate() {
        place[pod] = if rank < local {
            (0, rank)
        } else {
            let r = rank - local;
            (1 + r / PODS_PER_NODE, r % PODS_PER_NODE)
        };
    }

    let mut per_ns = vec![0usize; nss.len()];
    for (i, &(node, slot)) in place.iter().enumerate() {
        let ns_idx = i % nss.len();
        let ns = &nss[ns_idx];
        let j = per_ns[ns_idx];
        per_ns[ns_idx] += 1;
        let app = &ns.apps[j % ns.apps.len()];
        let mut l = labels(&[
            ("app", app.name),
            ("tier", app.tier),
            ("team", ns.team),
            ("pod-template-hash", app.template_hash.as_str()),
            ("version", if rng.chance(1, 5) { "v2" } else { "v1" }),
        ]);
        l.extend(labels(&app.extra));
        let mut ips = vec![node_v4(node, slot)];
        if ns.dual_stack {
            ips.push(node_v6(node, slot));
        }
        let mut pod = running_pod(
            ObjectKey::new(
                ns.name.clone(),
                format!("{}-{}-{:05x}", app.name, app.template_hash, j),
            ),
            if node == 0 {
                spec.node.clone()
            } else {
                remote_node_name(spec, node)
            },
            ips,
            l,
        );
        pod.named_ports = app.ports.clone().into();
        snap.add_pod(pod);
    }

    for p in policies(spec, &nss, &mut rng) {
        snap.add_policy(p);
    }
    snap
}

fn dns_egress_rule() -> Value {
    json!({
        "to": [{
            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": KUBE_SYSTEM } },
            "podSelector": { "matchLabels": { "k8s-app": "kube-dns" } },
        }],
        "ports": [
            { "protocol": "UDP", "port": "dns" },
            { "protocol": "TCP", "port": 53 },
        ],
    })
}

fn policies(spec: &SynthSpec, nss: &[Ns], rng: &mut Rng) -> Vec<NetworkPolicy> {
    let budget = spec.policies;
    let mut out: Vec<NetworkPolicy> = Vec::with_capacity(budget);
    let n_nodes = 1 + spec
        .pods
        .saturating_sub(spec.local_pods)
        .div_ceil(PODS_PER_NODE);

    // Baseline: default deny, then DNS for namespaces that deny egress.
    for ns in nss {
        if out.len() == budget {
            return out;
        }
        match ns.deny {
            (true, false) => out.push(mk_policy(
                &ns.name,
                "default-deny-ingress",
                json!({ "podSelector": {}, "policyTypes": ["Ingress"] }),
            )),
            (_, true) => out.push(mk_policy(
                &ns.name,
                "default-deny-all",
                json!({ "podSelector": {}, "policyTypes": ["Ingress", "Egress"] }),
            )),
            (false, false) => {}
        }
    }
    for ns in nss.iter().filter(|ns| ns.deny.1) {
        if out.len() == budget {
            return out;
        }
        out.push(mk_policy(
            &ns.name,
            "allow-dns",
            json!({
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [dns_egress_rule()],
            }),
        ));
    }

    // App policies, one namespace after the other.
    let tenants: Vec<&Ns> = nss.iter().filter(|ns| !ns.system).collect();
    let mut counter = 0usize;
    while out.len() < budget {
        let ns = tenants[counter % tenants.len()];
        counter += 1;
        let app = rng.pick(&ns.apps);
        let other = rng.pick(&ns.apps);
        let sel_app = json!({ "matchLabels": { "app": app.name } });
        let kind = rng.below(100);
        let (name, body) = match kind {
            // Same-namespace app → app on the named http port.
            0..=24 => (
                "allow-from-app",
                json!({
                    "podSelector": sel_app,
                    "ingress": [{
                        "from": [{ "podSelector": { "matchLabels": { "app": other.name } } }],
                        "ports": [{ "port": "http" }],
                    }],
                }),
            ),
            // A team's namespaces, numeric ports.
            25..=39 => (
                "allow-from-team",
                json!({
                    "podSelector": sel_app,
                    "policyTypes": ["Ingress"],
                    "ingress": [{
                        "from": [
                            { "namespaceSelector": { "matchLabels": { "team": rng.pick(&TEAMS) } } },
                            { "podSelector": { "matchLabels": { "tier": "frontend" } } },
                        ],
                        "ports": [
                            { "protocol": "TCP", "port": 8080 },
                            { "protocol": "TCP", "port": 8443 },
                        ],
                    }],
                }),
            ),
            // Prometheus (pod ∧ namespace) scrapes the named metrics port.
            40..=51 => (
                "allow-prometheus",
                json!({
                    "podSelector": {},
                    "ingress": [{
                        "from": [{
                            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": MONITORING } },
                            "podSelector": { "matchLabels": { "app": "prometheus" } },
                        }],
                        "ports": [{ "port": "metrics" }],
                    }],
                }),
            ),
            // Every namespace (`{}`) reaches the front door; ports and a range.
            52..=59 => (
                "allow-from-all-namespaces",
                json!({
                    // Half of them open every pod of the namespace.
                    "podSelector": if rng.chance(1, 2) { json!({}) } else { json!({ "matchExpressions": [
                        { "key": "tier", "operator": "In", "values": ["frontend"] },
                    ] }) },
                    "ingress": [{
                        "from": [{ "namespaceSelector": {} }],
                        "ports": [
                            { "protocol": "TCP", "port": 80 },
                            { "protocol": "TCP", "port": 443 },
                            { "protocol": "TCP", "port": 30000, "endPort": 32767 },
                        ],
                    }],
                }),
            ),
            // Egress to an app here and to backends of prod namespaces, by
            // the destination's named port, plus DNS.
            60..=74 => (
                "allow-egress-to-app",
                json!({
                    "podSelector": sel_app,
                    "policyTypes": ["Egress"],
                    "egress": [
                        {
                            "to": [
                                { "podSelector": { "matchLabels": { "app": other.name } } },
                                {
                                    "namespaceSelector": { "matchLabels": { "env": "prod" } },
                                    "podSelector": { "matchLabels": { "tier": "backend" } },
                                },
                            ],
                            "ports": [{ "port": "http" }, { "port": "metrics" }],
                        },
                        dns_egress_rule(),
                    ],
                }),
            ),
            // Egress to the internet but not to private ranges or metadata.
            75..=84 => {
                let mut to = vec![json!({ "ipBlock": {
                    "cidr": "0.0.0.0/0",
                    "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.169.254/32"],
                } })];
                if ns.dual_stack {
                    to.push(json!({ "ipBlock": { "cidr": "::/0", "except": ["fd00::/8", "fe80::/10"] } }));
                }
                (
                    "allow-egress-internet",
                    json!({
                        "podSelector": sel_app,
                        "policyTypes": ["Egress"],
                        "egress": [{ "to": to, "ports": [
                            { "protocol": "TCP", "port": 443 },
                            { "protocol": "TCP", "port": 8000, "endPort": 8999 },
                        ] }],
                    }),
                )
            }
            // The pod network but one node's range, UDP and a TCP range.
            85..=92 => {
                let o = node_v4_addr(rng.below(n_nodes), 0).octets();
                (
                    "allow-from-pod-network",
                    json!({
                        "podSelector": sel_app,
                        "ingress": [{
                            "from": [{ "ipBlock": {
                                "cidr": "10.240.0.0/12",
                                "except": [format!("{}.{}.{}.0/24", o[0], o[1], o[2]), "10.250.0.0/16"],
                            } }],
                            "ports": [
                                { "protocol": "UDP", "port": 5353 },
                                { "protocol": "TCP", "port": 5000, "endPort": 5100 },
                            ],
                        }],
                    }),
                )
            }
            // Expressions on both sides, protocol-wide and numeric ports.
            _ => (
                "allow-tiers",
                json!({
                    "podSelector": { "matchExpressions": [
                        { "key": "app", "operator": "In", "values": [app.name, other.name] },
                    ] },
                    "ingress": [{
                        "from": [{ "podSelector": { "matchExpressions": [
                            { "key": "tier", "operator": "In", "values": ["frontend", "backend"] },
                            { "key": "version", "operator": "NotIn", "values": ["canary"] },
                        ] } }],
                        "ports": [
                            { "protocol": "UDP" },
                            { "protocol": "TCP", "port": 9000, "endPort": 9010 },
                            { "protocol": "TCP", "port": 7000 },
                        ],
                    }],
                }),
            ),
        };
        out.push(mk_policy(
            &ns.name,
            &format!("{name}-{}-{counter}", app.name),
            body,
        ));
    }
    out
}

// ---------------------------------------------------------------------------
// One change at a time, for incremental runs.

fn replace_pod(snap: &Snapshot, key: &ObjectKey, pod: PodInfo) -> Snapshot {
    let mut out = snap.clone();
    for p in out.pods.iter_mut() {
        if &p.key == key {
            *p = Arc::new(pod);
            return out;
        }
    }
    panic!("pod {key} not in the snapshot");
}

/// A pod name not yet used in `ns`.
fn fresh_name(snap: &Snapshot, ns: &str, base: &str) -> String {
    let used: BTreeSet<&str> = snap
        .pods
        .iter()
        .filter(|p| *p.key.namespace == *ns)
        .map(|p| p.key.name.as_str())
        .collect();
    (0..)
        .map(|i| format!("{base}-x{i}"))
        .find(|n| !used.contains(n.as_str()))
        .expect("some name is free")
}

/// The lowest free addresses in the /24 (and /64) of `template`'s node.
fn fresh_ips(snap: &Snapshot, template: &PodInfo) -> Vec<IpAddr> {
    let used: BTreeSet<IpAddr> = snap
        .pods
        .iter()
        .flat_map(|p| p.ips.iter().copied())
        .collect();
    let Some(IpAddr::V4(v4)) = template.ips.first().copied() else {
        panic!("synthetic pods have an IPv4 address first");
    };
    let base = u32::from(v4) & !0xff;
    let node = ((base - u32::from(Ipv4Addr::new(10, 244, 0, 0))) >> 8) as usize;
    let slot = (0..252)
        .find(|s| !used.contains(&node_v4(node, *s)))
        .expect("the node's /24 has a free address");
    let mut ips = vec![node_v4(node, slot)];
    if template.ips.iter().any(|ip| ip.is_ipv6()) {
        ips.push(node_v6(node, slot));
    }
    ips
}

/// A copy of `template` (same namespace, labels and ports, same node) with
/// a new name and address.
fn replica_of(snap: &Snapshot, template: &PodInfo) -> Snapshot {
    let base = template
        .key
        .name
        .rsplit_once('-')
        .map_or(template.key.name.as_str(), |(head, _)| head);
    let mut pod = template.clone();
    pod.key.name = fresh_name(snap, &template.key.namespace, base);
    pod.ips = fresh_ips(snap, template).into();
    let mut out = snap.clone();
    out.add_pod(pod);
    out
}

/// Local pods (sorted by key) that some policy of their namespace isolates.
fn isolated_local_pods<'a>(snap: &'a Snapshot, spec: &SynthSpec) -> Vec<&'a PodInfo> {
    let plan = compile(snap, &spec.node).plan;
    let isolated: BTreeSet<&ObjectKey> = plan.pods.iter().map(|c| &c.pod).collect();
    let mut pods: Vec<&PodInfo> = snap
        .pods
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| isolated.contains(&p.key))
        .collect();
    pods.sort_by(|a, b| a.key.cmp(&b.key));
    pods
}

/// One more replica, on the local node, of the first local pod that policy
/// isolates: a new pod chain, dispatch entries, and new elements in the
/// peer and named-port sets that cover its app.
pub fn with_local_pod_added(snap: &Snapshot, spec: &SynthSpec) -> Snapshot {
    let pods = isolated_local_pods(snap, spec);
    let template = pods.first().expect("some local pod is isolated by policy");
    replica_of(snap, template)
}

/// One more replica, on its own remote node, of the remote pod whose
/// address is in the most peer sets of the local plan: only set elements
/// change on this node.
pub fn with_remote_pod_added(snap: &Snapshot, spec: &SynthSpec) -> Snapshot {
    let plan = compile(snap, &spec.node).plan;
    let mut hits: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for set in plan.addr_sets.values() {
        if let AddrSetKind::Hosts(h) = &set.kind {
            for ip in h {
                *hits.entry(*ip).or_default() += 1;
            }
        }
    }
    let mut remote: Vec<&PodInfo> = snap
        .pods
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| p.is_active() && p.node.as_deref() != Some(spec.node.as_str()))
        .collect();
    remote.sort_by(|a, b| a.key.cmp(&b.key));
    let score = |p: &PodInfo| {
        p.ips
            .iter()
            .map(|ip| hits.get(ip).unwrap_or(&0))
            .sum::<usize>()
    };
    let template = remote
        .iter()
        .copied()
        .filter(|p| score(p) > 0)
        // First of the highest score.
        .min_by_key(|p| std::cmp::Reverse(score(p)))
        .expect("some remote pod is in a peer set");
    replica_of(snap, template)
}

/// The first isolated local pod moved to another app of its namespace
/// (labels `app` and `tier`): policies and peer sets that select it change.
/// The `app` labels of a namespace's pods, each with its `tier`.
fn apps_in_namespace<'a>(snap: &'a Snapshot, ns: &str) -> BTreeMap<&'a str, &'a str> {
    let mut apps = BTreeMap::new();
    for p in snap.pods.iter().filter(|p| *p.key.namespace == *ns) {
        if let (Some(a), Some(t)) = (p.labels.get("app"), p.labels.get("tier")) {
            apps.insert(a, t);
        }
    }
    apps
}

pub fn with_pod_relabeled(snap: &Snapshot, spec: &SynthSpec) -> Snapshot {
    for pod in isolated_local_pods(snap, spec) {
        let apps = apps_in_namespace(snap, &pod.key.namespace);
        let current = pod.labels.get("app");
        if let Some((app, tier)) = apps.iter().find(|(a, _)| Some(**a) != current) {
            let mut new = pod.clone();
            new.labels = new.labels.with("app", app).with("tier", tier);
            return replace_pod(snap, &pod.key, new);
        }
    }
    panic!("no isolated local pod has a second app in its namespace");
}

/// A new policy in the namespace of the first isolated local pod: ingress to
/// its app from another app by named port, and from a team's namespaces.
pub fn with_policy_added(snap: &Snapshot, spec: &SynthSpec) -> Snapshot {
    let pods = isolated_local_pods(snap, spec);
    let pod = pods.first().expect("some local pod is isolated by policy");
    let ns = &pod.key.namespace;
    let app = pod.labels.get("app").unwrap_or_default().to_string();
    let other = snap
        .pods
        .iter()
        .filter(|p| &p.key.namespace == ns)
        .filter_map(|p| p.labels.get("app"))
        .find(|a| *a != app)
        .map_or_else(|| app.clone(), str::to_string);
    let used: BTreeSet<&str> = snap
        .policies
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(&*ns))
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    let name = (0..)
        .map(|i| format!("bench-added-{i}"))
        .find(|n| !used.contains(n.as_str()))
        .expect("some name is free");
    let mut out = snap.clone();
    out.add_policy(mk_policy(
        ns,
        &name,
        json!({
            "podSelector": { "matchLabels": { "app": app } },
            "ingress": [{
                "from": [
                    { "podSelector": { "matchLabels": { "app": other } } },
                    { "namespaceSelector": { "matchLabels": { "team": TEAMS[0], "env": "prod" } } },
                ],
                "ports": [{ "port": "http" }, { "protocol": "TCP", "port": 7443 }],
            }],
        }),
    ));
    out
}

/// The first tenant namespace (by name) whose `team` label some policy's
/// namespaceSelector names, moved to the next team: pods of that namespace
/// leave some peer sets and join others.
pub fn with_namespace_relabeled(snap: &Snapshot, _spec: &SynthSpec) -> Snapshot {
    let mut named_teams: BTreeSet<String> = BTreeSet::new();
    for p in &snap.policies {
        let v = serde_json::to_value(p.as_ref()).expect("policies serialize");
        collect_team_selectors(&v, &mut named_teams);
    }
    let with_pods: BTreeSet<&str> = snap.pods.iter().map(|p| &*p.key.namespace).collect();
    let ns = snap
        .namespaces
        .values()
        .filter(|ns| ns.name != KUBE_SYSTEM && ns.name != MONITORING)
        .filter(|ns| with_pods.contains(ns.name.as_str()))
        .find(|ns| {
            ns.labels
                .get("team")
                .is_some_and(|t| named_teams.contains(t))
        })
        .expect("some namespace's team is selected by a policy");
    let team = ns.labels["team"].as_str();
    let next = TEAMS
        .iter()
        .cycle()
        .skip_while(|t| **t != team)
        .nth(1)
        .unwrap_or(&TEAMS[0]);
    let mut new = ns.clone();
    new.labels.insert("team".into(), next.to_string());
    let mut out = snap.clone();
    out.add_namespace(new);
    out
}

/// A local pod moved to another app of its namespace (labels `app` and
/// `tier`) so that the node's plan changes: the first isolated local pod
/// (by key) for which it does. ([`with_pod_relabeled`] may pick a pod that
/// only namespace-wide policies select, as it does in the 50k cluster.)
pub fn with_pod_relabeled_for_node(snap: &Snapshot, spec: &SynthSpec) -> Snapshot {
    let base = compile(snap, &spec.node).plan;
    for pod in isolated_local_pods(snap, spec).into_iter().take(50) {
        let apps = apps_in_namespace(snap, &pod.key.namespace);
        let current = pod.labels.get("app");
        for (app, tier) in apps.iter().filter(|(a, _)| Some(**a) != current) {
            let mut new = pod.clone();
            new.labels = new.labels.with("app", app).with("tier", tier);
            let out = replace_pod(snap, &pod.key, new);
            if compile(&out, &spec.node).plan != base {
                return out;
            }
        }
    }
    panic!(
        "no relabel of a local pod changes the plan of {}",
        spec.node
    );
}

/// A tenant namespace moved to another team so that the node's plan
/// changes: into a team that a namespaceSelector of one of the node's
/// policies names, or out of one. ([`with_namespace_relabeled`] may pick a
/// namespace that no policy of the node cares about, as it does in the 10k
/// cluster.) Returns the snapshot and the namespace's name.
pub fn with_namespace_relabeled_for_node(snap: &Snapshot, spec: &SynthSpec) -> (Snapshot, String) {
    let base = compile(snap, &spec.node).plan;
    let local: BTreeSet<&ObjectKey> = base.policies.keys().map(|id| &id.policy).collect();
    let mut named: BTreeSet<String> = BTreeSet::new();
    for p in &snap.policies {
        let key = ObjectKey::new(
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
        );
        if local.contains(&key) {
            let v = serde_json::to_value(p.as_ref()).expect("policies serialize");
            collect_team_selectors(&v, &mut named);
        }
    }
    let with_pods: BTreeSet<&str> = snap.pods.iter().map(|p| &*p.key.namespace).collect();
    let tenants = snap
        .namespaces
        .values()
        .filter(|ns| ns.name != KUBE_SYSTEM && ns.name != MONITORING)
        .filter(|ns| with_pods.contains(ns.name.as_str()));
    for ns in tenants.take(50) {
        let Some(team) = ns.labels.get("team") else {
            continue;
        };
        // Into a named team, or out of one.
        let target = if named.contains(team) {
            TEAMS.iter().find(|t| !named.contains(**t))
        } else {
            TEAMS.iter().find(|t| named.contains(**t))
        };
        let Some(target) = target else { continue };
        let mut new = ns.clone();
        new.labels.insert("team".into(), target.to_string());
        let mut out = snap.clone();
        out.add_namespace(new);
        if compile(&out, &spec.node).plan != base {
            return (out, ns.name.clone());
        }
    }
    panic!("no namespace relabel changes the plan of {}", spec.node);
}

/// The `team` values of every namespaceSelector's matchLabels in `v`.
pub fn collect_team_selectors(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(t) = m
                .get("namespaceSelector")
                .and_then(|s| s.get("matchLabels"))
                .and_then(|l| l.get("team"))
                .and_then(Value::as_str)
            {
                out.insert(t.to_string());
            }
            m.values().for_each(|x| collect_team_selectors(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_team_selectors(x, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// API objects: a synthetic cluster as a client would create it on an API
// server (the development server, for end-to-end benchmarks).

/// A synthetic cluster as API objects (JSON), in creation order: namespaces
/// first, then pods and policies (which need their namespace).
#[derive(Clone, Debug, Default)]
pub struct ApiObjects {
    pub namespaces: Vec<Value>,
    pub pods: Vec<Value>,
    pub policies: Vec<Value>,
}

impl ApiObjects {
    pub fn len(&self) -> usize {
        self.namespaces.len() + self.pods.len() + self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every object of a snapshot, as API objects.
pub fn api_objects(snap: &Snapshot) -> ApiObjects {
    ApiObjects {
        namespaces: snap.namespaces.values().map(namespace_object).collect(),
        pods: snap.pods.iter().map(|p| pod_object(p)).collect(),
        policies: snap.policies.iter().map(|p| policy_object(p)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nftpol::compiler::parse_policies;

    fn small() -> SynthSpec {
        SynthSpec::new(1000, 100, 50)
    }

    #[test]
    fn sizes_are_exact() {
        let spec = small();
        let snap = synth_cluster(&spec);
        assert_eq!(snap.pods.len(), 1000);
        assert_eq!(snap.policies.len(), 100);
        assert_eq!(snap.namespaces.len(), 50);
        let local = snap
            .pods
            .iter()
            .filter(|p| p.node.as_deref() == Some("node-local"))
            .count();
        assert_eq!(local, 110);
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for p in &snap.pods {
            *per_node.entry(p.node.as_deref().unwrap()).or_default() += 1;
        }
        assert!(per_node.values().all(|n| *n <= PODS_PER_NODE));
    }

    #[test]
    fn deterministic_per_seed() {
        let spec = small();
        let a = synth_cluster(&spec);
        let b = synth_cluster(&spec);
        assert_eq!(a.pods, b.pods);
        assert_eq!(a.policies, b.policies);
        let c = synth_cluster(&SynthSpec { seed: 2, ..spec });
        assert_ne!(a.pods, c.pods);
    }

    #[test]
    fn addresses_and_names_are_unique() {
        let snap = synth_cluster(&SynthSpec::new(10_000, 1000, 500));
        let ips: BTreeSet<IpAddr> = snap
            .pods
            .iter()
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        let n_ips: usize = snap.pods.iter().map(|p| p.ips.len()).sum();
        assert_eq!(ips.len(), n_ips);
        let keys: BTreeSet<&ObjectKey> = snap.pods.iter().map(|p| &p.key).collect();
        assert_eq!(keys.len(), snap.pods.len());
    }

    #[test]
    fn policies_are_valid_and_used() {
        let spec = small();
        let snap = synth_cluster(&spec);
        let mut diags = Vec::new();
        assert_eq!(parse_policies(&snap, &mut diags).len(), 100);
        assert!(diags.is_empty(), "{diags:?}");
        let c = compile(&snap, &spec.node);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(c.plan.pods.len() > 50);
        assert!(c.plan.policies.len() > 10);
        assert!(!c.plan.port_sets.is_empty());
        assert!(
            c.plan
                .addr_sets
                .values()
                .any(|s| matches!(s.kind, AddrSetKind::Ranges(_)))
        );
    }

    #[test]
    fn incremental_changes_change_the_plan() {
        let spec = small();
        let snap = synth_cluster(&spec);
        let base = compile(&snap, &spec.node).plan;
        type Change = fn(&Snapshot, &SynthSpec) -> Snapshot;
        let changes: [(&str, Change); 5] = [
            ("local pod", with_local_pod_added),
            ("remote pod", with_remote_pod_added),
            ("pod relabeled", with_pod_relabeled),
            ("policy added", with_policy_added),
            ("namespace relabeled", with_namespace_relabeled),
        ];
        for (what, change) in changes {
            let next = change(&snap, &spec);
            let plan = compile(&next, &spec.node).plan;
            assert_ne!(plan, base, "{what}");
        }
        let local = with_local_pod_added(&snap, &spec);
        assert_eq!(local.pods.len(), snap.pods.len() + 1);
        let plan = compile(&local, &spec.node).plan;
        assert!(plan.pods.len() > base.pods.len());
        let remote = with_remote_pod_added(&snap, &spec);
        let plan = compile(&remote, &spec.node).plan;
        assert_eq!(plan.pods, base.pods);
        assert_ne!(plan.addr_sets, base.addr_sets);
    }

    #[test]
    fn relabels_for_the_node_change_its_plan() {
        for spec in [small(), SynthSpec::new(10_000, 1000, 500)] {
            let snap = synth_cluster(&spec);
            let next = with_pod_relabeled_for_node(&snap, &spec);
            assert_ne!(
                compile(&next, &spec.node).plan,
                compile(&snap, &spec.node).plan
            );
            let (next, ns) = with_namespace_relabeled_for_node(&snap, &spec);
            assert_ne!(snap.namespaces[&ns].labels, next.namespaces[&ns].labels);
            assert_ne!(
                compile(&next, &spec.node).plan,
                compile(&snap, &spec.node).plan
            );
        }
    }

    #[test]
    fn api_objects_trim_back_to_the_snapshot() {
        use k8s_openapi::api::core::v1::{Namespace, Pod};
        use nftpol::compiler::NamespaceInfo;
        let snap = synth_cluster(&small());
        let objs = api_objects(&snap);
        assert_eq!(objs.len(), 50 + 1000 + 100);
        for (obj, pod) in objs.pods.iter().zip(&snap.pods) {
            let back: Pod = serde_json::from_value(obj.clone()).expect("a Pod");
            assert_eq!(&PodInfo::from_pod(&back), pod.as_ref());
        }
        for (obj, ns) in objs.namespaces.iter().zip(snap.namespaces.values()) {
            let back: Namespace = serde_json::from_value(obj.clone()).expect("a Namespace");
            assert_eq!(&NamespaceInfo::from_namespace(&back), ns);
        }
        for (obj, p) in objs.policies.iter().zip(&snap.policies) {
            let back: NetworkPolicy = serde_json::from_value(obj.clone()).expect("a policy");
            assert_eq!(&back, p.as_ref());
        }
    }
}
