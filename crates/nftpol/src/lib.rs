//! nftpol: Kubernetes NetworkPolicy enforcement with nftables, beside
//! Flannel or any network plugin without policy.
//!
//! ```text
//!  cluster objects ──► Snapshot ──► compiler::compile ──► Plan ──► nft::render ──► Ruleset
//!  (load / watch)      (plain)      (pure, no I/O)        (data)                     │
//!                                                                nft::Syncer (diff, one atomic batch)
//!                                                                                     ▼
//!                                                                           kernel: table inet nftpol
//! ```
//!
//! Data flows one way: `compiler` knows nothing of nftables, `nft` knows
//! nothing of Kubernetes objects, only of the [`compiler::Plan`].
//!
//! This crate is the product alone; the lab, the development API server,
//! the conformance runner and the sandbox are the `nftpol-lab` crate's.
#![forbid(unsafe_code)]

pub mod cli;
pub mod compiler;
pub mod conntrack;
pub mod load;
pub mod net;
pub mod netns;
pub mod nft;
pub mod watch;

/// Errors of the command-line entry points.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Load(#[from] load::LoadError),
    #[error(transparent)]
    Nft(#[from] nft::NftError),
    #[error("{0}")]
    Usage(String),
    #[error("{0:#}")]
    Run(anyhow::Error),
}

impl Error {
    /// Process exit code: 2 for bad input, 1 for failures at run time.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Load(_) | Error::Usage(_) => 2,
            Error::Nft(_) | Error::Run(_) => 1,
        }
    }
}
