//! An in-memory kernel, the [`Transport`] of unit tests (as knftables has
//! `fake` beside `realNFTables`): it keeps its own copy of each table and
//! applies every transaction to it op by op, refusing what nf_tables
//! refuses (a missing object, a set or chain still in use, a map entry
//! whose key is taken), all or nothing. It can be told to refuse the next
//! transactions, and records every one it was sent.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{NftError, Transport, Via, netlink};
use crate::nft::model::{Action, Cond, NftChain, NftMap, Ruleset};
use crate::nft::ops::{self, Op};

/// The kind of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Full,
    Diff,
    DeleteTable,
}

/// One transaction the fake was sent.
#[derive(Clone, Debug)]
pub(crate) struct Sent {
    pub kind: Kind,
    pub ops: Vec<Op>,
    /// Applied (else refused, and nothing changed).
    pub applied: bool,
}

/// A handle on the fake kernel; clones share it, so a test keeps one while
/// the Syncer owns another.
#[derive(Clone, Debug, Default)]
pub(crate) struct FakeKernel(Arc<Mutex<State>>);

#[derive(Debug, Default)]
struct State {
    tables: BTreeMap<String, Ruleset>,
    /// How many of the next full replacements / diffs to refuse.
    refuse_full: usize,
    refuse_diffs: usize,
    sent: Vec<Sent>,
}

impl FakeKernel {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kernel's copy of `table`, if it exists.
    pub fn table(&self, table: &str) -> Option<Ruleset> {
        self.state().tables.get(table).cloned()
    }

    /// Refuses the next `n` full replacements (`usize::MAX`: until told
    /// otherwise), as nft does when it cannot load a table.
    pub fn refuse_full(&self, n: usize) {
        self.state().refuse_full = n;
    }

    /// Refuses the next `n` diffs.
    pub fn refuse_diffs(&self, n: usize) {
        self.state().refuse_diffs = n;
    }

    /// Every transaction sent so far, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.state().sent.clone()
    }

    /// How many transactions of `kind` were sent (applied or not).
    pub fn count(&self, kind: Kind) -> usize {
        self.state().sent.iter().filter(|s| s.kind == kind).count()
    }

    /// Changes `table` behind nftpol's back, as `nft flush chain` by hand
    /// does.
    pub fn tamper(&self, table: &str, change: impl FnOnce(&mut Ruleset)) {
        change(
            self.state()
                .tables
                .get_mut(table)
                .expect("the table exists"),
        );
    }

    fn transact(&self, kind: Kind, table: &str, ops: Vec<Op>) -> Result<(), NftError> {
        let mut state = self.state();
        let refuse = match kind {
            Kind::Full => take_one(&mut state.refuse_full),
            Kind::Diff => take_one(&mut state.refuse_diffs),
            Kind::DeleteTable => false,
        };
        let result = if refuse {
            Err("out of memory".to_string())
        } else {
            let mut copy = state.tables.get(table).cloned();
            apply_all(&mut copy, table, &ops).map(|()| copy)
        };
        let applied = result.is_ok();
        state.sent.push(Sent { kind, ops, applied });
        match result {
            Ok(Some(rs)) => {
                state.tables.insert(table.to_string(), rs);
                Ok(())
            }
            Ok(None) => {
                state.tables.remove(table);
                Ok(())
            }
            Err(why) => Err(NftError::Failed {
                status: "exit status: 1".into(),
                stderr: why,
            }),
        }
    }
}

/// Counts one down; whether there was one.
fn take_one(n: &mut usize) -> bool {
    let some = *n > 0;
    *n = n.saturating_sub(1);
    some
}

/// Reports the path the netlink transport ([`super::NetlinkDiffs`]) takes.
impl Transport for FakeKernel {
    fn replace(&mut self, want: &Ruleset) -> Result<Via, NftError> {
        self.transact(Kind::Full, &want.table, ops::full(want))
            .map(|()| Via::NftText)
    }

    fn apply(&mut self, after: &Ruleset, ops: &[Op]) -> Result<Via, NftError> {
        self.transact(Kind::Diff, &after.table, ops.to_vec())?;
        Ok(if netlink::carries(ops) {
            Via::Netlink
        } else {
            Via::NftJson
        })
    }

