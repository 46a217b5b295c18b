//! SQLite: the migration lock is an exclusive lock on `<db>.dbward-lock` beside the database;
//! the batch runs in one `BEGIN IMMEDIATE` transaction, each file as one `execute_batch`.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::history;
use crate::error::{humanize, Error};
use crate::plan::Applied;
use crate::source::MigrationFile;

pub struct Sqlite {
    conn: Connection,
    path: PathBuf,
    lock: Option<File>,
}

impl Sqlite {
    /// Opens an existing database; with `create`, makes the file if it is missing.
    pub fn open(path: &Path, create: bool) -> Result<Sqlite, Error> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        } else if !path.exists() {
            return Err(Error::Open {
                what: format!("sqlite:{}", path.display()),
                message: "the file does not exist (only `migrate` creates it)".into(),
            });
        }
        let conn = Connection::open_with_flags(path, flags).map_err(|e| Error::Open {
            what: format!("sqlite:{}", path.display()),
            message: e.to_string(),
        })?;
        Ok(Sqlite {
            conn,
            path: path.to_path_buf(),
            lock: None,
        })
    }

    /// Takes the migration lock for this handle's life; see [`lock_file`].
    pub fn lock(&mut self, timeout: Duration) -> Result<(), Error> {
        self.lock = Some(lock_file(&self.path, timeout)?);
        Ok(())
    }

    pub fn applied(&mut self) -> Result<Vec<Applied>, Error> {
        applied_on(&self.conn)
    }

    /// `busy_timeout` bounds the wait for the application's write lock.
    pub fn apply(&mut self, batch: &[&MigrationFile], busy_timeout: Duration) -> Result<(), Error> {
        let ctx = |e: rusqlite::Error| Error::db("applying the batch", e);
        self.conn.busy_timeout(busy_timeout).map_err(ctx)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| {
                Error::db(
                    "starting the batch",
                    format!(
                        "{e} (waited database.lock_timeout = {} for the application's write lock; nothing was applied)",
                        humanize(busy_timeout)
                    ),
                )
            })?;
        tx.execute_batch(history::CREATE).map_err(ctx)?;
        for f in batch {
            tracing::info!("applying {}", f.file_name());
            execute_file(&tx, f)?;
            let v = history::values(f);
            tx.execute(
                history::INSERT_SQLITE,
                rusqlite::params![v.version, v.name, v.applied_on, v.checksum],
            )
            .map_err(ctx)?;
        }
        // Dropping an uncommitted transaction rolls it back.
        tx.commit().map_err(ctx)
    }
}

/// The lock file belongs to the database's owner, so that the application's own user can still
/// run dbward after root did (the lock file is dbward's, by its name beside the database).
fn give_db_owner(lock: &File, db: &Path) {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(l), Ok(d)) = (lock.metadata(), std::fs::metadata(db)) {
        if (l.uid(), l.gid()) != (d.uid(), d.gid()) {
            let _ = std::os::unix::fs::fchown(lock, Some(d.uid()), Some(d.gid()));
        }
    }
}

/// The lock file beside the database: `<db>.dbward-lock`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".dbward-lock");
    db.with_file_name(name)
}

/// Takes the exclusive lock on `db`'s lock file, polling until `timeout`; held while the returned
/// file is open. The kernel releases it when the process exits, however it exits. `migrate` and
/// `restore` both take it, so they never overlap.
pub fn lock_file(db: &Path, timeout: Duration) -> Result<File, Error> {
    let lock_path = lock_path(db);
    let open_err = |e: std::io::Error| Error::Open {
        what: format!("lock file {}", lock_path.display()),
        message: e.to_string(),
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(open_err)?;
    give_db_owner(&file, db);
    let started = Instant::now();
    let mut announced = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) => {
                if started.elapsed() >= timeout {
                    return Err(Error::LockTimeout {
                        what: format!("sqlite:{}", db.display()),
                        waited: timeout,
                        holder: Some(format!("whoever locks {}", lock_path.display())),
                    });
                }
                if !announced {
                    tracing::info!(
                        "waiting up to {} for the migration lock {}",
                        humanize(timeout),
                        lock_path.display()
                    );
                    announced = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(TryLockError::Error(e)) => return Err(open_err(e)),
        }
    }
}

/// The history rows of any SQLite connection (a snapshot's copy, say); empty without the table.
pub fn applied_on(conn: &Connection) -> Result<Vec<Applied>, Error> {
    let ctx = |e: rusqlite::Error| Error::db("reading the migration history", e);
    let exists: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [history::TABLE],
            |r| r.get(0),
        )
        .map_err(ctx)?;
    if !exists {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(history::SELECT).map_err(ctx)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .map_err(ctx)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(ctx)?;
    rows.into_iter()
        .map(|(v, n, a, c)| history::row(v, n, a, c))
        .collect()
}

/// Runs one file statement by statement (as `execute_batch` does: one step each), so that an
/// error can name the line of the statement that failed, also when SQLite gives no offset.
fn execute_file(conn: &Connection, f: &MigrationFile) -> Result<(), Error> {
    use rusqlite::fallible_iterator::FallibleIterator;
    let mut batch = rusqlite::Batch::new(conn, &f.sql);
    let mut cursor = 0;
    loop {
        let mut stmt = match batch.next() {
            Ok(Some(stmt)) => stmt,
            Ok(None) => return Ok(()),
            Err(e) => return Err(apply_error(f, e, cursor)),
        };
        // The statement's own text, found from where the previous one ended.
        let start = stmt.expanded_sql().and_then(|text| {
            f.sql[cursor..]
                .find(text.trim())
                .map(|i| (cursor + i, text.trim().len()))
        });
        let at = start.map_or(cursor, |(at, _)| at);
        stmt.raw_query().next().map_err(|e| apply_error(f, e, at))?;
        if let Some((at, len)) = start {
            cursor = at + len;
        }
    }
}

/// `at`: byte offset of the failing statement in the file (or where the search stood).
fn apply_error(f: &MigrationFile, e: rusqlite::Error, at: usize) -> Error {
    let (message, offset) = match e {
        // `sql` is the rest of the file from the failing statement on; `offset` is in bytes.
        rusqlite::Error::SqlInputError {
            msg, sql, offset, ..
        } => (
            msg,
            f.sql.len().saturating_sub(sql.len()) + offset.max(0) as usize,
        ),
        other => (other.to_string(), skip_blank(&f.sql, at)),
    };
    Error::Apply {
        file: f.path.clone(),
        position: Some(f.line_col(offset)),
        message,
    }
}

fn skip_blank(text: &str, at: usize) -> usize {
    let rest = text.get(at..).unwrap_or("");
    at + (rest.len() - rest.trim_start().len())
}
