//! The one place nftpol runs `nft`: JSON in on stdin, stderr kept and
//! reported (the `nftables` crate's own helper loses it).

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::NftError;
use crate::nft::ops::Op;

/// How to run `nft`. The default is `nft` from `PATH`; tests prefix it,
/// e.g. `ip netns exec NODE nft`.
#[derive(Clone, Debug)]
pub struct Nft {
    argv: Vec<String>,
}

impl Default for Nft {
    fn default() -> Self {
        Self {
            argv: vec!["nft".into()],
        }
    }
}

impl Nft {
    /// `argv` is the command that runs nft, e.g. `["ip", "netns", "exec", "n1", "nft"]`.
    pub fn with_command(argv: Vec<String>) -> Self {
        assert!(!argv.is_empty(), "nft command must not be empty");
        Self { argv }
    }

    /// Runs nft with extra arguments and optional stdin; returns stdout.
    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<String, NftError> {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_err = |source| NftError::Spawn {
            program: self.argv.join(" "),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error shows up as nft's own failure below.
            let _ = pipe.write_all(input);
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(NftError::Failed {
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Sends one JSON batch (one atomic transaction). Every command must
    /// name `table`.
    pub fn apply_json(&self, table: &str, doc: &Value) -> Result<(), NftError> {
        if let Some(other) = super::json::tables_named(doc)
            .into_iter()
            .find(|t| t != table)
        {
            return Err(NftError::ForeignTable(other));
        }
        let body = serde_json::to_vec(doc).expect("JSON values serialize");
        self.run(&["-j", "-f", "-"], Some(&body)).map(|_| ())
    }

    /// Runs `ops` as one transaction on `table` (the batch streamed to
    /// bytes, see [`json::batch_bytes`](super::json::batch_bytes)). Every
    /// op names `table` by construction; the guard of [`apply_json`](Self::apply_json)
    /// is kept for documents from elsewhere.
    pub fn apply_ops(&self, table: &str, ops: &[Op]) -> Result<(), NftError> {
        let body = super::json::batch_bytes(table, ops);
        self.run(&["-j", "-f", "-"], Some(&body)).map(|_| ())
    }
}
