//! Which bridge port each local pod sits behind, and which addresses the
//! pod has configured: what binds a pod's addresses to the port its
//! packets enter the bridge by (issue 11: a pod must not send with another
//! source address). I/O only; what to do with a binding is the caller's.
//!
//! ```text
//!  node namespace (here)                      pod namespace (netnsid 3 from here)
//!  cni0 (bridge) ── vethX ═══ veth pair ═══ eth0  10.244.1.12/24, fd00:…::12/64, fe80::…/64
//!                   IFLA_MASTER = cni0
//!                   IFLA_LINK = eth0's ifindex, IFLA_LINK_NETNSID = 3
//! ```
//!
//! Two kinds of rtnetlink dump, on one socket of this namespace:
//! - links (`RTM_GETLINK`): the bridges, and their ports that are veths
//!   whose peer lives in another namespace;
//! - addresses (`RTM_GETADDR` with `IFA_TARGET_NETNSID`, kernel 4.20 and
//!   later, CAP_NET_ADMIN over the target): one dump per peer namespace,
//!   read from here without entering it. The kernel honours the target
//!   only on a socket with strict checking (`NETLINK_GET_STRICT_CHK`);
//!   without it, it silently dumps this namespace's own addresses, whose
//!   ifindexes collide with the pods' (cni0 and every pod's eth0 are
//!   often both ifindex 2).
//!
//! The kernel reports a veth's peer namespace by an id local to this
//! namespace, and assigns one while it fills a link dump or a link
//! notification if there is none yet (a pair created from the pod's side
//! has none until the node sees it change or dumps it), so every
//! cross-namespace veth comes with its id.
//!
//! A pod's namespace is torn down a little after it is deleted (`ip netns
//! del` returns first): for a few milliseconds its port is still listed
//! with its old addresses, then the kernel refuses its id in the address
//! dump (that port is left out), then the port is gone.
//!
//! Addresses are split by range: `fe80::/10` and `169.254.0.0/16` are
//! [`Port::link_local`], everything else [`Port::addrs`]; host-scope
//! addresses (never valid on the wire) and IPv6 addresses whose duplicate
//! address detection failed are left out.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;
use nix::{setsockopt_impl, sockopt_impl};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_DUMP_INTR: u16 = 0x10;
/// Attribute type bits (without the nested and byte-order flags).
const NLA_TYPE_MASK: u16 = 0x3fff;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;

const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_INFO_KIND: u16 = 1;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_TARGET_NETNSID: u16 = 10;
const IFA_F_DADFAILED: u32 = 0x08;
const RT_SCOPE_HOST: u8 = 254;

/// `struct ifinfomsg` and `struct ifaddrmsg`.
const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const NLMSGHDR_LEN: usize = 16;

/// How often a dump is repeated when the kernel flags it inconsistent
/// (links or addresses changed while it was being written).
const DUMP_ATTEMPTS: usize = 3;
/// Bounds a kernel that does not answer (it answers at once).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

// nix has no such option of its own; its macro makes it as nix makes its
// own (the `setsockopt` call is nix's, not this crate's unsafe code).
sockopt_impl!(
    /// `NETLINK_GET_STRICT_CHK`: the kernel checks dump requests strictly
    /// and honours their filters (`IFA_TARGET_NETNSID` among them).
    StrictCheck,
    SetOnly,
    libc::SOL_NETLINK,
    libc::NETLINK_GET_STRICT_CHK,
    bool
);

/// A bridge port whose veth peer lives in another network namespace (a
/// pod's `eth0`), with the addresses configured on that peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// The host-side interface name (what nft's `iifname` sees).
    pub name: String,
    pub ifindex: u32,
    /// The bridge it is enslaved to (e.g. `cni0`).
    pub bridge: String,
    /// The peer's namespace, by its id as seen from this namespace.
    pub netnsid: i32,
    /// The peer's ifindex inside its namespace.
    pub peer_ifindex: u32,
    /// Addresses of the peer outside the link-local ranges, sorted.
    pub addrs: Vec<IpAddr>,
    /// Addresses of the peer in `fe80::/10` or `169.254.0.0/16`, sorted.
    pub link_local: Vec<IpAddr>,
}

/// A discovery that failed, by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum PortsError {
    #[error("{}: {why}", path.display())]
    Netns { path: PathBuf, why: String },
    #[error("opening a route netlink socket: {what}: {}", source.desc())]
    Socket { what: &'static str, source: Errno },
    #[error("dumping the links: {0}")]
    Links(DumpError),
    #[error("dumping the addresses of netnsid {netnsid}: {source}")]
    Addrs { netnsid: i32, source: DumpError },
}

