//! Holds the incremental compiler to a fresh compilation.
//!
//! A random small cluster, then a random sequence of changes: pods added,
//! deleted, relabelled, replaced (another node, state, addresses or ports)
//! or written again unchanged; policies added (some invalid), changed,
//! deleted or written again; namespaces relabelled, deleted and recreated.
//! One [`Incremental`] per node takes each change; after random steps and
//! after the last one, its plan, findings and warnings must equal
//! [`compile`] of the same objects.
//!
//! Each node's table follows along as the controller keeps it: the plan is
//! rendered and diffed against what was applied before (interval sets are
//! then cut as history left them, not canonically), and the table after the
//! diff must decide every probe as the freshly rendered one does. The
//! renderer the controller keeps (which reuses the allow-lists of pods whose
//! inputs did not change) must render exactly what a fresh render does.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::r#gen::{self as g, NAMESPACES, NODES, PodGen};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use nftpol::compiler::Protocol;
use nftpol::compiler::{
    Incremental, Labels, NamespaceInfo, ObjectKey, PodInfo, Snapshot, compile, policy_key,
};
use nftpol::nft::render::Renderer;
use nftpol::nft::{Ruleset, ops, render};
use nftpol_lab::eval::{self, Packet};
use proptest::prelude::*;
use proptest::sample::Index;

/// How a policy is made invalid.
#[derive(Clone, Copy, Debug)]
enum Breakage {
    /// A podSelector that cannot be read: the policy isolates its whole
    /// namespace and allows nothing (an error).
    Selector,
    /// An extra ingress rule with a bad CIDR: that rule allows nothing (a
    /// warning).
    Cidr,
}

#[derive(Clone, Debug)]
enum Change {
    AddPod(PodGen, u8),
    RemovePod(Index),
    RelabelPod(Index, Labels),
    /// Same key, everything else from the generator (may equal the old pod).
    ReplacePod(Index, PodGen, u8),
    /// The same pod written again (a new allocation, equal content).
    TouchPod(Index),
    AddPolicy(usize, NetworkPolicySpec, Option<Breakage>),
    UpdatePolicy(Index, NetworkPolicySpec, Option<Breakage>),
    RemovePolicy(Index),
    /// The same spec with a new resourceVersion.
    TouchPolicy(Index),
    /// Creates the namespace object when it is missing.
    RelabelNamespace(usize, Labels),
    /// Deletes the namespace object (its pods stay, and no namespace
    /// selector matches them until it is back).
    RemoveNamespace(usize),
}

fn breakage() -> impl Strategy<Value = Option<Breakage>> {
    prop_oneof![
        6 => Just(None),
        1 => Just(Some(Breakage::Selector)),
        1 => Just(Some(Breakage::Cidr)),
    ]
}

/// Pod addresses collide often, also three ways (the generated cluster's
/// pods have hosts 10..18, on two nodes).
fn host() -> impl Strategy<Value = u8> {
    prop_oneof![3 => 10..12u8, 1 => 10..40u8]
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => (g::pod_gen(), host()).prop_map(|(p, h)| Change::AddPod(p, h)),
        2 => any::<Index>().prop_map(Change::RemovePod),
        3 => (any::<Index>(), g::labels_from(g::POD_VOCAB)).prop_map(|(i, l)| Change::RelabelPod(i, l)),
        2 => (any::<Index>(), g::pod_gen(), host()).prop_map(|(i, p, h)| Change::ReplacePod(i, p, h)),
        1 => any::<Index>().prop_map(Change::TouchPod),
        2 => (0..NAMESPACES.len(), g::policy_spec(), breakage())
            .prop_map(|(ns, s, b)| Change::AddPolicy(ns, s, b)),
        2 => (any::<Index>(), g::policy_spec(), breakage())
            .prop_map(|(i, s, b)| Change::UpdatePolicy(i, s, b)),
        1 => any::<Index>().prop_map(Change::RemovePolicy),
        1 => any::<Index>().prop_map(Change::TouchPolicy),
        3 => (0..NAMESPACES.len(), g::labels_from(g::NS_VOCAB))
            .prop_map(|(ns, l)| Change::RelabelNamespace(ns, l)),
        1 => (0..NAMESPACES.len()).prop_map(Change::RemoveNamespace),
    ]
}

