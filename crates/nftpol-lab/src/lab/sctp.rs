//! SCTP in the lab, with or without the kernel's SCTP stack.
//!
//! Where the kernel has SCTP sockets ([`kernel_has_sctp`]), servers listen
//! on real one-to-one SCTP sockets and probes `connect` like TCP. Where it
//! has none (shared/netns-facts.md: these machines), both sides speak just
//! the first two packets of the SCTP handshake over raw sockets of IP
//! protocol 132:
//!
//! ```text
//!   probe (raw socket, source ns)            responder (raw socket, server ns)
//!     INIT  vtag 0, initiate tag T  ───────►  port served? answer:
//!           ◄─────── INIT-ACK vtag T, own initiate tag, state cookie
//!   success: an INIT-ACK from the probed address and port with vtag T
//! ```
//!
//! Both are real SCTP packets with a correct CRC32c checksum, so conntrack
//! tracks the exchange (the INIT-ACK is `ct state established`) and nft's
//! `sctp dport` matches the INIT. That is the part of an association a
//! NetworkPolicy decides; the COOKIE-ECHO that would follow is not needed.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use nftpol::net::Family;
use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{
    self, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6, SockaddrStorage,
    sockopt,
};
use socket2::{Domain, Socket, Type};

/// SCTP's IP protocol number.
pub(crate) const IPPROTO_SCTP: i32 = 132;

const COMMON_HEADER: usize = 12;
/// INIT and INIT-ACK share this fixed part: type, flags, length, initiate
/// tag, a_rwnd, outbound streams, inbound streams, initial TSN.
const INIT_FIXED: usize = 20;
const CHUNK_INIT: u8 = 1;
const CHUNK_INIT_ACK: u8 = 2;
const PARAM_STATE_COOKIE: u16 = 7;
/// Stream counts and window the lab announces (any non-zero values do).
const STREAMS: u16 = 10;
const A_RWND: u32 = 65_536;
/// Biggest packet a lab raw socket reads (larger ones are not ours).
const MAX_PACKET: usize = 2048;

/// Whether this kernel has SCTP sockets: `socket(AF_INET, SOCK_STREAM,
/// IPPROTO_SCTP)` succeeds. Tried once per process. When it does, the lab
/// uses real SCTP sockets; otherwise raw INIT / INIT-ACK exchanges.
pub fn kernel_has_sctp() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        Socket::new(
            Domain::IPV4,
            Type::STREAM,
            Some(socket2::Protocol::from(IPPROTO_SCTP)),
        )
        .is_ok()
    })
}

/// A fresh non-blocking raw socket of IP protocol 132 in the calling
/// thread's namespace. It sees every SCTP packet of that namespace (IPv4:
/// with the IP header).
pub(crate) fn raw_socket(family: Family) -> std::io::Result<Socket> {
    let domain = match family {
        Family::V4 => Domain::IPV4,
        Family::V6 => Domain::IPV6,
    };
    let sock = Socket::new(
        domain,
        Type::RAW,
        Some(socket2::Protocol::from(IPPROTO_SCTP)),
    )?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// A random 32-bit value (initiate tags, TSNs, source ports): process-random
/// SipHash keys over a counter. Never zero: a zero initiate tag is illegal.
pub(crate) fn random_u32() -> u32 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    match RandomState::new().hash_one(n) as u32 {
        0 => 1,
        x => x,
    }
}

/// The fields of an INIT or INIT-ACK packet the lab looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Handshake {
    pub src_port: u16,
    pub dst_port: u16,
    pub vtag: u32,
    /// [`CHUNK_INIT`] or [`CHUNK_INIT_ACK`].
    pub chunk: u8,
    pub initiate_tag: u32,
}

impl Handshake {
    pub fn is_init(&self) -> bool {
        self.chunk == CHUNK_INIT
    }

    pub fn is_init_ack(&self) -> bool {
        self.chunk == CHUNK_INIT_ACK
    }
}

