//! The [`Syncer`]: the one reconcile step from a wanted ruleset to the
//! kernel, full or as a diff, with the record of what was applied.

use std::time::{Duration, Instant};

use super::model::{Ruleset, Stats};
use super::ops;
use super::transport::{NftError, Transport, Via};

/// What one sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// The whole table was replaced (first sync, periodic resync, or after
    /// a failure).
    pub full: bool,
    /// Commands sent (0: nothing changed, nothing sent).
    pub commands: usize,
    /// How the transaction reached the kernel.
    pub via: Via,
    pub elapsed: Duration,
    pub stats: Stats,
    /// A full replacement was tried first and failed with this error; the
    /// change went as a diff against what was applied before (which the
    /// failed transaction left in place).
    pub full_failed: Option<String>,
}

/// Backoff after a failed transaction: 1 s after the first, doubling up
/// to a minute.
pub fn retry_delay(failures: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << failures.min(7))).min(Duration::from_secs(60))
}

/// Keeps the kernel's copy of one table equal to the wanted ruleset.
///
/// Both go through one [`Transport`], a transaction each. A failed full
/// replacement changes nothing (a transaction happens whole or not at
/// all), so the record of what was applied
/// still holds: changes keep going as diffs against it while the full
/// replacement is retried with backoff ([`full_failing`](Self::full_failing)
/// says so meanwhile). A failed diff makes the next sync a full one: the
/// kernel may not hold what the record says.
#[derive(Debug)]
pub struct Syncer {
    transport: Box<dyn Transport>,
    table: String,
    applied: Option<Ruleset>,
    full: FullReplacement,
}

/// Whether a full replacement is wanted, and how its attempts went.
#[derive(Debug, Default)]
struct FullReplacement {
    wanted: bool,
    /// Failed attempts since the last success.
    failures: u32,
    /// Not tried again before this (backoff after a failure).
    not_before: Option<Instant>,
    last_error: Option<String>,
}

