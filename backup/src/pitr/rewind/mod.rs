//! The health guard's rewind of the PostgreSQL cluster on this host to a deploy's restore
//! point (`[pitr.server]`), in three steps:
//!
//! 1. [`check`], nothing changed: the live server runs on the configured data directory (a
//!    directory of its own file system's parent, not a link), owned by the configured user; it
//!    is the point's cluster, holds no other database (unless allowed) and no tablespace; the
//!    WAL chain to the point is whole and the disk holds a second copy.
//! 2. [`prepare`], while the cluster still runs, under the migration lock (no deploy starts
//!    meanwhile): the base extracted and its WAL fetched beside the data directory
//!    (`.<name>.dbward-partial-<pid>`), given to the data directory's owner and mode.
//! 3. [`finish`]: the stop; the live configuration files copied into the restored directory,
//!    recovery to the point appended; the data directory moved aside (kept, as
//!    `<data_dir>.dbward-replaced-<stamp>`), the restored one renamed into its place; the start,
//!    the migration lock taken again on the read-only server, its promotion on that session
//!    once recovery paused at the point, and the check that it answers at the point. A failure before the promotion puts the old directory back and
//!    starts it; after it, nothing is taken away from a cluster that may already serve writes.

mod control;
mod discarded;
mod files;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dbconn::postgres::Postgres;
use dbconn::PgUrl;

use crate::pitr::cluster::{choose, fill, plan, Archive, NewDir, Planned, Which};
use crate::pitr::physical::Target;
use crate::pitr::server::{self, OsUser};

use control::{put_back, start_and_wait, stop_cluster, Wait};
pub use discarded::{count_discarded, Discarded};
use files::{carried_files, live_config, swap_dirs, warnings_of, SwapError};

/// How long the rewound cluster may take to recover and promote, and the old one to start again.
const RECOVERY_LIMIT: Duration = Duration::from_secs(3600);
/// How long the postmaster may take to exit once `stop` returned.
const STOP_LIMIT: Duration = Duration::from_secs(120);
/// How long the migration lock is tried on the restored cluster once it takes connections.
const LOCK_ON_RESTORED: Duration = Duration::from_secs(60);
/// How long a postmaster may be gone, once `start` returned, before the start counts as failed.
const GONE_LIMIT: Duration = Duration::from_secs(5);
/// How long the migration lock is waited for before the rewind's preparation.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// The cluster on this host a rewind stops, restores and starts (`[pitr.server]`).
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Its data directory (absolute): the live server must report the same `data_directory`.
    pub data_dir: PathBuf,
    /// Stops the cluster and returns once it is stopped (`sh -c`).
    pub stop: String,
    /// Starts it (`sh -c`).
    pub start: String,
    /// The OS user that owns the data directory (the restored one is given to it).
    pub user: String,
    /// Rewind even when the cluster holds databases besides the application's.
    pub allow_other_databases: bool,
    /// How long `stop` and `start` may run before they are killed with their process group.
    pub stop_limit: Duration,
    pub start_limit: Duration,
    /// Where the commands' output is kept while they run (a private directory).
    pub temp_dir: PathBuf,
    /// Given to `stop` and `start` as `DBWARD_DATABASE_URL`, as to every operator's command.
    pub database_url: Option<String>,
}

/// Why a rewind did not happen, or what it left.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Refused before anything was changed (exit 3).
    #[error("{0}; nothing was changed")]
    Refused(String),
    /// It failed; the message says what runs now and where the old data directory is.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Backup(#[from] crate::Error),
}

impl From<dbconn::Error> for Error {
    fn from(e: dbconn::Error) -> Error {
        Error::Backup(e.into())
    }
}

