//! The health probe: one plain HTTP/1.1 GET to the application's local health endpoint. Written
//! by hand (a dozen lines over `TcpStream`) rather than pulling an HTTP client in: the endpoint
//! is the app's own port on this host, and only the status line matters.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// GETs `url` (`http://host[:port]/path`) and returns the response's status code.
pub fn status(url: &str, timeout: Duration) -> Result<u16, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!(
            "health URL `{url}` must start with http:// (point it at the application's local port)"
        )
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr_text = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = addr_text
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut conn = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connecting to {authority}: {e}"))?;
    conn.set_read_timeout(Some(timeout))
        .and_then(|_| conn.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    write!(conn, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: dbward-health\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("sending to {authority}: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = conn
            .read(&mut buf)
            .map_err(|e| format!("reading from {authority}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 8192 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    // `HTTP/1.1 200 OK`
    line.split_whitespace()
        .nth(1)
        .filter(|_| line.starts_with("HTTP/"))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{authority} did not answer HTTP: `{line}`"))
}
