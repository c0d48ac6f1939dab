//! `nftpol explain`: why a connection between two pods is allowed or denied.
//!
//! It compiles the plans of the nodes involved and decides the connection
//! with [`Plan::decide`], so it explains exactly what would be enforced.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::incremental::{Incremental, load};
use super::plan::Plan;
use super::policy::{Direction, Severity};
use super::snapshot::{ObjectKey, PodInfo, Protocol, Snapshot};
use super::{Compiled, Decision, compile};
use crate::net::Family;

/// The verdict and the reasons, as text for people.
#[derive(Clone, Debug)]
pub struct Explanation {
    pub allowed: bool,
    pub text: String,
}

/// Parses `80/TCP`, `http/TCP` or `80` (TCP).
pub fn parse_port_arg(s: &str) -> Result<(String, Protocol), String> {
    let (port, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_uppercase()),
        None => (s, "TCP".to_string()),
    };
    let proto = Protocol::parse(&proto)
        .ok_or_else(|| format!("unknown protocol {proto:?} in {s:?} (TCP, UDP or SCTP)"))?;
    if port.is_empty() {
        return Err(format!("missing port in {s:?}"));
    }
    Ok((port.to_string(), proto))
}

fn active_pod<'a>(snap: &'a Snapshot, key: &ObjectKey) -> Result<&'a PodInfo, String> {
    let pod = snap
        .pod(key)
        .ok_or_else(|| format!("pod {key} is not in the cluster files"))?;
    match pod.inactive_reason() {
        Some(why) => Err(format!(
            "pod {key} {why}; NetworkPolicy does not apply to it"
        )),
        None => Ok(pod),
    }
}

/// Explains a connection `from → to` on `port` (a number or a named port of
/// `to`) over `proto`.
pub fn explain(
    snap: &Snapshot,
    from: &ObjectKey,
    to: &ObjectKey,
    port: &str,
    proto: Protocol,
) -> Result<Explanation, String> {
    let src = active_pod(snap, from)?;
    let dst = active_pod(snap, to)?;
    let port_num: u16 = match port.parse() {
        Ok(n) if n > 0 => n,
        _ => dst
            .resolve_port(port, proto)
            .ok_or_else(|| format!("pod {to} has no container port named {port:?} for {proto}"))?,
    };
    let src_node = src.node.clone().unwrap_or_default();
    let dst_node = dst.node.clone().unwrap_or_default();
    let (mut inc, diagnostics) = load(snap, &src_node);
    // One family both pods have, IPv4 first, of the addresses they own.
    let (src_ip, dst_ip) = pick_pair(&owned(&inc, src)?, &owned(&inc, dst)?)
        .ok_or_else(|| format!("pods {from} and {to} have no address family in common"))?;
    let src_compiled = Compiled {
        diagnostics,
        ..inc.compile()
    };
    let dst_plan: Plan = if dst_node == src_node {
        src_compiled.plan.clone()
    } else {
        compile(snap, &dst_node).plan
    };

    let egress = src_compiled
        .plan
        .decide(Direction::Egress, src_ip, dst_ip, proto, port_num);
    let ingress = dst_plan.decide(Direction::Ingress, src_ip, dst_ip, proto, port_num);
    let allowed = egress.is_allowed() && ingress.is_allowed();

    let mut t = String::new();
    let shown_port = if port.parse::<u16>().is_ok() {
        format!("{port_num}/{proto}")
    } else {
        format!("{port}/{proto} (= {port_num} on {to})")
    };
    let _ = writeln!(
        t,
        "{from} ({src_ip}, {src_node}) -> {to} ({dst_ip}, {dst_node}) {shown_port}: {}",
        if allowed { "ALLOWED" } else { "DENIED" }
    );
    let _ = writeln!(
        t,
        "  egress of {from}:  {}",
        describe(&egress, from, Direction::Egress)
    );
    let _ = writeln!(
        t,
        "  ingress of {to}: {}",
        describe(&ingress, to, Direction::Ingress)
    );
    let namespaces = [&from.namespace, &to.namespace];
    let mut unseen: Vec<&str> = namespaces
        .iter()
        .map(|ns| &***ns)
        .filter(|ns| !snap.namespaces.contains_key(*ns))
        .collect();
    unseen.dedup();
    for ns in unseen {
        let _ = writeln!(
            t,
            "  note: namespace {ns} has no Namespace object here, so no namespaceSelector matches its pods"
        );
    }
    for d in src_compiled
        .diagnostics
        .iter()
        .filter(|d| namespaces.contains(&&d.policy.namespace))
    {
        let level = match d.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        let _ = writeln!(t, "  {level}: {d}");
    }
    Ok(Explanation { allowed, text: t })
}

/// The addresses of a pod that are its own (another pod may own one).
fn owned(inc: &Incremental, pod: &PodInfo) -> Result<Vec<IpAddr>, String> {
    let mine = |ip: &&IpAddr| inc.address_owner(**ip) == Some(&pod.key);
    let ips: Vec<IpAddr> = pod.ips.iter().filter(mine).copied().collect();
    if ips.is_empty() {
        let ip = pod.ips[0];
        let owner = inc.address_owner(ip).map_or("-".into(), |k| k.to_string());
        return Err(format!(
            "pod {} has no address of its own: {ip} belongs to pod {owner}, a newer pod (or one \
             not being deleted)",
            pod.key
        ));
    }
    Ok(ips)
}

fn pick_pair(a: &[IpAddr], b: &[IpAddr]) -> Option<(IpAddr, IpAddr)> {
    for family in Family::BOTH {
        let x = a.iter().find(|ip| Family::of(**ip) == family);
        let y = b.iter().find(|ip| Family::of(**ip) == family);
        if let (Some(x), Some(y)) = (x, y) {
            return Some((*x, *y));
        }
    }
    None
}

fn describe(d: &Decision, pod: &ObjectKey, dir: Direction) -> String {
    match d {
        Decision::Open => format!("open (no NetworkPolicy selects {pod} for {dir})"),
        Decision::Allowed { policy, rule } => format!(
            "allowed by NetworkPolicy {policy}, {} rule #{rule}",
            dir.as_str()
        ),
        Decision::Denied { isolated_by } => {
            let names: Vec<String> = isolated_by.iter().map(|k| k.to_string()).collect();
            format!(
                "denied: isolated by {} and no {} rule of {} allows it",
                names.join(", "),
                dir.as_str(),
                if names.len() == 1 { "it" } else { "them" }
            )
        }
    }
}