/// A cluster rewound to a restore point.
#[derive(Debug, serde::Serialize)]
pub struct Rewound {
    pub point: String,
    pub base: String,
    pub data_dir: PathBuf,
    /// The data directory as it was before the rewind, kept.
    pub kept: PathBuf,
    pub recovered: server::Recovered,
    /// From the guard's decision to the promoted cluster, and how long the cluster was down.
    pub seconds: f64,
    pub downtime_seconds: f64,
    #[serde(skip)]
    pub point_lsn: u64,
    /// What the operator must know (standbys left on the abandoned timeline, slots gone).
    pub warnings: Vec<String>,
    /// What the rewind discarded ([`count_discarded`]): the committed row changes after the
    /// point in the stopped cluster's WAL, every database's (named), the deploy's batch left
    /// out; or why they could not be counted.
    pub discarded: Option<Discarded>,
    pub discarded_unknown: Option<String>,
    /// The migration lock on the rewound cluster, held until the guard recorded the rewind.
    #[serde(skip)]
    pub lock: HeldLock,
}

/// The migration lock's session on the rewound cluster: released when dropped, or by
/// [`HeldLock::release`] once the guard recorded the rewind (no deploy starts before).
pub struct HeldLock(Option<Postgres>);

impl HeldLock {
    pub fn release(&mut self) {
        self.0 = None;
    }
}

impl std::fmt::Debug for HeldLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "HeldLock(held)"
        } else {
            "HeldLock(released)"
        })
    }
}

/// A rewind checked and planned: nothing was changed yet.
pub struct Checked {
    /// When the guard chose to rewind: the rewind's time counts from here.
    started: Instant,
    planned: Planned,
    point_id: String,
    /// The point's migration head (what the rewound cluster must hold), and the deploy's (what
    /// the live one must still hold when it is stopped).
    want_head: Option<crate::manifest::Head>,
    deploy_head: Option<(i64, String)>,
    system_identifier: String,
    user: OsUser,
    gid: u32,
    mode: u32,
    /// The files in the data directory the live configuration reads besides the four main
    /// ones (`include_dir`, `include`, SSL keys and certificates), relative to it: carried
    /// into the restored directory from the stopped cluster.
    carried: Vec<PathBuf>,
    /// What the operator must know about the rewind (standbys it leaves behind): said in the
    /// log and the deploy log.
    warnings: Vec<String>,
}

