//! The one error type of this crate. Every variant names what is at fault and, where there is
//! one, what to do about it; the binary turns [`Error::kind`] into an exit code.

use std::path::PathBuf;

use crate::lint::Finding;
use crate::plan::Drift;

/// How the binary should report an error: the one kind both crates use.
pub use dbconn::ErrorKind;

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

    #[error("migration {}{} failed: {message}\nThe whole batch was rolled back: the database is as it was before this run.", file.display(), position.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Apply {
        file: PathBuf,
        /// 1-based line and column in the file, where the database reported one.
        position: Option<(usize, usize)>,
        message: String,
    },

    /// Connecting, locking, reading or writing the database.
    #[error(transparent)]
    Database(#[from] dbconn::Error),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Folder { .. } => ErrorKind::Usage,
            Error::Files { .. } | Error::Lint { .. } | Error::Drift { .. } => ErrorKind::Refused,
            Error::Apply { .. } => ErrorKind::Failed,
            Error::Database(e) => e.kind(),
        }
    }

    pub(crate) fn db(context: impl Into<String>, err: impl std::fmt::Display) -> Error {
        Error::Database(dbconn::Error::db(context, err))
    }
}

/// One problem with one file in the migrations folder, found before any database work.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileProblem {
    /// Shown lossily (a name that is not UTF-8 is one of the problems reported).
    #[serde(serialize_with = "lossy")]
    pub file: PathBuf,
    pub problem: String,
}

fn lossy<S: serde::Serializer>(p: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
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

pub use dbconn::error::humanize;
