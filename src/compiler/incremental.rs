//! The compiler's state kept between syncs: objects go in one change at a
//! time, a [`Compiled`] plan comes out, and a change costs work in
//! proportion to what it touches rather than to the cluster.
//!
//! ```text
//!  upsert/remove pod ───────► namespaces (labels, pods by name) ─┐  count the pod in or out
//!  upsert/remove namespace ─► local active pods                  ├─ of the cached sets that
//!  upsert/remove policy ────► policies, parsed once per spec ────┘  cover it
//!                                         │
//!  compile(): pod chains of the local pods, policy chains, and the peer and
//!  named-port sets they name (from the cache, or resolved and cached)
//! ```
//!
//! Pure like the rest of the compiler: no I/O, no clock. [`super::compile`]
//! is this compiler loaded from a snapshot and run once, so a plan after any
//! sequence of changes equals a fresh compilation of the same objects
//! (`tests/proptest_incremental.rs` holds it to that).
//!
//! What is kept:
//! - a policy's validation, until its namespace, name or spec changes;
//! - the sets the last plan used, by content key (shared by every policy
//!   naming the same selectors): a pod peer's addresses and an egress
//!   named port's elements, each counted per covering pod, so that a pod
//!   change, or a namespace entering or leaving a namespace selector,
//!   updates them in place instead of a scan of the cluster; ipBlocks.
//!
//! A set no plan used in the last compilation is dropped after it.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::plan::{
    AddrSet, AddrSetKind, Match, Plan, PodChain, PolicyChain, PolicyId, PortMatch, PortSet, SetId,
};
use super::policy::{
    Diagnostic, Direction, LabelSel, NamespaceScope, Peer, Policy, PortSpec, Rule, Severity,
    parse_policy,
};
use super::snapshot::{
    Labels, NamespaceInfo, ObjectKey, PodInfo, PolicyObject, Protocol, Snapshot,
};
use super::{Compiled, describe_pods, merge_ports, pods_peer_key, ranges, set_id};

/// The identity under which a NetworkPolicy is compiled and reported
/// (`default` stands in for a missing namespace, as in [`parse_policy`]).
pub fn policy_key(np: &NetworkPolicy) -> ObjectKey {
    ObjectKey::new(
        np.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        np.metadata.name.clone().unwrap_or_default(),
    )
}

/// The compiler for one node, fed object by object. See the module
/// documentation.
pub struct Incremental {
    node: String,
    world: World,
    /// Resolved sets by content key (the key is also the set's id).
    cache: HashMap<String, Entry>,
}

/// The objects, indexed the way compilation reads them.
#[derive(Default)]
struct World {
    namespaces: HashMap<String, Ns>,
    /// Active pods on the node, sorted by key.
    local: BTreeMap<ObjectKey, Arc<PodInfo>>,
    policies: BTreeMap<ObjectKey, PolicyEntry>,
}

/// A namespace: named by a Namespace object, by pods, or by both.
struct Ns {
    object: NsObject,
    /// Every pod of the namespace, active or not.
    pods: HashSet<ByName>,
    /// How many of them are active.
    active: usize,
    /// How many of them are active on the node (its policies are kept
    /// validated only while there is one).
    local: usize,
}

enum NsObject {
    Object(Arc<NamespaceInfo>),
    /// No Namespace object: only the name label (as a real API server would
    /// have it).
    Implicit(Labels),
}

impl Ns {
    fn implicit(name: &str) -> Self {
        Self {
            object: NsObject::Implicit(NamespaceInfo::new(name, Labels::new()).labels),
            pods: HashSet::new(),
            active: 0,
            local: 0,
        }
    }

    fn labels(&self) -> &Labels {
        match &self.object {
            NsObject::Object(ns) => &ns.labels,
            NsObject::Implicit(labels) => labels,
        }
    }

    fn has_object(&self) -> bool {
        matches!(self.object, NsObject::Object(_))
    }

