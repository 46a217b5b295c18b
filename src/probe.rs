//! The health probe: one plain HTTP/1.1 GET to the application's local health endpoint. Written
//! by hand (a dozen lines over `TcpStream`) rather than pulling an HTTP client in: the endpoint
//! is the app's own port on this host, and only the status line matters.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// GETs `url` (`http://host[:port]/path`) and returns the response's status code and the first
/// 64 KiB of its body (headers stripped).
pub fn get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
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
    // `Connection: close`: the answer ends when the server closes; read at most 64 KiB of it.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while answer.len() < 64 << 10 {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            // A read timeout after the status line still leaves a usable answer.
            Err(_) if answer.windows(2).any(|w| w == b"\r\n") => break,
            Err(e) => return Err(format!("reading from {authority}: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let line = text.lines().next().unwrap_or_default();
    // `HTTP/1.1 200 OK`
    let status = line
        .split_whitespace()
        .nth(1)
        .filter(|_| line.starts_with("HTTP/"))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{authority} did not answer HTTP: `{line}`"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
