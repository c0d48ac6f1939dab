//! Regions of one address family's space, as nft's interval sets hold them.
//!
//! A pod's allow-list in one direction and family is a region: addresses
//! allowed on every protocol and port (an address interval set), and
//! `address . protocol . port` boxes (a concatenated interval set). nft
//! wants the elements of an interval set disjoint, so a region is kept in a
//! canonical form: per key (no protocol, or one protocol) disjoint port
//! intervals in order, each with the sorted, disjoint, non-adjacent address
//! spans allowed on it, and neighbouring port intervals with the same spans
//! joined.
//!
//! [`update`] turns the elements in the kernel into the wanted region
//! touching as little as it can: an element still wholly inside the wanted
//! region stays, even where the canonical form would cut it differently, and
//! only what is not yet covered is added. So a change that only allows more
//! (a pod joins a peer set, a policy is added) only adds elements; deletions
//! cost the kernel several times more than additions (BENCHMARKS.md).

use std::collections::{BTreeMap, BTreeSet};

use crate::net::{Family, IpRange, Protocol, from_u128, to_u128};

use super::model::Elem;

/// Inclusive address span, as numbers of one family.
pub type Span = (u128, u128);

/// Sorts and merges spans that overlap or touch, in place (a peer set's
/// spans can be 100k long: no second copy).
pub fn normalize(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_unstable();
    let mut len = 0;
    for i in 0..spans.len() {
        let (lo, hi) = spans[i];
        if len > 0 && lo <= spans[len - 1].1.saturating_add(1) {
            spans[len - 1].1 = spans[len - 1].1.max(hi);
        } else {
            spans[len] = (lo, hi);
            len += 1;
        }
    }
    spans.truncate(len);
    spans
}

/// `a` minus `b`, both normalized.
fn subtract_spans(a: &[Span], b: &[Span]) -> Vec<Span> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(mut lo, hi) in a {
        while j < b.len() && b[j].1 < lo {
            j += 1;
        }
        let mut k = j;
        let mut open = true;
        while k < b.len() && b[k].0 <= hi {
            if b[k].0 > lo {
                out.push((lo, b[k].0 - 1));
            }
            if b[k].1 >= hi {
                open = false;
                break;
            }
            lo = b[k].1 + 1;
            k += 1;
        }
        if open {
            out.push((lo, hi));
        }
    }
    out
}

/// Whether the normalized `spans` cover `s` wholly.
pub fn covers(spans: &[Span], s: Span) -> bool {
    let i = spans.partition_point(|x| x.0 <= s.0);
    i > 0 && spans[i - 1].1 >= s.1
}

/// No protocol (an address-only set) or one protocol (boxes).
type Key = Option<Protocol>;

/// Disjoint port intervals in order, each with its non-empty spans.
type Classes = Vec<(u16, u16, Vec<Span>)>;

/// One family's region in canonical form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    family: Family,
    keys: BTreeMap<Key, Classes>,
}

/// Collects pieces of a region in any order, overlaps allowed.
#[derive(Debug)]
pub struct Builder {
    family: Family,
    pieces: BTreeMap<Key, BTreeMap<(u16, u16), Vec<Span>>>,
}

impl Builder {
    pub fn new(family: Family) -> Self {
        Self {
            family,
            pieces: BTreeMap::new(),
        }
    }

    /// Addresses allowed on every protocol and port.
    pub fn any(&mut self, spans: &[Span]) {
        self.add(None, (0, 0), spans);
    }

    /// Addresses allowed on ports `lo..=hi` of `proto`.
    pub fn ports(&mut self, proto: Protocol, lo: u16, hi: u16, spans: &[Span]) {
        self.add(Some(proto), (lo, hi), spans);
    }

    fn add(&mut self, key: Key, ports: (u16, u16), spans: &[Span]) {
        if spans.is_empty() {
            return;
        }
        self.pieces
            .entry(key)
            .or_default()
            .entry(ports)
            .or_default()
            .extend_from_slice(spans);
    }

