//! Plan → nftables objects.
//!
//! The static skeleton (base chains, dispatch maps) is data at the top. Per
//! direction there is one base chain per hook, so that an `accept` in the
//! egress check ends only that check and the packet still meets the ingress
//! check (an accept ends only the current base chain; a drop is final).
//!
//! Each isolated pod gets one chain per direction holding its allow-list
//! merged over all the policies that select it, per address family in four
//! sets (the parts of one region, `nft::region`): single
//! `peer . protocol . port` tuples and single peers allowed on every port in
//! hash sets, and whatever has a range (ipBlocks, runs of neighbouring pod
//! addresses, port ranges, every port of a protocol) in interval sets. So a
//! new connection costs one dispatch lookup and at most four set lookups per
//! direction, however many policies select the pod, and a hash lookup
//! whatever the number of peers. The chains never change shape when policies
//! or peers change, only set elements do.
//!
//! ```text
//! forward-egress  (forward, prio 0) ─┐ ct established → accept
//! input-egress    (input,   prio 0) ─┤ ip saddr vmap @dispatch-eg-4 ─► pod-eg/NS/POD
//! forward-ingress (forward, prio 1) ─┘ ip daddr vmap @dispatch-in-4 ─► pod-in/NS/POD
//!                                      ip daddr @isolated-in-4 counter drop
//!   pod-in/NS/POD:  ip saddr . meta l4proto . th dport @pod-in/NS/POD.tuples4 accept
//!                   ip saddr @pod-in/NS/POD.addrs4 accept
//!                   ip saddr . meta l4proto . th dport @pod-in/NS/POD.boxes4 accept
//!                   ip saddr @pod-in/NS/POD.ranges4 accept
//!                   counter drop
//! ```
//!
//! An isolated pod's address is also in `isolated-{in,eg}-{4,6}`, and the
//! base chain drops what comes back from its chain: a pod chain emptied by
//! hand (`nft flush chain`) denies instead of letting everything through.
//! The node reaches its pods through the `output` hook, which nftpol does
//! not filter; on `forward` a source address of the node is a spoofed one,
//! so pod chains give it no pass.
//!
//! Which policy line allows a packet is the plan's business
//! ([`Plan::decide`], `nftpol explain`); the kernel only needs the union.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Weak};

use crate::compiler::plan::{
    AddrSet, AddrSetKind, Direction, Match, ObjectKey, Plan, PodChain, PolicyChain, PolicyId,
    PortMatch, PortSet, SetId,
};
use crate::net::{Family, to_u128};

use super::model::{
    Action, AddrField, Cond, Elem, Hook, KeyType, NftChain, NftMap, NftRule, NftSet, Part, Ruleset,
};
use super::region::{Builder, Span, covers, normalize};

pub const DEFAULT_TABLE: &str = "nftpol";

/// Names longer than this are shortened, keeping a readable head and a hash.
const MAX_NAME: usize = 120;

pub const FORWARD_EGRESS: &str = "forward-egress";
pub const INPUT_EGRESS: &str = "input-egress";
pub const FORWARD_INGRESS: &str = "forward-ingress";

/// Base chains: (name, hook, priority, direction). Egress is checked before
/// ingress; the order does not change the outcome, since both must accept.
pub const BASE_CHAINS: [(&str, &str, i32, Direction); 3] = [
    (FORWARD_EGRESS, "forward", 0, Direction::Egress),
    (INPUT_EGRESS, "input", 0, Direction::Egress),
    (FORWARD_INGRESS, "forward", 1, Direction::Ingress),
];

fn dir_tag(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "in",
        Direction::Egress => "eg",
    }
}

pub fn dispatch_map(d: Direction, family: Family) -> String {
    format!("dispatch-{}-{}", dir_tag(d), family.number())
}

/// The addresses of the pods isolated in one direction (the dispatch map's
/// keys): what falls through a pod chain is dropped by them.
pub fn isolated_set(d: Direction, family: Family) -> String {
    format!("isolated-{}-{}", dir_tag(d), family.number())
}

