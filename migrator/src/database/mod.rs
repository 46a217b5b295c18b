//! The two engines behind one enum: open, lock, read history, apply a batch.

pub mod postgres;
pub mod sqlite;

use std::time::Duration;

use crate::error::Error;
use crate::source::MigrationFile;
use dbconn::{Applied, AppliedRepeatable};

pub use dbconn::{DatabaseUrl, PgUrl, SslMode};

/// What [`Database::write_counters`] counted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub measure: Measure,
    pub tables: std::collections::BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Measure {
    /// Inserted + updated + deleted rows, cumulative (PostgreSQL).
    Writes,
    /// Rows (SQLite): a change is the difference in either direction.
    Rows,
}

impl Counters {
    /// Writes between `self` (earlier) and `later`, per table, tables with none left out. A
    /// table that exists in only one of them is not counted (created or dropped by the batch).
    pub fn since(&self, later: &Counters) -> std::collections::BTreeMap<String, i64> {
        self.tables
            .iter()
            .filter_map(|(t, before)| {
                let after = later.tables.get(t)?;
                let n = match self.measure {
                    Measure::Writes => (after - before).max(0),
                    Measure::Rows => (after - before).abs(),
                };
                (n > 0).then(|| (t.clone(), n))
            })
            .collect()
    }
}

pub enum Database {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Session),
}

/// What opening a SQLite path may do when the file is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// The file must exist.
    Existing,
    /// Create the file if it is missing (only `migrate` does).
    Create,
}

impl Database {
    pub async fn open(url: &DatabaseUrl, mode: Open) -> Result<Database, Error> {
        match url {
            DatabaseUrl::Sqlite(path) => Ok(Database::Sqlite(sqlite::Sqlite::open(
                path,
                mode == Open::Create,
            )?)),
            DatabaseUrl::Postgres(pg) => {
                Ok(Database::Postgres(postgres::Session::connect(pg).await?))
            }
        }
    }

    /// Opens and takes the migration lock for the handle's life, waiting at most `timeout`.
    /// A SQLite file is locked before it is opened.
    pub async fn open_locked(
        url: &DatabaseUrl,
        mode: Open,
        timeout: Duration,
    ) -> Result<Database, Error> {
        match url {
            DatabaseUrl::Sqlite(path) => {
                // The wait runs on a blocking thread, so a stop request is seen meanwhile.
                let path = path.clone();
                let create = mode == Open::Create;
                let db = tokio::task::spawn_blocking(move || {
                    sqlite::Sqlite::open_locked(&path, create, timeout)
                })
                .await
                .map_err(|e| Error::db("waiting for the migration lock", e.to_string()))??;
                Ok(Database::Sqlite(db))
            }
            DatabaseUrl::Postgres(_) => {
                let mut db = Database::open(url, mode).await?;
                db.lock(timeout).await?;
                Ok(db)
            }
        }
    }

    /// Takes the migration lock for the rest of this handle's life, waiting at most `timeout`.
    pub async fn lock(&mut self, timeout: Duration) -> Result<(), Error> {
        match self {
            Database::Sqlite(db) => db.lock(timeout),
            Database::Postgres(db) => db.lock(timeout).await,
        }
    }

    /// PostgreSQL: keeps dbward's dumps of this database out until [`Database::backups_again`]
    /// (or the session's end), waiting at most `wait` for one that runs ([`dbconn::lock`]'s
    /// `BACKUP_KEY`), else exit 4 naming it. SQLite: a dump reads without blocking DDL: nothing.
    pub async fn exclude_backups(&mut self, wait: Duration) -> Result<(), Error> {
        match self {
            Database::Sqlite(_) => Ok(()),
            Database::Postgres(db) => db.exclude_backups(wait).await,
        }
    }

    /// Backups may run again (see [`Database::exclude_backups`]).
    pub async fn backups_again(&mut self) {
        if let Database::Postgres(db) = self {
            db.backups_again().await
        }
    }

    /// The history table's rows, oldest first; empty if there is no table yet.
    pub async fn applied(&mut self) -> Result<Vec<Applied>, Error> {
        match self {
            Database::Sqlite(db) => db.applied(),
            Database::Postgres(db) => db.applied().await,
        }
    }

    /// dbward's repeatable-migration history; empty if there is no table yet.
    pub async fn applied_repeatable(&mut self) -> Result<Vec<AppliedRepeatable>, Error> {
        match self {
            Database::Sqlite(db) => db.applied_repeatable(),
            Database::Postgres(db) => db.applied_repeatable().await,
        }
    }

