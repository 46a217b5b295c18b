//! SQLite: the pages of ONE read transaction, in page order, which is the database file itself.
//!
//! A database in WAL mode is streamed: a thread opens a read transaction, reads the manifest's
//! facts (row counts, migration head, identity) inside it, then reads every page through the
//! `sqlite_dbpage` virtual table (the bundled SQLite is built with it, see `.cargo/config.toml`)
//! into a bounded channel that the pipeline compresses while the next pages are read. Nothing is
//! staged on disk and memory is a few MiB whatever the size. In WAL mode a reader never blocks a
//! writer, so the stream may take as long as compression does.
//!
//! A database in a rollback-journal mode is copied first, as before: there a reader's shared
//! lock holds every writer's COMMIT, so the lock is held only for a local copy (the backup API
//! in ONE step, `sqlite3_backup_step(-1)`, never the page-stepped loop `sqlite3 .backup` uses,
//! which restarts on every commit of another connection), and the copy is then compressed with
//! no lock held. The same holds if `sqlite_dbpage` is missing (a build without the flag).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{head, Keep, Prepared};
use crate::error::Error;
use crate::manifest::Format;

/// Bytes of pages per message, and messages in flight: what the stream holds in memory.
const BATCH: usize = 1 << 20;
const DEPTH: usize = 4;

/// Every page, in page order (the virtual table consumes the ORDER BY: no sort).
const PAGES: &str = "SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno";

/// How a snapshot reads the database; the reason is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Pages of one read transaction, straight into zstd.
    Stream,
    /// A local copy first (rollback journal: a long read would hold the writers' COMMIT).
    Staged(&'static str),
}

pub fn prepare(db: &Path, temp_dir: &Path, busy_timeout: Duration) -> Result<Prepared, Error> {
    if !db.exists() {
        return Err(Error::Source(format!(
            "sqlite:{}: the database file does not exist",
            db.display()
        )));
    }
    let src = open(db, busy_timeout)?;
    match strategy(&src).map_err(|e| source_err(db, e))? {
        Strategy::Stream => stream(db, src),
        Strategy::Staged(why) => {
            tracing::info!("sqlite:{}: staging a copy first ({why})", db.display());
            staged(db, src, temp_dir)
        }
    }
}

fn open(db: &Path, busy_timeout: Duration) -> Result<Connection, Error> {
    let src = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| source_err(db, e))?;
    src.busy_timeout(busy_timeout)
        .map_err(|e| source_err(db, e))?;
    Ok(src)
}

fn source_err(db: &Path, e: rusqlite::Error) -> Error {
    Error::Source(format!("reading sqlite:{}: {e}", db.display()))
}

/// Streams a WAL database; stages a copy of any other (see the module's doc).
pub fn strategy(conn: &Connection) -> rusqlite::Result<Strategy> {
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Ok(Strategy::Staged(
            "not in WAL mode: a long read would hold every writer's COMMIT",
        ));
    }
    if conn
        .prepare("SELECT data FROM sqlite_dbpage LIMIT 0")
        .is_err()
    {
        return Ok(Strategy::Staged("this build's SQLite has no sqlite_dbpage"));
    }
    Ok(Strategy::Stream)
}

/// What the manifest records, read inside the snapshot's own transaction.
struct Facts {
    row_counts: BTreeMap<String, u64>,
    applied: Vec<dbconn::Applied>,
    database_id: Option<String>,
    pages: u64,
    page_size: u64,
}

impl Facts {
    /// The snapshot source these facts describe, its bytes read from `reader`: the database's
    /// pages, so its size is pages × page size.
    fn prepared(
        self,
        reader: Box<dyn Read + Send>,
        finish: Box<dyn FnOnce() -> Result<(), Error> + Send>,
        keep: Keep,
    ) -> Prepared {
        let size = self.pages * self.page_size;
        Prepared {
            format: Format::Sqlite,
            engine: "sqlite",
            server_version: rusqlite::version().to_string(),
            pg_dump_version: None,
            head: head(self.applied),
            database_id: self.database_id,
            row_counts: self.row_counts,
            size_hint: size,
            workers: workers(size),
            reader,
            finish,
            keep,
        }
    }
}