    /// Its active pods that `sel` selects, added to `out`.
    fn matching<'a>(&'a self, sel: &LabelSel, out: &mut Vec<&'a PodInfo>) {
        out.extend(
            self.pods
                .iter()
                .map(|p| &*p.0)
                .filter(|p| p.is_active() && sel.matches(&p.labels)),
        );
    }
}

/// A pod in its namespace's set, looked up by name without a copy of it.
struct ByName(Arc<PodInfo>);

impl PartialEq for ByName {
    fn eq(&self, other: &Self) -> bool {
        self.0.key.name == other.0.key.name
    }
}

impl Eq for ByName {}

impl Hash for ByName {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // Must hash as the `str` it borrows as.
        self.0.key.name.as_str().hash(h)
    }
}

impl Borrow<str> for ByName {
    fn borrow(&self) -> &str {
        &self.0.key.name
    }
}

struct PolicyEntry {
    source: Arc<PolicyObject>,
    /// The validated policy while its namespace has a pod on the node (the
    /// only time compilation reads it); `None` otherwise, and when it
    /// cannot be enforced at all.
    policy: Option<Policy>,
    /// Kept for every policy.
    diagnostics: Vec<Diagnostic>,
}

/// A cached set, kept up to date change by change.
struct Entry {
    /// What its content depends on.
    dep: Dep,
    content: Content,
    /// Used by the compilation under way (unused entries are dropped after it).
    used: bool,
}

/// What a set holds, shared with the plans that use it. Pod-derived
/// elements are counted: a pod leaving the set removes an element only when
/// no other covered pod has it (the rare second, third... holders of an
/// element are counted in `extra`).
enum Content {
    /// An ipBlock's ranges, or the addresses of the covered pods.
    Addr {
        set: Arc<AddrSet>,
        extra: HashMap<IpAddr, u32>,
    },
    /// The covered pods' number for a named port, per address.
    Port {
        name: String,
        protocol: Protocol,
        set: Arc<PortSet>,
        extra: HashMap<(IpAddr, Protocol, u16), u32>,
    },
}

/// Counts `k` in or out of `set`.
fn bump<K: Ord + Hash + Copy>(set: &mut BTreeSet<K>, extra: &mut HashMap<K, u32>, k: K, add: bool) {
    if add {
        if !set.insert(k) {
            *extra.entry(k).or_default() += 1;
        }
    } else {
        match extra.get_mut(&k) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                extra.remove(&k);
            }
            None => {
                set.remove(&k);
            }
        }
    }
}

impl Content {
    fn hosts(description: String) -> Self {
        Content::Addr {
            set: Arc::new(AddrSet {
                description,
                kind: AddrSetKind::Hosts(BTreeSet::new()),
            }),
            extra: HashMap::new(),
        }
    }

    fn ports(description: String, name: &str, protocol: Protocol) -> Self {
        Content::Port {
            name: name.to_string(),
            protocol,
            set: Arc::new(PortSet {
                description,
                elements: BTreeSet::new(),
            }),
            extra: HashMap::new(),
        }
    }