fn broken(mut spec: NetworkPolicySpec, how: Option<Breakage>) -> NetworkPolicySpec {
    match how {
        None => {}
        Some(Breakage::Selector) => {
            spec.pod_selector = Some(LabelSelector {
                match_labels: Some([("bad key".to_string(), "x".to_string())].into()),
                ..Default::default()
            });
        }
        Some(Breakage::Cidr) => {
            spec.ingress
                .get_or_insert_with(Vec::new)
                .push(NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        ip_block: Some(IPBlock {
                            cidr: "10.0.0.0/33".into(),
                            except: None,
                        }),
                        ..Default::default()
                    }]),
                    ports: None,
                })
        }
    }
    spec
}

fn mk_policy(ns: &str, name: &str, version: u64, spec: NetworkPolicySpec) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            namespace: Some(ns.to_string()),
            name: Some(name.to_string()),
            resource_version: Some(version.to_string()),
            ..Default::default()
        },
        spec: Some(spec),
    }
}

/// The objects as they are, and one incremental compiler per node fed
/// with every change.
struct World {
    namespaces: BTreeMap<String, NamespaceInfo>,
    pods: BTreeMap<ObjectKey, Arc<PodInfo>>,
    policies: BTreeMap<ObjectKey, Arc<NetworkPolicy>>,
    compilers: Vec<Incremental>,
    /// Each node's table as the last diff left it.
    applied: Vec<Option<Ruleset>>,
    /// Each node's renderer, which reuses unchanged pods' allow-lists.
    renderers: Vec<Renderer>,
    version: u64,
}

fn pick<'a, K, V>(map: &'a BTreeMap<K, V>, i: &Index) -> Option<(&'a K, &'a V)> {
    (!map.is_empty()).then(|| map.iter().nth(i.index(map.len())).expect("in range"))
}

impl World {
    fn new(snap: &Snapshot) -> Self {
        let mut w = Self {
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            policies: BTreeMap::new(),
            compilers: NODES.iter().map(|n| Incremental::new(*n)).collect(),
            applied: NODES.iter().map(|_| None).collect(),
            renderers: NODES.iter().map(|_| Renderer::default()).collect(),
            version: 0,
        };
        for ns in snap.namespaces.values() {
            w.put_namespace(ns.clone());
        }
        for pod in &snap.pods {
            w.put_pod(pod.as_ref().clone());
        }
        for np in &snap.policies {
            w.put_policy(np.as_ref().clone());
        }
        w
    }

