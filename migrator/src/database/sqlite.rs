//! SQLite: the migration lock is an exclusive lock on `<db>.dbward-lock` beside the database;
//! the batch runs in one `BEGIN IMMEDIATE` transaction, each file as one `execute_batch`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use dbconn::history::{self, Applied, AppliedRepeatable};
use dbconn::sqlite::{applied_on, lock_file, table_exists};

use crate::error::{humanize, Error};
use crate::source::{Kind, MigrationFile};

pub struct Sqlite {
    conn: Connection,
    path: PathBuf,
    lock: Option<File>,
}

impl Sqlite {
    /// Opens an existing database; with `create`, makes the file if it is missing. A symbolic
    /// link is followed to its file, and one to nothing is refused; a new file is refused beside
    /// the WAL or journal of a database that is gone (see `dbconn::sqlite`).
    pub fn open(path: &Path, create: bool) -> Result<Sqlite, Error> {
        let path = &dbconn::sqlite::real_path(path)?;
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            dbconn::sqlite::refuse_stale_side_files(path)?;
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        } else if !path.exists() {
            return Err(dbconn::Error::Open {
                what: format!("sqlite:{}", path.display()),
                message: "the file does not exist (only `migrate` creates it)".into(),
            }
            .into());
        }
        let conn = Connection::open_with_flags(path, flags).map_err(|e| dbconn::Error::Open {
            what: format!("sqlite:{}", path.display()),
            message: e.to_string(),
        })?;
        Ok(Sqlite {
            conn,
            path: path.to_path_buf(),
            lock: None,
        })
    }

    /// Takes the migration lock, then opens: a restore swapping the file in meanwhile is waited
    /// for, never raced (opening first would hold the replaced file).
    pub fn open_locked(path: &Path, create: bool, timeout: Duration) -> Result<Sqlite, Error> {
        let lock = lock_file(path, timeout)?;
        let mut db = Sqlite::open(path, create)?;
        db.lock = Some(lock);
        Ok(db)
    }

    /// Takes the migration lock for this handle's life; see [`lock_file`].
    pub fn lock(&mut self, timeout: Duration) -> Result<(), Error> {
        self.lock = Some(lock_file(&self.path, timeout)?);
        Ok(())
    }

    pub fn applied(&mut self) -> Result<Vec<Applied>, Error> {
        Ok(applied_on(&self.conn)?)
    }

    pub fn applied_repeatable(&mut self) -> Result<Vec<AppliedRepeatable>, Error> {
        let ctx = |e: rusqlite::Error| Error::db("reading the repeatable-migration history", e);
        if !table_exists(&self.conn, history::REPEATABLE_TABLE).map_err(ctx)? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(history::SELECT_REPEATABLE).map_err(ctx)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(ctx)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(ctx)?;
        rows.into_iter()
            .map(|(n, a, c)| history::repeatable_row(n, a, c))
            .collect::<Result<_, _>>()
            .map_err(Error::from)
    }

    /// Rows per table of the application's (not SQLite's, not dbward's).
    pub fn row_counts(&mut self) -> Result<std::collections::BTreeMap<String, i64>, Error> {
        let ctx = |e: rusqlite::Error| Error::db("counting rows", e);
        let names: Vec<String> = self
            .conn
            .prepare(&format!("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT IN ({})", dbconn::history::OWN_TABLES))
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(ctx)?;
        let mut out = std::collections::BTreeMap::new();
        for name in names {
            let n: i64 = self
                .conn
                .query_row(
                    &format!("SELECT count(*) FROM {}", dbconn::sql::ident(&name)),
                    [],
                    |r| r.get(0),
                )
                .map_err(ctx)?;
            out.insert(name, n);
        }
        Ok(out)
    }

    pub fn probe(&mut self, sql: &str) -> Result<bool, Error> {
        self.conn
            .query_row(sql, [], |r| r.get::<_, i64>(0))
            .map(|v| v != 0)
            .map_err(|e| Error::db("running the probe", e))
    }

    pub fn has_user_tables(&mut self) -> Result<bool, Error> {
        Ok(dbconn::sqlite::has_user_tables(&self.conn)?)
    }

    pub fn record(&mut self, files: &[&MigrationFile]) -> Result<(), Error> {
        let ctx = |e: rusqlite::Error| Error::db("recording migrations as applied", e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(ctx)?;
        tx.execute_batch(history::CREATE).map_err(ctx)?;
        if files.iter().any(|f| f.kind == Kind::Repeatable) {
            tx.execute_batch(history::CREATE_REPEATABLE).map_err(ctx)?;
        }
        dbconn::identity::ensure_sqlite(&tx)?;
        for f in files {
            record_row(&tx, f).map_err(ctx)?;
        }
        tx.commit().map_err(ctx)
    }

    /// `busy_timeout` bounds the wait for the application's write lock. Foreign keys are off
    /// for the batch, as SQLite's documented table rebuild needs (rusqlite's SQLite enforces
    /// them by default, and `DROP TABLE parent` would then cascade into the children); before
    /// COMMIT, `PRAGMA foreign_key_check` fails the batch if any row is left dangling.
    pub fn apply(&mut self, batch: &[&MigrationFile], busy_timeout: Duration) -> Result<(), Error> {
        let ctx = |e: rusqlite::Error| Error::db("applying the batch", e);
        self.conn.busy_timeout(busy_timeout).map_err(ctx)?;
        // Only outside a transaction does this take effect.
        self.conn
            .execute_batch("PRAGMA foreign_keys = OFF")
            .map_err(ctx)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| {
                Error::db(
                    "starting the batch",
                    format!(
                        "{e} (waited database.table_lock_timeout = {} for the application's write lock; nothing was applied)",
                        humanize(busy_timeout)
                    ),
                )
            })?;
        // Rows that already lacked a parent (an app that never turned foreign keys on) are not
        // this batch's doing: only new ones fail it.
        let dangling_before = dangling(&tx)?;
        tx.execute_batch(history::CREATE).map_err(ctx)?;
        if batch.iter().any(|f| f.kind == Kind::Repeatable) {
            tx.execute_batch(history::CREATE_REPEATABLE).map_err(ctx)?;
        }
        dbconn::identity::ensure_sqlite(&tx)?;
        for f in batch {
            tracing::info!("applying {}", f.file_name());
            execute_file(&tx, f)?;
            record_row(&tx, f).map_err(ctx)?;
            dbconn::failpoint::hit("migrate-mid-batch")
                .map_err(|e| Error::db("applying the batch", e))?;
        }
        // Named after the batch's last file: the check covers the whole batch.
        if let Some(last) = batch.last() {
            foreign_key_check(&tx, &last.path, &dangling_before)?;
        }
        // Dropping an uncommitted transaction rolls it back.
        tx.commit().map_err(ctx)
    }
}

