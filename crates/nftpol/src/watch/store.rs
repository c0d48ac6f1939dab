//! Stores fed by the watch loop (`feed` in mod.rs), holding objects already
//! trimmed to what the compiler reads, and how far each store has
//! progressed in resourceVersion terms.
//!
//! kube-rs's reflector stores keep whole API objects; converting 10k pods to
//! [`PodInfo`] on every sync would cost more than compiling. These stores
//! convert once per event instead, and remember which keys changed since
//! the reconcile task last asked ([`Store::take_changes`]), so that it
//! hands the incremental compiler only those.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Objects of one kind, by key. The map holds `M` for a key: the key
/// itself, or (pods) a pointer to the object, which has its key already.
pub struct Store<Key, T, M = Key> {
    inner: Mutex<Inner<Key, T, M>>,
    /// Shares labels and ports between the objects (pods) it trims.
    interner: Mutex<Interner>,
}

/// The key a store's map holds for an object; it borrows as the key.
pub trait MapKey<Key, T>: Ord + Borrow<Key> {
    fn new(key: Key, value: &Arc<T>) -> Self;
}

impl<Key: Ord, T> MapKey<Key, T> for Key {
    fn new(key: Key, _: &Arc<T>) -> Self {
        key
    }
}

/// A pod as its own key: 8 bytes in the map instead of a copy of its
/// namespace and name (100k pods: about 14 MiB).
#[derive(Clone)]
pub struct PodKey(Arc<PodInfo>);

impl PartialEq for PodKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for PodKey {}

impl PartialOrd for PodKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PodKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.key.cmp(&other.0.key)
    }
}

impl Borrow<ObjectKey> for PodKey {
    fn borrow(&self) -> &ObjectKey {
        &self.0.key
    }
}

impl MapKey<ObjectKey, PodInfo> for PodKey {
    fn new(key: ObjectKey, value: &Arc<PodInfo>) -> Self {
        debug_assert_eq!(key, value.key, "a pod's store key is its own key");
        PodKey(value.clone())
    }
}

struct Inner<Key, T, M> {
    items: BTreeMap<M, Arc<T>>,
    /// The first full list has completed.
    synced: bool,
    /// Every change of this kind up to this resourceVersion is in `items`
    /// (from lists, events and bookmarks).
    resource_version: u64,
    /// Keys changed since the last [`Store::take_changes`]; `None`: all
    /// (nothing taken yet, or a list replaced everything).
    changed: Option<BTreeSet<Key>>,
}

/// What changed in a store since the last look.
pub enum Changes<Key, T> {
    /// Anything may have changed: here is everything.
    All(Vec<Arc<T>>),
    /// These keys, with their objects now (`None`: deleted).
    Some(Vec<(Key, Option<Arc<T>>)>),
}

impl<Key: Ord + Hash + Clone, T, M: MapKey<Key, T>> Default for Store<Key, T, M> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                items: BTreeMap::new(),
                synced: false,
                resource_version: 0,
                changed: None,
            }),
            interner: Mutex::new(Interner::default()),
        }
    }
}

/// What the store needs of an API object: its key, its trimmed form and its
/// resourceVersion.
pub trait Trim<Key, T> {
    fn key(&self) -> Key;
    fn trim(&self, interner: &mut Interner) -> T;
    fn resource_version(&self) -> Option<u64>;
}

impl<Key: Ord + Hash + Clone, T, M: MapKey<Key, T>> Store<Key, T, M> {
    /// Replaces everything with a list taken at `resource_version`.
    pub fn replace<K: Trim<Key, T>>(&self, objects: &[K], resource_version: u64) {
        let items = objects
            .iter()
            .map(|o| {
                let v = self.trim(o);
                (M::new(o.key(), &v), v)
            })
            .collect();
        self.replace_trimmed(items, resource_version);
    }

    /// Replaces everything with objects already trimmed (a paged list).
    pub fn replace_trimmed(&self, items: BTreeMap<M, Arc<T>>, resource_version: u64) {
        let mut inner = self.inner.lock().expect("store lock");
        inner.items = items;
        inner.synced = true;
        inner.resource_version = resource_version;
        inner.changed = None;
    }

    /// The trimmed form of an object, as this store keeps it.
    pub fn trim<K: Trim<Key, T>>(&self, obj: &K) -> Arc<T> {
        Arc::new(obj.trim(&mut self.interner.lock().expect("interner lock")))
    }

    /// An object was added or modified.
    pub fn upsert<K: Trim<Key, T>>(&self, obj: &K) {
        let (key, value) = (obj.key(), self.trim(obj));
        let mut inner = self.inner.lock().expect("store lock");
        if let Some(changed) = &mut inner.changed {
            changed.insert(key.clone());
        }
        inner.items.insert(M::new(key, &value), value);
        Self::bump(&mut inner, obj.resource_version());
    }

    /// An object was deleted.
    pub fn remove<K: Trim<Key, T>>(&self, obj: &K) {
        let key = obj.key();
        let mut inner = self.inner.lock().expect("store lock");
        inner.items.remove(&key);
        if let Some(changed) = &mut inner.changed {
            changed.insert(key);
        }
        Self::bump(&mut inner, obj.resource_version());
    }

    /// A bookmark: nothing changed up to `resource_version`.
    pub fn advance(&self, resource_version: u64) {
        let mut inner = self.inner.lock().expect("store lock");
        Self::bump(&mut inner, Some(resource_version));
    }

    fn bump(inner: &mut Inner<Key, T, M>, rv: Option<u64>) {
        if let Some(rv) = rv {
            inner.resource_version = inner.resource_version.max(rv);
        }
    }

