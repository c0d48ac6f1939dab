//! The one reconcile function: it serves the first full sync and every
//! later one. It feeds the changed objects to the incremental compiler,
//! compiles the whole plan, and the Syncer sends only the difference
//! against what it last applied. The compiler is rebuilt from all objects
//! at the first sync, after a relist and at every periodic full resync.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::sleep_until;
use tracing::{error, info, warn};

use super::events::{EventWriter, Warning};
use super::flows::{Forgotten, StaleFlows, address_owners, changed_hands};
use super::guard::{GuardReport, PortGuard};
use super::metrics::{SyncKind, SyncLabels};
use super::{Delta, RunConfig, Shared, Stores};
use crate::compiler::{Compiled, Diagnostic, Incremental, ObjectKey, Severity};
use crate::conntrack::ConntrackError;
use crate::nft::{self, NftError, SyncReport, Syncer, retry_delay};

pub async fn run(
    cfg: RunConfig,
    syncer: Syncer,
    stale_flows: Option<StaleFlows>,
    shared: Arc<Shared>,
    events: Option<EventWriter>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next_resync = Instant::now() + cfg.resync_period;
    let mut last_start: Option<Instant> = None;
    let mut failures: u32 = 0;
    let mut retry_at: Option<Instant> = None;
    let mut reported: HashSet<(String, i64)> = HashSet::new();
    let mut logged_sync_wait = false;
    let guard = if cfg.pod_bridges.is_empty() {
        warn!("no pod bridges (--pod-bridges): no port guard; a pod can forge another's address");
        None
    } else {
        info!(bridges = ?cfg.pod_bridges, "port guard on the ports of the pod bridges (table bridge {})", cfg.table);
        Some(PortGuard::new(
            cfg.pod_bridges.clone(),
            cfg.netns.clone(),
            cfg.nft.clone(),
            &cfg.table,
        ))
    };
    let mut pipeline = Pipeline {
        compiler: None,
        renderer: nft::render::Renderer::default(),
        syncer,
        guard,
        stale_flows,
    };
    // Local pod addresses no port carries yet: looked for again, backing
    // off, by the guard alone (no compilation).
    let mut unbound = Unbound::default();

    loop {
        let mut full = false;
        tokio::select! {
            _ = shared.changed.notified() => {}
            _ = sleep_until(next_resync.into()) => full = true,
            _ = async { match retry_at { Some(t) => sleep_until(t.into()).await, None => std::future::pending().await } } => {}
            _ = async { match unbound.retry_at { Some(t) => sleep_until(t.into()).await, None => std::future::pending().await } } => {
                if let Some(mut port_guard) = pipeline.guard.take() {
                    let (port_guard, report) = tokio::task::spawn_blocking(move || {
                        let report = port_guard.retry();
                        (port_guard, report)
                    })
                    .await
                    .expect("the guard does not panic");
                    pipeline.guard = Some(port_guard);
                    unbound.record(&shared, report);
                }
                continue;
            }
            _ = stop.changed() => return,
        }
        if full {
            next_resync = Instant::now() + cfg.resync_period;
            let netns = cfg.netns.clone();
            let check = tokio::task::spawn_blocking(move || super::node::check(netns.as_deref()))
                .await
                .expect("the node check does not panic");
            shared.record_node_check(check);
        }
        retry_at = None;
        if !shared.stores.synced() {
            if !logged_sync_wait {
                info!(
                    "waiting for the first list of pods, namespaces and networkpolicies before applying"
                );
                logged_sync_wait = true;
            }
            continue;
        }
        // Coalesce bursts: at most one sync per minimum interval.
        if let Some(t) = last_start {
            let due = t + cfg.min_sync_interval;
            if Instant::now() < due {
                tokio::select! {
                    _ = sleep_until(due.into()) => {}
                    _ = stop.changed() => return,
                }
            }
        }
        let started = Instant::now();
        last_start = Some(started);
        let pending = shared.begin_sync();
        // Versions before contents: what the compiler gets is at least this new.
        let versions = shared.stores.resource_versions();
        let delta = pipeline.changes(&shared.stores, full);
        let node = cfg.node_name.clone();
        let table = cfg.table.clone();
        // Compile and apply off the async threads: nft is a blocking exec.
        let (returned, outcome) = tokio::task::spawn_blocking(move || {
            let outcome = pipeline.run(delta, &node, &table, full);
            (pipeline, outcome)
        })
        .await
        .expect("sync task does not panic");
        pipeline = returned;
        let Outcome {
            compiled,
            guarded,
            result,
            forgotten,
        } = outcome;
        // A full replacement that keeps failing is retried with backoff,
        // also when nothing changes.
        let full_failing = pipeline.syncer.full_failing().map(str::to_string);
        retry_at = pipeline.syncer.full_retry_at();
        let full_retry_at = retry_at;
        if let Some(report) = guarded {
            unbound.record(&shared, report);
        }
        match forgotten {
            Some(Ok(deleted)) if deleted.addresses > 0 => {
                shared
                    .metrics
                    .conntrack_entries_deleted
                    .inc_by(deleted.entries as u64);
                info!(
                    addresses = deleted.addresses,
                    entries = deleted.entries,
                    "deleted the conntrack entries of pod addresses that changed owner or were released"
                );
            }
            Some(Err(e)) => {
                error!(error = %e, "could not delete the conntrack entries of pod addresses that changed owner or were released; trying again after the next pod change")
            }
            _ => {}
        }

        report_invalid(
            &shared,
            &compiled.diagnostics,
            events.as_ref(),
            &mut reported,
        );
        for warning in &compiled.warnings {
            warn!("{warning}");
        }
        let isolated: HashSet<&ObjectKey> = compiled.plan.pods.iter().map(|p| &p.pod).collect();
        let metrics = &shared.metrics;
        metrics.isolated_local_pods.set(isolated.len() as i64);
        let invalid: HashSet<&ObjectKey> = compiled.diagnostics.iter().map(|d| &d.policy).collect();
        metrics.invalid_policies.set(invalid.len() as i64);

        metrics
            .enforcement_degraded
            .set(full_failing.is_some() as i64);
        {
            let mut status = shared.status.lock().expect("lock");
            match (&status.degraded, &full_failing) {
                (Some(_), None) => {
                    info!("the table was replaced in full again: enforcement is no longer degraded")
                }
                (None, Some(e)) => {
                    error!(error = %e, "enforcement degraded: the full replacement of the table failed; changes still go to the kernel as diffs against what was applied, drift is not repaired until a full replacement succeeds")
                }
                _ => {}
            }
            status.degraded = full_failing;
        }

        match result {
            Ok(report) => {
                failures = 0;
                if let (Some(e), Some(t)) = (&report.full_failed, full_retry_at) {
                    warn!(error = %e, retry_in_ms = t.saturating_duration_since(Instant::now()).as_millis() as u64, "the full replacement of the table failed; the change went as a diff");
                }
                let kind = if report.full {
                    SyncKind::Full
                } else {
                    SyncKind::Partial
                };
                let elapsed = started.elapsed();
                metrics
                    .sync_duration
                    .get_or_create(&SyncLabels { kind: kind.clone() })
                    .observe(elapsed.as_secs_f64());
                metrics.syncs.get_or_create(&SyncLabels { kind }).inc();
                if let Some(since) = pending {
                    metrics
                        .change_to_enforced
                        .observe(since.elapsed().as_secs_f64());
                }
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                metrics.last_successful_sync.set(now.as_secs_f64());
                metrics.chains.set(report.stats.chains as i64);
                metrics.rules.set(report.stats.rules as i64);
                metrics
                    .set_elements
                    .set((report.stats.set_elements + report.stats.map_elements) as i64);
                let mut status = shared.status.lock().expect("lock");
                status.in_flight = false;
                status.advance(&versions);
                status.syncs += 1;
                status.full_syncs += report.full as u64;
                status.last_error = None;
                status.chains = report.stats.chains;
                status.rules = report.stats.rules;
                status.set_elements = report.stats.set_elements + report.stats.map_elements;
                drop(status);
                if report.full {
                    info!(
                        chains = report.stats.chains,
                        rules = report.stats.rules,
                        set_elements = report.stats.set_elements,
                        isolated_pods = isolated.len(),
                        elapsed_ms = elapsed.as_secs_f64() * 1e3,
                        "replaced table inet {} in one transaction",
                        cfg.table
                    );
                } else if report.commands > 0 {
                    tracing::debug!(
                        commands = report.commands,
                        via = ?report.via,
                        elapsed_ms = elapsed.as_secs_f64() * 1e3,
                        "applied changes"
                    );
                }
            }
            Err(e) => {
                failures += 1;
                let delay = retry_delay(failures);
                error!(error = %e, retry_in_ms = delay.as_millis() as u64, "sync failed; the kernel keeps its previous rules; the next sync replaces the whole table");
                metrics.failed_syncs.inc();
                let mut status = shared.status.lock().expect("lock");
                status.in_flight = false;
                status.failed_syncs += 1;
                status.last_error = Some(e.to_string());
                drop(status);
                // The changes of this batch are still pending.
                shared
                    .pending_since
                    .lock()
                    .expect("lock")
                    .get_or_insert(pending.unwrap_or(started));
                let next = Instant::now() + delay;
                retry_at = Some(retry_at.map_or(next, |t| t.min(next)));
            }
        }
    }
}

