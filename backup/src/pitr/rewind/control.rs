//! The cluster's stop and start around a rewind, and the promotion of the restored one on the
//! session that holds the migration lock: `[pitr.server]`'s commands run with `sh -c`, bounded,
//! and the data directory's own files (`postmaster.pid`) read for what the server does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dbconn::error::humanize;
use dbconn::fs::rename_new;
use dbconn::postgres::Postgres;
use dbconn::PgUrl;

use super::{Cluster, Error, GONE_LIMIT, LOCK_ON_RESTORED, RECOVERY_LIMIT, STOP_LIMIT};
use crate::error::chain;
use crate::pitr::cluster::NewDir;
use crate::pitr::server;

/// Waits for the postmaster on `data_dir` to exit; its pid if it still runs after
/// [`STOP_LIMIT`] (a stop command may return before it is gone). After a `stop` that failed
/// (`stop_failed`), only while the postmaster says it is shutting down (`postmaster.pid`:
/// `stopping`), or for [`GONE_LIMIT`]: a server still serving is not waited on for minutes.
async fn wait_stopped(data_dir: &Path, stop_failed: bool) -> Option<i32> {
    let waited = Instant::now();
    loop {
        let pid = server::postmaster_pid(data_dir)?;
        let stopping = server::postmaster_state(data_dir).as_deref() == Some("stopping");
        if waited.elapsed() > STOP_LIMIT
            || (stop_failed && !stopping && waited.elapsed() > GONE_LIMIT)
        {
            return Some(pid);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// After a start on the restored directory that did not promote: stop it, move it back to its
/// partial name (removed with `dir`), put the old directory back and start it. A restored
/// directory that promoted after all is kept, never removed.
pub(super) async fn put_back(cfg: &Cluster, mut dir: NewDir, kept: &Path, why: Error) -> Error {
    let why = chain(&why);
    let data_dir = &cfg.data_dir;
    tracing::error!("rewind failed: {why}; putting the old data directory back");
    let (_, still) = stop_cluster(cfg, data_dir, None).await;
    if let Some(pid) = still {
        // The restored directory keeps its name: it is not moved under a live server.
        dir.keep();
        return Error::Failed(format!(
            "{why}; and the restored cluster does not stop (postmaster {pid}). The old data directory is kept at {}: stop the cluster, move {} away, move {} back, and start it",
            kept.display(),
            data_dir.display(),
            kept.display()
        ));
    }
    let promoted = !data_dir.join("recovery.signal").exists();
    let moved = if promoted {
        // It promoted after all: it may hold writes. Kept under a name of its own.
        let aside = PathBuf::from(format!(
            "{}.dbward-rewound-{}",
            data_dir.display(),
            crate::manifest::compact_stamp(time::OffsetDateTime::now_utc())
        ));
        dir.keep();
        tracing::warn!(
            "the restored cluster had promoted: it is kept as {}",
            aside.display()
        );
        rename_new(data_dir, &aside).and_then(|()| rename_new(kept, data_dir))
    } else {
        // Never promoted: back at its partial name, and removed with `dir`.
        let r = dir.unpublish().and_then(|()| rename_new(kept, data_dir));
        drop(dir);
        r
    };
    if let Err(e) = moved {
        return Error::Failed(format!(
            "{why}; and putting the old data directory back failed: {e}. It is kept at {}: move it back to {} and start the cluster",
            kept.display(),
            data_dir.display()
        ));
    }
    match start_and_wait(cfg, data_dir, Wait::Ready).await {
        Ok(_) => Error::Failed(format!(
            "{why}; the old cluster was put back and runs again, unchanged"
        )),
        Err(e) => {
            let said = format!(
                "{why}; the old data directory was put back in {}, but it did not start: {e}. THE CLUSTER IS DOWN: start it by hand: {}",
                data_dir.display(),
                cfg.start
            );
            tracing::error!("{said}");
            Error::Failed(said)
        }
    }
}

/// What a start waits for.
#[derive(Clone, Copy)]
pub(super) enum Wait<'a> {
    /// The postmaster takes connections (`postmaster.pid` says `ready`).
    Ready,
    /// Recovery paused at the restore point (`lsn`), read-only; then the migration lock is
    /// taken on `url` and the server promoted on that session: no write is possible before
    /// the lock is held.
    Promoted { pg: &'a PgUrl, lsn: u64 },
}

/// Runs `stop` (bounded by `pitr.server.stop_timeout`), holding `lock` (the migration lock's
/// session) until the server is shutting down: from then on it refuses new connections, so no
/// deploy can start in between. Then waits for the postmaster to exit ([`wait_stopped`]).
/// Returns `stop`'s own result and the pid of a postmaster that still runs.
pub(super) async fn stop_cluster(
    cfg: &Cluster,
    data_dir: &Path,
    mut lock: Option<Postgres>,
) -> (Result<(), Error>, Option<i32>) {
    let stop = run(cfg, &cfg.stop, cfg.stop_limit);
    tokio::pin!(stop);
    let result = loop {
        tokio::select! {
            r = &mut stop => break r,
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                let shutting_down = server::postmaster_pid(data_dir).is_none()
                    || server::postmaster_state(data_dir).as_deref() == Some("stopping");
                if lock.is_some() && shutting_down {
                    lock = None;
                }
            }
        }
    };
    drop(lock);
    let still = wait_stopped(data_dir, result.is_err()).await;
    (result, still)
}

/// Runs `pitr.server.start` (bounded by `pitr.server.start_timeout`) and meanwhile watches the
/// data directory's own files until the server on `data_dir` is as `wait` says (for
/// [`Wait::Ready`] no connection is needed, so a pool that takes every connection cannot stall
/// it): a server that is ready is not kept waiting on a `start` that has not returned. A
/// postmaster gone for [`GONE_LIMIT`] once `start` returned is a failed start, tried once more
/// (a `start` killed by a signal meant for dbward, as systemd sends to a whole unit); `start`'s
/// own exit status only counts when no postmaster runs. For [`Wait::Promoted`], the migration
/// lock is taken as soon as the server takes connections (in recovery, read-only), and once
/// recovery paused at the point the server is promoted on that session, which is returned:
/// the lock held.
pub(super) async fn start_and_wait(
    cfg: &Cluster,
    data_dir: &Path,
    wait: Wait<'_>,
) -> Result<Option<Postgres>, Error> {
    let mut tries = 0;
    let began = Instant::now();
    'start: loop {
        tries += 1;
        // The session of a server that went away is of no use on the next one.
        let mut lock: Option<Postgres> = None;
        let mut connectable_since: Option<Instant> = None;
        let start = run(cfg, &cfg.start, cfg.start_limit);
        tokio::pin!(start);
        let mut returned: Option<Result<(), Error>> = None;
        let mut gone_since: Option<Instant> = None;
        loop {
            tokio::select! {
                r = &mut start, if returned.is_none() => returned = Some(r),
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            match server::postmaster_state(data_dir) {
                Some(state) => {
                    gone_since = None;
                    match wait {
                        Wait::Ready => {
                            if state == "ready" {
                                return Ok(None);
                            }
                        }
                        Wait::Promoted { pg, lsn } => {
                            if !data_dir.join("recovery.signal").exists() {
                                // Recovery is set to pause: only a promotion from elsewhere
                                // ends it, and writes may have begun without the lock.
                                return Err(Error::Failed(format!(
                                    "the restored cluster on {} was promoted, but not by dbward (recovery pauses at the point for it to take the migration lock first)",
                                    data_dir.display()
                                )));
                            }
                            if state != "standby" && state != "ready" {
                                continue;
                            }
                            let since = *connectable_since.get_or_insert_with(Instant::now);
                            if lock.is_none() {
                                lock = try_lock(pg).await;
                            }
                            if let Some(db) = lock.as_mut() {
                                match paused_at(db, lsn).await {
                                    Ok(true) => {
                                        promote(db, data_dir).await?;
                                        return Ok(lock);
                                    }
                                    Ok(false) => {} // still replaying
                                    Err(e) => {
                                        tracing::warn!("rewind: the session holding the migration lock on the restored cluster failed ({}); taking it again", chain(&e));
                                        lock = None;
                                        connectable_since = Some(Instant::now());
                                    }
                                }
                            } else if since.elapsed() > LOCK_ON_RESTORED {
                                return Err(Error::Failed(format!(
                                    "the migration lock could not be taken on the restored cluster within {} of its taking connections (are they all taken?); it was not promoted",
                                    humanize(LOCK_ON_RESTORED)
                                )));
                            }
                        }
                    }
                }
                None => {
                    lock = None;
                    connectable_since = None;
                    let Some(result) = &returned else {
                        continue; // `start` still runs (and is bounded)
                    };
                    let since = *gone_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > GONE_LIMIT {
                        if tries < 2 {
                            tracing::warn!(
                                "no server runs on {} after `{}` ({}): starting it once more",
                                data_dir.display(),
                                cfg.start,
                                result
                                    .as_ref()
                                    .err()
                                    .map(|e| chain(e))
                                    .unwrap_or_else(|| "it returned".into())
                            );
                            continue 'start;
                        }
                        return Err(Error::Failed(match result {
                            Err(e) => chain(e),
                            Ok(()) => format!(
                                "the server on {} stopped (its log says why: a restore point never reached ends recovery)",
                                data_dir.display()
                            ),
                        }));
                    }
                }
            }
            if began.elapsed() > RECOVERY_LIMIT {
                return Err(Error::Failed(format!(
                    "the server on {} did not finish starting within {}",
                    data_dir.display(),
                    humanize(RECOVERY_LIMIT)
                )));
            }
        }
    }
}

/// Whether recovery paused at the restore point (`lsn` replayed).
async fn paused_at(db: &Postgres, lsn: u64) -> Result<bool, Error> {
    let sql = format!(
        "SELECT pg_get_wal_replay_pause_state() = 'paused' AND pg_last_wal_replay_lsn() >= '{}'::pg_lsn",
        crate::pitr::base::lsn_text(lsn)
    );
    match tokio::time::timeout(Duration::from_secs(30), ask(db, &sql)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Failed("no answer within 30 s".into())),
    }
}

/// Promotes the paused server on the session that holds the migration lock (`pg_promote`,
/// waiting up to a minute), then checks that its `recovery.signal` is gone.
async fn promote(db: &Postgres, data_dir: &Path) -> Result<(), Error> {
    tracing::info!("rewind: recovery paused at the restore point; promoting the cluster");
    let done = tokio::time::timeout(
        Duration::from_secs(90),
        ask(db, "SELECT pg_promote(true, 60)"),
    )
    .await;
    let failed = |why: String| Err(Error::Failed(why));
    match done {
        Ok(Ok(true)) if !data_dir.join("recovery.signal").exists() => Ok(()),
        Ok(Ok(_)) => {
            failed("the restored cluster did not promote within 60 s of `pg_promote`".into())
        }
        Ok(Err(e)) => failed(format!("promoting the restored cluster: {}", chain(&e))),
        Err(_) => {
            failed("promoting the restored cluster: no answer to `pg_promote` within 90 s".into())
        }
    }
}

/// The one boolean `sql` returns on `db`'s session.
async fn ask(db: &Postgres, sql: &str) -> Result<bool, Error> {
    let row = db
        .client()
        .query_one(sql, &[])
        .await
        .map_err(|e| dbconn::Error::db(format!("asking `{sql}`"), e))?;
    row.try_get::<_, bool>(0)
        .map_err(|e| Error::Failed(format!("`{sql}` did not return one boolean: {e}")))
}

/// The migration lock on `pg`, if it can be had at once (a server still starting answers
/// nothing, or refuses).
async fn try_lock(pg: &PgUrl) -> Option<Postgres> {
    let locked = tokio::time::timeout(Duration::from_secs(5), async {
        let conn = Postgres::connect(pg).await?;
        dbconn::lock::take(&conn, Duration::from_millis(200)).await?;
        Ok::<_, dbconn::Error>(conn)
    })
    .await;
    match locked {
        Ok(Ok(db)) => {
            tracing::info!("rewind: the migration lock is held on the restored cluster");
            Some(db)
        }
        _ => None,
    }
}

/// Runs a `[pitr.server]` command line with `sh -c` (an operator's command:
/// `dbconn::child::user`), killed with its process group past `limit`. Its output goes to a
/// file (a server it starts may keep inherited pipes open for as long as it runs), then to the
/// log.
async fn run(cfg: &Cluster, cmd: &str, limit: Duration) -> Result<(), Error> {
    let failed = |why: String| Error::Failed(why);
    let dir = &cfg.temp_dir;
    crate::scratch::create_private_dir(dir)
        .map_err(|e| failed(format!("{}: {e}", dir.display())))?;
    let out_path = dir.join(format!(".dbward-rewind-{}.out", std::process::id()));
    let out = std::fs::File::create(&out_path)
        .map_err(|e| failed(format!("creating {}: {e}", out_path.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| failed(format!("{}: {e}", out_path.display())))?;
    let mut c = tokio::process::Command::from(dbconn::child::user("sh"));
    c.kill_on_drop(true);
    if let Some(url) = &cfg.database_url {
        c.env("DBWARD_DATABASE_URL", url);
    }
    c.args(["-c", cmd])
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    let status = match c.spawn() {
        Ok(mut child) => dbconn::child::wait_bounded(&mut child, limit, &format!("`{cmd}`")).await,
        Err(e) => Err(e),
    };
    // Only its end: a server's log it printed is not read whole into memory.
    let text = tail_of(&out_path);
    let _ = std::fs::remove_file(&out_path);
    for line in text.lines() {
        tracing::info!("  {line}");
    }
    let status = status
        .map_err(|e| failed(format!("`{cmd}` could not run: {e}")))?
        .ok_or_else(|| {
            failed(format!(
                "`{cmd}` did not finish within {}; it was killed, with every process it started",
                humanize(limit)
            ))
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(format!(
            "`{cmd}` failed ({status}): {}",
            text.trim().chars().take(500).collect::<String>()
        )))
    }
}

/// The last 16 KiB of a file (what a command printed), as text.
fn tail_of(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 << 10)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}