/// `head` as is when short enough, else its start and a hash of the whole.
/// Kubernetes names use `[a-z0-9.-]`; with the `/` and `_` added here every
/// name stays an nft identifier, which a full sync's nft text needs (nft
/// 1.0.6 takes no quoted names). The hash is 128 bits of SHA-256: two pods
/// whose long names shared a hash would share a chain, and a namespace
/// owner could search for a clash of a short or non-cryptographic one.
fn bounded(head: String) -> String {
    if head.len() <= MAX_NAME {
        return head;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, head.as_bytes());
    let hash: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut cut = MAX_NAME - hash.len() - 1;
    while !head.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{hash}", &head[..cut])
}

pub fn pod_chain_name(d: Direction, pod: &ObjectKey) -> String {
    bounded(format!("pod-{}/{}/{}", dir_tag(d), pod.namespace, pod.name))
}

/// Renders a plan into the table `table`.
pub fn render(plan: &Plan, table: &str) -> Ruleset {
    Renderer::default().render(plan, table)
}

type Parts = BTreeMap<Part, Arc<BTreeSet<Elem>>>;

/// Renders plan after plan, as the controller does: a pod's allow-list is
/// merged again only when something it is built from changed (its
/// addresses, its policies' lines, or a peer or named-port set, which the
/// compiler keeps as the same `Arc` while unchanged).
#[derive(Debug, Default)]
pub struct Renderer {
    lists: HashMap<(String, Family), (Inputs, Parts)>,
}

/// What one allow-list was merged from. The sets are held weakly: a
/// pointer compared later still names the same set (the allocation stays
/// while a `Weak` does), and the compiler, holding the only strong
/// reference between syncs, changes a set in place instead of copying it
/// (a set of every pod: 100k addresses) for each pod that joins it.
#[derive(Debug)]
struct Inputs {
    ips: Vec<IpAddr>,
    policies: Vec<(ObjectKey, Option<Vec<Match>>)>,
    addr_sets: Vec<Option<Weak<AddrSet>>>,
    port_sets: Vec<Option<Weak<PortSet>>>,
}

impl Inputs {
    fn lines<'a>(
        plan: &'a Plan,
        pod: &'a PodChain,
    ) -> impl Iterator<Item = Option<&'a PolicyChain>> {
        pod.policies.iter().map(move |p| {
            plan.policies.get(&PolicyId {
                policy: p.clone(),
                direction: pod.direction,
            })
        })
    }

    fn of(plan: &Plan, pod: &PodChain) -> Self {
        let mut addr_sets = Vec::new();
        let mut port_sets = Vec::new();
        let mut policies = Vec::new();
        for (key, chain) in pod.policies.iter().zip(Self::lines(plan, pod)) {
            if let Some(chain) = chain {
                for m in &chain.matches {
                    addr_sets.push(
                        m.peer
                            .as_ref()
                            .and_then(|id| plan.addr_sets.get(id).map(Arc::downgrade)),
                    );
                    if let PortMatch::Named(id) = &m.ports {
                        port_sets.push(plan.port_sets.get(id).map(Arc::downgrade));
                    }
                }
            }
            policies.push((key.clone(), chain.map(|c| c.matches.clone())));
        }
        Inputs {
            ips: pod.ips.clone(),
            policies,
            addr_sets,
            port_sets,
        }
    }

    /// Whether `pod` in `plan` is built from exactly this, without copying.
    fn unchanged(&self, plan: &Plan, pod: &PodChain) -> bool {
        if self.ips != pod.ips || self.policies.len() != pod.policies.len() {
            return false;
        }
        let (mut a, mut n) = (self.addr_sets.iter(), self.port_sets.iter());
        for ((key, held), (now, chain)) in self
            .policies
            .iter()
            .zip(pod.policies.iter().zip(Self::lines(plan, pod)))
        {
            if key != now {
                return false;
            }
            let lines = chain.map(|c| &c.matches);
            if held.as_ref() != lines {
                return false;
            }
            for m in lines.into_iter().flatten() {
                if !same(
                    a.next(),
                    m.peer.as_ref().and_then(|id| plan.addr_sets.get(id)),
                ) {
                    return false;
                }
                if let PortMatch::Named(id) = &m.ports
                    && !same(n.next(), plan.port_sets.get(id))
                {
                    return false;
                }
            }
        }
        true
    }
}

/// Whether a held set is the one the plan has now (both absent counts).
fn same<T>(held: Option<&Option<Weak<T>>>, now: Option<&Arc<T>>) -> bool {
    match (held, now) {
        (Some(Some(h)), Some(n)) => std::ptr::eq(h.as_ptr(), Arc::as_ptr(n)),
        (Some(None), None) => true,
        _ => false,
    }
}