/// What a sync runs through: changes → compiler → plan → port guard,
/// renderer → syncer, then the flows of addresses that changed hands.
/// Owned by the reconcile loop, moved into each sync's blocking task and
/// back.
struct Pipeline {
    /// Rebuilt from all objects at the first sync, after a relist and at
    /// every periodic full resync.
    compiler: Option<Incremental>,
    /// Reuses the allow-lists of pods whose inputs did not change.
    renderer: nft::render::Renderer,
    syncer: Syncer,
    guard: Option<PortGuard>,
    stale_flows: Option<StaleFlows>,
}

/// What one pass through the [`Pipeline`] gave.
struct Outcome {
    compiled: Compiled,
    /// The port guard's sync, when there is a guard.
    guarded: Option<Result<GuardReport, String>>,
    result: Result<SyncReport, NftError>,
    /// The deletion of stale flows, after a successful sync.
    forgotten: Option<Result<Forgotten, ConntrackError>>,
}

impl Pipeline {
    /// What the next [`run`](Self::run) feeds the compiler: the stores'
    /// changes, or everything when `full` (a periodic resync: the table is
    /// replaced and the compiler rebuilt, so no drift outlives it), when
    /// there is no compiler yet, or after a relist.
    fn changes(&mut self, stores: &Stores, full: bool) -> Delta {
        let delta = stores.take_changes();
        if full {
            self.syncer.force_full();
        }
        if full || self.compiler.is_none() || !delta.is_partial() {
            stores.mark_all_changed();
            return stores.take_changes();
        }
        delta
    }

