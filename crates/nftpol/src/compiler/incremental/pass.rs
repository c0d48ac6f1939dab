//! The compile pass: the local pods' chains, the chains of the policies
//! that select them, and the sets their rules name (from the set cache, or
//! resolved and cached).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::index::ObjectIndex;
use super::set_cache::{CachedSet, DependsOn, SetCache, SetContent};
use crate::compiler::plan::{
    AddrSet, AddrSetKind, Match, Plan, PodChain, PolicyChain, PolicyId, PortMatch, PortSet, SetId,
};
use crate::compiler::policy::{Direction, Peer, Policy, PortSpec, Rule};
use crate::compiler::snapshot::{ObjectKey, PodInfo, Protocol};
use crate::compiler::{describe_pods, merge_ports, pods_peer_key, set_id};
use crate::net::ranges;

/// One compilation.
pub(super) struct CompilePass<'a> {
    index: &'a ObjectIndex,
    sets: &'a mut SetCache,
    plan: Plan,
    /// Named-port sets of ingress rules (over the policy's selected local
    /// pods: cheap, so built each time).
    named_in: HashMap<String, Option<SetId>>,
    warnings: Vec<String>,
}

/// The elements of a named port over `pods`, at the addresses they own.
fn port_elements(
    index: &ObjectIndex,
    pods: &[&PodInfo],
    name: &str,
    protocol: Protocol,
) -> PortSet {
    PortSet {
        description: String::new(),
        elements: pods
            .iter()
            .filter_map(|p| p.resolve_port(name, protocol).map(|port| (p, port)))
            .flat_map(|(p, port)| index.owned_ips(p).map(move |ip| (ip, protocol, port)))
            .collect(),
    }
}

impl<'a> CompilePass<'a> {
    /// Compiles what `node` must enforce: the plan and the warnings about
    /// the cluster. The sets it uses stay cached (marked used).
    pub(super) fn compile(
        index: &'a ObjectIndex,
        sets: &'a mut SetCache,
        node: &str,
    ) -> (Plan, Vec<String>) {
        let mut pass = CompilePass {
            index,
            sets,
            plan: Plan {
                node: node.to_string(),
                ..Plan::default()
            },
            named_in: HashMap::new(),
            warnings: Vec::new(),
        };
        pass.run(node);
        (pass.plan, pass.warnings)
    }

    fn run(&mut self, node: &str) {
        let index = self.index;
        self.report_shared_addresses(node);
        // What the port guard binds: every local pod's own addresses.
        self.plan.local_addrs = index
            .local
            .values()
            .flat_map(|p| index.owned_ips(p))
            .collect();
        for direction in Direction::BOTH {
            // Which local pods each policy selects in this direction.
            let mut selected: BTreeMap<&ObjectKey, (&Policy, Vec<&PodInfo>)> = BTreeMap::new();
            for pod in index.local.values() {
                let ns: &str = &pod.key.namespace;
                let isolating: Vec<&Policy> = index
                    .policies
                    .range(ObjectKey::new(ns, "")..)
                    .take_while(|(k, _)| *k.namespace == *ns)
                    .filter_map(|(_, p)| p.policy())
                    .filter(|p| p.rules(direction).is_some() && p.pod_selector.matches(&pod.labels))
                    .collect();
                if isolating.is_empty() {
                    continue;
                }
                // An address another pod owns leads to that pod.
                let ips = index.owned_ips(pod).collect();
                for p in &isolating {
                    selected
                        .entry(&p.key)
                        .or_insert((p, Vec::new()))
                        .1
                        .push(pod);
                }
                self.plan.pods.push(PodChain {
                    pod: pod.key.clone(),
                    direction,
                    ips,
                    policies: isolating.iter().map(|p| p.key.clone()).collect(),
                });
            }
            for (policy, pods) in selected.into_values() {
                let rules = policy.rules(direction).unwrap_or_default();
                let matches: Vec<Match> = rules
                    .iter()
                    .flat_map(|r| self.rule_matches(policy, direction, r, &pods))
                    .collect();
                if !matches.is_empty() {
                    let id = PolicyId {
                        policy: policy.key.clone(),
                        direction,
                    };
                    self.plan
                        .policies
                        .insert(id.clone(), PolicyChain { id, matches });
                }
            }
        }
    }

