//! The compiler's output: what to enforce on one node, as plain data.
//!
//! Nothing here is nftables syntax. `src/nft` renders it; [`Plan::allows`]
//! (in `trace.rs`) decides a packet the way the rendered ruleset does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

// The plan's vocabulary, so that a reader of the plan (`nft`) needs
// nothing else of the compiler: directions and object keys are the
// compiler's; protocols and address ranges are the ground floor's.
pub use super::policy::Direction;
pub use super::snapshot::ObjectKey;
pub use crate::net::{IpRange, Protocol};

/// Identifies a shared set in the plan. Stable for the same content key, so
/// that successive plans name the same set the same way.
pub type SetId = String;

/// A policy in one direction: the allow lines of one policy, which the
/// renderer merges into the allow-list of every pod the policy selects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId {
    pub policy: ObjectKey,
    pub direction: Direction,
}

/// An isolated local pod in one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodChain {
    pub pod: ObjectKey,
    pub direction: Direction,
    /// The pod's addresses (dispatch keys).
    pub ips: Vec<IpAddr>,
    /// Every policy that isolates the pod in this direction, sorted. Those
    /// with an entry in [`Plan::policies`] have something to allow; the rest
    /// only isolate.
    pub policies: Vec<ObjectKey>,
}

/// Port part of a match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortMatch {
    /// Every protocol and port.
    Any,
    /// Every port of one protocol.
    Proto(Protocol),
    /// Ports and inclusive ranges of one protocol.
    Ports(Protocol, Vec<(u16, u16)>),
    /// Destination address, protocol and port together in a [`PortSet`]:
    /// named ports, resolved per destination pod.
    Named(SetId),
}

/// One allow line of a policy: the peer (`None` = any address) and the
/// ports. The peer is the source for ingress and the destination for egress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    /// Index of the policy rule this line comes from.
    pub rule: usize,
    pub peer: Option<SetId>,
    pub ports: PortMatch,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyChain {
    pub id: PolicyId,
    pub matches: Vec<Match>,
}

/// Contents of an address set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddrSetKind {
    /// Pod addresses (selector peers).
    Hosts(BTreeSet<IpAddr>),
    /// Disjoint, merged, sorted ranges (ipBlocks).
    Ranges(Vec<IpRange>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrSet {
    /// Human-readable origin, e.g. `pods app=web in namespace x`.
    pub description: String,
    pub kind: AddrSetKind,
}

impl AddrSet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match &self.kind {
            AddrSetKind::Hosts(h) => h.contains(&ip),
            AddrSetKind::Ranges(r) => r
                .iter()
                .any(|r| r.start.is_ipv4() == ip.is_ipv4() && r.start <= ip && ip <= r.end),
        }
    }
}

/// `address . protocol . port` triples (named ports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSet {
    pub description: String,
    pub elements: BTreeSet<(IpAddr, Protocol, u16)>,
}

/// Everything one node enforces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub node: String,
    /// Isolated local pods, sorted by (direction, pod).
    pub pods: Vec<PodChain>,
    /// Policy chains that allow something, used by at least one local pod.
    pub policies: BTreeMap<PolicyId, PolicyChain>,
    /// Shared with the compiler's cache: a plan costs no copy of them.
    pub addr_sets: BTreeMap<SetId, Arc<AddrSet>>,
    pub port_sets: BTreeMap<SetId, Arc<PortSet>>,
    /// The addresses of every active pod on the node, isolated or not
    /// (what the port guard binds to the pods' bridge ports).
    pub local_addrs: BTreeSet<IpAddr>,
}

impl Plan {
    pub fn pod_chain(&self, direction: Direction, ip: IpAddr) -> Option<&PodChain> {
        self.pods
            .iter()
            .find(|p| p.direction == direction && p.ips.contains(&ip))
    }
}