    /// Feeds `delta` to the compiler, compiles `node`'s plan, updates the
    /// port guard, renders `table` and syncs it (`full`: the guard in full
    /// too), then deletes the flows of addresses that changed hands.
    /// Blocking.
    fn run(&mut self, delta: Delta, node: &str, table: &str, full: bool) -> Outcome {
        // Whose addresses are whose: a rebuilt compiler is compared
        // with the one it replaces; a kept one knows what moved.
        let before = match &self.compiler {
            Some(old) if !delta.is_partial() => Some(address_owners(old)),
            _ => None,
        };
        let first = self.compiler.is_none();
        let applied = delta.apply(self.compiler.take(), node);
        let compiler = self.compiler.insert(applied);
        let compiled = compiler.compile();
        let moved = compiler.take_moved_addresses();
        let moved = match before {
            Some(before) => changed_hands(&before, &address_owners(compiler)),
            None if first => BTreeSet::new(),
            None => moved,
        };
        // Ports first: a pod that just got its address can send once
        // both tables have it.
        let guarded = self
            .guard
            .as_mut()
            .map(|guard| guard.sync(&compiled.plan, full));
        let ruleset = self.renderer.render(&compiled.plan, table);
        // On a thread of its own: the batch document of a full sync is
        // large and short-lived (~70 MiB for 180k set elements), and
        // glibc gives back an arena that holds only freed memory, while
        // the pool thread's arena, which also holds the long-lived
        // compiler and ruleset, would keep it (100k pods: 205 MiB RSS
        // after the first sync instead of 137 MiB).
        let syncer = &mut self.syncer;
        let result = std::thread::scope(|scope| {
            let sync = scope.spawn(|| syncer.sync(ruleset));
            sync.join().expect("the sync thread does not panic")
        });
        // Flows of addresses that changed hands go once the rules of
        // their new owner (or none) are in place.
        let forgotten = match (&result, self.stale_flows.as_mut()) {
            (Ok(_), Some(flows)) => Some(flows.after_sync(moved)),
            _ => None,
        };
        Outcome {
            compiled,
            guarded,
            result,
            forgotten,
        }
    }
}

