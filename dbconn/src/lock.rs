//! The migration lock on PostgreSQL: a session advisory lock (key [`LOCK_KEY`]) held for as
//! long as the session lives. `migrate` takes it for its batch; the guard's rewind takes it
//! before it stops the cluster and again on the restored one before its promotion, so no deploy
//! runs meanwhile. (SQLite's is a lock file: [`crate::sqlite::lock_file`].)
//!
//! Backups and batches share a second key, [`BACKUP_KEY`]: a `pg_dump` holds it shared for its
//! whole run, a migration batch exclusive while it runs, so DDL never queues behind a dump's
//! locks (stalling the application's queries behind it) and a dump never begins under a batch.
//! A dump's own session holds it; the key is per database.
//!
//! Scheduled jobs shared by several hosts take a lease: [`JobLease`] on [`BACKUP_JOB_KEY`],
//! [`DRILL_JOB_KEY`], [`BASE_JOB_KEY`] or [`PITR_DRILL_JOB_KEY`], before any other key.

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::error::{humanize, Error};
use crate::postgres::{backend_pid, Postgres};

/// The advisory lock key: "dbward" and 1, so it is recognisable in `pg_locks`.
pub const LOCK_KEY: i64 = 0x6462_7761_7264_0001;

/// Backups (shared) against batches (exclusive): "dbward" and 2.
pub const BACKUP_KEY: i64 = 0x6462_7761_7264_0002;

/// A scheduled job's lease across hosts (`[schedule] once_within`), one per kind of job: a
/// backup (with the retention after it, and `prune`): "dbward" and 3; a drill of a snapshot: 4;
/// a base backup: 5; a drill of a base and the WAL archive: 6. Taken first, never while a job
/// holds [`LOCK_KEY`] or [`BACKUP_KEY`], so no two of dbward's keys wait for each other.
pub const BACKUP_JOB_KEY: i64 = 0x6462_7761_7264_0003;
pub const DRILL_JOB_KEY: i64 = 0x6462_7761_7264_0004;
pub const BASE_JOB_KEY: i64 = 0x6462_7761_7264_0005;
pub const PITR_DRILL_JOB_KEY: i64 = 0x6462_7761_7264_0006;

/// How often a wait for a job's lease says who holds it.
const SAY_LEASE_EVERY: Duration = Duration::from_secs(30);

/// How often a wait for [`BACKUP_KEY`] says it is waiting.
const SAY_EVERY: Duration = Duration::from_secs(10);

