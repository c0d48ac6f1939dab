//! Flannel's VXLAN backend between lab nodes, and the iptables rules
//! flanneld installs, set up by hand the way flanneld would.
//!
//! ```text
//!   node-1 namespace                               node-2 namespace
//!   pod 10.244.1.10 ─ cni0 10.244.1.1/24            cni0 10.244.2.1/24 ─ pod 10.244.2.10
//!   route 10.244.2.0/24 via 10.244.2.0 onlink       route 10.244.1.0/24 via 10.244.1.0 onlink
//!   flannel.1 10.244.1.0/32 (VNI 1, UDP 8472) ═════ flannel.1 10.244.2.0/32
//!        neigh 10.244.2.0 → node-2's flannel.1 MAC     (and the other way round)
//!        fdb   that MAC → dst 192.168.56.12
//!   eth0 192.168.56.11 ──────────── LAN (lan0) ──────────── eth0 192.168.56.12
//! ```
//!
//! flanneld learns nothing at run time (`nolearning`): it writes one
//! permanent neighbour and one fdb entry per peer from the peer's lease,
//! as [`flannel_vxlan_mesh`] does here.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

use super::lan::NODE_LAN_IFACE;
use super::{LabError, Node, run_cmd};

/// Flannel's VXLAN device.
const VXLAN_IFACE: &str = "flannel.1";
/// Flannel's VNI (`flannel.<VNI>`).
const VXLAN_ID: &str = "1";
/// Flannel's VXLAN UDP port: the Linux default 8472, not IANA's 4789.
const VXLAN_PORT: &str = "8472";
/// 1500 on the underlay less 50 bytes of VXLAN encapsulation.
const VXLAN_DEVICE_MTU: &str = "1450";
/// The mark kube-proxy sets on packets it wants masqueraded itself;
/// Flannel leaves them alone.
const KUBE_PROXY_MARK: &str = "0x4000/0x4000";

/// Joins `nodes` with Flannel's VXLAN backend, as flanneld would: on each
/// node a `flannel.1` (VXLAN id 1, UDP 8472, local = its LAN address, over
/// `eth0`, `nolearning`, MTU 1450) with address 10.244.N.0/32; for each
/// peer M a permanent neighbour 10.244.M.0 → the peer's `flannel.1` MAC,
/// an fdb entry (`bridge fdb append`) sending that MAC to the peer's LAN
/// address, and a route 10.244.M.0/24 via 10.244.M.0 dev `flannel.1`
/// onlink. N.0/24 is each node's pod subnet (its bridge's network).
///
/// Every node must already have joined the same [`super::Lan`]
/// ([`Node::join_lan`]); its `eth0` is the underlay. Build the nodes with
/// [`super::NodeConfig::mtu`]`(1450)` so that pods fit in the tunnel.
/// Once per set of nodes (a second call finds `flannel.1` there and fails).
pub fn flannel_vxlan_mesh(nodes: &[&Node]) -> Result<(), LabError> {
    let mut lans = Vec::with_capacity(nodes.len());
    for node in nodes {
        let (Some(lan), Some(ip)) = (node.lan_netns_name(), node.lan_ipv4()) else {
            return Err(LabError::Unsupported(format!(
                "node {} has not joined a LAN: call Node::join_lan before flannel_vxlan_mesh",
                node.name()
            )));
        };
        lans.push((lan, ip));
    }
    if let Some((i, _)) = lans.iter().enumerate().find(|(_, l)| l.0 != lans[0].0) {
        return Err(LabError::Unsupported(format!(
            "nodes {} and {} are on different LANs",
            nodes[0].name(),
            nodes[i].name()
        )));
    }
    let mut macs = Vec::with_capacity(nodes.len());
    for (node, (_, lan_ip)) in nodes.iter().zip(&lans) {
        macs.push(add_vtep(node, *lan_ip)?);
    }
    for (i, node) in nodes.iter().enumerate() {
        for (j, peer) in nodes.iter().enumerate().filter(|(j, _)| *j != i) {
            let subnet = pod_subnet(peer);
            let vtep = subnet.network().to_string();
            let ns = node.netns();
            ns.ip(&[
                "neigh",
                "replace",
                &vtep,
                "lladdr",
                &macs[j],
                "dev",
                VXLAN_IFACE,
                "nud",
                "permanent",
            ])?;
            run_cmd(&[
                "bridge",
                "-netns",
                ns.name(),
                "fdb",
                "append",
                &macs[j],
                "dev",
                VXLAN_IFACE,
                "dst",
                &lans[j].1.to_string(),
            ])?;
            ns.ip(&[
                "route",
                "replace",
                &subnet.to_string(),
                "via",
                &vtep,
                "dev",
                VXLAN_IFACE,
                "onlink",
            ])?;
        }
    }
    Ok(())
}