    /// The snapshot `compile` gets: every object once, sorted by key.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            namespaces: self.namespaces.clone(),
            pods: self.pods.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
        }
    }

    fn put_namespace(&mut self, ns: NamespaceInfo) {
        let ns = Arc::new(ns);
        for c in &mut self.compilers {
            c.upsert_namespace(ns.clone());
        }
        self.namespaces.insert(ns.name.clone(), ns.as_ref().clone());
    }

    fn put_pod(&mut self, pod: PodInfo) {
        let pod = Arc::new(pod);
        for c in &mut self.compilers {
            c.upsert_pod(pod.clone());
        }
        self.pods.insert(pod.key.clone(), pod);
    }

    fn put_policy(&mut self, np: NetworkPolicy) {
        let np = Arc::new(np);
        for c in &mut self.compilers {
            c.upsert_policy(np.clone());
        }
        self.policies.insert(policy_key(&np), np);
    }

    fn apply(&mut self, step: usize, change: &Change) {
        self.version += 1;
        let version = self.version;
        match change.clone() {
            Change::AddPod(p, host) => {
                let ns = NAMESPACES[p.ns % NAMESPACES.len()];
                self.put_pod(g::pod_info(ns, &format!("n{step}"), host, p));
            }
            Change::RemovePod(i) => {
                let Some((key, _)) = pick(&self.pods, &i) else {
                    return;
                };
                let key = key.clone();
                for c in &mut self.compilers {
                    c.remove_pod(&key);
                }
                self.pods.remove(&key);
            }
            Change::RelabelPod(i, labels) => {
                let Some((_, pod)) = pick(&self.pods, &i) else {
                    return;
                };
                let pod = PodInfo {
                    labels: labels.into(),
                    ..pod.as_ref().clone()
                };
                self.put_pod(pod);
            }
            Change::ReplacePod(i, p, host) => {
                let Some((key, _)) = pick(&self.pods, &i) else {
                    return;
                };
                let key = key.clone();
                self.put_pod(g::pod_info(&key.namespace, &key.name, host, p));
            }
            Change::TouchPod(i) => {
                let Some((_, pod)) = pick(&self.pods, &i) else {
                    return;
                };
                self.put_pod(pod.as_ref().clone());
            }
            Change::AddPolicy(ns, spec, how) => {
                let np = mk_policy(
                    NAMESPACES[ns],
                    &format!("q{step}"),
                    version,
                    broken(spec, how),
                );
                self.put_policy(np);
            }
            Change::UpdatePolicy(i, spec, how) => {
                let Some((key, _)) = pick(&self.policies, &i) else {
                    return;
                };
                let np = mk_policy(&key.namespace, &key.name, version, broken(spec, how));
                self.put_policy(np);
            }
            Change::RemovePolicy(i) => {
                let Some((key, _)) = pick(&self.policies, &i) else {
                    return;
                };
                let key = key.clone();
                for c in &mut self.compilers {
                    c.remove_policy(&key);
                }
                self.policies.remove(&key);
            }
            Change::TouchPolicy(i) => {
                let Some((_, np)) = pick(&self.policies, &i) else {
                    return;
                };
                let mut np = np.as_ref().clone();
                np.metadata.resource_version = Some(version.to_string());
                self.put_policy(np);
            }
            Change::RelabelNamespace(i, labels) => {
                self.put_namespace(NamespaceInfo::new(NAMESPACES[i], labels));
            }
            Change::RemoveNamespace(i) => {
                for c in &mut self.compilers {
                    c.remove_namespace(NAMESPACES[i]);
                }
                self.namespaces.remove(NAMESPACES[i]);
            }
        }
    }

    /// Every node's incremental result against a fresh compilation.
    fn check(&mut self, after: &str) -> Result<(), TestCaseError> {
        let snap = self.snapshot();
        for c in &mut self.compilers {
            let fresh = compile(&snap, c.node());
            let got = c.compile();
            prop_assert_eq!(
                &got.plan,
                &fresh.plan,
                "plan of {} after {}",
                c.node(),
                after
            );
            prop_assert_eq!(
                &got.diagnostics,
                &fresh.diagnostics,
                "findings after {}",
                after
            );
            prop_assert_eq!(&got.warnings, &fresh.warnings, "warnings after {}", after);
        }
        for (i, c) in self.compilers.iter_mut().enumerate() {
            let plan = c.compile().plan;
            let want = render(&plan, "nftpol");
            prop_assert!(
                self.renderers[i].render(&plan, "nftpol") == want,
                "{}: the reusing renderer differs from a fresh render after {}",
                c.node(),
                after
            );
            let now = match self.applied[i].take() {
                None => want.clone(),
                Some(old) => {
                    let change = ops::diff(&old, &want);
                    prop_assert!(
                        change.is_some(),
                        "{}: no incremental diff after {}",
                        c.node(),
                        after
                    );
                    change.expect("checked").applied
                }
            };
            for p in probes(&snap) {
                let (a, b) = (eval::forward(&now, &p), eval::forward(&want, &p));
                prop_assert_eq!(
                    a.accepted,
                    b.accepted,
                    "{}: {:?} decided otherwise by the table after the diff than by the rendered one, after {}",
                    c.node(),
                    p,
                    after
                );
            }
            self.applied[i] = Some(now);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(g::config())]

    #[test]
    fn incremental_plans_equal_fresh_compilations(
        cluster in g::cluster(),
        changes in proptest::collection::vec((change(), any::<bool>()), 1..40),
    ) {
        let mut w = World::new(&cluster.snap);
        w.check("loading")?;
        for (step, (change, compile_now)) in changes.iter().enumerate() {
            w.apply(step, change);
            if *compile_now {
                w.check(&format!("step {step}: {change:?}"))?;
            }
        }
        w.check("the last step")?;
    }
}

/// Every pair of pod and external addresses of one family (pods of any
/// phase, so that addresses of finished pods are probed too), on the ports
/// policies here use and a few others.
fn probes(snap: &Snapshot) -> Vec<Packet> {
    let mut ips: Vec<std::net::IpAddr> = snap
        .pods
        .iter()
        .flat_map(|p| p.ips.iter().copied())
        .collect();
    ips.extend(
        g::EXTERNAL_ADDRESSES
            .iter()
            .map(|a| a.parse::<std::net::IpAddr>().expect("address")),
    );
    let mut ports: Vec<(Protocol, u16)> = vec![
        (Protocol::Tcp, 80),
        (Protocol::Tcp, 81),
        (Protocol::Udp, 53),
        (Protocol::Sctp, 80),
    ];
    for pod in &snap.pods {
        for np in pod.named_ports.iter() {
            ports.push((np.protocol, np.port));
        }
    }
    ports.sort();
    ports.dedup();
    let mut out = Vec::new();
    for &src in &ips {
        for &dst in &ips {
            if src != dst && src.is_ipv4() == dst.is_ipv4() {
                for &(proto, port) in &ports {
                    out.push(Packet {
                        src,
                        dst,
                        proto,
                        port,
                    });
                }
            }
        }
    }
    out
}