    /// Runs a query that returns one boolean (SQLite: a number, true when not 0): a health
    /// probe of the application's data.
    pub async fn probe(&mut self, sql: &str) -> Result<bool, Error> {
        match self {
            Database::Sqlite(db) => db.probe(sql),
            Database::Postgres(db) => db
                .client()
                .query_one(sql, &[])
                .await
                .map_err(|e| Error::db("running the probe", e))?
                .try_get::<_, bool>(0)
                .map_err(|e| {
                    Error::db(
                        "running the probe",
                        format!("{e} (a probe returns one boolean)"),
                    )
                }),
        }
    }

    /// Per-table counters of the application's writes, to tell how many a restore would discard:
    /// PostgreSQL's cumulative `n_tup_ins + n_tup_upd + n_tup_del` (`pg_stat_user_tables`,
    /// which other sessions report within about a second); SQLite's row counts (updates are
    /// invisible to them). dbward's own tables are left out.
    pub async fn write_counters(&mut self) -> Result<Counters, Error> {
        match self {
            Database::Sqlite(db) => db.row_counts().map(|tables| Counters {
                measure: Measure::Rows,
                tables,
            }),
            Database::Postgres(db) => db.write_counters().await.map(|tables| Counters {
                measure: Measure::Writes,
                tables,
            }),
        }
    }

    /// Whether the database holds tables of its own (not dbward's): a database to adopt with
    /// `baseline`, as opposed to an empty one for `migrate`.
    pub async fn has_user_tables(&mut self) -> Result<bool, Error> {
        match self {
            Database::Sqlite(db) => db.has_user_tables(),
            Database::Postgres(db) => db.has_user_tables().await,
        }
    }

    /// Records `files` as applied (with their checksums) without running them, in one
    /// transaction: the database already holds what they would create.
    pub async fn record(&mut self, files: &[&MigrationFile]) -> Result<(), Error> {
        match self {
            Database::Sqlite(db) => db.record(files),
            Database::Postgres(db) => db.record(files).await,
        }
    }

    /// Applies `batch` in one transaction, recording each file in its history table (versioned
    /// in refinery's, repeatable in dbward's); on any
    /// error nothing is applied. `lock_timeout` bounds each wait for a table lock
    /// (PostgreSQL `lock_timeout`; SQLite busy timeout). Returns the batch's transaction id on
    /// PostgreSQL (32 bits, as the WAL writes it).
    pub async fn apply(
        &mut self,
        batch: &[&MigrationFile],
        lock_timeout: Duration,
    ) -> Result<Option<u32>, Error> {
        match self {
            Database::Sqlite(db) => db.apply(batch, lock_timeout).map(|()| None),
            Database::Postgres(db) => db.apply(batch, lock_timeout).await,
        }
    }
}

impl Database {
    /// Runs a non-transactional file one statement at a time ([`crate::lint::split`]), each
    /// recorded in `dbward_statement_progress` as it completes; a rerun resumes after the last
    /// completed one. A statement that can run in a transaction runs in one with its record.
    /// Those that cannot wait at most `outside_wait` for each lock (`None`: as long as it takes,
    /// said every 10 s); the others `lock_timeout`. Once all completed, the file is recorded in
    /// the history table and its progress rows are removed, in one transaction.
    pub async fn apply_statements(
        &mut self,
        f: &MigrationFile,
        lock_timeout: Duration,
        outside_wait: Option<Duration>,
    ) -> Result<(), Error> {
        match self {
            Database::Sqlite(db) => db.apply_statements(f, lock_timeout, outside_wait),
            Database::Postgres(db) => db.apply_statements(f, lock_timeout, outside_wait).await,
        }
    }
}

impl Database {
    pub fn dialect(&self) -> crate::lint::Dialect {
        match self {
            Database::Sqlite(_) => crate::lint::Dialect::Sqlite,
            Database::Postgres(_) => crate::lint::Dialect::Postgres,
        }
    }

    /// The columns of `table` (PostgreSQL: in the first schema of the search path), or `None`
    /// when there is no such table.
    pub async fn columns(&mut self, table: &str) -> Result<Option<Vec<String>>, Error> {
        let ctx = |e: String| Error::db(format!("looking for the table {table}"), e);
        let names: Vec<String> = match self {
            Database::Sqlite(db) => {
                dbconn::sqlite::columns(db.conn(), table).map_err(|e| ctx(e.to_string()))?
            }
            Database::Postgres(db) => db
                .client()
                .query(
                    "SELECT column_name::text FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = $1",
                    &[&table],
                )
                .await
                .map_err(|e| ctx(e.to_string()))?
                .iter()
                .map(|r| r.get(0))
                .collect(),
        };
        Ok((!names.is_empty()).then_some(names))
    }