/// Parses an SCTP packet (no IP header) whose first chunk is an INIT or an
/// INIT-ACK with a correct checksum; `None` for anything else.
pub(crate) fn parse(packet: &[u8]) -> Option<Handshake> {
    if packet.len() < COMMON_HEADER + INIT_FIXED {
        return None;
    }
    let u16_at = |i: usize| u16::from_be_bytes([packet[i], packet[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes(packet[i..i + 4].try_into().expect("4 bytes"));
    let chunk = packet[COMMON_HEADER];
    let chunk_len = usize::from(u16_at(COMMON_HEADER + 2));
    if !matches!(chunk, CHUNK_INIT | CHUNK_INIT_ACK)
        || chunk_len < INIT_FIXED
        || COMMON_HEADER + chunk_len > packet.len()
    {
        return None;
    }
    let stored = u32::from_le_bytes(packet[8..12].try_into().expect("4 bytes"));
    if stored != checksum(packet) {
        return None;
    }
    Some(Handshake {
        src_port: u16_at(0),
        dst_port: u16_at(2),
        vtag: u32_at(4),
        chunk,
        initiate_tag: u32_at(COMMON_HEADER + 4),
    })
}

/// An INIT from `src_port` to `dst_port` with `initiate_tag` (verification
/// tag 0, as RFC 9260 requires of an INIT).
pub(crate) fn init_packet(src_port: u16, dst_port: u16, initiate_tag: u32) -> Vec<u8> {
    let mut p = common_header(src_port, dst_port, 0);
    init_chunk(&mut p, CHUNK_INIT, initiate_tag, random_u32(), &[]);
    seal(&mut p);
    p
}

/// The INIT-ACK that answers `init`: verification tag = its initiate tag,
/// a fresh initiate tag of our own and a state cookie.
pub(crate) fn init_ack_packet(init: &Handshake) -> Vec<u8> {
    let own_tag = random_u32();
    // Any opaque bytes do for a cookie that nobody echoes back.
    let mut cookie = Vec::with_capacity(16);
    cookie.extend_from_slice(b"nftpol-lab");
    cookie.extend_from_slice(&init.initiate_tag.to_be_bytes());
    cookie.extend_from_slice(&own_tag.to_be_bytes()[..2]);
    let mut param = Vec::with_capacity(4 + cookie.len());
    param.extend_from_slice(&PARAM_STATE_COOKIE.to_be_bytes());
    param.extend_from_slice(&(4 + cookie.len() as u16).to_be_bytes());
    param.extend_from_slice(&cookie);
    let mut p = common_header(init.dst_port, init.src_port, init.initiate_tag);
    init_chunk(&mut p, CHUNK_INIT_ACK, own_tag, random_u32(), &param);
    seal(&mut p);
    p
}

fn common_header(src_port: u16, dst_port: u16, vtag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&vtag.to_be_bytes());
    p.extend_from_slice(&[0; 4]); // checksum, filled by `seal`
    p
}

/// Appends an INIT or INIT-ACK chunk with `params` (already padded).
fn init_chunk(p: &mut Vec<u8>, kind: u8, initiate_tag: u32, tsn: u32, params: &[u8]) {
    let len = (INIT_FIXED + params.len()) as u16;
    p.extend_from_slice(&[kind, 0]);
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&initiate_tag.to_be_bytes());
    p.extend_from_slice(&A_RWND.to_be_bytes());
    p.extend_from_slice(&STREAMS.to_be_bytes());
    p.extend_from_slice(&STREAMS.to_be_bytes());
    p.extend_from_slice(&tsn.to_be_bytes());
    p.extend_from_slice(params);
    // Chunks end on a 4-byte boundary (the padding is not in the length).
    p.resize(p.len().next_multiple_of(4), 0);
}

/// CRC32c of the packet with its checksum field taken as zero.
fn checksum(packet: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&packet[..8]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &packet[12..])
}

