//! Element updates over nftpol's own netlink socket, held to the same
//! updates sent through `nft`: two tables in one network namespace follow
//! the same random sequence of allow-lists (every element shape: hash
//! tuples and addresses, concatenated interval boxes, address ranges up to
//! the last address, and verdict map entries), one through each path; after
//! every step the kernel must list both tables alike. Root only: each test
//! prints why and returns when it cannot run (CI runs them as root).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use common::lab_ready;
use nftpol::compiler::{Protocol, compile};
use nftpol::net::{Family, from_u128};
use nftpol::nft::Netlink;
use nftpol::nft::model::{Elem, KeyType, NftChain, NftMap, NftSet, Part, Ruleset};
use nftpol::nft::ops::Op;
use nftpol::nft::region::{Builder, Span};
use nftpol::nft::{NetlinkDiffs, Syncer, Via, render};
use nftpol_lab::lab::Netns;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// One piece of an allow-list: addresses on a protocol's port range, or on
/// every port.
#[derive(Clone, Debug)]
struct Piece {
    family: Family,
    ports: Option<(Protocol, u16, u16)>,
    spans: Vec<Span>,
}

/// Spans near the edges of the family's space and in the middle, so that
/// ranges touch, overlap, start at the first address and end at the last.
fn span(family: Family) -> impl Strategy<Value = Span> {
    let max = family.max_addr();
    let mid: u128 = match family {
        Family::V4 => 0x0a00_0000,
        Family::V6 => 0x2001_0db8_u128 << 96,
    };
    (0..3usize, 0u128..48, 0u128..40).prop_map(move |(anchor, off, len)| {
        let start = match anchor {
            0 => off,
            1 => mid + off,
            _ => max - 47 + off,
        };
        (start, start.saturating_add(len).min(max))
    })
}

fn piece() -> impl Strategy<Value = Piece> {
    let port = prop_oneof![Just(0u16), Just(80), 78u16..84, Just(65534), Just(65535)];
    let proto = prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Sctp)
    ];
    let ports = prop_oneof![
        1 => Just(None),
        4 => (proto, port, 0u16..4).prop_map(|(p, lo, len)| Some((p, lo, lo.saturating_add(len)))),
    ];
    prop_oneof![Just(Family::V4), Just(Family::V6)].prop_flat_map(move |family| {
        (
            Just(family),
            ports.clone(),
            proptest::collection::vec(span(family), 1..4),
        )
            .prop_map(|(family, ports, spans)| Piece {
                family,
                ports,
                spans,
            })
    })
}

/// A table state: the pieces of one pod's allow-list and the dispatch
/// entries (host number → chain).
#[derive(Clone, Debug)]
struct State {
    pieces: Vec<Piece>,
    dispatch: BTreeMap<u8, bool>,
}

fn state() -> impl Strategy<Value = State> {
    (
        proptest::collection::vec(piece(), 0..8),
        proptest::collection::btree_map(0u8..6, any::<bool>(), 0..4),
    )
        .prop_map(|(pieces, dispatch)| State { pieces, dispatch })
}

/// The ruleset the renderer would make for such an allow-list: four sets
/// per family holding one region, and a verdict map into two chains.
fn ruleset(table: &str, st: &State) -> Ruleset {
    let mut rs = Ruleset {
        table: table.to_string(),
        ..Ruleset::default()
    };
    for family in Family::BOTH {
        let mut b = Builder::new(family);
        for p in st.pieces.iter().filter(|p| p.family == family) {
            match p.ports {
                None => b.any(&p.spans),
                Some((proto, lo, hi)) => b.ports(proto, lo, hi, &p.spans),
            }
        }
        let elems = b.build().elems();
        let fam = family.number();
        for part in Part::ALL {
            let (key, interval) = match part {
                Part::Tuples => (KeyType::tuple(family), false),
                Part::Addrs => (KeyType::addr(family), false),
                Part::Boxes => (KeyType::tuple(family), true),
                Part::AddrRanges => (KeyType::addr(family), true),
            };
            let mine: BTreeSet<Elem> = elems
                .iter()
                .filter(|e| Part::of(e) == part)
                .cloned()
                .collect();
            rs.sets.insert(
                format!("pod.{part:?}{fam}").to_lowercase(),
                NftSet {
                    key,
                    interval,
                    comment: "netlink test".into(),
                    elements: Arc::new(mine),
                    region: Some(format!("pod.{fam}")),
                },
            );
        }
    }
    for chain in ["pod-a", "pod-b"] {
        rs.chains.insert(
            chain.into(),
            NftChain {
                hook: None,
                rules: Vec::new(),
            },
        );
    }
    let entries = st
        .dispatch
        .iter()
        .map(|(host, a)| {
            let ip = IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 1, *host));
            (ip, if *a { "pod-a" } else { "pod-b" }.to_string())
        })
        .collect();
    rs.maps.insert(
        "dispatch4".into(),
        NftMap {
            key: KeyType::Ipv4,
            elements: entries,
        },
    );
    rs
}

