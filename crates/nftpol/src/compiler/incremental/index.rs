//! The object index: which namespaces, pods and policies exist, which pods
//! are active on the node, which pods a selector pair covers, and who owns
//! each address.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use super::owners::AddressOwners;
use crate::compiler::policy::NamespaceScope;
use crate::compiler::policy::PolicyObject;
use crate::compiler::selector::LabelSel;
use crate::compiler::snapshot::{Labels, NamespaceInfo, ObjectKey, PodInfo};

/// The objects, indexed the way compilation reads them.
#[derive(Default)]
pub(super) struct ObjectIndex {
    pub(super) namespaces: HashMap<String, KnownNamespace>,
    /// Active pods on the node, sorted by key.
    pub(super) local: BTreeMap<ObjectKey, Arc<PodInfo>>,
    /// Validated as they arrived, shared with the controller's store.
    pub(super) policies: BTreeMap<ObjectKey, Arc<PolicyObject>>,
    /// The owner of every address of an active pod.
    pub(super) owners: AddressOwners,
}

/// A namespace: named by a Namespace object, by pods, or by both.
pub(super) struct KnownNamespace {
    /// `None` while its Namespace object is unknown (not seen yet, or
    /// deleted): then no namespace selector matches it, not even `{}`, for
    /// its labels are unknown.
    pub(super) object: Option<Arc<NamespaceInfo>>,
    /// Every pod of the namespace, active or not.
    pub(super) pods: HashSet<ByName>,
    /// How many of them are active.
    pub(super) active: usize,
}

impl KnownNamespace {
    /// A namespace known only by name, from its pods.
    pub(super) fn unseen() -> Self {
        Self {
            object: None,
            pods: HashSet::new(),
            active: 0,
        }
    }

    /// Its labels, when its Namespace object is known.
    pub(super) fn labels(&self) -> Option<&Labels> {
        self.object.as_ref().map(|ns| &ns.labels)
    }

    /// Whether a namespace selector matches it.
    pub(super) fn selected_by(&self, nssel: &LabelSel) -> bool {
        self.labels().is_some_and(|labels| nssel.matches(labels))
    }

    /// Its active pods that `sel` selects, added to `out`.
    pub(super) fn matching<'a>(&'a self, sel: &LabelSel, out: &mut Vec<&'a PodInfo>) {
        out.extend(
            self.pods
                .iter()
                .map(|p| &*p.0)
                .filter(|p| p.is_active() && sel.matches(&p.labels)),
        );
    }
}

/// A pod in its namespace's set, looked up by name without a copy of it.
pub(super) struct ByName(pub(super) Arc<PodInfo>);

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

impl ObjectIndex {
    /// The addresses of a pod that it owns.
    pub(super) fn owned_ips<'a>(&'a self, pod: &'a PodInfo) -> impl Iterator<Item = IpAddr> + 'a {
        pod.ips
            .iter()
            .copied()
            .filter(|ip| self.owners.owns(pod, *ip))
    }

    /// Active pods a pod peer covers.
    pub(super) fn peer_pods(&self, scope: &NamespaceScope, sel: &LabelSel) -> Vec<&PodInfo> {
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

    pub(super) fn active_pods(&self) -> Vec<&PodInfo> {
        self.namespaces
            .values()
            .filter(|ns| ns.active > 0)
            .flat_map(|ns| ns.pods.iter().map(|p| &*p.0).filter(|p| p.is_active()))
            .collect()
    }
}
