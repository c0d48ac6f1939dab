//! Ruleset objects and [`Op`]s → nf_tables messages: one batch, the bytes
//! `nft` would send for the same commands (see the module above).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::super::NftError;
use super::wire::{NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, Writer};
use crate::net::Family;
use crate::nft::model::{Action, AddrField, Cond, Elem, KeyType, NftRule, NftSet};
use crate::nft::ops::Op;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_DESC_CONCAT: u16 = 2;
const NFTA_SET_FIELD_LEN: u16 = 1;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_CONCAT: u32 = 0x80;
/// nft's data type numbers; a concatenation's type has 6 bits per field.
const TYPE_IPV4_ADDR: u32 = 7;
const TYPE_IPV6_ADDR: u32 = 8;
const TYPE_INET_PROTO: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
/// Set user data as nft writes it (only `nft list` reads it): the key's
/// byte order (big endian for addresses, none for a concatenation), for a
/// concatenation the record nft adds for it, then the comment.
const UDATA_ADDR_KEY: [u8; 6] = [0, 4, 2, 0, 0, 0];
const UDATA_CONCAT_KEY: [u8; 16] = [0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0];
const UDATA_COMMENT: u8 = 7;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;
/// 32-bit registers after a 4-byte address in register 1, and after a
/// 16-byte one (nft's register allocation for `addr . l4proto . dport`).
const NFT_REG32_01: u32 = 9;
const NFT_REG32_02: u32 = 10;
const NFT_REG32_05: u32 = 13;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_BYTEORDER_HTON: u32 = 1;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// nftpol's table is `inet`.
const NFPROTO_INET: u8 = 1;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_JUMP: i32 = -3;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
/// libnftnl's element user data: type 1 (flags), 4 bytes, value 1 (open
/// interval). Only `nft list` reads it.
const UDATA_INTERVAL_OPEN: [u8; 6] = [1, 4, 1, 0, 0, 0];

/// An element list stays below this many bytes: its attribute length is a
/// u16. Larger lists are split over several messages of the same batch.
const LIST_LIMIT: usize = 60_000;

/// Whether every op of a batch can go over netlink: element updates, and
/// the sets, regular chains and pod-chain rules an incremental change
/// creates or removes. The table, maps, base chains and their rules are
/// only made by a full sync (nft text).
pub fn carries(ops: &[Op]) -> bool {
    ops.iter().all(|op| match op {
        Op::AddElements { .. }
        | Op::DeleteElements { .. }
        | Op::AddMapEntries { .. }
        | Op::DeleteMapEntries { .. }
        | Op::AddSet { .. }
        | Op::DeleteSet(_)
        | Op::AddChain { hook: None, .. }
        | Op::FlushChain(_)
        | Op::DeleteChain(_) => true,
        Op::AddRule { rule, .. } => rule_encodable(rule),
        Op::AddTable | Op::DeleteTable | Op::AddMap { .. } | Op::DeleteMap(_) => false,
        Op::AddChain { hook: Some(_), .. } => false,
    })
}

fn rule_encodable(rule: &NftRule) -> bool {
    rule.conds
        .iter()
        .all(|c| matches!(c, Cond::AddrIn { .. } | Cond::TupleIn { .. }))
        && matches!(rule.action, Action::Accept | Action::CountDrop)
}

/// An encoded transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub bytes: Vec<u8>,
    /// Sequence number of the batch begin message; the batch end has
    /// `first_seq + 1 + commands`.
    pub first_seq: u32,
    /// For each command message in order: the index of the op it belongs to.
    pub owners: Vec<usize>,
}

impl Batch {
    pub(super) fn last_command_seq(&self) -> u32 {
        self.first_seq.wrapping_add(self.owners.len() as u32)
    }

    pub(super) fn end_seq(&self) -> u32 {
        self.last_command_seq().wrapping_add(1)
    }

    /// The op a reply with sequence number `seq` is about.
    pub(super) fn owner(&self, seq: u32) -> Option<usize> {
        let i = seq.wrapping_sub(self.first_seq).checked_sub(1)? as usize;
        self.owners.get(i).copied()
    }

    pub(super) fn in_batch(&self, seq: u32) -> bool {
        seq.wrapping_sub(self.first_seq) <= self.end_seq().wrapping_sub(self.first_seq)
    }
}