    pub fn build(self) -> Region {
        let mut keys = BTreeMap::new();
        for (key, pieces) in self.pieces {
            let mut pieces: Vec<((u16, u16), Vec<Span>)> = pieces
                .into_iter()
                .map(|(p, spans)| (p, normalize(spans)))
                .collect();
            if let [((lo, hi), spans)] = pieces.as_mut_slice() {
                // One piece is one class (the common case: no copy of a
                // large peer set's spans).
                let mut classes: Classes = Vec::new();
                push_class(&mut classes, *lo, *hi, std::mem::take(spans));
                if !classes.is_empty() {
                    keys.insert(key, classes);
                }
                continue;
            }
            let mut bounds: Vec<u32> = pieces
                .iter()
                .flat_map(|((lo, hi), _)| [*lo as u32, *hi as u32 + 1])
                .collect();
            bounds.sort_unstable();
            bounds.dedup();
            let mut classes: Classes = Vec::new();
            for w in bounds.windows(2) {
                let (lo, hi) = (w[0], w[1] - 1);
                // Every piece either covers this elementary interval or
                // misses it: its ends are among the bounds.
                let spans: Vec<Span> = pieces
                    .iter()
                    .filter(|((plo, phi), _)| *plo as u32 <= lo && *phi as u32 >= hi)
                    .flat_map(|(_, s)| s.iter().copied())
                    .collect();
                push_class(&mut classes, lo as u16, hi as u16, normalize(spans));
            }
            if !classes.is_empty() {
                keys.insert(key, classes);
            }
        }
        Region {
            family: self.family,
            keys,
        }
    }
}

/// Appends a class, joining it to the last one when they touch and allow
/// the same addresses.
fn push_class(classes: &mut Classes, lo: u16, hi: u16, spans: Vec<Span>) {
    if spans.is_empty() {
        return;
    }
    if let Some(last) = classes.last_mut()
        && last.1 as u32 + 1 == lo as u32
        && last.2 == spans
    {
        last.1 = hi;
        return;
    }
    classes.push((lo, hi, spans));
}

/// An element as (key, ports, span), or `None` for another family.
fn split(e: &Elem, family: Family) -> Option<(Key, (u16, u16), Span)> {
    let (key, ports, start, end) = match e {
        Elem::Addr(ip) => (None, (0, 0), *ip, *ip),
        Elem::Range(a, b) => (None, (0, 0), *a, *b),
        Elem::Box {
            addrs,
            proto,
            ports,
        } => (Some(*proto), *ports, addrs.start, addrs.end),
    };
    (Family::of(start) == family).then(|| (key, ports, (to_u128(start), to_u128(end))))
}

