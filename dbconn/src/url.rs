//! Database URLs (`sqlite:PATH`, `postgres://...`) and their redaction: a password never
//! reaches a log line or an error message.

use std::path::PathBuf;

use crate::error::Error;

/// How the PostgreSQL server's certificate is checked, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// TLS if the server offers it, else plain (libpq's default; also `allow`).
    Prefer,
    /// TLS, certificate not checked.
    Require,
    /// TLS, certificate chain checked against the roots, host name not.
    VerifyCa,
    /// TLS, chain and host name checked.
    VerifyFull,
}

#[derive(Debug, Clone)]
pub struct PgUrl {
    pub config: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    /// `sslrootcert=PATH`: roots for verify-ca/verify-full; else the system's roots.
    pub root_cert: Option<PathBuf>,
    /// The URL as given, password redacted.
    pub display: String,
}

#[derive(Debug, Clone)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(Box<PgUrl>),
}

impl PgUrl {
    /// The database this URL connects to: its name, else the user's name (libpq's default).
    pub fn dbname(&self) -> &str {
        self.config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("postgres")
    }

    /// Where the database is, as `host:port/db` (several hosts comma-separated, a socket
    /// directory as its path, an IPv6 address in brackets): what names it apart from the
    /// same-named database on another server.
    pub fn location(&self) -> String {
        use tokio_postgres::config::Host;
        let ports = self.config.get_ports();
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let host = match h {
                    Host::Tcp(name) if name.contains(':') => format!("[{name}]"),
                    Host::Tcp(name) => name.clone(),
                    Host::Unix(path) => path.display().to_string(),
                };
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                format!("{host}:{port}")
            })
            .collect();
        format!("{}/{}", hosts.join(","), self.dbname())
    }
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<DatabaseUrl, Error> {
        // A URL that does not parse is never echoed: it may hold a password anywhere.
        let bad = |problem: String| Error::Url {
            url: shape_of(url),
            problem,
        };
        if let Some(rest) = url.strip_prefix("sqlite:") {
            // `sqlite:///abs/app.db` and `sqlite://./rel.db` as well as `sqlite:app.db`.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(bad("no file path after `sqlite:`".into()));
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        // A bare file path is shown, with the URL it most likely means: only one that looks
        // like a path (a `/`, or a SQLite file's suffix), never a bare word, which may be a
        // password put in the wrong variable.
        let path_like = url.contains('/')
            || [".db", ".sqlite", ".sqlite3"]
                .iter()
                .any(|ext| url.ends_with(ext));
        if path_like && !url.contains([':', '=', '@']) && !url.contains(char::is_whitespace) {
            return Err(Error::Url {
                url: url.to_string(),
                problem: format!(
                    "a file path is not a database URL; for a SQLite file write `sqlite:{url}`"
                ),
            });
        }
        let Some(rest) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
        else {
            return Err(bad(
                "expected `sqlite:PATH` or `postgres://user@host:port/db` (a libpq keyword string such as `host=... dbname=...` is not accepted: write it as a URL)".into(),
            ));
        };
        // Generated passwords hold `/`, `?` and `@`: the user info ends at the first `@` that
        // is followed by a plausible host list (up to the next `/` or `?`), and its characters
        // are encoded here rather than read as the path or the query.
        let (userinfo, hostpart) = match split_userinfo(rest) {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (base, query) = hostpart.split_once('?').unwrap_or((hostpart, ""));
        let mut ssl_mode = SslMode::Prefer;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslmode" => {
                    ssl_mode = match v {
                        "disable" => SslMode::Disable,
                        "allow" | "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => return Err(bad(format!("sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"))),
                    }
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(v))),
                _ => kept.push(pair),
            }
        }
        let mut rebuilt = String::from("postgres://");
        if let Some(info) = userinfo {
            rebuilt.push_str(&encode_userinfo(info));
            rebuilt.push('@');
        }
        rebuilt.push_str(base);
        if !kept.is_empty() {
            rebuilt.push('?');
            rebuilt.push_str(&kept.join("&"));
        }
        let mut config: tokio_postgres::Config =
            rebuilt.parse().map_err(|e| bad(format!("{e}")))?;
        if config.get_hosts().is_empty() {
            return Err(bad(
                "no host: name the server (`postgres://user@host/db`), or a Unix socket directory with `?host=/var/run/postgresql`".into(),
            ));
        }
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        if config.get_application_name().is_none() {
            config.application_name("dbward");
        }
        let display = display_of(&config, ssl_mode);
        Ok(DatabaseUrl::Postgres(Box::new(PgUrl {
            config,
            ssl_mode,
            root_cert,
            display,
        })))
    }

    /// The URL for messages, password redacted.
    pub fn display(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(p) => format!("sqlite:{}", p.display()),
            DatabaseUrl::Postgres(pg) => pg.display.clone(),
        }
    }

    /// The database's name, as it appears in the store's layout.
    pub fn name(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(p) => p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "sqlite".into()),
            DatabaseUrl::Postgres(pg) => pg.dbname().to_string(),
        }
    }
}

