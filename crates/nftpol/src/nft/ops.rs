//! Transactions: the full replacement of the table, and the difference
//! between what was applied and what is wanted. Both are lists of [`Op`]s
//! that become one `nft -j -f -` batch.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::model::{Elem, Hook, KeyType, NftRule, NftSet, Part, Ruleset};
use super::region;

/// One command of a batch. Every command names our table, and only it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddTable,
    DeleteTable,
    AddSet {
        name: String,
        set: NftSet,
    },
    DeleteSet(String),
    AddElements {
        set: String,
        key: KeyType,
        /// The set has `flags interval`.
        interval: bool,
        elems: Vec<Elem>,
    },
    DeleteElements {
        set: String,
        key: KeyType,
        interval: bool,
        elems: Vec<Elem>,
    },
    AddMap {
        name: String,
        key: KeyType,
    },
    AddMapEntries {
        map: String,
        entries: Vec<(IpAddr, String)>,
    },
    DeleteMapEntries {
        map: String,
        keys: Vec<IpAddr>,
    },
    DeleteMap(String),
    AddChain {
        name: String,
        hook: Option<Hook>,
    },
    FlushChain(String),
    DeleteChain(String),
    AddRule {
        chain: String,
        rule: NftRule,
    },
}

/// Replaces the whole table in one transaction: `add table` first so that
/// the `delete` cannot fail when the table is absent, then everything anew.
pub fn full(rs: &Ruleset) -> Vec<Op> {
    let mut ops = vec![Op::AddTable, Op::DeleteTable, Op::AddTable];
    create_all(rs, &mut ops);
    ops
}

/// Creation of every object, in an order that satisfies references: sets,
/// regular chains (jump targets before jumpers), maps, base chains.
fn create_all(rs: &Ruleset, ops: &mut Vec<Op>) {
    for (name, set) in &rs.sets {
        ops.push(Op::AddSet {
            name: name.clone(),
            set: set.clone(),
        });
    }
    let order = rs.chain_order();
    for name in order.iter().filter(|n| rs.chains[**n].hook.is_none()) {
        ops.push(Op::AddChain {
            name: (*name).clone(),
            hook: None,
        });
    }
    for name in order.iter().filter(|n| rs.chains[**n].hook.is_none()) {
        push_rules(rs, name, ops);
    }
    for (name, map) in &rs.maps {
        ops.push(Op::AddMap {
            name: name.clone(),
            key: map.key,
        });
        if !map.elements.is_empty() {
            ops.push(Op::AddMapEntries {
                map: name.clone(),
                entries: map.elements.iter().map(|(k, v)| (*k, v.clone())).collect(),
            });
        }
    }
    // Base chains come last: they start seeing packets once they exist, and
    // by then everything they reach does.
    for name in order.iter().filter(|n| rs.chains[**n].hook.is_some()) {
        ops.push(Op::AddChain {
            name: (*name).clone(),
            hook: rs.chains[*name].hook,
        });
        push_rules(rs, name, ops);
    }
}

fn push_rules(rs: &Ruleset, name: &str, ops: &mut Vec<Op>) {
    for rule in &rs.chains[name].rules {
        ops.push(Op::AddRule {
            chain: name.to_string(),
            rule: rule.clone(),
        });
    }
}

/// An incremental transaction and what the table holds after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub ops: Vec<Op>,
    /// `new`, except that an interval set holds the elements the kernel will
    /// have: the same region as `new`'s, possibly cut differently (see
    /// [`region::update`]). The next diff starts from this.
    pub applied: Ruleset,
}

/// What turns `old` into `new`, or `None` when that needs a full
/// replacement (another table name, or a set or base chain whose type
/// changed). No ops means nothing changed.
pub fn diff(old: &Ruleset, new: &Ruleset) -> Option<Change> {
    diff_with(old, new, false)
}

/// [`diff`], but every set ends with exactly `new`'s elements, cut as they
/// are there (which must then be disjoint): to restore a table to a state
/// recorded earlier, as the benchmarks do.
pub fn diff_exact(old: &Ruleset, new: &Ruleset) -> Option<Change> {
    diff_with(old, new, true)
}