/// Writes the checksum. SCTP stores the CRC32c least significant byte
/// first (RFC 9260 appendix A; Linux: `cpu_to_le32`).
fn seal(packet: &mut [u8]) {
    let crc = checksum(packet);
    packet[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// The SCTP packet inside what a raw socket read: IPv4 raw sockets hand
/// over the IP header too, IPv6 ones do not.
pub(crate) fn strip_ip_header(buf: &[u8], family: Family) -> Option<&[u8]> {
    if family == Family::V6 {
        return Some(buf);
    }
    let ihl = usize::from(buf.first()? & 0x0f) * 4;
    (ihl >= 20 && buf.len() >= ihl).then(|| &buf[ihl..])
}

/// Reads every packet waiting on a raw SCTP socket; `f` gets each one's
/// source address and SCTP bytes. Returns when the socket would block.
pub(crate) fn drain(sock: &Socket, family: Family, mut f: impl FnMut(IpAddr, &[u8])) {
    let mut buf = [0u8; MAX_PACKET];
    loop {
        match socket::recvfrom::<SockaddrStorage>(sock.as_raw_fd(), &mut buf) {
            Ok((n, Some(from))) => {
                if let (Some(ip), Some(packet)) = (ip_of(&from), strip_ip_header(&buf[..n], family))
                {
                    f(ip, packet);
                }
            }
            Ok((_, None)) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

fn ip_of(addr: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(a) = addr.as_sockaddr_in() {
        return Some(IpAddr::V4(*std::net::SocketAddrV4::from(*a).ip()));
    }
    addr.as_sockaddr_in6()
        .map(|a| IpAddr::V6(*std::net::SocketAddrV6::from(*a).ip()))
}

/// Sends `packet` from a raw SCTP socket to `to` (the port is ignored:
/// the SCTP header carries it).
pub(crate) fn send_to(sock: &Socket, packet: &[u8], to: IpAddr) -> std::io::Result<()> {
    let dest = SockaddrStorage::from(SocketAddr::new(to, 0));
    socket::sendto(sock.as_raw_fd(), packet, &dest, MsgFlags::empty())
        .map(|_| ())
        .map_err(std::io::Error::from)
}

/// An SCTP "server" on a raw socket: answers each INIT to one of `ports`
/// with an INIT-ACK sent from the address the INIT was sent to, and
/// ignores every other packet (the socket sees all SCTP of its namespace,
/// INIT-ACKs meant for probes included).
#[derive(Debug)]
pub(crate) struct Responder {
    sock: Socket,
    family: Family,
    ports: BTreeSet<u16>,
}

impl Responder {
    /// Opens the raw socket; must run inside the namespace.
    pub fn open(ports: BTreeSet<u16>, family: Family) -> std::io::Result<Self> {
        let sock = raw_socket(family)?;
        match family {
            Family::V4 => socket::setsockopt(&sock, sockopt::Ipv4PacketInfo, &true),
            Family::V6 => socket::setsockopt(&sock, sockopt::Ipv6RecvPacketInfo, &true),
        }
        .map_err(std::io::Error::from)?;
        Ok(Self {
            sock,
            family,
            ports,
        })
    }

    pub fn socket(&self) -> &Socket {
        &self.sock
    }

    /// Answers every INIT waiting on the socket; returns when it would block.
    pub fn answer_pending(&self) {
        let mut buf = [0u8; MAX_PACKET];
        let mut cmsg = match self.family {
            Family::V4 => nix::cmsg_space!(libc::in_pktinfo),
            Family::V6 => nix::cmsg_space!(libc::in6_pktinfo),
        };
        loop {
            let (n, from, local) = {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = match socket::recvmsg::<SockaddrStorage>(
                    self.sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                ) {
                    Ok(m) => m,
                    Err(Errno::EINTR) => continue,
                    Err(_) => return,
                };
                let local = msg.cmsgs().ok().and_then(|mut c| {
                    c.find_map(|m| match m {
                        ControlMessageOwned::Ipv4PacketInfo(i) => {
                            Some(Local::V4(Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr))))
                        }
                        ControlMessageOwned::Ipv6PacketInfo(i) => Some(Local::V6(
                            Ipv6Addr::from(i.ipi6_addr.s6_addr),
                            i.ipi6_ifindex,
                        )),
                        _ => None,
                    })
                });
                (msg.bytes, msg.address, local)
            };
            let (Some(from), Some(local)) = (from.as_ref().and_then(ip_of), local) else {
                continue;
            };
            let Some(init) = strip_ip_header(&buf[..n], self.family).and_then(parse) else {
                continue;
            };
            if !init.is_init() || init.vtag != 0 || !self.ports.contains(&init.dst_port) {
                continue;
            }
            let reply = init_ack_packet(&init);
            if let Err(e) = self.reply(&reply, from, local) {
                eprintln!("lab SCTP responder: sending INIT-ACK to {from}: {e}");
            }
        }
    }

    /// Sends `packet` to `to` from the `local` address the INIT came to.
    fn reply(&self, packet: &[u8], to: IpAddr, local: Local) -> nix::Result<usize> {
        let iov = [std::io::IoSlice::new(packet)];
        let fd = self.sock.as_raw_fd();
        match (local, to) {
            (Local::V4(src), IpAddr::V4(to)) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(src).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                let dest = SockaddrIn::from(std::net::SocketAddrV4::new(to, 0));
                let cmsg = [ControlMessage::Ipv4PacketInfo(&info)];
                socket::sendmsg(fd, &iov, &cmsg, MsgFlags::empty(), Some(&dest))
            }
            (Local::V6(src, ifindex), IpAddr::V6(to)) => {
                // The interface matters only for link-local peers.
                let link_local = (to.segments()[0] & 0xffc0) == 0xfe80;
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: src.octets(),
                    },
                    ipi6_ifindex: if link_local { ifindex } else { 0 },
                };
                let dest = SockaddrIn6::from(std::net::SocketAddrV6::new(to, 0, 0, 0));
                let cmsg = [ControlMessage::Ipv6PacketInfo(&info)];
                socket::sendmsg(fd, &iov, &cmsg, MsgFlags::empty(), Some(&dest))
            }
            _ => Err(Errno::EAFNOSUPPORT),
        }
    }
}