/// Encodes `ops` (see [`carries`]) as one nf_tables batch on `table`;
/// `interval` tells whether a set the ops refer to has `flags interval`
/// (a rule's lookup of a concatenated interval set loads the protocol
/// field differently). Pure: the bytes `nft` would send, up to sequence
/// numbers and set ids.
pub fn encode(
    table: &str,
    ops: &[Op],
    first_seq: u32,
    interval: &dyn Fn(&str) -> Option<bool>,
) -> Result<Batch, NftError> {
    let mut enc = Encoder {
        w: Writer {
            buf: Vec::with_capacity(256),
        },
        table,
        seq: first_seq,
        owners: Vec::new(),
        list: None,
        set_ids: BTreeMap::new(),
        last: None,
    };
    let begin = enc.w.msg_start(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        first_seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    enc.w.msg_end(begin);
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::AddElements {
                set,
                key,
                interval,
                elems,
            } => enc.set_elements(
                (i, NFT_MSG_NEWSETELEM, NLM_F_CREATE, set),
                *key,
                *interval,
                elems,
            )?,
            Op::DeleteElements {
                set,
                key,
                interval,
                elems,
            } => enc.set_elements((i, NFT_MSG_DELSETELEM, 0, set), *key, *interval, elems)?,
            Op::AddMapEntries { map, entries } => {
                for (addr, chain) in entries {
                    let item = ListElem::key(addr_bytes(*addr));
                    enc.item((i, NFT_MSG_NEWSETELEM, NLM_F_CREATE, map), |w| {
                        item.write(w, Some(chain))
                    });
                }
                enc.close();
            }
            Op::DeleteMapEntries { map, keys } => {
                for addr in keys {
                    let item = ListElem::key(addr_bytes(*addr));
                    enc.item((i, NFT_MSG_DELSETELEM, 0, map), |w| item.write(w, None));
                }
                enc.close();
            }
            Op::AddSet { name, set } => {
                enc.new_set(i, name, set);
                enc.set_elements(
                    (i, NFT_MSG_NEWSETELEM, NLM_F_CREATE, name),
                    set.key,
                    set.interval,
                    set.elements.iter(),
                )?;
            }
            Op::DeleteSet(name) => {
                enc.named(i, NFT_MSG_DELSET, 0, NFTA_SET_TABLE, NFTA_SET_NAME, name)
            }
            Op::AddChain { name, hook: None } => enc.named(
                i,
                NFT_MSG_NEWCHAIN,
                NLM_F_CREATE,
                NFTA_CHAIN_TABLE,
                NFTA_CHAIN_NAME,
                name,
            ),
            Op::DeleteChain(name) => enc.named(
                i,
                NFT_MSG_DELCHAIN,
                0,
                NFTA_CHAIN_TABLE,
                NFTA_CHAIN_NAME,
                name,
            ),
            // A rule deletion naming only the chain deletes all its rules.
            Op::FlushChain(name) => enc.named(
                i,
                NFT_MSG_DELRULE,
                0,
                NFTA_RULE_TABLE,
                NFTA_RULE_CHAIN,
                name,
            ),
            Op::AddRule { chain, rule } if rule_encodable(rule) => {
                enc.new_rule(i, chain, rule, interval)?
            }
            other => {
                return Err(NftError::Netlink(format!(
                    "only a full sync (nft) does this: {other:?}"
                )));
            }
        }
    }
    // The last command asks for an acknowledgement: with no error before
    // it, the kernel has processed the whole batch.
    let mut w = enc.w;
    if let Some(msg) = enc.last {
        let flags = u16::from_ne_bytes([w.buf[msg + 6], w.buf[msg + 7]]) | NLM_F_ACK;
        w.buf[msg + 6..msg + 8].copy_from_slice(&flags.to_ne_bytes());
    }
    let end = w.msg_start(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        enc.seq.wrapping_add(1),
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    w.msg_end(end);
    Ok(Batch {
        bytes: w.buf,
        first_seq,
        owners: enc.owners,
    })
}

/// The op a message belongs to: its index, message type, extra flags and
/// set or map name.
type Target<'a> = (usize, u16, u16, &'a str);