impl Renderer {
    /// Renders a plan into the table `table`.
    pub fn render(&mut self, plan: &Plan, table: &str) -> Ruleset {
        let mut seen = std::collections::HashSet::new();
        let mut peers: Option<PeerSets> = None;
        let rs = render_with(plan, table, |name, pod, family| {
            let key = (name.to_string(), family);
            seen.insert(key.clone());
            if let Some((inputs, parts)) = self.lists.get(&key)
                && inputs.unchanged(plan, pod)
            {
                return parts.clone();
            }
            let peers = peers.get_or_insert_with(|| PeerSets::new(plan));
            peers.load(pod);
            let parts = allow_list(plan, peers, pod, family);
            self.lists
                .insert(key, (Inputs::of(plan, pod), parts.clone()));
            parts
        });
        self.lists.retain(|k, _| seen.contains(k));
        rs
    }
}

fn render_with(
    plan: &Plan,
    table: &str,
    mut lists: impl FnMut(&str, &PodChain, Family) -> Parts,
) -> Ruleset {
    let mut rs = Ruleset {
        table: table.to_string(),
        ..Ruleset::default()
    };

    // Skeleton: dispatch maps and base chains.
    for d in Direction::BOTH {
        for family in Family::BOTH {
            rs.maps.insert(
                dispatch_map(d, family),
                NftMap {
                    key: KeyType::addr(family),
                    elements: Default::default(),
                },
            );
        }
    }
    for d in Direction::BOTH {
        for family in Family::BOTH {
            let what = match d {
                Direction::Ingress => "ingress",
                Direction::Egress => "egress",
            };
            rs.sets.insert(
                isolated_set(d, family),
                NftSet {
                    key: KeyType::addr(family),
                    interval: false,
                    comment: format!("addresses of pods isolated for {what}"),
                    elements: Arc::default(),
                    region: None,
                },
            );
        }
    }
    for (name, hook, priority, d) in BASE_CHAINS {
        let field = match d {
            Direction::Ingress => AddrField::Daddr,
            Direction::Egress => AddrField::Saddr,
        };
        let mut rules = vec![
            rule(vec![Cond::CtEstablished], Action::Accept),
            rule(vec![Cond::Icmpv6Discovery], Action::Accept),
        ];
        for family in Family::BOTH {
            rules.push(rule(
                vec![],
                Action::Dispatch {
                    family,
                    field,
                    map: dispatch_map(d, family),
                },
            ));
        }
        // Back from a pod chain without a verdict (it was emptied): deny.
        for family in Family::BOTH {
            rules.push(rule(
                vec![addr_cond(family, field, &isolated_set(d, family))],
                Action::CountDrop,
            ));
        }
        rs.chains.insert(
            name.to_string(),
            NftChain {
                hook: Some(Hook { hook, priority }),
                rules,
            },
        );
    }

    // Pod chains, their allow-list sets and their dispatch entries.
    let mut isolated: [[BTreeSet<Elem>; 2]; 2] = Default::default();
    for pod in &plan.pods {
        let name = pod_chain_name(pod.direction, &pod.pod);
        let field = match pod.direction {
            Direction::Ingress => AddrField::Saddr,
            Direction::Egress => AddrField::Daddr,
        };
        let mut rules = Vec::new();
        for family in Family::BOTH {
            if !pod.ips.iter().any(|ip| Family::of(*ip) == family) {
                continue;
            }
            let pod_what = format!("{} {}", pod.pod, dir_word(pod.direction));
            let region = pod_region_name(&name, family);
            let parts = lists(&name, pod, family);
            // Cheapest and most common first: single peers on single ports.
            for (part, elements) in parts {
                let set = pod_set_name(&name, part, family);
                let (key, interval, cond, what) = match part {
                    Part::Tuples => (
                        KeyType::tuple(family),
                        false,
                        tuple_cond(family, field, &set),
                        "peer . protocol . port",
                    ),
                    Part::Addrs => (
                        KeyType::addr(family),
                        false,
                        addr_cond(family, field, &set),
                        "peers on every port",
                    ),
                    Part::Boxes => (
                        KeyType::tuple(family),
                        true,
                        tuple_cond(family, field, &set),
                        "peer ranges . protocol . port ranges",
                    ),
                    Part::AddrRanges => (
                        KeyType::addr(family),
                        true,
                        addr_cond(family, field, &set),
                        "peer ranges on every port",
                    ),
                };
                rs.sets.insert(
                    set,
                    NftSet {
                        key,
                        interval,
                        comment: short_comment(format!("{pod_what} allows {what}")),
                        elements,
                        region: Some(region.clone()),
                    },
                );
                rules.push(rule(vec![cond], Action::Accept));
            }
        }
        rules.push(rule(vec![], Action::CountDrop));
        rs.chains
            .insert(name.clone(), NftChain { hook: None, rules });
        for ip in &pod.ips {
            let family = Family::of(*ip);
            let map = dispatch_map(pod.direction, family);
            rs.maps
                .get_mut(&map)
                .expect("dispatch maps are created above")
                .elements
                .insert(*ip, name.clone());
            isolated[pod.direction as usize][family.index()].insert(Elem::Addr(*ip));
        }
    }
    for d in Direction::BOTH {
        for family in Family::BOTH {
            let elems = std::mem::take(&mut isolated[d as usize][family.index()]);
            rs.sets
                .get_mut(&isolated_set(d, family))
                .expect("isolated sets are created above")
                .elements = Arc::new(elems);
        }
    }
    rs
}

