//! Tracked flows of addresses that changed hands. After each successful
//! sync, every pod address whose owner changed, or that no pod holds any
//! more, loses its conntrack entries: a pod that gets the address next
//! inherits no "established" flow allowed by its predecessor's rules.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;

use crate::compiler::{Incremental, ObjectKey};
use crate::conntrack::{Conntrack, ConntrackError};

/// Which pod owns each address, as the compiler decides it (the newest
/// pod not being deleted; see `compiler::incremental`).
pub type AddressOwners = HashMap<IpAddr, ObjectKey>;

/// The owners a compiler holds now (taken when it is about to be rebuilt
/// from scratch, to compare with the new one).
pub fn address_owners(compiler: &Incremental) -> AddressOwners {
    compiler
        .address_owners()
        .map(|(ip, key)| (ip, key.clone()))
        .collect()
}

/// The addresses of `before` whose owner in `after` is another pod, or
/// none.
pub fn changed_hands(before: &AddressOwners, after: &AddressOwners) -> BTreeSet<IpAddr> {
    before
        .iter()
        .filter(|(ip, pod)| after.get(*ip) != Some(*pod))
        .map(|(ip, _)| *ip)
        .collect()
}

/// The conntrack side of the controller: the socket, and the addresses
/// whose entries are still to be deleted (after a failed attempt).
#[derive(Debug)]
pub struct StaleFlows {
    conntrack: Conntrack,
    pending: BTreeSet<IpAddr>,
}

/// What one [`StaleFlows::after_sync`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// Addresses that changed hands.
    pub addresses: usize,
    /// Conntrack entries deleted for them.
    pub entries: usize,
}

impl StaleFlows {
    /// Opens a ctnetlink socket in the namespace at `netns` (`None`: this one).
    pub fn open(netns: Option<&Path>) -> Result<Self, ConntrackError> {
        Ok(Self {
            conntrack: Conntrack::open(netns)?,
            pending: BTreeSet::new(),
        })
    }

    /// After a sync that put the rules of the addresses' new owners (or of
    /// none) in place: deletes the entries of every address in `moved`.
    /// When the deletion fails, the addresses are kept and tried again
    /// with the next call.
    pub fn after_sync(&mut self, moved: BTreeSet<IpAddr>) -> Result<Forgotten, ConntrackError> {
        self.pending.extend(moved);
        if self.pending.is_empty() {
            return Ok(Forgotten::default());
        }
        let gone: std::collections::HashSet<IpAddr> = self.pending.iter().copied().collect();
        let entries = self.conntrack.delete_involving(&gone)?;
        let addresses = std::mem::take(&mut self.pending).len();
        Ok(Forgotten { addresses, entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(pairs: &[(&str, &str)]) -> AddressOwners {
        pairs
            .iter()
            .map(|(ip, pod)| (ip.parse().unwrap(), ObjectKey::new("ns", *pod)))
            .collect()
    }

    #[test]
    fn addresses_that_changed_owner_or_were_released_are_the_stale_ones() {
        let before = owners(&[("10.0.0.1", "a"), ("10.0.0.2", "b"), ("10.0.0.3", "c")]);
        // a keeps its address, b's is e's now, c's is free; f's is new.
        let after = owners(&[("10.0.0.1", "a"), ("10.0.0.2", "e"), ("10.0.0.9", "f")]);
        let moved: Vec<String> = changed_hands(&before, &after)
            .iter()
            .map(IpAddr::to_string)
            .collect();
        assert_eq!(moved, ["10.0.0.2", "10.0.0.3"]);
        assert!(changed_hands(&after, &after).is_empty());
    }

    #[test]
    fn the_owners_are_the_compilers() {
        use crate::compiler::PodInfo;
        use k8s_openapi::api::core::v1::Pod;
        use std::sync::Arc;
        let pod = |name: &str, created: &str| {
            let p: Pod = serde_json::from_value(serde_json::json!({
                "metadata": { "namespace": "ns", "name": name, "creationTimestamp": created },
                "spec": { "containers": [], "nodeName": "n" },
                "status": { "phase": "Running", "podIP": "10.0.0.9", "podIPs": [{ "ip": "10.0.0.9" }] },
            }))
            .unwrap();
            Arc::new(PodInfo::from_pod(&p))
        };
        let mut c = Incremental::new("n");
        c.upsert_pod(pod("old", "2026-01-01T00:00:00Z"));
        c.upsert_pod(pod("new", "2026-01-02T00:00:00Z"));
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(address_owners(&c)[&ip], ObjectKey::new("ns", "new"));
    }
}
