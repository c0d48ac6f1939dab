//! The offline commands as a user runs them: exit codes, outputs, errors.

use std::process::{Command, Output};

fn nftpol(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nftpol"))
        .args(args)
        .current_dir(nftpol_lab::fixtures::repo_path("."))
        .env("RUST_LOG", "warn")
        .output()
        .expect("binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn compile_prints_an_nft_script_for_the_examples() {
    let out = nftpol(&["compile", "--cluster", "examples/", "--node", "node-1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let script = text(&out.stdout);
    assert!(script.contains("table inet nftpol {"));
    assert!(script.contains("chain pod-in/shop/db {"));
    assert!(script.contains("type filter hook forward priority 1; policy accept;"));
}

#[test]
fn compile_json_is_an_nft_batch() {
    let out = nftpol(&[
        "compile",
        "--cluster",
        "examples/",
        "--node",
        "node-2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert!(doc["nftables"].as_array().is_some_and(|a| a.len() > 10));
}

#[test]
fn unreadable_yaml_is_exit_code_2_naming_file_and_line() {
    let dir = std::env::temp_dir().join(format!("nftpol-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: Namespace\nmetadata: {name: x}\n---\nkind: Pod\nspec: [unclosed\n",
    )
    .unwrap();
    let out = nftpol(&["compile", "--cluster", bad.to_str().unwrap(), "--node", "n"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(err.contains("line 5") || err.contains(":5"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_invalid_policy_is_a_warning_naming_it_and_its_field() {
    let dir = std::env::temp_dir().join(format!("nftpol-cli-inv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("p.yaml");
    std::fs::write(
        &f,
        "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: p, namespace: x}\n\
         spec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/99}\n",
    )
    .unwrap();
    let out = nftpol(&["compile", "--cluster", f.to_str().unwrap(), "--node", "n"]);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("x/p") && err.contains("spec.ingress[0].from[0].ipBlock.cidr"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn explain_says_which_rule_allows_and_which_policies_isolate() {
    let out = nftpol(&[
        "explain",
        "--cluster",
        "examples/",
        "--from",
        "shop/frontend",
        "--to",
        "shop/backend",
        "--port",
        "http/TCP",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("DENIED"), "{s}");
    assert!(
        s.contains("isolated by shop/allow-dns-egress, shop/default-deny-egress"),
        "{s}"
    );
    assert!(
        s.contains("allowed by NetworkPolicy shop/api-and-data-match-expressions, ingress rule #0"),
        "{s}"
    );

    let out = nftpol(&[
        "explain",
        "--cluster",
        "examples/",
        "--from",
        "staging/frontend",
        "--to",
        "staging/backend",
        "--port",
        "80/TCP",
    ]);
    let s = text(&out.stdout);
    assert!(
        s.contains("DENIED") && s.contains("staging/default-deny-all"),
        "{s}"
    );
}

#[test]
fn explain_refuses_a_host_network_pod_with_a_reason() {
    let out = nftpol(&[
        "explain",
        "--cluster",
        "examples/",
        "--from",
        "kube-system/node-exporter",
        "--to",
        "shop/db",
        "--port",
        "80",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("host network"));
}

/// Issue #11 row F, offline: a pod whose Namespace object is not in the
/// files matches no namespaceSelector, and explain says why.
#[test]
fn explain_treats_a_namespace_without_its_object_as_unselected() {
    let dir = std::env::temp_dir().join(format!("nftpol-cli-ns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pod = |ns: &str, name: &str, ip: &str| {
        format!(
            "kind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{nodeName: node-1, containers: [{{name: c}}]}}\n\
             status: {{phase: Running, podIP: {ip}}}\n---\n"
        )
    };
    let cluster = format!(
        "kind: Namespace\nmetadata: {{name: staging}}\n---\n{}{}\
         kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\n\
         metadata: {{name: trusted-only, namespace: staging}}\n\
         spec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - namespaceSelector:\n        \
         matchExpressions: [{{key: env, operator: NotIn, values: [untrusted]}}]\n",
        pod("staging", "backend", "10.244.1.12"),
        pod("evil", "intruder", "10.244.1.66"),
    );
    std::fs::write(dir.join("cluster.yaml"), cluster).unwrap();
    let explain = || {
        let out = nftpol(&[
            "explain",
            "--cluster",
            dir.to_str().unwrap(),
            "--from",
            "evil/intruder",
            "--to",
            "staging/backend",
            "--port",
            "80/TCP",
        ]);
        text(&out.stdout)
    };
    let unseen = explain();
    assert!(unseen.contains(": DENIED"), "{unseen}");
    assert!(
        unseen.contains("namespace evil has no Namespace object"),
        "{unseen}"
    );
    let ns = dir.join("evil.yaml");
    std::fs::write(
        &ns,
        "kind: Namespace\nmetadata: {name: evil, labels: {env: untrusted}}\n",
    )
    .unwrap();
    let untrusted = explain();
    assert!(untrusted.contains(": DENIED"), "{untrusted}");
    assert!(!untrusted.contains("no Namespace object"), "{untrusted}");
    std::fs::write(
        &ns,
        "kind: Namespace\nmetadata: {name: evil, labels: {env: dev}}\n",
    )
    .unwrap();
    let trusted = explain();
    assert!(trusted.contains(": ALLOWED"), "{trusted}");
    std::fs::remove_dir_all(&dir).ok();
}