fn facts(conn: &Connection) -> Result<Facts, Error> {
    let q = |e: rusqlite::Error| Error::Source(format!("reading the snapshot's facts: {e}"));
    Ok(Facts {
        row_counts: row_counts(conn).map_err(q)?,
        applied: dbconn::sqlite::applied_on(conn)?,
        database_id: dbconn::identity::read_sqlite(conn)?,
        pages: conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(q)?,
        page_size: conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(q)?,
    })
}

fn stream(db: &Path, conn: Connection) -> Result<Prepared, Error> {
    let (facts_tx, facts_rx) = sync_channel::<Result<Facts, Error>>(1);
    let (tx, rx) = sync_channel::<Vec<u8>>(DEPTH);
    let name = db.display().to_string();
    let reader_thread = std::thread::Builder::new()
        .name("sqlite-pages".into())
        .spawn(move || read_pages(conn, &name, facts_tx, tx))
        .map_err(Error::io("starting the page reader"))?;
    let facts = facts_rx
        .recv()
        .map_err(|_| Error::Source("the page reader stopped before reading the facts".into()))??;
    let reader = crate::pipeline::BlockReader::new(rx);
    // The bytes count only if every page of the transaction was read.
    let finish = move || {
        reader_thread
            .join()
            .map_err(|_| Error::Source("the page reader panicked".into()))?
    };
    Ok(facts.prepared(Box::new(reader), Box::new(finish), Keep::Nothing))
}

/// The reader thread: one read transaction for the facts and every page. Returns when every
/// page was sent, or early (with `Ok`) if the pipeline stopped listening: its error is the one
/// reported.
fn read_pages(
    conn: Connection,
    db: &str,
    facts_tx: SyncSender<Result<Facts, Error>>,
    tx: SyncSender<Vec<u8>>,
) -> Result<(), Error> {
    let q = |e: rusqlite::Error| Error::Source(format!("reading the pages of sqlite:{db}: {e}"));
    // The read transaction starts at BEGIN's first read and ends when `conn` is dropped.
    let begun = conn
        .execute_batch("BEGIN; SELECT count(*) FROM sqlite_master;")
        .map_err(q)
        .and_then(|()| facts(&conn));
    let expected = match begun {
        Ok(f) => {
            let pages = f.pages;
            let _ = facts_tx.send(Ok(f));
            pages
        }
        Err(e) => {
            let _ = facts_tx.send(Err(e));
            return Ok(());
        }
    };
    let mut stmt = conn.prepare(PAGES).map_err(q)?;
    let mut rows = stmt.query([]).map_err(q)?;
    let mut buf = Vec::with_capacity(BATCH);
    let mut seen = 0u64;
    while let Some(row) = rows.next().map_err(q)? {
        let pgno: u64 = row.get(0).map_err(q)?;
        seen += 1;
        if pgno != seen {
            return Err(Error::Source(format!(
                "sqlite:{db}: page {pgno} came where page {seen} was expected"
            )));
        }
        buf.extend_from_slice(
            row.get_ref(1)
                .map_err(q)?
                .as_blob()
                .map_err(|e| q(e.into()))?,
        );
        if buf.len() >= BATCH && tx.send(std::mem::take(&mut buf)).is_err() {
            return Ok(());
        }
    }
    if seen != expected {
        return Err(Error::Source(format!(
            "sqlite:{db}: read {seen} pages of the {expected} the transaction holds"
        )));
    }
    if !buf.is_empty() {
        let _ = tx.send(buf);
    }
    Ok(())
}

