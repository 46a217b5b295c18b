//! Migrations for SQLite and PostgreSQL: find them on disk ([`source`]), check them without a
//! database ([`lint`]), compare them with the database's history ([`plan`]) and apply a pending
//! batch in one transaction under a migration lock ([`database`]).
//!
//! This crate knows nothing of snapshots, stores or the command line: the binary decides when
//! to lock, when to snapshot and what to print.

pub mod committed;
pub mod database;
pub mod error;
pub mod failpoint;
pub mod lint;
pub mod plan;
pub mod source;
pub mod sql;

pub use database::{Database, DatabaseUrl, Open};
pub use error::{Error, ErrorKind};
pub use lint::{Dialect, Finding, Severity};
pub use plan::{Applied, AppliedRepeatable, Drift, Head, Plan};
pub use source::{discover, Kind, MigrationFile, Migrations};