/// Checks everything a rewind of `cluster` (the server at `pg`) to restore point `point_id` in
/// `archive` needs before anything is changed; `deploy_head` is the head the deploy left.
pub async fn check(
    cluster: &Cluster,
    pg: &PgUrl,
    archive: Archive,
    point_id: &str,
    deploy_head: Option<(i64, String)>,
) -> Result<Checked, Error> {
    let started = Instant::now();
    let refused = Error::Refused;
    let cfg = cluster;
    let user = OsUser::lookup(&cfg.user)?;
    let data_dir = cfg.data_dir.clone();
    // Renamed aside and replaced: a real directory on its parent's file system.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(&data_dir)
        .map_err(|e| refused(format!("reading {}: {e}", data_dir.display())))?;
    let parent = data_dir.parent().unwrap_or(Path::new("/"));
    let parent_dev = std::fs::metadata(parent)
        .map_err(|e| refused(format!("reading {}: {e}", parent.display())))?
        .dev();
    if !meta.is_dir() {
        return Err(refused(format!(
            "pitr.server.data_dir {} is not a directory (a symbolic link is not renamed with what it points to): name the directory itself",
            data_dir.display()
        )));
    }
    if meta.dev() != parent_dev {
        return Err(refused(format!(
            "pitr.server.data_dir {} is a mount point: a rewind renames it aside and puts the restored copy in its place on {}'s file system; put the data directory one level below the mount",
            data_dir.display(),
            parent.display()
        )));
    }
    if meta.uid() != user.uid {
        return Err(refused(format!(
            "{} is owned by uid {}, and pitr.server.user `{}` is uid {}",
            data_dir.display(),
            meta.uid(),
            user.name,
            user.uid
        )));
    }
    let live = server::live_cluster(pg).await?;
    let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same(&live.data_directory, &data_dir) {
        return Err(refused(format!(
            "pitr.server.data_dir is {}, and the server at {} runs on {}",
            data_dir.display(),
            pg.display,
            live.data_directory.display()
        )));
    }
    if !live.can_promote {
        return Err(refused(format!(
            "the role of {} may not run pg_promote, which promotes the rewound cluster on the session that holds the migration lock: `GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO <role>`",
            pg.display
        )));
    }
    if !live.other_databases.is_empty() && !cfg.allow_other_databases {
        return Err(refused(format!(
            "the cluster holds other databases than {} ({}), and a rewind takes every one of them back to the restore point; set pitr.server.allow_other_databases = true if that is meant",
            pg.dbname(),
            live.other_databases.join(", ")
        )));
    }
    // A tablespace lives outside the data directory: the kept cluster and the restored one
    // would share it, and replay would remove the live one's files.
    if !live.tablespaces.is_empty() {
        return Err(refused(format!(
            "the cluster has tablespaces besides pg_default ({}), which live outside the data directory and would be shared by the old and the rewound cluster",
            live.tablespaces.join(", ")
        )));
    }
    let warnings = warnings_of(&live);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let carried = carried_files(&live, &data_dir);
    let chosen = choose(archive, &Which::Base(point_id.to_string())).await?;
    let Target::Point { .. } = chosen.target else {
        return Err(refused(format!("{point_id} is not a restore point")));
    };
    let base_sysid = chosen
        .base
        .physical
        .as_ref()
        .map(|p| p.system_identifier.clone());
    if base_sysid.as_deref() != Some(live.system_identifier.as_str()) {
        return Err(refused(format!(
            "base {} is of cluster {}, and the live server is cluster {}",
            chosen.base.id,
            base_sysid.unwrap_or_default(),
            live.system_identifier
        )));
    }
    let want_head = chosen.point.as_ref().and_then(|m| m.migration_head.clone());
    let planned = plan(chosen).await?;
    // The restored directory goes beside the live one, which stays: the disk holds both.
    let p = crate::pitr::physical::physical_of(&planned.base)?;
    crate::scratch::ensure_space(
        parent,
        planned.base.raw_bytes + planned.plan.segments.len() as u64 * p.segment_bytes,
        &format!(
            "base {} and its WAL beside the live data directory",
            planned.base.id
        ),
    )?;
    Ok(Checked {
        started,
        planned,
        point_id: point_id.to_string(),
        want_head,
        deploy_head,
        system_identifier: live.system_identifier,
        user,
        gid: meta.gid(),
        mode: meta.mode() & 0o7777,
        carried,
        warnings,
    })
}

/// The migration lock on the live cluster, taken before a rewind is prepared ([`lock`]).
pub struct Locked(Postgres);

/// Takes the migration lock on the live cluster (waiting up to a minute): no deploy starts
/// until the rewind is done, and a guard that comes second finds the deploy already undone
/// (its caller checks that under this lock).
pub async fn lock(pg: &PgUrl) -> Result<Locked, Error> {
    let conn = Postgres::connect(pg).await?;
    dbconn::lock::take(&conn, LOCK_WAIT).await?;
    Ok(Locked(conn))
}

/// A rewind prepared: the restored directory is filled beside the live one, which still runs,
/// and the migration lock is held.
pub struct Prepared {
    checked: Checked,
    dir: NewDir,
    lock: Postgres,
}

/// Fills the restored directory while the cluster runs, under the migration lock.
pub async fn prepare(
    cluster: &Cluster,
    checked: Checked,
    locked: Locked,
) -> Result<Prepared, Error> {
    let Locked(lock) = locked;
    head_unmoved(&lock, &checked.deploy_head).await?;
    tracing::info!(
        "rewind: restoring base {} and {} WAL files beside {} (the cluster still runs)",
        checked.planned.base.id,
        checked.planned.plan.segments.len(),
        cluster.data_dir.display()
    );
    let dir = NewDir::beside(&cluster.data_dir)?;
    fill(&checked.planned, dir.path()).await?;
    server::chown_tree_to(dir.path(), checked.user.uid, checked.gid)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(checked.mode)).map_err(
        crate::Error::io(format!("setting the mode of {}", dir.path().display())),
    )?;
    Ok(Prepared { checked, dir, lock })
}