    fn delete_table(&mut self, table: &str) -> Result<(), NftError> {
        self.transact(Kind::DeleteTable, table, ops::remove_table())
    }
}

/// Applies `ops` to `table` (absent: `None`) in order; the first refused
/// op refuses them all (the caller keeps the table it had).
fn apply_all(table: &mut Option<Ruleset>, name: &str, ops: &[Op]) -> Result<(), String> {
    for op in ops {
        apply(table, name, op).map_err(|why| format!("{op:?}: {why}"))?;
    }
    Ok(())
}

fn apply(table: &mut Option<Ruleset>, name: &str, op: &Op) -> Result<(), String> {
    match op {
        Op::AddTable => {
            table.get_or_insert_with(|| Ruleset {
                table: name.to_string(),
                ..Ruleset::default()
            });
            return Ok(());
        }
        Op::DeleteTable => {
            return table
                .take()
                .map(|_| ())
                .ok_or_else(|| "no such table".into());
        }
        _ => {}
    }
    let rs = table.as_mut().ok_or("no such table")?;
    match op {
        Op::AddTable | Op::DeleteTable => unreachable!("handled above"),
        Op::AddSet { name, set } => match rs.sets.get_mut(name) {
            Some(have) if !have.same_shape(set) => {
                return Err("a set of another type exists".into());
            }
            Some(have) => {
                let mut elements = (*have.elements).clone();
                elements.extend(set.elements.iter().cloned());
                have.elements = Arc::new(elements);
            }
            None => {
                rs.sets.insert(name.clone(), set.clone());
            }
        },
        Op::DeleteSet(set) => {
            let in_use = rs.chains.values().flat_map(|c| &c.rules).any(|r| {
                r.conds.iter().any(|c| {
                    matches!(c, Cond::AddrIn { set: s, .. } | Cond::TupleIn { set: s, .. } if s == set)
                })
            });
            if in_use {
                return Err("set in use".into());
            }
            rs.sets.remove(set).ok_or("no such set")?;
        }
        Op::AddElements { set, elems, .. } => {
            let have = rs.sets.get_mut(set).ok_or("no such set")?;
            let mut elements = (*have.elements).clone();
            elements.extend(elems.iter().cloned());
            have.elements = Arc::new(elements);
        }
        Op::DeleteElements { set, elems, .. } => {
            let have = rs.sets.get_mut(set).ok_or("no such set")?;
            let mut elements = (*have.elements).clone();
            for e in elems {
                if !elements.remove(e) {
                    return Err(format!("no element {e:?}"));
                }
            }
            have.elements = Arc::new(elements);
        }
        Op::AddMap { name, key } => match rs.maps.get(name) {
            Some(have) if have.key != *key => return Err("a map of another type exists".into()),
            Some(_) => {}
            None => {
                rs.maps.insert(
                    name.clone(),
                    NftMap {
                        key: *key,
                        elements: BTreeMap::new(),
                    },
                );
            }
        },
        Op::AddMapEntries { map, entries } => {
            let chains: Vec<bool> = entries
                .iter()
                .map(|(_, c)| rs.chains.contains_key(c))
                .collect();
            let have = rs.maps.get_mut(map).ok_or("no such map")?;
            for ((key, chain), exists) in entries.iter().zip(chains) {
                if !exists {
                    return Err(format!("no chain {chain} to jump to"));
                }
                match have.elements.get(key) {
                    Some(other) if other != chain => return Err(format!("{key} is taken")),
                    _ => {
                        have.elements.insert(*key, chain.clone());
                    }
                }
            }
        }
        Op::DeleteMapEntries { map, keys } => {
            let have = rs.maps.get_mut(map).ok_or("no such map")?;
            for key in keys {
                have.elements.remove(key).ok_or(format!("no entry {key}"))?;
            }
        }
        Op::DeleteMap(map) => {
            let dispatching = rs
                .chains
                .values()
                .flat_map(|c| &c.rules)
                .any(|r| matches!(&r.action, Action::Dispatch { map: m, .. } if m == map));
            if dispatching {
                return Err("map in use".into());
            }
            rs.maps.remove(map).ok_or("no such map")?;
        }
        Op::AddChain { name, hook } => match rs.chains.get(name) {
            Some(have) if have.hook != *hook => return Err("a chain of another type exists".into()),
            Some(_) => {}
            None => {
                rs.chains.insert(
                    name.clone(),
                    NftChain {
                        hook: *hook,
                        rules: Vec::new(),
                    },
                );
            }
        },
        Op::FlushChain(chain) => rs
            .chains
            .get_mut(chain)
            .ok_or("no such chain")?
            .rules
            .clear(),
        Op::DeleteChain(chain) => {
            let have = rs.chains.get(chain).ok_or("no such chain")?;
            let jumped_to = rs
                .chains
                .values()
                .flat_map(|c| &c.rules)
                .any(|r| matches!(&r.action, Action::Jump(to) if to == chain))
                || rs
                    .maps
                    .values()
                    .any(|m| m.elements.values().any(|to| to == chain));
            if !have.rules.is_empty() || jumped_to {
                return Err("chain in use".into());
            }
            rs.chains.remove(chain);
        }
        Op::AddRule { chain, rule } => {
            for c in &rule.conds {
                if let Cond::AddrIn { set, .. } | Cond::TupleIn { set, .. } = c
                    && !rs.sets.contains_key(set)
                {
                    return Err(format!("no set {set}"));
                }
            }
            match &rule.action {
                Action::Jump(to) if !rs.chains.contains_key(to) => {
                    return Err(format!("no chain {to} to jump to"));
                }
                Action::Dispatch { map, .. } if !rs.maps.contains_key(map) => {
                    return Err(format!("no map {map}"));
                }
                _ => {}
            }
            rs.chains
                .get_mut(chain)
                .ok_or("no such chain")?
                .rules
                .push(rule.clone());
        }
    }
    Ok(())
}

mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::nft::model::{Elem, KeyType, NftSet};

    fn table() -> Ruleset {
        Ruleset {
            table: "t".into(),
            sets: BTreeMap::from([(
                "s".to_string(),
                NftSet {
                    key: KeyType::Ipv4,
                    interval: false,
                    comment: String::new(),
                    elements: Arc::new([Elem::Addr(IpAddr::from([10, 0, 0, 1]))].into()),
                    region: None,
                },
            )]),
            ..Ruleset::default()
        }
    }

    #[test]
    fn a_full_replacement_leaves_exactly_the_wanted_table() {
        let mut kernel = FakeKernel::default();
        kernel.replace(&table()).unwrap();
        kernel.replace(&table()).unwrap();
        assert_eq!(kernel.table("t"), Some(table()));
        kernel.delete_table("t").unwrap();
        assert_eq!(kernel.table("t"), None);
        kernel
            .delete_table("t")
            .expect("removing an absent table is no error");
    }

    #[test]
    fn a_refused_op_refuses_the_whole_transaction() {
        let mut kernel = FakeKernel::default();
        kernel.replace(&table()).unwrap();
        let add = Op::AddElements {
            set: "s".into(),
            key: KeyType::Ipv4,
            interval: false,
            elems: vec![Elem::Addr(IpAddr::from([10, 0, 0, 2]))],
        };
        let absent = Op::DeleteElements {
            set: "s".into(),
            key: KeyType::Ipv4,
            interval: false,
            elems: vec![Elem::Addr(IpAddr::from([10, 0, 0, 9]))],
        };
        let e = kernel.apply(&table(), &[add, absent]).unwrap_err();
        assert!(e.to_string().contains("no element"), "{e}");
        assert_eq!(kernel.table("t"), Some(table()), "nothing changed");
        assert!(
            kernel
                .apply(&table(), &[Op::DeleteSet("x".into())])
                .is_err()
        );
        assert!(
            kernel
                .apply(&table(), &[Op::FlushChain("x".into())])
                .is_err()
        );
        let sent = kernel.sent();
        assert_eq!(sent.len(), 4);
        assert!(sent[0].applied && !sent[1].applied);
    }
}