impl Sqlite {
    /// Every row of `sql`, each value as text (NULL as `None`, a blob in hex).
    pub(crate) fn text_rows(&self, sql: &str) -> rusqlite::Result<Vec<Vec<Option<String>>>> {
        use rusqlite::types::ValueRef;
        let mut stmt = self.conn.prepare(sql)?;
        let n = stmt.column_count();
        let rows = stmt.query_map([], |r| {
            (0..n)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        ValueRef::Null => None,
                        ValueRef::Integer(v) => Some(v.to_string()),
                        ValueRef::Real(v) => Some(v.to_string()),
                        ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
                        ValueRef::Blob(b) => Some(b.iter().map(|x| format!("{x:02x}")).collect()),
                    })
                })
                .collect()
        })?;
        rows.collect()
    }

    /// The table names of the database's own columns query ([`super::Database::columns`]).
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Rows of `sql` (version, count) over the progress table; none when it does not exist.
    pub(crate) fn progress(
        &self,
        sql: &str,
    ) -> rusqlite::Result<std::collections::BTreeMap<i64, i64>> {
        if !table_exists(&self.conn, history::PROGRESS_TABLE)? {
            return Ok(Default::default());
        }
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }
}

/// A non-transactional file, statement by statement ([`super::Database::apply_statements`]).
impl Sqlite {
    pub fn apply_statements(
        &mut self,
        f: &MigrationFile,
        busy_timeout: Duration,
        outside_wait: Option<Duration>,
    ) -> Result<(), Error> {
        let statements = crate::lint::split(f, crate::lint::Dialect::Sqlite);
        let of = statements.len();
        let ctx = |e: rusqlite::Error| Error::db("applying a non-transactional migration", e);
        let conn = &mut self.conn;
        conn.busy_timeout(busy_timeout).map_err(ctx)?;
        // Each statement stands alone: foreign keys are enforced as the application has them.
        conn.execute_batch("PRAGMA foreign_keys = ON")
            .map_err(ctx)?;
        {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(ctx)?;
            tx.execute_batch(&format!(
                "{}; {}",
                history::CREATE,
                history::CREATE_PROGRESS
            ))
            .map_err(ctx)?;
            dbconn::identity::ensure_sqlite(&tx)?;
            tx.commit().map_err(ctx)?;
        }
        let rows: Vec<history::Progress> = conn
            .prepare(&format!("SELECT statement, statement_checksum, started_on, completed_on IS NOT NULL FROM {} WHERE version = ?1 ORDER BY statement", history::PROGRESS_TABLE))
            .and_then(|mut s| {
                s.query_map([f.version], |r| {
                    Ok(history::Progress {
                        statement: r.get(0)?,
                        checksum: r.get(1)?,
                        started_on: r.get(2)?,
                        completed: r.get(3)?,
                    })
                })?
                .collect()
            })
            .map_err(ctx)?;
        let resume = super::resume(f, &statements, &rows)?;
        let mark_started = format!(
            "INSERT INTO {} (version, statement, statement_checksum, started_on) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (version, statement) DO UPDATE SET statement_checksum = excluded.statement_checksum, \
             started_on = excluded.started_on, completed_on = NULL",
            history::PROGRESS_TABLE
        );
        let mark_done = format!(
            "UPDATE {} SET completed_on = ?3 WHERE version = ?1 AND statement = ?2",
            history::PROGRESS_TABLE
        );
        for (i, st) in statements.iter().enumerate().skip(resume.done) {
            let text = st.text(f);
            let failed = |message: String| Error::Statement {
                file: f.path.clone(),
                position: Some(f.line_col(st.range.start)),
                statement: i + 1,
                of,
                message,
            };
            let step = |e: rusqlite::Error| failed(e.to_string());
            conn.execute(
                &mark_started,
                rusqlite::params![
                    f.version,
                    i as i64,
                    super::statement_checksum(text),
                    history::now()
                ],
            )
            .map_err(ctx)?;
            dbconn::failpoint::hit("migrate-statement-started").map_err(failed)?;
            if st.outside {
                let ran = run_waiting(conn, text, outside_wait, |waited| {
                    tracing::info!(
                        "{}: statement {} of {of} (line {}) has waited {}s for the database's lock (another connection is writing, or reading in a long transaction)",
                        f.file_name(),
                        i + 1,
                        st.line,
                        waited.as_secs()
                    )
                });
                conn.busy_timeout(busy_timeout).map_err(ctx)?;
                ran.map_err(step)?;
                dbconn::failpoint::hit("migrate-statement-ran").map_err(failed)?;
                conn.execute(
                    &mark_done,
                    rusqlite::params![f.version, i as i64, history::now()],
                )
                .map_err(ctx)?;
            } else {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(step)?;
                tx.execute_batch(text).map_err(step)?;
                tx.execute(
                    &mark_done,
                    rusqlite::params![f.version, i as i64, history::now()],
                )
                .map_err(ctx)?;
                tx.commit().map_err(ctx)?;
            }
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(ctx)?;
        record_row(&tx, f).map_err(ctx)?;
        tx.execute(
            &format!("DELETE FROM {} WHERE version = ?1", history::PROGRESS_TABLE),
            [f.version],
        )
        .map_err(ctx)?;
        tx.commit().map_err(ctx)
    }
}

/// Runs a statement that cannot run in a transaction, waiting for the database's lock at most
/// `wait` (`None`: as long as it takes), and calling `say` every 10 s of waiting. A statement
/// that found the database busy did nothing (it runs on its own, in autocommit): it is tried
/// again.
fn run_waiting(
    conn: &Connection,
    text: &str,
    wait: Option<Duration>,
    say: impl Fn(Duration),
) -> rusqlite::Result<()> {
    const EVERY: Duration = Duration::from_secs(10);
    let started = std::time::Instant::now();
    loop {
        let left = wait.map(|w| w.saturating_sub(started.elapsed()));
        conn.busy_timeout(left.map_or(EVERY, |l| l.min(EVERY)))?;
        match conn.execute_batch(text) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && left.is_none_or(|l| l > EVERY) =>
            {
                say(started.elapsed())
            }
            other => return other,
        }
    }
}