impl Syncer {
    /// Keeps `table` through `transport`: an [`Nft`](super::Nft) sends
    /// everything through `nft`, a [`NetlinkDiffs`](super::NetlinkDiffs)
    /// sends diffs over netlink.
    pub fn new(transport: impl Transport + 'static, table: impl Into<String>) -> Self {
        Self {
            transport: Box::new(transport),
            table: table.into(),
            applied: None,
            full: FullReplacement::default(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// What the table holds since the last successful sync, if known.
    pub fn applied(&self) -> Option<&Ruleset> {
        self.applied.as_ref()
    }

    /// The next sync replaces the whole table (periodic resync), whatever
    /// the backoff of earlier failed attempts says.
    pub fn force_full(&mut self) {
        self.full.wanted = true;
        self.full.not_before = None;
    }

    /// A full replacement is wanted and its last attempt failed (the
    /// error): the table follows changes, but drift (a chain emptied by
    /// hand) is not repaired until one succeeds.
    pub fn full_failing(&self) -> Option<&str> {
        self.full
            .wanted
            .then_some(self.full.last_error.as_deref())
            .flatten()
    }

    /// When the wanted full replacement is tried again, if one is wanted
    /// and waits for its backoff.
    pub fn full_retry_at(&self) -> Option<Instant> {
        self.full.not_before.filter(|_| self.full.wanted)
    }

    /// Makes the kernel hold `want`, in one transaction.
    pub fn sync(&mut self, want: Ruleset) -> Result<SyncReport, NftError> {
        assert_eq!(want.table, self.table, "ruleset rendered for another table");
        let start = Instant::now();
        let stats = want.stats();
        let full_due = self.full.wanted && self.full.not_before.is_none_or(|t| start >= t);
        let mut diff = match &self.applied {
            Some(old) if !full_due => ops::diff(old, &want),
            _ => None,
        };
        let mut full_failed = None;
        if diff.is_none() {
            let commands = ops::full(&want).len();
            match self.transport.replace(&want) {
                Ok(via) => {
                    self.applied = Some(want);
                    self.full = FullReplacement::default();
                    return Ok(SyncReport {
                        full: true,
                        commands,
                        via,
                        elapsed: start.elapsed(),
                        stats,
                        full_failed: None,
                    });
                }
                Err(e) => {
                    let full = &mut self.full;
                    full.wanted = true;
                    full.failures += 1;
                    full.not_before = Some(Instant::now() + retry_delay(full.failures));
                    full.last_error = Some(e.to_string());
                    // Nothing changed in the kernel: what was applied
                    // before still holds, and a diff against it carries
                    // the change meanwhile.
                    diff = self.applied.as_ref().and_then(|old| ops::diff(old, &want));
                    if diff.is_none() {
                        return Err(e);
                    }
                    full_failed = Some(e.to_string());
                }
            }
        }
        let change = diff.expect("a diff, or returned above");
        let ops = change.ops;
        let via = if ops.is_empty() {
            Via::Nothing
        } else {
            match self.transport.apply(&change.applied, &ops) {
                Ok(via) => via,
                Err(e) => {
                    // Unknown kernel state: start over with a full replacement.
                    self.applied = None;
                    self.full.wanted = true;
                    return Err(e);
                }
            }
        };
        self.applied = Some(change.applied);
        Ok(SyncReport {
            full: false,
            commands: ops.len(),
            via,
            elapsed: start.elapsed(),
            stats,
            full_failed,
        })
    }

    /// Removes the table (if present) and forgets what was applied.
    pub fn cleanup(&mut self) -> Result<(), NftError> {
        self.applied = None;
        self.full.wanted = true;
        self.transport.delete_table(&self.table)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::IpAddr;
    use std::sync::Arc;

    use super::*;
    use crate::compiler::plan::{
        Direction, Match, ObjectKey, Plan, PodChain, PolicyChain, PolicyId, PortMatch, Protocol,
    };
    use crate::nft::model::{Elem, KeyType, NftSet};
    use crate::nft::render::{pod_chain_name, render};
    use crate::nft::transport::fake::{FakeKernel, Kind};

    fn syncer() -> (Syncer, FakeKernel) {
        let kernel = FakeKernel::default();
        (Syncer::new(kernel.clone(), "t"), kernel)
    }

    /// A table with one set holding 10.0.0.1 .. 10.0.0.n.
    fn table_with(n: u8) -> Ruleset {
        let elements = (1..=n)
            .map(|i| Elem::Addr(IpAddr::from([10, 0, 0, i])))
            .collect();
        Ruleset {
            table: "t".into(),
            sets: BTreeMap::from([(
                "allowed".to_string(),
                NftSet {
                    key: KeyType::Ipv4,
                    interval: false,
                    comment: String::new(),
                    elements: Arc::new(elements),
                    region: None,
                },
            )]),
            maps: BTreeMap::new(),
            chains: BTreeMap::new(),
        }
    }

    /// The rendered table of a node whose pods `10.0.0.{first..=last}` are
    /// isolated for ingress by one policy that allows TCP 80 from anywhere:
    /// each pod brings a chain, its sets and dispatch entries.
    fn pods(first: u8, last: u8) -> Ruleset {
        let policy = ObjectKey::new("ns", "web");
        let id = PolicyId {
            policy: policy.clone(),
            direction: Direction::Ingress,
        };
        let mut plan = Plan::default();
        plan.policies.insert(
            id.clone(),
            PolicyChain {
                id,
                matches: vec![Match {
                    rule: 0,
                    peer: None,
                    ports: PortMatch::Ports(Protocol::Tcp, vec![(80, 80)]),
                }],
            },
        );
        for i in first..=last {
            plan.pods.push(PodChain {
                pod: ObjectKey::new("ns", format!("pod-{i}")),
                direction: Direction::Ingress,
                ips: vec![IpAddr::from([10, 0, 0, i])],
                policies: vec![policy.clone()],
            });
        }
        render(&plan, "t")
    }

    #[test]
    fn the_first_sync_replaces_the_whole_table() {
        let (mut s, kernel) = syncer();
        let r = s.sync(pods(1, 2)).unwrap();
        assert_eq!((r.full, r.via), (true, Via::NftText));
        assert_eq!(r.commands, ops::full(&pods(1, 2)).len());
        assert_eq!(kernel.table("t"), Some(pods(1, 2)));
        assert_eq!(s.applied(), Some(&pods(1, 2)));
        assert_eq!(kernel.count(Kind::Full), 1);
        assert_eq!(kernel.count(Kind::Diff), 0);
    }

    #[test]
    fn later_syncs_send_only_the_difference_and_the_kernel_holds_what_was_wanted() {
        let (mut s, kernel) = syncer();
        s.sync(pods(1, 2)).unwrap();
        // Pods join (chains, sets, rules, dispatch entries appear), then
        // one leaves (its chain is emptied, unhooked and deleted).
        for want in [pods(1, 4), pods(2, 4), pods(3, 3)] {
            let r = s.sync(want.clone()).unwrap();
            assert_eq!((r.full, r.via), (false, Via::Netlink), "{r:?}");
            let sent = kernel.sent().pop().unwrap();
            assert_eq!((sent.kind, sent.applied), (Kind::Diff, true));
            assert_eq!(r.commands, sent.ops.len());
            assert!(r.commands < ops::full(&want).len());
            assert_eq!(kernel.table("t").as_ref(), Some(&want));
            assert_eq!(s.applied(), Some(&want));
        }
        assert_eq!(kernel.count(Kind::Full), 1);
    }

    #[test]
    fn nothing_to_send_sends_nothing() {
        let (mut s, kernel) = syncer();
        s.sync(pods(1, 2)).unwrap();
        let r = s.sync(pods(1, 2)).unwrap();
        assert_eq!((r.full, r.via, r.commands), (false, Via::Nothing, 0));
        assert_eq!(kernel.sent().len(), 1, "only the first sync sent anything");
    }

    #[test]
    fn force_full_replaces_the_table_and_repairs_what_was_changed_by_hand() {
        let (mut s, kernel) = syncer();
        s.sync(pods(1, 2)).unwrap();
        let chain = pod_chain_name(Direction::Ingress, &ObjectKey::new("ns", "pod-1"));
        kernel.tamper("t", |rs| rs.chains.get_mut(&chain).unwrap().rules.clear());
        // The record is not read back: a diff does not see the drift.
        assert_eq!(s.sync(pods(1, 2)).unwrap().via, Via::Nothing);
        assert_ne!(kernel.table("t"), Some(pods(1, 2)));
        s.force_full();
        let r = s.sync(pods(1, 2)).unwrap();
        assert_eq!((r.full, r.via), (true, Via::NftText));
        assert_eq!(kernel.table("t"), Some(pods(1, 2)));
        // And only once.
        assert!(!s.sync(pods(1, 3)).unwrap().full);
    }

    #[test]
    fn a_failed_diff_makes_the_next_sync_a_full_one() {
        let (mut s, kernel) = syncer();
        s.sync(pods(1, 1)).unwrap();
        kernel.refuse_diffs(1);
        assert!(s.sync(pods(1, 2)).is_err());
        assert_eq!(s.applied(), None, "the kernel may differ from the record");
        assert_eq!(
            kernel.table("t"),
            Some(pods(1, 1)),
            "a refused diff changes nothing"
        );
        let r = s.sync(pods(1, 2)).unwrap();
        assert_eq!((r.full, r.via), (true, Via::NftText));
        assert_eq!(kernel.table("t"), Some(pods(1, 2)));
        assert_eq!(kernel.count(Kind::Full), 2);
    }

    #[test]
    fn a_failed_full_replacement_keeps_the_record_and_changes_go_as_diffs() {
        let (mut s, kernel) = syncer();
        assert!(s.sync(table_with(1)).unwrap().full);
        assert_eq!(s.full_failing(), None);

        // The periodic resync wants a full replacement; the kernel refuses it.
        kernel.refuse_full(usize::MAX);
        s.force_full();
        let r = s.sync(table_with(2)).expect("the change goes as a diff");
        assert!(!r.full);
        assert_eq!(r.via, Via::Netlink);
        assert!(r.full_failed.as_deref().unwrap().contains("out of memory"));
        assert_eq!(s.applied(), Some(&table_with(2)));
        assert_eq!(kernel.table("t"), Some(table_with(2)));
        assert!(s.full_failing().unwrap().contains("out of memory"));
        let tries = kernel.count(Kind::Full);

        // Before the backoff ends, changes go as diffs without trying a
        // full replacement.
        let retry = s.full_retry_at().expect("a retry is scheduled");
        assert!(retry > Instant::now() + Duration::from_millis(500));
        let r = s.sync(table_with(3)).unwrap();
        assert_eq!((r.full, r.via, r.full_failed), (false, Via::Netlink, None));
        assert_eq!(
            kernel.count(Kind::Full),
            tries,
            "no full replacement is tried before the backoff ends"
        );
        assert!(s.full_failing().is_some(), "still degraded");
        assert_eq!(kernel.count(Kind::Diff), 2);
        assert_eq!(kernel.table("t"), Some(table_with(3)));

        // The kernel takes it again: the next resync replaces the table and
        // all is well.
        kernel.refuse_full(0);
        s.force_full();
        let r = s.sync(table_with(3)).unwrap();
        assert!(r.full);
        assert_eq!(r.via, Via::NftText);
        assert_eq!(s.full_failing(), None);
        assert_eq!(s.full_retry_at(), None);
    }

    #[test]
    fn a_failing_full_replacement_is_retried_with_growing_backoff() {
        let (mut s, kernel) = syncer();
        s.sync(table_with(1)).unwrap();
        kernel.refuse_full(usize::MAX);
        s.force_full();
        s.sync(table_with(1)).unwrap();
        let first = s.full_retry_at().unwrap() - Instant::now();
        // Due again: a sync past the backoff tries again, and fails again.
        s.full.not_before = Some(Instant::now());
        let tries = kernel.count(Kind::Full);
        let r = s.sync(table_with(1)).unwrap();
        assert_eq!(kernel.count(Kind::Full), tries + 1);
        assert!(r.full_failed.is_some());
        let second = s.full_retry_at().unwrap() - Instant::now();
        assert!(second > first, "{second:?} should be longer than {first:?}");
    }

    #[test]
    fn without_a_record_a_failed_full_replacement_is_an_error() {
        let (mut s, kernel) = syncer();
        kernel.refuse_full(1);
        let e = s.sync(table_with(1)).unwrap_err();
        assert!(e.to_string().contains("out of memory"), "{e}");
        assert!(s.full_failing().is_some());
        assert_eq!(kernel.table("t"), None);
        assert!(s.sync(table_with(1)).unwrap().full);
        assert_eq!(s.full_failing(), None);
        assert_eq!(kernel.table("t"), Some(table_with(1)));
    }

    #[test]
    fn cleanup_removes_the_table_and_the_next_sync_is_a_full_one() {
        let (mut s, kernel) = syncer();
        s.sync(pods(1, 2)).unwrap();
        s.cleanup().unwrap();
        assert_eq!(kernel.table("t"), None);
        assert_eq!(s.applied(), None);
        let r = s.sync(pods(1, 2)).unwrap();
        assert_eq!((r.full, r.via), (true, Via::NftText));
        assert_eq!(kernel.table("t"), Some(pods(1, 2)));
    }
}