    /// Every row of a query, each value as text (`None` for NULL; SQLite's blobs in hex): how
    /// another tool's history is read, whatever types its columns have.
    pub async fn text_rows(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, Error> {
        let ctx = |e: String| Error::db(format!("reading `{sql}`"), e);
        match self {
            Database::Sqlite(db) => db.text_rows(sql).map_err(|e| ctx(e.to_string())),
            Database::Postgres(db) => {
                let messages = db
                    .client()
                    .simple_query(sql)
                    .await
                    .map_err(|e| ctx(e.to_string()))?;
                Ok(messages
                    .iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                        }
                        _ => None,
                    })
                    .collect())
            }
        }
    }

    /// How many statements of each partly applied non-transactional file completed, by
    /// version (empty when none is).
    pub async fn statement_progress(
        &mut self,
    ) -> Result<std::collections::BTreeMap<i64, i64>, Error> {
        let sql = format!(
            "SELECT version, count(completed_on) FROM {} GROUP BY version",
            dbconn::history::PROGRESS_TABLE
        );
        let ctx = |e: String| Error::db("reading the statements' progress", e);
        match self {
            Database::Sqlite(db) => db.progress(&sql).map_err(|e| ctx(e.to_string())),
            Database::Postgres(db) => {
                let c = db.client();
                let exists: bool = c
                    .query_one(
                        "SELECT to_regclass($1::text) IS NOT NULL",
                        &[&dbconn::history::PROGRESS_TABLE],
                    )
                    .await
                    .map_err(|e| ctx(e.to_string()))?
                    .get(0);
                if !exists {
                    return Ok(Default::default());
                }
                let rows = c.query(&sql, &[]).await.map_err(|e| ctx(e.to_string()))?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            }
        }
    }
}

/// How a rerun picks up a non-transactional file: how many statements completed, and whether
/// the next one was started (by an earlier run, with the same text).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Resume {
    pub done: usize,
    pub started: bool,
}

/// A statement's checksum in the progress table: SipHash-1-3 (zero keys) of its text.
pub(crate) fn statement_checksum(text: &str) -> String {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new();
    h.write(text.as_bytes());
    h.finish().to_string()
}

/// Reads a file's progress rows against its statements, and says where the run begins. The
/// completed ones must be the first ones, each with the text it ran; the statement after them
/// may have been started.
pub(crate) fn resume(
    f: &MigrationFile,
    statements: &[crate::lint::Statement],
    rows: &[dbconn::history::Progress],
) -> Result<Resume, Error> {
    let refuse = |message: String| Error::Resume {
        file: f.path.clone(),
        message,
    };
    let mut done = 0;
    let mut started = false;
    for row in rows {
        let i = usize::try_from(row.statement).unwrap_or(usize::MAX);
        if i != done || started {
            return Err(refuse(format!(
                "the record of its statements is out of order at statement {} (was {} edited by hand?)",
                row.statement + 1,
                dbconn::history::PROGRESS_TABLE
            )));
        }
        let Some(st) = statements.get(i) else {
            return Err(refuse(format!(
                "statement {} of it ran on {}, but the file now has {} statement(s): it was edited after it partly ran. Restore the statements that ran",
                i + 1,
                row.started_on,
                statements.len()
            )));
        };
        let same = statement_checksum(st.text(f)) == row.checksum;
        if row.completed {
            if !same {
                let (line, _) = f.line_col(st.range.start);
                return Err(refuse(format!(
                    "statement {} (line {line}) completed on {}, and its text has changed since: a partly applied file may change only in the statements that have not completed. Restore its text",
                    i + 1,
                    row.started_on
                )));
            }
            done += 1;
        } else {
            started = same;
            if !same {
                // The statement that failed was edited (a fix): it runs anew, and nothing an
                // earlier attempt of it left is taken for its own.
                break;
            }
        }
    }
    tracing::info!(
        "applying {} outside a transaction: {} statement(s), one at a time{}",
        f.file_name(),
        statements.len(),
        match done {
            0 => String::new(),
            n => format!(", resuming at statement {} ({n} completed earlier)", n + 1),
        }
    );
    Ok(Resume { done, started })
}