/// The node's pod subnet, 10.244.N.0/24: its bridge's network.
fn pod_subnet(node: &Node) -> Ipv4Net {
    node.config().bridge_v4.trunc()
}

/// Creates and starts the node's `flannel.1`; returns its MAC address.
fn add_vtep(node: &Node, lan_ip: Ipv4Addr) -> Result<String, LabError> {
    let ns = node.netns();
    ns.ip(&[
        "link",
        "add",
        VXLAN_IFACE,
        "mtu",
        VXLAN_DEVICE_MTU,
        "type",
        "vxlan",
        "id",
        VXLAN_ID,
        "local",
        &lan_ip.to_string(),
        "dev",
        NODE_LAN_IFACE,
        "dstport",
        VXLAN_PORT,
        "nolearning",
    ])?;
    let addr = format!("{}/32", pod_subnet(node).network());
    ns.ip(&["addr", "add", &addr, "dev", VXLAN_IFACE])?;
    ns.ip(&["link", "set", VXLAN_IFACE, "up"])?;
    let json = ns.ip(&["-j", "link", "show", "dev", VXLAN_IFACE])?;
    serde_json::from_str::<serde_json::Value>(&json)
        .ok()
        .and_then(|v| v[0]["address"].as_str().map(String::from))
        .ok_or_else(|| {
            LabError::Unsupported(format!(
                "no MAC address for {VXLAN_IFACE} on {} in `ip -j link` output: {json}",
                node.name()
            ))
        })
}

