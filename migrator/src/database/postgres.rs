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
                "SELECT schemaname || '.' || relname, (n_tup_ins + n_tup_upd + n_tup_del)::int8                  FROM pg_catalog.pg_stat_user_tables                  WHERE relname NOT IN ('refinery_schema_history', 'dbward_identity', 'dbward_repeatable_history')",
                &[],
            )
            .await
            .map_err(ctx)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn record(&mut self, files: &[&MigrationFile]) -> Result<(), Error> {
        let c = &self.conn.client();
        let ctx = |e: tokio_postgres::Error| Error::db("recording the baseline", e);
        c.batch_execute("BEGIN").await.map_err(ctx)?;
        let result = async {
            c.batch_execute(history::CREATE).await.map_err(ctx)?;
            dbconn::identity::ensure_pg(c).await?;
            for f in files {
                c.execute(
                    history::INSERT_PG,
                    &history::values(f.version, &f.name, f.checksum).as_params(),
                )
                .await
                .map_err(ctx)?;
            }
            c.batch_execute("COMMIT").await.map_err(ctx)
        }
        .await;
        if result.is_err() {
            let _ = c.batch_execute("ROLLBACK").await;
        }
        result
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
        c.batch_execute("BEGIN").await.map_err(ctx)?;
        let result = async {
            c.batch_execute(&format!(
                "SET LOCAL lock_timeout = {}",
                lock_timeout.as_millis()
            ))
            .await
            .map_err(ctx)?;
            c.batch_execute(history::CREATE).await.map_err(ctx)?;
            if batch.iter().any(|f| f.kind == Kind::Repeatable) {
                c.batch_execute(history::CREATE_REPEATABLE)
                    .await
                    .map_err(ctx)?;
            }
            dbconn::identity::ensure_pg(c).await?;
            // dbward's own statements name the history table with the schema it is in now: a
            // file may empty the search path (every pg_dump does).
            let schema: Option<String> = c
                .query_one(
                    "SELECT n.nspname::text FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace \
                     WHERE t.oid = to_regclass('refinery_schema_history')",
                    &[],
                )
                .await
                .map_err(ctx)?
                .get(0);
            let schema = schema.ok_or_else(|| {
                Error::db("applying the batch", "the history table is not on the search path")
            })?;
            // Each file starts from the session state the batch started with, as if each ran
            // in its own psql: what one file SETs does not leak into the next.
            let check_interval: Option<String> = c
                .query_one(
                    "SELECT current_setting('client_connection_check_interval', true)",
                    &[],
                )
                .await
                .map_err(ctx)?
                .get(0);
            let mut reset = format!(
                "RESET ALL; RESET ROLE; SET LOCAL lock_timeout = {};",
                lock_timeout.as_millis()
            );
            if let Some(v) = check_interval.filter(|v| !v.is_empty()) {
                reset.push_str(&format!(
                    " SET client_connection_check_interval = {};",
                    dbconn::sql::literal(&v)
                ));
            }
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
                let rows = [&v.versions as _, &v.names as _, &v.applied_on as _, &v.checksums as _];
                c.execute(&history::insert_many_pg_in(&schema), &rows)
                    .await
                    .map_err(ctx)?;
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
            c.batch_execute("COMMIT").await.map_err(ctx)?;
            Ok(Some((xid as u64 % (1 << 32)) as u32))
        }
        .await;
        if result.is_err() {
            // Ignored: the error that matters is the one above, and a dead connection rolls back.
            let _ = c.batch_execute("ROLLBACK").await;
        }
        result
    }
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
