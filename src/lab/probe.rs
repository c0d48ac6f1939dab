//! Connection probes: TCP = the handshake completes, UDP = a datagram is
//! answered. A batch enters each source namespace once (one thread per
//! source opens its sockets there and starts the attempts), then one poll
//! loop waits for all of them: a batch takes about one timeout however many
//! probes are dropped.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use socket2::{Domain, Socket, Type};

use super::{LabError, Netns};
use crate::compiler::Protocol;

/// Long enough to give no wrong answer with both CPUs saturated
/// (see shared/netns-facts.md: 0.1 s was not).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(300);

const PAYLOAD: &[u8] = b"nftpol-probe";

/// One connection attempt from a namespace to an address.
#[derive(Clone, Copy, Debug)]
pub struct Probe<'a> {
    pub from: &'a Netns,
    pub to: SocketAddr,
    pub proto: Protocol,
}

/// One attempt in flight.
enum Attempt {
    /// Decided before the wait (e.g. refused at once).
    Done(bool),
    Tcp(Socket),
    Udp(UdpSocket),
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
/// Each probe holds one socket until the batch ends: keep a batch under
/// the open-file limit (about a thousand).
pub fn probe_all(probes: &[Probe<'_>], timeout: Duration) -> Result<Vec<bool>, LabError> {
    if let Some(p) = probes.iter().find(|p| p.proto == Protocol::Sctp) {
        return Err(LabError::Unsupported(format!(
            "SCTP probes are not implemented in the lab yet (probe to {})",
            p.to
        )));
    }
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
    std::thread::scope(|s| -> Result<(), LabError> {
        let handles: Vec<_> = by_source
            .values()
            .map(|(ns, idx)| {
                s.spawn(move || {
                    // A thread of its own: entering the namespace is for good.
                    ns.enter()?;
                    Ok::<_, LabError>(
                        idx.iter()
                            .map(|&i| (i, start_attempt(&probes[i])))
                            .collect::<Vec<_>>(),
                    )
                })
            })
            .collect();
        for h in handles {
            let started = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
            for (i, a) in started {
                attempts[i] = Some(a?);
            }
        }
        Ok(())
    })?;
    let mut attempts: Vec<Attempt> = attempts
        .into_iter()
        .map(|a| a.expect("every probe was started"))
        .collect();
    wait_all(&mut attempts, start + timeout);
    Ok(attempts
        .into_iter()
        .map(|a| matches!(a, Attempt::Done(true)))
        .collect())
}

/// Opens the socket and starts the attempt; runs inside the source namespace.
fn start_attempt(p: &Probe<'_>) -> Result<Attempt, LabError> {
    let what = |e| LabError::io(format!("probing {} {}", p.proto, p.to), e);
    match p.proto {
        Protocol::Tcp => {
            let sock = Socket::new(
                Domain::for_address(p.to),
                Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
            .map_err(what)?;
            sock.set_nonblocking(true).map_err(what)?;
            // Close with RST: no TIME_WAIT piling up over many probes.
            sock.set_linger(Some(Duration::ZERO)).map_err(what)?;
            match sock.connect(&p.to.into()) {
                Ok(()) => Ok(Attempt::Done(true)),
                Err(e) if e.raw_os_error() == Some(Errno::EINPROGRESS as i32) => {
                    Ok(Attempt::Tcp(sock))
                }
                Err(_) => Ok(Attempt::Done(false)),
            }
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
        Protocol::Sctp => unreachable!("rejected above"),
    }
}

/// Waits until every attempt is decided or `deadline` passes; undecided
/// attempts count as failed.
fn wait_all(attempts: &mut [Attempt], deadline: Instant) {
    let mut buf = [0u8; 64];
    loop {
        let pending: Vec<usize> = (0..attempts.len())
            .filter(|&i| !matches!(attempts[i], Attempt::Done(_)))
            .collect();
        let now = Instant::now();
        if pending.is_empty() || now >= deadline {
            break;
        }
        let ready: Vec<usize> = {
            let mut fds: Vec<PollFd<'_>> = pending
                .iter()
                .map(|&i| match &attempts[i] {
                    Attempt::Tcp(s) => PollFd::new(s.as_fd(), PollFlags::POLLOUT),
                    Attempt::Udp(s) => PollFd::new(s.as_fd(), PollFlags::POLLIN),
                    Attempt::Done(_) => unreachable!("filtered above"),
                })
                .collect();
            // Round up so that the loop never spins on a sub-millisecond rest.
            let left = (deadline - now).as_millis() as u64 + 1;
            let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, wait) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => panic!("poll failed: {e}"),
            }
            fds.iter()
                .zip(&pending)
                .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, i)| *i)
                .collect()
        };
        for i in ready {
            let decided = match &attempts[i] {
                // Writable: the handshake ended; SO_ERROR says how.
                Attempt::Tcp(s) => Some(matches!(s.take_error(), Ok(None))),
                Attempt::Udp(s) => match s.recv(&mut buf) {
                    Ok(n) => Some(n > 0),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                    // ECONNREFUSED: an ICMP port unreachable came back.
                    Err(_) => Some(false),
                },
                Attempt::Done(_) => unreachable!("only pending attempts are polled"),
            };
            if let Some(ok) = decided {
                attempts[i] = Attempt::Done(ok);
            }
        }
    }
}
