//! One consistent state of a live SQLite database in WAL mode, pinned without getting in the
//! application's way.
//!
//! [`Source::pin`] takes the write lock (`BEGIN IMMEDIATE` on a connection of its own, waiting
//! behind a writer as any writer would), reads the WAL's frames since the last step (a few
//! frame headers: the frames before were read ahead, outside the lock), begins a read
//! transaction on a second connection (its snapshot is exactly the state those frames end at:
//! no writer can commit meanwhile) and lets the write lock go. A writer waits at most that
//! long; the pages are then read in the read transaction while writers go on, and the read
//! transaction ends with the step ([`Pinned`] dropped): none is held between steps, so the
//! application's checkpoints run as they would without dbward. Neither connection ever writes,
//! checkpoints, or checkpoints on close.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::wal::{self, Changes, Position};
use crate::error::Error;

pub struct Source {
    path: PathBuf,
    wal: PathBuf,
    lock: Connection,
    read: Connection,
}

/// A state pinned by [`Source::pin`]: the read transaction is open until it is dropped.
pub struct Pinned<'a> {
    read: &'a Connection,
    /// What changed since the position `pin` was given, and where the state stands.
    pub changes: Changes,
    pub page_size: u32,
    pub page_count: u32,
    /// When the write lock was held: every commit before it is in the state, none after it.
    pub at: time::OffsetDateTime,
}

fn source_err(db: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Source(format!("sqlite:{}: {what}: {e}", db.display()))
}

fn connect(db: &Path, busy: Duration) -> Result<Connection, Error> {
    let c = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| source_err(db, "opening it", e))?;
    c.busy_timeout(busy)
        .map_err(|e| source_err(db, "setting a busy timeout", e))?;
    // Closing the last connection would checkpoint and remove the WAL: never dbward's doing.
    c.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(|e| source_err(db, "turning off the checkpoint on close", e))?;
    Ok(c)
}

impl Source {
    /// Connects to the database at `db`, which must exist and be in WAL mode (a rollback
    /// journal has no frames to follow, and its readers hold writers' commits). `busy`: how long
    /// the write lock is waited for behind the application's writer.
    pub fn open(db: &Path, busy: Duration) -> Result<Source, Error> {
        if !db.is_file() {
            return Err(Error::Source(format!(
                "sqlite:{}: the database file does not exist",
                db.display()
            )));
        }
        let lock = connect(db, busy)?;
        let mode: String = lock
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| source_err(db, "reading its journal mode", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Refused(format!(
                "sqlite:{} is in journal_mode={mode}: continuous protection follows the WAL; set `PRAGMA journal_mode = WAL` once (it stays with the file), or rely on snapshots",
                db.display()
            )));
        }
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        Ok(Source {
            path: db.to_path_buf(),
            wal: PathBuf::from(wal),
            read: connect(db, busy)?,
            lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pins the database's current state (see the module's doc): what changed since `since`
    /// (`None`: a new base, every page).
    pub fn pin(&mut self, since: Option<Position>) -> Result<Pinned<'_>, Error> {
        let db = self.path.clone();
        let err = |what: &str| {
            let db = db.clone();
            let what = what.to_string();
            move |e: rusqlite::Error| source_err(&db, &what, e)
        };
        // The frames so far, outside the lock: under it, only what came since.
        let ahead = wal::changes(&self.wal, since).map_err(Error::io("reading the WAL"))?;
        let from = if ahead.unknown.is_none() {
            ahead.to
        } else {
            since
        };
        self.lock
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(err("taking the write lock"))?;
        let at = time::OffsetDateTime::now_utc();
        let pinned = (|| {
            let tail = wal::changes(&self.wal, from).map_err(Error::io("reading the WAL"))?;
            self.read
                .execute_batch("BEGIN")
                .map_err(err("beginning the read transaction"))?;
            // The snapshot is taken by the first read.
            let (page_size, page_count): (u32, u32) = self
                .read
                .query_row(
                    "SELECT page_size, page_count FROM pragma_page_size, pragma_page_count",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(err("reading its size"))?;
            // The frames read ahead could not be followed (a restart in progress, say): what
            // was read under the lock, from the last step, stands alone.
            let changes = if ahead.unknown.is_some() {
                tail
            } else {
                let mut pages = ahead.pages;
                pages.extend(tail.pages);
                Changes {
                    pages,
                    to: tail.to,
                    unknown: tail.unknown,
                }
            };
            Ok::<_, Error>((changes, page_size, page_count))
        })();
        let released = self.lock.execute_batch("ROLLBACK");
        let (changes, page_size, page_count) = match pinned {
            Ok(p) => p,
            Err(e) => {
                let _ = self.read.execute_batch("ROLLBACK");
                return Err(e);
            }
        };
        released.map_err(err("letting the write lock go"))?;
        Ok(Pinned {
            read: &self.read,
            changes,
            page_size,
            page_count,
            at,
        })
    }
}

impl Pinned<'_> {
    /// Page `pgno` of the pinned state.
    pub fn page(&self, pgno: u32) -> Result<Vec<u8>, Error> {
        self.read
            .prepare_cached("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")
            .and_then(|mut s| s.query_row([pgno], |r| r.get::<_, Vec<u8>>(0)).optional())
            .map_err(|e| Error::Source(format!("reading page {pgno}: {e}")))?
            .ok_or_else(|| Error::Source(format!("page {pgno} is not in the database")))
    }

    /// Every page of the pinned state, in order, to `each`.
    pub fn each_page(
        &self,
        mut each: impl FnMut(u32, &[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut s = self
            .read
            .prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")
            .map_err(|e| Error::Source(format!("reading the pages: {e}")))?;
        let mut rows = s
            .query([])
            .map_err(|e| Error::Source(format!("reading the pages: {e}")))?;
        while let Some(row) = rows
            .next()
            .map_err(|e| Error::Source(format!("reading the pages: {e}")))?
        {
            let pgno: u32 = row.get(0).map_err(|e| Error::Source(e.to_string()))?;
            let data = row.get_ref(1).map_err(|e| Error::Source(e.to_string()))?;
            let bytes = data
                .as_blob()
                .map_err(|e| Error::Source(format!("page {pgno}: {e}")))?;
            each(pgno, bytes)?;
        }
        Ok(())
    }
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        let _ = self.read.execute_batch("ROLLBACK");
    }
}
