//! Snapshot sources: a consistent byte stream of the database in its standard format, and the
//! facts the manifest records (versions, migration head, row counts), taken from the same
//! point in time as the bytes.

pub mod postgres;
pub mod sqlite;

use std::collections::BTreeMap;
use std::io::Read;

use crate::error::Error;
use crate::manifest::{Format, Head};

pub struct Prepared {
    pub format: Format,
    pub engine: &'static str,
    pub server_version: String,
    pub pg_dump_version: Option<String>,
    pub head: Option<Head>,
    /// The database's identity, as of the snapshot.
    pub database_id: Option<String>,
    pub row_counts: BTreeMap<String, u64>,
    /// Uncompressed size estimate, to size multipart parts.
    pub size_hint: u64,
    /// zstd workers worth using for this source.
    pub workers: u32,
    pub reader: Box<dyn Read + Send>,
    /// Called after EOF: may the bytes count as a snapshot?
    pub finish: Box<dyn FnOnce() -> Result<(), Error> + Send>,
    /// Kept alive until the stream is done (the temp copy, the exporting transaction).
    pub keep: Keep,
}

pub enum Keep {
    /// The source owns what it needs (the SQLite page reader's thread).
    Nothing,
    TempFile(#[allow(dead_code)] crate::scratch::ScratchPath),
    Transaction(dbconn::postgres::Postgres),
}

impl Keep {
    /// Ends what was kept: the exporting transaction and the backups' lock (given back now, not
    /// when the connection's backend ends), the temp copy.
    pub async fn end(self) {
        if let Keep::Transaction(db) = &self {
            dbconn::lock::dump_done(db.client()).await;
        }
    }
}

pub(crate) fn head(rows: Vec<dbconn::Applied>) -> Option<Head> {
    dbconn::history::newest(&rows).map(dbconn::Applied::head)
}
