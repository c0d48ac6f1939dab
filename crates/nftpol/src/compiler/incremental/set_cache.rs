//! The set cache: resolved peer and named-port sets by content key, each
//! kept up to date as the pods it covers come and go (counted in and out
//! by the addresses they own), and dropped when a compilation did not use
//! it.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::index::{KnownNamespace, ObjectIndex};
use super::owners::AddressOwners;
use crate::compiler::plan::{AddrSet, AddrSetKind, PortSet};
use crate::compiler::policy::NamespaceScope;
use crate::compiler::selector::LabelSel;
use crate::compiler::snapshot::{Labels, PodInfo, Protocol};

/// A cached set, kept up to date change by change.
pub(super) struct CachedSet {
    /// Which pods its content comes from.
    pub(super) depends_on: DependsOn,
    pub(super) content: SetContent,
    /// Used by the compilation under way (unused sets are dropped after it).
    pub(super) used: bool,
}

/// What a set holds, shared with the plans that use it. Each pod-derived
/// element comes from the one pod that owns its address
/// ([`AddressOwners`]), so a pod counted out takes its elements with it.
pub(super) enum SetContent {
    /// An ipBlock's ranges, or the addresses of the covered pods.
    Addr { set: Arc<AddrSet> },
    /// The covered pods' number for a named port, per address.
    Port {
        name: String,
        protocol: Protocol,
        set: Arc<PortSet>,
    },
}

impl SetContent {
    pub(super) fn hosts(description: String) -> Self {
        SetContent::Addr {
            set: Arc::new(AddrSet {
                description,
                kind: AddrSetKind::Hosts(BTreeSet::new()),
            }),
        }
    }

    pub(super) fn ports(description: String, name: &str, protocol: Protocol) -> Self {
        SetContent::Port {
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
    pub(super) fn count(&mut self, pod: &PodInfo, add: bool, owners: &AddressOwners) {
        for ip in &pod.ips {
            if owners.owns(pod, *ip) {
                self.count_ip(pod, *ip, add);
            }
        }
    }

    /// Counts one address of a covered pod in or out.
    fn count_ip(&mut self, pod: &PodInfo, ip: IpAddr, add: bool) {
        match self {
            SetContent::Addr { set } => {
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
            SetContent::Port {
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

    pub(super) fn is_empty(&self) -> bool {
        match self {
            SetContent::Addr { set, .. } => match &set.kind {
                AddrSetKind::Hosts(h) => h.is_empty(),
                AddrSetKind::Ranges(r) => r.is_empty(),
            },
            SetContent::Port { set, .. } => set.elements.is_empty(),
        }
    }
}

/// What a cached set's content depends on: the pods it covers.
pub(super) enum DependsOn {
    /// Nothing in the cluster (ipBlocks).
    Nothing,
    /// The active pods a selector pair covers.
    Pods(NamespaceScope, LabelSel),
    /// Every active pod.
    AllPods,
}

impl DependsOn {
    /// Whether `pod` (in the namespace `ns`) counts for the set.
    fn covers(&self, pod: &PodInfo, ns: &KnownNamespace) -> bool {
        if !pod.is_active() {
            return false;
        }
        match self {
            DependsOn::Nothing => false,
            DependsOn::AllPods => true,
            DependsOn::Pods(scope, sel) => {
                let in_scope = match scope {
                    NamespaceScope::Own(ns) => **ns == *pod.key.namespace,
                    NamespaceScope::Selected(nssel) => ns.selected_by(nssel),
                };
                in_scope && sel.matches(&pod.labels)
            }
        }
    }
}

/// Resolved sets by content key (the key is also the set's id).
#[derive(Default)]
pub(super) struct SetCache {
    sets: HashMap<String, CachedSet>,
}

impl SetCache {
    pub(super) fn get_mut(&mut self, key: &str) -> Option<&mut CachedSet> {
        self.sets.get_mut(key)
    }

    pub(super) fn insert(&mut self, key: String, set: CachedSet) {
        self.sets.insert(key, set);
    }

    /// Counts an active pod (only `ip`, when given) in or out of every
    /// cached set that covers it, by the addresses it owns now.
    pub(super) fn count(
        &mut self,
        index: &ObjectIndex,
        pod: &PodInfo,
        ip: Option<IpAddr>,
        add: bool,
    ) {
        let Some(ns) = index.namespaces.get(&*pod.key.namespace) else {
            return;
        };
        for set in self.sets.values_mut() {
            if set.depends_on.covers(pod, ns) {
                match ip {
                    Some(ip) => set.content.count_ip(pod, ip, add),
                    None => set.content.count(pod, add, &index.owners),
                }
            }
        }
    }

    /// The namespace `ns` was labelled `old` before (`None`: unknown): its
    /// active pods join or leave the sets whose namespace selector it now
    /// matches or no longer does.
    pub(super) fn namespace_relabelled(
        &mut self,
        ns: &KnownNamespace,
        old: Option<&Labels>,
        owners: &AddressOwners,
    ) {
        for set in self.sets.values_mut() {
            let DependsOn::Pods(NamespaceScope::Selected(nssel), sel) = &set.depends_on else {
                continue;
            };
            let now = ns.selected_by(nssel);
            if old.is_some_and(|old| nssel.matches(old)) == now {
                continue;
            }
            let mut pods = Vec::new();
            ns.matching(sel, &mut pods);
            for pod in pods {
                set.content.count(pod, now, owners);
            }
        }
    }

    /// Before a compilation: no set is used yet.
    pub(super) fn mark_all_unused(&mut self) {
        for set in self.sets.values_mut() {
            set.used = false;
        }
    }

    /// After a compilation: drops the sets it did not use.
    pub(super) fn drop_unused(&mut self) {
        self.sets.retain(|_, set| set.used);
    }
}
