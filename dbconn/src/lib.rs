//! What `migrator` and `backup` share about a database, so that each can be read alone: URLs
//! ([`url`]: parsed, and shown without secrets), connections ([`postgres`] with libpq's TLS
//! modes from [`tls`]; [`sqlite`]'s lock file), the history and identity tables' readers
//! ([`history`], [`identity`]), SQL quoting ([`sql`]), the process-wide markers of a run
//! ([`committed`], [`failpoint`]; [`cleanup`], the undo steps a stop request must not skip),
//! the rename that never replaces ([`fs`]), every child process's environment and process
//! group ([`child`]), and waits that say what they wait for ([`wait`]). It applies nothing and
//! knows no snapshot.

pub mod child;
pub mod cleanup;
pub mod committed;
pub mod critical;
pub mod error;
pub mod failpoint;
pub mod fs;
pub mod history;
pub mod identity;
pub mod lock;
pub mod postgres;
pub mod sql;
pub mod sqlite;
pub mod tls;
pub mod url;
pub mod wait;

pub use error::{Error, ErrorKind};
pub use history::{Applied, AppliedRepeatable, Head};
pub use url::{DatabaseUrl, PgUrl, SslMode};
