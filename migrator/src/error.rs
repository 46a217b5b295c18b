//! The one error type of this crate. Every variant names what is at fault and, where there is
//! one, what to do about it; the binary turns [`Error::kind`] into an exit code.

use std::path::PathBuf;

use crate::lint::Finding;
use crate::plan::Drift;
use crate::source::{list, SourceError};

/// How the binary should report an error: the one kind both crates use.
pub use dbconn::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The folder cannot be read, or a file in it cannot be used.
    #[error(transparent)]
    Source(#[from] SourceError),

    #[error("lint found {} error(s) in the migrations, nothing was run:\n{}", findings.len(), list(findings))]
    Lint { findings: Vec<Finding> },

    #[error("the database does not match the migrations folder, nothing was run:\n{}\nRestore the original files (or the missing ones), or give the late migration a version above the newest applied one.", list(drift))]
    Drift { drift: Vec<Drift> },

    #[error("migration {}{} failed: {message}\nThe whole batch was rolled back: the database is as it was before this run.", file.display(), position.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Apply {
        file: PathBuf,
        /// 1-based line and column in the file, where the database reported one.
        position: Option<(usize, usize)>,
        message: String,
        /// A statement waited longer than the table-lock timeout (PostgreSQL's
        /// `lock_not_available`): the batch may go through when tried again.
        lock_wait: bool,
    },

    /// A statement of a non-transactional file failed: the statements before it completed and
    /// stay applied (recorded), and a rerun resumes at this one.
    #[error("migration {}{} failed at statement {statement} of {of}: {message}\nThe file runs outside a transaction: {}. Fix the cause, then run `dbward migrate` again: it resumes at statement {statement}.", file.display(), position.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default(), completed_text(*statement))]
    Statement {
        file: PathBuf,
        position: Option<(usize, usize)>,
        /// 1-based.
        statement: usize,
        of: usize,
        message: String,
    },

    /// A partly applied non-transactional file no longer matches the record of what ran.
    #[error("{}: {message}. Nothing was run.", file.display())]
    Resume { file: PathBuf, message: String },

    /// Another tool's history cannot be adopted as it stands ([`crate::adopt`]).
    #[error(
        "{tool}'s history ({table}) cannot be adopted: {message}. Nothing was run or recorded."
    )]
    Adopt {
        tool: &'static str,
        table: &'static str,
        message: String,
    },

    /// Connecting, locking, reading or writing the database.
    #[error(transparent)]
    Database(#[from] dbconn::Error),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Source(SourceError::Folder { .. }) => ErrorKind::Usage,
            Error::Source(SourceError::Files { .. }) | Error::Lint { .. } | Error::Drift { .. } => {
                ErrorKind::Refused
            }
            Error::Apply { .. } | Error::Statement { .. } => ErrorKind::Failed,
            Error::Resume { .. } | Error::Adopt { .. } => ErrorKind::Refused,
            Error::Database(e) => e.kind(),
        }
    }

    pub(crate) fn db(context: impl Into<String>, err: impl Into<dbconn::error::Driver>) -> Error {
        Error::Database(dbconn::Error::db(context, err))
    }
}

pub use dbconn::error::humanize;

/// What stands of a non-transactional file whose statement `failed` (1-based) did not complete.
fn completed_text(failed: usize) -> String {
    match failed {
        1 => "no statement of it completed".into(),
        2 => "its statement 1 completed and stays applied".into(),
        n => format!("its statements 1 to {} completed and stay applied", n - 1),
    }
}
