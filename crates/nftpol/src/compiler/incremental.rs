//! The compiler's state kept between syncs: objects go in one change at a
//! time, a [`Compiled`] plan comes out, and a change costs work in
//! proportion to what it touches rather than to the cluster.
//!
//! ```text
//!  upsert/remove pod ───────► address owners ──────────────────┐
//!                             namespaces (labels, pods by name) ─┤  count the pod in or out
//!  upsert/remove namespace ─► local active pods                  ├─ of the cached sets that
//!  upsert/remove policy ────► policies, parsed once per spec ────┘  cover it (by the
//!                                                                   addresses it owns)
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
//!   updates them in place instead of a scan of the cluster; ipBlocks;
//! - the owner of every address of an active pod (`AddressOwners`): a pod
//!   counts in sets and dispatch only by the addresses it owns, and when an
//!   address changes hands only that address moves between the sets of the
//!   two pods.
//!
//! A set no plan used in the last compilation is dropped after it.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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

/// The compiler for one node, fed object by object. See the module
/// documentation.
pub struct Incremental {
    node: String,
    world: World,
    /// Resolved sets by content key (the key is also the set's id).
    cache: HashMap<String, Entry>,
    /// Addresses whose owner changed or went away since
    /// [`take_moved_addresses`](Self::take_moved_addresses) last ran.
    moved: BTreeSet<IpAddr>,
}

/// The objects, indexed the way compilation reads them.
#[derive(Default)]
struct World {
    namespaces: HashMap<String, Ns>,
    /// Active pods on the node, sorted by key.
    local: BTreeMap<ObjectKey, Arc<PodInfo>>,
    policies: BTreeMap<ObjectKey, PolicyEntry>,
    /// The owner of every address of an active pod.
    owners: AddressOwners,
}

/// A namespace: named by a Namespace object, by pods, or by both.
struct Ns {
    /// `None` while its Namespace object is unknown (not seen yet, or
    /// deleted): then no namespace selector matches it, not even `{}`, for
    /// its labels are unknown.
    object: Option<Arc<NamespaceInfo>>,
    /// Every pod of the namespace, active or not.
    pods: HashSet<ByName>,
    /// How many of them are active.
    active: usize,
    /// How many of them are active on the node (its policies are kept
    /// validated only while there is one).
    local: usize,
}

impl Ns {
    /// A namespace known only by name, from its pods.
    fn unseen() -> Self {
        Self {
            object: None,
            pods: HashSet::new(),
            active: 0,
            local: 0,
        }
    }

    /// Its labels, when its Namespace object is known.
    fn labels(&self) -> Option<&Labels> {
        self.object.as_ref().map(|ns| &ns.labels)
    }

