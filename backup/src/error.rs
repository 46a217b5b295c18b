//! The one error type of this crate; the binary maps [`Error::kind`] to an exit code.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A setting is wrong (exit 2).
    Usage,
    /// Refused by a safety check before anything changed (exit 3).
    Refused,
    /// The operation failed (exit 1).
    Failed,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store URL `{url}`: {problem} (setting `store.url`, flag --store, env DBWARD_STORE)")]
    StoreUrl { url: String, problem: String },

    /// Where a restore was told to go (`--to`) cannot take it.
    #[error("restore target `{target}`: {problem}")]
    Target { target: String, problem: String },

    #[error("{what}: {message}")]
    Store { what: String, message: String },

    #[error("snapshot source failed: {0}\nNo manifest was written: the partial snapshot does not count.")]
    Source(String),

    #[error("{0}")]
    Refused(String),

    /// Another replicator holds the database's stream (the `flock` beside the file, or the
    /// lease in the store): refused, exit 3; `run --replicate` stands by instead.
    #[error("{0}")]
    Held(String),

    /// A failure after the live database was changed; the message says what is where.
    #[error("{0}")]
    AfterChange(String),

    /// Not enough disk space for a step (refused before it started).
    #[error("{0}")]
    NoSpace(String),

    /// The disk filled up while a step ran (it failed; what it wrote is removed).
    #[error("{0}")]
    Full(String),

    /// A restore that failed before it replaced anything.
    #[error("restore failed: {0}\nThe live database was not replaced.")]
    Restore(String),

    /// A restored cluster that did not come up recovered (its caller says what stayed).
    #[error("recovery failed: {0}")]
    Recovery(String),

    /// The snapshot itself is bad (refused, exit 3): its object is missing or fails its
    /// checksum, it does not decode, or the restored copy fails its checks. An older snapshot
    /// may still be good; nothing about this machine is wrong.
    #[error("{0}")]
    Damaged(String),

    /// An encrypted snapshot that no identity given opens (refused, exit 3): the snapshot may
    /// be fine, the key is missing.
    #[error("{0}")]
    NoKey(String),

    /// The object is not in the store.
    #[error("{0} does not exist")]
    Missing(String),

    /// What was asked for (a base, a restore point) is not there; the message says where it
    /// was looked for and how to list what is.
    #[error("{0}")]
    NotFound(String),

    /// A write that must not overwrite (a manifest, a deploy record) found the object there.
    #[error("{0} already exists; not overwritten")]
    Exists(String),

    #[error(transparent)]
    Database(#[from] dbconn::Error),

    /// A file operation failed; `context` says which and why it was done.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A server tool (`pg_dump`, `pg_restore`) that cannot be run or read.
    #[error("{tool}: {problem} (are the PostgreSQL client tools installed and on PATH?)")]
    Tool { tool: String, problem: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::StoreUrl { .. } | Error::Target { .. } => ErrorKind::Usage,
            Error::Refused(_)
            | Error::Held(_)
            | Error::NoSpace(_)
            | Error::NoKey(_)
            | Error::Damaged(_) => ErrorKind::Refused,
            Error::Database(e) if e.kind() == dbconn::ErrorKind::Usage => ErrorKind::Usage,
            Error::Database(e) if e.kind() == dbconn::ErrorKind::Refused => ErrorKind::Refused,
            _ => ErrorKind::Failed,
        }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// An error and its causes on one line (`what: cause: root cause`), for logs and for text
/// that carries an error on; the binary prints a failure's causes as `Caused by:` lines.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