fn dir_word(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// nft takes at most 128 characters of comment (in text; the kernel keeps
/// 256 bytes of user data): longer ones end in `...`.
fn short_comment(s: String) -> String {
    const MAX: usize = 128;
    if s.len() <= MAX {
        return s;
    }
    let mut cut = MAX - 3;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &s[..cut])
}

/// `CHAIN.tuples4`, `CHAIN.ranges6`, ...: the sets of one pod chain.
pub fn pod_set_name(chain: &str, part: Part, family: Family) -> String {
    let part = match part {
        Part::Tuples => "tuples",
        Part::Addrs => "addrs",
        Part::Boxes => "boxes",
        Part::AddrRanges => "ranges",
    };
    format!("{chain}.{part}{}", family.number())
}

/// The region a pod chain's sets of one family hold between them.
fn pod_region_name(chain: &str, family: Family) -> String {
    format!("{chain}.{}", family.number())
}

fn addr_cond(family: Family, field: AddrField, set: &str) -> Cond {
    Cond::AddrIn {
        family,
        field,
        set: set.to_string(),
    }
}

fn tuple_cond(family: Family, field: AddrField, set: &str) -> Cond {
    Cond::TupleIn {
        family,
        field,
        set: set.to_string(),
    }
}

/// The plan's address sets as normalized spans per family (neighbouring
/// pod addresses merge), computed once per render and only for the sets
/// the allow-lists merged again read (one pod added: a few sets, not the
/// 178k addresses of them all at 100k pods).
struct PeerSets<'a> {
    plan: &'a Plan,
    spans: HashMap<&'a str, [Vec<Span>; 2]>,
}

impl<'a> PeerSets<'a> {
    fn new(plan: &'a Plan) -> Self {
        Self {
            plan,
            spans: HashMap::new(),
        }
    }

    /// Computes the spans of the sets the lines of `pod` name.
    fn load(&mut self, pod: &PodChain) {
        let plan = self.plan;
        for m in Inputs::lines(plan, pod).flatten().flat_map(|c| &c.matches) {
            let Some((id, set)) = m
                .peer
                .as_ref()
                .and_then(|id| plan.addr_sets.get_key_value(id))
            else {
                continue;
            };
            self.spans
                .entry(id.as_str())
                .or_insert_with(|| Self::spans_of(set));
        }
    }

    fn spans_of(set: &AddrSet) -> [Vec<Span>; 2] {
        let mut fams: [Vec<Span>; 2] = [Vec::new(), Vec::new()];
        match &set.kind {
            AddrSetKind::Hosts(h) => {
                // In order, each family apart: merged as they come.
                for ip in h {
                    let n = to_u128(*ip);
                    let fam = &mut fams[Family::of(*ip).index()];
                    match fam.last_mut() {
                        Some(last) if n <= last.1.saturating_add(1) => last.1 = last.1.max(n),
                        _ => fam.push((n, n)),
                    }
                }
                fams
            }
            AddrSetKind::Ranges(r) => {
                for r in r {
                    fams[Family::of(r.start).index()].push((to_u128(r.start), to_u128(r.end)));
                }
                fams.map(normalize)
            }
        }
    }

