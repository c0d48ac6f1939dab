//! The ways to the kernel: `nft -f` text for full replacements ([`text`]),
//! `nft -j` batches for diffs ([`json`]), both run by [`exec`], and
//! nftpol's own nf_tables [`netlink`] socket for diffs without a process.
//!
//! The [`Syncer`](super::Syncer) sees them as one [`Transport`]: [`Nft`]
//! (everything through `nft`) or [`NetlinkDiffs`] (diffs over netlink,
//! full replacements through `nft`); its unit tests use an in-memory
//! kernel instead (`fake`, test builds only).

pub mod exec;
#[cfg(test)]
pub(crate) mod fake;
pub mod json;
pub mod netlink;
pub mod text;

pub use exec::Nft;
pub use netlink::Netlink;

use super::model::Ruleset;
use super::ops::Op;

/// One way to the kernel's copy of a table. Each call is one transaction,
/// which happens whole or not at all.
pub trait Transport: std::fmt::Debug + Send {
    /// Replaces the table `want.table` with `want`.
    fn replace(&mut self, want: &Ruleset) -> Result<Via, NftError>;

    /// Sends `ops` (from [`ops::diff`](super::ops::diff)), which turn the
    /// table into `after`.
    fn apply(&mut self, after: &Ruleset, ops: &[Op]) -> Result<Via, NftError>;

    /// Removes the table `table` whether or not it exists.
    fn delete_table(&mut self, table: &str) -> Result<(), NftError>;
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

/// Diffs over nftpol's netlink socket (one round trip, no process), full
/// replacements and the table's removal through `nft`: what
/// `--changes-via netlink` means. (Full replacements can move to the
/// socket later without the Syncer noticing.)
#[derive(Debug)]
pub struct NetlinkDiffs {
    socket: Netlink,
    nft: Nft,
}

impl NetlinkDiffs {
    pub fn new(socket: Netlink, nft: Nft) -> Self {
        Self { socket, nft }
    }
}

impl Transport for NetlinkDiffs {
    fn replace(&mut self, want: &Ruleset) -> Result<Via, NftError> {
        self.nft.replace(want)
    }

    fn apply(&mut self, after: &Ruleset, ops: &[Op]) -> Result<Via, NftError> {
        // `netlink::carries` holds for every diff `ops::diff` makes; the
        // rest goes as JSON.
        if netlink::carries(ops) {
            self.socket.apply(after, ops).map(|()| Via::Netlink)
        } else {
            self.nft.apply(after, ops)
        }
    }

    fn delete_table(&mut self, table: &str) -> Result<(), NftError> {
        self.nft.delete_table(table)
    }
}

/// A failed transaction, whichever way it went.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("could not run {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("nft exited with {status}: {stderr}")]
    Failed { status: String, stderr: String },
    /// A batch sent over nftpol's own netlink socket failed.
    #[error("nf_tables netlink: {0}")]
    Netlink(String),
    #[error("refusing to send a batch that touches table {0:?}: nftpol only changes its own table")]
    ForeignTable(String),
}
