//! A small network-namespace lab: a Flannel-like node (a `cni0` bridge in
//! its own namespace) with pods on it, servers in the pods, and a fast
//! probe engine. Kernel tests, and later the conformance runner and the
//! sandbox command, build on it.
//!
//! ```text
//!   namespace "nftpol-lab-PID-N-node-1"          namespace "nftpol-lab-PID-M-a"
//!   ┌───────────────────────────────┐           ┌──────────────────────┐
//!   │ cni0 10.244.1.1/24 ── veth0 ──┼───────────┼─ eth0 10.244.1.10/24 │ servers: TCP/UDP ports
//!   │ nft: table inet nftpol        │           │ default via cni0     │
//!   └───────────────────────────────┘           └──────────────────────┘
//! ```
//!
//! - [`Netns`]: one named namespace, deleted on drop; runs closures
//!   ([`Netns::run`]) and commands ([`Netns::exec`]) inside it.
//! - [`Node`] / [`Pod`]: the topology. Pods are owned values; dropping
//!   anything removes what it created, also while a test panics.
//! - [`Netns::serve`]: TCP, UDP and SCTP servers on a list of ports, run
//!   by the test process itself (sockets keep the namespace they were
//!   opened in). Without kernel SCTP, a raw-socket responder answers INITs
//!   with INIT-ACKs.
//! - [`probe`]: many connection attempts at once, from sockets opened inside
//!   each source namespace; a batch costs about one timeout. SCTP probes
//!   are real `connect`s, or raw INITs that need a matching INIT-ACK.
//! - [`Lan`]: the nodes' own network (bridge `lan0` 192.168.56.1/24 in a
//!   namespace of its own); [`Node::join_lan`] plugs a node's `eth0` into
//!   it. An API server for the nodes listens there ([`Lan::listen_tcp`]).
//! - [`flannel_vxlan_mesh`]: Flannel's VXLAN (`flannel.1`) between nodes
//!   on a LAN, and [`Node::install_flannel_iptables`]: flanneld's rules.
//! - [`Controller`]: the real `nftpol run` as a process inside a node, its
//!   `/status` and `/readyz` read over the LAN ([`http_get`]).
//!
//! Nothing here touches the caller's own network namespace.

mod cluster;
mod controller;
mod flannel;
mod http;
mod lan;
mod netns;
pub mod probe;
mod sctp;
mod server;
mod topology;

use std::process::Command;

pub use cluster::{
    CLUSTER_CIDR, Cluster, ClusterError, ClusterSpec, KINDS, Reachability, VXLAN_MTU, object_key,
};
pub use controller::{Controller, ControllerConfig, Nftpol};
pub use flannel::flannel_vxlan_mesh;
pub use http::{HttpResponse, http_get};
pub use lan::{LAN_BRIDGE, Lan, NODE_LAN_IFACE};
pub use netns::{Netns, remove_namespaces_of};
pub use probe::{DEFAULT_TIMEOUT, Probe, probe, probe_all};
pub use server::Port;
pub use topology::{Node, NodeConfig, Pod};

/// A lab operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{cmd} failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Nft(#[from] nftpol::nft::NftError),
}

impl LabError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Why the lab cannot run here (not root, or `ip` / `nft` missing), if so.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    for (tool, arg) in [("ip", "-V"), ("nft", "--version")] {
        let ok = Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Runs a command on the host; returns its stdout.
pub(crate) fn run_cmd(argv: &[&str]) -> Result<String, LabError> {
    let cmd = argv.join(" ");
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| LabError::io(format!("running {cmd}"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
