//! The ground floor: network facts that the compiler and `nft` both use,
//! and neither owns.
//!
//! ```text
//!   compiler ──► Plan ──► nft
//!      │                   │
//!      └──────► net ◄──────┘   Family, Protocol, IpRange and its maths
//! ```
//!
//! Nothing here knows Kubernetes objects or nftables syntax beyond a
//! protocol's keyword.

pub mod ranges;

use std::fmt;
use std::net::IpAddr;

pub use ranges::{IpRange, as_prefix, from_u128, merge, subtract, to_u128};

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// IPv4 first, as tables and listings order them.
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// 4 or 6, as names spell the family (`dispatch-in-4`, `IPv6`).
    pub fn number(self) -> u8 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }

    /// The family's place in a per-family pair: 0 for IPv4, 1 for IPv6.
    pub fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }

    /// The highest address, as a number (see [`to_u128`]).
    pub fn max_addr(self) -> u128 {
        match self {
            Family::V4 => u32::MAX as u128,
            Family::V6 => u128::MAX,
        }
    }
}

/// Transport protocols a NetworkPolicy port can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses the API spelling (`TCP`, `UDP`, `SCTP`; case-sensitive, as the
    /// API server is).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    /// nftables keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }

    pub const ALL: [Protocol; 3] = [Self::Tcp, Self::Udp, Self::Sctp];
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}