/// One rtnetlink dump that failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{what}: {}", source.desc())]
    Io { what: &'static str, source: Errno },
    #[error("the kernel refused the request: {}", .0.desc())]
    Refused(Errno),
    #[error("the kernel's answer is malformed: {0}")]
    Malformed(String),
    #[error("still inconsistent after {DUMP_ATTEMPTS} attempts (links or addresses kept changing)")]
    Inconsistent,
}

/// Finds the pod ports of the calling thread's network namespace, or of
/// the one at `netns` (e.g. `/run/netns/NAME`). See [`RouteSocket`].
pub fn pod_ports(netns: Option<&Path>) -> Result<Vec<Port>, PortsError> {
    RouteSocket::open(netns)?.pod_ports()
}

/// A route netlink socket, bound to the namespace it was opened in; it
/// can be kept open and asked again.
#[derive(Debug)]
pub struct RouteSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl RouteSocket {
    /// Opens the socket in the calling thread's network namespace, or in
    /// the one at `netns`, entered on a thread of its own.
    pub fn open(netns: Option<&Path>) -> Result<Self, PortsError> {
        let fd =
            crate::netns::in_netns(netns, open_socket).map_err(|why| PortsError::Netns {
                path: netns.map(Path::to_path_buf).unwrap_or_default(),
                why,
            })??;
        Ok(Self {
            fd,
            seq: std::process::id().wrapping_shl(16),
            buf: vec![0; 64 * 1024],
        })
    }

    /// Every bridge port of this namespace whose veth peer lives in
    /// another namespace, with the peer's addresses, sorted by name. A
    /// peer namespace that disappears between the two dumps drops its
    /// ports from the answer.
    pub fn pod_ports(&mut self) -> Result<Vec<Port>, PortsError> {
        let links = self.links().map_err(PortsError::Links)?;
        let bridges: HashMap<u32, &str> = links
            .iter()
            .filter(|l| l.kind.as_deref() == Some("bridge"))
            .map(|l| (l.ifindex, l.name.as_str()))
            .collect();
        let mut ports: Vec<Port> = links
            .iter()
            .filter(|l| l.kind.as_deref() == Some("veth"))
            .filter_map(|l| {
                Some(Port {
                    name: l.name.clone(),
                    ifindex: l.ifindex,
                    bridge: bridges.get(&l.master?)?.to_string(),
                    // Negative: the peer's namespace is being torn down.
                    netnsid: l.link_netnsid.filter(|id| *id >= 0)?,
                    peer_ifindex: l.link?,
                    addrs: Vec::new(),
                    link_local: Vec::new(),
                })
            })
            .collect();

        let mut by_netns: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        for (i, port) in ports.iter().enumerate() {
            by_netns.entry(port.netnsid).or_default().push(i);
        }
        let mut gone = Vec::new();
        for (netnsid, members) in by_netns {
            let addrs = match self.addrs(netnsid) {
                Ok(addrs) => addrs,
                // The id no longer names a namespace: the pod went away.
                Err(DumpError::Refused(Errno::EINVAL)) => {
                    gone.push(netnsid);
                    continue;
                }
                Err(source) => return Err(PortsError::Addrs { netnsid, source }),
            };
            for i in members {
                let port = &mut ports[i];
                for addr in addrs.iter().filter(|a| a.ifindex == port.peer_ifindex) {
                    if is_link_local(addr.ip) {
                        port.link_local.push(addr.ip);
                    } else {
                        port.addrs.push(addr.ip);
                    }
                }
                port.addrs.sort();
                port.link_local.sort();
            }
        }
        ports.retain(|p| !gone.contains(&p.netnsid));
        ports.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ports)
    }

    fn links(&mut self) -> Result<Vec<Link>, DumpError> {
        let header = [0u8; IFINFOMSG_LEN];
        self.dump(RTM_GETLINK, &header, |ty, body| {
            if ty == RTM_NEWLINK {
                Link::parse(body).map(Some)
            } else {
                Ok(None)
            }
        })
    }

    /// Addresses of every interface in the namespace `netnsid` names.
    fn addrs(&mut self, netnsid: i32) -> Result<Vec<Addr>, DumpError> {
        let mut request = vec![0u8; IFADDRMSG_LEN]; // AF_UNSPEC: IPv4 and IPv6
        push_attr(&mut request, IFA_TARGET_NETNSID, &netnsid.to_ne_bytes());
        self.dump(RTM_GETADDR, &request, |ty, body| {
            if ty == RTM_NEWADDR {
                Addr::parse(body)
            } else {
                Ok(None)
            }
        })
    }

    /// Runs one dump (`payload` after the netlink header), repeated while
    /// the kernel flags it inconsistent; `parse` turns each message into
    /// at most one item.
    fn dump<T>(
        &mut self,
        ty: u16,
        payload: &[u8],
        mut parse: impl FnMut(u16, &[u8]) -> Result<Option<T>, DumpError>,
    ) -> Result<Vec<T>, DumpError> {
        for _ in 0..DUMP_ATTEMPTS {
            match self.dump_once(ty, payload, &mut parse)? {
                Some(items) => return Ok(items),
                None => continue,
            }
        }
        Err(DumpError::Inconsistent)
    }

    /// `None`: the dump was consistent only in part (`NLM_F_DUMP_INTR`).
    fn dump_once<T>(
        &mut self,
        ty: u16,
        payload: &[u8],
        parse: &mut impl FnMut(u16, &[u8]) -> Result<Option<T>, DumpError>,
    ) -> Result<Option<Vec<T>>, DumpError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut request = Vec::with_capacity(NLMSGHDR_LEN + payload.len());
        let len = (NLMSGHDR_LEN + payload.len()) as u32;
        request.extend_from_slice(&len.to_ne_bytes());
        request.extend_from_slice(&ty.to_ne_bytes());
        request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        request.extend_from_slice(&seq.to_ne_bytes());
        request.extend_from_slice(&0u32.to_ne_bytes());
        request.extend_from_slice(payload);
        let io = |what| move |source| DumpError::Io { what, source };
        send(self.fd.as_raw_fd(), &request, MsgFlags::empty()).map_err(io("sending"))?;

        let mut items = Vec::new();
        let mut interrupted = false;
        loop {
            let n = match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_TRUNC) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(source) => return Err(io("receiving")(source)),
            };
            if n > self.buf.len() {
                return Err(DumpError::Malformed(format!(
                    "a datagram of {n} bytes did not fit the {}-byte buffer",
                    self.buf.len()
                )));
            }
            for msg in messages(&self.buf[..n])? {
                if msg.seq != seq {
                    continue; // left over from an earlier request
                }
                interrupted |= msg.flags & NLM_F_DUMP_INTR != 0;
                match msg.ty {
                    // Both carry an error code; a dump that fails ends
                    // with either (0 in an error would be an ack, not
                    // asked for).
                    NLMSG_DONE | NLMSG_ERROR => {
                        let code = msg
                            .body
                            .get(..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                            .unwrap_or(0);
                        if code < 0 || msg.ty == NLMSG_ERROR {
                            return Err(DumpError::Refused(Errno::from_raw(-code)));
                        }
                        return Ok((!interrupted).then_some(items));
                    }
                    other => items.extend(parse(other, msg.body)?),
                }
            }
        }
    }
}

