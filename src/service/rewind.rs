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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backup::pitr::physical::Target;
use backup::pitr::server::{self, OsUser};
use migrator::database::Open;
use migrator::{Database, DatabaseUrl};

use crate::exit::Exit;
use crate::report::Failure;
use crate::settings::{PitrServer, Settings};
use backup::pitr::cluster::{choose, fill, plan, NewDir, Which};
use dbconn::fs::rename_new;

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
/// The configuration files a cluster may keep in its data directory: the live ones replace the
/// base's in the restored directory.
const CONFIG_FILES: [&str; 4] = [
    "postgresql.conf",
    "pg_hba.conf",
    "pg_ident.conf",
    "postgresql.auto.conf",
];

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
pub struct HeldLock(Option<Database>);

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

/// [`backup::pitr::waldump::Changes`] with the databases named.
#[derive(Debug, serde::Serialize)]
pub struct Discarded {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub by_database: std::collections::BTreeMap<String, u64>,
    pub from_lsn: String,
    pub to_lsn: String,
}

impl Discarded {
    pub fn total(&self) -> u64 {
        self.inserted + self.updated + self.deleted
    }
}

/// A rewind checked and planned: nothing was changed yet.
pub struct Checked {
    /// When the guard chose to rewind: the rewind's time counts from here.
    started: Instant,
    planned: backup::pitr::cluster::Planned,
    point_id: String,
    /// The point's migration head (what the rewound cluster must hold), and the deploy's (what
    /// the live one must still hold when it is stopped).
    want_head: Option<backup::manifest::Head>,
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

/// Checks everything a rewind to restore point `point_id` needs before anything is changed;
/// `deploy_head` is the head the deploy left. Exit 3 when refused.
pub async fn check(
    settings: &Settings,
    url: &DatabaseUrl,
    point_id: &str,
    deploy_head: Option<(i64, String)>,
) -> Result<Checked, Failure> {
    let started = Instant::now();
    let refused = |why: String| -> Failure {
        backup::Error::Refused(format!("{why}; nothing was changed")).into()
    };
    let DatabaseUrl::Postgres(pg) = url else {
        return Err(refused("a rewind is of a PostgreSQL cluster".into()));
    };
    let Some(cfg) = &settings.pitr.server else {
        return Err(refused(format!(
            "{point_id} is a restore point, and [pitr.server] is not set: dbward cannot stop, rewind and start this cluster (restore it by hand: `dbward restore {point_id} --physical --to DIR`)"
        )));
    };
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
    let archive = crate::service::pitr::archive(settings, url).await?;
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
    let p = backup::pitr::physical::physical_of(&planned.base)?;
    backup::scratch::ensure_space(
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

/// A rewind prepared: the restored directory is filled beside the live one, which still runs,
/// and the migration lock is held.
pub struct Prepared {
    checked: Checked,
    dir: NewDir,
    lock: Database,
}

/// Fills the restored directory while the cluster runs, under the migration lock: a deploy
/// waits, and a guard that comes second finds the deploy already undone.
pub async fn prepare(
    settings: &Settings,
    url: &DatabaseUrl,
    checked: Checked,
) -> Result<Prepared, Failure> {
    let cfg = settings.pitr.server.as_ref().expect("checked");
    let mut lock = Database::open_locked(url, Open::Existing, LOCK_WAIT).await?;
    let deploy = crate::state::Scope::of(&settings.state_dir, url)
        .await
        .read()?;
    if let Some(at) = deploy.as_ref().and_then(|d| d.restored.as_ref()) {
        return Err(Failure::new(
            Exit::Failed,
            format!("the deploy was undone meanwhile (at {at}); not rewinding again"),
        ));
    }
    head_unmoved(&mut lock, &checked.deploy_head).await?;
    tracing::info!(
        "rewind: restoring base {} and {} WAL files beside {} (the cluster still runs)",
        checked.planned.base.id,
        checked.planned.plan.segments.len(),
        cfg.data_dir.display()
    );
    let dir = NewDir::beside(&cfg.data_dir)?;
    fill(&checked.planned, dir.path()).await?;
    server::chown_tree_to(dir.path(), checked.user.uid, checked.gid)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(checked.mode)).map_err(
        |e| {
            Failure::new(
                Exit::Failed,
                format!("setting the mode of {}: {e}", dir.path().display()),
            )
        },
    )?;
    Ok(Prepared { checked, dir, lock })
}

/// The live migration head is still the deploy's: nobody migrated since the guard decided.
async fn head_unmoved(db: &mut Database, want: &Option<(i64, String)>) -> Result<(), Failure> {
    let now = db
        .applied()
        .await?
        .into_iter()
        .max_by_key(|a| a.version)
        .map(|a| (a.version, a.checksum.to_string()));
    if &now != want {
        return Err(Failure::new(
            Exit::Failed,
            format!(
                "the migration head moved since the guard decided (now {}); not rewinding",
                now.map(|n| format!("V{}", n.0))
                    .unwrap_or_else(|| "none".into())
            ),
        ));
    }
    Ok(())
}

/// Stops the cluster, swaps the data directories, starts it on the restored one and waits for
/// its promotion. `Ok` once the cluster runs promoted at the point with the point's migration
/// head; `Err` (exit 1) otherwise, saying what runs.
pub async fn finish(
    settings: &Settings,
    url: &DatabaseUrl,
    prepared: Prepared,
) -> Result<Rewound, Failure> {
    let Prepared {
        checked,
        mut dir,
        mut lock,
    } = prepared;
    let (DatabaseUrl::Postgres(pg), Some(cfg)) = (url, &settings.pitr.server) else {
        unreachable!("checked: a PostgreSQL cluster with [pitr.server]");
    };
    let data_dir = cfg.data_dir.clone();
    let point_id = checked.point_id.as_str();
    head_unmoved(&mut lock, &checked.deploy_head).await?;
    failpoint("rewind-before-stop").map_err(|e| Failure::new(Exit::Failed, e))?;
    // From the stop until the cluster runs again (on either directory), a signal waits.
    let section = crate::critical::enter("the cluster is being stopped for its rewind");
    tracing::warn!("rewind: stopping the cluster: sh -c {:?}", cfg.stop);
    let (stop, still) = stop_cluster(settings, cfg, &data_dir, Some(lock)).await;
    if let Some(pid) = still {
        return Err(Failure::new(
            Exit::Failed,
            format!(
                "the cluster did not stop (postmaster {pid} still runs on {} after `stop` returned{}); nothing was changed. If it stops later, start it again: {}",
                data_dir.display(),
                stop.err().map(|e| format!("; {e}")).unwrap_or_default(),
                cfg.start
            ),
        ));
    }
    section.now("the cluster is stopped for its rewind");
    let down = Instant::now();
    if let Err(e) = stop {
        tracing::warn!("{e} (the cluster is stopped all the same)");
    }
    let restart_old = |why: String| async move {
        let again = start_and_wait(settings, cfg, &cfg.data_dir, Wait::Ready).await;
        Failure::new(
            Exit::Failed,
            match again {
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
            },
        )
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
        Err(SwapError::Stuck(f)) => return Err(f),
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
        start_and_wait(
            settings,
            cfg,
            &data_dir,
            Wait::Promoted {
                url,
                lsn: point_lsn,
            },
        )
        .await
    }
    .await;
    let lock = match started {
        Ok(lock) => lock,
        Err(why) => return Err(put_back(settings, cfg, dir, &kept, why).await),
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
            backup::error::chain(&e)
        );
    }
    let kept_text = format!("the old data directory is kept at {}", kept.display());
    let recovered = verify(pg, &data_dir, &checked).await.map_err(|why| {
        Failure::new(
            Exit::Failed,
            format!("the cluster was rewound and promoted and runs on {}, but {why}; {kept_text}. Check it before the application writes more", data_dir.display()),
        )
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

/// Fills `r.discarded` (or `r.discarded_unknown`): the committed row changes in the kept
/// (stopped) cluster's WAL after the restore point, in every database, the deploy's batch
/// (`batch_xid`) left out (`backup::pitr::waldump`), the databases named by the rewound
/// cluster (the same oids). Run once the cluster runs again and the rewind is recorded.
pub async fn count_discarded(
    settings: &Settings,
    url: &DatabaseUrl,
    r: &mut Rewound,
    batch_xid: Option<u32>,
) {
    let DatabaseUrl::Postgres(pg) = url else {
        return;
    };
    match discarded_in(settings, pg, &r.kept, r.point_lsn, batch_xid).await {
        Ok(d) => r.discarded = Some(d),
        Err(why) => {
            tracing::warn!("what the rewind discarded could not be counted: {why}");
            r.discarded_unknown = Some(why);
        }
    }
}

async fn discarded_in(
    settings: &Settings,
    pg: &dbconn::PgUrl,
    kept: &Path,
    lsn: u64,
    batch_xid: Option<u32>,
) -> Result<Discarded, String> {
    let major: u32 = std::fs::read_to_string(kept.join("PG_VERSION"))
        .map_err(|e| format!("{}: {e}", kept.join("PG_VERSION").display()))?
        .trim()
        .parse()
        .map_err(|e| format!("PG_VERSION: {e}"))?;
    let bindir = server::bindir(major).map_err(|e| e.to_string())?;
    let store = settings
        .store()
        .await
        .map_err(|e| backup::error::chain(&e))?;
    let identities = settings.identities().map_err(|e| e.to_string())?;
    let changes = backup::pitr::waldump::discarded_since(
        kept,
        &bindir,
        lsn,
        batch_xid,
        Some((&store, pg.dbname(), &identities)),
    )
    .await
    .map_err(|e| backup::error::chain(&e))?;
    let names: std::collections::HashMap<u32, String> =
        match dbconn::postgres::Postgres::connect(pg).await {
            Ok(db) => db
                .client()
                .query("SELECT oid::int8, datname::text FROM pg_database", &[])
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| (r.get::<_, i64>(0) as u32, r.get(1)))
                        .collect()
                })
                .unwrap_or_default(),
            Err(_) => Default::default(),
        };
    Ok(Discarded {
        inserted: changes.inserted,
        updated: changes.updated,
        deleted: changes.deleted,
        by_database: changes
            .by_database
            .iter()
            .map(|(oid, n)| {
                (
                    names
                        .get(oid)
                        .cloned()
                        .unwrap_or_else(|| format!("database oid {oid}")),
                    *n,
                )
            })
            .collect(),
        from_lsn: changes.from_lsn,
        to_lsn: changes.to_lsn,
    })
}

/// Why the directories were not swapped.
enum SwapError {
    /// Nothing moved, or it moved back: the old cluster can start again as it was.
    NotSwapped(String),
    /// The old data directory could not be moved back: said, for the operator.
    Stuck(Failure),
}

/// The restored directory made ready to start (recovery to the point, the fetched WAL marked
/// done, owned like the live one), the stopped cluster's directory moved aside under a new
/// name, and the restored one renamed into its place. Returns where the old one is kept.
fn swap_dirs(dir: &mut NewDir, data_dir: &Path, checked: &Checked) -> Result<PathBuf, SwapError> {
    let fetched: Vec<String> = checked
        .planned
        .plan
        .segments
        .iter()
        .chain(&checked.planned.plan.histories)
        .cloned()
        .collect();
    server::prepare_rewind(dir.path(), &checked.planned.target, &fetched)
        .and_then(|()| server::chown_tree_to(dir.path(), checked.user.uid, checked.gid))
        .map_err(|e| SwapError::NotSwapped(backup::error::chain(&e)))?;
    let kept = PathBuf::from(format!(
        "{}.dbward-replaced-{}",
        data_dir.display(),
        backup::manifest::compact_stamp(time::OffsetDateTime::now_utc())
    ));
    rename_new(data_dir, &kept).map_err(|e| {
        SwapError::NotSwapped(format!(
            "moving {} aside to {} failed: {e}",
            data_dir.display(),
            kept.display()
        ))
    })?;
    if let Err(e) = dir.publish() {
        return Err(match rename_new(&kept, data_dir) {
            Ok(()) => SwapError::NotSwapped(backup::error::chain(&e)),
            Err(b) => SwapError::Stuck(Failure::new(
                Exit::Failed,
                format!(
                    "{}; and moving the old data directory back from {} failed: {b}. Move it back and start the cluster by hand",
                    backup::error::chain(&e),
                    kept.display()
                ),
            )),
        });
    }
    Ok(kept)
}

/// What a rewind leaves undone, said before it starts: replication slots (a base holds none)
/// and standbys streaming without one (they stay on the abandoned timeline).
fn warnings_of(live: &server::LiveCluster) -> Vec<String> {
    let mut warnings = Vec::new();
    if !live.replication_slots.is_empty() {
        warnings.push(format!(
            "the cluster has replication slots ({}): a base holds none, so the rewound cluster has none; standbys and logical consumers of them must be set up again",
            live.replication_slots.join(", ")
        ));
    }
    if !live.standbys_without_slot.is_empty() {
        warnings.push(format!(
            "streaming standbys are connected without a replication slot ({}): they stay on the abandoned timeline, serving the failed deploy's data, until they are rebuilt from the rewound cluster",
            live.standbys_without_slot.join(", ")
        ));
    }
    warnings
}

/// The configuration files the live server reads from inside its data directory (beyond
/// PostgreSQL's own), by their path there: carried into the rewound cluster.
fn carried_files(live: &server::LiveCluster, data_dir: &Path) -> Vec<PathBuf> {
    match &live.config_files {
        Ok(files) => files
            .iter()
            .filter_map(|f| {
                f.strip_prefix(&live.data_directory)
                    .or_else(|_| f.strip_prefix(data_dir))
                    .ok()
                    .map(Path::to_path_buf)
            })
            .filter(|rel| !CONFIG_FILES.iter().any(|c| rel == Path::new(c)))
            .filter(|rel| {
                let fit = carriable(rel);
                if !fit {
                    tracing::warn!(
                        "not carrying {} into the rewound cluster: a configuration file is carried only by a plain path inside the data directory, outside PostgreSQL's own folders",
                        rel.display()
                    );
                }
                fit
            })
            .collect(),
        Err(e) => {
            tracing::warn!(
                "the files the live configuration reads could not be listed ({e}): only {} are carried into the rewound cluster; grant pg_read_all_settings to dbward's role",
                CONFIG_FILES.join(", ")
            );
            Vec::new()
        }
    }
}

/// Whether a path the configuration names may be carried from the stopped cluster into the
/// restored one: plain names only (no `..`, nothing absolute), and none of PostgreSQL's own
/// folders and files (`global/pg_control` named as an SSL file must never be copied over the
/// restored cluster's).
fn carriable(rel: &Path) -> bool {
    use std::path::Component;
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    let own = first.starts_with("pg_")
        || matches!(
            first.as_str(),
            "global" | "base" | "PG_VERSION" | "postmaster.pid" | "postmaster.opts"
        );
    plain && !own && rel.components().count() > 0
}

/// `rel` inside `root` with no symbolic link on the way (every folder a real one, the file a
/// regular file): `None` otherwise, or when it is not there.
fn no_link_on_the_way(root: &Path, rel: &Path) -> Option<std::fs::Metadata> {
    let mut at = root.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        let meta = std::fs::symlink_metadata(&at).ok()?;
        let last = i + 1 == parts.len();
        if meta.file_type().is_symlink() || (!last && !meta.is_dir()) || (last && !meta.is_file()) {
            return None;
        }
        if last {
            return Some(meta);
        }
    }
    None
}

