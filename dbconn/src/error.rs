//! The errors of connecting, locking and reading: each names what is at fault and, where there
//! is one, what to do about it.

use std::time::Duration;

use tokio_postgres::error::DbError;

/// How the binary should report an error (see the exit codes in docs/contract.md); `migrator`
/// uses the same kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A bad setting or unusable input given by the operator: a URL, a migrations folder
    /// (exit 2).
    Usage,
    /// A safety check refused the run before anything changed: a transaction pooler, lint,
    /// drift (exit 3).
    Refused,
    /// The migration lock was not free within the timeout (exit 4).
    LockTimeout,
    /// The operation failed (exit 1); a failed batch was rolled back.
    Failed,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database URL `{url}`: {problem} (setting `database.url`, flag --database, env DBWARD_DATABASE or DATABASE_URL)")]
    Url { url: String, problem: String },

    #[error("{what} goes through a transaction-mode connection pooler (PgBouncer, Supavisor, a pooled endpoint): the statements of one run reach different server sessions, so the migration lock cannot hold. Nothing was changed. Give dbward a direct or session-mode URL for migrations with `database.migrate_url` (or DBWARD_MIGRATE_URL); the application keeps its pooled URL")]
    Pooled { what: String },

    #[error("cannot open {what}: {message}")]
    Open { what: String, message: String },

    /// The server answered that the database does not exist (SQLSTATE 3D000): a decision
    /// (a missing database is restored by `--if-missing`), never read from the message's text.
    #[error("cannot open {what}: {message}")]
    NoDatabase { what: String, message: String },

    #[error("timed out after {} waiting for the migration lock on {what}{}; another `dbward migrate` is still running. Raise --lock-timeout, or find the holder and let it finish.", humanize(*waited), holder.as_deref().map(|h| format!(" (held by {h})")).unwrap_or_default())]
    LockTimeout {
        what: String,
        waited: Duration,
        holder: Option<String>,
    },

    /// Another of dbward's jobs holds what this one needs (a dump running when a batch would
    /// begin, a batch running when a dump would): exit 4, as a lock wait that timed out.
    #[error("{message}")]
    Busy { message: String },

    /// A statement, connection step or file operation the database failed: what dbward was
    /// doing (`context`), and what the driver said, kept whole (its SQLSTATE: [`Error::sqlstate`]).
    #[error("{context}")]
    Database {
        context: String,
        #[source]
        source: Driver,
    },

    /// A database path in a state nothing may be done with: a symbolic link to nothing, side
    /// files of a database that is gone.
    #[error("{what}: {problem}")]
    Refused { what: String, problem: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Url { .. } => ErrorKind::Usage,
            Error::Pooled { .. } | Error::Refused { .. } => ErrorKind::Refused,
            Error::LockTimeout { .. } | Error::Busy { .. } => ErrorKind::LockTimeout,
            Error::Open { .. } | Error::NoDatabase { .. } | Error::Database { .. } => {
                ErrorKind::Failed
            }
        }
    }

    pub fn db(context: impl Into<String>, err: impl Into<Driver>) -> Error {
        Error::Database {
            context: context.into(),
            source: err.into(),
        }
    }

    /// The SQLSTATE of the PostgreSQL server's error, where the server gave one: what decisions
    /// are made on, never the message's text.
    pub fn sqlstate(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            Error::Database {
                source: Driver::Postgres(e),
                ..
            } => e.code(),
            _ => None,
        }
    }
}

/// What the database driver said, kept whole: PostgreSQL's error (with its SQLSTATE, shown with
/// the server's detail, hint and position), SQLite's, or another step's (a TLS set-up, a task).
#[derive(Debug)]
pub enum Driver {
    Postgres(tokio_postgres::Error),
    Sqlite(rusqlite::Error),
    Other(String),
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Driver::Postgres(e) => f.write_str(&describe(e)),
            Driver::Sqlite(e) => write!(f, "{e}"),
            Driver::Other(s) => f.write_str(s),
        }
    }
}

/// Its text is the whole of what the driver said (a PostgreSQL error's causes are in it).
impl std::error::Error for Driver {}

impl From<tokio_postgres::Error> for Driver {
    fn from(e: tokio_postgres::Error) -> Driver {
        Driver::Postgres(e)
    }
}

impl From<rusqlite::Error> for Driver {
    fn from(e: rusqlite::Error) -> Driver {
        Driver::Sqlite(e)
    }
}

impl From<String> for Driver {
    fn from(s: String) -> Driver {
        Driver::Other(s)
    }
}

impl From<&str> for Driver {
    fn from(s: &str) -> Driver {
        Driver::Other(s.to_string())
    }
}

/// `1m 30s` rather than `90s`; durations in messages are for people.
pub fn humanize(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// The server's own words: severity, message, detail, hint, where.
pub fn describe(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        // Client-side: connection refused, TLS failure, ... `source` holds the reason.
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            s.push_str(&format!(": {inner}"));
            src = inner.source();
        }
        return s;
    };
    db_message(db)
}

fn db_message(db: &DbError) -> String {
    let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    if let Some(d) = db.detail() {
        s.push_str(&format!("\n  detail: {d}"));
    }
    if let Some(h) = db.hint() {
        s.push_str(&format!("\n  hint: {h}"));
    }
    if let Some(w) = db.where_() {
        s.push_str(&format!("\n  where: {w}"));
    }
    s
}
