//! The migration lock on PostgreSQL: a session advisory lock (key [`LOCK_KEY`]) held for as
//! long as the session lives. `migrate` takes it for its batch; the guard's rewind takes it
//! before it stops the cluster and again on the restored one before its promotion, so no deploy
//! runs meanwhile. (SQLite's is a lock file: [`crate::sqlite::lock_file`].)

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::error::{humanize, Error};
use crate::postgres::{backend_pid, Postgres};

/// The advisory lock key: "dbward" and 1, so it is recognisable in `pg_locks`.
pub const LOCK_KEY: i64 = 0x6462_7761_7264_0001;

/// Takes the migration lock on `conn`'s session, waiting at most `timeout`. Held until the
/// connection closes (the process exits, or is killed: the server then releases it). Refused
/// behind a transaction-mode pooler, where a session lock cannot hold.
pub async fn take(conn: &Postgres, timeout: Duration) -> Result<(), Error> {
    conn.refuse_pooled().await?;
    // The session idles while a snapshot is taken: a server-wide `idle_session_timeout`
    // (PostgreSQL 14+) must not end it, and the lock with it, meanwhile.
    conn.client()
        .batch_execute(
            "SELECT set_config('idle_session_timeout', '0', false) \
             WHERE current_setting('server_version_num')::int >= 140000",
        )
        .await
        .map_err(|e| Error::db("setting the lock session's idle_session_timeout", e))?;
    let got: bool = conn
        .client()
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(|e| Error::db("taking the migration lock", e))?
        .get(0);
    if got {
        return check_session_lock(conn).await;
    }
    let holder = holder(conn.client()).await;
    tracing::info!(
        "waiting up to {} for the migration lock, held by {}",
        humanize(timeout),
        holder.as_deref().unwrap_or("another session")
    );
    let ms = timeout.as_millis().max(1);
    let started = Instant::now();
    let result = conn
        .client()
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
            check_session_lock(conn).await
        }
        Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
            let _ = conn.client().batch_execute("RESET lock_timeout").await;
            Err(Error::LockTimeout {
                what: conn.display().to_string(),
                waited: timeout,
                holder,
            })
        }
        Err(e) => Err(Error::db("waiting for the migration lock", e)),
    }
}

/// The backend that holds the migration lock.
async fn holder_pid(c: &Client) -> Result<Option<i32>, Error> {
    Ok(c.query_opt(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
           AND classid = ($1::int8 >> 32)::oid AND objid = ($1::int8 & 4294967295)::oid LIMIT 1",
        &[&LOCK_KEY],
    )
    .await
    .map_err(|e| Error::db("checking the migration lock", e))?
    .map(|r| r.get(0)))
}

/// After the lock was granted: it must be this session's.
async fn check_session_lock(conn: &Postgres) -> Result<(), Error> {
    let holder = holder_pid(conn.client()).await?;
    let mine = backend_pid(conn.client()).await?;
    if holder != Some(mine) {
        let _ = conn
            .client()
            .batch_execute(&format!("SELECT pg_advisory_unlock({LOCK_KEY})"))
            .await;
        return Err(Error::Pooled {
            what: conn.display().to_string(),
        });
    }
    Ok(())
}

/// Who holds the migration lock, for the message of a wait.
async fn holder(c: &Client) -> Option<String> {
    let row = c
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
