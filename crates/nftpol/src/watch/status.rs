//! `/status`: what `nftpol run` says it has enforced. The controller
//! serialises [`SyncStatus`]; the lab, the tests and the benches read it
//! back into the same type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::node::NodeCheck;

/// What `/status` reports: the signal tests and tools wait on.
///
/// A reader gets every field it does not find as its default, so that a
/// reader newer than the controller still reads its `/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncStatus {
    /// Per kind ([`PODS`](super::PODS), [`NAMESPACES`](super::NAMESPACES),
    /// [`POLICIES`](super::POLICIES)): every change of that kind up to this
    /// resourceVersion is enforced. Events of one kind arrive in order, so
    /// after a write of kind K at version R, waiting for `synced[K] >= R`
    /// is exact.
    pub synced: BTreeMap<String, u64>,
    /// The minimum over the kinds: every change of any kind up to it is
    /// enforced (idle kinds advance with bookmarks).
    pub synced_resource_version: u64,
    /// A sync is being applied (the controller's own bookkeeping: not
    /// served).
    #[serde(skip)]
    pub in_flight: bool,
    /// Successful syncs so far.
    pub syncs: u64,
    pub full_syncs: u64,
    pub failed_syncs: u64,
    /// The error of the last sync, when it failed.
    pub last_error: Option<String>,
    /// Why enforcement is degraded: a wanted full replacement of the table
    /// (periodic resync, or after a failed diff) keeps failing. Changes
    /// are still enforced, as diffs; drift is not repaired.
    pub degraded: Option<String>,
    /// The last check of the node's settings (see `watch::node`; filled
    /// in when read).
    pub node: NodeCheck,
    /// Ports of the pod bridges the port guard holds.
    pub guarded_ports: usize,
    /// Local pod addresses no port carries yet.
    pub unbound_addresses: usize,
    /// Size of the applied table.
    pub chains: usize,
    pub rules: usize,
    pub set_elements: usize,
    /// What `/readyz` says (filled in when served).
    pub ready: bool,
}

impl SyncStatus {
    /// Records that every change up to `versions` (per kind) is enforced.
    pub(super) fn advance(&mut self, versions: &BTreeMap<&'static str, u64>) {
        for (kind, rv) in versions {
            let synced = self.synced.entry(kind.to_string()).or_default();
            *synced = (*synced).max(*rv);
        }
        self.synced_resource_version = self.synced.values().copied().min().unwrap_or(0);
    }

    /// Whether a write of `kind` at resourceVersion `rv` is enforced: the
    /// kind's own version when reported (exact: events of one kind arrive
    /// in order), else `synced_resource_version`.
    pub fn enforced(&self, kind: &str, rv: u64) -> bool {
        match self.synced.get(kind) {
            Some(synced) => *synced >= rv,
            None => self.synced_resource_version >= rv,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::{NAMESPACES, PODS, POLICIES};

    fn versions(pods: u64, namespaces: u64, policies: u64) -> BTreeMap<&'static str, u64> {
        BTreeMap::from([(PODS, pods), (NAMESPACES, namespaces), (POLICIES, policies)])
    }

    #[test]
    fn advancing_keeps_the_highest_version_per_kind_and_their_minimum() {
        let mut status = SyncStatus::default();
        status.advance(&versions(10, 4, 7));
        status.advance(&versions(8, 5, 7));
        assert_eq!(status.synced[PODS], 10);
        assert_eq!(status.synced[NAMESPACES], 5);
        assert_eq!(status.synced_resource_version, 5);
        assert!(status.enforced(PODS, 10));
        assert!(!status.enforced(PODS, 11));
        assert!(!status.enforced("unreported", 6));
        assert!(status.enforced("unreported", 5));
    }

    #[test]
    fn the_served_json_has_every_documented_field_and_reads_back() {
        let mut status = SyncStatus {
            syncs: 3,
            full_syncs: 1,
            failed_syncs: 2,
            last_error: Some("nft: exit 1".into()),
            degraded: Some("full replacement failed".into()),
            guarded_ports: 4,
            unbound_addresses: 1,
            chains: 9,
            rules: 20,
            set_elements: 300,
            ready: true,
            ..SyncStatus::default()
        };
        status.advance(&versions(12, 11, 13));
        status.node.problems = vec!["br_netfilter not loaded".into()];
        let served = serde_json::to_value(&status).unwrap();
        let mut keys: Vec<&str> = served
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "chains",
                "degraded",
                "failed_syncs",
                "full_syncs",
                "guarded_ports",
                "last_error",
                "node",
                "ready",
                "rules",
                "set_elements",
                "synced",
                "synced_resource_version",
                "syncs",
                "unbound_addresses",
            ]
        );
        assert_eq!(served["synced"]["networkpolicies"], 13);
        assert_eq!(served["synced_resource_version"], 11);

        let read: SyncStatus = serde_json::from_value(served).unwrap();
        assert_eq!(read, status);
    }

    #[test]
    fn in_flight_is_not_served() {
        let status = SyncStatus {
            in_flight: true,
            ..SyncStatus::default()
        };
        let served = serde_json::to_value(&status).unwrap();
        assert!(served.get("in_flight").is_none());
        let read: SyncStatus = serde_json::from_value(served).unwrap();
        assert!(!read.in_flight);
    }

    #[test]
    fn a_reader_takes_missing_fields_as_their_defaults() {
        let read: SyncStatus =
            serde_json::from_str(r#"{"synced_resource_version": 7, "ready": true}"#).unwrap();
        assert_eq!(read.synced_resource_version, 7);
        assert!(read.ready);
        assert_eq!(read.syncs, 0);
        assert!(read.synced.is_empty());
    }
}
