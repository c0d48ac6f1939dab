//! Plan → nftables, applied atomically.
//!
//! [`render`] turns a plan into a [`Ruleset`] (plain values); [`Syncer`]
//! sends it to the kernel: the first sync replaces the table in one
//! transaction, later syncs send only the difference against the ruleset
//! last applied (kept in memory, never read back). A failed transaction
//! changes nothing and makes the next sync a full one.

pub mod eval;
pub mod exec;
pub mod guard;
pub mod json;
pub mod model;
pub mod netlink;
pub mod ops;
pub mod region;
pub mod render;
pub mod text;

use std::time::{Duration, Instant};

pub use exec::{Nft, NftError};
pub use model::{Ruleset, Stats};
pub use netlink::Netlink;
pub use render::{DEFAULT_TABLE, render};
pub use text::to_text;

/// What one sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// The whole table was replaced (first sync, or after a failure).
    pub full: bool,
    /// Commands sent (0: nothing changed, nft not run).
    pub commands: usize,
    /// How the transaction reached the kernel.
    pub via: Via,
    pub elapsed: Duration,
    pub stats: Stats,
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
    /// A diff over nftpol's netlink socket.
    Netlink,
}

/// Keeps the kernel's copy of one table equal to the wanted ruleset.
#[derive(Debug)]
pub struct Syncer {
    nft: Nft,
    /// Where diffs go when set; else through `nft`.
    netlink: Option<Netlink>,
    table: String,
    applied: Option<Ruleset>,
}

impl Syncer {
    pub fn new(nft: Nft, table: impl Into<String>) -> Self {
        Self {
            nft,
            netlink: None,
            table: table.into(),
            applied: None,
        }
    }

    /// Sends diffs over `netlink` (one round trip, no process) instead of
    /// through `nft`; full replacements still go through `nft`.
    pub fn with_netlink(mut self, netlink: Netlink) -> Self {
        self.netlink = Some(netlink);
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// What the table holds since the last successful sync, if known.
    pub fn applied(&self) -> Option<&Ruleset> {
        self.applied.as_ref()
    }

    /// The next sync replaces the whole table (periodic resync).
    pub fn force_full(&mut self) {
        self.applied = None;
    }

    /// Makes the kernel hold `want`, in one transaction.
    pub fn sync(&mut self, want: Ruleset) -> Result<SyncReport, NftError> {
        assert_eq!(want.table, self.table, "ruleset rendered for another table");
        let start = Instant::now();
        let stats = want.stats();
        let (ops, full, after) = match self.applied.as_ref().and_then(|old| ops::diff(old, &want)) {
            Some(change) => (change.ops, false, change.applied),
            None => (ops::full(&want), true, want),
        };
        // A full replacement goes as nft text, which nft 1.0.6 parses
        // faster than the same table as JSON (BENCHMARKS.md); a diff over
        // netlink when there is a socket (`netlink::carries` holds for
        // every diff `ops::diff` makes), else as JSON.
        let via = if ops.is_empty() {
            Via::Nothing
        } else if full {
            Via::NftText
        } else if self.netlink.is_some() && netlink::carries(&ops) {
            Via::Netlink
        } else {
            Via::NftJson
        };
        let applied = match via {
            Via::Nothing => Ok(()),
            Via::NftText => self
                .nft
                .run(&["-f", "-"], Some(to_text(&after).as_bytes()))
                .map(|_| ()),
            Via::NftJson => self.nft.apply_ops(&self.table, &ops),
            Via::Netlink => self.netlink.as_mut().expect("checked").apply(&after, &ops),
        };
        if let Err(e) = applied {
            // Unknown kernel state: start over with a full replacement.
            self.applied = None;
            return Err(e);
        }
        self.applied = Some(after);
        Ok(SyncReport {
            full,
            commands: ops.len(),
            via,
            elapsed: start.elapsed(),
            stats,
        })
    }

    /// Removes the table (if present) and forgets what was applied.
    pub fn cleanup(&mut self) -> Result<(), NftError> {
        self.applied = None;
        let doc = json::batch(&self.table, &ops::remove_table());
        self.nft.apply_json(&self.table, &doc)
    }
}
