//! The compiler's state kept between syncs: objects go in one change at a
//! time, a [`Compiled`] plan comes out, and a change costs work in
//! proportion to what it touches rather than to the cluster.
//!
//! ```text
//!  upsert/remove pod ───────► address owners ──────────────────┐
//!                             namespaces (labels, pods by name) ─┤  count the pod in or out
//!  upsert/remove namespace ─► local active pods                  ├─ of the cached sets that
//!  upsert/remove policy ────► policies, validated on arrival ────┘  cover it (by the
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
//! - each policy as it was validated when it arrived (the controller's
//!   store validates it and shares it);
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
//!
//! The parts: `index` (the objects and who selects whom), `owners`
//! (who owns each address), `set_cache` (the sets by content key, kept
//! counted), `pass` (one compilation: pods, policies and their sets into
//! a plan); this file takes the changes and keeps them in step.

mod index;
mod owners;
mod pass;
mod set_cache;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::Compiled;
use super::policy::PolicyObject;
use super::policy::{Diagnostic, Severity};
use super::snapshot::{Interner, NamespaceInfo, ObjectKey, PodInfo, Snapshot};
use index::{ByName, KnownNamespace, ObjectIndex};
use pass::CompilePass;
use set_cache::SetCache;

/// The compiler for one node, fed object by object. See the module
/// documentation.
pub struct Incremental {
    node: String,
    index: ObjectIndex,
    /// Resolved sets, kept up to date between compilations.
    sets: SetCache,
    /// Addresses whose owner changed or went away since
    /// [`take_moved_addresses`](Self::take_moved_addresses) last ran.
    moved: BTreeSet<IpAddr>,
}

impl Incremental {
    /// An empty cluster, compiled for `node`.
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            index: ObjectIndex::default(),
            sets: SetCache::default(),
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
            .index
            .namespaces
            .entry(pod.key.namespace.to_string())
            .or_insert_with(KnownNamespace::unseen);
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
        let Some(ns) = self.index.namespaces.get_mut(&*key.namespace) else {
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
            .index
            .namespaces
            .get_mut(&*key.namespace)
            .expect("the pod's namespace is known");
        let node = Some(self.node.as_str());
        let is_local = |p: &PodInfo| p.is_active() && p.node.as_deref() == node;
        ns.active -= old.is_some_and(PodInfo::is_active) as usize;
        ns.active += new.is_some_and(|p| p.is_active()) as usize;

        // Only active pods claim addresses and count in sets.
        let old = old.filter(|p| p.is_active());
        let new = new.filter(|p| p.is_active());
        let mut ips: Vec<IpAddr> = old.iter().flat_map(|p| p.ips.iter().copied()).collect();
        ips.extend(new.iter().flat_map(|p| p.ips.iter().copied()));
        ips.sort();
        ips.dedup();
        let index = &mut self.index;
        let before: Vec<Option<Arc<PodInfo>>> = ips
            .iter()
            .map(|ip| index.owners.owner(*ip).cloned())
            .collect();
        if let Some(old) = old {
            self.sets.count(index, old, None, false);
            index.owners.release(old);
        }
        if let Some(new) = new {
            index.owners.claim(new);
        }
        // Other pods that lost an address to this one, or got one back.
        let mut gained = Vec::new();
        for (ip, before) in ips.iter().zip(&before) {
            let after = index.owners.owner(*ip).cloned();
            if before.as_ref().map(|p| &p.key) == after.as_ref().map(|p| &p.key) {
                continue;
            }
            if before.is_some() {
                self.moved.insert(*ip);
            }
            if let Some(loser) = before.as_ref().filter(|p| p.key != *key) {
                self.sets.count(index, loser, Some(*ip), false);
            }
            if let Some(winner) = after.filter(|p| p.key != *key) {
                gained.push((*ip, winner));
            }
        }
        if let Some(new) = new {
            self.sets.count(index, new, None, true);
        }
        for (ip, winner) in gained {
            self.sets.count(index, &winner, Some(ip), true);
        }

        index.local.remove(key);
        if let Some(pod) = new
            && is_local(pod)
        {
            index.local.insert(key.clone(), pod.clone());
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
        if self.index.namespaces.contains_key(name) {
            self.set_namespace(name, None);
            self.forget_namespace_if_empty(name);
        }
    }

    fn set_namespace(&mut self, name: &str, object: Option<Arc<NamespaceInfo>>) {
        let ObjectIndex {
            namespaces, owners, ..
        } = &mut self.index;
        let ns = namespaces
            .entry(name.to_string())
            .or_insert_with(KnownNamespace::unseen);
        let old = std::mem::replace(&mut ns.object, object);
        let old = old.as_ref().map(|ns| &ns.labels);
        let ns = &*ns;
        if ns.active == 0 || old == ns.labels() {
            return;
        }
        self.sets.namespace_relabelled(ns, old, owners);
    }

    fn forget_namespace_if_empty(&mut self, name: &str) {
        if self
            .index
            .namespaces
            .get(name)
            .is_some_and(|ns| ns.pods.is_empty() && ns.object.is_none())
        {
            self.index.namespaces.remove(name);
        }
    }

    /// A NetworkPolicy was added or changed: validated here.
    pub fn upsert_policy(&mut self, np: Arc<NetworkPolicy>) {
        self.upsert_policy_object(Arc::new(PolicyObject::new(&np)));
    }

    /// [`upsert_policy`](Self::upsert_policy) for a policy validated
    /// already, as the controller's store keeps it (the compiler shares it).
    pub fn upsert_policy_object(&mut self, policy: Arc<PolicyObject>) {
        self.index.policies.insert(policy.key().clone(), policy);
    }

    /// A NetworkPolicy was deleted (`key` as [`policy_key`](super::policy_key)
    /// makes it).
    pub fn remove_policy(&mut self, key: &ObjectKey) {
        self.index.policies.remove(key);
    }

    /// The pod that owns an address: of the active pods claiming it (on
    /// any node), the one not being deleted with the newest creation time;
    /// when all are being deleted, the newest of them; ties go to the
    /// greater `namespace/name`. `None` when no active pod claims it.
    pub fn address_owner(&self, ip: IpAddr) -> Option<&ObjectKey> {
        self.index.owners.owner(ip).map(|p| &p.key)
    }

    /// Every address of an active pod with its owner, in no set order.
    pub fn address_owners(&self) -> impl Iterator<Item = (IpAddr, &ObjectKey)> {
        self.index.owners.iter().map(|(ip, p)| (ip, &p.key))
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
        self.index
            .policies
            .values()
            .flat_map(|policy| policy.diagnostics())
    }

    /// Compiles what the node must enforce now. Takes `&mut self` only to
    /// keep the sets it resolves for the next time.
    pub fn compile(&mut self) -> Compiled {
        self.sets.mark_all_unused();
        let (plan, warnings) = CompilePass::compile(&self.index, &mut self.sets, &self.node);
        self.sets.drop_unused();
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
    let mut interner = Interner::default();
    for np in &snap.policies {
        let parsed = PolicyObject::new_in(np, &mut interner);
        diagnostics.extend(parsed.diagnostics().iter().cloned());
        // The first valid policy of a key is used.
        let Some(policy) = parsed.policy() else {
            continue;
        };
        if inc.index.policies.contains_key(&policy.key) {
            diagnostics.push(Diagnostic {
                severity: Severity::Error,
                policy: policy.key.clone(),
                field: "metadata.name".into(),
                message: "duplicate policy; only the first is used".into(),
            });
            continue;
        }
        inc.upsert_policy_object(Arc::new(parsed));
    }
    (inc, diagnostics)
}