/// `nft list table`, without set comments: nft 1.0.6 drops the comment of
/// a set added by a JSON batch (netlink keeps it, as nft's text does).
fn listing(ns: &Netns, table: &str) -> String {
    ns.exec(&["nft", "list", "table", "inet", table])
        .unwrap_or_else(|e| panic!("listing {table}: {e}"))
        .lines()
        .filter(|l| !l.trim_start().starts_with("comment \""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn element_updates_over_netlink_leave_the_kernel_as_nft_leaves_it() {
    if !lab_ready("element_updates_over_netlink_leave_the_kernel_as_nft_leaves_it") {
        return;
    }
    let ns = Netns::create("netlink").expect("a namespace");
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let netlink_batches = std::cell::Cell::new(0);
    runner
        .run(&proptest::collection::vec(state(), 2..7), |states| {
            let mut over_netlink = Syncer::new(
                NetlinkDiffs::new(ns.netlink().expect("a netlink socket"), ns.nft()),
                "nl",
            );
            let mut through_nft = Syncer::new(ns.nft(), "nf");
            for (i, st) in states.iter().enumerate() {
                let a = over_netlink
                    .sync(ruleset("nl", st))
                    .map_err(|e| TestCaseError::fail(format!("step {i} over netlink: {e}")))?;
                let b = through_nft
                    .sync(ruleset("nf", st))
                    .map_err(|e| TestCaseError::fail(format!("step {i} through nft: {e}")))?;
                prop_assert_eq!(a.commands, b.commands);
                if i == 0 {
                    prop_assert_eq!((a.via, b.via), (Via::NftText, Via::NftText));
                } else if a.commands > 0 {
                    prop_assert_eq!((a.via, b.via), (Via::Netlink, Via::NftJson));
                    netlink_batches.set(netlink_batches.get() + 1);
                }
                let got = listing(&ns, "nl");
                let want = listing(&ns, "nf").replace("table inet nf", "table inet nl");
                prop_assert_eq!(got, want, "step {}", i);
            }
            Ok(())
        })
        .unwrap();
    let n = netlink_batches.get();
    assert!(n > 24, "only {n} batches went over netlink");
}

/// A batch the kernel refuses changes nothing, and the error says which
/// command and why.
#[test]
fn a_refused_netlink_batch_changes_nothing_and_names_the_command() {
    if !lab_ready("a_refused_netlink_batch_changes_nothing_and_names_the_command") {
        return;
    }
    let ns = Netns::create("netlink-refused").expect("a namespace");
    ns.exec(&[
        "nft",
        "add table inet t; add set inet t s { type ipv4_addr; }; add element inet t s { 10.0.0.1 }",
    ])
    .expect("a table");
    let mut nl: Netlink = ns.netlink().expect("a netlink socket");
    // What the element updates below lead to: only the table name matters.
    let t = Ruleset {
        table: "t".into(),
        ..Ruleset::default()
    };
    let ip = |s: &str| Elem::Addr(s.parse().unwrap());
    let ops = [
        Op::AddElements {
            set: "s".into(),
            key: KeyType::Ipv4,
            interval: false,
            elems: vec![ip("10.0.0.2")],
        },
        Op::DeleteElements {
            set: "s".into(),
            key: KeyType::Ipv4,
            interval: false,
            elems: vec![ip("10.0.0.3")],
        },
    ];
    let err = nl
        .apply(&t, &ops)
        .expect_err("deleting an absent element fails");
    let msg = err.to_string();
    assert!(
        msg.contains("delete 1 elements from set s") && msg.contains("No such file"),
        "{msg}"
    );
    let holds = |e: &str| {
        ns.exec(&[
            "nft",
            "get",
            "element",
            "inet",
            "t",
            "s",
            &format!("{{ {e} }}"),
        ])
        .is_ok()
    };
    assert!(
        !holds("10.0.0.2"),
        "the addition in the refused batch was kept"
    );
    assert!(holds("10.0.0.1"));

    // The same socket goes on working.
    nl.apply(&t, &ops[..1]).expect("a valid batch");
    assert!(holds("10.0.0.2"));

    // Address ranges, one up to the last address (no end element there).
    ns.exec(&[
        "nft",
        "add set inet t r { type ipv4_addr; flags interval; }",
    ])
    .unwrap();
    let range = |a: u128, b: u128| Elem::Range(from_u128(a, Family::V4), from_u128(b, Family::V4));
    let top = range(u32::MAX as u128 - 9, u32::MAX as u128);
    let mid = range(0x0a00_0000, 0x0a00_00ff);
    nl.apply(
        &t,
        &[Op::AddElements {
            set: "r".into(),
            key: KeyType::Ipv4,
            interval: true,
            elems: vec![top.clone(), mid.clone()],
        }],
    )
    .expect("ranges");
    let got = ns.exec(&["nft", "list", "set", "inet", "t", "r"]).unwrap();
    assert!(
        got.contains("10.0.0.0/24") && got.contains("255.255.255.246-255.255.255.255"),
        "{got}"
    );
    nl.apply(
        &t,
        &[Op::DeleteElements {
            set: "r".into(),
            key: KeyType::Ipv4,
            interval: true,
            elems: vec![top, mid],
        }],
    )
    .expect("delete the ranges");
    let got = ns.exec(&["nft", "list", "set", "inet", "t", "r"]).unwrap();
    assert!(!got.contains("elements"), "{got}");
}

/// Whole incremental changes over netlink: random clusters one after the
/// other, compiled for one node and rendered, so that pod chains, their
/// sets and rules come and go, besides elements. Every diff goes over
/// netlink on one side and through nft on the other; the kernel must list
/// both tables alike after each.
#[test]
fn chains_sets_and_rules_over_netlink_leave_the_kernel_as_nft_leaves_it() {
    if !lab_ready("chains_sets_and_rules_over_netlink_leave_the_kernel_as_nft_leaves_it") {
        return;
    }
    let ns = Netns::create("netlink-rules").expect("a namespace");
    let node = common::r#gen::NODES[0];
    let mut runner = TestRunner::new(Config {
        cases: 12,
        failure_persistence: None,
        ..Config::default()
    });
    let structural = std::cell::Cell::new(0);
    runner
        .run(
            &proptest::collection::vec(common::r#gen::cluster(), 2..5),
            |clusters| {
                let mut over_netlink = Syncer::new(
                    NetlinkDiffs::new(ns.netlink().expect("a netlink socket"), ns.nft()),
                    "nl",
                );
                let mut through_nft = Syncer::new(ns.nft(), "nf");
                for (i, c) in clusters.iter().enumerate() {
                    let plan = compile(&c.snap, node).plan;
                    let (want_nl, want_nf) = (render(&plan, "nl"), render(&plan, "nf"));
                    let before = over_netlink.applied().map(|a| a.chains.len());
                    let a = over_netlink
                        .sync(want_nl)
                        .map_err(|e| TestCaseError::fail(format!("step {i} over netlink: {e}")))?;
                    let b = through_nft
                        .sync(want_nf)
                        .map_err(|e| TestCaseError::fail(format!("step {i} through nft: {e}")))?;
                    prop_assert_eq!(a.commands, b.commands);
                    if i > 0 && a.commands > 0 {
                        prop_assert_eq!((a.via, b.via), (Via::Netlink, Via::NftJson));
                        let after = over_netlink.applied().map(|a| a.chains.len());
                        if before != after {
                            structural.set(structural.get() + 1);
                        }
                    }
                    let got = listing(&ns, "nl");
                    let want = listing(&ns, "nf").replace("table inet nf", "table inet nl");
                    prop_assert_eq!(got, want, "step {}", i);
                }
                Ok(())
            },
        )
        .unwrap();
    let n = structural.get();
    assert!(n >= 6, "only {n} steps added or removed pod chains");
}
