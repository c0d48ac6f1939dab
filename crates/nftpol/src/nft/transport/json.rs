//! Ops → the JSON document `nft -j -f -` reads.
//!
//! The `nftables` crate's types are used for everything it can express;
//! verdict maps (which it cannot express yet) are written as plain JSON.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;

use nftables::expr::{
    CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, Range, SetItem,
};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, Rule, Set, SetFlag, SetType, SetTypeValue,
    Table,
};
use nftables::stmt::{Counter, JumpTarget, Match, Operator, Statement, VerdictMap};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::{Value, json};

use crate::net::{Family, IpRange, as_prefix};

use super::text::ND_TYPES;
use crate::nft::model::{Action, AddrField, Cond, Elem, KeyType, NftRule, NftSet};
use crate::nft::ops::Op;

const FAMILY: NfFamily = NfFamily::INet;

fn s(x: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(x.into()))
}

fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Owned(protocol.into()),
            field: Cow::Owned(field.into()),
        },
    )))
}

fn addr_payload(family: Family, f: AddrField) -> Expression<'static> {
    payload(
        super::text::fam(family),
        match f {
            AddrField::Saddr => "saddr",
            AddrField::Daddr => "daddr",
        },
    )
}

fn meta_l4proto() -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta {
        key: MetaKey::L4proto,
    }))
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn port_expr(s: u16, e: u16) -> Expression<'static> {
    if s == e {
        Expression::Number(s as u32)
    } else {
        Expression::Range(Box::new(Range {
            range: [Expression::Number(s as u32), Expression::Number(e as u32)],
        }))
    }
}

fn cond(c: &Cond) -> Statement<'static> {
    match c {
        Cond::CtEstablished => Statement::Match(Match {
            left: Expression::Named(NamedExpression::CT(CT {
                key: Cow::Borrowed("state"),
                family: None,
                dir: None,
            })),
            right: Expression::List(vec![s("established"), s("related")]),
            op: Operator::IN,
        }),
        Cond::Icmpv6Discovery => eq(
            payload("icmpv6", "type"),
            Expression::Named(NamedExpression::Set(
                ND_TYPES.iter().map(|t| SetItem::Element(s(*t))).collect(),
            )),
        ),
        Cond::AddrIn { family, field, set } => {
            eq(addr_payload(*family, *field), s(format!("@{set}")))
        }
        Cond::TupleIn { family, field, set } => eq(
            Expression::Named(NamedExpression::Concat(vec![
                addr_payload(*family, *field),
                meta_l4proto(),
                payload("th", "dport"),
            ])),
            s(format!("@{set}")),
        ),
    }
}

fn statements(r: &NftRule) -> Vec<Statement<'static>> {
    let mut out: Vec<Statement<'static>> = Vec::new();
    for c in &r.conds {
        out.push(cond(c));
        if let Cond::Icmpv6Discovery = c {
            // Only from the link: a router never forwards these with 255.
            out.push(eq(payload("ip6", "hoplimit"), Expression::Number(255)));
        }
    }
    match &r.action {
        Action::Accept => out.push(Statement::Accept(None)),
        Action::CountDrop => {
            out.push(Statement::Counter(Counter::Anonymous(None)));
            out.push(Statement::Drop(None));
        }
        Action::Jump(target) => out.push(Statement::Jump(JumpTarget {
            target: Cow::Owned(target.clone()),
        })),
        Action::Dispatch { family, field, map } => out.push(Statement::VerdictMap(VerdictMap {
            key: addr_payload(*family, *field),
            data: s(format!("@{map}")),
        })),
    }
    out
}

fn ip_expr(ip: IpAddr) -> Expression<'static> {
    s(ip.to_string())
}

fn addrs_expr(r: &IpRange) -> Expression<'static> {
    match as_prefix(r) {
        Some(p) if p.prefix_len() == p.max_prefix_len() => ip_expr(r.start),
        Some(p) => Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(ip_expr(p.network())),
            len: p.prefix_len() as u32,
        })),
        None => Expression::Range(Box::new(Range {
            range: [ip_expr(r.start), ip_expr(r.end)],
        })),
    }
}

fn elem(e: &Elem) -> Expression<'static> {
    match e {
        Elem::Addr(ip) => ip_expr(*ip),
        Elem::Range(a, b) => addrs_expr(&IpRange { start: *a, end: *b }),
        Elem::Box {
            addrs,
            proto,
            ports: (lo, hi),
        } => Expression::Named(NamedExpression::Concat(vec![
            addrs_expr(addrs),
            s(proto.keyword()),
            port_expr(*lo, *hi),
        ])),
    }
}

