//! Conntrack entries, over ctnetlink (`NETLINK_NETFILTER`): no `conntrack`
//! process, one socket kept open.
//!
//! A tracked flow outlives the pod it was made for: its entry keeps the
//! flow "established" (UDP for about two minutes after its last packet,
//! TCP for days), and `ct state established accept` lets it pass whatever
//! the rules now say. When an address changes owner, or no pod holds it
//! any more, the controller deletes the entries that name it
//! ([`Conntrack::delete_involving`]), so that a new pod with that address
//! inherits no flows.
//!
//! The kernel deletes by tuple only (its flush filters on marks, not on
//! addresses), so this dumps the table, keeps the entries whose original
//! or reply tuple holds one of the addresses, and deletes each by its
//! original tuple and id (an entry that was replaced meanwhile stays).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, recv, send};

use crate::nft::transport::netlink::{
    NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, Writer, messages, open_socket,
};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_DONE: u16 = 3;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// Deletions sent in one datagram (about 100 bytes each).
const DELETES_PER_SEND: usize = 256;

/// A ctnetlink request that failed.
#[derive(Debug, thiserror::Error)]
#[error("conntrack netlink: {0}")]
pub struct ConntrackError(String);

/// One direction of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, ...).
    pub proto: u8,
    /// Ports, for protocols that have them.
    pub ports: Option<(u16, u16)>,
}

impl Tuple {
    fn involves(&self, addrs: &HashSet<IpAddr>) -> bool {
        addrs.contains(&self.src) || addrs.contains(&self.dst)
    }
}

/// A conntrack entry, as a dump shows it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub original: Tuple,
    pub reply: Tuple,
    /// What a deletion names the entry by: its family, original tuple (the
    /// attribute as the kernel sent it), id and zone.
    family: u8,
    original_attr: Vec<u8>,
    id: Option<Vec<u8>>,
    zone: Option<Vec<u8>>,
}

/// A ctnetlink socket in one network namespace.
#[derive(Debug)]
pub struct Conntrack {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Conntrack {
    /// Opens the socket in the calling thread's network namespace, or in
    /// the one at `netns`. Deleting needs CAP_NET_ADMIN.
    pub fn open(netns: Option<&Path>) -> Result<Self, ConntrackError> {
        let fd = crate::netns::in_netns(netns, open_socket)
            .map_err(ConntrackError)?
            .map_err(|e| ConntrackError(e.to_string()))?;
        Ok(Self {
            fd,
            seq: std::process::id().wrapping_shl(16) ^ 0x8000,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Every entry of the namespace's table (IPv4 and IPv6).
    pub fn entries(&mut self) -> Result<Vec<Entry>, ConntrackError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut w = Writer {
            buf: Vec::with_capacity(32),
        };
        let at = w.msg_start(
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            AF_UNSPEC,
            0,
        );
        w.msg_end(at);
        self.send(&w.buf)?;
        let mut out = Vec::new();
        loop {
            let n = self.recv()?;
            for m in messages(&self.buf[..n]) {
                if m.seq != seq {
                    continue; // left over from an earlier request
                }
                if m.ty == NLMSG_DONE {
                    return Ok(out);
                }
                if let Some(code) = m.error_code() {
                    return Err(ConntrackError(format!(
                        "dumping the table: {}",
                        Errno::from_raw(-code).desc()
                    )));
                }
                if m.ty == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
                    && let Some(entry) = parse_entry(m.payload)
                {
                    out.push(entry);
                }
            }
        }
    }

    /// Deletes every entry whose original or reply tuple holds one of
    /// `addrs` (as source or destination); returns how many went. Entries
    /// that expire meanwhile are not counted.
    pub fn delete_involving(&mut self, addrs: &HashSet<IpAddr>) -> Result<usize, ConntrackError> {
        if addrs.is_empty() {
            return Ok(0);
        }
        let doomed: Vec<Entry> = self
            .entries()?
            .into_iter()
            .filter(|e| e.original.involves(addrs) || e.reply.involves(addrs))
            .collect();
        let mut deleted = 0;
        for chunk in doomed.chunks(DELETES_PER_SEND) {
            deleted += self.delete(chunk)?;
        }
        Ok(deleted)
    }

    /// Deletes `entries` (one datagram); returns how many the kernel
    /// deleted.
    fn delete(&mut self, entries: &[Entry]) -> Result<usize, ConntrackError> {
        let first = self.seq.wrapping_add(1);
        let mut w = Writer {
            buf: Vec::with_capacity(entries.len() * 112),
        };
        for e in entries {
            self.seq = self.seq.wrapping_add(1);
            let at = w.msg_start(
                (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
                NLM_F_REQUEST | NLM_F_ACK,
                self.seq,
                e.family,
                0,
            );
            w.attr(CTA_TUPLE_ORIG | NLA_F_NESTED, &e.original_attr);
            if let Some(id) = &e.id {
                w.attr(CTA_ID, id);
            }
            if let Some(zone) = &e.zone {
                w.attr(CTA_ZONE, zone);
            }
            w.msg_end(at);
        }
        self.send(&w.buf)?;
        let ours = |seq: u32| seq.wrapping_sub(first) < entries.len() as u32;
        let (mut answered, mut deleted) = (0, 0);
        let mut failure = None;
        while answered < entries.len() {
            let n = self.recv()?;
            for m in messages(&self.buf[..n]) {
                let Some(code) = m.error_code().filter(|_| ours(m.seq)) else {
                    continue;
                };
                answered += 1;
                match -code {
                    0 => deleted += 1,
                    // Expired or replaced since the dump.
                    e if e == Errno::ENOENT as i32 => {}
                    e => failure = Some(Errno::from_raw(e)),
                }
            }
        }
        match failure {
            Some(e) => Err(ConntrackError(format!("deleting entries: {}", e.desc()))),
            None => Ok(deleted),
        }
    }

    fn send(&self, bytes: &[u8]) -> Result<(), ConntrackError> {
        let sent = send(self.fd.as_raw_fd(), bytes, MsgFlags::empty())
            .map_err(|e| ConntrackError(format!("sending: {}", e.desc())))?;
        if sent != bytes.len() {
            return Err(ConntrackError(format!(
                "sent {sent} of {} bytes",
                bytes.len()
            )));
        }
        Ok(())
    }

    /// One datagram into the buffer; its length.
    fn recv(&mut self) -> Result<usize, ConntrackError> {
        loop {
            match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_TRUNC) {
                Ok(n) if n > self.buf.len() => {
                    return Err(ConntrackError(format!(
                        "an answer of {n} bytes did not fit the {}-byte buffer",
                        self.buf.len()
                    )));
                }
                Ok(n) => return Ok(n),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    return Err(ConntrackError("no answer from the kernel".into()));
                }
                Err(e) => return Err(ConntrackError(format!("receiving: {}", e.desc()))),
            }
        }
    }
}

/// The attributes of a netlink attribute stream: (type without flags, payload).
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = &data[len.next_multiple_of(4).min(data.len())..];
        Some((ty, payload))
    })
}

