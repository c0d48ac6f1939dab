//! What the sync sends: a full replacement that never leaves a moment
//! without rules, and diffs that touch only what changed, in an order the
//! kernel accepts (references exist before use, nothing is deleted while
//! referenced).

mod common;

use std::collections::BTreeSet;

use common::{json, mk_ns, mk_pod, mk_policy, snapshot};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use nftpol::compiler::{PodInfo, compile};
use nftpol::nft::model::{Action, Ruleset};
use nftpol::nft::ops::{Op, diff, full};
use nftpol::nft::render;
use nftpol::nft::transport::json::batch;

fn pods() -> Vec<PodInfo> {
    vec![
        mk_pod("x", "a", "n1", "10.0.1.1", &[("app", "a")]),
        mk_pod("x", "b", "n1", "10.0.1.2", &[("app", "b")]),
        mk_pod("y", "c", "n2", "10.0.2.1", &[("app", "c")]),
    ]
}

fn allow_from_app(app: &str) -> NetworkPolicy {
    mk_policy(
        "x",
        &format!("from-{app}"),
        json!({"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": app}}}]}]}),
    )
}

fn ruleset(pods: Vec<PodInfo>, policies: Vec<NetworkPolicy>) -> Ruleset {
    let snap = snapshot([mk_ns("x", &[]), mk_ns("y", &[])], pods, policies);
    render(&compile(&snap, "n1").plan, "nftpol")
}

#[test]
fn a_full_sync_replaces_the_table_in_one_batch_without_failing_when_absent() {
    let ops = full(&ruleset(pods(), vec![allow_from_app("c")]));
    assert_eq!(ops[..3], [Op::AddTable, Op::DeleteTable, Op::AddTable]);
    assert!(!ops[3..].contains(&Op::DeleteTable));
}

#[test]
fn a_full_sync_creates_every_object_before_it_is_referenced() {
    let rs = ruleset(pods(), vec![allow_from_app("c"), allow_from_app("b")]);
    let mut sets = BTreeSet::new();
    let mut chains = BTreeSet::new();
    let mut maps = BTreeSet::new();
    for op in full(&rs) {
        match op {
            Op::AddSet { name, .. } => {
                sets.insert(name);
            }
            Op::AddChain { name, .. } => {
                chains.insert(name);
            }
            Op::AddMap { name, .. } => {
                maps.insert(name);
            }
            Op::AddRule { chain, rule } => {
                assert!(chains.contains(&chain), "rule before chain {chain}");
                let text = format!("{rule:?}");
                for set in rs.sets.keys() {
                    if text.contains(&format!("\"{set}\"")) {
                        assert!(sets.contains(set), "{chain} uses {set} before it exists");
                    }
                }
                match &rule.action {
                    Action::Jump(t) => assert!(chains.contains(t), "jump to {t} before it exists"),
                    Action::Dispatch { map, .. } => assert!(maps.contains(map)),
                    _ => {}
                }
            }
            Op::AddMapEntries { entries, .. } => {
                for (_, c) in entries {
                    assert!(chains.contains(&c), "map entry to {c} before it exists");
                }
            }
            _ => {}
        }
    }
}

/// The ops of the diff, which must exist.
fn ops(before: &Ruleset, after: &Ruleset) -> Vec<Op> {
    diff(before, after).expect("incremental diff").ops
}

fn kinds(ops: &[Op]) -> Vec<&'static str> {
    ops.iter()
        .map(|o| match o {
            Op::AddSet { .. } => "add set",
            Op::AddChain { .. } => "add chain",
            Op::AddRule { .. } => "add rule",
            Op::AddMapEntries { .. } => "add map entry",
            Op::AddElements { .. } => "add elements",
            Op::DeleteElements { .. } => "delete elements",
            _ => "other",
        })
        .collect()
}

#[test]
fn an_unchanged_cluster_sends_nothing() {
    let a = ruleset(pods(), vec![allow_from_app("c")]);
    let b = ruleset(pods(), vec![allow_from_app("c")]);
    assert_eq!(ops(&a, &b), vec![]);
}

#[test]
fn a_new_remote_peer_pod_is_one_element_added() {
    let before = ruleset(pods(), vec![allow_from_app("c")]);
    let mut more = pods();
    more.push(mk_pod("y", "c2", "n2", "10.0.2.9", &[("app", "c")]));
    let after = ruleset(more, vec![allow_from_app("c")]);
    let ops = ops(&before, &after);
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert!(matches!(&ops[0], Op::AddElements { elems, .. } if elems.len() == 1));
}

#[test]
fn a_peer_next_to_an_applied_one_is_added_without_touching_the_applied_element() {
    // 10.0.2.1 and 10.0.2.2 are one range in the canonical form; the kernel
    // keeps 10.0.2.1 and gets 10.0.2.2 beside it.
    let before = ruleset(pods(), vec![allow_from_app("c")]);
    let mut more = pods();
    more.push(mk_pod("y", "c2", "n2", "10.0.2.2", &[("app", "c")]));
    let after = ruleset(more.clone(), vec![allow_from_app("c")]);
    let change = diff(&before, &after).unwrap();
    assert_eq!(kinds(&change.ops), ["add elements"], "{:?}", change.ops);
    // And from there, with the pod gone again: one deletion, no re-cut.
    let back = ruleset(pods(), vec![allow_from_app("c")]);
    let undo = ops(&change.applied, &back);
    assert_eq!(kinds(&undo), ["delete elements"], "{undo:?}");
}

