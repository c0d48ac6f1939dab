//! nftpol's test bench, kept out of the product crate and its image.
//!
//! - [`lab`]: nodes, pods and a LAN in network namespaces on the real kernel
//!   (a Flannel-like bridge, VXLAN between nodes, probes, controllers).
//! - [`devserver`]: a small in-memory Kubernetes API server for the lab,
//!   the sandbox and the controller tests.
//! - [`conformance`]: plays the case files of `conformance/` on a lab
//!   cluster running `nftpol run` on each node.
//! - [`control_plane`]: a real etcd and kube-apiserver, built from their
//!   Go modules by `k8s/build`.
//! - [`sandbox`]: `nftpol-lab sandbox`, a two-node cluster for kubectl.
//! - [`synth`]: synthetic clusters for the benches and the scale tests.
//! - [`eval`]: a packet tracer over a rendered ruleset (the proptests' and
//!   the datapath bench's second opinion on the kernel).
//! - [`fixtures`]: small builders of namespaces, pods and policies, as
//!   snapshot objects and as API objects.
//! - [`report`]: what the benches print (Markdown tables, the machine).
//!
//! It depends on the product (`nftpol`), never the other way round: the
//! product's tests and benches take it as a dev-dependency.
#![forbid(unsafe_code)]

/// The `nftpol-lab` subcommand that runs the product's own command line,
/// linked in: `nftpol-lab nftpol run ...` is `nftpol run ...`.
pub const PRODUCT_COMMAND: &str = "nftpol";

pub mod conformance;
pub mod control_plane;
pub mod devserver;
pub mod eval;
pub mod fixtures;
pub mod lab;
pub mod report;
pub mod sandbox;
pub mod synth;
