//! The port guard: `table bridge nftpol`, which holds every local pod to
//! the addresses the API gives it, on the bridge port it is plugged into.
//!
//! The `inet` table decides by address, and addresses alone can be forged:
//! a pod with CAP_NET_RAW (the default) can send with any source, and the
//! packets an `inet` hook never dispatches (IPv6 link-local, broadcast,
//! multicast) reach isolated pods around their chains. On the bridge, the
//! port a frame comes from or goes to is known, so:
//!
//! ```text
//! prerouting (bridge, prio -200): iifname @pod-ports jump from-pod
//!   from-pod:  iifname . ip saddr vmap @from-port-4 (and IPv6): a bound
//!                pair ─► accept, or goto isolated-from-pod (egress-isolated)
//!              ARP from its own address (or 0.0.0.0) ─► accept
//!              ND / MLD from :: or fe80::/10 (hop limit 255 / 1) ─► accept
//!              counter drop          spoofed source, link-local data, other ethertypes
//!   isolated-from-pod: unicast IPv4 ─► accept; ND ─► accept;
//!                      broadcast / multicast ─► drop; fe80::/10 ─► drop
//! forward (bridge, prio -200):    oifname @isolated-in goto to-isolated-pod
//!   to-isolated-pod: ARP, ND ─► accept; oifname . ip daddr @port-addrs-4 ─► accept;
//!                    counter drop     broadcast, multicast, link-local, other addresses
//! ```
//!
//! What passes goes on to the `inet` table as before. The node's own
//! traffic to its pods (bridge `output`) is never filtered here.
//!
//! Which port carries which address is read from the kernel (the address
//! configured on the port's peer, in the pod's network namespace) and bound
//! only to addresses the API gives a local pod ([`bind`]): a port whose pod
//! nftpol does not know yet sends nothing but ARP and neighbour discovery.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use super::{Nft, NftError};
use crate::net::Family;

/// A port of a pod bridge as the kernel shows it: its name (what nft's
/// `iifname` sees), its ifindex and the addresses configured on its peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortAddrs {
    pub port: String,
    pub ifindex: u32,
    pub addrs: Vec<IpAddr>,
}

/// What the guard enforces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Guard {
    /// The guarded ports: every port an address was ever bound to, while
    /// it exists (so a pod that drops its address from its interface stays
    /// guarded, and sends nothing). A port never bound, a pod nftpol has
    /// not seen in the API yet, is not guarded: it is as unknown to nftpol
    /// as its pod (`--unknown-local-pods`, issue #16, closes that window).
    pub ports: BTreeSet<String>,
    /// Port → the pod addresses bound to it.
    pub bound: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Ports of pods isolated for egress / for ingress.
    pub isolated_eg: BTreeSet<String>,
    pub isolated_in: BTreeSet<String>,
}

/// The outcome of [`bind`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Binding {
    /// Address → the one port it is bound to.
    pub port_of: BTreeMap<IpAddr, String>,
    /// Local pod addresses no port carries (yet).
    pub unbound: Vec<IpAddr>,
    /// Addresses more than one port carries, with those ports; bound to
    /// the port that had it before, else to none.
    pub contested: Vec<(IpAddr, Vec<String>)>,
}

/// Binds each local pod address to the port whose peer carries it. An
/// address two ports carry stays with the port it was bound to before
/// (`previous`), if that one still carries it; otherwise it is bound to
/// none (a pod that adds another's address to its interface gets nothing
/// from it, and the first holder keeps it). Addresses a port carries that
/// are no local pod's are never bound.
pub fn bind(
    ports: &[PortAddrs],
    local: &BTreeSet<IpAddr>,
    previous: &BTreeMap<IpAddr, String>,
) -> Binding {
    let mut carriers: BTreeMap<IpAddr, Vec<&str>> = BTreeMap::new();
    for p in ports {
        for a in &p.addrs {
            if local.contains(a) {
                carriers.entry(*a).or_default().push(&p.port);
            }
        }
    }
    let mut out = Binding::default();
    for a in local {
        match carriers.get(a).map(Vec::as_slice) {
            None | Some([]) => out.unbound.push(*a),
            Some([one]) => {
                out.port_of.insert(*a, one.to_string());
            }
            Some(many) => {
                if let Some(prev) = previous.get(a)
                    && many.contains(&prev.as_str())
                {
                    out.port_of.insert(*a, prev.clone());
                }
                out.contested
                    .push((*a, many.iter().map(|p| p.to_string()).collect()));
            }
        }
    }
    out
}

