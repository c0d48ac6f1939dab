//! Stores fed by the watch loop (`feed` in mod.rs), holding objects already
//! trimmed to what the compiler reads, and how far each store has
//! progressed in resourceVersion terms.
//!
//! kube-rs's reflector stores keep whole API objects; converting 10k pods to
//! [`PodInfo`] on every sync would cost more than compiling. These stores
//! convert once per event instead.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Objects of one kind, by key.
pub struct Store<Key, T> {
    inner: Mutex<Inner<Key, T>>,
}

struct Inner<Key, T> {
    items: BTreeMap<Key, Arc<T>>,
    /// The first full list has completed.
    synced: bool,
    /// Every change of this kind up to this resourceVersion is in `items`
    /// (from lists, events and bookmarks).
    resource_version: u64,
}

impl<Key: Ord + Hash + Clone, T> Default for Store<Key, T> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                items: BTreeMap::new(),
                synced: false,
                resource_version: 0,
            }),
        }
    }
}

/// What the store needs of an API object: its key, its trimmed form and its
/// resourceVersion.
pub trait Trim<Key, T> {
    fn key(&self) -> Key;
    fn trim(&self) -> T;
    fn resource_version(&self) -> Option<u64>;
}

impl<Key: Ord + Hash + Clone, T> Store<Key, T> {
    /// Replaces everything with a list taken at `resource_version`.
    pub fn replace<K: Trim<Key, T>>(&self, objects: &[K], resource_version: u64) {
        let items = objects
            .iter()
            .map(|o| (o.key(), Arc::new(o.trim())))
            .collect();
        self.replace_trimmed(items, resource_version);
    }

    /// Replaces everything with objects already trimmed (a paged list).
    pub fn replace_trimmed(&self, items: BTreeMap<Key, Arc<T>>, resource_version: u64) {
        let mut inner = self.inner.lock().expect("store lock");
        inner.items = items;
        inner.synced = true;
        inner.resource_version = resource_version;
    }

    /// An object was added or modified.
    pub fn upsert<K: Trim<Key, T>>(&self, obj: &K) {
        let (key, value) = (obj.key(), Arc::new(obj.trim()));
        let mut inner = self.inner.lock().expect("store lock");
        inner.items.insert(key, value);
        Self::bump(&mut inner, obj.resource_version());
    }

    /// An object was deleted.
    pub fn remove<K: Trim<Key, T>>(&self, obj: &K) {
        let key = obj.key();
        let mut inner = self.inner.lock().expect("store lock");
        inner.items.remove(&key);
        Self::bump(&mut inner, obj.resource_version());
    }

    /// A bookmark: nothing changed up to `resource_version`.
    pub fn advance(&self, resource_version: u64) {
        let mut inner = self.inner.lock().expect("store lock");
        Self::bump(&mut inner, Some(resource_version));
    }

    fn bump(inner: &mut Inner<Key, T>, rv: Option<u64>) {
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

use crate::compiler::{NamespaceInfo, ObjectKey, PodInfo};

impl Trim<ObjectKey, PodInfo> for Pod {
    fn key(&self) -> ObjectKey {
        ObjectKey::new(
            self.metadata.namespace.clone().unwrap_or_default(),
            self.metadata.name.clone().unwrap_or_default(),
        )
    }
    fn trim(&self) -> PodInfo {
        PodInfo::from_pod(self)
    }
    fn resource_version(&self) -> Option<u64> {
        rv(&self.metadata)
    }
}

impl Trim<String, NamespaceInfo> for Namespace {
    fn key(&self) -> String {
        self.metadata.name.clone().unwrap_or_default()
    }
    fn trim(&self) -> NamespaceInfo {
        NamespaceInfo::from_namespace(self)
    }
    fn resource_version(&self) -> Option<u64> {
        rv(&self.metadata)
    }
}

impl Trim<ObjectKey, NetworkPolicy> for NetworkPolicy {
    fn key(&self) -> ObjectKey {
        ObjectKey::new(
            self.metadata.namespace.clone().unwrap_or_default(),
            self.metadata.name.clone().unwrap_or_default(),
        )
    }
    /// Keeps the spec and the identity; drops annotations (kubectl's
    /// last-applied copy can be larger than the policy) and managed fields.
    fn trim(&self) -> NetworkPolicy {
        let m = &self.metadata;
        NetworkPolicy {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: m.name.clone(),
                namespace: m.namespace.clone(),
                uid: m.uid.clone(),
                generation: m.generation,
                resource_version: m.resource_version.clone(),
                ..Default::default()
            },
            spec: self.spec.clone(),
        }
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