    /// Counts a covered pod in (`add`) or out. A plan still holding the
    /// set keeps its copy.
    fn count(&mut self, pod: &PodInfo, add: bool) {
        match self {
            Content::Addr { set, extra } => {
                if pod.ips.is_empty() {
                    return;
                }
                let AddrSetKind::Hosts(hosts) = &mut Arc::make_mut(set).kind else {
                    return; // ipBlocks cover no pod
                };
                for ip in &pod.ips {
                    bump(hosts, extra, *ip, add);
                }
            }
            Content::Port {
                name,
                protocol,
                set,
                extra,
            } => {
                if let Some(port) = pod.resolve_port(name, *protocol) {
                    let elements = &mut Arc::make_mut(set).elements;
                    for ip in &pod.ips {
                        bump(elements, extra, (*ip, *protocol, port), add);
                    }
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Content::Addr { set, .. } => match &set.kind {
                AddrSetKind::Hosts(h) => h.is_empty(),
                AddrSetKind::Ranges(r) => r.is_empty(),
            },
            Content::Port { set, .. } => set.elements.is_empty(),
        }
    }
}

enum Dep {
    /// Nothing in the cluster (ipBlocks).
    Fixed,
    /// The active pods a selector pair covers.
    Pods(NamespaceScope, LabelSel),
    /// Every active pod.
    AllPods,
}

impl Dep {
    /// Whether `pod` (in a namespace labelled `ns_labels`) counts for the set.
    fn covers(&self, pod: &PodInfo, ns_labels: &Labels) -> bool {
        if !pod.is_active() {
            return false;
        }
        match self {
            Dep::Fixed => false,
            Dep::AllPods => true,
            Dep::Pods(scope, sel) => {
                let in_scope = match scope {
                    NamespaceScope::Own(ns) => **ns == *pod.key.namespace,
                    NamespaceScope::Selected(nssel) => nssel.matches(ns_labels),
                };
                in_scope && sel.matches(&pod.labels)
            }
        }
    }
}

impl Incremental {
    /// An empty cluster, compiled for `node`.
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            world: World::default(),
            cache: HashMap::new(),
        }
    }

