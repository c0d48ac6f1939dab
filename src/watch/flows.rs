//! Tracked flows of addresses that changed hands. After each successful
//! sync, every pod address whose owner changed, or that no pod holds any
//! more, loses its conntrack entries: a pod that gets the address next
//! inherits no "established" flow allowed by its predecessor's rules.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use crate::compiler::PodInfo;
use crate::conntrack::{Conntrack, ConntrackError};

/// Which pod holds each address, by pod.
pub type AddressOwners = HashMap<IpAddr, Arc<PodInfo>>;

/// Which pod holds each address: the active pods' addresses; when two
/// claim one, the first by namespace and name.
///
/// Stands in for the compiler's own ownership rule (the newest pod
/// without a deletionTimestamp owns an address): swap this for it so
/// that the flows follow the owner the rules use.
pub fn address_owners(pods: &[Arc<PodInfo>]) -> AddressOwners {
    let mut owners = AddressOwners::with_capacity(pods.len());
    for pod in pods.iter().filter(|p| p.is_active()) {
        for ip in pod.ips.as_slice() {
            owners
                .entry(*ip)
                .and_modify(|o| {
                    if pod.key < o.key {
                        *o = pod.clone();
                    }
                })
                .or_insert_with(|| pod.clone());
        }
    }
    owners
}

/// The addresses of `before` whose owner in `after` is another pod, or
/// none.
pub fn changed_hands(before: &AddressOwners, after: &AddressOwners) -> HashSet<IpAddr> {
    before
        .iter()
        .filter(|(ip, pod)| after.get(*ip).is_none_or(|now| now.key != pod.key))
        .map(|(ip, _)| *ip)
        .collect()
}

/// The conntrack side of the controller: the socket, and the owners the
/// last successful sync enforced.
#[derive(Debug)]
pub struct StaleFlows {
    conntrack: Conntrack,
    owners: Option<AddressOwners>,
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
            owners: None,
        })
    }

    /// After a sync that enforced `pods` (`None`: no pod changed since the
    /// last call): deletes the entries of every address that changed hands
    /// since the last call. The first call only records the owners. When
    /// the deletion fails, the owners stay as they were, so the next call
    /// with pods tries again.
    pub fn after_sync(
        &mut self,
        pods: Option<&[Arc<PodInfo>]>,
    ) -> Result<Forgotten, ConntrackError> {
        let Some(pods) = pods else {
            return Ok(Forgotten::default());
        };
        let now = address_owners(pods);
        let mut done = Forgotten::default();
        if let Some(before) = &self.owners {
            let gone = changed_hands(before, &now);
            if !gone.is_empty() {
                done.entries = self.conntrack.delete_involving(&gone)?;
                done.addresses = gone.len();
            }
        }
        self.owners = Some(now);
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiler::ObjectKey;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(name: &str, ip: &str, phase: &str) -> Arc<PodInfo> {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "namespace": "ns", "name": name },
            "spec": { "containers": [] },
            "status": { "phase": phase, "podIP": ip, "podIPs": [{ "ip": ip }] },
        }))
        .unwrap();
        Arc::new(PodInfo::from_pod(&p))
    }

    fn ips(set: HashSet<IpAddr>) -> Vec<String> {
        let mut v: Vec<String> = set.iter().map(IpAddr::to_string).collect();
        v.sort();
        v
    }

    #[test]
    fn addresses_that_changed_owner_or_were_released_are_the_stale_ones() {
        let before = address_owners(&[
            pod("a", "10.0.0.1", "Running"),
            pod("b", "10.0.0.2", "Running"),
            pod("c", "10.0.0.3", "Running"),
            pod("d", "10.0.0.4", "Running"),
        ]);
        let after = address_owners(&[
            // a: unchanged (a new object, same pod).
            pod("a", "10.0.0.1", "Running"),
            // b's address now belongs to e.
            pod("e", "10.0.0.2", "Running"),
            // c finished: its address is free.
            pod("c", "10.0.0.3", "Succeeded"),
            // d is gone.
        ]);
        assert_eq!(
            ips(changed_hands(&before, &after)),
            ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
        );
        assert!(changed_hands(&after, &after).is_empty());
    }

    #[test]
    fn one_owner_per_address_whatever_the_order() {
        let (x, y) = (
            pod("x", "10.0.0.9", "Running"),
            pod("y", "10.0.0.9", "Running"),
        );
        let o1 = address_owners(&[x.clone(), y.clone()]);
        let o2 = address_owners(&[y, x]);
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(o1[&ip].key, ObjectKey::new("ns", "x"));
        assert_eq!(o2[&ip].key, ObjectKey::new("ns", "x"));
    }
}
