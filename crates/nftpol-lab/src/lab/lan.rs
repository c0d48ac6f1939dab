//! The nodes' own network (think: the physical LAN, or the cloud VPC): a
//! namespace holding a bridge `lan0` 192.168.56.1/24. Each [`Node`] can
//! plug an `eth0` into it ([`Node::join_lan`]) with 192.168.56.(10+N)/24,
//! N being the node's index (the third octet of its pod bridge).
//! Whatever plays the API server listens inside this namespace on
//! 192.168.56.1 ([`Lan::listen_tcp`]), so node processes reach it over
//! their own network, not the host's loopback.
//!
//! ```text
//!   namespace "...-lan"                      namespace "...-node-1"
//!   ┌────────────────────────────┐          ┌──────────────────────────────┐
//!   │ lan0 192.168.56.1/24 ── n1 ┼──────────┼─ eth0 192.168.56.11/24       │
//!   │ (API server listens here)  │          │ cni0 10.244.1.1/24, pods ... │
//!   └────────────────────────────┘          └──────────────────────────────┘
//! ```

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use ipnet::Ipv4Net;

use super::{LabError, Netns, Node};

/// The LAN's bridge, in the LAN namespace.
pub const LAN_BRIDGE: &str = "lan0";
/// A node's interface on the LAN.
pub const NODE_LAN_IFACE: &str = "eth0";

/// The LAN namespace with its bridge. Dropping it deletes the namespace
/// (and so the LAN ends of every node's `eth0`).
#[derive(Debug)]
pub struct Lan {
    subnet: Ipv4Net,
    netns: Netns,
}

impl Lan {
    /// A LAN with bridge address 192.168.56.1/24.
    pub fn new() -> Result<Self, LabError> {
        Self::with_address(
            Ipv4Net::new(Ipv4Addr::new(192, 168, 56, 1), 24).expect("24 is a valid prefix"),
        )
    }

    /// A LAN whose bridge has `address` (nodes get host numbers 10+N in its subnet).
    pub fn with_address(address: Ipv4Net) -> Result<Self, LabError> {
        let netns = Netns::create("lan")?;
        let ns = &netns;
        ns.ip(&["link", "add", LAN_BRIDGE, "type", "bridge"])?;
        ns.ip(&["addr", "add", &address.to_string(), "dev", LAN_BRIDGE])?;
        ns.ip(&["link", "set", LAN_BRIDGE, "up"])?;
        Ok(Self {
            subnet: address,
            netns,
        })
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The bridge's address (where the API server listens).
    pub fn ipv4(&self) -> Ipv4Addr {
        self.subnet.addr()
    }

    /// The bridge's address with its prefix.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The address node number `index` gets: host 10+`index`.
    pub fn node_ipv4(&self, index: u8) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 10 + u32::from(index))
    }

    /// A TCP listener on the bridge address and `port` (0: any free port),
    /// opened inside the LAN namespace: serve it from anywhere (e.g. with
    /// `devserver::Handle::serve_also`), it stays in the LAN.
    pub fn listen_tcp(&self, port: u16) -> Result<TcpListener, LabError> {
        let addr = SocketAddr::from((self.ipv4(), port));
        self.netns
            .run(|| TcpListener::bind(addr))?
            .map_err(|e| LabError::io(format!("listening on {addr} in the LAN"), e))
    }
}

impl Node {
    /// Plugs the node into `lan`: a veth pair, `eth0` in the node with
    /// 192.168.56.(10+N)/24 (N: the node's index, the third octet of its
    /// bridge address), the other end on the LAN bridge. Returns the
    /// node's LAN address. Once per node.
    pub fn join_lan(&self, lan: &Lan) -> Result<Ipv4Addr, LabError> {
        let index = self.config().bridge_v4.addr().octets()[2];
        if index > 244 {
            return Err(LabError::Unsupported(format!(
                "node index {index} has no LAN address (10+N must stay below 255)"
            )));
        }
        let ip = lan.node_ipv4(index);
        // The LAN end's name must be unique in the LAN namespace.
        let lan_end = format!("n{index}");
        self.netns().ip(&[
            "link",
            "add",
            NODE_LAN_IFACE,
            "type",
            "veth",
            "peer",
            "name",
            &lan_end,
            "netns",
            lan.netns().name(),
        ])?;
        lan.netns()
            .ip(&["link", "set", &lan_end, "master", LAN_BRIDGE, "up"])?;
        let cidr = format!("{ip}/{}", lan.subnet().prefix_len());
        self.netns()
            .ip(&["addr", "add", &cidr, "dev", NODE_LAN_IFACE])?;
        self.netns().ip(&["link", "set", NODE_LAN_IFACE, "up"])?;
        self.set_lan(lan.netns().name(), ip);
        Ok(ip)
    }
}
