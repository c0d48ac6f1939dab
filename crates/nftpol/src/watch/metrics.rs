//! Prometheus metrics (prometheus-client), served on `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum SyncKind {
    Full,
    Partial,
}

impl EncodeLabelValue for SyncKind {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            SyncKind::Full => "full",
            SyncKind::Partial => "partial",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    pub kind: SyncKind,
}

pub struct Metrics {
    pub registry: Registry,
    pub sync_duration: Family<SyncLabels, Histogram>,
    pub change_to_enforced: Histogram,
    pub last_successful_sync: Gauge<f64, AtomicU64>,
    pub failed_syncs: Counter,
    pub syncs: Family<SyncLabels, Counter>,
    pub chains: Gauge,
    pub rules: Gauge,
    pub set_elements: Gauge,
    pub isolated_local_pods: Gauge,
    pub invalid_policies: Gauge,
    pub enforcement_degraded: Gauge,
    pub node_problems: Gauge,
    pub conntrack_entries_deleted: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("nftpol");
        let sync_duration = Family::<SyncLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register(
            "sync_duration_seconds",
            "Time to compile, render and apply one sync, by kind (full table or difference)",
            sync_duration.clone(),
        );
        let change_to_enforced = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "change_to_enforced_seconds",
            "From the first watch event of a batch to the end of the transaction that enforces it",
            change_to_enforced.clone(),
        );
        let last_successful_sync = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_successful_sync_timestamp_seconds",
            "Unix time of the last successful sync",
            last_successful_sync.clone(),
        );
        let failed_syncs = Counter::default();
        registry.register(
            "failed_syncs",
            "Syncs whose nft transaction failed",
            failed_syncs.clone(),
        );
        let syncs = Family::<SyncLabels, Counter>::default();
        registry.register("syncs", "Successful syncs, by kind", syncs.clone());
        let chains = Gauge::default();
        registry.register("chains", "Chains in nftpol's table", chains.clone());
        let rules = Gauge::default();
        registry.register("rules", "Rules in nftpol's table", rules.clone());
        let set_elements = Gauge::default();
        registry.register(
            "set_elements",
            "Elements in nftpol's sets and dispatch maps",
            set_elements.clone(),
        );
        let isolated_local_pods = Gauge::default();
        registry.register(
            "isolated_local_pods",
            "Local pods isolated in at least one direction",
            isolated_local_pods.clone(),
        );
        let invalid_policies = Gauge::default();
        registry.register(
            "invalid_policies",
            "NetworkPolicies with at least one invalid field",
            invalid_policies.clone(),
        );
        let enforcement_degraded = Gauge::default();
        registry.register(
            "enforcement_degraded",
            "1 while a wanted full replacement of the table keeps failing (changes still go as \
             diffs; drift is not repaired)",
            enforcement_degraded.clone(),
        );
        let node_problems = Gauge::default();
        registry.register(
            "node_problems",
            "Unsafe node settings found by the last check (br_netfilter, kube-proxy IPVS mode)",
            node_problems.clone(),
        );
        let conntrack_entries_deleted = Counter::default();
        registry.register(
            "conntrack_entries_deleted",
            "Conntrack entries deleted because their pod address changed owner or was released",
            conntrack_entries_deleted.clone(),
        );
        Self {
            registry,
            sync_duration,
            change_to_enforced,
            last_successful_sync,
            failed_syncs,
            syncs,
            chains,
            rules,
            set_elements,
            isolated_local_pods,
            invalid_policies,
            enforcement_degraded,
            node_problems,
            conntrack_entries_deleted,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String does not fail");
        out
    }
}
