//! Address owners: one owner per address of the active pods, and the
//! pods that lost it.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::compiler::snapshot::PodInfo;

/// Who owns each address of the active pods. One address has one owner:
/// of the active pods claiming it (on any node), the one not being deleted
/// with the newest creation time; when all are being deleted, the newest of
/// them; ties go to the greater `namespace/name`. The others lose it: they
/// are dispatched and matched without it until the owner goes away.
///
/// An owner is found by its address without a copy of it: the tables of
/// the usual case (the pod's first address of a family) hold only the pod,
/// 8 bytes, where an address and a pod take 16 (IPv4) or 24 (IPv6); that
/// is 1 MiB less at 100k pods. The rare losers are kept apart.
#[derive(Default)]
pub(super) struct AddressOwners {
    v4: HashSet<ByFirst<V4>>,
    v6: HashSet<ByFirst<V6>>,
    /// Owners of an address that is not their first of its family (a pod
    /// with two addresses of one family, which the API server refuses).
    other: HashMap<IpAddr, Arc<PodInfo>>,
    /// The other claimants of an address that has more than one.
    pub(super) losers: HashMap<IpAddr, Vec<Arc<PodInfo>>>,
}

/// A pod's first address of one family, at the type level (for
/// [`ByFirst`]; the value-level family is [`crate::net::Family`]).
trait FirstAddr {
    type Addr: Hash + Eq;
    /// The pod's first address of the family.
    fn first(pod: &PodInfo) -> Option<&Self::Addr>;
}

struct V4;
struct V6;

impl FirstAddr for V4 {
    type Addr = Ipv4Addr;
    fn first(pod: &PodInfo) -> Option<&Ipv4Addr> {
        pod.ips.iter().find_map(|ip| match ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
    }
}

impl FirstAddr for V6 {
    type Addr = Ipv6Addr;
    fn first(pod: &PodInfo) -> Option<&Ipv6Addr> {
        pod.ips.iter().find_map(|ip| match ip {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        })
    }
}

/// A pod that owns its first address of family `F`, looked up by it.
struct ByFirst<F>(Arc<PodInfo>, std::marker::PhantomData<F>);

impl<F: FirstAddr> ByFirst<F> {
    fn addr(&self) -> &F::Addr {
        F::first(&self.0).expect("kept by an address of the family")
    }
}

impl<F: FirstAddr> PartialEq for ByFirst<F> {
    fn eq(&self, other: &Self) -> bool {
        self.addr() == other.addr()
    }
}

impl<F: FirstAddr> Eq for ByFirst<F> {}

impl<F: FirstAddr> Hash for ByFirst<F> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // Must hash as the address it borrows as.
        self.addr().hash(h)
    }
}

impl Borrow<Ipv4Addr> for ByFirst<V4> {
    fn borrow(&self) -> &Ipv4Addr {
        self.addr()
    }
}

impl Borrow<Ipv6Addr> for ByFirst<V6> {
    fn borrow(&self) -> &Ipv6Addr {
        self.addr()
    }
}

/// Whether `a` has the better claim to an address than `b`.
fn outranks(a: &PodInfo, b: &PodInfo) -> bool {
    (!a.deleting, a.created, &a.key) > (!b.deleting, b.created, &b.key)
}

impl AddressOwners {
    pub(super) fn owner(&self, ip: IpAddr) -> Option<&Arc<PodInfo>> {
        let first = match ip {
            IpAddr::V4(ip) => self.v4.get(&ip).map(|p| &p.0),
            IpAddr::V6(ip) => self.v6.get(&ip).map(|p| &p.0),
        };
        first.or_else(|| self.other.get(&ip))
    }

    pub(super) fn owns(&self, pod: &PodInfo, ip: IpAddr) -> bool {
        self.owner(ip).is_some_and(|o| o.key == pod.key)
    }

    fn set_owner(&mut self, ip: IpAddr, pod: Option<Arc<PodInfo>>) {
        match ip {
            IpAddr::V4(ip) => self.v4.remove(&ip),
            IpAddr::V6(ip) => self.v6.remove(&ip),
        };
        self.other.remove(&ip);
        let Some(pod) = pod else {
            return;
        };
        match ip {
            IpAddr::V4(v4) if V4::first(&pod) == Some(&v4) => {
                self.v4.insert(ByFirst(pod, std::marker::PhantomData));
            }
            IpAddr::V6(v6) if V6::first(&pod) == Some(&v6) => {
                self.v6.insert(ByFirst(pod, std::marker::PhantomData));
            }
            _ => {
                self.other.insert(ip, pod);
            }
        }
    }

    /// An active pod claims its addresses.
    pub(super) fn claim(&mut self, pod: &Arc<PodInfo>) {
        for &ip in &pod.ips {
            match self.owner(ip) {
                None => self.set_owner(ip, Some(pod.clone())),
                Some(owner) if owner.key == pod.key => {} // listed twice
                Some(owner) if outranks(pod, owner) => {
                    let owner = owner.clone();
                    self.losers.entry(ip).or_default().push(owner);
                    self.set_owner(ip, Some(pod.clone()));
                }
                Some(_) => self.losers.entry(ip).or_default().push(pod.clone()),
            }
        }
    }

    /// A pod claimed with [`claim`](Self::claim) gives its addresses up.
    pub(super) fn release(&mut self, pod: &PodInfo) {
        for &ip in &pod.ips {
            if self.owns(pod, ip) {
                let next = self.losers.get_mut(&ip).and_then(|losers| {
                    let best = (0..losers.len()).reduce(|a, b| {
                        if outranks(&losers[b], &losers[a]) {
                            b
                        } else {
                            a
                        }
                    })?;
                    Some(losers.swap_remove(best))
                });
                self.set_owner(ip, next);
            } else if let Some(losers) = self.losers.get_mut(&ip) {
                losers.retain(|p| p.key != pod.key);
            }
            if self.losers.get(&ip).is_some_and(Vec::is_empty) {
                self.losers.remove(&ip);
            }
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (IpAddr, &Arc<PodInfo>)> {
        let v4 = self.v4.iter().map(|p| (IpAddr::V4(*p.addr()), &p.0));
        let v6 = self.v6.iter().map(|p| (IpAddr::V6(*p.addr()), &p.0));
        let other = self.other.iter().map(|(ip, p)| (*ip, p));
        v4.chain(v6).chain(other)
    }
}