/// A row without its parent: (table, rowid, parent table).
type Dangling = (String, Option<i64>, String);

/// Every row whose parent is missing (`PRAGMA foreign_key_check`), when the schema has
/// foreign keys at all.
fn dangling(conn: &Connection) -> Result<std::collections::HashSet<Dangling>, Error> {
    let ctx = |e: rusqlite::Error| Error::db("checking foreign keys", e);
    let any_fk: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master m, pragma_foreign_key_list(m.name) WHERE m.type = 'table')",
            [],
            |r| r.get(0),
        )
        .map_err(ctx)?;
    if !any_fk {
        return Ok(Default::default());
    }
    let mut stmt = conn.prepare("PRAGMA foreign_key_check").map_err(ctx)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(ctx)?
        .collect::<Result<_, _>>()
        .map_err(ctx);
    rows
}

/// Rows the batch left without a parent (not counting those that were so before it): the
/// batch fails rather than commit them.
fn foreign_key_check(
    conn: &Connection,
    last: &Path,
    before: &std::collections::HashSet<Dangling>,
) -> Result<(), Error> {
    let mut rows: Vec<Dangling> = dangling(conn)?
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    rows.sort();
    let shown: Vec<String> = rows
        .iter()
        .take(10)
        .map(|(table, rowid, parent)| match rowid {
            Some(id) => format!("{table} rowid {id} (no parent in {parent})"),
            None => format!("{table} (no parent in {parent})"),
        })
        .collect();
    Err(Error::Apply {
        file: last.to_path_buf(),
        position: None,
        message: format!(
            "PRAGMA foreign_key_check after the batch: {}{}. The batch ran with foreign keys off (as a table rebuild needs) and would leave these rows without a parent",
            shown.join("; "),
            if rows.len() > 10 { "; ..." } else { "" }
        ),
        lock_wait: false,
    })
}

