//! Ruleset → `nft -f` text, for people (`nftpol compile`) and golden files.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::net::{Family, IpRange, as_prefix};

use crate::nft::model::{Action, AddrField, Cond, Elem, KeyType, NftRule, Ruleset};

/// The nft keyword of a family's header (`ip saddr`, `ip6 saddr`).
pub(crate) fn fam(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn field(f: AddrField) -> &'static str {
    match f {
        AddrField::Saddr => "saddr",
        AddrField::Daddr => "daddr",
    }
}

pub(crate) fn key_type(k: KeyType) -> &'static str {
    match k {
        KeyType::Ipv4 => "ipv4_addr",
        KeyType::Ipv6 => "ipv6_addr",
        KeyType::Tuple4 => "ipv4_addr . inet_proto . inet_service",
        KeyType::Tuple6 => "ipv6_addr . inet_proto . inet_service",
    }
}

pub(crate) const ND_TYPES: [&str; 5] = [
    "nd-router-solicit",
    "nd-router-advert",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "nd-redirect",
];

pub(crate) fn elem_text(e: &Elem) -> String {
    match e {
        Elem::Addr(ip) => ip.to_string(),
        Elem::Range(s, t) => range_text(*s, *t),
        Elem::Box {
            addrs,
            proto,
            ports: (lo, hi),
        } => {
            let ports = if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            };
            format!(
                "{} . {} . {ports}",
                range_text(addrs.start, addrs.end),
                proto.keyword()
            )
        }
    }
}

fn range_text(s: IpAddr, t: IpAddr) -> String {
    let r = IpRange { start: s, end: t };
    match as_prefix(&r) {
        Some(p) if p.prefix_len() == p.max_prefix_len() => s.to_string(),
        Some(p) => p.to_string(),
        None => format!("{s}-{t}"),
    }
}

pub(crate) fn rule_text(r: &NftRule) -> String {
    let mut parts: Vec<String> = r
        .conds
        .iter()
        .map(|c| match c {
            Cond::CtEstablished => "ct state established,related".to_string(),
            Cond::Icmpv6Discovery => {
                format!("icmpv6 type {{ {} }} ip6 hoplimit 255", ND_TYPES.join(", "))
            }
            Cond::AddrIn {
                family,
                field: f,
                set,
            } => format!("{} {} @{set}", fam(*family), field(*f)),
            Cond::TupleIn {
                family,
                field: f,
                set,
            } => {
                format!(
                    "{} {} . meta l4proto . th dport @{set}",
                    fam(*family),
                    field(*f)
                )
            }
        })
        .collect();
    parts.push(match &r.action {
        Action::Accept => "accept".into(),
        Action::CountDrop => "counter drop".into(),
        Action::Jump(c) => format!("jump {c}"),
        Action::Dispatch {
            family,
            field: f,
            map,
        } => format!("{} {} vmap @{map}", fam(*family), field(*f)),
    });
    parts.join(" ")
}

fn chain_text(out: &mut String, rs: &Ruleset, name: &str) {
    let chain = &rs.chains[name];
    let _ = writeln!(out, "\tchain {name} {{");
    if let Some(h) = chain.hook {
        let _ = writeln!(
            out,
            "\t\ttype filter hook {} priority {}; policy accept;",
            h.hook, h.priority
        );
    }
    for r in &chain.rules {
        let _ = writeln!(out, "\t\t{}", rule_text(r));
    }
    let _ = writeln!(out, "\t}}\n");
}

/// The ruleset as an `nft -f` script that replaces the table in one
/// transaction.
pub fn to_text(rs: &Ruleset) -> String {
    let t = &rs.table;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# nftpol ruleset; load with: nft -f FILE (replaces table inet {t})"
    );
    let _ = writeln!(out, "table inet {t}\ndelete table inet {t}\n");
    let _ = writeln!(out, "table inet {t} {{");
    for (name, set) in &rs.sets {
        let _ = writeln!(out, "\tset {name} {{");
        let _ = writeln!(out, "\t\ttype {}", key_type(set.key));
        if set.interval {
            let _ = writeln!(out, "\t\tflags interval");
        }
        let _ = writeln!(out, "\t\tcomment {:?}", set.comment);
        if !set.elements.is_empty() {
            let elems: Vec<String> = set.elements.iter().map(elem_text).collect();
            let _ = writeln!(out, "\t\telements = {{ {} }}", elems.join(",\n\t\t\t     "));
        }
        let _ = writeln!(out, "\t}}\n");
    }
    // Jump targets before the chains that jump, maps before the base chains
    // that use them.
    let order = rs.chain_order();
    let (base, regular): (Vec<&String>, Vec<&String>) = order
        .into_iter()
        .partition(|n| rs.chains[*n].hook.is_some());
    for name in regular {
        chain_text(&mut out, rs, name);
    }
    for (name, map) in &rs.maps {
        let _ = writeln!(out, "\tmap {name} {{");
        let _ = writeln!(out, "\t\ttype {} : verdict", key_type(map.key));
        if !map.elements.is_empty() {
            let elems: Vec<String> = map
                .elements
                .iter()
                .map(|(ip, c)| format!("{ip} : jump {c}"))
                .collect();
            let _ = writeln!(out, "\t\telements = {{ {} }}", elems.join(",\n\t\t\t     "));
        }
        let _ = writeln!(out, "\t}}\n");
    }
    for name in base {
        chain_text(&mut out, rs, name);
    }
    out.push_str("}\n");
    out
}
