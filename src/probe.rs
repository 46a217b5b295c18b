//! The health probe: one plain HTTP/1.1 GET to the application's local health endpoint. Written
//! by hand (a dozen lines over `TcpStream`) rather than pulling an HTTP client in: the endpoint
//! is the app's own port on this host, and only the status line matters.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Why a GET got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL is not one this probe can ask: a setting to fix, not an unhealthy app.
    #[error("health URL `{0}` must start with http:// (point it at the application's local port)")]
    NotHttp(String),
    /// The endpoint could not be reached or did not answer HTTP (the app may still start).
    #[error("{0}")]
    NoAnswer(String),
}

/// GETs `url` (`http://host[:port]/path`) and returns the response's status code and the first
/// 64 KiB of its body (headers stripped).
pub fn get(url: &str, timeout: Duration) -> Result<(u16, String), Error> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Error::NotHttp(url.to_string()))?;
    let no_answer = Error::NoAnswer;
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
        .map_err(|e| no_answer(format!("{authority}: {e}")))?
        .next()
        .ok_or_else(|| no_answer(format!("{authority}: no address")))?;
    let mut conn = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| no_answer(format!("connecting to {authority}: {e}")))?;
    conn.set_read_timeout(Some(timeout))
        .and_then(|_| conn.set_write_timeout(Some(timeout)))
        .map_err(|e| no_answer(format!("{authority}: {e}")))?;
    write!(conn, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: dbward-health\r\nConnection: close\r\n\r\n")
        .map_err(|e| no_answer(format!("sending to {authority}: {e}")))?;
    // `Connection: close`: the answer ends when the server closes; read at most 64 KiB of it.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while answer.len() < 64 << 10 {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            // A read timeout after the status line still leaves a usable answer.
            Err(_) if answer.windows(2).any(|w| w == b"\r\n") => break,
            Err(e) => return Err(no_answer(format!("reading from {authority}: {e}"))),
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
        .ok_or_else(|| no_answer(format!("{authority} did not answer HTTP: `{line}`")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Whether `code` is a healthy answer: one of `expect`, or any 2xx when it is empty.
pub fn accepted(code: u16, expect: &[u16]) -> bool {
    if expect.is_empty() {
        (200..300).contains(&code)
    } else {
        expect.contains(&code)
    }
}

/// [`get`] from async code, within `timeout` in all (a name lookup, or an answer that drips in
/// a byte per read timeout, cannot hold the caller longer): past it, no answer.
pub async fn ask(url: &str, timeout: std::time::Duration) -> Result<(u16, String), Error> {
    let u = url.to_string();
    let asked = tokio::task::spawn_blocking(move || get(&u, timeout));
    match tokio::time::timeout(timeout + std::time::Duration::from_secs(1), asked).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => Err(Error::NoAnswer(e.to_string())),
        Err(_) => Err(Error::NoAnswer(format!(
            "{url} did not answer within {}",
            migrator::error::humanize(timeout)
        ))),
    }
}
