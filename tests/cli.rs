//! The offline commands as a user runs them: exit codes, outputs, errors.

use std::process::{Command, Output};

fn nftpol(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nftpol"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
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
