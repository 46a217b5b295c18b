//! PostgreSQL: the migration lock is a session advisory lock held for the whole run; the batch
//! runs in one transaction with `SET LOCAL lock_timeout`, each file as one simple-query batch
//! (so files may end without `;` and hold `DO $$ ... $$` blocks).

use std::time::Duration;

use tokio_postgres::error::{ErrorPosition, SqlState};

use dbconn::history::{self, Applied, AppliedRepeatable};
use dbconn::postgres::{applied_on, describe, Postgres};
use dbconn::PgUrl;

use crate::error::{humanize, Error};
use crate::source::{Kind, MigrationFile};

/// A migration session: a connection ([`dbconn::postgres::Postgres`]) that takes the migration
/// lock and applies a batch.
pub struct Session {
    conn: Postgres,
}

impl std::ops::Deref for Session {
    type Target = Postgres;
    fn deref(&self) -> &Postgres {
        &self.conn
    }
}

impl Session {
    pub async fn connect(url: &PgUrl) -> Result<Session, Error> {
        Ok(Session {
            conn: Postgres::connect(url).await?,
        })
    }

    pub async fn has_user_tables(&mut self) -> Result<bool, Error> {
        Ok(self.conn.has_user_tables().await?)
    }

    /// Takes the migration lock ([`dbconn::lock::take`]), waiting at most `timeout`. Held
    /// until the connection closes (the process exits, or is killed: the server then releases
    /// it).
    pub async fn lock(&mut self, timeout: Duration) -> Result<(), Error> {
        Ok(dbconn::lock::take(&self.conn, timeout).await?)
    }

    pub async fn exclude_backups(&mut self, wait: Duration) -> Result<(), Error> {
        Ok(dbconn::lock::exclude_backups(&self.conn, wait).await?)
    }

    pub async fn backups_again(&mut self) {
        dbconn::lock::backups_again(&self.conn).await
    }

    pub async fn applied(&mut self) -> Result<Vec<Applied>, Error> {
        Ok(applied_on(self.conn.client()).await?)
    }

    pub async fn applied_repeatable(&mut self) -> Result<Vec<AppliedRepeatable>, Error> {
        let ctx =
            |e: tokio_postgres::Error| Error::db("reading the repeatable-migration history", e);
        let exists: bool = self
            .conn
            .client()
            .query_one(
                &format!(
                    "SELECT to_regclass('{}') IS NOT NULL",
                    history::REPEATABLE_TABLE
                ),
                &[],
            )
            .await
            .map_err(ctx)?
            .get(0);
        if !exists {
            return Ok(Vec::new());
        }
        let rows = self
            .conn
            .client()
            .query(history::SELECT_REPEATABLE, &[])
            .await
            .map_err(ctx)?;
        rows.iter()
            .map(|r| history::repeatable_row(r.get(0), r.get(1), r.get(2)))
            .collect::<Result<_, _>>()
            .map_err(Error::from)
    }