/// The live cluster's configuration files (those in its data directory, as the stopped cluster
/// leaves them: the four main ones, and every other one its configuration reads there, an
/// `include_dir`'s files, SSL keys and certificates) copied over the base's in `to`, byte for
/// byte with their modes (a directory they are in is made with its live mode); returns the
/// live `postgresql.auto.conf` (empty when there is none), put back after the promotion.
fn live_config(live: &Path, to: &Path, checked: &Checked) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut auto = Vec::new();
    let names = CONFIG_FILES
        .iter()
        .map(PathBuf::from)
        .chain(checked.carried.iter().cloned());
    for name in names {
        let from = live.join(&name);
        // Read only through real folders to a regular file (a link could lead anywhere).
        let Some(meta) = no_link_on_the_way(live, &name) else {
            continue; // kept elsewhere (Debian: /etc/postgresql), or not a plain file
        };
        let bytes = std::fs::read(&from).map_err(|e| format!("reading {}: {e}", from.display()))?;
        let dest = to.join(&name);
        // The directories it is in (an include_dir added after the base), as the live ones.
        let mut made = Vec::new();
        for dir in name
            .ancestors()
            .skip(1)
            .filter(|d| !d.as_os_str().is_empty())
        {
            if !to.join(dir).exists() {
                made.push(dir.to_path_buf());
            }
        }
        // In the restored directory (all of it this run's, extracted without links), the
        // folders on the way must be real ones too.
        if let Some(parent) = name.parent().filter(|p| !p.as_os_str().is_empty()) {
            let mut at = to.to_path_buf();
            for part in parent.components() {
                at.push(part);
                if std::fs::symlink_metadata(&at).is_ok_and(|m| !m.is_dir()) {
                    return Err(format!("{} is not a folder", at.display()));
                }
            }
        }
        for dir in made.iter().rev() {
            let mode = std::fs::metadata(live.join(dir))
                .map(|m| m.mode() & 0o7777)
                .unwrap_or(0o700);
            std::fs::create_dir(to.join(dir))
                .and_then(|()| {
                    std::fs::set_permissions(to.join(dir), std::fs::Permissions::from_mode(mode))
                })
                .map_err(|e| format!("making {}: {e}", to.join(dir).display()))?;
            std::os::unix::fs::lchown(to.join(dir), Some(checked.user.uid), Some(checked.gid))
                .map_err(|e| format!("giving {} to its owner: {e}", to.join(dir).display()))?;
        }
        let _ = std::fs::remove_file(&dest); // the base's copy, extracted by this run
        server::write_new(&dest, &bytes, meta.mode() & 0o7777)
            .map_err(|e| backup::error::chain(&e))?;
        std::os::unix::fs::lchown(&dest, Some(checked.user.uid), Some(checked.gid))
            .map_err(|e| format!("giving {} to its owner: {e}", dest.display()))?;
        // The mode exactly, whatever the umask took from it at creation.
        let _ =
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(meta.mode() & 0o7777));
        if name == Path::new("postgresql.auto.conf") {
            auto = bytes;
        }
    }
    Ok(auto)
}

