//! TCP, UDP and SCTP servers inside a namespace, served by one thread of
//! the test process. The sockets are opened by a thread that entered the
//! namespace; serving them needs no namespace at all. SCTP is a real
//! listening socket where the kernel has SCTP, else a raw-socket responder
//! that answers INITs (see [`super::sctp`]).

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use socket2::{Domain, Socket, Type};

use super::LabError;
use super::sctp::{self, Responder};
use nftpol::compiler::Protocol;
use nftpol::net::Family;

/// A transport port to serve or probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    /// TCP, UDP or SCTP.
    pub proto: Protocol,
    /// The port number.
    pub port: u16,
}

impl Port {
    /// A TCP port.
    pub const fn tcp(port: u16) -> Self {
        Self {
            proto: Protocol::Tcp,
            port,
        }
    }

    /// A UDP port.
    pub const fn udp(port: u16) -> Self {
        Self {
            proto: Protocol::Udp,
            port,
        }
    }

    /// An SCTP port.
    pub const fn sctp(port: u16) -> Self {
        Self {
            proto: Protocol::Sctp,
            port,
        }
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.proto)
    }
}

/// Listening sockets, opened but not yet served.
#[derive(Debug)]
pub(crate) enum Listening {
    /// TCP, or SCTP one-to-one style (accepted and served the same way).
    Tcp(TcpListener),
    Udp(UdpSocket),
    /// SCTP without kernel support: INITs answered from a raw socket.
    SctpRaw(Responder),
}

/// A running server thread; dropping it stops the thread and closes every
/// socket it holds.
#[derive(Debug)]
pub(crate) struct Servers {
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl Servers {
    /// Opens the sockets; must run inside the namespace.
    pub fn open(ports: &[Port], families: &[Family]) -> Result<Vec<Listening>, LabError> {
        let mut out = Vec::new();
        let raw_sctp = !sctp::kernel_has_sctp();
        if raw_sctp {
            let sctp_ports: BTreeSet<u16> = ports
                .iter()
                .filter(|p| p.proto == Protocol::Sctp)
                .map(|p| p.port)
                .collect();
            if !sctp_ports.is_empty() {
                for family in families {
                    let r = Responder::open(sctp_ports.clone(), *family).map_err(|e| {
                        LabError::io(format!("opening a raw SCTP socket for {sctp_ports:?}"), e)
                    })?;
                    out.push(Listening::SctpRaw(r));
                }
            }
        }
        for port in ports
            .iter()
            .filter(|p| !(raw_sctp && p.proto == Protocol::Sctp))
        {
            for family in families {
                let addr = match family {
                    Family::V4 => SocketAddr::from((Ipv4Addr::UNSPECIFIED, port.port)),
                    Family::V6 => SocketAddr::from((Ipv6Addr::UNSPECIFIED, port.port)),
                };
                let what = |e| LabError::io(format!("listening on {addr} ({})", port.proto), e);
                out.push(listen(addr, port.proto).map_err(what)?);
            }
        }
        Ok(out)
    }

    /// Serves `sockets` on a new thread.
    pub fn start(label: &str, sockets: Vec<Listening>) -> Result<Self, LabError> {
        let (wake, stop) = UnixStream::pair().map_err(|e| LabError::io("socketpair", e))?;
        let thread = std::thread::Builder::new()
            .name(format!("serve {label}"))
            .spawn(move || serve(stop, sockets))
            .map_err(|e| LabError::io("spawning a server thread", e))?;
        Ok(Self {
            wake,
            thread: Some(thread),
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        // A byte or a closed peer wakes the thread; either way it returns.
        let _ = self.wake.write_all(b"x");
        let _ = self.wake.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn listen(addr: SocketAddr, proto: Protocol) -> std::io::Result<Listening> {
    let domain = Domain::for_address(addr);
    let sock = match proto {
        Protocol::Tcp => Socket::new(domain, Type::STREAM, Some(socket2::Protocol::TCP))?,
        Protocol::Udp => Socket::new(domain, Type::DGRAM, Some(socket2::Protocol::UDP))?,
        Protocol::Sctp => Socket::new(
            domain,
            Type::STREAM,
            Some(socket2::Protocol::from(sctp::IPPROTO_SCTP)),
        )?,
    };
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(match proto {
        Protocol::Tcp | Protocol::Sctp => {
            sock.listen(128)?;
            Listening::Tcp(sock.into())
        }
        Protocol::Udp => Listening::Udp(sock.into()),
    })
}

/// The server loop: accept and greet, echo on connections, echo datagrams,
/// until `stop` becomes readable.
fn serve(stop: UnixStream, sockets: Vec<Listening>) {
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let ready: Vec<bool> = {
            let mut fds = vec![PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
            fds.extend(sockets.iter().map(|s| {
                let fd = match s {
                    Listening::Tcp(l) => l.as_fd(),
                    Listening::Udp(u) => u.as_fd(),
                    Listening::SctpRaw(r) => r.socket().as_fd(),
                };
                PollFd::new(fd, PollFlags::POLLIN)
            }));
            fds.extend(
                conns
                    .iter()
                    .map(|c| PollFd::new(c.as_fd(), PollFlags::POLLIN)),
            );
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("lab server: poll failed: {e}");
                    return;
                }
            }
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        if ready[0] {
            return;
        }
        // Polled connections are conns[..polled]; new ones join after them.
        let polled = conns.len();
        for (sock, _) in sockets.iter().zip(&ready[1..]).filter(|(_, r)| **r) {
            match sock {
                Listening::Tcp(l) => {
                    while let Ok((mut c, _)) = l.accept() {
                        let _ = c.set_nonblocking(true);
                        let _ = c.set_nodelay(true);
                        if c.write(b"+").is_ok() {
                            conns.push(c);
                        }
                    }
                }
                Listening::Udp(u) => {
                    while let Ok((n, from)) = u.recv_from(&mut buf) {
                        let _ = u.send_to(&buf[..n], from);
                    }
                }
                Listening::SctpRaw(r) => r.answer_pending(),
            }
        }
        let first_conn = 1 + sockets.len();
        let mut closed = Vec::new();
        for (i, c) in conns[..polled].iter_mut().enumerate() {
            if !ready[first_conn + i] {
                continue;
            }
            match c.read(&mut buf) {
                Ok(0) => closed.push(i),
                Ok(n) => {
                    // Small test messages; a full send buffer just loses the echo.
                    let _ = c.write(&buf[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            conns.swap_remove(i);
        }
    }
}
