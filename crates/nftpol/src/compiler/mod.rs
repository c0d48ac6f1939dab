//! The pure core: a cluster [`Snapshot`] and a node name in, a [`Plan`] out.
//!
//! ```text
//!  Snapshot ─┐          Incremental (kept between syncs by `nftpol run`)
//!  or one    ├─► namespaces, pods, policies (validated once) ──┐
//!  change  ──┘                                                  ├─► Plan: pod chains, policy chains,
//!              resolved peer and named-port sets (cached) ──────┘         address sets, port sets
//! ```
//!
//! No I/O happens here. Only policies that select a pod on the node are
//! compiled, and every peer set is resolved once per distinct selector.
//! [`compile`] compiles a snapshot once; [`Incremental`] keeps the state and
//! takes changes one object at a time, with the same result.

pub mod explain;
pub mod incremental;
pub mod plan;
pub mod policy;
pub mod selector;
pub mod snapshot;
mod trace;

use std::collections::BTreeMap;

pub use plan::{
    AddrSet, AddrSetKind, IpRange, Match, Plan, PodChain, PolicyChain, PolicyId, PortMatch,
    PortSet, SetId,
};
pub use policy::{
    Diagnostic, Direction, Peer, Policy, PolicyObject, PortSpec, Severity, parse_policy, policy_key,
};
pub use snapshot::{Labels, NamedPort, NamespaceInfo, ObjectKey, PodInfo, Protocol, Snapshot};
pub use trace::Decision;

pub use incremental::Incremental;

use policy::NamespaceScope;

/// The result of one compilation.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    pub plan: Plan,
    /// Findings about invalid policies.
    pub diagnostics: Vec<Diagnostic>,
    /// Findings about the cluster state (e.g. two local pods with one IP).
    pub warnings: Vec<String>,
}

/// Validates every policy, sorted by key; a second policy with the same key
/// is reported and ignored.
pub fn parse_policies(snap: &Snapshot, diags: &mut Vec<Diagnostic>) -> Vec<Policy> {
    let mut out: BTreeMap<ObjectKey, Policy> = BTreeMap::new();
    for np in &snap.policies {
        if let Some(p) = parse_policy(np, diags) {
            if out.contains_key(&p.key) {
                diags.push(Diagnostic {
                    severity: Severity::Error,
                    policy: p.key.clone(),
                    field: "metadata.name".into(),
                    message: "duplicate policy; only the first is used".into(),
                });
                continue;
            }
            out.insert(p.key.clone(), p);
        }
    }
    out.into_values().collect()
}

/// Compiles what `node` must enforce: an [`Incremental`] compiler loaded
/// with the snapshot, run once. Findings come in the snapshot's order of
/// policies; a second policy with the same key is reported and ignored.
pub fn compile(snap: &Snapshot, node: &str) -> Compiled {
    let (mut inc, diagnostics) = incremental::load(snap, node);
    Compiled {
        diagnostics,
        ..inc.compile()
    }
}

/// The content key of a pod peer (shared by identical selectors).
fn pods_peer_key(scope: &NamespaceScope, pods: &selector::LabelSel) -> String {
    match scope {
        NamespaceScope::Own(ns) => format!("pods|ns={ns}|{}", pods.canonical()),
        NamespaceScope::Selected(sel) => {
            format!("pods|nssel={}|{}", sel.canonical(), pods.canonical())
        }
    }
}

/// The id of a plan set: its full content key, so that two different sets
/// never share one (a hash of the key could clash, and one set would then
/// stand in for the other). The keys of the kinds of set start differently
/// (`pods|`, `block|`, `named|`, `named-in|`), and selectors' canonical
/// forms are unambiguous ([`policy::LabelSel::canonical`]).
fn set_id(key: &str) -> SetId {
    key.to_string()
}

fn describe_pods(scope: &NamespaceScope, pods: &selector::LabelSel) -> String {
    match scope {
        NamespaceScope::Own(ns) => format!("pods {pods} in namespace {ns}"),
        NamespaceScope::Selected(sel) => format!("pods {pods} in namespaces {sel}"),
    }
}

/// Sorts and merges overlapping or adjacent port ranges.
fn merge_ports(mut r: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    r.sort();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(r.len());
    for (s, e) in r {
        if let Some(last) = out.last_mut()
            && s as u32 <= last.1 as u32 + 1
        {
            last.1 = last.1.max(e);
            continue;
        }
        out.push((s, e));
    }
    out
}
