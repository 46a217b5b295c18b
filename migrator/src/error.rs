//! The one error type of this crate. Every variant names what is at fault and, where there is
//! one, what to do about it; the binary turns [`Error::kind`] into an exit code.

use std::path::PathBuf;
use std::time::Duration;

use crate::lint::Finding;
use crate::plan::Drift;

/// How the binary should report an error (see the exit codes in DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad setting or unusable input given by the operator (exit 2).
    Usage,
    /// A safety check refused the run before anything changed (exit 3).
    Refused,
    /// The migration lock was not free within `--lock-timeout` (exit 4).
    LockTimeout,
    /// The operation failed (exit 1); the database is as it was before the batch.
    Failed,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the migrations folder {} (setting `database.migrations`, flag --migrations)", path.display())]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{} migration file problem(s), nothing was run:\n{}", problems.len(), list(problems))]
    Files { problems: Vec<FileProblem> },

    #[error("lint found {} error(s) in the migrations, nothing was run:\n{}", findings.len(), list(findings))]
    Lint { findings: Vec<Finding> },

    #[error("the database does not match the migrations folder, nothing was run:\n{}\nRestore the original files (or the missing ones), or give the late migration a version above the newest applied one.", list(drift))]
    Drift { drift: Vec<Drift> },

    #[error("database URL `{url}`: {problem} (setting `database.url`, flag --database, env DBWARD_DATABASE or DATABASE_URL)")]
    Url { url: String, problem: String },

    #[error("{what} goes through a transaction-mode connection pooler (PgBouncer, Supavisor, a pooled endpoint): the statements of one run reach different server sessions, so the migration lock cannot hold. Nothing was changed. Give dbward a direct or session-mode URL for migrations with `database.migrate_url` (or DBWARD_MIGRATE_URL); the application keeps its pooled URL")]
    Pooled { what: String },

    #[error("cannot open {what}: {message}")]
    Open { what: String, message: String },

    #[error("timed out after {} waiting for the migration lock on {what}{}; another `dbward migrate` is still running. Raise --lock-timeout, or find the holder and let it finish.", humanize(*waited), holder.as_deref().map(|h| format!(" (held by {h})")).unwrap_or_default())]
    LockTimeout {
        what: String,
        waited: Duration,
        holder: Option<String>,
    },

    #[error("migration {}{} failed: {message}\nThe whole batch was rolled back: the database is as it was before this run.", file.display(), position.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Apply {
        file: PathBuf,
        /// 1-based line and column in the file, where the database reported one.
        position: Option<(usize, usize)>,
        message: String,
    },

    #[error("{context}: {message}")]
    Database { context: String, message: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Folder { .. } | Error::Url { .. } => ErrorKind::Usage,
            Error::Files { .. } | Error::Lint { .. } | Error::Drift { .. } => ErrorKind::Refused,
            Error::LockTimeout { .. } => ErrorKind::LockTimeout,
            Error::Open { .. } | Error::Apply { .. } | Error::Database { .. } => ErrorKind::Failed,
            Error::Pooled { .. } => ErrorKind::Refused,
        }
    }

    pub(crate) fn db(context: impl Into<String>, err: impl std::fmt::Display) -> Error {
        Error::Database {
            context: context.into(),
            message: err.to_string(),
        }
    }
}

/// One problem with one file in the migrations folder, found before any database work.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileProblem {
    pub file: PathBuf,
    pub problem: String,
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.problem)
    }
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
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