fn staged(db: &Path, src: Connection, temp_dir: &Path) -> Result<Prepared, Error> {
    let db_size = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(format!("{}-wal", db.display()))
            .map(|m| m.len())
            .unwrap_or(0);
    crate::scratch::ensure_space(temp_dir, db_size, "the staged copy of the SQLite snapshot")?;
    let tmp = crate::scratch::temp_in(temp_dir, "snapshot-")?;
    {
        let mut dst = Connection::open(&*tmp)
            .map_err(|e| Error::Source(format!("opening the temp copy: {e}")))?;
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)
            .map_err(|e| Error::Source(format!("starting the backup: {e}")))?;
        // One step copies every page inside one read transaction; retry only while locked.
        let mut tries = 0;
        loop {
            match backup.step(-1) {
                Ok(rusqlite::backup::StepResult::Done) => break,
                Ok(_) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(r) => return Err(Error::Source(format!("the backup did not finish: {r:?}"))),
                Err(e) => return Err(Error::Source(format!("copying the database: {e}"))),
            }
        }
    }
    drop(src);
    std::fs::File::open(&*tmp)
        .and_then(|f| f.sync_all())
        .map_err(Error::io(format!("fsync {}", tmp.display())))?;

    let copy = Connection::open_with_flags(&*tmp, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Error::Source(format!("opening the copy: {e}")))?;
    let facts = facts(&copy)?;
    drop(copy);

    let reader = std::fs::File::open(&*tmp).map_err(Error::io("opening the copy"))?;
    Ok(facts.prepared(Box::new(reader), Box::new(|| Ok(())), Keep::TempFile(tmp)))
}

/// zstd workers worth starting: none for a small database, every core for a large one.
fn workers(size: u64) -> u32 {
    if size > 64 << 20 {
        std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
    } else {
        0
    }
}

/// Rows per table (not SQLite's internal tables).
pub fn row_counts(conn: &Connection) -> rusqlite::Result<BTreeMap<String, u64>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )?;
    let names: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = BTreeMap::new();
    for name in names {
        let quoted = dbconn::sql::ident(&name);
        let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {quoted}"), [], |r| r.get(0))?;
        out.insert(name, n as u64);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(dir: &Path, wal: bool) -> std::path::PathBuf {
        let path = dir.join("app.db");
        let c = Connection::open(&path).unwrap();
        if wal {
            c.pragma_update(None, "journal_mode", "wal").unwrap();
        }
        c.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
             INSERT INTO t (v) SELECT randomblob(700) FROM n;",
        )
        .unwrap();
        // The connection stays open, so a WAL database keeps its frames in the -wal file.
        std::mem::forget(c);
        path
    }

    fn drain(mut p: Prepared) -> Vec<u8> {
        let mut out = Vec::new();
        p.reader.read_to_end(&mut out).unwrap();
        (p.finish)().unwrap();
        out
    }

    #[test]
    fn the_bundled_sqlite_has_sqlite_dbpage() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(dir.path(), true);
        let c = open(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(strategy(&c).unwrap(), Strategy::Stream);
        // The pages come in page order from the table itself, never through a sort (which
        // would spill a copy of the database into temp files).
        let plan: Vec<String> = c
            .prepare(&format!("EXPLAIN QUERY PLAN {PAGES}"))
            .unwrap()
            .query_map([], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(!plan.iter().any(|p| p.contains("B-TREE")), "{plan:?}");
    }

    #[test]
    fn a_wal_database_streams_its_pages_with_the_wal_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(dir.path(), true);
        assert!(
            std::fs::metadata(dir.path().join("app.db-wal"))
                .unwrap()
                .len()
                > 0
        );
        // A temp dir that cannot hold anything: the stream must not need it.
        let no_temp = dir.path().join("not-a-dir");
        std::fs::write(&no_temp, b"").unwrap();
        let p = prepare(&path, &no_temp, Duration::from_secs(1)).unwrap();
        assert_eq!(p.row_counts["t"], 3000);
        check_copy(dir.path(), &drain(p));
    }

    #[test]
    fn a_rollback_journal_database_is_staged() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(dir.path(), false);
        let c = open(&path, Duration::from_secs(1)).unwrap();
        assert!(matches!(strategy(&c).unwrap(), Strategy::Staged(_)));
        let p = prepare(&path, dir.path(), Duration::from_secs(1)).unwrap();
        assert_eq!(p.row_counts["t"], 3000);
        check_copy(dir.path(), &drain(p));
    }

    /// The streamed bytes are a SQLite file holding the rows.
    fn check_copy(dir: &Path, bytes: &[u8]) {
        let copy = dir.join("copy.db");
        std::fs::write(&copy, bytes).unwrap();
        let c = Connection::open(&copy).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3000);
    }
}
