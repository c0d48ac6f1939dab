//! The one place nftpol runs `nft`: JSON in on stdin, stderr kept and
//! reported (the `nftables` crate's own helper loses it).

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{NftError, Transport, Via, json, text};
use crate::nft::model::Ruleset;
use crate::nft::ops::{self, Op};

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
        if let Some(other) = json::tables_named(doc).into_iter().find(|t| t != table) {
            return Err(NftError::ForeignTable(other));
        }
        let body = serde_json::to_vec(doc).expect("JSON values serialize");
        self.run(&["-j", "-f", "-"], Some(&body)).map(|_| ())
    }

    /// Runs `ops` as one transaction on `table` (the batch streamed to
    /// bytes, see [`json::batch_bytes`]). Every
    /// op names `table` by construction; the guard of [`apply_json`](Self::apply_json)
    /// is kept for documents from elsewhere.
    pub fn apply_ops(&self, table: &str, ops: &[Op]) -> Result<(), NftError> {
        let body = json::batch_bytes(table, ops);
        self.run(&["-j", "-f", "-"], Some(&body)).map(|_| ())
    }
}

/// Everything through `nft`: a full replacement as `nft -f` text (which
/// nft 1.0.6 parses faster than the same table as JSON, BENCHMARKS.md), a
/// diff as an `nft -j` batch.
impl Transport for Nft {
    fn replace(&mut self, want: &Ruleset) -> Result<Via, NftError> {
        self.run(&["-f", "-"], Some(text::to_text(want).as_bytes()))
            .map(|_| Via::NftText)
    }

    fn apply(&mut self, after: &Ruleset, ops: &[Op]) -> Result<Via, NftError> {
        self.apply_ops(&after.table, ops).map(|()| Via::NftJson)
    }

    fn delete_table(&mut self, table: &str) -> Result<(), NftError> {
        self.apply_json(table, &json::batch(table, &ops::remove_table()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in `nft` (a shell script) that keeps its arguments and its
    /// stdin, and fails as nft does while the file `fail` exists.
    #[test]
    fn nft_gets_the_table_as_text_a_diff_as_json_and_its_stderr_is_reported() {
        let dir = std::env::temp_dir().join(format!("nftpol-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let script = format!(
            "echo \"$@\" > '{d}/args'; cat > '{d}/stdin'; if [ -e '{d}/fail' ]; then echo 'out of memory' >&2; exit 1; fi"
        );
        let mut nft = Nft::with_command(vec!["sh".into(), "-c".into(), script, "nft".into()]);
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        let rs = Ruleset {
            table: "t".into(),
            ..Ruleset::default()
        };

        assert_eq!(nft.replace(&rs).unwrap(), Via::NftText);
        assert_eq!(read("args").trim(), "-f -");
        assert_eq!(read("stdin"), text::to_text(&rs));

        let flush = [Op::FlushChain("c".into())];
        assert_eq!(nft.apply(&rs, &flush).unwrap(), Via::NftJson);
        assert_eq!(read("args").trim(), "-j -f -");
        assert_eq!(read("stdin").as_bytes(), json::batch_bytes("t", &flush));

        std::fs::write(dir.join("fail"), "").unwrap();
        let e = nft.replace(&rs).unwrap_err();
        assert!(e.to_string().contains("out of memory"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
