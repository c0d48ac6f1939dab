//! The incremental compiler against fresh compilations, and address owners.

use super::*;
use crate::compiler::{Labels, Plan, Protocol, compile};

fn pod(name: &str, node: &str, ip: &str) -> Arc<PodInfo> {
    Arc::new(PodInfo {
        key: ObjectKey::new("x", name),
        labels: Labels::from([("app".to_string(), "web".to_string())]).into(),
        node: Some(node.into()),
        ips: vec![ip.parse().expect("an address")].into(),
        host_network: false,
        deleting: false,
        created: 0,
        phase: Some("Running".into()),
        named_ports: Vec::new().into(),
    })
}

fn policy() -> Arc<NetworkPolicy> {
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": "from-web"},
            "spec": {"podSelector": {}, "ingress": [{"from": [
                {"podSelector": {"matchLabels": {"app": "web"}}}]}]},
        }))
        .expect("a policy"),
    )
}

fn snapshot(pods: &[&Arc<PodInfo>]) -> Snapshot {
    Snapshot {
        pods: pods.iter().map(|p| (*p).clone()).collect(),
        policies: vec![policy()],
        ..Snapshot::default()
    }
}

#[test]
fn an_address_three_pods_share_stays_until_the_last_one_goes() {
    let (a, b, c) = (
        pod("a", "n1", "10.0.0.1"),
        pod("b", "n2", "10.0.0.9"),
        pod("c", "n2", "10.0.0.9"),
    );
    let d = pod("d", "n2", "10.0.0.9");
    let mut inc = Incremental::new("n1");
    inc.upsert_policy(policy());
    for p in [&a, &b, &c, &d] {
        inc.upsert_pod(p.clone());
    }
    assert_eq!(
        inc.compile().plan,
        compile(&snapshot(&[&a, &b, &c, &d]), "n1").plan
    );
    inc.remove_pod(&b.key);
    assert_eq!(
        inc.compile().plan,
        compile(&snapshot(&[&a, &c, &d]), "n1").plan
    );
    inc.remove_pod(&c.key);
    let plan = inc.compile().plan;
    assert_eq!(plan, compile(&snapshot(&[&a, &d]), "n1").plan);
    assert!(
        plan.addr_sets
            .values()
            .any(|s| s.contains("10.0.0.9".parse().unwrap()))
    );
    inc.remove_pod(&d.key);
    let plan = inc.compile().plan;
    assert_eq!(plan, compile(&snapshot(&[&a]), "n1").plan);
    assert!(
        !plan
            .addr_sets
            .values()
            .any(|s| s.contains("10.0.0.9".parse().unwrap()))
    );
}

#[test]
fn a_plan_kept_across_a_change_keeps_its_sets() {
    let (a, b) = (pod("a", "n1", "10.0.0.1"), pod("b", "n2", "10.0.0.2"));
    let mut inc = Incremental::new("n1");
    inc.upsert_policy(policy());
    inc.upsert_pod(a.clone());
    let before = inc.compile().plan;
    inc.upsert_pod(b.clone());
    let after = inc.compile().plan;
    assert_eq!(before, compile(&snapshot(&[&a]), "n1").plan);
    assert_eq!(after, compile(&snapshot(&[&a, &b]), "n1").plan);
}