/// libpq's connection parameters: `?<one of these>=` starts the query, whatever comes before.
const PARAMS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslnegotiation",
    "application_name",
    "connect_timeout",
    "options",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "target_session_attrs",
    "keepalives",
    "keepalives_idle",
    "channel_binding",
    "load_balance_hosts",
    "gssencmode",
    "client_encoding",
    "fallback_application_name",
];

/// Where the user info ends in `rest` (after `postgres://`): the last `@` before the query,
/// which starts at the first `?` followed by a libpq parameter and `=`. So a password may hold
/// `/`, `?` and `@`, and a query value may hold `@` (`application_name=me@laptop`).
fn split_userinfo(rest: &str) -> Option<usize> {
    let query = rest.match_indices('?').map(|(i, _)| i).find(|&i| {
        PARAMS.iter().any(|p| {
            rest[i + 1..]
                .strip_prefix(p)
                .is_some_and(|r| r.starts_with('='))
        })
    });
    rest[..query.unwrap_or(rest.len())].rfind('@')
}

/// What an unparsed URL looks like, for an error: its scheme only, since a password may sit
/// anywhere in text that did not parse.
fn shape_of(url: &str) -> String {
    match url.split_once(':') {
        Some((scheme, _)) if scheme.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            format!("{scheme}:... (the rest is not shown: it may hold a password)")
        }
        _ => "(not shown: it may hold a password)".into(),
    }
}

/// Percent-encodes the characters of a user or password that a URL would read as structure;
/// existing `%XX` escapes are kept.
fn encode_userinfo(info: &str) -> String {
    let (user, password) = match info.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (info, None),
    };
    let enc = |s: &str| {
        let mut out = String::new();
        for c in s.chars() {
            match c {
                '/' | '?' | '#' | '@' | ':' | '[' | ']' | ' ' | '&' | '=' => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("%{b:02X}"));
                    }
                }
                c => out.push(c),
            }
        }
        out
    };
    match password {
        Some(p) => format!("{}:{}", enc(user), enc(p)),
        None => enc(user),
    }
}

