//! A Flannel-like node: a `cni0` bridge in the node's namespace, one veth
//! pair per pod, pods routed by default through the bridge address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use ipnet::{Ipv4Net, Ipv6Net};

use super::{LabError, Netns};
use nftpol::net::Family;
use nftpol::nft::Nft;

/// The bridge every pod of a node is plugged into, as Flannel names it.
pub const BRIDGE: &str = "cni0";
/// The pod's side of its veth pair.
pub const POD_IFACE: &str = "eth0";

/// How to build a [`Node`].
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The Kubernetes node name (used in namespace names and messages).
    pub name: String,
    /// The bridge's address; pods get addresses from its subnet.
    pub bridge_v4: Ipv4Net,
    /// The bridge's IPv6 address, for dual-stack pods.
    pub bridge_v6: Option<Ipv6Net>,
    /// The MTU of `cni0` and of every pod's veth pair (both ends); `None`
    /// keeps the kernel's default (1500). Flannel's VXLAN needs 1450.
    pub mtu: Option<u32>,
}

impl NodeConfig {
    /// Node number `index` of a Flannel cluster: bridge 10.244.INDEX.1/24.
    pub fn new(name: &str, index: u8) -> Self {
        Self {
            name: name.to_string(),
            bridge_v4: Ipv4Net::new(Ipv4Addr::new(10, 244, index, 1), 24)
                .expect("24 is a valid prefix"),
            bridge_v6: None,
            mtu: None,
        }
    }

    /// Sets the MTU of `cni0` and of the pods' interfaces, e.g. 1450 for
    /// Flannel's VXLAN (see [`super::flannel_vxlan_mesh`]).
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Adds IPv6: bridge fd00:10:244:INDEX::1/64, where INDEX is the third
    /// octet of the IPv4 bridge address.
    pub fn dual_stack(mut self) -> Self {
        let index = self.bridge_v4.addr().octets()[2] as u16;
        self.bridge_v6 = Some(
            Ipv6Net::new(Ipv6Addr::new(0xfd00, 0x10, 0x244, index, 0, 0, 0, 1), 64)
                .expect("64 is a valid prefix"),
        );
        self
    }
}

/// A node namespace with its pod bridge, forwarding on and bridged traffic
/// sent through the IP hooks (`bridge-nf-call-iptables`/`-ip6tables`).
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    veths: AtomicU32,
    netns: Netns,
    /// The LAN's namespace name and this node's address on it, once joined.
    lan: OnceLock<(String, Ipv4Addr)>,
}

impl Node {
    /// Creates the node's namespace with its `cni0` bridge, forwarding on
    /// and the br_netfilter sysctls set.
    pub fn new(config: NodeConfig) -> Result<Self, LabError> {
        let netns = Netns::create(&config.name)?;
        let node = Self {
            config,
            veths: AtomicU32::new(0),
            netns,
            lan: OnceLock::new(),
        };
        let ns = &node.netns;
        let mtu = node.config.mtu.map(|m| m.to_string());
        let mut add = vec!["link", "add", BRIDGE];
        if let Some(m) = &mtu {
            add.extend(["mtu", m.as_str()]);
        }
        add.extend(["type", "bridge"]);
        ns.ip(&add)?;
        ns.ip(&[
            "addr",
            "add",
            &node.config.bridge_v4.to_string(),
            "dev",
            BRIDGE,
        ])?;
        if let Some(v6) = node.config.bridge_v6 {
            ns.ip(&["addr", "add", &v6.to_string(), "dev", BRIDGE, "nodad"])?;
        }
        ns.ip(&["link", "set", BRIDGE, "up"])?;
        ns.sysctl(&[
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.bridge.bridge-nf-call-iptables=1",
            "net.bridge.bridge-nf-call-ip6tables=1",
        ])?;
        Ok(node)
    }