fn open_socket() -> Result<OwnedFd, PortsError> {
    let err = |what| move |source| PortsError::Socket { what, source };
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(err("socket"))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(err("bind"))?;
    // Kernels before 4.20 have neither this nor IFA_TARGET_NETNSID.
    setsockopt(&fd, StrictCheck, &true).map_err(err("strict checking (kernel 4.20 or later)"))?;
    let timeout = TimeVal::new(ANSWER_TIMEOUT.as_secs() as i64, 0);
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(err("receive timeout"))?;
    Ok(fd)
}

/// What the link dump tells of one interface.
#[derive(Debug)]
struct Link {
    ifindex: u32,
    name: String,
    kind: Option<String>,
    master: Option<u32>,
    /// The peer's ifindex (in the peer's namespace when `link_netnsid`).
    link: Option<u32>,
    link_netnsid: Option<i32>,
}

impl Link {
    fn parse(body: &[u8]) -> Result<Self, DumpError> {
        let header = body
            .get(..IFINFOMSG_LEN)
            .ok_or_else(|| DumpError::Malformed("a short ifinfomsg".into()))?;
        let mut link = Link {
            ifindex: u32::from_ne_bytes(header[4..8].try_into().expect("4 bytes")),
            name: String::new(),
            kind: None,
            master: None,
            link: None,
            link_netnsid: None,
        };
        for (ty, value) in attrs(&body[IFINFOMSG_LEN..]) {
            match ty {
                IFLA_IFNAME => link.name = c_string(value),
                IFLA_MASTER => link.master = u32_of(value),
                IFLA_LINK => link.link = u32_of(value),
                IFLA_LINK_NETNSID => link.link_netnsid = u32_of(value).map(|v| v as i32),
                IFLA_LINKINFO => {
                    link.kind = attrs(value)
                        .find(|(ty, _)| *ty == IFLA_INFO_KIND)
                        .map(|(_, v)| c_string(v));
                }
                _ => {}
            }
        }
        if link.name.is_empty() {
            return Err(DumpError::Malformed(format!(
                "link {} has no name",
                link.ifindex
            )));
        }
        Ok(link)
    }
}