impl Node {
    /// Installs the iptables rules flanneld (VXLAN backend) installs on a
    /// node with pod subnet 10.244.N.0/24 (its bridge's network) in
    /// `cluster_cidr`, with `iptables-restore` (iptables-nft: they land in
    /// `table ip filter` and `table ip nat`), in one transaction:
    ///
    /// ```text
    /// *filter  FORWARD -j FLANNEL-FWD
    ///          FLANNEL-FWD: -s CLUSTER -j ACCEPT; -d CLUSTER -j ACCEPT
    /// *nat     POSTROUTING -j FLANNEL-POSTRTG
    ///          FLANNEL-POSTRTG: kube-proxy mark 0x4000 -> RETURN
    ///            -s POD_SUBNET -d CLUSTER -> RETURN      (pod to pod: no NAT)
    ///            -s CLUSTER -d POD_SUBNET -> RETURN
    ///            ! -s CLUSTER -d POD_SUBNET -> RETURN
    ///            -s CLUSTER ! -d 224.0.0.0/4 -> MASQUERADE --random-fully (pod to outside)
    ///            ! -s CLUSTER -d CLUSTER -> MASQUERADE --random-fully (host to pods)
    /// ```
    ///
    /// (flannel-io/flannel `pkg/trafficmngr/iptables`; `--random-fully`
    /// only with iptables 1.6.2 or later, as flanneld decides.) Fails with
    /// a clear error when `iptables` is not installed: there is no
    /// fallback that would test something else than Flannel's rules.
    pub fn install_flannel_iptables(&self, cluster_cidr: Ipv4Net) -> Result<(), LabError> {
        let version = Command::new("iptables")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .ok_or_else(|| {
                LabError::Unsupported(
                    "`iptables` is not installed (apt-get install -y iptables): \
                     Flannel's rules are installed with it"
                        .into(),
                )
            })?;
        let rules = flannel_rules(
            cluster_cidr.trunc(),
            pod_subnet(self),
            has_random_fully(&version),
        );
        let argv = [
            "ip",
            "netns",
            "exec",
            self.netns().name(),
            "iptables-restore",
            "--noflush",
        ];
        let what = format!("running {}", argv.join(" "));
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::io(what.clone(), e))?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(rules.as_bytes())
            .map_err(|e| LabError::io(what.clone(), e))?;
        let out = child
            .wait_with_output()
            .map_err(|e| LabError::io(what.clone(), e))?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("{} <<EOF\n{rules}EOF", argv.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}

/// flanneld's rules as `iptables-restore` input (appended to what is
/// there: run with `--noflush`).
fn flannel_rules(cluster: Ipv4Net, pod_subnet: Ipv4Net, random_fully: bool) -> String {
    let masq = if random_fully {
        "MASQUERADE --random-fully"
    } else {
        "MASQUERADE"
    };
    let fwd = r#"-m comment --comment "flanneld forward""#;
    let nat = r#"-m comment --comment "flanneld masq""#;
    format!(
        "*filter\n\
         :FLANNEL-FWD - [0:0]\n\
         -A FORWARD {fwd} -j FLANNEL-FWD\n\
         -A FLANNEL-FWD -s {cluster} {fwd} -j ACCEPT\n\
         -A FLANNEL-FWD -d {cluster} {fwd} -j ACCEPT\n\
         COMMIT\n\
         *nat\n\
         :FLANNEL-POSTRTG - [0:0]\n\
         -A POSTROUTING {nat} -j FLANNEL-POSTRTG\n\
         -A FLANNEL-POSTRTG -m mark --mark {KUBE_PROXY_MARK} {nat} -j RETURN\n\
         -A FLANNEL-POSTRTG -s {pod_subnet} -d {cluster} {nat} -j RETURN\n\
         -A FLANNEL-POSTRTG -s {cluster} -d {pod_subnet} {nat} -j RETURN\n\
         -A FLANNEL-POSTRTG ! -s {cluster} -d {pod_subnet} {nat} -j RETURN\n\
         -A FLANNEL-POSTRTG -s {cluster} ! -d 224.0.0.0/4 {nat} -j {masq}\n\
         -A FLANNEL-POSTRTG ! -s {cluster} -d {cluster} {nat} -j {masq}\n\
         COMMIT\n"
    )
}

/// Whether `iptables --version` output ("iptables v1.8.9 (nf_tables)") is
/// 1.6.2 or later, where go-iptables' `HasRandomFully` says yes.
fn has_random_fully(version: &str) -> bool {
    let Some(v) = version.split_whitespace().find_map(|w| w.strip_prefix('v')) else {
        return false;
    };
    let parts: Vec<u32> = v.split('.').map_while(|p| p.parse().ok()).collect();
    parts.as_slice() >= [1, 6, 2].as_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_fully_needs_iptables_1_6_2() {
        assert!(has_random_fully("iptables v1.8.9 (nf_tables)\n"));
        assert!(has_random_fully("iptables v1.6.2"));
        assert!(!has_random_fully("iptables v1.6.1"));
        assert!(!has_random_fully("iptables v1.4.21"));
        assert!(!has_random_fully("garbage"));
    }

    #[test]
    fn the_rules_keep_pod_to_pod_traffic_unmasqueraded() {
        let rules = flannel_rules(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.2.0/24".parse().unwrap(),
            true,
        );
        assert!(rules.contains("-A FLANNEL-FWD -s 10.244.0.0/16 "));
        assert!(rules.contains("-A FLANNEL-POSTRTG -s 10.244.2.0/24 -d 10.244.0.0/16 "));
        assert!(rules.contains("-j MASQUERADE --random-fully\n"));
        assert_eq!(rules.matches("COMMIT").count(), 2);
    }
}