/// The live migration head is still the deploy's: nobody migrated since the guard decided.
async fn head_unmoved(db: &Postgres, want: &Option<(i64, String)>) -> Result<(), Error> {
    let rows = dbconn::postgres::applied_on(db.client()).await?;
    let now = dbconn::history::newest(&rows).map(|a| (a.version, a.checksum.to_string()));
    if &now != want {
        return Err(Error::Failed(format!(
            "the migration head moved since the guard decided (now {}); not rewinding",
            now.map(|n| format!("V{}", n.0))
                .unwrap_or_else(|| "none".into())
        )));
    }
    Ok(())
}

/// Stops the cluster, swaps the data directories, starts it on the restored one and waits for
/// its promotion. `Ok` once the cluster runs promoted at the point with the point's migration
/// head; `Err` ([`Error::Failed`]) otherwise, saying what runs.
pub async fn finish(cluster: &Cluster, pg: &PgUrl, prepared: Prepared) -> Result<Rewound, Error> {
    let Prepared {
        checked,
        mut dir,
        lock,
    } = prepared;
    let cfg = cluster;
    let data_dir = cfg.data_dir.clone();
    let point_id = checked.point_id.as_str();
    head_unmoved(&lock, &checked.deploy_head).await?;
    failpoint("rewind-before-stop")?;
    // From the stop until the cluster runs again (on either directory), a signal waits.
    let section = dbconn::critical::enter("the cluster is being stopped for its rewind");
    tracing::warn!("rewind: stopping the cluster: sh -c {:?}", cfg.stop);
    let (stop, still) = stop_cluster(cfg, &data_dir, Some(lock)).await;
    if let Some(pid) = still {
        return Err(Error::Failed(format!(
            "the cluster did not stop (postmaster {pid} still runs on {} after `stop` returned{}); nothing was changed. If it stops later, start it again: {}",
            data_dir.display(),
            stop.err().map(|e| format!("; {e}")).unwrap_or_default(),
            cfg.start
        )));
    }
    section.now("the cluster is stopped for its rewind");
    let down = Instant::now();
    if let Err(e) = stop {
        tracing::warn!("{e} (the cluster is stopped all the same)");
    }
    let restart_old = |why: Error| async move {
        let why = crate::error::chain(&why);
        let again = start_and_wait(cfg, &cfg.data_dir, Wait::Ready).await;
        Error::Failed(match again {
            Ok(_) => format!("{why}; the old cluster runs again, unchanged"),
            Err(e) => {
                let said = format!(
                    "{why}; the old cluster, unchanged in {}, did not start again: {e}. THE CLUSTER IS DOWN: start it by hand: {}",
                    cfg.data_dir.display(),
                    cfg.start
                );
                tracing::error!("{said}");
                said
            }
        })
    };
    // The live configuration, as the stopped cluster leaves it, replaces the base's: with
    // recovery to the point appended to its postgresql.auto.conf.
    let original_auto = match live_config(&data_dir, dir.path(), &checked) {
        Ok(auto) => auto,
        Err(e) => return Err(restart_old(e).await),
    };
    let kept = match swap_dirs(&mut dir, &data_dir, &checked) {
        Ok(kept) => kept,
        Err(SwapError::NotSwapped(why)) => return Err(restart_old(why).await),
        Err(SwapError::Stuck(e)) => return Err(e),
    };
    tracing::warn!(
        "rewind: the old data directory is kept as {}; starting the cluster on the restored one: sh -c {:?}",
        kept.display(),
        cfg.start
    );
    // The migration lock is taken again as soon as the restored cluster takes connections
    // (still in recovery, before any write can be made), and held until it is verified.
    let Target::Point { lsn: point_lsn, .. } = checked.planned.target else {
        unreachable!("a rewind's target is its restore point")
    };
    let started = async {
        failpoint("rewind-after-swap")?;
        start_and_wait(cfg, &data_dir, Wait::Promoted { pg, lsn: point_lsn }).await
    }
    .await;
    let lock = match started {
        Ok(lock) => lock,
        Err(why) => return Err(put_back(cfg, dir, &kept, why).await),
    };
    // Promoted (nothing is undone from here), the migration lock held on the new cluster.
    if let Err(e) = failpoint("rewind-before-verify") {
        tracing::warn!("{e}");
    }
    let downtime = down.elapsed().as_secs_f64();
    // Promoted: from here on the cluster may serve writes, and nothing is taken from it.
    dir.keep();
    if let Err(e) = server::put_back_auto_conf(&data_dir, &original_auto) {
        tracing::warn!(
            "the rewound cluster runs, but its postgresql.auto.conf keeps dbward's recovery lines (harmless outside recovery; remove them by hand): {}",
            crate::error::chain(&e)
        );
    }
    let kept_text = format!("the old data directory is kept at {}", kept.display());
    let recovered = verify(pg, &data_dir, &checked).await.map_err(|why| {
        Error::Failed(format!("the cluster was rewound and promoted and runs on {}, but {why}; {kept_text}. Check it before the application writes more", data_dir.display()))
    })?;
    tracing::warn!(
        "rewind: the cluster is at restore point {point_id} on a new timeline; restore points fall back to dumps until a new base is taken (`dbward backup --physical`)"
    );
    let seconds = checked.started.elapsed().as_secs_f64();
    Ok(Rewound {
        lock: HeldLock(lock),
        point: point_id.to_string(),
        base: checked.planned.base.id.clone(),
        data_dir,
        kept,
        recovered,
        seconds,
        downtime_seconds: downtime,
        point_lsn,
        warnings: checked.warnings.clone(),
        discarded: None,
        discarded_unknown: None,
    })
}