    /// Whether a namespace selector matches it.
    fn selected_by(&self, nssel: &LabelSel) -> bool {
        self.labels().is_some_and(|labels| nssel.matches(labels))
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

/// What a set holds, shared with the plans that use it. Each pod-derived
/// element comes from the one pod that owns its address
/// ([`AddressOwners`]), so a pod counted out takes its elements with it.
enum Content {
    /// An ipBlock's ranges, or the addresses of the covered pods.
    Addr { set: Arc<AddrSet> },
    /// The covered pods' number for a named port, per address.
    Port {
        name: String,
        protocol: Protocol,
        set: Arc<PortSet>,
    },
}

impl Content {
    fn hosts(description: String) -> Self {
        Content::Addr {
            set: Arc::new(AddrSet {
                description,
                kind: AddrSetKind::Hosts(BTreeSet::new()),
            }),
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
        }
    }

    /// Counts a covered pod in (`add`) or out, by the addresses it owns. A
    /// plan still holding the set keeps its copy.
    fn count(&mut self, pod: &PodInfo, add: bool, owners: &AddressOwners) {
        for ip in &pod.ips {
            if owners.owns(pod, *ip) {
                self.count_ip(pod, *ip, add);
            }
        }
    }

    /// Counts one address of a covered pod in or out.
    fn count_ip(&mut self, pod: &PodInfo, ip: IpAddr, add: bool) {
        match self {
            Content::Addr { set } => {
                let AddrSetKind::Hosts(hosts) = &set.kind else {
                    return; // ipBlocks cover no pod
                };
                if hosts.contains(&ip) != add {
                    let AddrSetKind::Hosts(hosts) = &mut Arc::make_mut(set).kind else {
                        unreachable!("checked above");
                    };
                    if add {
                        hosts.insert(ip);
                    } else {
                        hosts.remove(&ip);
                    }
                }
            }
            Content::Port {
                name,
                protocol,
                set,
            } => {
                if let Some(port) = pod.resolve_port(name, *protocol) {
                    let element = (ip, *protocol, port);
                    if set.elements.contains(&element) != add {
                        let elements = &mut Arc::make_mut(set).elements;
                        if add {
                            elements.insert(element);
                        } else {
                            elements.remove(&element);
                        }
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

/// Who owns each address of the active pods. One address has one owner:
/// of the active pods claiming it (on any node), the one not being deleted
/// with the newest creation time; when all are being deleted, the newest of
/// them; ties go to the greater `namespace/name`. The others lose it: they
/// are dispatched and matched without it until the owner goes away.
///
/// An owner is found by its address without a copy of it: the tables of
/// the usual case (the pod's first address of a family) hold only the pod,
/// 8 bytes, where an address and a pod take 16 (IPv4) or 24 (IPv6); that
/// is 1 MiB less at 100k pods. The rare losers are kept apart.
#[derive(Default)]
struct AddressOwners {
    v4: HashSet<ByFirst<V4>>,
    v6: HashSet<ByFirst<V6>>,
    /// Owners of an address that is not their first of its family (a pod
    /// with two addresses of one family, which the API server refuses).
    other: HashMap<IpAddr, Arc<PodInfo>>,
    /// The other claimants of an address that has more than one.
    losers: HashMap<IpAddr, Vec<Arc<PodInfo>>>,
}

/// An address family, for [`ByFirst`].
trait Family {
    type Addr: Hash + Eq;
    /// The pod's first address of the family.
    fn first(pod: &PodInfo) -> Option<&Self::Addr>;
}

struct V4;
struct V6;

impl Family for V4 {
    type Addr = Ipv4Addr;
    fn first(pod: &PodInfo) -> Option<&Ipv4Addr> {
        pod.ips.iter().find_map(|ip| match ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
    }
}

impl Family for V6 {
    type Addr = Ipv6Addr;
    fn first(pod: &PodInfo) -> Option<&Ipv6Addr> {
        pod.ips.iter().find_map(|ip| match ip {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        })
    }
}

/// A pod that owns its first address of family `F`, looked up by it.
struct ByFirst<F>(Arc<PodInfo>, std::marker::PhantomData<F>);

impl<F: Family> ByFirst<F> {
    fn addr(&self) -> &F::Addr {
        F::first(&self.0).expect("kept by an address of the family")
    }
}

impl<F: Family> PartialEq for ByFirst<F> {
    fn eq(&self, other: &Self) -> bool {
        self.addr() == other.addr()
    }
}

impl<F: Family> Eq for ByFirst<F> {}

impl<F: Family> Hash for ByFirst<F> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // Must hash as the address it borrows as.
        self.addr().hash(h)
    }
}

impl Borrow<Ipv4Addr> for ByFirst<V4> {
    fn borrow(&self) -> &Ipv4Addr {
        self.addr()
    }
}

impl Borrow<Ipv6Addr> for ByFirst<V6> {
    fn borrow(&self) -> &Ipv6Addr {
        self.addr()
    }
}

/// Whether `a` has the better claim to an address than `b`.
fn outranks(a: &PodInfo, b: &PodInfo) -> bool {
    (!a.deleting, a.created, &a.key) > (!b.deleting, b.created, &b.key)
}

impl AddressOwners {
    fn owner(&self, ip: IpAddr) -> Option<&Arc<PodInfo>> {
        let first = match ip {
            IpAddr::V4(ip) => self.v4.get(&ip).map(|p| &p.0),
            IpAddr::V6(ip) => self.v6.get(&ip).map(|p| &p.0),
        };
        first.or_else(|| self.other.get(&ip))
    }

    fn owns(&self, pod: &PodInfo, ip: IpAddr) -> bool {
        self.owner(ip).is_some_and(|o| o.key == pod.key)
    }

    fn set_owner(&mut self, ip: IpAddr, pod: Option<Arc<PodInfo>>) {
        match ip {
            IpAddr::V4(ip) => self.v4.remove(&ip),
            IpAddr::V6(ip) => self.v6.remove(&ip),
        };
        self.other.remove(&ip);
        let Some(pod) = pod else {
            return;
        };
        match ip {
            IpAddr::V4(v4) if V4::first(&pod) == Some(&v4) => {
                self.v4.insert(ByFirst(pod, std::marker::PhantomData));
            }
            IpAddr::V6(v6) if V6::first(&pod) == Some(&v6) => {
                self.v6.insert(ByFirst(pod, std::marker::PhantomData));
            }
            _ => {
                self.other.insert(ip, pod);
            }
        }
    }

    /// An active pod claims its addresses.
    fn claim(&mut self, pod: &Arc<PodInfo>) {
        for &ip in &pod.ips {
            match self.owner(ip) {
                None => self.set_owner(ip, Some(pod.clone())),
                Some(owner) if owner.key == pod.key => {} // listed twice
                Some(owner) if outranks(pod, owner) => {
                    let owner = owner.clone();
                    self.losers.entry(ip).or_default().push(owner);
                    self.set_owner(ip, Some(pod.clone()));
                }
                Some(_) => self.losers.entry(ip).or_default().push(pod.clone()),
            }
        }
    }

    /// A pod claimed with [`claim`](Self::claim) gives its addresses up.
    fn release(&mut self, pod: &PodInfo) {
        for &ip in &pod.ips {
            if self.owns(pod, ip) {
                let next = self.losers.get_mut(&ip).and_then(|losers| {
                    let best = (0..losers.len()).reduce(|a, b| {
                        if outranks(&losers[b], &losers[a]) {
                            b
                        } else {
                            a
                        }
                    })?;
                    Some(losers.swap_remove(best))
                });
                self.set_owner(ip, next);
            } else if let Some(losers) = self.losers.get_mut(&ip) {
                losers.retain(|p| p.key != pod.key);
            }
            if self.losers.get(&ip).is_some_and(Vec::is_empty) {
                self.losers.remove(&ip);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (IpAddr, &Arc<PodInfo>)> {
        let v4 = self.v4.iter().map(|p| (IpAddr::V4(*p.addr()), &p.0));
        let v6 = self.v6.iter().map(|p| (IpAddr::V6(*p.addr()), &p.0));
        let other = self.other.iter().map(|(ip, p)| (*ip, p));
        v4.chain(v6).chain(other)
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
    /// Whether `pod` (in the namespace `ns`) counts for the set.
    fn covers(&self, pod: &PodInfo, ns: &Ns) -> bool {
        if !pod.is_active() {
            return false;
        }
        match self {
            Dep::Fixed => false,
            Dep::AllPods => true,
            Dep::Pods(scope, sel) => {
                let in_scope = match scope {
                    NamespaceScope::Own(ns) => **ns == *pod.key.namespace,
                    NamespaceScope::Selected(nssel) => ns.selected_by(nssel),
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
            moved: BTreeSet::new(),
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
            .or_insert_with(Ns::unseen);
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

        // Only active pods claim addresses and count in sets.
        let old = old.filter(|p| p.is_active());
        let new = new.filter(|p| p.is_active());
        let mut ips: Vec<IpAddr> = old.iter().flat_map(|p| p.ips.iter().copied()).collect();
        ips.extend(new.iter().flat_map(|p| p.ips.iter().copied()));
        ips.sort();
        ips.dedup();
        let world = &mut self.world;
        let before: Vec<Option<Arc<PodInfo>>> = ips
            .iter()
            .map(|ip| world.owners.owner(*ip).cloned())
            .collect();
        if let Some(old) = old {
            world.count(&mut self.cache, old, None, false);
            world.owners.release(old);
        }
        if let Some(new) = new {
            world.owners.claim(new);
        }
        // Other pods that lost an address to this one, or got one back.
        let mut gained = Vec::new();
        for (ip, before) in ips.iter().zip(&before) {
            let after = world.owners.owner(*ip).cloned();
            if before.as_ref().map(|p| &p.key) == after.as_ref().map(|p| &p.key) {
                continue;
            }
            if before.is_some() {
                self.moved.insert(*ip);
            }
            if let Some(loser) = before.as_ref().filter(|p| p.key != *key) {
                world.count(&mut self.cache, loser, Some(*ip), false);
            }
            if let Some(winner) = after.filter(|p| p.key != *key) {
                gained.push((*ip, winner));
            }
        }
        if let Some(new) = new {
            world.count(&mut self.cache, new, None, true);
        }
        for (ip, winner) in gained {
            world.count(&mut self.cache, &winner, Some(ip), true);
        }

        world.local.remove(key);
        if let Some(pod) = new
            && is_local(pod)
        {
            world.local.insert(key.clone(), pod.clone());
        }
        if had_local != has_local {
            world.keep_validated(&key.namespace, has_local);
        }
    }

    /// A namespace was added or changed.
    pub fn upsert_namespace(&mut self, ns: Arc<NamespaceInfo>) {
        let name = ns.name.clone();
        self.set_namespace(&name, Some(ns));
    }

    /// A namespace was deleted (its pods, if any are left, match no namespace
    /// selector until it is back).
    pub fn remove_namespace(&mut self, name: &str) {
        if self.world.namespaces.contains_key(name) {
            self.set_namespace(name, None);
            self.forget_namespace_if_empty(name);
        }
    }

    fn set_namespace(&mut self, name: &str, object: Option<Arc<NamespaceInfo>>) {
        let World {
            namespaces, owners, ..
        } = &mut self.world;
        let ns = namespaces
            .entry(name.to_string())
            .or_insert_with(Ns::unseen);
        let old = std::mem::replace(&mut ns.object, object);
        let old = old.as_ref().map(|ns| &ns.labels);
        let ns = &*ns;
        if ns.active == 0 || old == ns.labels() {
            return;
        }
        // The namespace's pods join or leave the sets whose namespace
        // selector it now matches or no longer does.
        for e in self.cache.values_mut() {
            let Dep::Pods(NamespaceScope::Selected(nssel), sel) = &e.dep else {
                continue;
            };
            let now = ns.selected_by(nssel);
            if old.is_some_and(|old| nssel.matches(old)) == now {
                continue;
            }
            let mut pods = Vec::new();
            ns.matching(sel, &mut pods);
            for pod in pods {
                e.content.count(pod, now, owners);
            }
        }
    }

    fn forget_namespace_if_empty(&mut self, name: &str) {
        if self
            .world
            .namespaces
            .get(name)
            .is_some_and(|ns| ns.pods.is_empty() && ns.object.is_none())
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

    /// A NetworkPolicy was deleted (`key` as [`policy_key`](super::policy_key)
    /// makes it).
    pub fn remove_policy(&mut self, key: &ObjectKey) {
        self.world.policies.remove(key);
    }

    /// The pod that owns an address: of the active pods claiming it (on
    /// any node), the one not being deleted with the newest creation time;
    /// when all are being deleted, the newest of them; ties go to the
    /// greater `namespace/name`. `None` when no active pod claims it.
    pub fn address_owner(&self, ip: IpAddr) -> Option<&ObjectKey> {
        self.world.owners.owner(ip).map(|p| &p.key)
    }

    /// Every address of an active pod with its owner, in no set order.
    pub fn address_owners(&self) -> impl Iterator<Item = (IpAddr, &ObjectKey)> {
        self.world.owners.iter().map(|(ip, p)| (ip, &p.key))
    }

    /// The addresses whose owner changed, or that no active pod claims any
    /// more, since the last call (an address that was free and got an
    /// owner is not listed): the connections tracked for them belong to
    /// another pod, or to none. The controller takes them after each sync.
    pub fn take_moved_addresses(&mut self) -> BTreeSet<IpAddr> {
        std::mem::take(&mut self.moved)
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

    /// Counts an active pod (only `ip`, when given) in or out of every
    /// cached set that covers it, by the addresses it owns now.
    fn count(
        &self,
        cache: &mut HashMap<String, Entry>,
        pod: &PodInfo,
        ip: Option<IpAddr>,
        add: bool,
    ) {
        let Some(ns) = self.namespaces.get(&*pod.key.namespace) else {
            return;
        };
        for e in cache.values_mut() {
            if e.dep.covers(pod, ns) {
                match ip {
                    Some(ip) => e.content.count_ip(pod, ip, add),
                    None => e.content.count(pod, add, &self.owners),
                }
            }
        }
    }

    /// The addresses of a pod that it owns.
    fn owned_ips<'a>(&'a self, pod: &'a PodInfo) -> impl Iterator<Item = IpAddr> + 'a {
        pod.ips
            .iter()
            .copied()
            .filter(|ip| self.owners.owns(pod, *ip))
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
                    if ns.active > 0 && ns.selected_by(nssel) {
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

/// The elements of a named port over `pods`, at the addresses they own.
fn port_elements(world: &World, pods: &[&PodInfo], name: &str, protocol: Protocol) -> PortSet {
    PortSet {
        description: String::new(),
        elements: pods
            .iter()
            .filter_map(|p| p.resolve_port(name, protocol).map(|port| (p, port)))
            .flat_map(|(p, port)| world.owned_ips(p).map(move |ip| (ip, protocol, port)))
            .collect(),
    }
}

impl Pass<'_> {
    fn run(&mut self, node: &str) {
        let world = self.world;
        self.report_shared_addresses(node);
        // What the port guard binds: every local pod's own addresses.
        self.plan.local_addrs = world
            .local
            .values()
            .flat_map(|p| world.owned_ips(p))
            .collect();
        for direction in Direction::BOTH {
            // Which local pods each policy selects in this direction.
            let mut selected: BTreeMap<&ObjectKey, (&Policy, Vec<&PodInfo>)> = BTreeMap::new();
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
                // An address another pod owns leads to that pod.
                let ips = world.owned_ips(pod).collect();
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
        let owners = &self.world.owners;
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
            content.count(pod, true, &self.world.owners);
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
                let content = Content::Addr { set: Arc::new(set) };
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
        let set = port_elements(self.world, selected, name, protocol);
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

    fn in_ns(ns: &str, pod: Arc<PodInfo>) -> Arc<PodInfo> {
        Arc::new(PodInfo {
            key: ObjectKey::new(ns, pod.key.name.clone()),
            ..(*pod).clone()
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    /// Whether any peer set of the plan holds the address.
    fn in_peer_sets(plan: &Plan, addr: &str) -> bool {
        plan.addr_sets.values().any(|s| s.contains(ip(addr)))
    }

    #[test]
    fn a_pod_seen_before_its_namespace_matches_no_namespace_selector_until_it_is_known() {
        // The issue's case: allow from every namespace not labelled
        // env=untrusted; the intruder's namespace is.
        let not_untrusted = Arc::new(
            serde_json::from_value::<NetworkPolicy>(serde_json::json!({
                "metadata": {"namespace": "x", "name": "not-untrusted"},
                "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {
                    "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["untrusted"]}]}}]}]},
            }))
            .expect("a policy"),
        );
        let server = pod("server", "n1", "10.0.0.1");
        let intruder = in_ns("evil", pod("intruder", "n2", "10.0.0.66"));
        let mut inc = Incremental::new("n1");
        inc.upsert_policy(not_untrusted.clone());
        inc.upsert_pod(server.clone());
        inc.upsert_pod(intruder.clone());
        let mut snap = Snapshot {
            pods: vec![server.clone(), intruder.clone()],
            policies: vec![not_untrusted],
            ..Snapshot::default()
        };
        let check = |inc: &mut Incremental, snap: &Snapshot, allowed: bool| {
            let plan = inc.compile().plan;
            assert_eq!(plan, compile(snap, "n1").plan);
            assert_eq!(in_peer_sets(&plan, "10.0.0.66"), allowed, "{snap:?}");
            assert_eq!(
                plan.allows(ip("10.0.0.66"), ip("10.0.0.1"), Protocol::Tcp, 80),
                allowed
            );
        };
        check(&mut inc, &snap, false);
        let untrusted = NamespaceInfo::new("evil", [("env".into(), "untrusted".into())].into());
        inc.upsert_namespace(Arc::new(untrusted.clone()));
        snap.add_namespace(untrusted);
        check(&mut inc, &snap, false);
        let dev = NamespaceInfo::new("evil", [("env".into(), "dev".into())].into());
        inc.upsert_namespace(Arc::new(dev.clone()));
        snap.add_namespace(dev);
        check(&mut inc, &snap, true);
        inc.remove_namespace("evil");
        snap.namespaces.remove("evil");
        check(&mut inc, &snap, false);
    }

    #[test]
    fn an_empty_namespace_selector_needs_the_namespace_object_but_a_pod_selector_does_not() {
        let every_ns = Arc::new(
            serde_json::from_value::<NetworkPolicy>(serde_json::json!({
                "metadata": {"namespace": "x", "name": "every-ns"},
                "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]},
            }))
            .expect("a policy"),
        );
        let (server, neighbour) = (pod("server", "n1", "10.0.0.1"), pod("n", "n2", "10.0.0.2"));
        let other = in_ns("y", pod("other", "n2", "10.0.0.3"));
        let snap = Snapshot {
            pods: vec![server.clone(), neighbour.clone(), other.clone()],
            policies: vec![every_ns, policy()],
            ..Snapshot::default()
        };
        let plan = compile(&snap, "n1").plan;
        let allows = |from: &str| plan.allows(ip(from), ip("10.0.0.1"), Protocol::Tcp, 80);
        assert!(!allows("10.0.0.3"), "namespace y is not known");
        assert!(allows("10.0.0.2"), "x's own pods, by podSelector");
        let mut snap = snap.clone();
        snap.add_namespace(NamespaceInfo::new("y", Labels::new()));
        let plan = compile(&snap, "n1").plan;
        assert!(plan.allows(ip("10.0.0.3"), ip("10.0.0.1"), Protocol::Tcp, 80));
    }

    #[test]
    fn an_address_belongs_to_its_newest_claimant_not_being_deleted() {
        let deny_x = Arc::new(
            serde_json::from_value::<NetworkPolicy>(serde_json::json!({
                "metadata": {"namespace": "x", "name": "deny"},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
            }))
            .expect("a policy"),
        );
        let with = |p: &Arc<PodInfo>, created: u32, deleting: bool| {
            Arc::new(PodInfo {
                created,
                deleting,
                ..(**p).clone()
            })
        };
        // x/old is local and isolated; staging/new, on another node, was
        // given its address later.
        let old = with(&pod("old", "n1", "10.0.0.5"), 100, false);
        let new = with(&in_ns("staging", pod("new", "n2", "10.0.0.5")), 200, false);
        let web = pod("web", "n1", "10.0.0.7");
        let mut inc = Incremental::new("n1");
        let mut snap = Snapshot {
            policies: vec![policy(), deny_x.clone()],
            ..Snapshot::default()
        };
        inc.upsert_policy(policy());
        inc.upsert_policy(deny_x);
        let mut step = |inc: &mut Incremental, pods: &[&Arc<PodInfo>]| {
            snap.pods = pods.iter().map(|p| (*p).clone()).collect();
            let got = inc.compile();
            let fresh = compile(&snap, "n1");
            assert_eq!(got.plan, fresh.plan);
            assert_eq!(got.warnings, fresh.warnings);
            got
        };
        let addr = ip("10.0.0.5");
        let chain_ips = |c: &Compiled| {
            c.plan
                .pods
                .iter()
                .find(|p| p.pod == old.key)
                .map(|p| p.ips.clone())
        };

        inc.upsert_pod(web.clone());
        inc.upsert_pod(old.clone());
        let c = step(&mut inc, &[&web, &old]);
        assert_eq!(inc.address_owner(addr), Some(&old.key));
        assert!(inc.take_moved_addresses().is_empty(), "it was free");
        assert_eq!(chain_ips(&c), Some(vec![addr]));
        assert!(in_peer_sets(&c.plan, "10.0.0.5"));

        inc.upsert_pod(new.clone());
        let c = step(&mut inc, &[&web, &old, &new]);
        assert_eq!(inc.address_owner(addr), Some(&new.key));
        assert_eq!(inc.take_moved_addresses(), BTreeSet::from([addr]));
        // Neither x's deny nor x's peer set holds the address any more.
        assert_eq!(chain_ips(&c), Some(vec![]));
        assert!(!in_peer_sets(&c.plan, "10.0.0.5"));
        assert!(c.plan.allows(ip("10.0.0.9"), addr, Protocol::Tcp, 80));
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        let w = &c.warnings[0];
        assert!(
            w.contains("belongs to staging/new (node n2)") && w.contains("x/old (node n1) lost it"),
            "{w}"
        );
        let owners: Vec<(IpAddr, &ObjectKey)> = inc.address_owners().collect();
        assert!(owners.contains(&(addr, &new.key)), "{owners:?}");
        assert_eq!(owners.len(), 2);

        // Being deleted, the newer pod gives the address back.
        let leaving = with(&new, 200, true);
        inc.upsert_pod(leaving.clone());
        let c = step(&mut inc, &[&web, &old, &leaving]);
        assert_eq!(inc.address_owner(addr), Some(&old.key));
        assert_eq!(inc.take_moved_addresses(), BTreeSet::from([addr]));
        assert_eq!(chain_ips(&c), Some(vec![addr]));
        assert!(in_peer_sets(&c.plan, "10.0.0.5"));

        inc.remove_pod(&leaving.key);
        step(&mut inc, &[&web, &old]);
        assert!(inc.take_moved_addresses().is_empty());
        inc.remove_pod(&old.key);
        let c = step(&mut inc, &[&web]);
        assert_eq!(inc.address_owner(addr), None);
        assert_eq!(inc.take_moved_addresses(), BTreeSet::from([addr]));
        assert!(!in_peer_sets(&c.plan, "10.0.0.5"));
    }

    #[test]
    fn among_claimants_all_being_deleted_the_newest_owns_and_ties_go_to_the_greater_key() {
        let with = |name: &str, created: u32, deleting: bool| {
            Arc::new(PodInfo {
                created,
                deleting,
                ..(*pod(name, "n2", "10.0.0.5")).clone()
            })
        };
        let addr = ip("10.0.0.5");
        let mut inc = Incremental::new("n1");
        inc.upsert_pod(with("a", 300, true));
        inc.upsert_pod(with("b", 200, true));
        assert_eq!(inc.address_owner(addr), Some(&ObjectKey::new("x", "a")));
        inc.upsert_pod(with("c", 100, false));
        assert_eq!(inc.address_owner(addr), Some(&ObjectKey::new("x", "c")));
        inc.upsert_pod(with("d", 100, false));
        assert_eq!(inc.address_owner(addr), Some(&ObjectKey::new("x", "d")));
        inc.remove_pod(&ObjectKey::new("x", "d"));
        inc.remove_pod(&ObjectKey::new("x", "c"));
        assert_eq!(inc.address_owner(addr), Some(&ObjectKey::new("x", "a")));
        // A finished pod claims nothing.
        inc.upsert_pod(Arc::new(PodInfo {
            phase: Some("Succeeded".into()),
            ..(*with("a", 300, true)).clone()
        }));
        assert_eq!(inc.address_owner(addr), Some(&ObjectKey::new("x", "b")));
    }

    #[test]
    fn a_pod_with_two_addresses_of_one_family_owns_both() {
        let two = Arc::new(PodInfo {
            ips: vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("fd00::1"), ip("fd00::2")].into(),
            created: 5,
            ..(*pod("two", "n1", "10.0.0.1")).clone()
        });
        let newer = Arc::new(PodInfo {
            created: 9,
            ..(*pod("newer", "n1", "10.0.0.2")).clone()
        });
        let mut inc = Incremental::new("n1");
        inc.upsert_pod(two.clone());
        let owned = |inc: &Incremental| {
            let mut all: Vec<(IpAddr, String)> = inc
                .address_owners()
                .map(|(ip, k)| (ip, k.name.clone()))
                .collect();
            all.sort();
            all
        };
        let all = |names: [&str; 4]| {
            ["10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2"]
                .into_iter()
                .zip(names)
                .map(|(a, n)| (ip(a), n.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(owned(&inc), all(["two", "two", "two", "two"]));
        inc.upsert_pod(newer.clone());
        assert_eq!(owned(&inc), all(["two", "newer", "two", "two"]));
        inc.remove_pod(&newer.key);
        assert_eq!(owned(&inc), all(["two", "two", "two", "two"]));
        inc.remove_pod(&two.key);
        assert_eq!(inc.address_owners().count(), 0);
    }

    #[test]
    fn plan_sets_are_named_by_their_full_content_key() {
        let snap = snapshot(&[&pod("a", "n1", "10.0.0.1"), &pod("b", "n2", "10.0.0.2")]);
        let plan = compile(&snap, "n1").plan;
        let ids: Vec<&str> = plan.addr_sets.keys().map(String::as_str).collect();
        assert_eq!(ids, ["pods|ns=x|app=web"]);
    }
}