    /// `n_tup_ins + n_tup_upd + n_tup_del` per table (`schema.table`), after flushing this
    /// session's own pending statistics (PostgreSQL 15+; older servers report them a little
    /// later).
    pub async fn write_counters(
        &mut self,
    ) -> Result<std::collections::BTreeMap<String, i64>, Error> {
        let ctx = |e: tokio_postgres::Error| Error::db("reading pg_stat_user_tables", e);
        let flush = self
            .conn
            .client()
            .query_one(
                "SELECT to_regproc('pg_catalog.pg_stat_force_next_flush') IS NOT NULL",
                &[],
            )
            .await
            .map_err(ctx)?
            .get::<_, bool>(0);
        if flush {
            self.conn
                .client()
                .batch_execute("SELECT pg_catalog.pg_stat_force_next_flush()")
                .await
                .map_err(ctx)?;
        }
        // A fresh snapshot of the statistics (they are cached per transaction).
        self.conn
            .client()
            .batch_execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
            .await
            .map_err(ctx)?;
        let rows = self.conn.client()
            .query(
                &format!("SELECT schemaname || '.' || relname, (n_tup_ins + n_tup_upd + n_tup_del)::int8                  FROM pg_catalog.pg_stat_user_tables                  WHERE relname NOT IN ({})", dbconn::history::OWN_TABLES),
                &[],
            )
            .await
            .map_err(ctx)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Records `files` as applied without running them: versioned files in the history table,
    /// repeatable ones in dbward's, in one transaction.
    pub async fn record(&mut self, files: &[&MigrationFile]) -> Result<(), Error> {
        let c = &self.conn.client();
        let ctx = |e: tokio_postgres::Error| Error::db("recording migrations as applied", e);
        in_transaction(c, "BEGIN", ctx, async {
            c.batch_execute(history::CREATE).await.map_err(ctx)?;
            if files.iter().any(|f| f.kind == Kind::Repeatable) {
                c.batch_execute(history::CREATE_REPEATABLE)
                    .await
                    .map_err(ctx)?;
            }
            widen(c, files).await?;
            dbconn::identity::ensure_pg(c).await?;
            let schema = own_schema(c).await?;
            for f in files {
                let v = history::values(f.version, &f.name, f.checksum);
                match f.kind {
                    Kind::Versioned => c.execute(history::INSERT_PG, &v.as_params()).await,
                    Kind::Repeatable => {
                        c.execute(
                            history::UPSERT_REPEATABLE_PG,
                            &[&v.name, &v.applied_on, &v.checksum],
                        )
                        .await
                    }
                }
                .map_err(ctx)?;
            }
            record_texts(c, &schema, files).await
        })
        .await
    }

    /// Returns the batch's transaction id (32 bits, as the WAL writes it): what the guard's
    /// rewind leaves out when it counts the writes it discards.
    pub async fn apply(
        &mut self,
        batch: &[&MigrationFile],
        lock_timeout: Duration,
    ) -> Result<Option<u32>, Error> {
        let c = &self.conn.client();
        let ctx = |e: tokio_postgres::Error| Error::db("applying the batch", e);
        in_transaction(c, "BEGIN", ctx, async {
            c.batch_execute(&format!(
                "SET LOCAL lock_timeout = {}",
                lock_timeout.as_millis()
            ))
            .await
            .map_err(ctx)?;
            c.batch_execute(history::CREATE).await.map_err(ctx)?;
            widen(c, batch).await?;
            if batch.iter().any(|f| f.kind == Kind::Repeatable) {
                c.batch_execute(history::CREATE_REPEATABLE)
                    .await
                    .map_err(ctx)?;
            }
            dbconn::identity::ensure_pg(c).await?;
            // dbward's own statements name the history table with the schema it is in now: a
            // file may empty the search path (every pg_dump does).
            let schema = own_schema(c).await?;
            // Each file starts from the session state the batch started with, as if each ran
            // in its own psql: what one file SETs does not leak into the next.
            let reset = format!(
                "{} SET LOCAL lock_timeout = {};",
                session_reset(c).await?,
                lock_timeout.as_millis()
            );
            // One round trip per file (its statements, then the reset, in one simple query: the
            // newline ends a trailing `--` comment, the `;` a last statement without one), and
            // the history rows of the whole batch in one statement at its end.
            let mut versioned = history::Columns::default();
            let mut repeatable = history::Columns::default();
            for f in batch {
                tracing::info!("applying {}", f.file_name());
                let (sql, dropped) = crate::lint::executable(f, crate::lint::Dialect::Postgres);
                for what in dropped {
                    tracing::info!("{}:{what}", f.file_name());
                }
                c.batch_execute(&format!("{sql}\n;{reset}"))
                    .await
                    .map_err(|e| apply_error(f, &e, lock_timeout))?;
                let v = history::values(f.version, &f.name, f.checksum);
                match f.kind {
                    Kind::Versioned => versioned.push(v),
                    Kind::Repeatable => repeatable.push(v),
                }
                dbconn::failpoint::hit("migrate-mid-batch")
                    .map_err(|e| Error::db("applying the batch", e))?;
            }
            if !versioned.is_empty() {
                let v = &versioned;
                let rows = [
                    &v.versions as _,
                    &v.names as _,
                    &v.applied_on as _,
                    &v.checksums as _,
                ];
                c.execute(&history::insert_many_pg_in(&schema), &rows)
                    .await
                    .map_err(ctx)?;
                record_texts(c, &schema, batch).await?;
            }
            if !repeatable.is_empty() {
                let r = &repeatable;
                let rows = [&r.names as _, &r.applied_on as _, &r.checksums as _];
                c.execute(&history::upsert_many_repeatable_pg_in(&schema), &rows)
                    .await
                    .map_err(ctx)?;
            }
            // The batch always wrote (its history rows): it has an id.
            let xid: i64 = c
                .query_one("SELECT txid_current()", &[])
                .await
                .map_err(ctx)?
                .get(0);
            Ok(Some((xid as u64 % (1 << 32)) as u32))
        })
        .await
    }
}

/// A non-transactional file, statement by statement ([`super::Database::apply_statements`]).
impl Session {
    pub async fn apply_statements(
        &mut self,
        f: &MigrationFile,
        lock_timeout: Duration,
        outside_wait: Option<Duration>,
    ) -> Result<(), Error> {
        let statements = crate::lint::split(f, crate::lint::Dialect::Postgres);
        let c = self.conn.client();
        let ctx = |e: tokio_postgres::Error| Error::db("applying a non-transactional migration", e);
        c.batch_execute(&format!(
            "{}; {}",
            history::CREATE,
            history::CREATE_PROGRESS
        ))
        .await
        .map_err(ctx)?;
        widen(c, &[f]).await?;
        dbconn::identity::ensure_pg(c).await?;
        let schema = own_schema(c).await?;
        let progress = format!(
            "{}.{}",
            dbconn::sql::ident(&schema),
            history::PROGRESS_TABLE
        );
        let rows = progress_rows(c, &progress, f.version).await?;
        let resume = super::resume(f, &statements, &rows)?;
        let of = statements.len();
        let reset = session_reset(c).await?;
        let mark_started = format!(
            "INSERT INTO {progress} (version, statement, statement_checksum, started_on) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (version, statement) DO UPDATE SET statement_checksum = excluded.statement_checksum, \
             started_on = excluded.started_on, completed_on = NULL"
        );
        let mark_done = format!(
            "UPDATE {progress} SET completed_on = $3 WHERE version = $1 AND statement = $2"
        );
        for (i, st) in statements.iter().enumerate().skip(resume.done) {
            let text = st.text(f);
            let n = i as i32;
            let failed = |message: String, position: Option<(usize, usize)>| Error::Statement {
                file: f.path.clone(),
                position: position.or(Some(f.line_col(st.range.start))),
                statement: i + 1,
                of,
                message,
            };
            if resume.started && i == resume.done && self.completed_before(f, st).await? {
                tracing::info!(
                    "{}: statement {} of {of} (line {}) had completed before the last run stopped: recorded, not run again",
                    f.file_name(),
                    i + 1,
                    st.line
                );
                c.execute(&mark_done, &[&f.version, &n, &history::now()])
                    .await
                    .map_err(ctx)?;
                continue;
            }
            c.execute(
                &mark_started,
                &[
                    &f.version,
                    &n,
                    &super::statement_checksum(text),
                    &history::now(),
                ],
            )
            .await
            .map_err(ctx)?;
            dbconn::failpoint::hit("migrate-statement-started").map_err(|e| failed(e, None))?;
            if st.outside {
                let wait = outside_wait.map_or(0, |d| d.as_millis());
                c.batch_execute(&format!("SET lock_timeout = {wait}"))
                    .await
                    .map_err(ctx)?;
                self.run_watched(f, i, of, st)
                    .await
                    .map_err(|e| statement_error(f, st, &e, outside_wait, &failed))?;
                dbconn::failpoint::hit("migrate-statement-ran").map_err(|e| failed(e, None))?;
                if let Some(crate::lint::IndexChange::Create { index, table }) = &st.index {
                    match self.index_valid(table, index).await? {
                        Some((_, true)) => {}
                        Some((name, false)) => return Err(failed(format!("the index {name} it builds is INVALID (a concurrent build that failed, or one left by an earlier attempt that `IF NOT EXISTS` accepted). Drop it (`DROP INDEX CONCURRENTLY {name};`), then run `dbward migrate` again"), None)),
                        None => return Err(failed(format!("the index {index} on {table} it builds is not there after it ran"), None)),
                    }
                }
                c.execute(&mark_done, &[&f.version, &n, &history::now()])
                    .await
                    .map_err(ctx)?;
            } else {
                let begin = format!(
                    "BEGIN; SET LOCAL lock_timeout = {}",
                    lock_timeout.as_millis()
                );
                in_transaction(c, &begin, ctx, async {
                    c.batch_execute(text)
                        .await
                        .map_err(|e| statement_error(f, st, &e, Some(lock_timeout), &failed))?;
                    c.execute(&mark_done, &[&f.version, &n, &history::now()])
                        .await
                        .map_err(ctx)?;
                    Ok(())
                })
                .await?;
            }
        }
        // The session as it was, then the file's record and the end of its progress rows.
        c.batch_execute(&reset).await.map_err(ctx)?;
        record_file(c, &schema, &progress, f).await
    }