#[test]
fn a_new_isolated_local_pod_adds_its_sets_chain_and_dispatch_entry_only() {
    let before = ruleset(pods(), vec![allow_from_app("c")]);
    let mut more = pods();
    more.push(mk_pod("x", "a2", "n1", "10.0.1.9", &[("app", "a")]));
    let after = ruleset(more, vec![allow_from_app("c")]);
    let ops = ops(&before, &after);
    assert_eq!(
        kinds(&ops),
        [
            // Its address joins the isolated set (what falls through its
            // chain is dropped), in the same transaction.
            ["add elements"].as_slice(),
            &["add set"; 4],
            &["add chain"],
            &["add rule"; 5],
            &["add map entry"],
        ]
        .concat(),
        "{ops:?}"
    );
}

#[test]
fn a_policy_added_for_an_isolated_pod_only_adds_set_elements() {
    let before = ruleset(pods(), vec![allow_from_app("c")]);
    let after = ruleset(pods(), vec![allow_from_app("c"), allow_from_app("b")]);
    let ops = ops(&before, &after);
    assert_eq!(kinds(&ops), ["add elements"], "{ops:?}");
}

#[test]
fn a_removed_policy_only_takes_its_peers_out_of_the_pod_sets() {
    let before = ruleset(pods(), vec![allow_from_app("c"), allow_from_app("b")]);
    let after = ruleset(pods(), vec![allow_from_app("c")]);
    let ops = ops(&before, &after);
    assert_eq!(kinds(&ops), ["delete elements"], "{ops:?}");
}

#[test]
fn a_pod_that_is_no_longer_isolated_loses_its_dispatch_entry_before_its_chain_and_sets() {
    let before = ruleset(pods(), vec![allow_from_app("c")]);
    let after = ruleset(pods(), vec![]);
    let ops = ops(&before, &after);
    let pos = |pred: &dyn Fn(&Op) -> bool| ops.iter().position(pred);
    let entry = pos(&|o| matches!(o, Op::DeleteMapEntries { .. }));
    let chain = pos(&|o| matches!(o, Op::DeleteChain(c) if c == "pod-in/x/a"));
    let set = pos(&|o| matches!(o, Op::DeleteSet(s) if s == "pod-in/x/a.addrs4"));
    assert!(
        entry.is_some() && chain.is_some() && set.is_some() && entry < chain && chain < set,
        "{ops:?}"
    );
}

#[test]
fn every_command_of_a_batch_names_only_our_table() {
    let rs = ruleset(pods(), vec![allow_from_app("c")]);
    let doc = batch("nftpol", &full(&rs));
    let tables = nftpol::nft::transport::json::tables_named(&doc);
    assert!(!tables.is_empty());
    assert!(tables.iter().all(|t| t == "nftpol"), "{tables:?}");
}

#[test]
fn the_apply_guard_refuses_a_batch_for_another_table() {
    let rs = ruleset(pods(), vec![]);
    let doc = batch("filter", &full(&rs));
    let nft = nftpol::nft::Nft::with_command(vec!["/bin/false".into()]);
    let err = nft.apply_json("nftpol", &doc).unwrap_err();
    assert!(err.to_string().contains("filter"), "{err}");
}

#[test]
fn the_streamed_batch_is_the_same_document() {
    let rs = ruleset(pods(), vec![allow_from_app("c"), allow_from_app("b")]);
    let ops = full(&rs);
    let streamed: serde_json::Value =
        serde_json::from_slice(&nftpol::nft::transport::json::batch_bytes("nftpol", &ops)).unwrap();
    assert_eq!(streamed, batch("nftpol", &ops));
    let empty: serde_json::Value =
        serde_json::from_slice(&nftpol::nft::transport::json::batch_bytes("nftpol", &[])).unwrap();
    assert_eq!(empty, batch("nftpol", &[]));
}

/// The same on a synthetic cluster's full table (ipBlock ranges and
/// prefixes, port ranges, named ports, dual-stack namespaces) and on the
/// diffs of changes both ways (elements added and deleted).
#[test]
fn the_streamed_batch_is_the_same_document_for_every_kind_of_element() {
    use nftpol_lab::synth::{
        SynthSpec, synth_cluster, with_local_pod_added, with_namespace_relabeled_for_node,
        with_policy_added, with_remote_pod_added,
    };
    let spec = SynthSpec::new(1000, 100, 50);
    let base = synth_cluster(&spec);
    let rs = |snap: &nftpol::compiler::Snapshot| render(&compile(snap, &spec.node).plan, "nftpol");
    let before = rs(&base);
    let same = |ops: &[Op]| {
        let streamed: serde_json::Value =
            serde_json::from_slice(&nftpol::nft::transport::json::batch_bytes("nftpol", ops))
                .unwrap();
        assert_eq!(streamed, batch("nftpol", ops));
    };
    same(&full(&before));
    let changed = [
        with_local_pod_added(&base, &spec),
        with_remote_pod_added(&base, &spec),
        with_policy_added(&base, &spec),
        with_namespace_relabeled_for_node(&base, &spec).0,
    ];
    let mut elements = 0;
    for after in changed.iter().map(rs) {
        let there = diff(&before, &after).unwrap();
        let back = diff(&there.applied, &before).unwrap();
        for ops in [&there.ops, &back.ops] {
            elements += ops
                .iter()
                .filter(|o| matches!(o, Op::AddElements { .. } | Op::DeleteElements { .. }))
                .count();
            same(ops);
        }
    }
    assert!(elements > 0, "the changes should add and delete elements");
}
