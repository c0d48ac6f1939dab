//! Plan → nftables, applied atomically.
//!
//! [`render`] turns a plan into a [`Ruleset`] (plain values); [`Syncer`]
//! sends it to the kernel: the first sync replaces the table in one
//! transaction, later syncs send only the difference against the ruleset
//! last applied (kept in memory, never read back). A failed transaction
//! changes nothing: after a failed diff the next sync is a full one; after
//! a failed full replacement, diffs continue against the record while the
//! full one is retried with backoff.

pub mod guard;
pub mod model;
pub mod ops;
pub mod region;
pub mod render;
pub mod transport;

use std::time::{Duration, Instant};

pub use model::{Ruleset, Stats};
pub use render::{DEFAULT_TABLE, render};
pub use transport::text::to_text;
pub use transport::{Netlink, Nft, NftError};
use transport::{json, netlink};

/// What one sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// The whole table was replaced (first sync, periodic resync, or after
    /// a failure).
    pub full: bool,
    /// Commands sent (0: nothing changed, nft not run).
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

/// The path a transaction took to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Nothing to send.
    Nothing,
    /// The whole table as `nft -f` text.
    NftText,
    /// A diff as an `nft -j` batch.
    NftJson,
    /// A diff over nftpol's netlink socket (or another [`DiffChannel`]).
    Netlink,
}

/// Where diffs go instead of through `nft`: nftpol's netlink socket, or a
/// stand-in in tests.
pub trait DiffChannel: std::fmt::Debug + Send {
    /// Sends `ops`, which turn the table into `after`, as one transaction.
    fn apply(&mut self, after: &Ruleset, ops: &[ops::Op]) -> Result<(), NftError>;
}

impl DiffChannel for Netlink {
    fn apply(&mut self, after: &Ruleset, ops: &[ops::Op]) -> Result<(), NftError> {
        Netlink::apply(self, after, ops)
    }
}

/// Backoff after a failed transaction: 1 s after the first, doubling up
/// to a minute.
pub fn retry_delay(failures: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << failures.min(7))).min(Duration::from_secs(60))
}

/// Keeps the kernel's copy of one table equal to the wanted ruleset.
///
/// A full replacement goes through `nft`, a diff over the [`DiffChannel`]
/// when there is one. A failed full replacement changes nothing (nft
/// loads a file in one transaction), so the record of what was applied
/// still holds: changes keep going as diffs against it while the full
/// replacement is retried with backoff ([`full_failing`](Self::full_failing)
/// says so meanwhile). A failed diff makes the next sync a full one: the
/// kernel may not hold what the record says.
#[derive(Debug)]
pub struct Syncer {
    nft: Nft,
    /// Where diffs go when set; else through `nft`.
    netlink: Option<Box<dyn DiffChannel>>,
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
    pub fn new(nft: Nft, table: impl Into<String>) -> Self {
        Self {
            nft,
            netlink: None,
            table: table.into(),
            applied: None,
            full: FullReplacement::default(),
        }
    }

    /// Sends diffs over `netlink` (one round trip, no process) instead of
    /// through `nft`; full replacements still go through `nft`.
    pub fn with_netlink(self, netlink: Netlink) -> Self {
        self.with_diff_channel(Box::new(netlink))
    }

