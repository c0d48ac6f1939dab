//! `nftpol run`: watch the API, enforce continuously.
//!
//! ```text
//!  watcher(Pods) ──┐                         ┌─ every change: notify
//!  watcher(Ns)   ──┼─► Stores (trimmed) ─────┤
//!  watcher(NetPol)─┘                         └─► reconcile task: coalesce (min interval),
//!                                                 snapshot → compile → render → Syncer (diff)
//!  axum: /healthz /readyz /metrics /status        periodic full resync; Events for invalid policies
//! ```
//!
//! Nothing is applied before all three stores have listed once; the first
//! apply replaces the table atomically. On SIGTERM the rules stay in the
//! kernel (enforcement holds while the pod restarts); `nftpol cleanup` is
//! the uninstall step. While the API server is unreachable the watchers
//! retry with kube-rs's default backoff and the last state stays enforced.

pub mod http;
pub mod metrics;
mod reconcile;
pub mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::compiler::{NamespaceInfo, ObjectKey, PodInfo, Snapshot};
use crate::nft::Nft;
use store::{Store, Trim};

pub use reconcile::SyncStatus;

/// Settings of `nftpol run`.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub node_name: String,
    pub kubeconfig: Option<PathBuf>,
    pub table: String,
    pub metrics_addr: SocketAddr,
    pub resync_period: Duration,
    pub min_sync_interval: Duration,
    pub nft: Nft,
}

/// The three stores.
#[derive(Default)]
pub struct Stores {
    pub pods: Store<ObjectKey, PodInfo>,
    pub namespaces: Store<String, NamespaceInfo>,
    pub policies: Store<ObjectKey, NetworkPolicy>,
}

impl Stores {
    pub fn synced(&self) -> bool {
        self.pods.is_synced() && self.namespaces.is_synced() && self.policies.is_synced()
    }

    /// The highest resourceVersion the stores have seen.
    pub fn resource_version(&self) -> u64 {
        self.pods
            .resource_version()
            .max(self.namespaces.resource_version())
            .max(self.policies.resource_version())
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            namespaces: self
                .namespaces
                .values()
                .into_iter()
                .map(|n| (n.name.clone(), (*n).clone()))
                .collect::<BTreeMap<_, _>>(),
            pods: self.pods.values(),
            policies: self.policies.values(),
        }
    }
}

/// State shared by the watchers, the reconcile task and the HTTP server.
pub struct Shared {
    pub stores: Stores,
    pub metrics: metrics::Metrics,
    changed: Notify,
    /// When the oldest change not yet enforced arrived.
    pending_since: Mutex<Option<Instant>>,
    status: Mutex<SyncStatus>,
    /// Watchers currently failing (kind names).
    watch_errors: Mutex<BTreeMap<&'static str, String>>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            stores: Stores::default(),
            metrics: metrics::Metrics::default(),
            changed: Notify::new(),
            pending_since: Mutex::new(None),
            status: Mutex::new(SyncStatus::default()),
            watch_errors: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Shared {
    /// Records a change and wakes the reconcile task.
    pub fn mark_changed(&self) {
        self.pending_since
            .lock()
            .expect("lock")
            .get_or_insert_with(Instant::now);
        self.changed.notify_one();
    }

    pub fn status(&self) -> SyncStatus {
        self.status.lock().expect("lock").clone()
    }

    /// Ready: every store listed, no watcher failing, last apply succeeded.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.stores.synced() {
            return Err(
                "waiting for the first list of pods, namespaces and networkpolicies".into(),
            );
        }
        let errors = self.watch_errors.lock().expect("lock");
        if let Some((kind, e)) = errors.iter().next() {
            return Err(format!("watch of {kind} failing: {e}"));
        }
        let st = self.status();
        match (&st.last_error, st.syncs) {
            (Some(e), _) => Err(format!("last sync failed: {e}")),
            (None, 0) => Err("no sync yet".into()),
            (None, _) => Ok(()),
        }
    }

    fn set_watch_error(&self, kind: &'static str, error: Option<String>) {
        let mut errors = self.watch_errors.lock().expect("lock");
        match error {
            Some(e) => {
                errors.insert(kind, e);
            }
            None => {
                errors.remove(kind);
            }
        }
    }
}

/// Feeds one store from a watcher until the stream ends (it does not: the
/// watcher retries with backoff).
async fn feed<K, Key, T>(
    api: Api<K>,
    kind: &'static str,
    shared: Arc<Shared>,
    store: impl Fn(&Shared) -> &Store<Key, T>,
) where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static
        + Trim<Key, T>,
    Key: Ord + std::hash::Hash + Clone,
{
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                shared.set_watch_error(kind, None);
                if store(&shared).apply(event) {
                    shared.mark_changed();
                }
            }
            Err(e) => {
                warn!(kind, error = %e, "watch failed; retrying with backoff, the last state stays enforced");
                shared.set_watch_error(kind, Some(e.to_string()));
            }
        }
    }
}

/// Builds the API client: `--kubeconfig`, else `KUBECONFIG` / `~/.kube/config`,
/// else the in-cluster service account.
pub async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// Warns when bridged traffic would bypass the IP hooks.
fn check_br_netfilter() {
    let path = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == "1" => {}
        Ok(v) => error!(
            "{path} is {}: same-node pod traffic over the bridge is NOT filtered; \
             set net.bridge.bridge-nf-call-iptables=1",
            v.trim()
        ),
        Err(e) => error!(
            "cannot read {path} ({e}): br_netfilter seems not loaded, same-node pod traffic \
             over the bridge is NOT filtered; modprobe br_netfilter and set \
             net.bridge.bridge-nf-call-iptables=1"
        ),
    }
}

/// Runs the controller until SIGTERM or SIGINT.
pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    check_br_netfilter();
    let client = client(cfg.kubeconfig.as_ref()).await?;
    let shared = Arc::new(Shared::default());

    tokio::spawn(feed(
        Api::<Pod>::all(client.clone()),
        "pods",
        shared.clone(),
        |s| &s.stores.pods,
    ));
    tokio::spawn(feed(
        Api::<Namespace>::all(client.clone()),
        "namespaces",
        shared.clone(),
        |s| &s.stores.namespaces,
    ));
    tokio::spawn(feed(
        Api::<NetworkPolicy>::all(client.clone()),
        "networkpolicies",
        shared.clone(),
        |s| &s.stores.policies,
    ));

    let listener = tokio::net::TcpListener::bind(cfg.metrics_addr).await?;
    info!(addr = %listener.local_addr()?, "serving /healthz, /readyz, /metrics, /status");
    tokio::spawn(http::serve(listener, shared.clone()));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: "nftpol".into(),
            instance: Some(cfg.node_name.clone()),
        },
    );
    let reconciler = tokio::spawn(reconcile::run(
        cfg.clone(),
        shared.clone(),
        Some(recorder),
        stop_rx,
    ));

    wait_for_signal().await;
    info!("stopping; the rules stay in the kernel (nftpol cleanup removes them)");
    let _ = stop_tx.send(true);
    let _ = reconciler.await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
