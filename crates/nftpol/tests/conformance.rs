//! The conformance suite (conformance/samples and conformance/cases) on a
//! two-node Flannel cluster in network namespaces, with the real `nftpol
//! run` on each node. Needs root; prints why and passes elsewhere.
//! `conformance/run` runs the same with a live report.

use nftpol_lab::conformance::{self, Options};
use nftpol_lab::lab::{self, DEFAULT_TIMEOUT};

#[test]
fn every_conformance_case_passes_on_the_real_kernel() {
    if let Some(why) = lab::unavailable() {
        eprintln!("skipped: the conformance suite needs root, ip and nft ({why})");
        return;
    }
    let root = nftpol_lab::fixtures::repo_path("conformance");
    let opts = Options {
        cases: vec![root.join("samples"), root.join("cases")],
        filter: std::env::var("NFTPOL_CONFORMANCE_FILTER").ok(),
        binary: env!("CARGO_BIN_EXE_nftpol").into(),
        probe_timeout: DEFAULT_TIMEOUT,
    };
    let mut out = Vec::new();
    let summary = conformance::run(&opts, &mut out);
    let text = String::from_utf8_lossy(&out);
    println!("{text}");
    let summary = summary.unwrap_or_else(|e| panic!("the runner failed: {e:#}\n{text}"));
    assert!(summary.passed > 0, "no case ran\n{text}");
    assert_eq!(summary.failed, 0, "failed: {:?}\n{text}", summary.failures);
}