/// The port guard's last outcome, and when to look at the ports again.
#[derive(Default)]
struct Unbound {
    /// Local pod addresses no port carried at the last look.
    addrs: Vec<IpAddr>,
    tries: u32,
    retry_at: Option<Instant>,
}

impl Unbound {
    /// Records a guard sync: errors and unbound addresses are looked at
    /// again with backoff; `/readyz` fails while the guard cannot be updated.
    fn record(&mut self, shared: &Shared, report: Result<GuardReport, String>) {
        let report = match report {
            Ok(report) => report,
            Err(e) => {
                error!(error = %e, "port guard not updated; the kernel keeps the previous one");
                shared.set_guard_error(Some(e));
                self.tries += 1;
                self.retry_at = Some(Instant::now() + retry_delay(self.tries));
                return;
            }
        };
        shared.set_guard_error(None);
        for (addr, ports) in &report.contested {
            warn!(%addr, ?ports, "several ports carry one pod address; it stays bound to the port that had it, if any");
        }
        if report.unbound != self.addrs && !report.unbound.is_empty() {
            let some = &report.unbound[..report.unbound.len().min(8)];
            warn!(count = report.unbound.len(), first = ?some, "pod addresses no port carries yet: those pods send nothing until their port is found");
        }
        if report.unbound.is_empty() {
            self.tries = 0;
            self.retry_at = None;
        } else {
            self.tries += 1;
            self.retry_at = Some(Instant::now() + retry_delay(self.tries));
        }
        self.addrs = report.unbound;
        let mut status = shared.status.lock().expect("lock");
        status.guarded_ports = report.ports;
        status.unbound_addresses = self.addrs.len();
    }
}

/// Logs, and posts one Kubernetes Event per invalid policy generation.
fn report_invalid(
    shared: &Shared,
    diagnostics: &[Diagnostic],
    events: Option<&EventWriter>,
    reported: &mut HashSet<(String, i64)>,
) {
    let mut by_policy: BTreeMap<&ObjectKey, Vec<&Diagnostic>> = BTreeMap::new();
    for d in diagnostics {
        by_policy.entry(&d.policy).or_default().push(d);
    }
    for (key, diags) in by_policy {
        let Some(policy) = shared.stores.policies.get(key) else {
            continue;
        };
        let id = (
            policy.uid().map_or_else(|| key.to_string(), str::to_string),
            policy.generation().unwrap_or(0),
        );
        if !reported.insert(id) {
            continue;
        }
        let lines: Vec<String> = diags
            .iter()
            .map(|d| format!("{}: {}", d.field, d.message))
            .collect();
        for d in &diags {
            match d.severity {
                Severity::Warning => {
                    warn!(policy = %key, field = %d.field, "invalid policy: {}", d.message)
                }
                Severity::Error => {
                    error!(policy = %key, field = %d.field, "invalid policy: {}", d.message)
                }
            }
        }
        let Some(events) = events else { continue };
        let mut note = lines.join("; ");
        if note.len() > 1000 {
            let mut cut = 997;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
            note.push_str("...");
        }
        let warning = Warning {
            reason: "InvalidNetworkPolicy",
            action: "Compile",
            note,
        };
        let reference = policy.object_ref();
        let events = events.clone();
        let key = key.clone();
        tokio::spawn(async move {
            if let Err(e) = events.warn(&reference, &warning).await {
                warn!(policy = %key, error = %e, "could not post the InvalidNetworkPolicy event");
            }
        });
    }
}

