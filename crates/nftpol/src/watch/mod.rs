//! `nftpol run`: watch the API, enforce continuously.
//!
//! ```text
//!  list+watch(Pods) ──┐                         ┌─ every change: notify
//!  list+watch(Ns)   ──┼─► Stores (trimmed) ─────┤
//!  list+watch(NetPol)─┘   (+ changed keys)      └─► reconcile task: coalesce (min interval),
//!                                                 changes → Incremental → compile → render →
//!                                                 Syncer (diff); periodic full resync (also
//!  axum: /healthz /readyz /metrics /status        rebuilds the compiler); Events for invalid policies
//! ```
//!
//! Nothing is applied before all three stores have listed once; the first
//! apply replaces the table atomically. On SIGTERM the rules stay in the
//! kernel (enforcement holds while the pod restarts); `nftpol cleanup` is
//! the uninstall step. While the API server is unreachable the watches
//! retry with backoff (0.8 s doubling to 30 s, jittered) and the last
//! state stays enforced.
//!
//! The watch loop is ours, on kube-client's `list` and `watch`, rather than
//! kube-runtime's `watcher`: that one consumes bookmarks and list
//! resourceVersions internally, and the "enforced up to resourceVersion R"
//! signal (`/status`) needs exactly those to be right for idle kinds and
//! after a relist.

pub mod events;
pub mod flows;
pub mod guard;
pub mod http;
pub mod list;
pub mod metrics;
pub mod node;
pub mod ports;
mod reconcile;
pub mod status;
pub mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::compiler::{Incremental, NamespaceInfo, ObjectKey, PodInfo, PolicyObject};
use crate::nft::{Netlink, NetlinkDiffs, Nft, Syncer};
use store::{Changes, MapKey, PodKey, Store, Trim, parse_rv};

pub use status::SyncStatus;

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
    /// Incremental transactions over netlink (opened at start), or `None`
    /// for all of them through `nft`.
    pub netlink: Option<NetlinkAt>,
    /// The network namespace nftpol enforces in (a file such as
    /// `/run/netns/NAME`); `None`: its own. Also where the node's settings
    /// are checked and conntrack entries deleted.
    pub netns: Option<PathBuf>,
    /// Bridges whose ports get the port guard; empty: no guard.
    pub pod_bridges: std::collections::BTreeSet<String>,
}

/// Where to open the netlink socket.
#[derive(Clone, Debug)]
pub struct NetlinkAt {
    /// A network namespace file; `None`: nftpol's own namespace.
    pub netns: Option<PathBuf>,
}

/// Objects per page when listing.
const LIST_PAGE: u32 = 500;

/// The kinds nftpol watches, by their resource names: the keys of
/// `synced` in `/status` and the `kind` of the watch logs.
pub const PODS: &str = "pods";
pub const NAMESPACES: &str = "namespaces";
pub const POLICIES: &str = "networkpolicies";

/// The three stores.
#[derive(Default)]
pub struct Stores {
    pub pods: Store<ObjectKey, PodInfo, PodKey>,
    pub namespaces: Store<String, NamespaceInfo>,
    pub policies: Store<ObjectKey, PolicyObject>,
}

impl Stores {
    pub fn synced(&self) -> bool {
        self.pods.is_synced() && self.namespaces.is_synced() && self.policies.is_synced()
    }

    /// How far each store has progressed, by kind.
    pub fn resource_versions(&self) -> BTreeMap<&'static str, u64> {
        BTreeMap::from([
            (PODS, self.pods.resource_version()),
            (NAMESPACES, self.namespaces.resource_version()),
            (POLICIES, self.policies.resource_version()),
        ])
    }

    /// What changed in each store since the last call.
    pub fn take_changes(&self) -> Delta {
        Delta {
            pods: self.pods.take_changes(),
            namespaces: self.namespaces.take_changes(),
            policies: self.policies.take_changes(),
        }
    }

    /// Makes the next [`take_changes`](Self::take_changes) return everything.
    pub fn mark_all_changed(&self) {
        self.pods.mark_all_changed();
        self.namespaces.mark_all_changed();
        self.policies.mark_all_changed();
    }
}