fn set_type(k: KeyType) -> SetTypeValue<'static> {
    match k {
        KeyType::Ipv4 => SetTypeValue::Single(SetType::Ipv4Addr),
        KeyType::Ipv6 => SetTypeValue::Single(SetType::Ipv6Addr),
        KeyType::Tuple4 => SetTypeValue::Concatenated(Cow::Owned(vec![
            SetType::Ipv4Addr,
            SetType::InetProto,
            SetType::InetService,
        ])),
        KeyType::Tuple6 => SetTypeValue::Concatenated(Cow::Owned(vec![
            SetType::Ipv6Addr,
            SetType::InetProto,
            SetType::InetService,
        ])),
    }
}

fn key_type_json(k: KeyType) -> Value {
    serde_json::to_value(set_type(k)).expect("set types serialize")
}

fn hook(h: &str) -> NfHook {
    match h {
        "input" => NfHook::Input,
        "output" => NfHook::Output,
        "prerouting" => NfHook::Prerouting,
        "postrouting" => NfHook::Postrouting,
        _ => NfHook::Forward,
    }
}

fn cmd(c: NfCmd<'static>) -> Value {
    serde_json::to_value(c).expect("nft commands serialize")
}

/// One op as JSON commands.
fn op_json(table: &str, op: &Op) -> Value {
    let t = || Cow::<'static, str>::Owned(table.to_string());
    let table_obj = || Table {
        family: FAMILY,
        name: t(),
        handle: None,
    };
    let chain_ref = |name: &str| Chain {
        family: FAMILY,
        table: t(),
        name: Cow::Owned(name.to_string()),
        ..Default::default()
    };
    let element = |set: &str, elems: &[Elem]| Element {
        family: FAMILY,
        table: t(),
        name: Cow::Owned(set.to_string()),
        elem: Cow::Owned(elems.iter().map(elem).collect()),
    };
    let map_ref = |name: &str| json!({"family": "inet", "table": table, "name": name});
    match op {
        Op::AddTable => cmd(NfCmd::Add(NfListObject::Table(table_obj()))),
        Op::DeleteTable => cmd(NfCmd::Delete(NfListObject::Table(table_obj()))),
        Op::AddSet { name, set } => {
            let elems: Vec<Expression<'static>> = set.elements.iter().map(elem).collect();
            cmd(NfCmd::Add(NfListObject::Set(Box::new(Set {
                family: FAMILY,
                table: t(),
                name: Cow::Owned(name.clone()),
                handle: None,
                set_type: set_type(set.key),
                policy: None,
                flags: set.interval.then(|| HashSet::from([SetFlag::Interval])),
                elem: (!elems.is_empty()).then(|| Cow::Owned(elems)),
                timeout: None,
                gc_interval: None,
                size: None,
                comment: Some(Cow::Owned(set.comment.clone())),
            }))))
        }
        Op::DeleteSet(name) => cmd(NfCmd::Delete(NfListObject::Set(Box::new(Set {
            family: FAMILY,
            table: t(),
            name: Cow::Owned(name.clone()),
            handle: None,
            set_type: SetTypeValue::Single(SetType::Ipv4Addr),
            policy: None,
            flags: None,
            elem: None,
            timeout: None,
            gc_interval: None,
            size: None,
            comment: None,
        })))),
        Op::AddElements { set, elems, .. } => {
            cmd(NfCmd::Add(NfListObject::Element(element(set, elems))))
        }
        Op::DeleteElements { set, elems, .. } => {
            cmd(NfCmd::Delete(NfListObject::Element(element(set, elems))))
        }
        Op::AddMap { name, key } => json!({"add": {"map": {
            "family": "inet", "table": table, "name": name,
            "type": key_type_json(*key), "map": "verdict"
        }}}),
        Op::DeleteMap(name) => json!({"delete": {"map": map_ref(name)}}),
        Op::AddMapEntries { map, entries } => {
            let elem: Vec<Value> = entries
                .iter()
                .map(|(ip, chain)| json!([ip.to_string(), {"jump": {"target": chain}}]))
                .collect();
            json!({"add": {"element": {"family": "inet", "table": table, "name": map, "elem": elem}}})
        }
        Op::DeleteMapEntries { map, keys } => {
            let elem: Vec<Value> = keys.iter().map(|ip| json!(ip.to_string())).collect();
            json!({"delete": {"element": {"family": "inet", "table": table, "name": map, "elem": elem}}})
        }
        Op::AddChain { name, hook: h } => {
            let mut c = chain_ref(name);
            if let Some(h) = h {
                c._type = Some(NfChainType::Filter);
                c.hook = Some(hook(h.hook));
                c.prio = Some(h.priority);
                c.policy = Some(NfChainPolicy::Accept);
            }
            cmd(NfCmd::Add(NfListObject::Chain(c)))
        }
        Op::FlushChain(name) => cmd(NfCmd::Flush(FlushObject::Chain(chain_ref(name)))),
        Op::DeleteChain(name) => cmd(NfCmd::Delete(NfListObject::Chain(chain_ref(name)))),
        Op::AddRule { chain, rule } => cmd(NfCmd::Add(NfListObject::Rule(Rule {
            family: FAMILY,
            table: t(),
            chain: Cow::Owned(chain.clone()),
            expr: Cow::Owned(statements(rule)),
            handle: None,
            index: None,
            comment: None,
        }))),
    }
}