impl Region {
    pub fn from_elems<'a>(family: Family, elems: impl IntoIterator<Item = &'a Elem>) -> Region {
        let mut b = Builder::new(family);
        for e in elems {
            if let Some((key, ports, span)) = split(e, family) {
                b.add(key, ports, &[span]);
            }
        }
        b.build()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The canonical elements: addresses and address ranges for the
    /// address-only part, boxes for the rest.
    pub fn elems(&self) -> Vec<Elem> {
        self.iter_elems().collect()
    }

    /// [`elems`](Self::elems) one by one.
    pub fn iter_elems(&self) -> impl Iterator<Item = Elem> + '_ {
        let family = self.family;
        self.keys.iter().flat_map(move |(key, classes)| {
            classes.iter().flat_map(move |(lo, hi, spans)| {
                spans.iter().map(move |&(a, b)| {
                    let addrs = IpRange {
                        start: from_u128(a, family),
                        end: from_u128(b, family),
                    };
                    match key {
                        None if a == b => Elem::Addr(addrs.start),
                        None => Elem::Range(addrs.start, addrs.end),
                        Some(proto) => Elem::Box {
                            addrs,
                            proto: *proto,
                            ports: (*lo, *hi),
                        },
                    }
                })
            })
        })
    }

    /// Whether the element lies wholly inside the region.
    pub fn contains(&self, e: &Elem) -> bool {
        let Some((key, (lo, hi), span)) = split(e, self.family) else {
            return false;
        };
        let Some(classes) = self.keys.get(&key) else {
            return false;
        };
        // The classes overlapping lo..=hi must tile it, each covering span.
        let mut next = lo as u32;
        let start = classes.partition_point(|c| (c.1 as u32) < lo as u32);
        for (clo, chi, spans) in &classes[start..] {
            if *clo as u32 > next || !covers(spans, span) {
                return false;
            }
            next = *chi as u32 + 1;
            if next > hi as u32 {
                return true;
            }
        }
        false
    }

    /// Whether a packet with this peer address, protocol and port is in the
    /// region (`None`: the address-only part).
    pub fn contains_point(&self, key: Option<Protocol>, addr: u128, port: u16) -> bool {
        let port = if key.is_none() { 0 } else { port };
        self.keys.get(&key).is_some_and(|classes| {
            let i = classes.partition_point(|c| c.1 < port);
            i < classes.len() && classes[i].0 <= port && covers(&classes[i].2, (addr, addr))
        })
    }

    /// `self` minus `other`, canonical.
    pub fn subtract(&self, other: &Region) -> Region {
        let mut keys = BTreeMap::new();
        for (key, mine) in &self.keys {
            let Some(theirs) = other.keys.get(key) else {
                keys.insert(*key, mine.clone());
                continue;
            };
            let mut bounds: Vec<u32> = mine
                .iter()
                .chain(theirs)
                .flat_map(|(lo, hi, _)| [*lo as u32, *hi as u32 + 1])
                .collect();
            bounds.sort_unstable();
            bounds.dedup();
            let at = |classes: &Classes, p: u32| -> Option<usize> {
                let i = classes.partition_point(|c| (c.1 as u32) < p);
                (i < classes.len() && classes[i].0 as u32 <= p).then_some(i)
            };
            let mut classes: Classes = Vec::new();
            for w in bounds.windows(2) {
                let (lo, hi) = (w[0], w[1] - 1);
                let Some(i) = at(mine, lo) else { continue };
                let spans = match at(theirs, lo) {
                    Some(j) => subtract_spans(&mine[i].2, &theirs[j].2),
                    None => mine[i].2.clone(),
                };
                push_class(&mut classes, lo as u16, hi as u16, spans);
            }
            if !classes.is_empty() {
                keys.insert(*key, classes);
            }
        }
        Region {
            family: self.family,
            keys,
        }
    }
}

/// What brings an interval set from `applied` to the region of `want`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// Applied elements not wholly inside the wanted region.
    pub gone: Vec<Elem>,
    /// Elements covering what the kept ones do not.
    pub added: Vec<Elem>,
    /// The set's elements afterwards: disjoint, covering exactly `want`.
    pub now: BTreeSet<Elem>,
}