/// The changes of the three stores since the last look.
pub struct Delta {
    pub pods: Changes<ObjectKey, PodInfo>,
    pub namespaces: Changes<String, NamespaceInfo>,
    pub policies: Changes<ObjectKey, PolicyObject>,
}

impl Delta {
    /// Whether every kind has only some keys changed (an existing compiler
    /// can take them), rather than everything.
    pub fn is_partial(&self) -> bool {
        matches!(
            (&self.pods, &self.namespaces, &self.policies),
            (Changes::Some(_), Changes::Some(_), Changes::Some(_))
        )
    }

    /// Brings a compiler up to date: feeds it the changed objects when the
    /// delta [is partial](Self::is_partial), else builds a new one from
    /// everything (in which case every kind must be [`Changes::All`]).
    pub fn apply(self, compiler: Option<Incremental>, node: &str) -> Incremental {
        let partial = self.is_partial();
        let mut c = match compiler {
            Some(c) if partial => c,
            _ => Incremental::new(node),
        };
        match self.namespaces {
            Changes::All(all) => all.into_iter().for_each(|ns| c.upsert_namespace(ns)),
            Changes::Some(changed) => {
                for (name, ns) in changed {
                    match ns {
                        Some(ns) => c.upsert_namespace(ns),
                        None => c.remove_namespace(&name),
                    }
                }
            }
        }
        match self.pods {
            Changes::All(all) => all.into_iter().for_each(|p| c.upsert_pod(p)),
            Changes::Some(changed) => {
                for (key, pod) in changed {
                    match pod {
                        Some(pod) => c.upsert_pod(pod),
                        None => c.remove_pod(&key),
                    }
                }
            }
        }
        match self.policies {
            Changes::All(all) => all.into_iter().for_each(|p| c.upsert_policy_object(p)),
            Changes::Some(changed) => {
                for (key, np) in changed {
                    match np {
                        Some(np) => c.upsert_policy_object(np),
                        None => c.remove_policy(&key),
                    }
                }
            }
        }
        c
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
    /// What the last check of the node's settings found.
    node: Mutex<node::NodeCheck>,
    /// Watchers currently failing (kind names).
    watch_errors: Mutex<BTreeMap<&'static str, String>>,
    /// Why the port guard could not be updated, while it cannot.
    guard_error: Mutex<Option<String>>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            stores: Stores::default(),
            metrics: metrics::Metrics::default(),
            changed: Notify::new(),
            pending_since: Mutex::new(None),
            status: Mutex::new(SyncStatus::default()),
            node: Mutex::new(node::NodeCheck::default()),
            watch_errors: Mutex::new(BTreeMap::new()),
            guard_error: Mutex::new(None),
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

    /// A store moved forward without a change (bookmark, or a relist that
    /// found what was already enforced): when nothing is pending or being
    /// applied, what is enforced is still all there is up to the new
    /// resourceVersions. Lock order: pending, then status.
    pub fn progress(&self) {
        let pending = self.pending_since.lock().expect("lock");
        if pending.is_some() {
            return;
        }
        let mut st = self.status.lock().expect("lock");
        if st.in_flight || st.last_error.is_some() || st.syncs == 0 {
            return;
        }
        st.advance(&self.stores.resource_versions());
    }

    /// Takes the pending changes for a sync, marking it in flight.
    fn begin_sync(&self) -> Option<Instant> {
        let mut pending = self.pending_since.lock().expect("lock");
        self.status.lock().expect("lock").in_flight = true;
        pending.take()
    }

    pub fn status(&self) -> SyncStatus {
        let mut st = self.status.lock().expect("lock").clone();
        st.node = self.node_check();
        st
    }

    /// What the last check of the node's settings found.
    pub fn node_check(&self) -> node::NodeCheck {
        self.node.lock().expect("lock").clone()
    }

    /// Records a check of the node's settings: logs each problem as an
    /// error (every check, so that it stays visible), and their end.
    pub fn record_node_check(&self, check: node::NodeCheck) {
        for problem in &check.problems {
            error!("{problem}");
        }
        let mut last = self.node.lock().expect("lock");
        if check.problems.is_empty() && !last.problems.is_empty() {
            info!("the node's settings are safe again");
        }
        if check.ipv4_forwarding != last.ipv4_forwarding
            || check.ipv6_forwarding != last.ipv6_forwarding
        {
            info!(
                ipv4_forwarding = ?check.ipv4_forwarding,
                ipv6_forwarding = ?check.ipv6_forwarding,
                "forwarding settings of the enforced network namespace"
            );
        }
        self.metrics.node_problems.set(check.problems.len() as i64);
        *last = check;
    }

    /// Ready: every store listed, no watcher failing, the node's settings
    /// safe, last apply succeeded and enforcement not degraded.
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
        // Every reason that holds, so that one does not hide another.
        let mut why: Vec<String> = Vec::new();
        let node = self.node_check();
        if !node.problems.is_empty() {
            why.push(format!(
                "unsafe node settings: {}",
                node.problems.join("; ")
            ));
        }
        if let Some(e) = &*self.guard_error.lock().expect("lock") {
            why.push(e.clone());
        }
        let st = self.status();
        if let Some(e) = &st.degraded {
            why.push(format!("enforcement degraded: {e}"));
        }
        match (&st.last_error, st.syncs) {
            (Some(e), _) => why.push(format!("last sync failed: {e}")),
            (None, 0) => why.push("no sync yet".into()),
            (None, _) => {}
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }

    fn set_guard_error(&self, error: Option<String>) {
        *self.guard_error.lock().expect("lock") = error;
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

/// The pause before retrying a failed list or watch: 0.8 s doubling to
/// 30 s, each scaled by a random factor in [0.5, 1) so that the nodes of
/// a cluster do not all relist at once after an API server outage (the
/// shape of kube-rs's default watcher backoff).
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let full = Duration::from_millis(800)
            .saturating_mul(1 << self.failures.min(6))
            .min(Duration::from_secs(30));
        self.failures = self.failures.saturating_add(1);
        // A randomly keyed hasher: random enough for jitter, no RNG crate.
        let random = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(self.failures);
            h.finish()
        };
        full.mul_f64(0.5 + (random >> 11) as f64 / (1u64 << 53) as f64 / 2.0)
    }
}

