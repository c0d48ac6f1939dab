//! A small packet tracer over a rendered [`Ruleset`]: decides the first
//! packet of a new connection the way the kernel walks nftpol's table, so
//! that tests can hold what is rendered (not only the plan) against the
//! reference semantics, and benchmarks can count the rules a packet meets.
//!
//! It knows exactly the conditions and actions nftpol renders. The packet is
//! new (`ct state` is `new`), comes from a pod (not from the node itself),
//! and is TCP, UDP or SCTP (never ICMPv6 neighbour discovery).

use std::net::IpAddr;

use nftpol::compiler::Protocol;
use nftpol::net::{Family, to_u128};

use nftpol::nft::model::{Action, AddrField, Cond, Elem, NftSet, Ruleset};

/// The first packet of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Protocol,
    pub port: u16,
}

/// What the forward hook did with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trace {
    pub accepted: bool,
    /// Rules evaluated on the way, across all base chains.
    pub rules: usize,
}

enum Verdict {
    Accept,
    Drop,
}

/// The packet through every base chain on the `forward` hook, in priority
/// order: an accept ends one base chain, a drop ends all.
pub fn forward(rs: &Ruleset, p: &Packet) -> Trace {
    let mut bases: Vec<(&String, i32)> = rs
        .chains
        .iter()
        .filter_map(|(name, c)| {
            c.hook
                .filter(|h| h.hook == "forward")
                .map(|h| (name, h.priority))
        })
        .collect();
    bases.sort_by_key(|(name, prio)| (*prio, *name));
    let mut rules = 0;
    for (name, _) in bases {
        if let Some(Verdict::Drop) = walk(rs, name, p, &mut rules) {
            return Trace {
                accepted: false,
                rules,
            };
        }
    }
    Trace {
        accepted: true,
        rules,
    }
}

/// One chain; `None` when the packet falls off its end (a base chain's
/// policy is accept; a jumped-to chain returns).
fn walk(rs: &Ruleset, chain: &str, p: &Packet, rules: &mut usize) -> Option<Verdict> {
    let chain = rs
        .chains
        .get(chain)
        .unwrap_or_else(|| panic!("rendered ruleset refers to missing chain {chain}"));
    for r in &chain.rules {
        *rules += 1;
        if !r.conds.iter().all(|c| holds(rs, c, p)) {
            continue;
        }
        let target = match &r.action {
            Action::Accept => return Some(Verdict::Accept),
            Action::CountDrop => return Some(Verdict::Drop),
            Action::Jump(to) => Some(to),
            Action::Dispatch { family, field, map } => {
                let addr = pick(p, *field);
                if Family::of(addr) != *family {
                    continue;
                }
                rs.maps
                    .get(map)
                    .unwrap_or_else(|| panic!("rendered ruleset refers to missing map {map}"))
                    .elements
                    .get(&addr)
            }
        };
        if let Some(to) = target
            && let Some(v) = walk(rs, to, p, rules)
        {
            return Some(v);
        }
    }
    None
}

fn pick(p: &Packet, f: AddrField) -> IpAddr {
    match f {
        AddrField::Saddr => p.src,
        AddrField::Daddr => p.dst,
    }
}

fn set<'a>(rs: &'a Ruleset, name: &str) -> &'a NftSet {
    rs.sets
        .get(name)
        .unwrap_or_else(|| panic!("rendered ruleset refers to missing set {name}"))
}

fn holds(rs: &Ruleset, c: &Cond, p: &Packet) -> bool {
    match c {
        Cond::CtEstablished | Cond::Icmpv6Discovery => false,
        Cond::AddrIn {
            family,
            field,
            set: s,
        } => {
            let a = pick(p, *field);
            Family::of(a) == *family
                && set(rs, s).elements.iter().any(|e| match e {
                    Elem::Addr(x) => *x == a,
                    Elem::Range(lo, hi) => in_range(a, *lo, *hi),
                    Elem::Box { .. } => false,
                })
        }
        Cond::TupleIn {
            family,
            field,
            set: s,
        } => {
            let a = pick(p, *field);
            Family::of(a) == *family
                && set(rs, s).elements.iter().any(|e| match e {
                    Elem::Box {
                        addrs,
                        proto,
                        ports: (lo, hi),
                    } => {
                        *proto == p.proto
                            && *lo <= p.port
                            && p.port <= *hi
                            && in_range(a, addrs.start, addrs.end)
                    }
                    _ => false,
                })
        }
    }
}

fn in_range(a: IpAddr, lo: IpAddr, hi: IpAddr) -> bool {
    Family::of(lo) == Family::of(a) && to_u128(lo) <= to_u128(a) && to_u128(a) <= to_u128(hi)
}
