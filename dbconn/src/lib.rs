//! What `migrator` and `backup` share about a database, so that each can be read alone: URLs
//! ([`url`]: parsed, and shown without secrets), connections ([`postgres`] with libpq's TLS
//! modes from [`tls`]; [`sqlite`]'s lock file), the history and identity tables' readers
//! ([`history`], [`identity`]), SQL quoting ([`sql`]), and the process-wide markers of a run
//! ([`committed`], [`failpoint`]), and the rename that never replaces ([`fs`]). It applies nothing and knows no snapshot.

pub mod committed;
pub mod error;
pub mod failpoint;
pub mod fs;
pub mod history;
pub mod identity;
pub mod postgres;
pub mod sql;
pub mod sqlite;
pub mod tls;
pub mod url;

pub use error::{Error, ErrorKind};
pub use history::{Applied, AppliedRepeatable, Head};
pub use url::{DatabaseUrl, PgUrl, SslMode};