struct Encoder<'a> {
    w: Writer,
    table: &'a str,
    /// Sequence number of the last message started.
    seq: u32,
    owners: Vec<usize>,
    /// The open message and its element list, by offset.
    list: Option<(usize, usize)>,
    /// Sets created in this batch, by name: their ids.
    set_ids: BTreeMap<String, u32>,
    /// The last command message started, by offset.
    last: Option<usize>,
}

impl Encoder<'_> {
    /// Starts a command message of op `i`.
    fn start(&mut self, i: usize, ty: u16, flags: u16) -> usize {
        self.close();
        self.seq = self.seq.wrapping_add(1);
        self.owners.push(i);
        let msg = self.w.msg_start(
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            NLM_F_REQUEST | flags,
            self.seq,
            NFPROTO_INET,
            0,
        );
        self.last = Some(msg);
        msg
    }

    /// A message that names the table and one object.
    fn named(
        &mut self,
        i: usize,
        ty: u16,
        flags: u16,
        table_attr: u16,
        name_attr: u16,
        name: &str,
    ) {
        let msg = self.start(i, ty, flags);
        self.w.attr_str(table_attr, self.table);
        self.w.attr_str(name_attr, name);
        self.w.msg_end(msg);
    }

    /// `add set`, as nft sends it (flags, key type and length, the field
    /// lengths of a concatenated interval key, user data for `nft list`).
    fn new_set(&mut self, i: usize, name: &str, set: &NftSet) {
        let msg = self.start(i, NFT_MSG_NEWSET, NLM_F_CREATE);
        let id = self.set_ids.len() as u32 + 1;
        self.set_ids.insert(name.to_string(), id);
        let (addr_type, addr_len) = match set.key.family() {
            Family::V4 => (TYPE_IPV4_ADDR, 4),
            Family::V6 => (TYPE_IPV6_ADDR, 16),
        };
        let concat = matches!(set.key, KeyType::Tuple4 | KeyType::Tuple6);
        let mut flags = 0;
        if set.interval {
            flags |= NFT_SET_INTERVAL;
            if concat {
                flags |= NFT_SET_CONCAT;
            }
        }
        let (key_type, key_len) = if concat {
            (
                (addr_type << 12) | (TYPE_INET_PROTO << 6) | TYPE_INET_SERVICE,
                addr_len + 8,
            )
        } else {
            (addr_type, addr_len)
        };
        self.w.attr_str(NFTA_SET_TABLE, self.table);
        self.w.attr_str(NFTA_SET_NAME, name);
        self.w.attr_u32(NFTA_SET_FLAGS, flags);
        self.w.attr_u32(NFTA_SET_KEY_TYPE, key_type);
        self.w.attr_u32(NFTA_SET_KEY_LEN, key_len);
        self.w.attr_u32(NFTA_SET_ID, id);
        if concat && set.interval {
            let desc = self.w.nest_start(NFTA_SET_DESC);
            let fields = self.w.nest_start(NFTA_SET_DESC_CONCAT);
            for len in [addr_len, 1, 2] {
                let f = self.w.nest_start(NFTA_LIST_ELEM);
                self.w.attr_u32(NFTA_SET_FIELD_LEN, len);
                self.w.nest_end(f);
            }
            self.w.nest_end(fields);
            self.w.nest_end(desc);
        }
        let mut udata = Vec::with_capacity(32 + set.comment.len());
        udata.extend_from_slice(if concat {
            &UDATA_CONCAT_KEY[..]
        } else {
            &UDATA_ADDR_KEY[..]
        });
        // nft keeps comments below 128 characters (`render::short_comment`);
        // the record's length is one byte.
        let comment: &[u8] = &set.comment.as_bytes()[..set.comment.len().min(250)];
        udata.push(UDATA_COMMENT);
        udata.push(comment.len() as u8 + 1);
        udata.extend_from_slice(comment);
        udata.push(0);
        self.w.attr(NFTA_SET_USERDATA, &udata);
        self.w.msg_end(msg);
    }

    /// `add rule` (appended), with the expressions nft makes of the rule.
    fn new_rule(
        &mut self,
        i: usize,
        chain: &str,
        rule: &NftRule,
        interval: &dyn Fn(&str) -> Option<bool>,
    ) -> Result<(), NftError> {
        let msg = self.start(i, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND);
        self.w.attr_str(NFTA_RULE_TABLE, self.table);
        self.w.attr_str(NFTA_RULE_CHAIN, chain);
        let list = self.w.nest_start(NFTA_RULE_EXPRESSIONS);
        for c in &rule.conds {
            match c {
                Cond::AddrIn { family, field, set } => {
                    self.family(*family);
                    self.addr_load(*family, *field);
                    self.lookup(set);
                }
                Cond::TupleIn { family, field, set } => {
                    let Some(ranges) = interval(set) else {
                        return Err(NftError::Netlink(format!(
                            "rule in {chain} looks up set {set}, which the table will not have"
                        )));
                    };
                    self.family(*family);
                    self.addr_load(*family, *field);
                    let (proto_reg, port_reg) = match family {
                        Family::V4 => (NFT_REG32_01, NFT_REG32_02),
                        Family::V6 => (NFT_REG_2, NFT_REG32_05),
                    };
                    self.expr("meta", |w| {
                        w.attr_u32(2, NFT_META_L4PROTO); // NFTA_META_KEY
                        w.attr_u32(1, proto_reg); // NFTA_META_DREG
                    });
                    if ranges {
                        // What nft adds before a concatenated interval
                        // lookup: the protocol byte in network order.
                        self.expr("byteorder", |w| {
                            w.attr_u32(1, proto_reg); // SREG
                            w.attr_u32(2, proto_reg); // DREG
                            w.attr_u32(3, NFT_BYTEORDER_HTON); // OP
                            w.attr_u32(4, 1); // LEN
                            w.attr_u32(5, 2); // SIZE
                        });
                    }
                    self.expr("payload", |w| {
                        w.attr_u32(1, port_reg); // DREG
                        w.attr_u32(2, NFT_PAYLOAD_TRANSPORT_HEADER); // BASE
                        w.attr_u32(3, 2); // OFFSET: destination port
                        w.attr_u32(4, 2); // LEN
                    });
                    self.lookup(set);
                }
                other => {
                    return Err(NftError::Netlink(format!(
                        "only a full sync (nft) makes rules with {other:?}"
                    )));
                }
            }
        }
        let verdict = match rule.action {
            Action::Accept => NF_ACCEPT,
            Action::CountDrop => {
                self.expr("counter", |_| {});
                NF_DROP
            }
            ref other => {
                return Err(NftError::Netlink(format!(
                    "only a full sync (nft) makes rules that {other:?}"
                )));
            }
        };
        self.expr("immediate", |w| {
            w.attr_u32(1, NFT_REG_VERDICT); // NFTA_IMMEDIATE_DREG
            let data = w.nest_start(2); // NFTA_IMMEDIATE_DATA
            let v = w.nest_start(NFTA_DATA_VERDICT);
            w.attr(NFTA_VERDICT_CODE, &verdict.to_be_bytes());
            w.nest_end(v);
            w.nest_end(data);
        });
        self.w.nest_end(list);
        self.w.msg_end(msg);
        Ok(())
    }

    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Writer)) {
        let e = self.w.nest_start(NFTA_LIST_ELEM);
        self.w.attr_str(NFTA_EXPR_NAME, name);
        let d = self.w.nest_start(NFTA_EXPR_DATA);
        data(&mut self.w);
        self.w.nest_end(d);
        self.w.nest_end(e);
    }

    /// `meta nfproto ipv4|ipv6`: the dependency nft adds in an inet table.
    fn family(&mut self, family: Family) {
        self.expr("meta", |w| {
            w.attr_u32(2, NFT_META_NFPROTO); // KEY
            w.attr_u32(1, NFT_REG_1); // DREG
        });
        self.cmp_eq(&[match family {
            Family::V4 => NFPROTO_IPV4,
            Family::V6 => NFPROTO_IPV6,
        }]);
    }

    fn cmp_eq(&mut self, value: &[u8]) {
        self.expr("cmp", |w| {
            w.attr_u32(1, NFT_REG_1); // SREG
            w.attr_u32(2, NFT_CMP_EQ); // OP
            let d = w.nest_start(3); // DATA
            w.attr(NFTA_DATA_VALUE, value);
            w.nest_end(d);
        });
    }

    /// The source or destination address into register 1.
    fn addr_load(&mut self, family: Family, field: AddrField) {
        let (offset, len) = match (family, field) {
            (Family::V4, AddrField::Saddr) => (12, 4),
            (Family::V4, AddrField::Daddr) => (16, 4),
            (Family::V6, AddrField::Saddr) => (8, 16),
            (Family::V6, AddrField::Daddr) => (24, 16),
        };
        self.expr("payload", |w| {
            w.attr_u32(1, NFT_REG_1); // DREG
            w.attr_u32(2, NFT_PAYLOAD_NETWORK_HEADER); // BASE
            w.attr_u32(3, offset); // OFFSET
            w.attr_u32(4, len); // LEN
        });
    }

    /// Lookup of register 1 in `set` (by name; by id too when the set is
    /// created in this batch).
    fn lookup(&mut self, set: &str) {
        let id = self.set_ids.get(set).copied();
        self.expr("lookup", |w| {
            w.attr_u32(2, NFT_REG_1); // NFTA_LOOKUP_SREG
            w.attr_str(1, set); // NFTA_LOOKUP_SET
            if let Some(id) = id {
                w.attr_u32(4, id); // NFTA_LOOKUP_SET_ID
            }
        });
    }

    /// Adds or deletes `elems` of a set (one or more messages).
    fn set_elements<'e>(
        &mut self,
        target: Target<'_>,
        key: KeyType,
        interval: bool,
        elems: impl IntoIterator<Item = &'e Elem>,
    ) -> Result<(), NftError> {
        for e in elems {
            let items = list_elems(key, interval, e).map_err(|why| {
                NftError::Netlink(format!("set {}: element {e:?}: {why}", target.3))
            })?;
            for item in items.iter().flatten() {
                self.item(target, |w| item.write(w, None));
            }
        }
        self.close();
        Ok(())
    }

    /// Writes one list element into the open message, or a new one when
    /// there is none or its list is full.
    fn item(&mut self, (i, ty, flags, set): Target<'_>, put: impl FnOnce(&mut Writer)) {
        let open = match self.list {
            Some((msg, nest)) if self.w.buf.len() - nest < LIST_LIMIT => (msg, nest),
            _ => {
                let msg = self.start(i, ty, flags);
                self.w.attr_str(NFTA_SET_ELEM_LIST_TABLE, self.table);
                self.w.attr_str(NFTA_SET_ELEM_LIST_SET, set);
                (msg, self.w.nest_start(NFTA_SET_ELEM_LIST_ELEMENTS))
            }
        };
        put(&mut self.w);
        self.list = Some(open);
    }

    /// Ends the open element message, if any.
    fn close(&mut self) {
        if let Some((msg, nest)) = self.list.take() {
            self.w.nest_end(nest);
            self.w.msg_end(msg);
        }
    }
}

