//! The errors of connecting, locking and reading: each names what is at fault and, where there
//! is one, what to do about it.

use std::time::Duration;

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

    #[error("{context}: {message}")]
    Database { context: String, message: String },

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
            Error::LockTimeout { .. } => ErrorKind::LockTimeout,
            Error::Open { .. } | Error::NoDatabase { .. } | Error::Database { .. } => {
                ErrorKind::Failed
            }
        }
    }

    pub fn db(context: impl Into<String>, err: impl std::fmt::Display) -> Error {
        Error::Database {
            context: context.into(),
            message: err.to_string(),
        }
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
