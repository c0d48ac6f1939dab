//! The nftables objects nftpol owns, as plain values: what the renderer
//! produces, what the diff compares, and the in-memory record of what was
//! last applied (never read back from the kernel).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::net::{Family, IpRange, Protocol};

/// Key type of a set or map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyType {
    Ipv4,
    Ipv6,
    /// `ipv4_addr . inet_proto . inet_service` (with `flags interval`:
    /// ranges in the address and port fields)
    Tuple4,
    /// `ipv6_addr . inet_proto . inet_service`
    Tuple6,
}

impl KeyType {
    pub fn family(self) -> Family {
        match self {
            KeyType::Ipv4 | KeyType::Tuple4 => Family::V4,
            KeyType::Ipv6 | KeyType::Tuple6 => Family::V6,
        }
    }

    /// The address-only key of `family`.
    pub fn addr(family: Family) -> KeyType {
        match family {
            Family::V4 => KeyType::Ipv4,
            Family::V6 => KeyType::Ipv6,
        }
    }

    /// The `address . protocol . port` key of `family`.
    pub fn tuple(family: Family) -> KeyType {
        match family {
            Family::V4 => KeyType::Tuple4,
            Family::V6 => KeyType::Tuple6,
        }
    }
}

/// One element of a named set.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Elem {
    Addr(IpAddr),
    /// Inclusive range (rendered as a prefix when it is one).
    Range(IpAddr, IpAddr),
    /// `addresses . protocol . ports` in a concatenated interval set.
    Box {
        addrs: IpRange,
        proto: Protocol,
        ports: (u16, u16),
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftSet {
    pub key: KeyType,
    pub interval: bool,
    pub comment: String,
    /// Shared: the renderer's cache, the wanted ruleset and the record of
    /// what was applied hold one copy of an unchanged set between them.
    pub elements: Arc<BTreeSet<Elem>>,
    /// Sets with the same region name hold one region between them (a pod's
    /// allow-list in one direction and family), each the elements of its
    /// [`Part`]; the diff updates them together (see `nft::region`).
    pub region: Option<String>,
}

impl NftSet {
    /// Whether two sets can be turned into each other by element updates.
    pub fn same_shape(&self, other: &NftSet) -> bool {
        self.key == other.key
            && self.interval == other.interval
            && self.comment == other.comment
            && self.region == other.region
    }

    /// Which elements this set holds.
    pub fn part(&self) -> Part {
        match (self.key, self.interval) {
            (KeyType::Ipv4 | KeyType::Ipv6, false) => Part::Addrs,
            (KeyType::Ipv4 | KeyType::Ipv6, true) => Part::AddrRanges,
            (KeyType::Tuple4 | KeyType::Tuple6, false) => Part::Tuples,
            (KeyType::Tuple4 | KeyType::Tuple6, true) => Part::Boxes,
        }
    }
}

/// The four sets of a pod's allow-list in one family, by the shape of the
/// elements of its canonical region: single addresses on single ports
/// (`address . protocol . port` tuples) and on every port in hash sets (one
/// lookup, whatever their number), everything with a range (ipBlocks,
/// neighbouring pods merged, port ranges) in interval sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    // Declared in the order a pod chain looks them up.
    Tuples,
    Addrs,
    Boxes,
    AddrRanges,
}

impl Part {
    /// In the order a pod chain looks them up.
    pub const ALL: [Part; 4] = [Part::Tuples, Part::Addrs, Part::Boxes, Part::AddrRanges];

    /// The part an element of a region belongs to, by its shape.
    pub fn of(e: &Elem) -> Part {
        match e {
            Elem::Addr(_) => Part::Addrs,
            Elem::Range(a, b) if a == b => Part::Addrs,
            Elem::Range(..) => Part::AddrRanges,
            Elem::Box { addrs, ports, .. } if addrs.start == addrs.end && ports.0 == ports.1 => {
                Part::Tuples
            }
            Elem::Box { .. } => Part::Boxes,
        }
    }
}

/// A verdict map: address → `jump chain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftMap {
    pub key: KeyType,
    pub elements: BTreeMap<IpAddr, String>,
}

/// Which address of the packet a condition looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddrField {
    Saddr,
    Daddr,
}

/// One condition of a rule; all must hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Cond {
    /// `ct state established,related`
    CtEstablished,
    /// IPv6 neighbour and router discovery (`ip6 hoplimit 255`: it can
    /// only come from the link), which must never be filtered.
    Icmpv6Discovery,
    /// `ip saddr @set` / `ip6 daddr @set`
    AddrIn {
        family: Family,
        field: AddrField,
        set: String,
    },
    /// `ip saddr . meta l4proto . th dport @set` / `ip6 daddr . ...`
    TupleIn {
        family: Family,
        field: AddrField,
        set: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Accept,
    /// `counter drop`
    CountDrop,
    Jump(String),
    /// `ip saddr vmap @map`: dispatch to a pod chain by address.
    Dispatch {
        family: Family,
        field: AddrField,
        map: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NftRule {
    pub conds: Vec<Cond>,
    pub action: Action,
}

/// A base chain's hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    /// `forward`, `input`, ...
    pub hook: &'static str,
    pub priority: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftChain {
    pub hook: Option<Hook>,
    pub rules: Vec<NftRule>,
}

/// The whole table, ordered for creation: sets, then chains in
/// [`Ruleset::chain_order`], then maps.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub table: String,
    pub sets: BTreeMap<String, NftSet>,
    pub maps: BTreeMap<String, NftMap>,
    pub chains: BTreeMap<String, NftChain>,
}

/// Size figures for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub chains: usize,
    pub rules: usize,
    pub sets: usize,
    pub set_elements: usize,
    pub map_elements: usize,
}

impl Ruleset {
    /// Chains in creation order: chains that only accept or drop first,
    /// then chains that jump to them, then base chains; by name within each.
    pub fn chain_order(&self) -> Vec<&String> {
        let mut names: Vec<&String> = self.chains.keys().collect();
        names.sort_by_key(|n| (self.rank(n), *n));
        names
    }

    fn rank(&self, name: &str) -> u8 {
        let chain = &self.chains[name];
        if chain.hook.is_some() {
            2
        } else if chain
            .rules
            .iter()
            .any(|r| matches!(r.action, Action::Jump(_)))
        {
            1
        } else {
            0
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            chains: self.chains.len(),
            rules: self.chains.values().map(|c| c.rules.len()).sum(),
            sets: self.sets.len() + self.maps.len(),
            set_elements: self.sets.values().map(|s| s.elements.len()).sum(),
            map_elements: self.maps.values().map(|m| m.elements.len()).sum(),
        }
    }
}