    /// Whether a statement an earlier run started (with the same text) is already done in the
    /// catalog: a concurrent build whose index is valid, a concurrent drop whose index is gone.
    /// An INVALID index that earlier attempt left is dropped here (it is that statement's: the
    /// run that started it was recorded), so the build starts anew.
    async fn completed_before(
        &self,
        f: &MigrationFile,
        st: &crate::lint::Statement,
    ) -> Result<bool, Error> {
        let ctx = |e: tokio_postgres::Error| Error::db("checking an earlier attempt's index", e);
        match &st.index {
            Some(crate::lint::IndexChange::Create { index, table }) => {
                match self.index_valid(table, index).await? {
                    Some((_, true)) => Ok(true),
                    Some((name, false)) => {
                        tracing::warn!(
                            "{}: dropping the INVALID index {name} that the interrupted attempt of its statement on line {} left, then building it again",
                            f.file_name(),
                            st.line
                        );
                        // Two queries: one simple query of two statements is a transaction.
                        let c = self.conn.client();
                        c.batch_execute("SET lock_timeout = 0").await.map_err(ctx)?;
                        c.batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                            .await
                            .map_err(ctx)?;
                        Ok(false)
                    }
                    None => Ok(false),
                }
            }
            Some(crate::lint::IndexChange::Drop { index }) => {
                let gone: bool = self
                    .conn
                    .client()
                    .query_one("SELECT to_regclass($1::text) IS NULL", &[index])
                    .await
                    .map_err(ctx)?
                    .get(0);
                Ok(gone)
            }
            None => Ok(false),
        }
    }

