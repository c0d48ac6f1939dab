//! The port guard in `nftpol run`: at every sync, the pod bridges' ports
//! are read from the kernel ([`super::ports`]), each local pod address the
//! plan names is bound to the port that carries it, and `table bridge` is
//! replaced when that changed (see `nft::guard` for what it enforces).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use super::ports::RouteSocket;
use crate::compiler::{Direction, Plan};
use crate::nft::Nft;
use crate::nft::guard::{self, Guard, GuardSyncer, PortAddrs};

/// What one guard sync found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuardReport {
    /// Ports guarded.
    pub ports: usize,
    /// Local pod addresses no port carries yet (their pods send nothing
    /// until one does).
    pub unbound: Vec<IpAddr>,
    /// Addresses more than one port carries.
    pub contested: Vec<(IpAddr, Vec<String>)>,
}

/// Keeps the guard of one network namespace.
#[derive(Debug)]
pub struct PortGuard {
    bridges: BTreeSet<String>,
    netns: Option<PathBuf>,
    socket: Option<RouteSocket>,
    syncer: GuardSyncer,
    /// Address → port, as last bound (a contested address stays).
    bound: BTreeMap<IpAddr, String>,
    /// The ports guarded so far (name, ifindex), while they exist.
    guarded: BTreeSet<(String, u32)>,
    /// What the last plan asked of the guard, for [`PortGuard::retry`].
    wanted: Option<Wanted>,
    /// The ports as last read from the kernel, and the local pod addresses
    /// they were read for: read again only when those change (a pod came,
    /// went or got another address), at a full sync and at a retry. A
    /// change of isolation alone needs no new look at the ports.
    ports: Option<(BTreeSet<IpAddr>, Vec<PortAddrs>)>,
}

/// What a plan asks of the guard: the local pods' addresses, and those of
/// the pods isolated for ingress and for egress.
#[derive(Debug, Default)]
struct Wanted {
    local: BTreeSet<IpAddr>,
    isolated_in: BTreeSet<IpAddr>,
    isolated_eg: BTreeSet<IpAddr>,
}

impl Wanted {
    fn of(plan: &Plan) -> Self {
        let isolated = |d: Direction| -> BTreeSet<IpAddr> {
            plan.pods
                .iter()
                .filter(|p| p.direction == d)
                .flat_map(|p| p.ips.iter().copied())
                .collect()
        };
        Self {
            local: plan.local_addrs.clone(),
            isolated_in: isolated(Direction::Ingress),
            isolated_eg: isolated(Direction::Egress),
        }
    }
}

impl PortGuard {
    /// A guard for the ports of `bridges` in the namespace at `netns`
    /// (`None`: nftpol's own), applied through `nft` as `table bridge TABLE`.
    pub fn new(bridges: BTreeSet<String>, netns: Option<PathBuf>, nft: Nft, table: &str) -> Self {
        Self {
            bridges,
            netns,
            socket: None,
            syncer: GuardSyncer::new(nft, table),
            bound: BTreeMap::new(),
            guarded: BTreeSet::new(),
            wanted: None,
            ports: None,
        }
    }

    /// Makes the guard match `plan` and the ports the kernel has now;
    /// `full` replaces the table even when nothing changed (resync).
    pub fn sync(&mut self, plan: &Plan, full: bool) -> Result<GuardReport, String> {
        self.wanted = Some(Wanted::of(plan));
        self.apply(full)
    }

    /// Looks at the ports again for the last plan (addresses no port
    /// carried yet), without a new compilation.
    pub fn retry(&mut self) -> Result<GuardReport, String> {
        self.ports = None;
        self.apply(false)
    }

    fn apply(&mut self, full: bool) -> Result<GuardReport, String> {
        let Some(wanted) = &self.wanted else {
            return Ok(GuardReport::default());
        };
        let stale = match &self.ports {
            Some((local, _)) => full || *local != wanted.local,
            None => true,
        };
        if stale {
            let local = wanted.local.clone();
            let ports = self.discover()?;
            self.ports = Some((local, ports));
        }
        let wanted = self.wanted.as_ref().expect("checked");
        let (_, ports) = self.ports.as_ref().expect("just read");
        let binding = guard::bind(ports, &wanted.local, &self.bound);
        let want = Guard::new(
            ports,
            &binding,
            &wanted.isolated_in,
            &wanted.isolated_eg,
            &mut self.guarded,
        );
        self.syncer
            .sync(&want, full)
            .map_err(|e| format!("port guard: applying table bridge: {e}"))?;
        self.bound = binding.port_of;
        Ok(GuardReport {
            ports: want.ports.len(),
            unbound: binding.unbound,
            contested: binding.contested,
        })
    }

    /// The ports of the pod bridges, as the kernel has them now.
    fn discover(&mut self) -> Result<Vec<PortAddrs>, String> {
        let socket = match &mut self.socket {
            Some(s) => s,
            None => self.socket.insert(
                RouteSocket::open(self.netns.as_deref()).map_err(|e| format!("port guard: {e}"))?,
            ),
        };
        let found = match socket.pod_ports() {
            Ok(found) => found,
            Err(e) => {
                self.socket = None; // opened anew next time
                return Err(format!("port guard: finding the pods' ports: {e}"));
            }
        };
        Ok(found
            .into_iter()
            .filter(|p| self.bridges.contains(&p.bridge))
            .map(|p| PortAddrs {
                port: p.name,
                ifindex: p.ifindex,
                addrs: p.addrs,
            })
            .collect())
    }
}