/// Key bytes: an address, or `address . protocol . port` with each field
/// padded to 4 bytes (nft's register layout).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ListElem {
    key: Vec<u8>,
    key_end: Option<Vec<u8>>,
    flags: u32,
    open: bool,
}

impl ListElem {
    fn key(key: Vec<u8>) -> Self {
        Self {
            key,
            key_end: None,
            flags: 0,
            open: false,
        }
    }

    fn write(&self, w: &mut Writer, jump: Option<&str>) {
        let item = w.nest_start(NFTA_LIST_ELEM);
        if self.flags != 0 {
            w.attr(NFTA_SET_ELEM_FLAGS, &self.flags.to_be_bytes());
        }
        let k = w.nest_start(NFTA_SET_ELEM_KEY);
        w.attr(NFTA_DATA_VALUE, &self.key);
        w.nest_end(k);
        if let Some(end) = &self.key_end {
            let k = w.nest_start(NFTA_SET_ELEM_KEY_END);
            w.attr(NFTA_DATA_VALUE, end);
            w.nest_end(k);
        }
        if let Some(chain) = jump {
            let data = w.nest_start(NFTA_SET_ELEM_DATA);
            let verdict = w.nest_start(NFTA_DATA_VERDICT);
            w.attr(NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
            w.attr_str(NFTA_VERDICT_CHAIN, chain);
            w.nest_end(verdict);
            w.nest_end(data);
        }
        if self.open {
            w.attr(NFTA_SET_ELEM_USERDATA, &UDATA_INTERVAL_OPEN);
        }
        w.nest_end(item);
    }
}

/// The kernel elements of one set element: one, or two for an rbtree
/// interval (start and end).
fn list_elems(key: KeyType, interval: bool, e: &Elem) -> Result<[Option<ListElem>; 2], String> {
    let family_ok = |a: IpAddr| Family::of(a) == key.family();
    match (key, interval, e) {
        (KeyType::Ipv4 | KeyType::Ipv6, false, Elem::Addr(a)) if family_ok(*a) => {
            Ok([Some(ListElem::key(addr_bytes(*a))), None])
        }
        (KeyType::Ipv4 | KeyType::Ipv6, false, Elem::Range(a, b)) if a == b && family_ok(*a) => {
            Ok([Some(ListElem::key(addr_bytes(*a))), None])
        }
        (KeyType::Ipv4 | KeyType::Ipv6, true, Elem::Addr(a) | Elem::Range(a, _)) => {
            let last = match e {
                Elem::Range(_, b) => *b,
                _ => *a,
            };
            if !family_ok(*a) || !family_ok(last) || a > &last {
                return Err("not a range of this set's family".into());
            }
            let mut start = ListElem::key(addr_bytes(*a));
            let end = match next_addr(last) {
                Some(past) => Some(ListElem {
                    flags: NFT_SET_ELEM_INTERVAL_END,
                    ..ListElem::key(addr_bytes(past))
                }),
                None => {
                    start.open = true;
                    None
                }
            };
            Ok([Some(start), end])
        }
        (
            KeyType::Tuple4 | KeyType::Tuple6,
            _,
            Elem::Box {
                addrs,
                proto,
                ports,
            },
        ) if family_ok(addrs.start) && family_ok(addrs.end) => {
            let first = tuple_bytes(addrs.start, proto.number(), ports.0);
            let last = tuple_bytes(addrs.end, proto.number(), ports.1);
            if interval {
                Ok([
                    Some(ListElem {
                        key_end: Some(last),
                        ..ListElem::key(first)
                    }),
                    None,
                ])
            } else if first == last {
                Ok([Some(ListElem::key(first)), None])
            } else {
                Err("a range in a set without intervals".into())
            }
        }
        _ => Err(format!("does not fit a set of type {key:?}")),
    }
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn tuple_bytes(a: IpAddr, proto: u8, port: u16) -> Vec<u8> {
    let mut out = addr_bytes(a);
    out.extend_from_slice(&[proto, 0, 0, 0]);
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

/// The address after `a`, if any.
fn next_addr(a: IpAddr) -> Option<IpAddr> {
    match a {
        IpAddr::V4(v4) => u32::from(v4).checked_add(1).map(|n| IpAddr::V4(n.into())),
        IpAddr::V6(v6) => u128::from(v6).checked_add(1).map(|n| IpAddr::V6(n.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{IpRange, Protocol};

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The layout `nft --debug=netlink` shows for the same elements.
    #[test]
    fn elements_are_encoded_as_nft_encodes_them() {
        // `10.0.0.0/24 . tcp . 80-90` in a concatenated interval set.
        let b = Elem::Box {
            addrs: IpRange {
                start: v4("10.0.0.0"),
                end: v4("10.0.0.255"),
            },
            proto: Protocol::Tcp,
            ports: (80, 90),
        };
        let [first, second] = list_elems(KeyType::Tuple4, true, &b).unwrap();
        assert_eq!(second, None);
        let first = first.unwrap();
        assert_eq!(first.key, [10, 0, 0, 0, 6, 0, 0, 0, 0, 80, 0, 0]);
        assert_eq!(
            first.key_end.unwrap(),
            [10, 0, 0, 255, 6, 0, 0, 0, 0, 90, 0, 0]
        );

        // `10.1.0.0/16` in an address interval set: start, and an end
        // element one past the last address.
        let r = Elem::Range(v4("10.1.0.0"), v4("10.1.255.255"));
        let [s, e] = list_elems(KeyType::Ipv4, true, &r).unwrap();
        assert_eq!(s.unwrap(), ListElem::key(vec![10, 1, 0, 0]));
        let e = e.unwrap();
        assert_eq!(
            (e.key, e.flags),
            (vec![10, 2, 0, 0], NFT_SET_ELEM_INTERVAL_END)
        );

        // A range up to the last address is open.
        let top = Elem::Range(v4("255.255.255.0"), v4("255.255.255.255"));
        let [s, e] = list_elems(KeyType::Ipv4, true, &top).unwrap();
        assert!(s.unwrap().open);
        assert_eq!(e, None);

        // `10.2.0.1 . udp . 53` in a hash set.
        let t = Elem::Box {
            addrs: IpRange {
                start: v4("10.2.0.1"),
                end: v4("10.2.0.1"),
            },
            proto: Protocol::Udp,
            ports: (53, 53),
        };
        let [k, none] = list_elems(KeyType::Tuple4, false, &t).unwrap();
        assert_eq!(none, None);
        assert_eq!(k.unwrap().key, [10, 2, 0, 1, 17, 0, 0, 0, 0, 53, 0, 0]);
    }

    #[test]
    fn elements_that_do_not_fit_the_set_are_refused() {
        let range = Elem::Range(v4("10.0.0.1"), v4("10.0.0.9"));
        assert!(list_elems(KeyType::Ipv4, false, &range).is_err());
        assert!(list_elems(KeyType::Ipv6, true, &range).is_err());
        assert!(list_elems(KeyType::Tuple4, true, &range).is_err());
        let wide = Elem::Box {
            addrs: IpRange {
                start: v4("10.0.0.1"),
                end: v4("10.0.0.2"),
            },
            proto: Protocol::Tcp,
            ports: (1, 1),
        };
        assert!(list_elems(KeyType::Tuple4, false, &wide).is_err());
    }

    #[test]
    fn a_batch_is_framed_and_only_its_last_command_asks_for_an_ack() {
        let ops = vec![
            Op::DeleteElements {
                set: "s".into(),
                key: KeyType::Ipv4,
                interval: false,
                elems: vec![Elem::Addr(v4("10.0.0.1"))],
            },
            Op::AddElements {
                set: "s".into(),
                key: KeyType::Ipv4,
                interval: false,
                elems: vec![Elem::Addr(v4("10.0.0.2"))],
            },
        ];
        let batch = encode("t", &ops, 7, &|_| None).unwrap();
        let mut msgs = Vec::new();
        let mut data = &batch.bytes[..];
        while !data.is_empty() {
            let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes([data[4], data[5]]);
            let flags = u16::from_ne_bytes([data[6], data[7]]);
            let seq = u32::from_ne_bytes(data[8..12].try_into().unwrap());
            msgs.push((ty, flags, seq));
            data = &data[len..];
        }
        assert_eq!(
            msgs,
            vec![
                (NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 7),
                ((10 << 8) | NFT_MSG_DELSETELEM, NLM_F_REQUEST, 8),
                (
                    (10 << 8) | NFT_MSG_NEWSETELEM,
                    NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
                    9
                ),
                (NFNL_MSG_BATCH_END, NLM_F_REQUEST, 10),
            ]
        );
        assert_eq!(batch.owners, vec![0, 1]);
        assert_eq!(
            (batch.owner(8), batch.owner(9), batch.owner(10)),
            (Some(0), Some(1), None)
        );
    }

    #[test]
    fn long_element_lists_are_split_over_messages() {
        let elems: Vec<Elem> = (0..20_000u32)
            .map(|i| Elem::Addr(IpAddr::V4((0x0a00_0000 + i).into())))
            .collect();
        let ops = vec![Op::AddElements {
            set: "s".into(),
            key: KeyType::Ipv4,
            interval: false,
            elems,
        }];
        let batch = encode("t", &ops, 0, &|_| None).unwrap();
        assert!(batch.owners.len() > 1, "{} messages", batch.owners.len());
        assert!(batch.owners.iter().all(|o| *o == 0));
    }

    #[test]
    fn table_maps_and_base_chain_rules_do_not_go_over_netlink() {
        assert!(carries(&[]));
        assert!(carries(&[Op::FlushChain("c".into())]));
        assert!(!carries(&[Op::AddTable]));
        let jump = NftRule {
            conds: vec![],
            action: Action::Jump("x".into()),
        };
        assert!(!carries(&[Op::AddRule {
            chain: "c".into(),
            rule: jump,
        }]));
        assert!(encode("t", &[Op::AddTable], 0, &|_| None).is_err());
    }
}
