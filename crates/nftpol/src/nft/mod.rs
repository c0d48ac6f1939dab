//! Plan → nftables, applied atomically.
//!
//! [`render()`] turns a plan into a [`Ruleset`] (plain values); [`Syncer`]
//! sends it to the kernel: the first sync replaces the table in one
//! transaction, later syncs send only the difference against the ruleset
//! last applied (kept in memory, never read back). A failed transaction
//! changes nothing: after a failed diff the next sync is a full one; after
//! a failed full replacement, diffs continue against the record while the
//! full one is retried with backoff.
//!
//! ```text
//!  Plan ─► render ─► Ruleset ─► Syncer ─► ops::diff / ops::full ─► dyn Transport ─► kernel
//!          (pure)    (values)   (record,   (pure)                  Nft: nft -f text, nft -j JSON
//!                                backoff)                          NetlinkDiffs: diffs over netlink
//! ```
//!
//! Everything but [`transport`] is pure; the [`Syncer`] reaches the kernel
//! only through a [`Transport`], which its unit tests replace with an
//! in-memory kernel.

pub mod guard;
pub mod model;
pub mod ops;
pub mod region;
pub mod render;
mod sync;
pub mod transport;

pub use model::{Ruleset, Stats};
pub use render::{DEFAULT_TABLE, render};
pub use sync::{SyncReport, Syncer, retry_delay};
pub use transport::text::to_text;
pub use transport::{Netlink, NetlinkDiffs, Nft, NftError, Transport, Via};
