//! Connection probes: TCP = the handshake completes, UDP = a datagram is
//! answered, SCTP = the association's INIT is answered (a real `connect`
//! where the kernel has SCTP, else a raw INIT that must get a matching
//! INIT-ACK, see [`super::sctp`]). A batch enters each source namespace
//! once (one thread per source opens its sockets there and starts the
//! attempts), then one poll loop waits for all of them: a batch takes
//! about one timeout however many probes are dropped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use socket2::{Domain, Socket, Type};

use super::sctp;
use super::{LabError, Netns};
use nftpol::compiler::Protocol;
use nftpol::net::Family;

pub use super::sctp::kernel_has_sctp;

/// Long enough to give no wrong answer with both CPUs saturated
/// (see shared/netns-facts.md: 0.1 s was not).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(300);

const PAYLOAD: &[u8] = b"nftpol-probe";

/// One connection attempt from a namespace to an address.
#[derive(Clone, Copy, Debug)]
pub struct Probe<'a> {
    /// The namespace the attempt starts in.
    pub from: &'a Netns,
    /// The address and port probed.
    pub to: SocketAddr,
    /// TCP, UDP or SCTP.
    pub proto: Protocol,
}

/// What identifies the INIT-ACK that answers a raw SCTP probe: it comes
/// from the probed address and port, to our source port, with our
/// initiate tag as its verification tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SctpKey {
    peer: SocketAddr,
    local_port: u16,
    tag: u32,
}

/// One attempt in flight.
enum Attempt {
    /// Decided before the wait (e.g. refused at once).
    Done(bool),
    /// TCP, or SCTP with kernel sockets: decided when writable.
    Stream(Socket),
    Udp(UdpSocket),
    /// A raw SCTP INIT was sent; the source's raw socket gets the answer.
    SctpRaw(SctpKey),
}

/// The raw SCTP sockets of one source namespace (one per family, opened
/// on first use), and the source ports its probes use in this batch.
#[derive(Default)]
struct RawSource {
    v4: Option<Socket>,
    v6: Option<Socket>,
    ports: HashSet<u16>,
}

impl RawSource {
    fn socket(&mut self, family: Family) -> std::io::Result<&Socket> {
        let slot = match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        };
        if slot.is_none() {
            *slot = Some(sctp::raw_socket(family)?);
        }
        Ok(slot.as_ref().expect("just opened"))
    }

    /// A random ephemeral port no other probe of this batch uses here.
    fn fresh_port(&mut self) -> u16 {
        loop {
            let port = 32768 + (sctp::random_u32() % 28232) as u16;
            if self.ports.insert(port) {
                return port;
            }
        }
    }

    fn into_sockets(self) -> impl Iterator<Item = (Socket, Family)> {
        self.v4
            .map(|s| (s, Family::V4))
            .into_iter()
            .chain(self.v6.map(|s| (s, Family::V6)))
    }
}

/// Whether one connection from `from` to `to` succeeds within `timeout`.
pub fn probe(
    from: &Netns,
    to: SocketAddr,
    proto: Protocol,
    timeout: Duration,
) -> Result<bool, LabError> {
    Ok(probe_all(&[Probe { from, to, proto }], timeout)?[0])
}

