//! Stores fed by kube-rs watchers, holding objects already trimmed to what
//! the compiler reads.
//!
//! kube-rs's reflector stores keep whole API objects; converting 10k pods to
//! [`PodInfo`] on every sync would cost more than compiling. These stores
//! convert once per event instead, and follow the reflector's protocol:
//! `Init` starts a relist into a buffer, `InitDone` swaps it in atomically.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use kube::runtime::watcher::Event;

/// Objects of one kind, by key.
pub struct Store<Key, T> {
    inner: Mutex<Inner<Key, T>>,
}

struct Inner<Key, T> {
    items: BTreeMap<Key, Arc<T>>,
    /// A relist in progress.
    buffer: Option<BTreeMap<Key, Arc<T>>>,
    /// The first full list has completed.
    synced: bool,
    /// Highest resourceVersion seen in an applied event.
    resource_version: u64,
}

impl<Key: Ord + Hash + Clone, T> Default for Store<Key, T> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                items: BTreeMap::new(),
                buffer: None,
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
    /// Applies one watcher event. Returns true when the visible contents may
    /// have changed (so a sync is due).
    pub fn apply<K: Trim<Key, T>>(&self, event: Event<K>) -> bool {
        let mut inner = self.inner.lock().expect("store lock");
        let bump = |inner: &mut Inner<Key, T>, obj: &K| {
            if let Some(rv) = obj.resource_version() {
                inner.resource_version = inner.resource_version.max(rv);
            }
        };
        match event {
            Event::Apply(obj) => {
                bump(&mut inner, &obj);
                inner.items.insert(obj.key(), Arc::new(obj.trim()));
                true
            }
            Event::Delete(obj) => {
                bump(&mut inner, &obj);
                inner.items.remove(&obj.key());
                true
            }
            Event::Init => {
                inner.buffer = Some(BTreeMap::new());
                false
            }
            Event::InitApply(obj) => {
                bump(&mut inner, &obj);
                let (k, v) = (obj.key(), Arc::new(obj.trim()));
                inner.buffer.get_or_insert_with(BTreeMap::new).insert(k, v);
                false
            }
            Event::InitDone => {
                if let Some(buffer) = inner.buffer.take() {
                    inner.items = buffer;
                }
                inner.synced = true;
                true
            }
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

    /// Highest resourceVersion of any event applied so far.
    pub fn resource_version(&self) -> u64 {
        self.inner.lock().expect("store lock").resource_version
    }
}

fn rv(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<u64> {
    meta.resource_version.as_deref()?.parse().ok()
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
    fn a_relist_replaces_the_contents_only_when_done() {
        let s: Store<ObjectKey, PodInfo> = Store::default();
        s.apply(Event::<Pod>::Init);
        s.apply(Event::InitApply(pod("a", "1")));
        assert!(
            !s.is_synced() && s.is_empty(),
            "nothing visible before InitDone"
        );
        assert!(s.apply(Event::<Pod>::InitDone));
        assert!(s.is_synced());
        assert_eq!(s.len(), 1);

        s.apply(Event::Apply(pod("b", "5")));
        // A relist (after a 410) that no longer has a: a disappears at InitDone.
        s.apply(Event::<Pod>::Init);
        s.apply(Event::InitApply(pod("b", "7")));
        assert_eq!(s.len(), 2, "old contents stay visible during the relist");
        s.apply(Event::<Pod>::InitDone);
        let names: Vec<String> = s.values().iter().map(|p| p.key.name.clone()).collect();
        assert_eq!(names, ["b"]);
        assert_eq!(s.resource_version(), 7);
    }

    #[test]
    fn deletes_remove_and_bump_the_resource_version() {
        let s: Store<ObjectKey, PodInfo> = Store::default();
        s.apply(Event::Apply(pod("a", "3")));
        s.apply(Event::Delete(pod("a", "9")));
        assert!(s.is_empty());
        assert_eq!(s.resource_version(), 9);
    }
}