/// The least-touching update of one family's interval set: see the module
/// documentation.
pub fn update(family: Family, applied: &BTreeSet<Elem>, want: &BTreeSet<Elem>) -> Update {
    if applied == want {
        return Update {
            now: want.clone(),
            ..Update::default()
        };
    }
    let wanted = Region::from_elems(family, want);
    let (kept, gone): (BTreeSet<Elem>, Vec<Elem>) = {
        let mut kept = BTreeSet::new();
        let mut gone = Vec::new();
        for e in applied {
            if wanted.contains(e) {
                kept.insert(e.clone());
            } else {
                gone.push(e.clone());
            }
        }
        (kept, gone)
    };
    let added = wanted.subtract(&Region::from_elems(family, &kept)).elems();
    let mut now = kept;
    now.extend(added.iter().cloned());
    Update { gone, added, now }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn span(a: &str, b: &str) -> Span {
        (to_u128(ip(a)), to_u128(ip(b)))
    }
    fn bx(a: &str, b: &str, proto: Protocol, lo: u16, hi: u16) -> Elem {
        Elem::Box {
            addrs: IpRange {
                start: ip(a),
                end: ip(b),
            },
            proto,
            ports: (lo, hi),
        }
    }

    #[test]
    fn overlapping_port_ranges_are_cut_where_their_peers_differ() {
        let mut b = Builder::new(Family::V4);
        b.ports(Protocol::Tcp, 80, 90, &[span("10.0.0.1", "10.0.0.1")]);
        b.ports(Protocol::Tcp, 85, 85, &[span("10.0.0.2", "10.0.0.2")]);
        let got: BTreeSet<Elem> = b.build().elems().into_iter().collect();
        let want: BTreeSet<Elem> = [
            bx("10.0.0.1", "10.0.0.1", Protocol::Tcp, 80, 84),
            bx("10.0.0.1", "10.0.0.2", Protocol::Tcp, 85, 85),
            bx("10.0.0.1", "10.0.0.1", Protocol::Tcp, 86, 90),
        ]
        .into();
        assert_eq!(got, want);
    }

    #[test]
    fn neighbouring_hosts_become_one_range_and_neighbouring_ports_one_interval() {
        let mut b = Builder::new(Family::V4);
        for host in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
            b.ports(Protocol::Udp, 53, 53, &[span(host, host)]);
            b.ports(Protocol::Udp, 54, 60, &[span(host, host)]);
        }
        assert_eq!(
            b.build().elems(),
            [bx("10.0.0.1", "10.0.0.3", Protocol::Udp, 53, 60)]
        );
    }

    #[test]
    fn an_addition_keeps_every_applied_element() {
        let applied: BTreeSet<Elem> = [bx("10.0.0.1", "10.0.0.4", Protocol::Tcp, 80, 80)].into();
        let want: BTreeSet<Elem> = [bx("10.0.0.1", "10.0.0.5", Protocol::Tcp, 79, 80)].into();
        let u = update(Family::V4, &applied, &want);
        assert!(u.gone.is_empty(), "{u:?}");
        assert_eq!(
            u.added.iter().cloned().collect::<BTreeSet<_>>(),
            [
                bx("10.0.0.1", "10.0.0.5", Protocol::Tcp, 79, 79),
                bx("10.0.0.5", "10.0.0.5", Protocol::Tcp, 80, 80),
            ]
            .into()
        );
        assert_eq!(
            Region::from_elems(Family::V4, &u.now),
            Region::from_elems(Family::V4, &want)
        );
    }

    #[test]
    fn a_removal_deletes_the_elements_it_cuts_and_adds_back_the_rest() {
        let applied: BTreeSet<Elem> = [Elem::Range(ip("10.0.0.0"), ip("10.0.0.255"))].into();
        let want: BTreeSet<Elem> = [
            Elem::Range(ip("10.0.0.0"), ip("10.0.0.9")),
            Elem::Range(ip("10.0.0.11"), ip("10.0.0.255")),
        ]
        .into();
        let u = update(Family::V4, &applied, &want);
        assert_eq!(u.gone, [Elem::Range(ip("10.0.0.0"), ip("10.0.0.255"))]);
        assert_eq!(u.now, want);
    }

    #[test]
    fn subtract_spans_cuts_holes_and_ends() {
        let a = [(0, 10), (20, 30)];
        assert_eq!(subtract_spans(&a, &[(5, 5)]), [(0, 4), (6, 10), (20, 30)]);
        assert_eq!(subtract_spans(&a, &[(0, 25)]), [(26, 30)]);
        assert_eq!(subtract_spans(&a, &[(10, 20)]), [(0, 9), (21, 30)]);
        assert_eq!(subtract_spans(&a, &[(0, 30)]), Vec::<Span>::new());
        assert_eq!(subtract_spans(&a, &[]), a);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Pieces in a small space so that every point can be checked:
        /// addresses 10.0.0.0–10.0.0.39, ports 0–19, two protocols and the
        /// address-only part.
        #[derive(Clone, Debug)]
        struct Piece {
            key: Key,
            ports: (u16, u16),
            span: Span,
        }

        const BASE: u128 = 0x0a00_0000;

        fn piece() -> impl Strategy<Value = Piece> {
            (0..3u8, 0..20u16, 0..6u16, 0..40u128, 0..8u128).prop_map(|(k, lo, w, a, n)| {
                let key = [None, Some(Protocol::Tcp), Some(Protocol::Udp)][k as usize];
                let ports = if key.is_none() {
                    (0, 0)
                } else {
                    (lo, (lo + w).min(19))
                };
                Piece {
                    key,
                    ports,
                    span: (BASE + a, BASE + (a + n).min(39)),
                }
            })
        }

        fn build(pieces: &[Piece]) -> Region {
            let mut b = Builder::new(Family::V4);
            for p in pieces {
                b.add(p.key, p.ports, &[p.span]);
            }
            b.build()
        }

        fn elem_holds(e: &Elem, key: Key, a: u128, port: u16) -> bool {
            let (k, (lo, hi), (s, t)) = split(e, Family::V4).expect("v4");
            k == key && lo <= port && port <= hi && s <= a && a <= t
        }

        fn points() -> impl Iterator<Item = (Key, u128, u16)> {
            [None, Some(Protocol::Tcp), Some(Protocol::Udp)]
                .into_iter()
                .flat_map(|k| {
                    let ports = if k.is_none() { 0..1 } else { 0..20 };
                    ports.flat_map(move |p| (BASE..BASE + 40).map(move |a| (k, a, p)))
                })
        }

        /// Every point is in the set iff the region holds it, and in at
        /// most one element (nft rejects overlaps).
        fn check_elements(elems: &BTreeSet<Elem>, region: &Region) -> Result<(), TestCaseError> {
            for (k, a, p) in points() {
                let n = elems.iter().filter(|e| elem_holds(e, k, a, p)).count();
                prop_assert!(n <= 1, "point {k:?} {a} {p} in {n} elements: {elems:?}");
                prop_assert_eq!(
                    n == 1,
                    region.contains_point(k, a, p),
                    "point {:?} {} {}",
                    k,
                    a,
                    p
                );
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn a_built_region_holds_exactly_its_pieces_in_disjoint_elements(
                pieces in proptest::collection::vec(piece(), 0..12),
            ) {
                let region = build(&pieces);
                for (k, a, p) in points() {
                    let want = pieces.iter().any(|x| {
                        x.key == k && x.ports.0 <= p && p <= x.ports.1 && x.span.0 <= a && a <= x.span.1
                    });
                    prop_assert_eq!(region.contains_point(k, a, p), want, "point {:?} {} {}", k, a, p);
                }
                let elems: BTreeSet<Elem> = region.elems().into_iter().collect();
                check_elements(&elems, &region)?;
                prop_assert_eq!(Region::from_elems(Family::V4, &elems), region);
            }

            #[test]
            fn updates_reach_the_wanted_region_and_only_add_when_it_grows(
                steps in proptest::collection::vec(proptest::collection::vec(piece(), 0..10), 1..6),
            ) {
                let mut applied: BTreeSet<Elem> = BTreeSet::new();
                let mut before = Region::from_elems(Family::V4, &BTreeSet::new());
                for pieces in steps {
                    let region = build(&pieces);
                    let want: BTreeSet<Elem> = region.elems().into_iter().collect();
                    let u = update(Family::V4, &applied, &want);
                    check_elements(&u.now, &region)?;
                    for g in &u.gone {
                        prop_assert!(applied.contains(g), "deleted {g:?}, never applied");
                    }
                    for a in &u.added {
                        prop_assert!(!applied.contains(a) || u.gone.contains(a));
                    }
                    if before.subtract(&region).is_empty() {
                        prop_assert!(u.gone.is_empty(), "the region grew, yet {:?} were deleted", u.gone);
                    }
                    before = region;
                    applied = u.now;
                }
            }
        }
    }
}