    /// Reports every address claimed by more than one active pod when one
    /// of them is on the node: who owns it and who lost it.
    fn report_shared_addresses(&mut self, node: &str) {
        let owners = &self.index.owners;
        let mut shared: Vec<(&IpAddr, &Vec<Arc<PodInfo>>)> = owners.losers.iter().collect();
        shared.sort_by_key(|(ip, _)| **ip);
        let on_node = |p: &PodInfo| p.node.as_deref() == Some(node);
        for (ip, losers) in shared {
            let Some(owner) = owners.owner(*ip) else {
                continue;
            };
            if !on_node(owner) && !losers.iter().any(|p| on_node(p)) {
                continue; // the other nodes report it
            }
            let mut lost: Vec<String> = losers
                .iter()
                .map(|p| format!("{} (node {})", p.key, p.node.as_deref().unwrap_or("-")))
                .collect();
            lost.sort();
            let why = if owner.deleting {
                "the newest of its claimants, all being deleted"
            } else {
                "the newest of its claimants not being deleted"
            };
            self.warnings.push(format!(
                "address {ip} is claimed by more than one pod: it belongs to {} (node {}), {why}; \
                 {} lost it (not dispatched or matched by it while {} holds it)",
                owner.key,
                owner.node.as_deref().unwrap_or("-"),
                lost.join(", "),
                owner.key,
            ));
        }
    }

    /// A cached set: marks it used and puts it in the plan (once). `None`
    /// when not cached; `Some(None)` when the set holds nothing.
    fn cached(&mut self, key: &str) -> Option<Option<SetId>> {
        let cached = self.sets.get_mut(key)?;
        if cached.content.is_empty() {
            cached.used = true;
            return Some(None);
        }
        let id = set_id(key);
        if !cached.used {
            cached.used = true;
            match &cached.content {
                SetContent::Addr { set, .. } => {
                    self.plan.addr_sets.insert(id.clone(), set.clone());
                }
                SetContent::Port { set, .. } => {
                    self.plan.port_sets.insert(id.clone(), set.clone());
                }
            }
        }
        Some(Some(id))
    }

    /// Resolves a set from scratch, caches it and puts it in the plan.
    fn resolve(
        &mut self,
        key: String,
        depends_on: DependsOn,
        mut content: SetContent,
    ) -> Option<SetId> {
        let pods = match &depends_on {
            DependsOn::Nothing => Vec::new(),
            DependsOn::Pods(scope, sel) => self.index.peer_pods(scope, sel),
            DependsOn::AllPods => self.index.active_pods(),
        };
        for pod in pods {
            content.count(pod, true, &self.index.owners);
        }
        let set = CachedSet {
            depends_on,
            content,
            used: false,
        };
        self.sets.insert(key.clone(), set);
        self.cached(&key).expect("just cached")
    }

    /// The address set of a peer; `None` when it holds no address.
    fn peer_set(&mut self, peer: &Peer) -> Option<SetId> {
        let key = match peer {
            Peer::Pods { namespaces, pods } => pods_peer_key(namespaces, pods),
            Peer::Block(b) => format!("block|{b}"),
        };
        if let Some(id) = self.cached(&key) {
            return id;
        }
        let (depends_on, content) = match peer {
            Peer::Pods { namespaces, pods } => (
                DependsOn::Pods(namespaces.clone(), pods.clone()),
                SetContent::hosts(describe_pods(namespaces, pods)),
            ),
            Peer::Block(b) => {
                let ranges = ranges::merge(ranges::subtract(&b.cidr, &b.except));
                let set = AddrSet {
                    description: format!("ipBlock {b}"),
                    kind: AddrSetKind::Ranges(ranges),
                };
                let content = SetContent::Addr { set: Arc::new(set) };
                (DependsOn::Nothing, content)
            }
        };
        self.resolve(key, depends_on, content)
    }