/// After the promotion: the server that answers is this data directory's, of the point's
/// cluster, and holds the point's migration head.
async fn verify(
    pg: &PgUrl,
    data_dir: &Path,
    checked: &Checked,
) -> Result<server::Recovered, Error> {
    // A promoted server may still be finishing its start, or its connections be taken.
    let began = Instant::now();
    let (live, recovered) = loop {
        let answer = async {
            let live = server::live_cluster(pg).await?;
            let db = Postgres::connect(pg).await?;
            let recovered = server::recovered(db.client()).await?;
            Ok::<_, crate::Error>((live, recovered))
        }
        .await;
        match answer {
            Ok(a) => break a,
            Err(e) if began.elapsed() > Duration::from_secs(60) => {
                return Err(Error::Failed(format!(
                    "dbward could not connect to check it: {}",
                    crate::error::chain(&e)
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let same = matches!(
        (std::fs::canonicalize(&live.data_directory), std::fs::canonicalize(data_dir)),
        (Ok(a), Ok(b)) if a == b
    );
    if !same || live.system_identifier != checked.system_identifier {
        return Err(Error::Failed(format!(
            "the server answering at {} runs on {} (cluster {}), not on the rewound {}",
            pg.display,
            live.data_directory.display(),
            live.system_identifier,
            data_dir.display()
        )));
    }
    if recovered.migration_head != checked.want_head {
        return Err(Error::Failed(format!(
            "its migration head is {}, and the restore point's {}",
            head_text(&recovered.migration_head),
            head_text(&checked.want_head)
        )));
    }
    Ok(recovered)
}

fn head_text(h: &Option<crate::manifest::Head>) -> String {
    h.as_ref()
        .map(|h| h.label())
        .unwrap_or_else(|| "none".into())
}

/// A failure point of the crash-consistency suite (nothing without the `failpoints` feature).
fn failpoint(name: &str) -> Result<(), Error> {
    dbconn::failpoint::hit(name).map_err(Error::Failed)
}
