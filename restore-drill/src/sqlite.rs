//! A SQLite drill's scratch database: the decoded file itself, opened where it was decoded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

use crate::checks::{CheckFailure, Outcome};

/// The scratch copy, opened, with its row counts once [`integrity`] has taken them.
pub struct Restored {
    pub conn: Connection,
    path: PathBuf,
    counts: Mutex<Option<Result<BTreeMap<String, u64>, CheckFailure>>>,
}

/// Opens the decoded copy as the scratch database (never the live file).
pub fn open(decoded: &Path, live: &Path) -> Outcome<Restored> {
    if std::fs::canonicalize(decoded).ok() == std::fs::canonicalize(live).ok() {
        return Err("the scratch file is the live database; refusing".into());
    }
    let conn = Connection::open(decoded)?;
    dbconn::failpoint::hit("drill-after-restore")?;
    Ok((
        Restored {
            conn,
            path: decoded.to_path_buf(),
            counts: Mutex::new(None),
        },
        format!("scratch file {}", decoded.display()),
    ))
}

/// [`integrity_check`], while every table is counted on a second connection (the other core):
/// the counts wait for the row-count check ([`counts`]).
pub fn integrity(r: &Restored) -> Outcome<()> {
    let path = &r.path;
    std::thread::scope(|s| {
        let counting = s.spawn(move || {
            // Read-write flags, though it only reads: a read-only connection cannot open a
            // WAL-mode file whose `-shm` is not there yet.
            let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
            row_counts(&c)
        });
        let checked = integrity_check(&r.conn);
        let counted = counting
            .join()
            .unwrap_or_else(|_| Err("counting the rows panicked".into()));
        *r.counts.lock().unwrap_or_else(|e| e.into_inner()) = Some(counted);
        checked
    })
}

/// The row counts [`integrity`] took, or taken now.
pub fn counts(r: &Restored) -> Result<BTreeMap<String, u64>, CheckFailure> {
    let counted = r.counts.lock().unwrap_or_else(|e| e.into_inner()).take();
    counted.unwrap_or_else(|| row_counts(&r.conn))
}

/// `PRAGMA integrity_check` and `foreign_key_check`.
fn integrity_check(c: &Connection) -> Outcome<()> {
    let v: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if v != "ok" {
        return Err(format!("integrity_check: {v}").into());
    }
    let fk: i64 = c.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
        r.get(0)
    })?;
    if fk > 0 {
        return Err(format!("foreign_key_check: {fk} violation(s)").into());
    }
    Ok(((), "integrity_check ok, foreign_key_check clean".into()))
}

pub fn head(c: &Connection) -> Result<Option<dbconn::Applied>, CheckFailure> {
    Ok(dbconn::sqlite::applied_on(c)?
        .into_iter()
        .max_by_key(|a| a.version))
}

fn row_counts(c: &Connection) -> Result<BTreeMap<String, u64>, CheckFailure> {
    Ok(backup::engine::sqlite::row_counts(c)?)
}

pub fn probe(c: &Connection, sql: &str) -> Result<bool, CheckFailure> {
    c.query_row(sql, [], |r| r.get(0))
        .map_err(|e| format!("`{sql}`: {e}").into())
}