    /// Every object of a snapshot. A second policy with the same key is
    /// ignored, as [`super::compile`] does.
    pub fn from_snapshot(snap: &Snapshot, node: &str) -> Self {
        load(snap, node).0
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// A pod was added or changed.
    pub fn upsert_pod(&mut self, pod: Arc<PodInfo>) {
        let ns = self
            .world
            .namespaces
            .entry(pod.key.namespace.to_string())
            .or_insert_with(|| Ns::implicit(&pod.key.namespace));
        let old = ns.pods.replace(ByName(pod.clone())).map(|b| b.0);
        if old
            .as_ref()
            .is_some_and(|old| Arc::ptr_eq(old, &pod) || **old == *pod)
        {
            return;
        }
        self.pod_changed(old.as_deref(), Some(&pod));
    }

    /// A pod was deleted.
    pub fn remove_pod(&mut self, key: &ObjectKey) {
        let Some(ns) = self.world.namespaces.get_mut(&*key.namespace) else {
            return;
        };
        let Some(old) = ns.pods.take(key.name.as_str()) else {
            return;
        };
        self.pod_changed(Some(&old.0), None);
        self.forget_namespace_if_empty(&key.namespace);
    }

    /// Bookkeeping after the pod `old` became `new` (its namespace's pod set
    /// is already updated).
    fn pod_changed(&mut self, old: Option<&PodInfo>, new: Option<&Arc<PodInfo>>) {
        let key = &old.or(new.map(|p| &**p)).expect("a pod").key;
        let ns = self
            .world
            .namespaces
            .get_mut(&*key.namespace)
            .expect("the pod's namespace is known");
        let node = Some(self.node.as_str());
        let is_local = |p: &PodInfo| p.is_active() && p.node.as_deref() == node;
        let had_local = ns.local > 0;
        ns.active -= old.is_some_and(PodInfo::is_active) as usize;
        ns.active += new.is_some_and(|p| p.is_active()) as usize;
        ns.local -= old.is_some_and(is_local) as usize;
        ns.local += new.is_some_and(|p| is_local(p)) as usize;
        let has_local = ns.local > 0;
        let ns_labels = ns.labels();
        for e in self.cache.values_mut() {
            if let Some(old) = old
                && e.dep.covers(old, ns_labels)
            {
                e.content.count(old, false);
            }
            if let Some(new) = new
                && e.dep.covers(new, ns_labels)
            {
                e.content.count(new, true);
            }
        }
        self.world.local.remove(key);
        if let Some(pod) = new
            && is_local(pod)
        {
            self.world.local.insert(key.clone(), pod.clone());
        }
        if had_local != has_local {
            self.world.keep_validated(&key.namespace, has_local);
        }
    }

    /// A namespace was added or changed.
    pub fn upsert_namespace(&mut self, ns: Arc<NamespaceInfo>) {
        let name = ns.name.clone();
        self.set_namespace(&name, Some(ns));
    }

    /// A namespace was deleted (its pods, if any are left, keep the name
    /// label only).
    pub fn remove_namespace(&mut self, name: &str) {
        if self.world.namespaces.contains_key(name) {
            self.set_namespace(name, None);
            self.forget_namespace_if_empty(name);
        }
    }

    fn set_namespace(&mut self, name: &str, object: Option<Arc<NamespaceInfo>>) {
        let ns = self
            .world
            .namespaces
            .entry(name.to_string())
            .or_insert_with(|| Ns::implicit(name));
        let new = match object {
            Some(ns) => NsObject::Object(ns),
            None => Ns::implicit(name).object,
        };
        let old = std::mem::replace(&mut ns.object, new);
        let old = match &old {
            NsObject::Object(ns) => &ns.labels,
            NsObject::Implicit(labels) => labels,
        };
        if ns.active == 0 || old == ns.labels() {
            return;
        }
        // The namespace's pods join or leave the sets whose namespace
        // selector it now matches or no longer does.
        for e in self.cache.values_mut() {
            let Dep::Pods(NamespaceScope::Selected(nssel), sel) = &e.dep else {
                continue;
            };
            let now = nssel.matches(ns.labels());
            if nssel.matches(old) == now {
                continue;
            }
            let mut pods = Vec::new();
            ns.matching(sel, &mut pods);
            for pod in pods {
                e.content.count(pod, now);
            }
        }
    }

    fn forget_namespace_if_empty(&mut self, name: &str) {
        if self
            .world
            .namespaces
            .get(name)
            .is_some_and(|ns| ns.pods.is_empty() && !ns.has_object())
        {
            self.world.namespaces.remove(name);
        }
    }

    /// A NetworkPolicy was added or changed. It is validated again only when
    /// its spec changed.
    pub fn upsert_policy(&mut self, np: Arc<NetworkPolicy>) {
        self.upsert_policy_object(Arc::new(PolicyObject::new(&np)));
    }

    /// [`upsert_policy`](Self::upsert_policy) for a policy as the
    /// controller's store keeps it (the compiler shares it).
    pub fn upsert_policy_object(&mut self, obj: Arc<PolicyObject>) {
        let key = obj.key();
        if let Some(e) = self.world.policies.get_mut(&key)
            && (Arc::ptr_eq(&e.source, &obj) || e.source.same_spec(&obj))
        {
            e.source = obj;
            return;
        }
        let np = obj.to_policy();
        let mut diagnostics = Vec::new();
        let policy = parse_policy(&np, &mut diagnostics);
        self.insert_policy(key, obj, policy, diagnostics);
    }

    fn insert_policy(
        &mut self,
        key: ObjectKey,
        source: Arc<PolicyObject>,
        policy: Option<Policy>,
        diagnostics: Vec<Diagnostic>,
    ) {
        let keep = self
            .world
            .namespaces
            .get(&*key.namespace)
            .is_some_and(|ns| ns.local > 0);
        let entry = PolicyEntry {
            source,
            policy: policy.filter(|_| keep),
            diagnostics,
        };
        self.world.policies.insert(key, entry);
    }

    /// A NetworkPolicy was deleted (`key` as [`policy_key`] makes it).
    pub fn remove_policy(&mut self, key: &ObjectKey) {
        self.world.policies.remove(key);
    }

    /// The findings of the current policies, by policy key.
    pub fn diagnostics(&self) -> impl Iterator<Item = &Diagnostic> {
        self.world
            .policies
            .values()
            .flat_map(|e| e.diagnostics.iter())
    }

    /// Compiles what the node must enforce now. Takes `&mut self` only to
    /// keep the sets it resolves for the next time.
    pub fn compile(&mut self) -> Compiled {
        for e in self.cache.values_mut() {
            e.used = false;
        }
        let mut pass = Pass {
            world: &self.world,
            cache: &mut self.cache,
            plan: Plan {
                node: self.node.clone(),
                ..Plan::default()
            },
            named_in: HashMap::new(),
            warnings: Vec::new(),
        };
        pass.run(&self.node);
        let Pass { plan, warnings, .. } = pass;
        self.cache.retain(|_, e| e.used);
        Compiled {
            plan,
            diagnostics: self.diagnostics().cloned().collect(),
            warnings,
        }
    }
}

/// Loads a snapshot; also returns the findings in the snapshot's order of
/// policies, with a second policy of the same key reported and ignored.
pub(super) fn load(snap: &Snapshot, node: &str) -> (Incremental, Vec<Diagnostic>) {
    let mut inc = Incremental::new(node);
    for (name, ns) in &snap.namespaces {
        inc.set_namespace(name, Some(Arc::new(ns.clone())));
    }
    for pod in &snap.pods {
        inc.upsert_pod(pod.clone());
    }
    let mut diagnostics = Vec::new();
    for np in &snap.policies {
        let mut diags = Vec::new();
        let parsed = parse_policy(np, &mut diags);
        diagnostics.extend(diags.iter().cloned());
        // The first valid policy of a key is used.
        let Some(policy) = parsed else { continue };
        if inc.world.policies.contains_key(&policy.key) {
            diagnostics.push(Diagnostic {
                severity: Severity::Error,
                policy: policy.key.clone(),
                field: "metadata.name".into(),
                message: "duplicate policy; only the first is used".into(),
            });
            continue;
        }
        let source = Arc::new(PolicyObject::new(np));
        inc.insert_policy(policy.key.clone(), source, Some(policy), diags);
    }
    (inc, diagnostics)
}

impl World {
    /// Validates the policies of a namespace again (`keep`), or lets their
    /// validated form go.
    fn keep_validated(&mut self, ns: &str, keep: bool) {
        let policies = self
            .policies
            .range_mut(ObjectKey::new(ns, "")..)
            .take_while(|(k, _)| *k.namespace == *ns);
        for (_, e) in policies {
            e.policy = if keep {
                parse_policy(&e.source.to_policy(), &mut Vec::new())
            } else {
                None
            };
        }
    }