/// Runs one file statement by statement, each stepped to its end, so that an error names the
/// line of the statement that failed. The text is handed to SQLite NUL-terminated and prepared
/// from a moving tail pointer: SQLite copies the rest of the text on every prepare when it is
/// not NUL-terminated (rusqlite's `Batch`), which made large files quadratic.
fn execute_file(conn: &Connection, f: &MigrationFile) -> Result<(), Error> {
    use rusqlite::ffi;
    use std::ffi::{CStr, CString};
    let (sql, dropped) = crate::lint::executable(f, crate::lint::Dialect::Sqlite);
    for what in dropped {
        tracing::info!("{}:{what}", f.file_name());
    }
    let text = CString::new(sql.as_bytes()).map_err(|e| Error::Apply {
        file: f.path.clone(),
        position: Some(f.line_col(e.nul_position())),
        message: "a NUL byte in the file".into(),
        lock_wait: false,
    })?;
    // SAFETY: `db` is this connection's handle, used on this thread only while `conn` is
    // borrowed; every statement prepared here is finalized before the next one, and `text`
    // outlives them all.
    unsafe {
        let db = conn.handle();
        let base = text.as_ptr();
        let mut tail = base;
        let errmsg = || {
            CStr::from_ptr(ffi::sqlite3_errmsg(db))
                .to_string_lossy()
                .into_owned()
        };
        while *tail != 0 {
            let at = tail.offset_from(base) as usize;
            let mut stmt = std::ptr::null_mut();
            let mut next = std::ptr::null();
            let rc = ffi::sqlite3_prepare_v2(db, tail, -1, &mut stmt, &mut next);
            if rc != ffi::SQLITE_OK {
                let offset = ffi::sqlite3_error_offset(db);
                let pos = if offset >= 0 {
                    at + offset as usize
                } else {
                    skip_blank(&f.sql, at)
                };
                return Err(Error::Apply {
                    file: f.path.clone(),
                    position: Some(f.line_col(pos)),
                    message: errmsg(),
                    lock_wait: false,
                });
            }
            if stmt.is_null() {
                // Only whitespace or comments were left.
                break;
            }
            let rc = loop {
                match ffi::sqlite3_step(stmt) {
                    ffi::SQLITE_ROW => continue,
                    rc => break rc,
                }
            };
            let failed = (rc != ffi::SQLITE_DONE).then(errmsg);
            ffi::sqlite3_finalize(stmt);
            if let Some(message) = failed {
                return Err(Error::Apply {
                    file: f.path.clone(),
                    position: Some(f.line_col(skip_blank(&f.sql, at))),
                    message,
                    lock_wait: false,
                });
            }
            tail = next;
        }
    }
    Ok(())
}

/// The offset of the first SQL token at or after `at`: whitespace and comments skipped, so an
/// error points at the statement rather than the comment above it.
fn skip_blank(text: &str, at: usize) -> usize {
    let mut i = at;
    let b = text.as_bytes();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b[i..].starts_with(b"--") {
            i += b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .unwrap_or(b.len() - i);
        } else if b[i..].starts_with(b"/*") {
            i += b[i + 2..]
                .windows(2)
                .position(|w| w == b"*/")
                .map_or(b.len() - i, |p| p + 4);
        } else {
            return i.min(b.len());
        }
    }
}

/// `f`'s history row: a versioned file in refinery's table (a version with parts with its text,
/// in the column only such a history has), a repeatable one in dbward's.
fn record_row(tx: &rusqlite::Transaction<'_>, f: &MigrationFile) -> rusqlite::Result<()> {
    let v = history::values(f.version, &f.name, f.checksum);
    match f.kind {
        Kind::Versioned => {
            tx.execute(
                history::INSERT_SQLITE,
                rusqlite::params![v.version, v.name, v.applied_on, v.checksum],
            )?;
            if let Some(text) = &f.version_text {
                if !dbconn::sqlite::has_version_text(tx)? {
                    tx.execute_batch(history::ADD_TEXT_SQLITE)?;
                }
                tx.execute(history::SET_TEXT_SQLITE, rusqlite::params![f.version, text])?;
            }
        }
        Kind::Repeatable => {
            tx.execute(
                history::UPSERT_REPEATABLE_SQLITE,
                rusqlite::params![v.name, v.applied_on, v.checksum],
            )?;
        }
    }
    Ok(())
}