/// Runs every probe at once; the answers come in the order of `probes`.
/// TCP, UDP and SCTP attempts of one batch wait in the same poll loop.
/// Each probe holds one socket until the batch ends (raw SCTP probes
/// share one per source namespace): keep a batch under the open-file
/// limit (about a thousand).
pub fn probe_all(probes: &[Probe<'_>], timeout: Duration) -> Result<Vec<bool>, LabError> {
    // Group by source namespace, keeping each probe's index.
    let mut by_source: BTreeMap<&str, (&Netns, Vec<usize>)> = BTreeMap::new();
    for (i, p) in probes.iter().enumerate() {
        by_source
            .entry(p.from.name())
            .or_insert_with(|| (p.from, Vec::new()))
            .1
            .push(i);
    }
    let start = Instant::now();
    let mut attempts: Vec<Option<Attempt>> = (0..probes.len()).map(|_| None).collect();
    let mut raw_sockets: Vec<(Socket, Family)> = Vec::new();
    std::thread::scope(|s| -> Result<(), LabError> {
        let handles: Vec<_> = by_source
            .values()
            .map(|(ns, idx)| {
                s.spawn(move || {
                    // A thread of its own: entering the namespace is for good.
                    ns.enter()?;
                    let mut raw = RawSource::default();
                    let started = idx
                        .iter()
                        .map(|&i| (i, start_attempt(&probes[i], &mut raw)))
                        .collect::<Vec<_>>();
                    Ok::<_, LabError>((started, raw))
                })
            })
            .collect();
        for h in handles {
            let (started, raw) = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
            for (i, a) in started {
                attempts[i] = Some(a?);
            }
            raw_sockets.extend(raw.into_sockets());
        }
        Ok(())
    })?;
    let mut attempts: Vec<Attempt> = attempts
        .into_iter()
        .map(|a| a.expect("every probe was started"))
        .collect();
    wait_all(&mut attempts, &raw_sockets, start + timeout);
    Ok(attempts
        .into_iter()
        .map(|a| matches!(a, Attempt::Done(true)))
        .collect())
}

/// Opens the socket and starts the attempt; runs inside the source namespace.
fn start_attempt(p: &Probe<'_>, raw: &mut RawSource) -> Result<Attempt, LabError> {
    let what = |e| LabError::io(format!("probing {} {}", p.proto, p.to), e);
    match p.proto {
        Protocol::Tcp => connect_stream(p.to, socket2::Protocol::TCP).map_err(what),
        Protocol::Sctp if sctp::kernel_has_sctp() => {
            connect_stream(p.to, socket2::Protocol::from(sctp::IPPROTO_SCTP)).map_err(what)
        }
        Protocol::Sctp => {
            let key = SctpKey {
                peer: p.to,
                local_port: raw.fresh_port(),
                tag: sctp::random_u32(),
            };
            let sock = raw.socket(Family::of(p.to.ip())).map_err(what)?;
            let init = sctp::init_packet(key.local_port, p.to.port(), key.tag);
            Ok(match sctp::send_to(sock, &init, p.to.ip()) {
                Ok(()) => Attempt::SctpRaw(key),
                // E.g. no route: decided at once, like a refused connect.
                Err(_) => Attempt::Done(false),
            })
        }
        Protocol::Udp => {
            let local: SocketAddr = if p.to.is_ipv6() {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            };
            let sock = UdpSocket::bind(local).map_err(what)?;
            sock.set_nonblocking(true).map_err(what)?;
            if sock.connect(p.to).is_err() || sock.send(PAYLOAD).is_err() {
                return Ok(Attempt::Done(false));
            }
            Ok(Attempt::Udp(sock))
        }
    }
}

/// A non-blocking `connect` on a stream socket (TCP, or SCTP one-to-one).
fn connect_stream(to: SocketAddr, proto: socket2::Protocol) -> std::io::Result<Attempt> {
    let sock = Socket::new(Domain::for_address(to), Type::STREAM, Some(proto))?;
    sock.set_nonblocking(true)?;
    // Close with RST (SCTP: ABORT): no TIME_WAIT piling up over many probes.
    sock.set_linger(Some(Duration::ZERO))?;
    match sock.connect(&to.into()) {
        Ok(()) => Ok(Attempt::Done(true)),
        Err(e) if e.raw_os_error() == Some(Errno::EINPROGRESS as i32) => Ok(Attempt::Stream(sock)),
        Err(_) => Ok(Attempt::Done(false)),
    }
}

/// Waits until every attempt is decided or `deadline` passes; undecided
/// attempts count as failed. `raw` are the sources' raw SCTP sockets
/// (with their family: true for IPv6), where INIT-ACKs arrive.
fn wait_all(attempts: &mut [Attempt], raw: &[(Socket, Family)], deadline: Instant) {
    let mut buf = [0u8; 64];
    let mut awaiting: HashMap<SctpKey, usize> = attempts
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match a {
            Attempt::SctpRaw(key) => Some((*key, i)),
            _ => None,
        })
        .collect();
    loop {
        let pending: Vec<usize> = (0..attempts.len())
            .filter(|&i| matches!(attempts[i], Attempt::Stream(_) | Attempt::Udp(_)))
            .collect();
        let now = Instant::now();
        if (pending.is_empty() && awaiting.is_empty()) || now >= deadline {
            break;
        }
        // Raw sockets are polled only while an SCTP answer is awaited.
        let raw_polled = if awaiting.is_empty() { &[][..] } else { raw };
        let (ready, raw_ready): (Vec<usize>, Vec<bool>) = {
            let mut fds: Vec<PollFd<'_>> = pending
                .iter()
                .map(|&i| match &attempts[i] {
                    Attempt::Stream(s) => PollFd::new(s.as_fd(), PollFlags::POLLOUT),
                    Attempt::Udp(s) => PollFd::new(s.as_fd(), PollFlags::POLLIN),
                    Attempt::Done(_) | Attempt::SctpRaw(_) => unreachable!("filtered above"),
                })
                .collect();
            fds.extend(
                raw_polled
                    .iter()
                    .map(|(s, _)| PollFd::new(s.as_fd(), PollFlags::POLLIN)),
            );
            // Round up so that the loop never spins on a sub-millisecond rest.
            let left = (deadline - now).as_millis() as u64 + 1;
            let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, wait) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => panic!("poll failed: {e}"),
            }
            let fired = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            let (mine, raws) = fds.split_at(pending.len());
            (
                mine.iter()
                    .zip(&pending)
                    .filter(|(f, _)| fired(f))
                    .map(|(_, i)| *i)
                    .collect(),
                raws.iter().map(fired).collect(),
            )
        };
        for i in ready {
            let decided = match &attempts[i] {
                // Writable: the handshake ended; SO_ERROR says how.
                Attempt::Stream(s) => Some(matches!(s.take_error(), Ok(None))),
                Attempt::Udp(s) => match s.recv(&mut buf) {
                    Ok(n) => Some(n > 0),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                    // ECONNREFUSED: an ICMP port unreachable came back.
                    Err(_) => Some(false),
                },
                Attempt::Done(_) | Attempt::SctpRaw(_) => {
                    unreachable!("only pending attempts are polled")
                }
            };
            if let Some(ok) = decided {
                attempts[i] = Attempt::Done(ok);
            }
        }
        for ((sock, family), _) in raw_polled.iter().zip(raw_ready).filter(|(_, r)| *r) {
            // Every SCTP packet of the namespace lands here; only INIT-ACKs
            // that answer one of our INITs count.
            sctp::drain(sock, *family, |from, packet| {
                let Some(h) = sctp::parse(packet).filter(|h| h.is_init_ack()) else {
                    return;
                };
                let key = SctpKey {
                    peer: SocketAddr::new(from, h.src_port),
                    local_port: h.dst_port,
                    tag: h.vtag,
                };
                if let Some(i) = awaiting.remove(&key) {
                    attempts[i] = Attempt::Done(true);
                }
            });
        }
    }
}
