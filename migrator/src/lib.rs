//! Migrations for SQLite and PostgreSQL: find them on disk ([`source`]), check them without a
//! database ([`lint`]), compare them with the database's history ([`plan`]) and apply a pending
//! batch in one transaction under a migration lock ([`database`]). Connections, URLs and the
//! history table's rows come from `dbconn`, which `backup` shares.
//!
//! This crate knows nothing of snapshots, stores or the command line: the binary decides when
//! to lock, when to snapshot and what to print.

pub mod adopt;
pub mod database;
pub mod error;
pub mod layout;
pub mod lint;
pub mod plan;
pub mod source;

pub use database::{Database, Open};
pub use dbconn::{Applied, AppliedRepeatable, DatabaseUrl, Head};
pub use error::{Error, ErrorKind};
pub use layout::Layout;
pub use lint::{Dialect, Finding, Severity};
pub use plan::{Drift, Phase, Plan};
pub use source::{discover, Kind, MigrationFile, Migrations};