/// An entry from a dump message's payload (`nfgenmsg`, then attributes).
fn parse_entry(payload: &[u8]) -> Option<Entry> {
    let family = *payload.first()?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let (mut original, mut reply, mut original_attr) = (None, None, None);
    let (mut id, mut zone) = (None, None);
    for (ty, value) in attrs(payload.get(4..)?) {
        match ty {
            CTA_TUPLE_ORIG => {
                original = parse_tuple(value);
                original_attr = Some(value.to_vec());
            }
            CTA_TUPLE_REPLY => reply = parse_tuple(value),
            CTA_ID => id = Some(value.to_vec()),
            CTA_ZONE => zone = Some(value.to_vec()),
            _ => {}
        }
    }
    Some(Entry {
        original: original?,
        reply: reply?,
        family,
        original_attr: original_attr?,
        id,
        zone,
    })
}

fn parse_tuple(data: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut proto) = (None, None, None);
    let (mut sport, mut dport) = (None, None);
    for (ty, value) in attrs(data) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, a) in attrs(value) {
                    let addr = match (ty, a.len()) {
                        (CTA_IP_V4_SRC | CTA_IP_V4_DST, 4) => {
                            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(a).ok()?))
                        }
                        (CTA_IP_V6_SRC | CTA_IP_V6_DST, 16) => {
                            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(a).ok()?))
                        }
                        _ => continue,
                    };
                    match ty {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(addr),
                        _ => dst = Some(addr),
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, p) in attrs(value) {
                    match (ty, p) {
                        (CTA_PROTO_NUM, [n, ..]) => proto = Some(*n),
                        (CTA_PROTO_SRC_PORT, [a, b, ..]) => {
                            sport = Some(u16::from_be_bytes([*a, *b]))
                        }
                        (CTA_PROTO_DST_PORT, [a, b, ..]) => {
                            dport = Some(u16::from_be_bytes([*a, *b]))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        src: src?,
        dst: dst?,
        proto: proto?,
        ports: sport.zip(dport),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dump message's payload as the kernel writes it for a UDP flow
    /// 10.0.0.1:5000 -> 10.0.0.2:53 (reply reversed), id 7.
    fn udp_entry_payload() -> Vec<u8> {
        let mut w = Writer { buf: Vec::new() };
        w.buf.extend_from_slice(&[AF_INET, 0, 0, 0]);
        for (dir, (s, d), (sp, dp)) in [
            (
                CTA_TUPLE_ORIG,
                ([10, 0, 0, 1], [10, 0, 0, 2]),
                (5000u16, 53u16),
            ),
            (CTA_TUPLE_REPLY, ([10, 0, 0, 2], [10, 0, 0, 1]), (53, 5000)),
        ] {
            let t = w.nest_start(dir);
            let ip = w.nest_start(CTA_TUPLE_IP);
            w.attr(CTA_IP_V4_SRC, &s);
            w.attr(CTA_IP_V4_DST, &d);
            w.nest_end(ip);
            let p = w.nest_start(CTA_TUPLE_PROTO);
            w.attr(CTA_PROTO_NUM, &[17]);
            w.attr(CTA_PROTO_SRC_PORT, &sp.to_be_bytes());
            w.attr(CTA_PROTO_DST_PORT, &dp.to_be_bytes());
            w.nest_end(p);
            w.nest_end(t);
        }
        w.attr_u32(CTA_ID, 7);
        w.buf
    }

    #[test]
    fn a_dumped_entry_is_read_with_both_tuples() {
        let e = parse_entry(&udp_entry_payload()).expect("an entry");
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            e.original,
            Tuple {
                src: a,
                dst: b,
                proto: 17,
                ports: Some((5000, 53))
            }
        );
        assert_eq!((e.reply.src, e.reply.dst), (b, a));
        assert_eq!(e.id.as_deref(), Some(&7u32.to_be_bytes()[..]));
        assert!(e.original.involves(&HashSet::from([b])));
        assert!(
            !e.original
                .involves(&HashSet::from(["10.0.0.3".parse().unwrap()]))
        );
    }
}