    /// Whether the first full list has completed.
    pub fn is_synced(&self) -> bool {
        self.inner.lock().expect("store lock").synced
    }

    /// The current objects (cheap: shared pointers).
    pub fn values(&self) -> Vec<Arc<T>> {
        self.inner
            .lock()
            .expect("store lock")
            .items
            .values()
            .cloned()
            .collect()
    }

    /// One object.
    pub fn get(&self, key: &Key) -> Option<Arc<T>> {
        self.inner
            .lock()
            .expect("store lock")
            .items
            .get(key)
            .cloned()
    }

    /// What changed since the last call (everything, the first time and
    /// after a list), and starts over.
    pub fn take_changes(&self) -> Changes<Key, T> {
        Self::take(&mut self.inner.lock().expect("store lock"))
    }

    fn take(inner: &mut Inner<Key, T, M>) -> Changes<Key, T> {
        match inner.changed.replace(BTreeSet::new()) {
            None => Changes::All(inner.items.values().cloned().collect()),
            Some(keys) => Changes::Some(
                keys.into_iter()
                    .map(|k| {
                        let v = inner.items.get(&k).cloned();
                        (k, v)
                    })
                    .collect(),
            ),
        }
    }

    /// Forgets what changed: the next [`take_changes`](Self::take_changes)
    /// returns everything.
    pub fn mark_all_changed(&self) {
        self.inner.lock().expect("store lock").changed = None;
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("store lock").items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every change up to this resourceVersion is in the store.
    pub fn resource_version(&self) -> u64 {
        self.inner.lock().expect("store lock").resource_version
    }
}

/// Parses a resourceVersion; they are opaque strings, but every server in
/// practice (etcd, the dev server) uses increasing integers.
pub fn parse_rv(rv: Option<&str>) -> Option<u64> {
    rv?.parse().ok()
}

fn rv(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<u64> {
    parse_rv(meta.resource_version.as_deref())
}

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::compiler::snapshot::Interner;
use crate::compiler::{NamespaceInfo, ObjectKey, PodInfo, PolicyObject, policy_key};

impl Trim<ObjectKey, PodInfo> for Pod {
    /// As [`PodInfo::from_pod`] makes it.
    fn key(&self) -> ObjectKey {
        ObjectKey::from_meta(&self.metadata)
    }
    fn trim(&self, interner: &mut Interner) -> PodInfo {
        PodInfo::from_pod_in(self, interner)
    }
    fn resource_version(&self) -> Option<u64> {
        rv(&self.metadata)
    }
}

impl Trim<String, NamespaceInfo> for Namespace {
    fn key(&self) -> String {
        self.metadata.name.clone().unwrap_or_default()
    }
    fn trim(&self, _: &mut Interner) -> NamespaceInfo {
        NamespaceInfo::from_namespace(self)
    }
    fn resource_version(&self) -> Option<u64> {
        rv(&self.metadata)
    }
}

impl Trim<ObjectKey, PolicyObject> for NetworkPolicy {
    /// The key the compiler knows it by.
    fn key(&self) -> ObjectKey {
        policy_key(self)
    }
    /// Validates it once, here, sharing equal selectors: see
    /// [`PolicyObject`].
    fn trim(&self, interner: &mut Interner) -> PolicyObject {
        PolicyObject::new_in(self, interner)
    }
    fn resource_version(&self) -> Option<u64> {
        rv(&self.metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, rv: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some("x".into());
        p.metadata.name = Some(name.into());
        p.metadata.resource_version = Some(rv.into());
        p
    }

    #[test]
    fn a_list_replaces_everything_and_sets_the_progress() {
        let s: Store<ObjectKey, PodInfo> = Store::default();
        assert!(!s.is_synced());
        s.upsert(&pod("old", "2"));
        s.replace(&[pod("a", "3"), pod("b", "4")], 10);
        assert!(s.is_synced());
        let names: Vec<String> = s.values().iter().map(|p| p.key.name.clone()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(
            s.resource_version(),
            10,
            "the list's version, not its newest object's"
        );
    }

    #[test]
    fn changes_are_everything_first_then_the_keys_touched_since() {
        let s: Store<ObjectKey, PodInfo, PodKey> = Store::default();
        s.replace(&[pod("a", "1"), pod("b", "2")], 2);
        assert!(matches!(s.take_changes(), Changes::All(all) if all.len() == 2));
        s.upsert(&pod("c", "3"));
        s.remove(&pod("a", "4"));
        s.upsert(&pod("c", "5"));
        let Changes::Some(changed) = s.take_changes() else {
            panic!("only some keys changed");
        };
        let changed: Vec<(String, bool)> = changed
            .into_iter()
            .map(|(k, v)| (k.name, v.is_some()))
            .collect();
        assert_eq!(changed, [("a".into(), false), ("c".into(), true)]);
        assert!(matches!(s.take_changes(), Changes::Some(c) if c.is_empty()));
        s.replace(&[pod("d", "6")], 6);
        assert!(matches!(s.take_changes(), Changes::All(all) if all.len() == 1));
        assert_eq!(
            s.get(&ObjectKey::new("x", "d")).map(|p| p.key.name.clone()),
            Some("d".into())
        );
    }

    #[test]
    fn events_and_bookmarks_move_the_progress_forward_only() {
        let s: Store<ObjectKey, PodInfo> = Store::default();
        s.upsert(&pod("a", "3"));
        s.remove(&pod("a", "9"));
        assert!(s.is_empty());
        assert_eq!(s.resource_version(), 9);
        s.advance(12);
        s.advance(11);
        assert_eq!(s.resource_version(), 12);
    }
}