    /// A line's peers in one family: every address when it names none, and
    /// nothing when its set is unknown (as [`Plan::decide`] reads it).
    fn of(&self, peer: Option<&SetId>, family: Family) -> &[Span] {
        const ALL4: [Span; 1] = [(0, u32::MAX as u128)];
        const ALL6: [Span; 1] = [(0, u128::MAX)];
        match (peer, family) {
            (None, Family::V4) => &ALL4,
            (None, Family::V6) => &ALL6,
            (Some(id), _) => self
                .spans
                .get(id.as_str())
                .map_or(&[], |f| f[family.index()].as_slice()),
        }
    }
}

/// One isolated pod's allow-list in one direction and family, merged over
/// all the lines of all its policies: the canonical region (`nft::region`:
/// neighbouring pods merge into ranges) split into its four parts by the
/// shape of each element.
fn allow_list(plan: &Plan, peers: &PeerSets, pod: &PodChain, family: Family) -> Parts {
    let mut b = Builder::new(family);
    for policy in &pod.policies {
        let id = PolicyId {
            policy: policy.clone(),
            direction: pod.direction,
        };
        let Some(chain) = plan.policies.get(&id) else {
            continue;
        };
        for m in &chain.matches {
            let spans = peers.of(m.peer.as_ref(), family);
            match &m.ports {
                PortMatch::Any => b.any(spans),
                PortMatch::Proto(p) => b.ports(*p, 0, u16::MAX, spans),
                PortMatch::Ports(p, ranges) => {
                    for (lo, hi) in ranges {
                        b.ports(*p, *lo, *hi, spans);
                    }
                }
                PortMatch::Named(set) => {
                    let Some(set) = plan.port_sets.get(set) else {
                        continue;
                    };
                    let named = set
                        .elements
                        .iter()
                        .filter(|(ip, _, _)| Family::of(*ip) == family);
                    match pod.direction {
                        // The name is resolved on the pod itself, the
                        // destination.
                        Direction::Ingress => {
                            for (ip, proto, port) in named {
                                if pod.ips.contains(ip) {
                                    b.ports(*proto, *port, *port, spans);
                                }
                            }
                        }
                        // On each destination peer that has it.
                        Direction::Egress => {
                            for (ip, proto, port) in named {
                                if covers(spans, (to_u128(*ip), to_u128(*ip))) {
                                    let n = to_u128(*ip);
                                    b.ports(*proto, *port, *port, &[(n, n)]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let mut parts: BTreeMap<Part, BTreeSet<Elem>> =
        Part::ALL.iter().map(|p| (*p, BTreeSet::new())).collect();
    for e in b.build().iter_elems() {
        parts
            .get_mut(&Part::of(&e))
            .expect("every part is present")
            .insert(e);
    }
    parts
        .into_iter()
        .map(|(part, elems)| (part, Arc::new(elems)))
        .collect()
}

fn rule(conds: Vec<Cond>, action: Action) -> NftRule {
    NftRule { conds, action }
}

/// Addresses in a rendered ruleset, for tests and explanations.
pub fn dispatch_targets(rs: &Ruleset, d: Direction, ip: IpAddr) -> Option<&String> {
    rs.maps
        .get(&dispatch_map(d, Family::of(ip)))?
        .elements
        .get(&ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What nft's scanner takes as an unquoted name.
    fn nft_identifier(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '.')
            && chars.all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c))
    }

    #[test]
    fn long_names_are_shortened_into_nft_identifiers() {
        let pod = ObjectKey::new("a".repeat(63), format!("web-{}", "x".repeat(240)));
        let chain = pod_chain_name(Direction::Ingress, &pod);
        assert!(chain.len() <= MAX_NAME, "{chain}");
        assert!(nft_identifier(&chain), "{chain}");
        for part in Part::ALL {
            let set = pod_set_name(&chain, part, Family::V6);
            assert!(nft_identifier(&set), "{set}");
        }
        let other = ObjectKey::new("a".repeat(63), format!("web-{}y", "x".repeat(239)));
        assert_ne!(pod_chain_name(Direction::Ingress, &other), chain);
    }
}