    /// The index `index` (as the file names it) of `table`, schema-qualified, and whether it is
    /// valid; `None` when there is no such index.
    async fn index_valid(&self, table: &str, index: &str) -> Result<Option<(String, bool)>, Error> {
        let row = self
            .conn
            .client()
            .query_opt(
                "SELECT format('%I.%I', n.nspname, c.relname), i.indisvalid \
                 FROM pg_catalog.pg_class t \
                 JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace \
                 JOIN pg_catalog.pg_index i ON i.indrelid = t.oid \
                 JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
                 WHERE t.oid = to_regclass($1::text) \
                   AND c.oid = to_regclass(format('%I', n.nspname) || '.' || $2::text)",
                &[&table, &index],
            )
            .await
            .map_err(|e| Error::db("checking the index's validity", e))?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Runs a statement that cannot run in a transaction, saying every 10 s what it is doing and
    /// what it waits for (from a second connection: the index build's phase and progress, the
    /// sessions it waits on).
    async fn run_watched(
        &self,
        f: &MigrationFile,
        i: usize,
        of: usize,
        st: &crate::lint::Statement,
    ) -> Result<(), tokio_postgres::Error> {
        const EVERY: Duration = Duration::from_secs(10);
        let c = self.conn.client();
        let pid = dbconn::postgres::backend_pid(c).await.ok();
        let started = std::time::Instant::now();
        let run = c.batch_execute(st.text(f));
        tokio::pin!(run);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + EVERY, EVERY);
        let mut watcher: Option<Postgres> = None;
        loop {
            tokio::select! {
                r = &mut run => return r,
                _ = tick.tick() => {
                    let what = match pid {
                        Some(pid) => self.what_it_waits_for(&mut watcher, pid).await,
                        None => String::new(),
                    };
                    tracing::info!(
                        "{}: statement {} of {of} (line {}) still running after {}s{what}",
                        f.file_name(),
                        i + 1,
                        st.line,
                        started.elapsed().as_secs()
                    );
                }
            }
        }
    }