/// The address (and, for IPv6, interface) an INIT arrived on.
#[derive(Clone, Copy, Debug)]
enum Local {
    V4(Ipv4Addr),
    V6(Ipv6Addr, u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_iscsi_test_vector() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
    }

    #[test]
    fn an_init_parses_back_with_its_fields() {
        let p = init_packet(40000, 80, 0xdead_beef);
        assert_eq!(p.len() % 4, 0);
        let h = parse(&p).expect("a valid INIT");
        assert_eq!(
            h,
            Handshake {
                src_port: 40000,
                dst_port: 80,
                vtag: 0,
                chunk: CHUNK_INIT,
                initiate_tag: 0xdead_beef,
            }
        );
    }

    #[test]
    fn an_init_ack_answers_the_init_s_tag_and_ports() {
        let init = parse(&init_packet(40000, 81, 7)).unwrap();
        let ack = init_ack_packet(&init);
        assert_eq!(ack.len() % 4, 0);
        let h = parse(&ack).expect("a valid INIT-ACK");
        assert!(h.is_init_ack());
        assert_eq!((h.src_port, h.dst_port, h.vtag), (81, 40000, 7));
        assert_ne!(h.initiate_tag, 0);
        // The state cookie parameter follows the fixed part.
        let param = COMMON_HEADER + INIT_FIXED;
        assert_eq!(
            u16::from_be_bytes([ack[param], ack[param + 1]]),
            PARAM_STATE_COOKIE
        );
    }

    #[test]
    fn a_corrupted_packet_is_ignored() {
        let mut p = init_packet(40000, 80, 1);
        p[20] ^= 1;
        assert_eq!(parse(&p), None);
    }

    #[test]
    fn the_ipv4_header_is_skipped_by_its_length() {
        let mut buf = vec![0x46u8; 24];
        buf.extend_from_slice(&[1, 2, 3]);
        assert_eq!(strip_ip_header(&buf, Family::V4), Some(&[1u8, 2, 3][..]));
        assert_eq!(strip_ip_header(&[0x45, 0, 0], Family::V4), None);
    }
}