    /// The Kubernetes node name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// What the node was built from.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The node's own namespace (the "host" of its pods).
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The bridge's IPv4 address (the pods' gateway).
    pub fn ipv4(&self) -> Ipv4Addr {
        self.config.bridge_v4.addr()
    }

    /// The bridge's IPv6 address, when dual-stack.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.config.bridge_v6.map(|n| n.addr())
    }

    /// The node's address on its LAN, once [`Node::join_lan`] plugged it in.
    pub fn lan_ipv4(&self) -> Option<Ipv4Addr> {
        self.lan.get().map(|(_, ip)| *ip)
    }

    /// The name of the LAN namespace the node joined.
    pub(crate) fn lan_netns_name(&self) -> Option<&str> {
        self.lan.get().map(|(name, _)| name.as_str())
    }

    pub(crate) fn set_lan(&self, netns: &str, ip: Ipv4Addr) {
        let _ = self.lan.set((netns.to_string(), ip));
    }

    /// An [`Nft`] that runs `nft` in the node's namespace.
    pub fn nft(&self) -> Nft {
        self.netns.nft()
    }

    /// The syncer `nftpol run` would keep in this node: element updates
    /// over netlink, the rest through `nft`.
    pub fn syncer(&self, table: &str) -> Result<nftpol::nft::Syncer, LabError> {
        let transport = nftpol::nft::NetlinkDiffs::new(self.netns.netlink()?, self.nft());
        Ok(nftpol::nft::Syncer::new(transport, table))
    }

    /// Starts servers on `ports` (TCP, UDP, SCTP) in the node's namespace
    /// (on every address).
    pub fn serve(&self, ports: &[super::Port]) -> Result<(), LabError> {
        self.netns
            .serve(ports, families(self.config.bridge_v6.is_some()))
    }

    /// `conntrack -F` in the node's namespace.
    pub fn conntrack_flush(&self) -> Result<(), LabError> {
        self.netns.conntrack_flush()
    }

    /// Adds a pod with host number `host` in the bridge's subnets
    /// (10.244.1.`host`, and fd00:10:244:1::`host` when dual-stack).
    pub fn add_pod(&self, name: &str, host: u8) -> Result<Pod, LabError> {
        let v4 = u32::from(self.config.bridge_v4.network()) | u32::from(host);
        let ipv4 = Ipv4Addr::from(v4);
        let ipv6 = self
            .config
            .bridge_v6
            .map(|n| Ipv6Addr::from(u128::from(n.network()) | u128::from(host)));
        self.add_pod_with(name, ipv4, ipv6)
    }

    /// Adds a pod with these addresses (they must lie in the bridge's subnets).
    pub fn add_pod_with(
        &self,
        name: &str,
        ipv4: Ipv4Addr,
        ipv6: Option<Ipv6Addr>,
    ) -> Result<Pod, LabError> {
        let netns = Netns::create(name)?;
        let veth = format!("veth{}", self.veths.fetch_add(1, Ordering::Relaxed));
        // Created in the node's namespace: the host never sees these links.
        let mtu = self.config.mtu.map(|m| m.to_string());
        let mtu_args: Vec<&str> = mtu.iter().flat_map(|m| ["mtu", m.as_str()]).collect();
        let mut add = vec!["link", "add", &veth];
        add.extend(&mtu_args);
        add.extend(["type", "veth", "peer", "name", POD_IFACE]);
        add.extend(&mtu_args);
        add.extend(["netns", netns.name()]);
        self.netns.ip(&add)?;
        self.netns
            .ip(&["link", "set", &veth, "master", BRIDGE, "up"])?;
        let v4 = format!("{ipv4}/{}", self.config.bridge_v4.prefix_len());
        netns.ip(&["addr", "add", &v4, "dev", POD_IFACE])?;
        if let (Some(ip), Some(net)) = (ipv6, self.config.bridge_v6) {
            let v6 = format!("{ip}/{}", net.prefix_len());
            netns.ip(&["addr", "add", &v6, "dev", POD_IFACE, "nodad"])?;
        }
        netns.ip(&["link", "set", POD_IFACE, "up"])?;
        netns.ip(&["route", "add", "default", "via", &self.ipv4().to_string()])?;
        if let (Some(_), Some(gw)) = (ipv6, self.ipv6()) {
            netns.ip(&["-6", "route", "add", "default", "via", &gw.to_string()])?;
        }
        Ok(Pod {
            name: name.to_string(),
            veth,
            ipv4,
            ipv6: ipv6.filter(|_| self.config.bridge_v6.is_some()),
            netns,
        })
    }
}

/// A pod namespace plugged into its node's bridge. Dropping it deletes the
/// namespace and so its veth pair.
#[derive(Debug)]
pub struct Pod {
    name: String,
    /// The node's side of the pod's veth pair (a port of `cni0`).
    veth: String,
    ipv4: Ipv4Addr,
    ipv6: Option<Ipv6Addr>,
    netns: Netns,
}

impl Pod {
    /// The name given to [`Node::add_pod`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's side of its veth pair: the `cni0` port it is plugged into.
    pub fn veth(&self) -> &str {
        &self.veth
    }

    /// The pod's namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The pod's IPv4 address.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    /// The pod's IPv6 address, when its node is dual-stack.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.ipv6
    }

    /// Every address of the pod, IPv4 first.
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut out = vec![IpAddr::V4(self.ipv4)];
        out.extend(self.ipv6.map(IpAddr::V6));
        out
    }

    /// Starts servers on `ports` (TCP, UDP, SCTP) on all of the pod's
    /// addresses, until the pod is dropped (see [`Netns::serve`]).
    pub fn serve(&self, ports: &[super::Port]) -> Result<(), LabError> {
        self.netns.serve(ports, families(self.ipv6.is_some()))
    }
}

/// IPv4, and IPv6 when `dual_stack`.
fn families(dual_stack: bool) -> &'static [Family] {
    if dual_stack {
        &Family::BOTH
    } else {
        &[Family::V4]
    }
}