/// One address of the address dump.
#[derive(Debug)]
struct Addr {
    ifindex: u32,
    ip: IpAddr,
}

impl Addr {
    /// `None` for addresses no packet may carry as its source (host
    /// scope, failed duplicate address detection) and unknown families.
    fn parse(body: &[u8]) -> Result<Option<Self>, DumpError> {
        let header = body
            .get(..IFADDRMSG_LEN)
            .ok_or_else(|| DumpError::Malformed("a short ifaddrmsg".into()))?;
        let (scope, ifindex) = (
            header[3],
            u32::from_ne_bytes(header[4..8].try_into().expect("4 bytes")),
        );
        let mut flags = u32::from(header[2]);
        let (mut address, mut local) = (None, None);
        for (ty, value) in attrs(&body[IFADDRMSG_LEN..]) {
            match ty {
                IFA_ADDRESS => address = ip_of(value),
                IFA_LOCAL => local = ip_of(value),
                IFA_FLAGS => flags = u32_of(value).unwrap_or(flags),
                _ => {}
            }
        }
        // IFA_LOCAL is the interface's own address where both are given
        // (IFA_ADDRESS is then the far end of a point-to-point link).
        let Some(ip) = local.or(address) else {
            return Ok(None);
        };
        if scope == RT_SCOPE_HOST || flags & IFA_F_DADFAILED != 0 {
            return Ok(None);
        }
        Ok(Some(Addr { ifindex, ip }))
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// One netlink message of a datagram.
struct Message<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    body: &'a [u8],
}

fn messages(mut data: &[u8]) -> Result<Vec<Message<'_>>, DumpError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let len = data
            .get(..4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")) as usize)
            .filter(|len| (NLMSGHDR_LEN..=data.len()).contains(len))
            .ok_or_else(|| DumpError::Malformed("a truncated netlink message".into()))?;
        out.push(Message {
            ty: u16::from_ne_bytes([data[4], data[5]]),
            flags: u16::from_ne_bytes([data[6], data[7]]),
            seq: u32::from_ne_bytes(data[8..12].try_into().expect("4 bytes")),
            body: &data[NLMSGHDR_LEN..len],
        });
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    Ok(out)
}

/// The `(type, value)` of each attribute; stops at the first malformed one.
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(data.get(..2)?.try_into().ok()?));
        if len < 4 || len > data.len() {
            return None;
        }
        let ty = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        let value = &data[4..len];
        data = &data[len.next_multiple_of(4).min(data.len())..];
        Some((ty, value))
    })
}

fn push_attr(buf: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let len = u16::try_from(4 + value.len()).expect("a small attribute");
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fn u32_of(value: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(value.get(..4)?.try_into().ok()?))
}

fn ip_of(value: &[u8]) -> Option<IpAddr> {
    match value.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(value).ok()?,
        ))),
        _ => None,
    }
}

fn c_string(value: &[u8]) -> String {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// An `RTM_NEWADDR` body: ifaddrmsg (family, prefix, flags, scope,
    /// index) and attributes.
    fn addr_body(scope: u8, attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![libc::AF_INET as u8, 24, 0, scope];
        body.extend_from_slice(&7u32.to_ne_bytes());
        for (ty, value) in attributes {
            push_attr(&mut body, *ty, value);
        }
        body
    }

    #[test]
    fn an_address_is_the_local_one_and_unusable_ones_are_left_out() {
        let (local, far) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let point_to_point = addr_body(0, &[(IFA_ADDRESS, &far), (IFA_LOCAL, &local)]);
        let addr = Addr::parse(&point_to_point).unwrap().unwrap();
        assert_eq!((addr.ifindex, addr.ip), (7, ip("10.0.0.1")));

        let host = addr_body(RT_SCOPE_HOST, &[(IFA_ADDRESS, &local)]);
        assert!(Addr::parse(&host).unwrap().is_none());
        let dad_failed = addr_body(
            0,
            &[
                (IFA_ADDRESS, &local),
                (IFA_FLAGS, &IFA_F_DADFAILED.to_ne_bytes()),
            ],
        );
        assert!(Addr::parse(&dad_failed).unwrap().is_none());
        assert!(Addr::parse(&[0; 4]).is_err());
    }
}