impl Guard {
    /// The guard for these ports and bindings; a port is isolated in a
    /// direction when an address bound to it is (`isolated_*` hold the
    /// addresses of pods isolated in that direction).
    ///
    /// `guarded` holds the (name, ifindex) of the ports guarded before; on
    /// return it holds those of this guard.
    pub fn new(
        ports: &[PortAddrs],
        binding: &Binding,
        isolated_in: &BTreeSet<IpAddr>,
        isolated_eg: &BTreeSet<IpAddr>,
        guarded: &mut BTreeSet<(String, u32)>,
    ) -> Self {
        let bound: BTreeSet<&str> = binding.port_of.values().map(String::as_str).collect();
        let now: BTreeSet<(String, u32)> = ports
            .iter()
            .map(|p| (p.port.clone(), p.ifindex))
            .filter(|p| bound.contains(p.0.as_str()) || guarded.contains(p))
            .collect();
        let mut g = Guard {
            ports: now.iter().map(|(name, _)| name.clone()).collect(),
            ..Guard::default()
        };
        *guarded = now;
        for (addr, port) in &binding.port_of {
            g.bound.entry(port.clone()).or_default().insert(*addr);
            if isolated_in.contains(addr) {
                g.isolated_in.insert(port.clone());
            }
            if isolated_eg.contains(addr) {
                g.isolated_eg.insert(port.clone());
            }
        }
        g
    }

    /// An `nft -f` script that replaces `table bridge TABLE` with this
    /// guard in one transaction.
    pub fn to_text(&self, table: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "table bridge {table}\ndelete table bridge {table}\ntable bridge {table} {{"
        );
        set(
            &mut out,
            "pod-ports",
            "ifname",
            self.ports.iter().map(quoted),
        );
        // `"port" . address`, and what to do next with a frame from it.
        let pairs = |family: Family| {
            self.bound.iter().flat_map(move |(port, addrs)| {
                let next = if self.isolated_eg.contains(port) {
                    "goto isolated-from-pod"
                } else {
                    "accept"
                };
                addrs
                    .iter()
                    .filter(move |a| Family::of(**a) == family)
                    .map(move |a| (format!("{} . {a}", quoted(port)), next))
            })
        };
        let keys = |family| pairs(family).map(|(pair, _)| pair);
        set(
            &mut out,
            "port-addrs-4",
            "ifname . ipv4_addr",
            keys(Family::V4),
        );
        set(
            &mut out,
            "port-addrs-6",
            "ifname . ipv6_addr",
            keys(Family::V6),
        );
        set(
            &mut out,
            "isolated-in",
            "ifname",
            self.isolated_in.iter().map(quoted),
        );
        // The same pairs with their verdicts, so that an IP frame from a
        // pod costs one lookup: on to the inet table, or first through the
        // checks of an egress-isolated pod.
        let verdicts = |family| pairs(family).map(|(pair, next)| format!("{pair} : {next}"));
        out.push_str(ISOLATED_FROM_POD);
        map(
            &mut out,
            "from-port-4",
            "ifname . ipv4_addr",
            verdicts(Family::V4),
        );
        map(
            &mut out,
            "from-port-6",
            "ifname . ipv6_addr",
            verdicts(Family::V6),
        );
        out.push_str(CHAINS);
        out.push_str("}\n");
        out
    }
}