/// The batch for `nft -j -f -` as bytes, written one command at a time:
/// the document as a whole never exists as a tree of values (for a full
/// sync at 100k pods that tree was the controller's peak memory).
pub fn batch_bytes(table: &str, ops: &[Op]) -> Vec<u8> {
    let mut out = b"{\"nftables\":[".to_vec();
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_op(&mut out, table, op);
    }
    out.extend_from_slice(b"]}");
    out
}

/// One command; set elements (most of a large batch) written directly
/// rather than through value trees: the command without its elements is
/// serialized as usual, then `"elem":[...]` goes before its closing braces.
fn write_op(out: &mut Vec<u8>, table: &str, op: &Op) {
    let (bare, elems): (Value, Box<dyn Iterator<Item = &Elem> + '_>) = match op {
        Op::AddSet { name, set } if !set.elements.is_empty() => {
            let bare = Op::AddSet {
                name: name.clone(),
                set: NftSet {
                    elements: Default::default(),
                    ..set.clone()
                },
            };
            (op_json(table, &bare), Box::new(set.elements.iter()))
        }
        Op::AddElements { elems, .. } | Op::DeleteElements { elems, .. } => {
            let mut bare = op_json(table, op);
            for verb in ["add", "delete"] {
                if let Some(obj) = bare
                    .get_mut(verb)
                    .and_then(|v| v.get_mut("element"))
                    .and_then(Value::as_object_mut)
                {
                    obj.remove("elem");
                }
            }
            (bare, Box::new(elems.iter()))
        }
        _ => {
            serde_json::to_writer(&mut *out, &op_json(table, op)).expect("JSON values serialize");
            return;
        }
    };
    let start = out.len();
    serde_json::to_writer(&mut *out, &bare).expect("JSON values serialize");
    // `{"VERB":{"KIND":{...}}}`: reopen the innermost object.
    debug_assert!(out[start..].ends_with(b"}}}"));
    out.truncate(out.len() - 3);
    out.extend_from_slice(b",\"elem\":[");
    for (i, e) in elems.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_elem(out, e);
    }
    out.extend_from_slice(b"]}}}");
}

fn write_addrs(out: &mut Vec<u8>, r: &IpRange) {
    use std::io::Write as _;
    let _ = match as_prefix(r) {
        Some(p) if p.prefix_len() == p.max_prefix_len() => write!(out, "\"{}\"", r.start),
        Some(p) => write!(
            out,
            "{{\"prefix\":{{\"addr\":\"{}\",\"len\":{}}}}}",
            p.network(),
            p.prefix_len()
        ),
        None => write!(out, "{{\"range\":[\"{}\",\"{}\"]}}", r.start, r.end),
    };
}

fn write_elem(out: &mut Vec<u8>, e: &Elem) {
    use std::io::Write as _;
    match e {
        Elem::Addr(ip) => {
            let _ = write!(out, "\"{ip}\"");
        }
        Elem::Range(a, b) => write_addrs(out, &IpRange { start: *a, end: *b }),
        Elem::Box {
            addrs,
            proto,
            ports: (lo, hi),
        } => {
            out.extend_from_slice(b"{\"concat\":[");
            write_addrs(out, addrs);
            let _ = write!(out, ",\"{}\",", proto.keyword());
            let _ = if lo == hi {
                write!(out, "{lo}")
            } else {
                write!(out, "{{\"range\":[{lo},{hi}]}}")
            };
            out.extend_from_slice(b"]}");
        }
    }
}

/// The batch document for `nft -j -f -`.
pub fn batch(table: &str, ops: &[Op]) -> Value {
    let cmds: Vec<Value> = ops.iter().map(|op| op_json(table, op)).collect();
    json!({ "nftables": cmds })
}

/// Every command's table, for the guard that nftpol touches only its own.
pub fn tables_named(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(cmds) = doc.get("nftables").and_then(Value::as_array) {
        for c in cmds {
            for (_verb, obj) in c.as_object().into_iter().flatten() {
                for (kind, body) in obj.as_object().into_iter().flatten() {
                    let name = if kind == "table" {
                        body.get("name")
                    } else {
                        body.get("table")
                    };
                    out.push(name.and_then(Value::as_str).unwrap_or("").to_string());
                }
            }
        }
    }
    out
}

/// The whole ruleset as one JSON document (`nftpol compile --json`): the
/// same batch the first sync sends.
pub fn ruleset_json(rs: &crate::nft::model::Ruleset) -> Value {
    batch(&rs.table, &crate::nft::ops::full(rs))
}