/// The reconcile pipeline without root: the stores as the watches fill
/// them, the compiler, the renderer and the Syncer against an in-memory
/// kernel (no port guard, no conntrack).
#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use serde_json::{Value, json};

    use super::*;
    use crate::compiler::Direction;
    use crate::nft::Via;
    use crate::nft::transport::fake::{FakeKernel, Kind};

    const NODE: &str = "node-1";
    const TABLE: &str = "nftpol";

    fn namespace(name: &str) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "resourceVersion": "1"}})).unwrap()
    }

    fn pod(name: &str, ip: &str, app: &str, rv: u64) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": "x", "name": name, "labels": {"app": app},
                         "resourceVersion": rv.to_string()},
            "spec": {"nodeName": NODE, "containers": []},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        }))
        .unwrap()
    }

    fn policy(name: &str, spec: Value, rv: u64) -> NetworkPolicy {
        serde_json::from_value(json!({
            "metadata": {"namespace": "x", "name": name, "resourceVersion": rv.to_string()},
            "spec": spec,
        }))
        .unwrap()
    }

    /// Only ingress to app=b, from app=a on TCP 80.
    fn allow_a_to_b(rv: u64) -> NetworkPolicy {
        policy(
            "b-from-a",
            json!({
                "podSelector": {"matchLabels": {"app": "b"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}],
                             "ports": [{"port": 80}]}],
            }),
            rv,
        )
    }

    /// Stores listed once (x/a and x/b, no policy), a pipeline and the
    /// kernel it writes to.
    struct Node {
        stores: Stores,
        pipeline: Pipeline,
        kernel: FakeKernel,
    }

    impl Node {
        fn new() -> Self {
            let kernel = FakeKernel::default();
            let stores = Stores::default();
            stores.namespaces.replace(&[namespace("x")], 1);
            stores.pods.replace(
                &[
                    pod("a", "10.244.1.10", "a", 1),
                    pod("b", "10.244.1.11", "b", 1),
                ],
                1,
            );
            stores.policies.replace::<NetworkPolicy>(&[], 1);
            let pipeline = Pipeline {
                compiler: None,
                renderer: nft::render::Renderer::default(),
                syncer: Syncer::new(kernel.clone(), TABLE),
                guard: None,
                stale_flows: None,
            };
            Self {
                stores,
                pipeline,
                kernel,
            }
        }

        /// One pass, as the reconcile loop makes it.
        fn sync(&mut self, full: bool) -> Outcome {
            let delta = self.pipeline.changes(&self.stores, full);
            self.pipeline.run(delta, NODE, TABLE, full)
        }

        /// The kernel holds exactly what the Syncer last applied.
        fn assert_kernel_holds_the_record(&self) {
            assert_eq!(
                self.kernel.table(TABLE).as_ref(),
                self.pipeline.syncer.applied(),
                "the kernel's table is what was applied"
            );
        }
    }

    fn isolated(outcome: &Outcome) -> Vec<(String, Direction)> {
        let plan = &outcome.compiled.plan;
        plan.pods
            .iter()
            .map(|p| (p.pod.to_string(), p.direction))
            .collect()
    }

    fn report(outcome: Outcome) -> SyncReport {
        outcome.result.expect("the sync succeeds")
    }

    #[test]
    fn the_first_sync_replaces_the_table_and_a_new_policy_goes_as_a_diff() {
        let mut node = Node::new();
        let first = node.sync(false);
        assert!(isolated(&first).is_empty(), "no policy, nobody isolated");
        let first = report(first);
        assert!(first.full);
        assert_eq!(node.kernel.count(Kind::Full), 1);
        node.assert_kernel_holds_the_record();
        let before = node.kernel.table(TABLE).unwrap();

        node.stores.policies.upsert(&allow_a_to_b(2));
        let second = node.sync(false);
        assert_eq!(
            isolated(&second),
            vec![("x/b".to_string(), Direction::Ingress)]
        );
        let second = report(second);
        assert!(!second.full && second.commands > 0, "{second:?}");
        assert_eq!(
            second.via,
            Via::Netlink,
            "the fake takes diffs as the socket does"
        );
        assert_eq!(
            (node.kernel.count(Kind::Full), node.kernel.count(Kind::Diff)),
            (1, 1)
        );
        node.assert_kernel_holds_the_record();
        assert!(
            node.kernel.table(TABLE).unwrap().chains.len() > before.chains.len(),
            "x/b's chain is in the kernel"
        );

        let idle = report(node.sync(false));
        assert_eq!((idle.full, idle.commands), (false, 0), "nothing changed");
    }

    #[test]
    fn a_refused_diff_keeps_the_change_and_the_next_sync_replaces_the_table() {
        let mut node = Node::new();
        report(node.sync(false));
        let before = node.kernel.table(TABLE).unwrap();

        node.kernel.refuse_diffs(1);
        node.stores.policies.upsert(&allow_a_to_b(2));
        let refused = node.sync(false);
        assert!(refused.result.is_err(), "the kernel refused the diff");
        assert_eq!(
            node.kernel.table(TABLE).unwrap(),
            before,
            "a refused transaction changes nothing"
        );

        // The retry has no new object to feed the compiler: the change is
        // already in it, and the table goes in full.
        let retry = report(node.sync(false));
        assert!(retry.full, "{retry:?}");
        node.assert_kernel_holds_the_record();
        assert_ne!(node.kernel.table(TABLE).unwrap(), before);
    }

    #[test]
    fn a_periodic_full_sync_rebuilds_the_compiler_and_repairs_a_tampered_table() {
        let mut node = Node::new();
        node.stores.policies.upsert(&allow_a_to_b(2));
        report(node.sync(false));
        let wanted = node.kernel.table(TABLE).unwrap();
        node.kernel.tamper(TABLE, |rs| {
            for chain in rs.chains.values_mut().filter(|c| c.hook.is_none()) {
                chain.rules.clear();
            }
        });
        assert_ne!(node.kernel.table(TABLE).unwrap(), wanted);

        // A diff cannot see what was changed by hand.
        let diff = report(node.sync(false));
        assert_eq!(diff.commands, 0);
        assert_ne!(node.kernel.table(TABLE).unwrap(), wanted);

        let resync = node.sync(true);
        assert_eq!(
            isolated(&resync),
            vec![("x/b".to_string(), Direction::Ingress)],
            "the rebuilt compiler has every object"
        );
        assert!(report(resync).full);
        assert_eq!(node.kernel.table(TABLE).unwrap(), wanted, "repaired");
    }

    #[test]
    fn a_relist_that_lost_a_pod_rebuilds_the_compiler_without_it() {
        let mut node = Node::new();
        node.stores.policies.upsert(&allow_a_to_b(2));
        report(node.sync(false));
        // A relist (after a 410) finds x/b gone.
        node.stores
            .pods
            .replace(&[pod("a", "10.244.1.10", "a", 5)], 5);
        let relisted = node.sync(false);
        assert!(isolated(&relisted).is_empty(), "x/b is gone");
        assert!(!report(relisted).full, "the table still goes as a diff");
        node.assert_kernel_holds_the_record();
    }

    #[test]
    fn an_invalid_policy_is_reported_and_isolates_its_pods_allowing_nothing() {
        let mut node = Node::new();
        let broken = policy(
            "broken",
            json!({
                "podSelector": {"matchLabels": {"app": "b"}},
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}],
            }),
            2,
        );
        node.stores.policies.upsert(&broken);
        let outcome = node.sync(false);
        let fields: Vec<&str> = outcome
            .compiled
            .diagnostics
            .iter()
            .map(|d| d.field.as_str())
            .collect();
        assert_eq!(fields, ["spec.ingress[0].from[0].ipBlock.cidr"]);
        assert_eq!(
            isolated(&outcome),
            vec![("x/b".to_string(), Direction::Ingress)],
            "fails closed"
        );
        assert!(
            outcome.compiled.plan.policies.is_empty(),
            "the broken rule allows nothing"
        );
        report(outcome);
        node.assert_kernel_holds_the_record();
    }
}