/// The fixed chains (see the module documentation): the one the maps'
/// verdicts name comes before them.
const ISOLATED_FROM_POD: &str = "\tchain isolated-from-pod {
\t\tmeta pkttype { host, other } meta protocol ip accept
\t\ticmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept
\t\tmeta pkttype { broadcast, multicast } counter drop
\t\tip6 daddr fe80::/10 counter drop
\t\taccept
\t}
";

/// The chains that read the maps, and the base chains.
const CHAINS: &str = "\tchain from-pod {
\t\tiifname . ip saddr vmap @from-port-4
\t\tiifname . ip6 saddr vmap @from-port-6
\t\tarp saddr ip 0.0.0.0 accept
\t\tiifname . arp saddr ip @port-addrs-4 accept
\t\tip6 saddr { ::, fe80::/10 } icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept
\t\tip6 saddr { ::, fe80::/10 } icmpv6 type { mld-listener-report, mld-listener-done, mld2-listener-report } ip6 hoplimit 1 accept
\t\tcounter drop
\t}
\tchain to-isolated-pod {
\t\toifname . ip daddr @port-addrs-4 accept
\t\toifname . ip6 daddr @port-addrs-6 accept
\t\tether type arp accept
\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept
\t\tcounter drop
\t}
\tchain prerouting {
\t\ttype filter hook prerouting priority -200; policy accept;
\t\tiifname @pod-ports jump from-pod
\t}
\tchain forward {
\t\ttype filter hook forward priority -200; policy accept;
\t\toifname @isolated-in goto to-isolated-pod
\t}
";

fn quoted(s: impl AsRef<str>) -> String {
    format!("\"{}\"", s.as_ref())
}

fn map(out: &mut String, name: &str, ty: &str, elems: impl Iterator<Item = String>) {
    declare(out, "map", name, &format!("{ty} : verdict"), elems);
}

fn set(out: &mut String, name: &str, ty: &str, elems: impl Iterator<Item = String>) {
    declare(out, "set", name, ty, elems);
}

fn declare(
    out: &mut String,
    kind: &str,
    name: &str,
    ty: &str,
    elems: impl Iterator<Item = String>,
) {
    let elems: Vec<String> = elems.collect();
    let _ = writeln!(out, "\t{kind} {name} {{\n\t\ttype {ty}");
    if !elems.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", elems.join(", "));
    }
    out.push_str("\t}\n");
}

/// Removes `table bridge TABLE` if it is there (one transaction).
pub fn removal_text(table: &str) -> String {
    format!("table bridge {table}\ndelete table bridge {table}\n")
}

/// Keeps `table bridge TABLE` equal to the wanted guard: replaced whole,
/// in one transaction, whenever it changes (it changes only when local
/// pods, their ports or their isolation do, and is small: a few elements
/// per local pod).
#[derive(Debug)]
pub struct GuardSyncer {
    nft: Nft,
    table: String,
    applied: Option<Guard>,
}

impl GuardSyncer {
    pub fn new(nft: Nft, table: impl Into<String>) -> Self {
        Self {
            nft,
            table: table.into(),
            applied: None,
        }
    }

    /// Makes the kernel hold `want`; `Ok(false)` when it already did.
    /// `full` replaces it even so (periodic resync: repairs changes made
    /// by hand). A failed replacement changes nothing and is tried again
    /// at the next sync.
    pub fn sync(&mut self, want: &Guard, full: bool) -> Result<bool, NftError> {
        if !full && self.applied.as_ref() == Some(want) {
            return Ok(false);
        }
        self.applied = None;
        self.nft
            .run(&["-f", "-"], Some(want.to_text(&self.table).as_bytes()))?;
        self.applied = Some(want.clone());
        Ok(true)
    }