    /// Sends diffs over `channel` instead of through `nft`.
    pub fn with_diff_channel(mut self, channel: Box<dyn DiffChannel>) -> Self {
        self.netlink = Some(channel);
        self
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
            // A full replacement goes as nft text, which nft 1.0.6 parses
            // faster than the same table as JSON (BENCHMARKS.md).
            let ops = ops::full(&want);
            match self.nft.run(&["-f", "-"], Some(to_text(&want).as_bytes())) {
                Ok(_) => {
                    self.applied = Some(want);
                    self.full = FullReplacement::default();
                    return Ok(SyncReport {
                        full: true,
                        commands: ops.len(),
                        via: Via::NftText,
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
        // A diff goes over netlink when there is a socket
        // (`netlink::carries` holds for every diff `ops::diff` makes),
        // else as JSON.
        let (via, applied) = if ops.is_empty() {
            (Via::Nothing, Ok(()))
        } else if let Some(channel) = self.netlink.as_mut().filter(|_| netlink::carries(&ops)) {
            (Via::Netlink, channel.apply(&change.applied, &ops))
        } else {
            (Via::NftJson, self.nft.apply_ops(&self.table, &ops))
        };
        if let Err(e) = applied {
            // Unknown kernel state: start over with a full replacement.
            self.applied = None;
            self.full.wanted = true;
            return Err(e);
        }
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
        let doc = json::batch(&self.table, &ops::remove_table());
        self.nft.apply_json(&self.table, &doc)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    use super::model::{Elem, KeyType, NftSet};
    use super::*;

    /// A stand-in `nft` (a shell script): counts its runs, and fails while
    /// the file `broken` exists, as nft does when it cannot load a table.
    struct FakeNft {
        dir: PathBuf,
    }

    impl FakeNft {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("nftpol-fake-nft-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self { dir }
        }

        fn nft(&self) -> Nft {
            let script = format!(
                "echo run >> '{0}/runs'; if [ -e '{0}/broken' ]; then echo 'out of memory' >&2; exit 1; fi",
                self.dir.display()
            );
            Nft::with_command(vec!["sh".into(), "-c".into(), script, "nft".into()])
        }

        fn set_broken(&self, broken: bool) {
            let flag = self.dir.join("broken");
            if broken {
                std::fs::write(flag, "").unwrap();
            } else {
                let _ = std::fs::remove_file(flag);
            }
        }

        fn runs(&self) -> usize {
            std::fs::read_to_string(self.dir.join("runs"))
                .map(|s| s.lines().count())
                .unwrap_or(0)
        }
    }

    impl Drop for FakeNft {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A stand-in netlink socket: records what it was sent; fails while
    /// `broken`.
    #[derive(Debug, Default)]
    struct FakeChannel {
        sent: Vec<usize>,
        broken: bool,
    }

    #[derive(Debug, Clone, Default)]
    struct Channel(Arc<Mutex<FakeChannel>>);

    impl DiffChannel for Channel {
        fn apply(&mut self, _: &Ruleset, ops: &[ops::Op]) -> Result<(), NftError> {
            let mut c = self.0.lock().unwrap();
            if c.broken {
                return Err(NftError::Netlink("refused".into()));
            }
            c.sent.push(ops.len());
            Ok(())
        }
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

    use std::net::IpAddr;

    fn syncer(nft: &FakeNft) -> (Syncer, Channel) {
        let channel = Channel::default();
        let s = Syncer::new(nft.nft(), "t").with_diff_channel(Box::new(channel.clone()));
        (s, channel)
    }

    #[test]
    fn a_failed_full_replacement_keeps_the_record_and_changes_go_as_diffs() {
        let nft = FakeNft::new("keeps-record");
        let (mut s, channel) = syncer(&nft);
        assert!(s.sync(table_with(1)).unwrap().full);
        assert_eq!(s.full_failing(), None);

        // The periodic resync wants a full replacement; nft is broken.
        nft.set_broken(true);
        s.force_full();
        let r = s.sync(table_with(2)).expect("the change goes as a diff");
        assert!(!r.full);
        assert_eq!(r.via, Via::Netlink);
        assert!(r.full_failed.as_deref().unwrap().contains("out of memory"));
        assert_eq!(s.applied(), Some(&table_with(2)));
        assert!(s.full_failing().unwrap().contains("out of memory"));
        let runs = nft.runs();

        // Before the backoff ends, changes go as diffs without trying nft.
        let retry = s.full_retry_at().expect("a retry is scheduled");
        assert!(retry > Instant::now() + Duration::from_millis(500));
        let r = s.sync(table_with(3)).unwrap();
        assert_eq!((r.full, r.via, r.full_failed), (false, Via::Netlink, None));
        assert_eq!(
            nft.runs(),
            runs,
            "nft is not tried again before the backoff ends"
        );
        assert!(s.full_failing().is_some(), "still degraded");
        assert_eq!(channel.0.lock().unwrap().sent.len(), 2);

        // nft works again: the next resync replaces the table and all is well.
        nft.set_broken(false);
        s.force_full();
        let r = s.sync(table_with(3)).unwrap();
        assert!(r.full);
        assert_eq!(r.via, Via::NftText);
        assert_eq!(s.full_failing(), None);
        assert_eq!(s.full_retry_at(), None);
    }

    #[test]
    fn a_failing_full_replacement_is_retried_with_growing_backoff() {
        let nft = FakeNft::new("backoff");
        let (mut s, _) = syncer(&nft);
        s.sync(table_with(1)).unwrap();
        nft.set_broken(true);
        s.force_full();
        s.sync(table_with(1)).unwrap();
        let first = s.full_retry_at().unwrap() - Instant::now();
        // Due again: a sync past the backoff tries nft again, and fails again.
        s.full.not_before = Some(Instant::now());
        let runs = nft.runs();
        let r = s.sync(table_with(1)).unwrap();
        assert_eq!(nft.runs(), runs + 1);
        assert!(r.full_failed.is_some());
        let second = s.full_retry_at().unwrap() - Instant::now();
        assert!(second > first, "{second:?} should be longer than {first:?}");
    }

    #[test]
    fn a_failed_diff_makes_the_next_sync_a_full_one() {
        let nft = FakeNft::new("failed-diff");
        let (mut s, channel) = syncer(&nft);
        s.sync(table_with(1)).unwrap();
        channel.0.lock().unwrap().broken = true;
        assert!(s.sync(table_with(2)).is_err());
        assert_eq!(s.applied(), None, "the kernel may differ from the record");
        channel.0.lock().unwrap().broken = false;
        let r = s.sync(table_with(2)).unwrap();
        assert_eq!((r.full, r.via), (true, Via::NftText));
    }

    #[test]
    fn without_a_record_a_failed_full_replacement_is_an_error() {
        let nft = FakeNft::new("no-record");
        let (mut s, _) = syncer(&nft);
        nft.set_broken(true);
        let e = s.sync(table_with(1)).unwrap_err();
        assert!(e.to_string().contains("out of memory"), "{e}");
        assert!(s.full_failing().is_some());
        nft.set_broken(false);
        assert!(s.sync(table_with(1)).unwrap().full);
        assert_eq!(s.full_failing(), None);
    }
}
