//! The netlink socket to nf_tables: a batch sent in one `send`, the
//! kernel's answers read back and turned into one verdict.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use super::super::NftError;
use super::encode::encode;
use super::wire::messages;
use crate::nft::model::Ruleset;
use crate::nft::ops::Op;

/// How long to wait for the kernel's answer (it answers before `send`
/// returns; this only bounds a kernel that does not).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A netlink socket to nf_tables, kept open for the controller's lifetime.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    sndbuf: usize,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens the socket in the calling thread's network namespace, or in
    /// the one at `netns` (e.g. `/var/run/netns/NAME`). Needs CAP_NET_ADMIN
    /// only to change the ruleset, not to open.
    pub fn open(netns: Option<&Path>) -> Result<Self, NftError> {
        let fd = crate::netns::in_netns(netns, open_socket).map_err(NftError::Netlink)??;
        Ok(Self {
            fd,
            seq: std::process::id().wrapping_shl(16),
            sndbuf: 0,
            buf: vec![0; 256 * 1024],
        })
    }

    /// Sends `ops` (see [`carries`](super::carries)), which turn the table into `after`,
    /// as one transaction and waits for the kernel's verdict.
    pub fn apply(&mut self, after: &Ruleset, ops: &[Op]) -> Result<(), NftError> {
        let table = after.table.as_str();
        let interval = |set: &str| after.sets.get(set).map(|s| s.interval);
        let batch = encode(table, ops, self.seq.wrapping_add(1), &interval)?;
        self.seq = batch.end_seq();
        if batch.owners.is_empty() {
            return Ok(());
        }
        let fd = self.fd.as_raw_fd();
        let need = batch.bytes.len() + 64 * 1024;
        if need > self.sndbuf {
            setsockopt(&self.fd, sockopt::SndBufForce, &need)
                .or_else(|_| setsockopt(&self.fd, sockopt::SndBuf, &need))
                .map_err(|e| io_err("setting the send buffer", e))?;
            self.sndbuf = need;
        }
        let sent = send(fd, &batch.bytes, MsgFlags::empty()).map_err(|e| io_err("sending", e))?;
        if sent != batch.bytes.len() {
            return Err(NftError::Netlink(format!(
                "sent {sent} of {} bytes; the kernel got no complete batch",
                batch.bytes.len()
            )));
        }
        // The kernel processes the batch inside `send` and queues every
        // answer before it returns: errors, then the ack of the last command.
        let mut acked = false;
        let mut errors: Vec<(u32, i32)> = Vec::new();
        loop {
            let done = acked || !errors.is_empty();
            let flags = if done {
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC
            } else {
                MsgFlags::MSG_TRUNC
            };
            let n = match recv(fd, &mut self.buf, flags) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) if done => break,
                Err(Errno::EAGAIN) => {
                    return Err(NftError::Netlink(format!(
                        "no answer from the kernel within {ANSWER_TIMEOUT:?}; the table's state is unknown"
                    )));
                }
                Err(e) => return Err(io_err("receiving the kernel's answer", e)),
            };
            if n > self.buf.len() {
                return Err(NftError::Netlink(format!(
                    "an answer of {n} bytes did not fit the {}-byte buffer",
                    self.buf.len()
                )));
            }
            for (seq, code) in answers(&self.buf[..n]) {
                if !batch.in_batch(seq) {
                    continue; // left over from an earlier batch
                }
                if code == 0 {
                    acked |= seq == batch.last_command_seq();
                } else {
                    errors.push((seq, code));
                }
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        let described: Vec<String> = errors
            .iter()
            .take(5)
            .map(|(seq, code)| {
                let what = match batch.owner(*seq).map(|i| &ops[i]) {
                    Some(op) => describe(op),
                    None => "the transaction".to_string(),
                };
                format!("{what}: {}", Errno::from_raw(-code).desc())
            })
            .collect();
        Err(NftError::Netlink(format!(
            "the kernel refused the transaction on table inet {table} (nothing changed): {}",
            described.join("; ")
        )))
    }
}

/// A bound `NETLINK_NETFILTER` socket with a receive timeout (nf_tables
/// here; ctnetlink in [`crate::conntrack`]).
pub(crate) fn open_socket() -> Result<OwnedFd, NftError> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(|e| io_err("opening a netlink socket", e))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| io_err("binding", e))?;
    let timeout = TimeVal::new(ANSWER_TIMEOUT.as_secs() as i64, 0);
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)
        .map_err(|e| io_err("setting the receive timeout", e))?;
    // Room for the answers of a large batch (an error echoes its message).
    let _ = setsockopt(&fd, sockopt::RcvBufForce, &(4 << 20));
    Ok(fd)
}

fn io_err(what: &str, e: Errno) -> NftError {
    NftError::Netlink(format!("{what}: {}", e.desc()))
}

fn describe(op: &Op) -> String {
    match op {
        Op::AddElements { set, elems, .. } => format!("add {} elements to set {set}", elems.len()),
        Op::DeleteElements { set, elems, .. } => {
            format!("delete {} elements from set {set}", elems.len())
        }
        Op::AddMapEntries { map, entries } => format!("add {} entries to map {map}", entries.len()),
        Op::DeleteMapEntries { map, keys } => {
            format!("delete {} entries from map {map}", keys.len())
        }
        other => format!("{other:?}"),
    }
}

/// The `(sequence number, error code)` of every `NLMSG_ERROR` in a datagram
/// (code 0: an acknowledgement).
fn answers(data: &[u8]) -> Vec<(u32, i32)> {
    messages(data)
        .filter_map(|m| m.error_code().map(|code| (m.seq, code)))
        .collect()
}