/// The URL as shown in every message, built from the parsed settings (the same parse that
/// connects), never from the text: a password cannot survive into it whatever it contains.
fn display_of(c: &tokio_postgres::Config, ssl_mode: SslMode) -> String {
    use tokio_postgres::config::Host;
    let mut out = String::from("postgres://");
    if let Some(user) = c.get_user() {
        out.push_str(user);
        if c.get_password().is_some() {
            out.push_str(":***");
        }
        out.push('@');
    }
    let ports = c.get_ports();
    let mut sockets = Vec::new();
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .filter_map(|(i, h)| match h {
            Host::Tcp(h) => {
                // An IPv6 address in brackets, as in the URL it came from.
                let h = if h.contains(':') {
                    format!("[{h}]")
                } else {
                    h.clone()
                };
                Some(match ports.get(i).or(ports.first()) {
                    Some(p) => format!("{h}:{p}"),
                    None => h,
                })
            }
            Host::Unix(p) => {
                sockets.push(p.display().to_string());
                None
            }
        })
        .collect();
    out.push_str(&hosts.join(","));
    out.push('/');
    out.push_str(c.get_dbname().unwrap_or(""));
    let mut params = Vec::new();
    for s in sockets {
        params.push(format!("host={s}"));
    }
    if ssl_mode != SslMode::Prefer {
        params.push(format!(
            "sslmode={}",
            match ssl_mode {
                SslMode::Disable => "disable",
                SslMode::Prefer => "prefer",
                SslMode::Require => "require",
                SslMode::VerifyCa => "verify-ca",
                SslMode::VerifyFull => "verify-full",
            }
        ));
    }
    if !params.is_empty() {
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_display_whatever_they_hold() {
        for (url, secret) in [
            ("postgres://app:s3cr%40t@db:5432/app", "s3cr"),
            (
                "postgres://app@db/app?password=hunter2&sslmode=require",
                "hunter2",
            ),
            ("postgres://app:Pa/ss@db/app", "Pa/ss"),
            ("postgres://app:Pa?ss@db/app?sslmode=disable", "Pa?ss"),
            ("postgres://app:P@ss/w?rd#1@db:6432/app", "w?rd"),
        ] {
            let u = DatabaseUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            let DatabaseUrl::Postgres(pg) = &u else {
                panic!()
            };
            assert!(!u.display().contains(secret), "{url} -> {}", u.display());
            assert!(pg.config.get_password().is_some(), "{url}");
            assert_eq!(u.name(), "app", "{url}");
        }
        let DatabaseUrl::Postgres(pg) =
            DatabaseUrl::parse("postgres://app:pw@db/app?application_name=me@laptop").unwrap()
        else {
            panic!()
        };
        assert_eq!(pg.config.get_password(), Some(&b"pw"[..]));
        assert_eq!(pg.config.get_application_name(), Some("me@laptop"));
        let DatabaseUrl::Postgres(pg) =
            DatabaseUrl::parse("postgres://app:Pa/ss?x@db/app").unwrap()
        else {
            panic!()
        };
        assert_eq!(pg.config.get_password(), Some(&b"Pa/ss?x"[..]));
        assert_eq!(
            DatabaseUrl::parse("postgres://app:x@db:5433/app?sslmode=require")
                .unwrap()
                .display(),
            "postgres://app:***@db:5433/app?sslmode=require"
        );
        // A bare word is never shown (a password in the wrong variable); a path is, with a hint.
        let err = DatabaseUrl::parse("b7f3c9e1a2d4hunter2")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let err = DatabaseUrl::parse("data/app.db").unwrap_err().to_string();
        assert!(err.contains("`sqlite:data/app.db`"), "{err}");
        let err = DatabaseUrl::parse("host=db password=hunter2 dbname=app")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn parses_urls() {
        let DatabaseUrl::Sqlite(p) = DatabaseUrl::parse("sqlite:///var/lib/app.db").unwrap() else {
            panic!()
        };
        assert_eq!(p, PathBuf::from("/var/lib/app.db"));
        let DatabaseUrl::Sqlite(p) = DatabaseUrl::parse("sqlite:app.db").unwrap() else {
            panic!()
        };
        assert_eq!(p, PathBuf::from("app.db"));
        let u = DatabaseUrl::parse("postgres://u:pw@localhost:5433/shop?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=5").unwrap();
        let DatabaseUrl::Postgres(pg) = &u else {
            panic!()
        };
        assert_eq!(pg.ssl_mode, SslMode::VerifyFull);
        assert_eq!(
            pg.root_cert.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(u.name(), "shop");
        assert!(!u.display().contains("pw"));
        let err = DatabaseUrl::parse("postgres://u:hunter2@h/db?sslmode=bogus")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslmode") && !err.contains("hunter2"), "{err}");
        assert!(DatabaseUrl::parse("mysql://x").is_err());
        // An IPv6 host is shown (and located) in brackets, as a URL writes it.
        let u = DatabaseUrl::parse("postgres://u@[::1]:5433/shop").unwrap();
        assert_eq!(u.display(), "postgres://u@[::1]:5433/shop");
        let DatabaseUrl::Postgres(pg) = &u else {
            panic!()
        };
        assert_eq!(pg.location(), "[::1]:5433/shop");
    }
}