    /// Active pods a pod peer covers.
    fn peer_pods(&self, scope: &NamespaceScope, sel: &LabelSel) -> Vec<&PodInfo> {
        let mut out = Vec::new();
        match scope {
            NamespaceScope::Own(name) => {
                if let Some(ns) = self.namespaces.get(name) {
                    ns.matching(sel, &mut out);
                }
            }
            NamespaceScope::Selected(nssel) => {
                for ns in self.namespaces.values() {
                    if ns.active > 0 && nssel.matches(ns.labels()) {
                        ns.matching(sel, &mut out);
                    }
                }
            }
        }
        out
    }

    fn active_pods(&self) -> Vec<&PodInfo> {
        self.namespaces
            .values()
            .filter(|ns| ns.active > 0)
            .flat_map(|ns| ns.pods.iter().map(|p| &*p.0).filter(|p| p.is_active()))
            .collect()
    }
}

/// One compilation.
struct Pass<'a> {
    world: &'a World,
    cache: &'a mut HashMap<String, Entry>,
    plan: Plan,
    /// Named-port sets of ingress rules (over the policy's selected local
    /// pods: cheap, so built each time).
    named_in: HashMap<String, Option<SetId>>,
    warnings: Vec<String>,
}

fn port_elements(pods: &[&PodInfo], name: &str, protocol: Protocol) -> PortSet {
    PortSet {
        description: String::new(),
        elements: pods
            .iter()
            .filter_map(|p| p.resolve_port(name, protocol).map(|port| (p, port)))
            .flat_map(|(p, port)| p.ips.iter().map(move |ip| (*ip, protocol, port)))
            .collect(),
    }
}

