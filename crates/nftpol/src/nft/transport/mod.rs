//! The ways to the kernel: `nft -f` text for full replacements ([`text`]),
//! `nft -j` batches for diffs ([`json`]), both run by [`exec`], and
//! nftpol's own nf_tables [`netlink`] socket for diffs without a process.

pub mod exec;
pub mod json;
pub mod netlink;
pub mod text;

pub use exec::Nft;
pub use netlink::Netlink;

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