    /// The named-port set of an egress rule: the numbers the peer's pods
    /// (every pod, without a peer) give the name.
    fn egress_port_set(
        &mut self,
        peer: Option<&Peer>,
        name: &str,
        protocol: Protocol,
    ) -> Option<SetId> {
        let (key, description, depends_on) = match peer {
            Some(Peer::Pods { namespaces, pods }) => (
                format!(
                    "named|{}|{name}|{protocol}",
                    pods_peer_key(namespaces, pods)
                ),
                format!(
                    "port {name}/{protocol} of {}",
                    describe_pods(namespaces, pods)
                ),
                DependsOn::Pods(namespaces.clone(), pods.clone()),
            ),
            Some(Peer::Block(_)) => return None, // never a named port
            None => (
                format!("named|all|{name}|{protocol}"),
                format!("port {name}/{protocol} of every pod"),
                DependsOn::AllPods,
            ),
        };
        if let Some(id) = self.cached(&key) {
            return id;
        }
        let content = SetContent::ports(description, name, protocol);
        self.resolve(key, depends_on, content)
    }

    /// The named-port set of an ingress rule: the numbers the policy's
    /// selected local pods give the name.
    fn ingress_port_set(
        &mut self,
        policy: &Policy,
        selected: &[&PodInfo],
        name: &str,
        protocol: Protocol,
    ) -> Option<SetId> {
        let key = format!("named-in|{}|{name}|{protocol}", policy.key);
        if let Some(id) = self.named_in.get(&key) {
            return id.clone();
        }
        let set = port_elements(self.index, selected, name, protocol);
        let id = (!set.elements.is_empty()).then(|| {
            let id = set_id(&key);
            let set = PortSet {
                description: format!(
                    "port {name}/{protocol} of local pods selected by {}",
                    policy.key
                ),
                ..set
            };
            self.plan.port_sets.insert(id.clone(), Arc::new(set));
            id
        });
        self.named_in.insert(key, id.clone());
        id
    }

    /// The allow lines of one rule. `selected` are the local pods the policy
    /// selects (named ports of ingress rules resolve against them).
    fn rule_matches(
        &mut self,
        policy: &Policy,
        direction: Direction,
        rule: &Rule,
        selected: &[&PodInfo],
    ) -> Vec<Match> {
        // Numeric ports grouped per protocol; a whole protocol absorbs its ports.
        let mut numeric: BTreeMap<Protocol, Option<Vec<(u16, u16)>>> = BTreeMap::new();
        let mut named: BTreeSet<(Protocol, &str)> = BTreeSet::new();
        let any_port = rule.ports.is_none();
        for spec in rule.ports.iter().flatten() {
            match spec {
                PortSpec::All(p) => {
                    numeric.insert(*p, None);
                }
                PortSpec::Range(p, s, e) => {
                    if let Some(list) = numeric.entry(*p).or_insert_with(|| Some(Vec::new())) {
                        list.push((*s, *e));
                    }
                }
                PortSpec::Named(p, n) => {
                    named.insert((*p, n.as_str()));
                }
            }
        }
        let port_matches: Vec<PortMatch> = if any_port {
            vec![PortMatch::Any]
        } else {
            numeric
                .into_iter()
                .map(|(p, ranges)| match ranges {
                    None => PortMatch::Proto(p),
                    Some(r) => PortMatch::Ports(p, merge_ports(r)),
                })
                .collect()
        };

        let peers: Vec<Option<&Peer>> = match &rule.peers {
            None => vec![None],
            Some(list) => list.iter().map(Some).collect(),
        };
        let mut out = Vec::new();
        for peer in peers {
            let peer_id = match peer {
                None => None,
                Some(p) => match self.peer_set(p) {
                    Some(id) => Some(id),
                    None => continue, // no address: never matches
                },
            };
            for ports in &port_matches {
                out.push(Match {
                    rule: rule.index,
                    peer: peer_id.clone(),
                    ports: ports.clone(),
                });
            }
            for &(protocol, name) in &named {
                let named_match = match direction {
                    // The destination is the selected pod itself.
                    Direction::Ingress => self
                        .ingress_port_set(policy, selected, name, protocol)
                        .map(|id| (peer_id.clone(), id)),
                    // The destination is the peer: its pods' own numbers.
                    Direction::Egress => self
                        .egress_port_set(peer, name, protocol)
                        .map(|id| (None, id)),
                };
                if let Some((peer, id)) = named_match {
                    out.push(Match {
                        rule: rule.index,
                        peer,
                        ports: PortMatch::Named(id),
                    });
                }
            }
        }
        out
    }
}
