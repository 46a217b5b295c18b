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

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<DatabaseUrl, Error> {
        let bad = |problem: String| Error::Url {
            url: redact(url),
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
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let (base, query) = url.split_once('?').unwrap_or((url, ""));
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
            let rebuilt = if kept.is_empty() {
                base.to_string()
            } else {
                format!("{base}?{}", kept.join("&"))
            };
            let mut config: tokio_postgres::Config =
                rebuilt.parse().map_err(|e| bad(format!("{e}")))?;
            config.ssl_mode(match ssl_mode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
            if config.get_application_name().is_none() {
                config.application_name("dbward");
            }
            return Ok(DatabaseUrl::Postgres(Box::new(PgUrl {
                config,
                ssl_mode,
                root_cert,
                display: redact(url),
            })));
        }
        Err(bad(
            "expected `sqlite:PATH` or `postgres://user@host:port/db`".into(),
        ))
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
            DatabaseUrl::Postgres(pg) => pg
                .config
                .get_dbname()
                .or(pg.config.get_user())
                .unwrap_or("postgres")
                .to_string(),
        }
    }
}

/// Replaces the password of a URL (`user:secret@`) and any `password=` parameter with `***`.
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let auth_start = scheme_end + 3;
        let auth_end = out[auth_start..]
            .find(['/', '?'])
            .map(|i| auth_start + i)
            .unwrap_or(out.len());
        if let Some(at) = out[auth_start..auth_end].rfind('@') {
            let userinfo = &out[auth_start..auth_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(auth_start + colon + 1..auth_start + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out = format!("{base}{}", query.join("&"));
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
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://app:s3cr%40t@db:5432/app"),
            "postgres://app:***@db:5432/app"
        );
        assert_eq!(
            redact("postgres://app@db/app?password=x&sslmode=require"),
            "postgres://app@db/app?password=***&sslmode=require"
        );
        assert_eq!(redact("postgres://db/app"), "postgres://db/app");
        assert_eq!(redact("sqlite:app.db"), "sqlite:app.db");
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
    }
}