impl Pass<'_> {
    fn run(&mut self, node: &str) {
        let world = self.world;
        for direction in Direction::BOTH {
            // Which local pods each policy selects in this direction.
            let mut selected: BTreeMap<&ObjectKey, (&Policy, Vec<&PodInfo>)> = BTreeMap::new();
            let mut seen_ips: BTreeMap<IpAddr, &ObjectKey> = BTreeMap::new();
            for pod in world.local.values() {
                let ns: &str = &pod.key.namespace;
                let isolating: Vec<&Policy> = world
                    .policies
                    .range(ObjectKey::new(ns, "")..)
                    .take_while(|(k, _)| *k.namespace == *ns)
                    .filter_map(|(_, e)| e.policy.as_ref())
                    .filter(|p| p.rules(direction).is_some() && p.pod_selector.matches(&pod.labels))
                    .collect();
                if isolating.is_empty() {
                    continue;
                }
                let mut ips = Vec::new();
                for ip in &pod.ips {
                    match seen_ips.get(ip) {
                        Some(other) => self.warnings.push(format!(
                            "pods {other} and {} on node {node} share the address {ip}; \
                             {direction} traffic of {ip} is checked against {other} only",
                            pod.key
                        )),
                        None => {
                            seen_ips.insert(*ip, &pod.key);
                            ips.push(*ip);
                        }
                    }
                }
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

    /// A cached set: marks it used and puts it in the plan (once). `None`
    /// when not cached; `Some(None)` when the set holds nothing.
    fn cached(&mut self, key: &str) -> Option<Option<SetId>> {
        let e = self.cache.get_mut(key)?;
        if e.content.is_empty() {
            e.used = true;
            return Some(None);
        }
        let id = set_id(key);
        if !e.used {
            e.used = true;
            match &e.content {
                Content::Addr { set, .. } => {
                    self.plan.addr_sets.insert(id.clone(), set.clone());
                }
                Content::Port { set, .. } => {
                    self.plan.port_sets.insert(id.clone(), set.clone());
                }
            }
        }
        Some(Some(id))
    }

    /// Resolves a set from scratch, caches it and puts it in the plan.
    fn resolve(&mut self, key: String, dep: Dep, mut content: Content) -> Option<SetId> {
        let pods = match &dep {
            Dep::Fixed => Vec::new(),
            Dep::Pods(scope, sel) => self.world.peer_pods(scope, sel),
            Dep::AllPods => self.world.active_pods(),
        };
        for pod in pods {
            content.count(pod, true);
        }
        let entry = Entry {
            dep,
            content,
            used: false,
        };
        self.cache.insert(key.clone(), entry);
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
        let (dep, content) = match peer {
            Peer::Pods { namespaces, pods } => (
                Dep::Pods(namespaces.clone(), pods.clone()),
                Content::hosts(describe_pods(namespaces, pods)),
            ),
            Peer::Block(b) => {
                let ranges = ranges::merge(ranges::subtract(&b.cidr, &b.except));
                let set = AddrSet {
                    description: format!("ipBlock {b}"),
                    kind: AddrSetKind::Ranges(ranges),
                };
                let content = Content::Addr {
                    set: Arc::new(set),
                    extra: HashMap::new(),
                };
                (Dep::Fixed, content)
            }
        };
        self.resolve(key, dep, content)
    }

    /// The named-port set of an egress rule: the numbers the peer's pods
    /// (every pod, without a peer) give the name.
    fn egress_port_set(
        &mut self,
        peer: Option<&Peer>,
        name: &str,
        protocol: Protocol,
    ) -> Option<SetId> {
        let (key, description, dep) = match peer {
            Some(Peer::Pods { namespaces, pods }) => (
                format!(
                    "named|{}|{name}|{protocol}",
                    pods_peer_key(namespaces, pods)
                ),
                format!(
                    "port {name}/{protocol} of {}",
                    describe_pods(namespaces, pods)
                ),
                Dep::Pods(namespaces.clone(), pods.clone()),
            ),
            Some(Peer::Block(_)) => return None, // never a named port
            None => (
                format!("named|all|{name}|{protocol}"),
                format!("port {name}/{protocol} of every pod"),
                Dep::AllPods,
            ),
        };
        if let Some(id) = self.cached(&key) {
            return id;
        }
        let content = Content::ports(description, name, protocol);
        self.resolve(key, dep, content)
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
        let set = port_elements(selected, name, protocol);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiler::compile;

    fn pod(name: &str, node: &str, ip: &str) -> Arc<PodInfo> {
        Arc::new(PodInfo {
            key: ObjectKey::new("x", name),
            labels: crate::compiler::Labels::from([("app".to_string(), "web".to_string())]).into(),
            node: Some(node.into()),
            ips: vec![ip.parse().expect("an address")].into(),
            host_network: false,
            deleting: false,
            created: 0,
            phase: Some("Running".into()),
            named_ports: Vec::new().into(),
        })
    }

    fn policy() -> Arc<NetworkPolicy> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "x", "name": "from-web"},
                "spec": {"podSelector": {}, "ingress": [{"from": [
                    {"podSelector": {"matchLabels": {"app": "web"}}}]}]},
            }))
            .expect("a policy"),
        )
    }

    fn snapshot(pods: &[&Arc<PodInfo>]) -> Snapshot {
        Snapshot {
            pods: pods.iter().map(|p| (*p).clone()).collect(),
            policies: vec![policy()],
            ..Snapshot::default()
        }
    }

    #[test]
    fn an_address_three_pods_share_stays_until_the_last_one_goes() {
        let (a, b, c) = (
            pod("a", "n1", "10.0.0.1"),
            pod("b", "n2", "10.0.0.9"),
            pod("c", "n2", "10.0.0.9"),
        );
        let d = pod("d", "n2", "10.0.0.9");
        let mut inc = Incremental::new("n1");
        inc.upsert_policy(policy());
        for p in [&a, &b, &c, &d] {
            inc.upsert_pod(p.clone());
        }
        assert_eq!(
            inc.compile().plan,
            compile(&snapshot(&[&a, &b, &c, &d]), "n1").plan
        );
        inc.remove_pod(&b.key);
        assert_eq!(
            inc.compile().plan,
            compile(&snapshot(&[&a, &c, &d]), "n1").plan
        );
        inc.remove_pod(&c.key);
        let plan = inc.compile().plan;
        assert_eq!(plan, compile(&snapshot(&[&a, &d]), "n1").plan);
        assert!(
            plan.addr_sets
                .values()
                .any(|s| s.contains("10.0.0.9".parse().unwrap()))
        );
        inc.remove_pod(&d.key);
        let plan = inc.compile().plan;
        assert_eq!(plan, compile(&snapshot(&[&a]), "n1").plan);
        assert!(
            !plan
                .addr_sets
                .values()
                .any(|s| s.contains("10.0.0.9".parse().unwrap()))
        );
    }

    #[test]
    fn a_plan_kept_across_a_change_keeps_its_sets() {
        let (a, b) = (pod("a", "n1", "10.0.0.1"), pod("b", "n2", "10.0.0.2"));
        let mut inc = Incremental::new("n1");
        inc.upsert_policy(policy());
        inc.upsert_pod(a.clone());
        let before = inc.compile().plan;
        inc.upsert_pod(b.clone());
        let after = inc.compile().plan;
        assert_eq!(before, compile(&snapshot(&[&a]), "n1").plan);
        assert_eq!(after, compile(&snapshot(&[&a, &b]), "n1").plan);
    }
}