    /// Removes the table (if present) and forgets what was applied.
    pub fn remove(&mut self) -> Result<(), NftError> {
        self.applied = None;
        self.nft
            .run(&["-f", "-"], Some(removal_text(&self.table).as_bytes()))
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn port(name: &str, addrs: &[&str]) -> PortAddrs {
        PortAddrs {
            port: name.into(),
            ifindex: name.len() as u32,
            addrs: addrs.iter().map(|a| ip(a)).collect(),
        }
    }

    #[test]
    fn only_addresses_of_local_pods_are_bound_each_to_its_one_port() {
        let ports = [
            port("veth0", &["10.244.1.10", "fd00::10"]),
            port("veth1", &["10.244.1.11", "10.244.1.99"]),
            port("veth2", &[]),
        ];
        let local = BTreeSet::from([
            ip("10.244.1.10"),
            ip("fd00::10"),
            ip("10.244.1.11"),
            ip("10.244.1.12"),
        ]);
        let b = bind(&ports, &local, &BTreeMap::new());
        assert_eq!(b.port_of[&ip("10.244.1.10")], "veth0");
        assert_eq!(b.port_of[&ip("fd00::10")], "veth0");
        assert_eq!(b.port_of[&ip("10.244.1.11")], "veth1");
        assert!(!b.port_of.contains_key(&ip("10.244.1.99")), "no pod has it");
        assert_eq!(b.unbound, vec![ip("10.244.1.12")]);
        assert!(b.contested.is_empty());
    }

    #[test]
    fn a_contested_address_stays_with_its_first_port_or_goes_to_none() {
        let ports = [
            port("veth0", &["10.244.1.10"]),
            port("veth1", &["10.244.1.11", "10.244.1.10"]),
        ];
        let local = BTreeSet::from([ip("10.244.1.10"), ip("10.244.1.11")]);
        let fresh = bind(&ports, &local, &BTreeMap::new());
        assert!(!fresh.port_of.contains_key(&ip("10.244.1.10")));
        assert_eq!(fresh.contested.len(), 1);
        let previous = BTreeMap::from([(ip("10.244.1.10"), "veth0".to_string())]);
        let kept = bind(&ports, &local, &previous);
        assert_eq!(kept.port_of[&ip("10.244.1.10")], "veth0");
        assert_eq!(kept.port_of[&ip("10.244.1.11")], "veth1");
    }

    #[test]
    fn ports_are_isolated_by_the_addresses_bound_to_them() {
        let ports = [
            port("veth0", &["10.244.1.10"]),
            port("veth1", &["10.244.1.11"]),
        ];
        let local = BTreeSet::from([ip("10.244.1.10"), ip("10.244.1.11")]);
        let b = bind(&ports, &local, &BTreeMap::new());
        let g = Guard::new(
            &ports,
            &b,
            &BTreeSet::from([ip("10.244.1.11")]),
            &BTreeSet::new(),
            &mut BTreeSet::new(),
        );
        assert_eq!(g.isolated_in, BTreeSet::from(["veth1".to_string()]));
        assert!(g.isolated_eg.is_empty());
        let text = g.to_text("nftpol");
        assert!(text.contains("\"veth0\" . 10.244.1.10"), "{text}");
        assert!(text.starts_with("table bridge nftpol\ndelete table bridge nftpol\n"));
    }

    #[test]
    fn a_port_stays_guarded_once_bound_and_an_unknown_one_is_not_guarded() {
        let local = BTreeSet::from([ip("10.244.1.10")]);
        let mut guarded = BTreeSet::new();
        let mut step = |ports: &[PortAddrs]| {
            let none = BTreeSet::new();
            let binding = bind(ports, &local, &BTreeMap::new());
            Guard::new(ports, &binding, &none, &none, &mut guarded)
        };
        let veth0 = BTreeSet::from(["veth0".to_string()]);
        let ports = [
            port("veth0", &["10.244.1.10"]),
            port("veth1", &["10.244.1.20"]),
        ];
        assert_eq!(step(&ports).ports, veth0, "veth1's pod is unknown");
        // The pod drops its address: its port stays guarded, with nothing bound.
        let ports = [port("veth0", &[]), port("veth1", &["10.244.1.20"])];
        let g = step(&ports);
        assert_eq!(g.ports, veth0);
        assert!(g.bound.is_empty());
        // Gone from the kernel: forgotten.
        assert!(step(&ports[1..]).ports.is_empty());
    }
}
