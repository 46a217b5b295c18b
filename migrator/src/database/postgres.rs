//! PostgreSQL: the migration lock is a session advisory lock held for the whole run; the batch
//! runs in one transaction with `SET LOCAL lock_timeout`, each file as one simple-query batch
//! (so files may end without `;` and hold `DO $$ ... $$` blocks).

use std::time::{Duration, Instant};

use tokio_postgres::error::{DbError, ErrorPosition, SqlState};
use tokio_postgres::Client;

use super::url::PgUrl;
use super::{history, tls};
use crate::error::{humanize, Error};
use crate::plan::{Applied, AppliedRepeatable};
use crate::source::{Kind, MigrationFile};

/// The advisory lock key: "dbward" and 1, so it is recognisable in `pg_locks`.
pub const LOCK_KEY: i64 = 0x6462_7761_7264_0001;

pub struct Postgres {
    client: Client,
    display: String,
    url: Box<PgUrl>,
}

impl Postgres {
    pub async fn connect(url: &PgUrl) -> Result<Postgres, Error> {
        let connector = tls::connector(url)?;
        let (client, connection) =
            url.config
                .connect(connector)
                .await
                .map_err(|e| Error::Open {
                    what: url.display.clone(),
                    message: describe(&e),
                })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("postgres connection closed: {e}");
            }
        });
        // If dbward dies mid-batch, the server would run the orphaned statement to its end,
        // holding its locks. From PostgreSQL 14 it can check for a dead client while a query runs.
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(|e| Error::db("reading the server version", describe(&e)))?
            .get(0);
        if version >= 140000 {
            client
                .batch_execute("SET client_connection_check_interval = 1000")
                .await
                .map_err(|e| Error::db("setting client_connection_check_interval", describe(&e)))?;
        }
        Ok(Postgres {
            client,
            display: url.display.clone(),
            url: Box::new(url.clone()),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Takes the session advisory lock, waiting at most `timeout`. Held until the connection
    /// closes (the process exits, or is killed: the server then releases it).
    pub async fn lock(&mut self, timeout: Duration) -> Result<(), Error> {
        self.refuse_pooled().await?;
        let got: bool = self
            .client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(|e| Error::db("taking the migration lock", describe(&e)))?
            .get(0);
        if got {
            return self.check_session_lock().await;
        }
        let holder = self.lock_holder().await;
        tracing::info!(
            "waiting up to {} for the migration lock, held by {}",
            humanize(timeout),
            holder.as_deref().unwrap_or("another session")
        );
        let ms = timeout.as_millis().max(1);
        let started = Instant::now();
        let result = self
            .client
            .batch_execute(&format!(
                "SET lock_timeout = {ms}; SELECT pg_advisory_lock({LOCK_KEY}); RESET lock_timeout;"
            ))
            .await;
        match result {
            Ok(()) => {
                tracing::info!(
                    "got the migration lock after {}",
                    humanize(started.elapsed())
                );
                self.check_session_lock().await
            }
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                let _ = self.client.batch_execute("RESET lock_timeout").await;
                Err(Error::LockTimeout {
                    what: self.display.clone(),
                    waited: timeout,
                    holder,
                })
            }
            Err(e) => Err(Error::db("waiting for the migration lock", describe(&e))),
        }
    }

    /// The backend that holds the migration lock.
    async fn lock_holder_pid(c: &Client) -> Result<Option<i32>, Error> {
        Ok(c.query_opt(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
               AND classid = ($1::int8 >> 32)::oid AND objid = ($1::int8 & 4294967295)::oid LIMIT 1",
            &[&LOCK_KEY],
        )
        .await
        .map_err(|e| Error::db("checking the migration lock", describe(&e)))?
        .map(|r| r.get(0)))
    }

    async fn my_pid(c: &Client) -> Result<i32, Error> {
        Ok(c.query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(|e| Error::db("checking the connection", describe(&e)))?
            .get(0))
    }

    /// A session lock only protects a run whose statements all reach one server session. Behind
    /// a transaction-mode pooler (PgBouncer, Supavisor, the pooled endpoints of managed
    /// services) they do not: the lock would stay on a pooled server connection after dbward
    /// exits, and every later run would wait for a lock nobody holds. The probe: between two
    /// statements of this connection, a second connection opens a transaction (a pooler must
    /// give it a server connection to itself; most recently used first, that is the one this
    /// connection just used). Directly, this connection's backend never changes and the second
    /// one never shares it.
    pub async fn refuse_pooled(&self) -> Result<(), Error> {
        let before = Self::my_pid(&self.client).await?;
        let other = Postgres::connect(&self.url).await?;
        other
            .client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| Error::db("checking the connection", describe(&e)))?;
        let theirs = Self::my_pid(&other.client).await?;
        let after = Self::my_pid(&self.client).await?;
        let _ = other.client.batch_execute("ROLLBACK").await;
        if before != after || theirs == before {
            return Err(Error::Pooled {
                what: self.display.clone(),
            });
        }
        Ok(())
    }

    /// After the lock was granted: it must be this session's.
    async fn check_session_lock(&mut self) -> Result<(), Error> {
        let holder = Self::lock_holder_pid(&self.client).await?;
        let mine = Self::my_pid(&self.client).await?;
        if holder != Some(mine) {
            let _ = self
                .client
                .batch_execute(&format!("SELECT pg_advisory_unlock({LOCK_KEY})"))
                .await;
            return Err(Error::Pooled {
                what: self.display.clone(),
            });
        }
        Ok(())
    }

    async fn lock_holder(&self) -> Option<String> {
        let row = self
            .client
            .query_opt(
                "SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local socket'), \
                        to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ') \
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted \
                   AND l.classid = ($1::int8 >> 32)::oid AND l.objid = ($1::int8 & 4294967295)::oid \
                 LIMIT 1",
                &[&LOCK_KEY],
            )
            .await
            .ok()??;
        let (pid, app, addr, since): (i32, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        Some(format!(
            "pid {pid} `{app}` from {addr}, connected since {since}"
        ))
    }

    pub async fn applied(&mut self) -> Result<Vec<Applied>, Error> {
        applied_on(&self.client).await
    }

    pub async fn applied_repeatable(&mut self) -> Result<Vec<AppliedRepeatable>, Error> {
        let ctx = |e: tokio_postgres::Error| {
            Error::db("reading the repeatable-migration history", describe(&e))
        };
        let exists: bool = self
            .client
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
            .client
            .query(history::SELECT_REPEATABLE, &[])
            .await
            .map_err(ctx)?;
        rows.iter()
            .map(|r| history::repeatable_row(r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    /// `n_tup_ins + n_tup_upd + n_tup_del` per table (`schema.table`), after flushing this
    /// session's own pending statistics (PostgreSQL 15+; older servers report them a little
    /// later).
    pub async fn write_counters(
        &mut self,
    ) -> Result<std::collections::BTreeMap<String, i64>, Error> {
        let ctx = |e: tokio_postgres::Error| Error::db("reading pg_stat_user_tables", describe(&e));
        let flush = self
            .client
            .query_one(
                "SELECT to_regproc('pg_catalog.pg_stat_force_next_flush') IS NOT NULL",
                &[],
            )
            .await
            .map_err(ctx)?
            .get::<_, bool>(0);
        if flush {
            self.client
                .batch_execute("SELECT pg_catalog.pg_stat_force_next_flush()")
                .await
                .map_err(ctx)?;
        }
        // A fresh snapshot of the statistics (they are cached per transaction).
        self.client
            .batch_execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
            .await
            .map_err(ctx)?;
        let rows = self
            .client
            .query(
                "SELECT schemaname || '.' || relname, (n_tup_ins + n_tup_upd + n_tup_del)::int8                  FROM pg_catalog.pg_stat_user_tables                  WHERE relname NOT IN ('refinery_schema_history', 'dbward_identity', 'dbward_repeatable_history')",
                &[],
            )
            .await
            .map_err(ctx)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn has_user_tables(&mut self) -> Result<bool, Error> {
        Ok(self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg\\_%' AND c.relname NOT IN ('refinery_schema_history', 'dbward_identity', 'dbward_repeatable_history'))",
                &[],
            )
            .await
            .map_err(|e| Error::db("reading the schema", describe(&e)))?
            .get(0))
    }

    pub async fn record(&mut self, files: &[&MigrationFile]) -> Result<(), Error> {
        let c = &self.client;
        let ctx = |e: tokio_postgres::Error| Error::db("recording the baseline", describe(&e));
        c.batch_execute("BEGIN").await.map_err(ctx)?;
        let result = async {
            c.batch_execute(history::CREATE).await.map_err(ctx)?;
            super::identity::ensure_pg(c).await?;
            for f in files {
                c.execute(history::INSERT_PG, &history::values(f).as_params())
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

    pub async fn apply(
        &mut self,
        batch: &[&MigrationFile],
        lock_timeout: Duration,
    ) -> Result<(), Error> {
        let c = &self.client;
        let ctx = |e: tokio_postgres::Error| Error::db("applying the batch", describe(&e));
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
            super::identity::ensure_pg(c).await?;
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
            let insert = history::insert_pg_in(&schema);
            let upsert = history::upsert_repeatable_pg_in(&schema);
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
                    crate::sql::literal(&v)
                ));
            }
            for f in batch {
                tracing::info!("applying {}", f.file_name());
                let (sql, dropped) = f.executable_sql();
                for line in dropped {
                    tracing::info!(
                        "{}:{line}: dropping pg_dump's psql meta-command (not SQL)",
                        f.file_name()
                    );
                }
                c.batch_execute(&sql)
                    .await
                    .map_err(|e| apply_error(f, &e, lock_timeout))?;
                c.batch_execute(&reset).await.map_err(ctx)?;
                let v = history::values(f);
                match f.kind {
                    Kind::Versioned => c.execute(&insert, &v.as_params()).await,
                    Kind::Repeatable => {
                        c.execute(&upsert, &[&v.name, &v.applied_on, &v.checksum])
                            .await
                    }
                }
                .map_err(ctx)?;
                crate::failpoint::hit("migrate-mid-batch")
                    .map_err(|e| Error::db("applying the batch", e))?;
            }
            c.batch_execute("COMMIT").await.map_err(ctx)
        }
        .await;
        if result.is_err() {
            // Ignored: the error that matters is the one above, and a dead connection rolls back.
            let _ = c.batch_execute("ROLLBACK").await;
        }
        result
    }
}

/// The history rows as `client` sees them (inside its transaction, if one is open).
pub async fn applied_on(client: &Client) -> Result<Vec<Applied>, Error> {
    let exists: bool = client
        .query_one(
            &format!("SELECT to_regclass('{}') IS NOT NULL", history::TABLE),
            &[],
        )
        .await
        .map_err(|e| Error::db("reading the migration history", describe(&e)))?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(history::SELECT, &[])
        .await
        .map_err(|e| Error::db("reading the migration history", describe(&e)))?;
    rows.iter()
        .map(|r| history::row(r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn apply_error(f: &MigrationFile, e: &tokio_postgres::Error, lock_timeout: Duration) -> Error {
    let mut message = describe(e);
    let mut position = None;
    if let Some(db) = e.as_db_error() {
        if let Some(ErrorPosition::Original(p)) = db.position() {
            position = Some(f.line_col(char_to_byte(&f.sql, *p as usize)));
        }
        if db.code() == &SqlState::LOCK_NOT_AVAILABLE {
            message.push_str(&format!(
                "\nThe migration waited longer than database.lock_timeout ({}) for a lock another session holds \
                 (a long query or open transaction on the same table). It was stopped so it would not stall \
                 the application's queries behind it. Retry when that session is done, or raise database.lock_timeout.",
                humanize(lock_timeout)
            ));
        }
    }
    Error::Apply {
        file: f.path.clone(),
        position,
        message,
    }
}

/// PostgreSQL reports 1-based character positions; the file is addressed in bytes.
fn char_to_byte(text: &str, pos: usize) -> usize {
    text.char_indices()
        .nth(pos.saturating_sub(1))
        .map_or(text.len(), |(i, _)| i)
}

/// The server's own words: severity, message, detail, hint, where.
pub fn describe(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        // Client-side: connection refused, TLS failure, ... `source` holds the reason.
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            s.push_str(&format!(": {inner}"));
            src = inner.source();
        }
        return s;
    };
    db_message(db)
}

fn db_message(db: &DbError) -> String {
    let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    if let Some(d) = db.detail() {
        s.push_str(&format!("\n  detail: {d}"));
    }
    if let Some(h) = db.hint() {
        s.push_str(&format!("\n  hint: {h}"));
    }
    if let Some(w) = db.where_() {
        s.push_str(&format!("\n  where: {w}"));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn char_positions_become_byte_offsets() {
        assert_eq!(super::char_to_byte("ab\ncd", 5), 4);
        assert_eq!(super::char_to_byte("é\nx", 3), 3);
    }
}
