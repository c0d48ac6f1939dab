//! Golden rulesets of the examples, one per node: reviewed like code. Any
//! change to the rendering shows up here as a snapshot diff
//! (`cargo insta review`, or INSTA_UPDATE=always to accept).

use nftpol::compiler::compile;
use nftpol::load::load_paths;
use nftpol::nft::transport::json::ruleset_json;
use nftpol::nft::{render, to_text};

fn example_ruleset(node: &str) -> nftpol::nft::Ruleset {
    let root = nftpol_lab::fixtures::repo_path("examples");
    let snap = load_paths(&[root]).expect("examples load");
    let compiled = compile(&snap, node);
    assert!(
        compiled.diagnostics.is_empty(),
        "examples must be valid: {:?}",
        compiled.diagnostics
    );
    render(&compiled.plan, "nftpol")
}

#[test]
fn examples_node_1_text() {
    insta::assert_snapshot!(to_text(&example_ruleset("node-1")));
}

#[test]
fn examples_node_2_text() {
    insta::assert_snapshot!(to_text(&example_ruleset("node-2")));
}

#[test]
fn examples_node_1_json() {
    let doc = ruleset_json(&example_ruleset("node-1"));
    insta::assert_snapshot!(serde_json::to_string_pretty(&doc).unwrap());
}