fn in_ns(ns: &str, pod: Arc<PodInfo>) -> Arc<PodInfo> {
    Arc::new(PodInfo {
        key: ObjectKey::new(ns, pod.key.name.clone()),
        ..(*pod).clone()
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// Whether any peer set of the plan holds the address.
fn in_peer_sets(plan: &Plan, addr: &str) -> bool {
    plan.addr_sets.values().any(|s| s.contains(ip(addr)))
}

#[test]
fn a_pod_seen_before_its_namespace_matches_no_namespace_selector_until_it_is_known() {
    // The case: allow from every namespace not labelled
    // env=untrusted; the intruder's namespace is.
    let not_untrusted = Arc::new(
        serde_json::from_value::<NetworkPolicy>(serde_json::json!({
            "metadata": {"namespace": "x", "name": "not-untrusted"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {
                "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["untrusted"]}]}}]}]},
        }))
        .expect("a policy"),
    );
    let server = pod("server", "n1", "10.0.0.1");
    let intruder = in_ns("evil", pod("intruder", "n2", "10.0.0.66"));
    let mut inc = Incremental::new("n1");
    inc.upsert_policy(not_untrusted.clone());
    inc.upsert_pod(server.clone());
    inc.upsert_pod(intruder.clone());
    let mut snap = Snapshot {
        pods: vec![server.clone(), intruder.clone()],
        policies: vec![not_untrusted],
        ..Snapshot::default()
    };
    let check = |inc: &mut Incremental, snap: &Snapshot, allowed: bool| {
        let plan = inc.compile().plan;
        assert_eq!(plan, compile(snap, "n1").plan);
        assert_eq!(in_peer_sets(&plan, "10.0.0.66"), allowed, "{snap:?}");
        assert_eq!(
            plan.allows(ip("10.0.0.66"), ip("10.0.0.1"), Protocol::Tcp, 80),
            allowed
        );
    };
    check(&mut inc, &snap, false);
    let untrusted = NamespaceInfo::new("evil", [("env".into(), "untrusted".into())].into());
    inc.upsert_namespace(Arc::new(untrusted.clone()));
    snap.add_namespace(untrusted);
    check(&mut inc, &snap, false);
    let dev = NamespaceInfo::new("evil", [("env".into(), "dev".into())].into());
    inc.upsert_namespace(Arc::new(dev.clone()));
    snap.add_namespace(dev);
    check(&mut inc, &snap, true);
    inc.remove_namespace("evil");
    snap.namespaces.remove("evil");
    check(&mut inc, &snap, false);
}

#[test]
fn an_empty_namespace_selector_needs_the_namespace_object_but_a_pod_selector_does_not() {
    let every_ns = Arc::new(
        serde_json::from_value::<NetworkPolicy>(serde_json::json!({
            "metadata": {"namespace": "x", "name": "every-ns"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]},
        }))
        .expect("a policy"),
    );
    let (server, neighbour) = (pod("server", "n1", "10.0.0.1"), pod("n", "n2", "10.0.0.2"));
    let other = in_ns("y", pod("other", "n2", "10.0.0.3"));
    let snap = Snapshot {
        pods: vec![server.clone(), neighbour.clone(), other.clone()],
        policies: vec![every_ns, policy()],
        ..Snapshot::default()
    };
    let plan = compile(&snap, "n1").plan;
    let allows = |from: &str| plan.allows(ip(from), ip("10.0.0.1"), Protocol::Tcp, 80);
    assert!(!allows("10.0.0.3"), "namespace y is not known");
    assert!(allows("10.0.0.2"), "x's own pods, by podSelector");
    let mut snap = snap.clone();
    snap.add_namespace(NamespaceInfo::new("y", Labels::new()));
    let plan = compile(&snap, "n1").plan;
    assert!(plan.allows(ip("10.0.0.3"), ip("10.0.0.1"), Protocol::Tcp, 80));
}

#[test]
fn an_address_belongs_to_its_newest_claimant_not_being_deleted() {
    let deny_x = Arc::new(
        serde_json::from_value::<NetworkPolicy>(serde_json::json!({
            "metadata": {"namespace": "x", "name": "deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }))
        .expect("a policy"),
    );
    let with = |p: &Arc<PodInfo>, created: u32, deleting: bool| {
        Arc::new(PodInfo {
            created,
            deleting,
            ..(**p).clone()
        })
    };
    // x/old is local and isolated; staging/new, on another node, was
    // given its address later.
    let old = with(&pod("old", "n1", "10.0.0.5"), 100, false);
    let new = with(&in_ns("staging", pod("new", "n2", "10.0.0.5")), 200, false);
    let web = pod("web", "n1", "10.0.0.7");
    let mut inc = Incremental::new("n1");
    let mut snap = Snapshot {
        policies: vec![policy(), deny_x.clone()],
        ..Snapshot::default()
    };
    inc.upsert_policy(policy());
    inc.upsert_policy(deny_x);
    let mut step = |inc: &mut Incremental, pods: &[&Arc<PodInfo>]| {
        snap.pods = pods.iter().map(|p| (*p).clone()).collect();
        let got = inc.compile();
        let fresh = compile(&snap, "n1");
        assert_eq!(got.plan, fresh.plan);
        assert_eq!(got.warnings, fresh.warnings);
        got
    };
    let addr = ip("10.0.0.5");
    let chain_ips = |c: &Compiled| {
        c.plan
            .pods
            .iter()
            .find(|p| p.pod == old.key)
            .map(|p| p.ips.clone())
    };

    inc.upsert_pod(web.clone());
    inc.upsert_pod(old.clone());
    let c = step(&mut inc, &[&web, &old]);
    assert_eq!(inc.address_owner(addr), Some(&old.key));
    assert!(inc.take_moved_addresses().is_empty(), "it was free");
    assert_eq!(chain_ips(&c), Some(vec![addr]));
    assert!(in_peer_sets(&c.plan, "10.0.0.5"));

    inc.upsert_pod(new.clone());
    let c = step(&mut inc, &[&web, &old, &new]);
    assert_eq!(inc.address_owner(addr), Some(&new.key));
    assert_eq!(inc.take_moved_addresses(), BTreeSet::from([addr]));
    // Neither x's deny nor x's peer set holds the address any more.
    assert_eq!(chain_ips(&c), Some(vec![]));
    assert!(!in_peer_sets(&c.plan, "10.0.0.5"));
    assert!(c.plan.allows(ip("10.0.0.9"), addr, Protocol::Tcp, 80));
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let w = &c.warnings[0];
    assert!(
        w.contains("belongs to staging/new (node n2)") && w.contains("x/old (node n1) lost it"),
        "{w}"
    );
    let owners: Vec<(IpAddr, &ObjectKey)> = inc.address_owners().collect();
    assert!(owners.contains(&(addr, &new.key)), "{owners:?}");
    assert_eq!(owners.len(), 2);

    // Being deleted, the newer pod gives the address back.
    let leaving = with(&new, 200, true);
    inc.upsert_pod(leaving.clone());
    let c = step(&mut inc, &[&web, &old, &leaving]);
    assert_eq!(inc.address_owner(addr), Some(&old.key));
    assert_eq!(inc.take_moved_addresses(), BTreeSet::from([addr]));
    assert_eq!(chain_ips(&c), Some(vec![addr]));
    assert!(in_peer_sets(&c.plan, "10.0.0.5"));

    inc.remove_pod(&leaving.key);
    step(&mut inc, &[&web, &old]);
    assert!(inc.take_moved_addresses().is_empty());
    inc.remove_pod(&old.key);
    let c = step(&mut inc, &[&web]);
    assert_eq!(inc.address_owner(addr), None);
    assert_eq!(inc.take_moved_addresses(), BTreeSet::from([addr]));
    assert!(!in_peer_sets(&c.plan, "10.0.0.5"));
}

#[test]
fn among_claimants_all_being_deleted_the_newest_owns_and_ties_go_to_the_greater_key() {
    let with = |name: &str, created: u32, deleting: bool| {
        Arc::new(PodInfo {
            created,
            deleting,
            ..(*pod(name, "n2", "10.0.0.5")).clone()
        })
    };
    let addr = ip("10.0.0.5");
    let mut inc = Incremental::new("n1");
    inc.upsert_pod(with("a", 300, true));
    inc.upsert_pod(with("b", 200, true));
    assert_eq!(inc.address_owner(addr), Some(&ObjectKey::new("x", "a")));
    inc.upsert_pod(with("c", 100, false));
    assert_eq!(inc.address_owner(addr), Some(&ObjectKey::new("x", "c")));
    inc.upsert_pod(with("d", 100, false));
    assert_eq!(inc.address_owner(addr), Some(&ObjectKey::new("x", "d")));
    inc.remove_pod(&ObjectKey::new("x", "d"));
    inc.remove_pod(&ObjectKey::new("x", "c"));
    assert_eq!(inc.address_owner(addr), Some(&ObjectKey::new("x", "a")));
    // A finished pod claims nothing.
    inc.upsert_pod(Arc::new(PodInfo {
        phase: Some("Succeeded".into()),
        ..(*with("a", 300, true)).clone()
    }));
    assert_eq!(inc.address_owner(addr), Some(&ObjectKey::new("x", "b")));
}

#[test]
fn a_pod_with_two_addresses_of_one_family_owns_both() {
    let two = Arc::new(PodInfo {
        ips: vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("fd00::1"), ip("fd00::2")].into(),
        created: 5,
        ..(*pod("two", "n1", "10.0.0.1")).clone()
    });
    let newer = Arc::new(PodInfo {
        created: 9,
        ..(*pod("newer", "n1", "10.0.0.2")).clone()
    });
    let mut inc = Incremental::new("n1");
    inc.upsert_pod(two.clone());
    let owned = |inc: &Incremental| {
        let mut all: Vec<(IpAddr, String)> = inc
            .address_owners()
            .map(|(ip, k)| (ip, k.name.clone()))
            .collect();
        all.sort();
        all
    };
    let all = |names: [&str; 4]| {
        ["10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2"]
            .into_iter()
            .zip(names)
            .map(|(a, n)| (ip(a), n.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(owned(&inc), all(["two", "two", "two", "two"]));
    inc.upsert_pod(newer.clone());
    assert_eq!(owned(&inc), all(["two", "newer", "two", "two"]));
    inc.remove_pod(&newer.key);
    assert_eq!(owned(&inc), all(["two", "two", "two", "two"]));
    inc.remove_pod(&two.key);
    assert_eq!(inc.address_owners().count(), 0);
}

#[test]
fn plan_sets_are_named_by_their_full_content_key() {
    let snap = snapshot(&[&pod("a", "n1", "10.0.0.1"), &pod("b", "n2", "10.0.0.2")]);
    let plan = compile(&snap, "n1").plan;
    let ids: Vec<&str> = plan.addr_sets.keys().map(String::as_str).collect();
    assert_eq!(ids, ["pods|ns=x|app=web"]);
}
