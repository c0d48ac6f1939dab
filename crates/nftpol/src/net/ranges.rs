//! Address arithmetic for interval sets: a CIDR minus its excepts as
//! disjoint inclusive ranges, and merging of overlapping ranges (nft rejects
//! overlapping elements in one interval set).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::Family;

/// An inclusive address range within one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpRange {
    pub start: IpAddr,
    pub end: IpAddr,
}

/// An address as a number: IPv4 in the low 32 bits.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address of `family` numbered `v` (see [`to_u128`]).
pub fn from_u128(v: u128, family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

fn bounds(net: &IpNet) -> (u128, u128) {
    (to_u128(net.network()), to_u128(net.broadcast()))
}

/// `cidr` minus every net in `except`, as disjoint sorted ranges.
pub fn subtract(cidr: &IpNet, except: &[IpNet]) -> Vec<IpRange> {
    let family = Family::of(cidr.addr());
    let mut pieces = vec![bounds(cidr)];
    for e in except {
        if Family::of(e.addr()) != family {
            continue;
        }
        let (es, ee) = bounds(e);
        pieces = pieces
            .into_iter()
            .flat_map(|(s, t)| {
                if ee < s || es > t {
                    return vec![(s, t)];
                }
                let mut out = Vec::new();
                if es > s {
                    out.push((s, es - 1));
                }
                if ee < t {
                    out.push((ee + 1, t));
                }
                out
            })
            .collect();
    }
    pieces
        .into_iter()
        .map(|(s, t)| IpRange {
            start: from_u128(s, family),
            end: from_u128(t, family),
        })
        .collect()
}

/// Sorts and merges overlapping or adjacent ranges (per family).
pub fn merge(mut ranges: Vec<IpRange>) -> Vec<IpRange> {
    ranges.sort();
    let mut out: Vec<IpRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        if let Some(last) = out.last_mut()
            && Family::of(last.start) == Family::of(r.start)
            && to_u128(r.start) <= to_u128(last.end).saturating_add(1)
        {
            if r.end > last.end {
                last.end = r.end;
            }
            continue;
        }
        out.push(r);
    }
    out
}

/// The prefix exactly covering `r`, when there is one (for readable output).
pub fn as_prefix(r: &IpRange) -> Option<IpNet> {
    let (s, e) = (to_u128(r.start), to_u128(r.end));
    let bits: u32 = if r.start.is_ipv4() { 32 } else { 128 };
    let size = e.wrapping_sub(s).wrapping_add(1);
    // Whole IPv6 space: size overflows to 0.
    let host_bits = if size == 0 {
        128
    } else if size.is_power_of_two() {
        size.trailing_zeros()
    } else {
        return None;
    };
    if host_bits < 128 && s & ((1u128 << host_bits) - 1) != 0 {
        return None;
    }
    IpNet::new(r.start, (bits - host_bits) as u8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn show(rs: &[IpRange]) -> Vec<String> {
        rs.iter()
            .map(|r| match as_prefix(r) {
                Some(p) => p.to_string(),
                None => format!("{}-{}", r.start, r.end),
            })
            .collect()
    }

    #[test]
    fn except_in_the_middle_leaves_two_ranges() {
        let r = subtract(&net("10.0.0.0/24"), &[net("10.0.0.128/25")]);
        assert_eq!(show(&r), ["10.0.0.0/25"]);
        let r = subtract(&net("10.0.0.0/24"), &[net("10.0.0.16/28")]);
        assert_eq!(show(&r), ["10.0.0.0/28", "10.0.0.32-10.0.0.255"]);
    }

    #[test]
    fn several_excepts_and_ipv6() {
        let r = subtract(
            &net("2001:db8::/32"),
            &[net("2001:db8::/48"), net("2001:db8:ffff::/48")],
        );
        assert_eq!(
            show(&r),
            ["2001:db8:1::-2001:db8:fffe:ffff:ffff:ffff:ffff:ffff"]
        );
    }

    #[test]
    fn merge_joins_overlaps_and_neighbours_per_family() {
        let mut rs = subtract(&net("10.0.0.0/25"), &[]);
        rs.extend(subtract(&net("10.0.0.128/25"), &[]));
        rs.extend(subtract(&net("10.0.0.64/26"), &[]));
        rs.extend(subtract(&net("::/0"), &[]));
        assert_eq!(show(&merge(rs)), ["10.0.0.0/24", "::/0"]);
    }

    #[test]
    fn whole_space_is_a_prefix() {
        assert_eq!(show(&subtract(&net("0.0.0.0/0"), &[])), ["0.0.0.0/0"]);
    }
}