    /// `: <phase>, blocks N of M; waiting for pid P (state since T: query)`, or nothing when it
    /// cannot be read within a few seconds.
    async fn what_it_waits_for(&self, watcher: &mut Option<Postgres>, pid: i32) -> String {
        const QUERY: &str = "SELECT \
            (SELECT p.phase || CASE WHEN p.blocks_total > 0 THEN format(', blocks %s of %s', p.blocks_done, p.blocks_total) ELSE '' END \
               FROM pg_catalog.pg_stat_progress_create_index p WHERE p.pid = $1), \
            (SELECT string_agg(format('pid %s (%s since %s: %s)', a.pid, coalesce(a.state, '?'), \
                      coalesce(to_char(a.xact_start, 'HH24:MI:SS'), '?'), left(coalesce(a.query, '?'), 80)), '; ') \
               FROM pg_catalog.pg_stat_activity a \
              WHERE a.pid = ANY (pg_catalog.pg_blocking_pids($1)) \
                 OR a.pid = (SELECT nullif(current_locker_pid, 0) FROM pg_catalog.pg_stat_progress_create_index WHERE pid = $1))";
        let look = async {
            if watcher.is_none() {
                *watcher = Some(Postgres::connect(self.conn.url()).await.ok()?);
            }
            let row = watcher
                .as_ref()?
                .client()
                .query_one(QUERY, &[&pid])
                .await
                .ok()?;
            let phase: Option<String> = row.get(0);
            let waits: Option<String> = row.get(1);
            Some(match (phase, waits) {
                (Some(p), Some(w)) => format!(": {p}; waiting for {w}"),
                (Some(p), None) => format!(": {p}"),
                (None, Some(w)) => format!("; waiting for {w}"),
                (None, None) => String::new(),
            })
        };
        tokio::time::timeout(Duration::from_secs(5), look)
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    }
}

/// A file's progress rows ([`history::PROGRESS_TABLE`]), in statement order.
async fn progress_rows(
    c: &tokio_postgres::Client,
    progress: &str,
    version: i64,
) -> Result<Vec<history::Progress>, Error> {
    let rows = c
        .query(
            &format!("SELECT statement::int8, statement_checksum, started_on, completed_on IS NOT NULL FROM {progress} WHERE version = $1 ORDER BY statement"),
            &[&version],
        )
        .await
        .map_err(|e| Error::db("reading the statements' progress", e))?;
    Ok(rows
        .iter()
        .map(|r| history::Progress {
            statement: r.get(0),
            checksum: r.get(1),
            started_on: r.get(2),
            completed: r.get(3),
        })
        .collect())
}

/// A non-transactional file whose statements all completed: its history row, and its progress
/// rows removed (by its version: its own), in one transaction.
async fn record_file(
    c: &tokio_postgres::Client,
    schema: &str,
    progress: &str,
    f: &MigrationFile,
) -> Result<(), Error> {
    let ctx = |e: tokio_postgres::Error| Error::db("recording a non-transactional migration", e);
    let mut row = history::Columns::default();
    row.push(history::values(f.version, &f.name, f.checksum));
    in_transaction(c, "BEGIN", ctx, async {
        let cols = [
            &row.versions as _,
            &row.names as _,
            &row.applied_on as _,
            &row.checksums as _,
        ];
        c.execute(&history::insert_many_pg_in(schema), &cols)
            .await
            .map_err(ctx)?;
        record_texts(c, schema, &[f]).await?;
        c.execute(
            &format!("DELETE FROM {progress} WHERE version = $1"),
            &[&f.version],
        )
        .await
        .map_err(ctx)?;
        Ok(())
    })
    .await
}

/// The text of each version with parts among `files`, in the column only such a history has
/// ([`history::add_text_pg_in`]), in the transaction that records them.
async fn record_texts(
    c: &tokio_postgres::Client,
    schema: &str,
    files: &[&MigrationFile],
) -> Result<(), Error> {
    let ctx = |e: tokio_postgres::Error| Error::db("recording versions with parts", e);
    let mut added = false;
    for f in files.iter().filter(|f| f.kind == Kind::Versioned) {
        if let Some(text) = &f.version_text {
            if !added {
                c.batch_execute(&history::add_text_pg_in(schema))
                    .await
                    .map_err(ctx)?;
                added = true;
            }
            c.execute(&history::set_text_pg_in(schema), &[&f.version, text])
                .await
                .map_err(ctx)?;
        }
    }
    Ok(())
}

/// Widens the history table's versions to BIGINT when one of `files` needs it
/// ([`history::WIDEN_PG`]), in the transaction that records them.
async fn widen(c: &tokio_postgres::Client, files: &[&MigrationFile]) -> Result<(), Error> {
    if history::needs_wide(files.iter().map(|f| f.version)) {
        c.batch_execute(history::WIDEN_PG)
            .await
            .map_err(|e| Error::db("widening the history table's versions to BIGINT", e))?;
    }
    Ok(())
}

/// Runs `body` in a transaction on `c`: `begin` (a `BEGIN`, with what must run first in the same
/// query), then `body`, then `COMMIT`, each failure of dbward's own statements said with `ctx`.
/// On any error, a `ROLLBACK` whose own error is ignored: the error that matters is the first
/// one, and a dead connection rolls back.
async fn in_transaction<T>(
    c: &tokio_postgres::Client,
    begin: &str,
    ctx: impl Fn(tokio_postgres::Error) -> Error,
    body: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let result = async {
        c.batch_execute(begin).await.map_err(&ctx)?;
        let value = body.await?;
        c.batch_execute("COMMIT").await.map_err(&ctx)?;
        Ok(value)
    }
    .await;
    if result.is_err() {
        let _ = c.batch_execute("ROLLBACK").await;
    }
    result
}

/// A statement of a non-transactional file that failed, with the place the server names in
/// the file, and what a lock wait that ran out was.
fn statement_error(
    f: &MigrationFile,
    st: &crate::lint::Statement,
    e: &tokio_postgres::Error,
    lock_timeout: Option<Duration>,
    failed: &dyn Fn(String, Option<(usize, usize)>) -> Error,
) -> Error {
    let mut message = describe(e);
    let mut position = None;
    if let Some(db) = e.as_db_error() {
        if let Some(ErrorPosition::Original(p)) = db.position() {
            let text = st.text(f);
            position = Some(f.line_col(st.range.start + char_to_byte(text, *p as usize)));
        }
        if db.code() == &SqlState::LOCK_NOT_AVAILABLE {
            let setting = if st.outside {
                "migrate.no_transaction_lock_timeout"
            } else {
                "database.table_lock_timeout"
            };
            message.push_str(&format!(
                "\nIt waited longer than {setting} ({}) for a lock another session holds.",
                lock_timeout.map_or("no limit".into(), humanize)
            ));
        }
    }
    failed(message, position)
}

/// The schema of the history table (dbward's own tables are made beside it): dbward's own
/// statements name it, as a file may empty the search path (every pg_dump does).
async fn own_schema(c: &tokio_postgres::Client) -> Result<String, Error> {
    let schema: Option<String> = c
        .query_one(
            "SELECT n.nspname::text FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE t.oid = to_regclass('refinery_schema_history')",
            &[],
        )
        .await
        .map_err(|e| Error::db("finding the history table", e))?
        .get(0);
    schema.ok_or_else(|| {
        Error::db(
            "finding the history table",
            "the history table is not on the search path",
        )
    })
}

/// What puts the session back as it was before a file ran (its `SET`s, its role), keeping the
/// client-connection check dbward's connection started with.
async fn session_reset(c: &tokio_postgres::Client) -> Result<String, Error> {
    let check_interval: Option<String> = c
        .query_one(
            "SELECT current_setting('client_connection_check_interval', true)",
            &[],
        )
        .await
        .map_err(|e| Error::db("reading the session's settings", e))?
        .get(0);
    let mut reset = "RESET ALL; RESET ROLE;".to_string();
    if let Some(v) = check_interval.filter(|v| !v.is_empty()) {
        reset.push_str(&format!(
            " SET client_connection_check_interval = {};",
            dbconn::sql::literal(&v)
        ));
    }
    Ok(reset)
}

fn apply_error(f: &MigrationFile, e: &tokio_postgres::Error, lock_timeout: Duration) -> Error {
    let mut message = describe(e);
    let mut position = None;
    let mut lock_wait = false;
    if let Some(db) = e.as_db_error() {
        if let Some(ErrorPosition::Original(p)) = db.position() {
            position = Some(f.line_col(char_to_byte(&f.sql, *p as usize)));
        }
        if db.code() == &SqlState::LOCK_NOT_AVAILABLE {
            lock_wait = true;
            message.push_str(&format!(
                "\nThe migration waited longer than database.table_lock_timeout ({}) for a lock another session holds \
                 (a long query or open transaction on the same table). It was stopped so it would not stall \
                 the application's queries behind it. Retry when that session is done, or raise database.table_lock_timeout \
                 (or migrate.lock_retries).",
                humanize(lock_timeout)
            ));
        }
    }
    Error::Apply {
        file: f.path.clone(),
        position,
        message,
        lock_wait,
    }
}

/// PostgreSQL reports 1-based character positions; the file is addressed in bytes.
fn char_to_byte(text: &str, pos: usize) -> usize {
    text.char_indices()
        .nth(pos.saturating_sub(1))
        .map_or(text.len(), |(i, _)| i)
}

#[cfg(test)]
mod tests {
    #[test]
    fn char_positions_become_byte_offsets() {
        assert_eq!(super::char_to_byte("ab\ncd", 5), 4);
        assert_eq!(super::char_to_byte("é\nx", 3), 3);
    }
}
