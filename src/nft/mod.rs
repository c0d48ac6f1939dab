//! Plan → nftables, applied atomically.
//!
//! [`render`] turns a plan into a [`Ruleset`] (plain values); [`Syncer`]
//! sends it to the kernel: the first sync replaces the table in one
//! transaction, later syncs send only the difference against the ruleset
//! last applied (kept in memory, never read back). A failed transaction
//! changes nothing and makes the next sync a full one.

pub mod eval;
pub mod exec;
pub mod json;
pub mod model;
pub mod ops;
pub mod region;
pub mod render;
pub mod text;

use std::time::{Duration, Instant};

pub use exec::{Nft, NftError};
pub use model::{Ruleset, Stats};
pub use render::{DEFAULT_TABLE, render};
pub use text::to_text;

/// What one sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// The whole table was replaced (first sync, or after a failure).
    pub full: bool,
    /// Commands sent (0: nothing changed, nft not run).
    pub commands: usize,
    pub elapsed: Duration,
    pub stats: Stats,
}

/// Keeps the kernel's copy of one table equal to the wanted ruleset.
#[derive(Debug)]
pub struct Syncer {
    nft: Nft,
    table: String,
    applied: Option<Ruleset>,
}

impl Syncer {
    pub fn new(nft: Nft, table: impl Into<String>) -> Self {
        Self {
            nft,
            table: table.into(),
            applied: None,
        }
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
        // faster than the same table as JSON (BENCHMARKS.md); a diff as JSON.
        let applied = if ops.is_empty() {
            Ok(())
        } else if full {
            self.nft
                .run(&["-f", "-"], Some(to_text(&after).as_bytes()))
                .map(|_| ())
        } else {
            self.nft.apply_ops(&self.table, &ops)
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