/// After the promotion: the server that answers is this data directory's, of the point's
/// cluster, and holds the point's migration head.
async fn verify(
    pg: &dbconn::PgUrl,
    data_dir: &Path,
    checked: &Checked,
) -> Result<server::Recovered, String> {
    // A promoted server may still be finishing its start, or its connections be taken.
    let began = Instant::now();
    let (live, recovered) = loop {
        let answer = async {
            let live = server::live_cluster(pg)
                .await
                .map_err(|e| backup::error::chain(&e))?;
            let db = dbconn::postgres::Postgres::connect(pg)
                .await
                .map_err(|e| e.to_string())?;
            let recovered = server::recovered(db.client())
                .await
                .map_err(|e| backup::error::chain(&e))?;
            Ok::<_, String>((live, recovered))
        }
        .await;
        match answer {
            Ok(a) => break a,
            Err(e) if began.elapsed() > Duration::from_secs(60) => {
                return Err(format!("dbward could not connect to check it: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let same = matches!(
        (std::fs::canonicalize(&live.data_directory), std::fs::canonicalize(data_dir)),
        (Ok(a), Ok(b)) if a == b
    );
    if !same || live.system_identifier != checked.system_identifier {
        return Err(format!(
            "the server answering at {} runs on {} (cluster {}), not on the rewound {}",
            pg.display,
            live.data_directory.display(),
            live.system_identifier,
            data_dir.display()
        ));
    }
    if recovered.migration_head != checked.want_head {
        return Err(format!(
            "its migration head is {}, and the restore point's {}",
            head_text(&recovered.migration_head),
            head_text(&checked.want_head)
        ));
    }
    Ok(recovered)
}

fn head_text(h: &Option<backup::manifest::Head>) -> String {
    h.as_ref()
        .map(|h| format!("V{} {}", h.version, h.name))
        .unwrap_or_else(|| "none".into())
}

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
async fn put_back(
    settings: &Settings,
    cfg: &PitrServer,
    mut dir: NewDir,
    kept: &Path,
    why: String,
) -> Failure {
    let data_dir = &cfg.data_dir;
    tracing::error!("rewind failed: {why}; putting the old data directory back");
    let (_, still) = stop_cluster(settings, cfg, data_dir, None).await;
    if let Some(pid) = still {
        // The restored directory keeps its name: it is not moved under a live server.
        dir.keep();
        return Failure::new(
            Exit::Failed,
            format!(
                "{why}; and the restored cluster does not stop (postmaster {pid}). The old data directory is kept at {}: stop the cluster, move {} away, move {} back, and start it",
                kept.display(),
                data_dir.display(),
                kept.display()
            ),
        );
    }
    let promoted = !data_dir.join("recovery.signal").exists();
    let moved = if promoted {
        // It promoted after all: it may hold writes. Kept under a name of its own.
        let aside = PathBuf::from(format!(
            "{}.dbward-rewound-{}",
            data_dir.display(),
            backup::manifest::compact_stamp(time::OffsetDateTime::now_utc())
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
        return Failure::new(
            Exit::Failed,
            format!(
                "{why}; and putting the old data directory back failed: {e}. It is kept at {}: move it back to {} and start the cluster",
                kept.display(),
                data_dir.display()
            ),
        );
    }
    match start_and_wait(settings, cfg, data_dir, Wait::Ready).await {
        Ok(_) => Failure::new(
            Exit::Failed,
            format!("{why}; the old cluster was put back and runs again, unchanged"),
        ),
        Err(e) => {
            let said = format!(
                "{why}; the old data directory was put back in {}, but it did not start: {e}. THE CLUSTER IS DOWN: start it by hand: {}",
                data_dir.display(),
                cfg.start
            );
            tracing::error!("{said}");
            Failure::new(Exit::Failed, said)
        }
    }
}

/// What a start waits for.
#[derive(Clone, Copy)]
enum Wait<'a> {
    /// The postmaster takes connections (`postmaster.pid` says `ready`).
    Ready,
    /// Recovery paused at the restore point (`lsn`), read-only; then the migration lock is
    /// taken on `url` and the server promoted on that session: no write is possible before
    /// the lock is held.
    Promoted { url: &'a DatabaseUrl, lsn: u64 },
}

/// Runs `stop` (bounded by `pitr.server.stop_timeout`), holding `lock` (the migration lock's
/// session) until the server is shutting down: from then on it refuses new connections, so no
/// deploy can start in between. Then waits for the postmaster to exit ([`wait_stopped`]).
/// Returns `stop`'s own result and the pid of a postmaster that still runs.
async fn stop_cluster(
    settings: &Settings,
    cfg: &PitrServer,
    data_dir: &Path,
    mut lock: Option<Database>,
) -> (Result<(), String>, Option<i32>) {
    let stop = run(settings, &cfg.stop, cfg.stop_limit());
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
async fn start_and_wait(
    settings: &Settings,
    cfg: &PitrServer,
    data_dir: &Path,
    wait: Wait<'_>,
) -> Result<Option<Database>, String> {
    let mut tries = 0;
    let began = Instant::now();
    'start: loop {
        tries += 1;
        // The session of a server that went away is of no use on the next one.
        let mut lock: Option<Database> = None;
        let mut connectable_since: Option<Instant> = None;
        let start = run(settings, &cfg.start, cfg.start_limit());
        tokio::pin!(start);
        let mut returned: Option<Result<(), String>> = None;
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
                        Wait::Promoted { url, lsn } => {
                            if !data_dir.join("recovery.signal").exists() {
                                // Recovery is set to pause: only a promotion from elsewhere
                                // ends it, and writes may have begun without the lock.
                                return Err(format!(
                                    "the restored cluster on {} was promoted, but not by dbward (recovery pauses at the point for it to take the migration lock first)",
                                    data_dir.display()
                                ));
                            }
                            if state != "standby" && state != "ready" {
                                continue;
                            }
                            let since = *connectable_since.get_or_insert_with(Instant::now);
                            if lock.is_none() {
                                lock = try_lock(url).await;
                            }
                            if let Some(db) = lock.as_mut() {
                                match paused_at(db, lsn).await {
                                    Ok(true) => {
                                        promote(db, data_dir).await?;
                                        return Ok(lock);
                                    }
                                    Ok(false) => {} // still replaying
                                    Err(e) => {
                                        tracing::warn!("rewind: the session holding the migration lock on the restored cluster failed ({e}); taking it again");
                                        lock = None;
                                        connectable_since = Some(Instant::now());
                                    }
                                }
                            } else if since.elapsed() > LOCK_ON_RESTORED {
                                return Err(format!(
                                    "the migration lock could not be taken on the restored cluster within {} of its taking connections (are they all taken?); it was not promoted",
                                    migrator::error::humanize(LOCK_ON_RESTORED)
                                ));
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
                                    .cloned()
                                    .unwrap_or_else(|| "it returned".into())
                            );
                            continue 'start;
                        }
                        return Err(match result {
                            Err(e) => e.clone(),
                            Ok(()) => format!(
                                "the server on {} stopped (its log says why: a restore point never reached ends recovery)",
                                data_dir.display()
                            ),
                        });
                    }
                }
            }
            if began.elapsed() > RECOVERY_LIMIT {
                return Err(format!(
                    "the server on {} did not finish starting within {}",
                    data_dir.display(),
                    migrator::error::humanize(RECOVERY_LIMIT)
                ));
            }
        }
    }
}

/// Whether recovery paused at the restore point (`lsn` replayed).
async fn paused_at(db: &mut Database, lsn: u64) -> Result<bool, String> {
    let sql = format!(
        "SELECT pg_get_wal_replay_pause_state() = 'paused' AND pg_last_wal_replay_lsn() >= '{}'::pg_lsn",
        backup::pitr::base::lsn_text(lsn)
    );
    match tokio::time::timeout(Duration::from_secs(30), db.probe(&sql)).await {
        Ok(r) => r.map_err(|e| backup::error::chain(&e)),
        Err(_) => Err("no answer within 30 s".into()),
    }
}

/// Promotes the paused server on the session that holds the migration lock (`pg_promote`,
/// waiting up to a minute), then checks that its `recovery.signal` is gone.
async fn promote(db: &mut Database, data_dir: &Path) -> Result<(), String> {
    tracing::info!("rewind: recovery paused at the restore point; promoting the cluster");
    let done = tokio::time::timeout(
        Duration::from_secs(90),
        db.probe("SELECT pg_promote(true, 60)"),
    )
    .await;
    match done {
        Ok(Ok(true)) if !data_dir.join("recovery.signal").exists() => Ok(()),
        Ok(Ok(_)) => Err("the restored cluster did not promote within 60 s of `pg_promote`".into()),
        Ok(Err(e)) => Err(format!(
            "promoting the restored cluster: {}",
            backup::error::chain(&e)
        )),
        Err(_) => {
            Err("promoting the restored cluster: no answer to `pg_promote` within 90 s".into())
        }
    }
}

/// The migration lock on `url`, if it can be had at once (a server still starting answers
/// nothing, or refuses).
async fn try_lock(url: &DatabaseUrl) -> Option<Database> {
    let locked = tokio::time::timeout(
        Duration::from_secs(5),
        Database::open_locked(url, Open::Existing, Duration::from_millis(200)),
    )
    .await;
    match locked {
        Ok(Ok(db)) => {
            tracing::info!("rewind: the migration lock is held on the restored cluster");
            Some(db)
        }
        _ => None,
    }
}

/// Runs a `[pitr.server]` command line with `sh -c`, killed with its process group past
/// `limit`. Its output goes to a file (a server it starts may keep inherited pipes open for as
/// long as it runs), then to the log.
async fn run(settings: &Settings, cmd: &str, limit: Duration) -> Result<(), String> {
    let dir = settings.temp_dir();
    backup::scratch::create_private_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let out_path = dir.join(format!(".dbward-rewind-{}.out", std::process::id()));
    let out = std::fs::File::create(&out_path)
        .map_err(|e| format!("creating {}: {e}", out_path.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", out_path.display()))?;
    let mut c = crate::hooks::command(settings, "sh");
    c.args(["-c", cmd])
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    let status = match c.spawn() {
        Ok(mut child) => crate::hooks::wait_bounded(&mut child, limit, &format!("`{cmd}`")).await,
        Err(e) => Err(e),
    };
    // Only its end: a server's log it printed is not read whole into memory.
    let text = tail_of(&out_path);
    let _ = std::fs::remove_file(&out_path);
    for line in text.lines() {
        tracing::info!("  {line}");
    }
    let status = status
        .map_err(|e| format!("`{cmd}` could not run: {e}"))?
        .ok_or_else(|| {
            format!(
                "`{cmd}` did not finish within {}; it was killed, with every process it started",
                migrator::error::humanize(limit)
            )
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{cmd}` failed ({status}): {}",
            text.trim().chars().take(500).collect::<String>()
        ))
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

/// A failure point of the crash-consistency suite (nothing without the `failpoints` feature).
fn failpoint(name: &str) -> Result<(), String> {
    dbconn::failpoint::hit(name)
}
