//! A minimal HTTP/1.0 GET from inside a namespace: enough to read a
//! controller's `/status`, `/readyz` or `/metrics` the way a scraper on the
//! nodes' network would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::netns::run_in;
use super::{LabError, Netns};

/// What a GET returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// `GET path` on `addr`, the connection opened from inside `from`; the
/// whole exchange is bounded by `timeout`.
pub fn http_get(
    from: &Netns,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, LabError> {
    http_get_in(from.name(), addr, path, timeout)
}

/// [`http_get`] from the namespace named `netns`.
pub(crate) fn http_get_in(
    netns: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, LabError> {
    let what = |e| LabError::io(format!("GET http://{addr}{path}"), e);
    // Only the connect needs the namespace: the socket keeps it.
    let mut conn = run_in(netns, || TcpStream::connect_timeout(&addr, timeout))?.map_err(what)?;
    let deadline = Instant::now() + timeout;
    conn.set_write_timeout(Some(timeout)).map_err(what)?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(what)?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(what(std::io::ErrorKind::TimedOut.into()));
        }
        conn.set_read_timeout(Some(left)).map_err(what)?;
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(what(e)),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| {
            what(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP response: {head:?}"),
            ))
        })?;
    Ok(HttpResponse {
        status,
        body: body.to_string(),
    })
}