/// Takes the migration lock on `conn`'s session, waiting at most `timeout`. Held until the
/// connection closes (the process exits, or is killed: the server then releases it). Refused
/// behind a transaction-mode pooler, where a session lock cannot hold.
pub async fn take(conn: &Postgres, timeout: Duration) -> Result<(), Error> {
    lock_session(conn).await?;
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

/// A session that will hold a lock while it idles: not behind a transaction-mode pooler, and
/// not ended by a server-wide `idle_session_timeout` (PostgreSQL 14+) meanwhile.
async fn lock_session(conn: &Postgres) -> Result<(), Error> {
    conn.refuse_pooled().await?;
    conn.client()
        .batch_execute(
            "SELECT set_config('idle_session_timeout', '0', false) \
             WHERE current_setting('server_version_num')::int >= 140000",
        )
        .await
        .map_err(|e| Error::db("setting the lock session's idle_session_timeout", e))
}

/// A scheduled job's lease ([`BACKUP_JOB_KEY`], [`DRILL_JOB_KEY`]): a session advisory lock on
/// a connection of its own, held while this value lives; a process that dies lets it go with
/// its session.
pub struct JobLease {
    _conn: Postgres,
}

impl JobLease {
    /// Takes `key` on a new session named `name` (its `application_name`, which a host waiting
    /// for it shows), waiting at most `wait` and saying every 30 s who holds it. `Ok(Err(holder))`
    /// when the wait ran out.
    pub async fn take(
        url: &crate::url::PgUrl,
        key: i64,
        name: &str,
        wait: Duration,
    ) -> Result<Result<JobLease, String>, Error> {
        let conn = Postgres::connect(url).await?;
        lock_session(&conn).await?;
        conn.client()
            .query_one("SELECT set_config('application_name', $1, false)", &[&name])
            .await
            .map_err(|e| Error::db("naming the lease's session", e))?;
        let started = Instant::now();
        let mut said = None::<Instant>;
        loop {
            let got: bool = conn
                .client()
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await
                .map_err(|e| Error::db("taking a scheduled job's lease", e))?
                .get(0);
            if got {
                return Ok(Ok(JobLease { _conn: conn }));
            }
            let holder = holder_of(conn.client(), key)
                .await
                .unwrap_or_else(|| "another session".into());
            if started.elapsed() >= wait {
                return Ok(Err(holder));
            }
            if said.is_none_or(|t| t.elapsed() >= SAY_LEASE_EVERY) {
                tracing::info!(
                    "waiting for {holder} (waited {} of at most {})",
                    humanize(started.elapsed()),
                    humanize(wait)
                );
                said = Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
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
    holder_of(c, LOCK_KEY).await
}

/// Who holds the advisory lock `key` in this database.
async fn holder_of(c: &Client, key: i64) -> Option<String> {
    let row = c
        .query_opt(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local socket'), \
                    to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ') \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid = ($1::int8 >> 32)::oid AND l.objid = ($1::int8 & 4294967295)::oid \
             LIMIT 1",
            &[&key],
        )
        .await
        .ok()??;
    let (pid, app, addr, since): (i32, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    Some(format!(
        "pid {pid} `{app}` from {addr}, connected since {since}"
    ))
}

/// The sessions other than this one holding [`BACKUP_KEY`] in `mode` (`ShareLock`: dumps,
/// `ExclusiveLock`: a batch), said as `pid N `app` from ADDR, running since T`.
async fn backup_key_holders(c: &Client, mode: &str) -> Result<Vec<String>, Error> {
    let rows = c
        .query(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local socket'), \
                    to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ') \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.mode = $2 AND l.pid <> pg_backend_pid() \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid = ($1::int8 >> 32)::oid AND l.objid = ($1::int8 & 4294967295)::oid",
            &[&BACKUP_KEY, &mode],
        )
        .await
        .map_err(|e| Error::db("looking for dbward backups and batches", e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let (pid, app, addr, since): (i32, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            format!("pid {pid} `{app}` from {addr}, running since {since}")
        })
        .collect())
}

/// A batch begins: [`BACKUP_KEY`] taken exclusive on this session (given back by
/// [`backups_again`], or when the session ends). With a dump running, waits for it at most
/// `wait` (zero: not at all), said every 10 s; then [`Error::Busy`], naming the dump.
pub async fn exclude_backups(conn: &Postgres, wait: Duration) -> Result<(), Error> {
    let started = Instant::now();
    let mut said = None::<Instant>;
    loop {
        let got: bool = conn
            .client()
            .query_one("SELECT pg_try_advisory_lock($1)", &[&BACKUP_KEY])
            .await
            .map_err(|e| Error::db("keeping backups out of the batch", e))?
            .get(0);
        if got {
            return Ok(());
        }
        let dumps = backup_key_holders(conn.client(), "ShareLock").await?;
        let who = if dumps.is_empty() {
            "another dbward job".to_string()
        } else {
            format!("a dbward backup ({})", dumps.join("; "))
        };
        if started.elapsed() >= wait {
            return Err(Error::Busy {
                message: format!(
                    "{who} is dumping {}: DDL now would queue behind the dump's locks and stall the application's queries behind it. Nothing was applied; run the deploy again once the backup is done, or pass --wait-for-backup",
                    conn.display()
                ),
            });
        }
        if said.is_none_or(|t| t.elapsed() >= SAY_EVERY) {
            tracing::info!(
                "waiting for {who} to finish before the batch (waited {} of {})",
                humanize(started.elapsed()),
                humanize(wait)
            );
            said = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The batch is over: backups may run again.
pub async fn backups_again(conn: &Postgres) {
    let _ = conn
        .client()
        .query_one("SELECT pg_advisory_unlock($1)", &[&BACKUP_KEY])
        .await;
}

/// A dump ended: [`BACKUP_KEY`] given back on `c`'s session now (waiting at most 10 s), not
/// when the closing connection's backend ends: a batch looking right after (the deploy whose
/// pre-deploy dump this was) must not find it still held.
pub async fn dump_done(c: &Client) {
    let sql = format!("ROLLBACK; SELECT pg_advisory_unlock_shared({BACKUP_KEY})");
    let unlock = c.batch_execute(&sql);
    if tokio::time::timeout(Duration::from_secs(10), unlock)
        .await
        .is_err()
    {
        tracing::warn!(
            "giving the backups' lock back took more than 10 s; it goes with the session"
        );
    }
}

/// A dump begins: [`BACKUP_KEY`] taken shared on `c`'s session, held until it ends. A batch
/// running (it holds the key exclusive) is waited for at most `wait`, said every 10 s; then
/// [`Error::Busy`].
pub async fn share_with_backups(c: &Client, what: &str, wait: Duration) -> Result<(), Error> {
    let started = Instant::now();
    let mut said = None::<Instant>;
    loop {
        let got: bool = c
            .query_one("SELECT pg_try_advisory_lock_shared($1)", &[&BACKUP_KEY])
            .await
            .map_err(|e| Error::db("taking the backups' lock", e))?
            .get(0);
        if got {
            return Ok(());
        }
        let batch = backup_key_holders(c, "ExclusiveLock").await?.join("; ");
        if started.elapsed() >= wait {
            return Err(Error::Busy {
                message: format!(
                    "a migration batch of {what} ({batch}) ran for all of the {} this backup waited; nothing was dumped: try again once it is done",
                    humanize(wait)
                ),
            });
        }
        if said.is_none_or(|t| t.elapsed() >= SAY_EVERY) {
            tracing::info!(
                "waiting for the migration batch of {what} ({batch}) before dumping (waited {} of {})",
                humanize(started.elapsed()),
                humanize(wait)
            );
            said = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