/// Keeps one store equal to the API's objects of one kind: list, then
/// watch from the list's resourceVersion with bookmarks; a watch that ends
/// is resumed from the last resourceVersion seen; 410 Gone means relist.
/// Failures are retried with [`Backoff`] while the last state stays
/// enforced.
async fn feed<K, Key, T, M, S>(api: Api<K>, kind: &'static str, shared: Arc<Shared>, store: S)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K: Trim<Key, T>,
    Key: Ord + std::hash::Hash + Clone + Send + 'static,
    T: Send + Sync + 'static,
    M: MapKey<Key, T> + Send + 'static,
    S: Fn(&Shared) -> &Store<Key, T, M> + Copy + Send + 'static,
{
    let mut backoff = Backoff::default();
    let pause = |shared: &Shared, backoff: &mut Backoff, error: String| {
        let delay = backoff.next_delay();
        warn!(kind, %error, retry_in_ms = delay.as_millis() as u64, "watch failed; the last state stays enforced");
        shared.set_watch_error(kind, Some(error));
        delay
    };
    let client = api.clone().into_client();
    'list: loop {
        // Paged, and each item trimmed as it is parsed: a 100k-pod list as
        // API objects is about 1 GiB; trimmed, a tenth of that.
        let mut items = BTreeMap::new();
        let mut params = ListParams::default().limit(LIST_PAGE);
        let mut version: String;
        loop {
            let sh = shared.clone();
            let trim = move |obj: &K| store(&sh).trim(obj);
            let meta =
                match list::list_page(&client, api.resource_url(), &params, items, trim).await {
                    Ok((page, meta)) => {
                        items = page;
                        meta
                    }
                    Err(e) => {
                        tokio::time::sleep(pause(&shared, &mut backoff, e.to_string())).await;
                        continue 'list;
                    }
                };
            version = meta.resource_version.clone().unwrap_or_default();
            match meta.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        store(&shared).replace_trimmed(items, parse_rv(Some(&version)).unwrap_or(0));
        shared.set_watch_error(kind, None);
        backoff = Backoff::default();
        shared.mark_changed();
        loop {
            // Bookmarks are on by default in WatchParams.
            let params = WatchParams::default().timeout(290);
            let stream = match api.watch(&params, &version).await {
                Ok(stream) => stream,
                Err(kube::Error::Api(status)) if status.code == 410 => continue 'list,
                Err(e) => {
                    tokio::time::sleep(pause(&shared, &mut backoff, e.to_string())).await;
                    continue;
                }
            };
            shared.set_watch_error(kind, None);
            let mut stream = std::pin::pin!(stream);
            let mut failed = None;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(WatchEvent::Added(obj) | WatchEvent::Modified(obj)) => {
                        version = obj.meta().resource_version.clone().unwrap_or(version);
                        store(&shared).upsert(&obj);
                        shared.mark_changed();
                    }
                    Ok(WatchEvent::Deleted(obj)) => {
                        version = obj.meta().resource_version.clone().unwrap_or(version);
                        store(&shared).remove(&obj);
                        shared.mark_changed();
                    }
                    Ok(WatchEvent::Bookmark(b)) => {
                        version = b.metadata.resource_version;
                        if let Some(rv) = parse_rv(Some(&version)) {
                            store(&shared).advance(rv);
                            shared.progress();
                        }
                    }
                    Ok(WatchEvent::Error(status)) if status.code == 410 => {
                        info!(kind, "watch history expired (410); relisting");
                        continue 'list;
                    }
                    Ok(WatchEvent::Error(status)) => {
                        failed = Some(format!("{} ({})", status.message, status.code));
                        break;
                    }
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            if let Some(error) = failed {
                tokio::time::sleep(pause(&shared, &mut backoff, error)).await;
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

/// Runs the controller until SIGTERM or SIGINT.
pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let shared = Arc::new(Shared::default());
    shared.record_node_check(node::check(cfg.netns.as_deref()));
    let syncer = match &cfg.netlink {
        Some(at) => {
            let socket = Netlink::open(at.netns.as_deref()).map_err(|e| {
                anyhow::anyhow!(
                    "{e} (the socket incremental changes go over; --changes-via=nft sends them through nft instead)"
                )
            })?;
            info!(
                "incremental changes go over nftpol's nf_tables netlink socket; full replacements of the table through nft"
            );
            Syncer::new(
                NetlinkDiffs::new(socket, cfg.nft.clone()),
                cfg.table.clone(),
            )
        }
        None => Syncer::new(cfg.nft.clone(), cfg.table.clone()),
    };
    let stale_flows = match flows::StaleFlows::open(cfg.netns.as_deref()) {
        Ok(flows) => Some(flows),
        Err(e) => {
            error!(error = %e, "cannot open a conntrack socket: the flows of pods that go away are NOT deleted");
            None
        }
    };
    let client = client(cfg.kubeconfig.as_ref()).await?;

    tokio::spawn(feed(
        Api::<Pod>::all(client.clone()),
        PODS,
        shared.clone(),
        |s| &s.stores.pods,
    ));
    tokio::spawn(feed(
        Api::<Namespace>::all(client.clone()),
        NAMESPACES,
        shared.clone(),
        |s| &s.stores.namespaces,
    ));
    tokio::spawn(feed(
        Api::<NetworkPolicy>::all(client.clone()),
        POLICIES,
        shared.clone(),
        |s| &s.stores.policies,
    ));

    let listener = tokio::net::TcpListener::bind(cfg.metrics_addr).await?;
    info!(addr = %listener.local_addr()?, "serving /healthz, /readyz, /metrics, /status");
    tokio::spawn(http::serve(listener, shared.clone()));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let events = events::EventWriter::new(client.clone(), cfg.node_name.clone());
    let reconciler = tokio::spawn(reconcile::run(
        cfg.clone(),
        syncer,
        stale_flows,
        shared.clone(),
        Some(events),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_0_8_s_to_30_s_with_jitter_below_each_step() {
        let mut backoff = Backoff::default();
        let steps = [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0, 30.0];
        for full in steps {
            let delay = backoff.next_delay().as_secs_f64();
            assert!(
                delay >= full / 2.0 && delay < full,
                "{delay} s not in [{}, {full})",
                full / 2.0
            );
        }
    }
}
