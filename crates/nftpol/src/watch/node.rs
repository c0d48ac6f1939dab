//! Settings of the node that decide whether the rules see the traffic at
//! all, checked in the network namespace nftpol enforces, at start and at
//! every periodic resync. A problem makes `/readyz` fail with its reason
//! until a later check finds it fixed.
//!
//! - `net.bridge.bridge-nf-call-iptables` and `-ip6tables` must be 1:
//!   otherwise same-node pod traffic, which crosses the pods' bridge,
//!   never reaches the inet forward hook (IPv4 and IPv6 apart).
//! - kube-proxy in IPVS mode (its `kube-ipvs0` device) sends same-node
//!   traffic to a ClusterIP through input and output, not forward, so the
//!   ingress isolation of a backend on the same node is skipped
//!   (kubernetes#68055).
//! - Forwarding (`net.ipv4.ip_forward`, `net.ipv6.conf.all.forwarding`) is
//!   only reported: off, pods lose the network; nothing gets around the
//!   rules.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The device kube-proxy's IPVS mode binds service addresses to.
pub const IPVS_DEVICE: &str = "kube-ipvs0";

/// What a check of the enforced network namespace found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeCheck {
    /// `None`: the setting does not exist (br_netfilter not loaded) or
    /// could not be read.
    pub bridge_nf_call_iptables: Option<bool>,
    pub bridge_nf_call_ip6tables: Option<bool>,
    pub ipv4_forwarding: Option<bool>,
    pub ipv6_forwarding: Option<bool>,
    /// The `kube-ipvs0` device exists.
    pub kube_proxy_ipvs: bool,
    /// Why the rules cannot be trusted to see this node's traffic (empty:
    /// nothing found).
    pub problems: Vec<String>,
}

/// Checks the network namespace at `netns` (`None`: nftpol's own).
pub fn check(netns: Option<&Path>) -> NodeCheck {
    crate::netns::in_netns(netns, check_here).unwrap_or_else(|e| NodeCheck {
        problems: vec![format!(
            "cannot check the node's settings in the enforced network namespace: {e}"
        )],
        ..NodeCheck::default()
    })
}

/// [`check`] in the calling thread's network namespace.
fn check_here() -> NodeCheck {
    let sysctl = |name: &str| -> Option<bool> {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        std::fs::read_to_string(path).ok().map(|v| v.trim() != "0")
    };
    let mut c = NodeCheck {
        bridge_nf_call_iptables: sysctl("net.bridge.bridge-nf-call-iptables"),
        bridge_nf_call_ip6tables: sysctl("net.bridge.bridge-nf-call-ip6tables"),
        ipv4_forwarding: sysctl("net.ipv4.ip_forward"),
        ipv6_forwarding: sysctl("net.ipv6.conf.all.forwarding"),
        // An interface lookup answers for the calling thread's namespace
        // (unlike /sys/class/net, which shows the namespace sysfs was
        // mounted in).
        kube_proxy_ipvs: nix::net::if_::if_nametoindex(IPVS_DEVICE).is_ok(),
        problems: Vec::new(),
    };
    for (setting, value, family) in [
        (
            "net.bridge.bridge-nf-call-iptables",
            c.bridge_nf_call_iptables,
            "IPv4",
        ),
        (
            "net.bridge.bridge-nf-call-ip6tables",
            c.bridge_nf_call_ip6tables,
            "IPv6",
        ),
    ] {
        match value {
            Some(true) => {}
            Some(false) => c.problems.push(format!(
                "{setting} is 0: same-node {family} pod traffic over the bridge is NOT filtered; \
                 set {setting}=1"
            )),
            None => c.problems.push(format!(
                "{setting} does not exist (br_netfilter not loaded): same-node pod traffic over \
                 the bridge is NOT filtered; load br_netfilter and set {setting}=1"
            )),
        }
    }
    if c.kube_proxy_ipvs {
        c.problems.push(format!(
            "kube-proxy runs in IPVS mode (device {IPVS_DEVICE} exists): same-node traffic to a \
             ClusterIP passes input and output, not forward, so ingress isolation of a backend \
             on this node is NOT enforced for it (kubernetes#68055); use kube-proxy's iptables \
             or nftables mode"
        ));
    }
    c
}