fn diff_with(old: &Ruleset, new: &Ruleset, exact: bool) -> Option<Change> {
    if old.table != new.table {
        return None;
    }
    let mut ops = Vec::new();
    let mut applied = new.clone();

    // 1. Sets: new ones whole, changed ones by element; the sets that hold
    //    one region between them together.
    let mut regions: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for (name, set) in &new.sets {
        match old.sets.get(name) {
            None => ops.push(Op::AddSet {
                name: name.clone(),
                set: set.clone(),
            }),
            Some(prev) if !prev.same_shape(set) => return None,
            Some(_) if set.region.is_some() && !exact => {
                let region = set.region.as_deref().expect("checked");
                regions.entry(region).or_default().push(name);
            }
            Some(prev) => {
                let gone: Vec<Elem> = prev.elements.difference(&set.elements).cloned().collect();
                let added: Vec<Elem> = set.elements.difference(&prev.elements).cloned().collect();
                if !gone.is_empty() {
                    ops.push(Op::DeleteElements {
                        set: name.clone(),
                        key: set.key,
                        interval: set.interval,
                        elems: gone,
                    });
                }
                if !added.is_empty() {
                    ops.push(Op::AddElements {
                        set: name.clone(),
                        key: set.key,
                        interval: set.interval,
                        elems: added,
                    });
                }
            }
        }
    }
    for names in regions.values() {
        update_region(old, new, names, &mut ops, &mut applied)?;
    }

    // 2. Chains: declare new ones, then refill new and changed ones.
    let order = new.chain_order();
    for name in &order {
        let chain = &new.chains[*name];
        match old.chains.get(*name) {
            Some(prev) if prev.hook != chain.hook => return None,
            Some(_) => {}
            None if chain.hook.is_some() => return None,
            None => ops.push(Op::AddChain {
                name: (*name).clone(),
                hook: None,
            }),
        }
    }
    for name in &order {
        let chain = &new.chains[*name];
        match old.chains.get(*name) {
            Some(prev) if prev.rules == chain.rules => {}
            Some(_) => {
                ops.push(Op::FlushChain((*name).clone()));
                push_rules(new, name, &mut ops);
            }
            None => push_rules(new, name, &mut ops),
        }
    }

    // 3. Dispatch maps, entry by entry.
    for (name, map) in &new.maps {
        let prev = old.maps.get(name)?;
        if prev.key != map.key {
            return None;
        }
        let stale: Vec<IpAddr> = prev
            .elements
            .iter()
            .filter(|(k, v)| map.elements.get(*k) != Some(*v))
            .map(|(k, _)| *k)
            .collect();
        let fresh: Vec<(IpAddr, String)> = map
            .elements
            .iter()
            .filter(|(k, v)| prev.elements.get(*k) != Some(*v))
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        if !stale.is_empty() {
            ops.push(Op::DeleteMapEntries {
                map: name.clone(),
                keys: stale,
            });
        }
        if !fresh.is_empty() {
            ops.push(Op::AddMapEntries {
                map: name.clone(),
                entries: fresh,
            });
        }
    }
    for name in old.maps.keys() {
        if !new.maps.contains_key(name) {
            return None;
        }
    }

    // 4. Removals, now that nothing refers to them: chains (emptied first,
    //    jumpers before their targets), then sets.
    let mut gone: Vec<&String> = old
        .chain_order()
        .into_iter()
        .filter(|n| !new.chains.contains_key(*n))
        .collect();
    if gone.iter().any(|n| old.chains[*n].hook.is_some()) {
        return None;
    }
    for name in &gone {
        ops.push(Op::FlushChain((*name).clone()));
    }
    gone.reverse();
    for name in gone {
        ops.push(Op::DeleteChain(name.clone()));
    }
    let old_sets: BTreeSet<&String> = old.sets.keys().collect();
    for name in old_sets {
        if !new.sets.contains_key(name) {
            ops.push(Op::DeleteSet(name.clone()));
        }
    }
    Some(Change { ops, applied })
}

/// The sets `names`, which hold one region between them: the
/// least-touching [`region::update`] of their elements taken together, each
/// deletion from the set that holds the element, each addition to the set
/// of its [`Part`]. `None` when a part's set is missing (a full replacement
/// then).
fn update_region(
    old: &Ruleset,
    new: &Ruleset,
    names: &[&String],
    ops: &mut Vec<Op>,
    applied: &mut Ruleset,
) -> Option<()> {
    if names
        .iter()
        .all(|n| old.sets[*n].elements == new.sets[*n].elements)
    {
        return Some(());
    }
    let family = new.sets[names[0]].key.family();
    let had: BTreeSet<Elem> = names
        .iter()
        .flat_map(|n| old.sets[*n].elements.iter().cloned())
        .collect();
    let want: BTreeSet<Elem> = names
        .iter()
        .flat_map(|n| new.sets[*n].elements.iter().cloned())
        .collect();
    let u = region::update(family, &had, &want);
    let mut gone: BTreeMap<&String, Vec<Elem>> = BTreeMap::new();
    for e in u.gone {
        let holder = names.iter().find(|n| old.sets[**n].elements.contains(&e))?;
        gone.entry(*holder).or_default().push(e);
    }
    let mut added: BTreeMap<&String, Vec<Elem>> = BTreeMap::new();
    for e in u.added {
        let part = Part::of(&e);
        let to = names.iter().find(|n| new.sets[**n].part() == part)?;
        added.entry(*to).or_default().push(e);
    }
    for name in names {
        let (key, interval) = (new.sets[*name].key, new.sets[*name].interval);
        let mut now = (*old.sets[*name].elements).clone();
        if let Some(elems) = gone.remove(name) {
            for e in &elems {
                now.remove(e);
            }
            ops.push(Op::DeleteElements {
                set: (*name).clone(),
                key,
                interval,
                elems,
            });
        }
        if let Some(elems) = added.remove(name) {
            now.extend(elems.iter().cloned());
            ops.push(Op::AddElements {
                set: (*name).clone(),
                key,
                interval,
                elems,
            });
        }
        applied
            .sets
            .get_mut(*name)
            .expect("applied is a copy of new")
            .elements = Arc::new(now);
    }
    Some(())
}

/// Removes the table whether or not it exists.
pub fn remove_table() -> Vec<Op> {
    vec![Op::AddTable, Op::DeleteTable]
}
