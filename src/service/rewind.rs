//! The health guard's rewind of the PostgreSQL cluster on this host to a deploy's restore
//! point (`[pitr.server]`).
//!
//! Everything that can be checked or prepared while the old cluster runs is: the live server is
//! the configured data directory's and the restore point's cluster, it holds no database but
//! the application's, the WAL chain is whole, and the base is extracted with its WAL beside
//! the data directory (`.<name>.dbward-partial-<pid>`, on the same file system: the disk must
//! hold both). Only then is the cluster stopped. Its data directory is moved aside (kept, as
//! `<data_dir>.dbward-replaced-<stamp>`), the restored one takes its name, and the cluster is
//! started; it recovers to the restore point and promotes. Any failure after the stop puts the
//! old directory back and starts it again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backup::restore::physical::Target;
use backup::restore::server::{self, OsUser};
use migrator::DatabaseUrl;

use super::physical::{choose, fill, plan, rename_new, NewDir, Which};
use crate::report::{Exit, Failure};
use crate::settings::{PitrServer, Settings};

/// How long the rewound cluster may take to recover and promote, and the old one to start again.
const RECOVERY_LIMIT: Duration = Duration::from_secs(3600);
/// How long the postmaster may take to exit once `stop` returned.
const STOP_LIMIT: Duration = Duration::from_secs(120);

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
}

/// A rewind checked and planned: nothing was changed yet.
pub struct Checked {
    /// When the guard chose to rewind: the rewind's time counts from here.
    started: Instant,
    planned: super::physical::Planned,
    point_id: String,
    want_head: Option<backup::manifest::Head>,
    user: OsUser,
    mode: u32,
}

/// Checks everything a rewind to restore point `point_id` needs before anything is changed:
/// `[pitr.server]` names the live cluster's data directory, owned by its user; the cluster
/// holds no other database (unless allowed); the point's base is this cluster's; the WAL chain
/// to the point is whole. Exit 3 when refused.
pub async fn check(
    settings: &Settings,
    url: &DatabaseUrl,
    point_id: &str,
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
    if !live.other_databases.is_empty() && !cfg.allow_other_databases {
        return Err(refused(format!(
            "the cluster holds other databases than {} ({}), and a rewind takes every one of them back to the restore point; set pitr.server.allow_other_databases = true if that is meant",
            pg.dbname(),
            live.other_databases.join(", ")
        )));
    }
    let meta = std::fs::metadata(&data_dir)
        .map_err(|e| refused(format!("reading {}: {e}", data_dir.display())))?;
    use std::os::unix::fs::MetadataExt;
    if meta.uid() != user.uid {
        return Err(refused(format!(
            "{} is owned by uid {}, and pitr.server.user `{}` is uid {}",
            data_dir.display(),
            meta.uid(),
            user.name,
            user.uid
        )));
    }
    let chosen = choose(settings, url, &Which::Base(point_id.to_string())).await?;
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
    let planned = plan(settings, chosen).await?;
    // The restored directory goes beside the live one, which stays: the disk holds both.
    let p = backup::restore::physical::physical_of(&planned.base)?;
    backup::scratch::ensure_space(
        data_dir.parent().unwrap_or(Path::new("/")),
        planned.base.raw_bytes + planned.plan.segments.len() as u64 * p.segment_bytes,
        &format!(
            "base {} and its WAL beside the live data directory",
            planned.base.id
        ),
    )?;
    let want_head = super::physical::point(&settings.store().await?, &url.name(), point_id)
        .await?
        .and_then(|m| m.migration_head);
    Ok(Checked {
        started,
        planned,
        point_id: point_id.to_string(),
        want_head,
        user,
        mode: meta.mode() & 0o7777,
    })
}

/// Rewinds the cluster as `checked` planned. `Ok` once the cluster runs promoted at the
/// point with the point's migration head; `Err` (exit 1) when it failed: the old cluster runs
/// again, or the message says what to do.
pub async fn rewind(
    settings: &Settings,
    url: &DatabaseUrl,
    checked: Checked,
) -> Result<Rewound, Failure> {
    let Checked {
        started,
        planned,
        point_id,
        want_head,
        user,
        mode,
    } = checked;
    let point_id = point_id.as_str();
    let (DatabaseUrl::Postgres(pg), Some(cfg)) = (url, &settings.pitr.server) else {
        unreachable!("checked: a PostgreSQL cluster with [pitr.server]");
    };
    let data_dir = cfg.data_dir.clone();

    // Prepared beside the data directory while the old cluster still runs.
    tracing::info!(
        "rewind: restoring base {} and {} WAL files beside {} (the cluster still runs)",
        planned.base.id,
        planned.plan.segments.len(),
        data_dir.display()
    );
    let mut dir = NewDir::beside(&data_dir)?;
    fill(&planned, dir.path()).await?;
    let fetched: Vec<String> = planned
        .plan
        .segments
        .iter()
        .chain(&planned.plan.histories)
        .cloned()
        .collect();
    let original_auto = server::prepare_rewind(dir.path(), &planned.target, &fetched)?;
    server::chown_tree(dir.path(), &user)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).map_err(|e| {
        Failure::new(
            Exit::Failed,
            format!("setting the mode of {}: {e}", dir.path().display()),
        )
    })?;

    failpoint("rewind-before-stop").map_err(|e| Failure::new(Exit::Failed, e))?;
    // From the stop until the cluster runs again (on either directory), a signal waits.
    let _section = crate::critical::enter("the cluster is stopped for its rewind");
    // The stop. A cluster that does not stop is left as it is.
    tracing::warn!("rewind: stopping the cluster: sh -c {:?}", cfg.stop);
    let stop = run(settings, &cfg.stop).await;
    // A stop command may return before the postmaster is gone (`kill`, an asynchronous stop).
    let waited = Instant::now();
    while server::postmaster_pid(&data_dir).is_some() && waited.elapsed() < STOP_LIMIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(pid) = server::postmaster_pid(&data_dir) {
        return Err(Failure::new(
            Exit::Failed,
            format!(
                "the cluster did not stop (postmaster {pid} still runs on {} {} after `stop` returned{}); nothing was changed",
                data_dir.display(),
                migrator::error::humanize(STOP_LIMIT),
                stop.err().map(|e| format!("; {e}")).unwrap_or_default()
            ),
        ));
    }
    let down = Instant::now();
    if let Err(e) = stop {
        tracing::warn!("{e} (the cluster is stopped all the same)");
    }
    let kept = PathBuf::from(format!(
        "{}.dbward-replaced-{}",
        data_dir.display(),
        backup::manifest::compact_stamp(time::OffsetDateTime::now_utc())
    ));
    let restart_old = |why: String| async move {
        let again = start_and_wait(settings, cfg, pg, &cfg.data_dir).await;
        Failure::new(
            Exit::Failed,
            match again {
                Ok(()) => format!("{why}; the old cluster runs again, unchanged"),
                Err(e) => format!(
                    "{why}; the old cluster, unchanged in {}, did not start again: {e}. Start it by hand: {}",
                    cfg.data_dir.display(),
                    cfg.start
                ),
            },
        )
    };
    if let Err(e) = rename_new(&data_dir, &kept) {
        return Err(restart_old(format!(
            "moving {} aside to {} failed: {e}",
            data_dir.display(),
            kept.display()
        ))
        .await);
    }
    if let Err(e) = dir.publish() {
        let back = rename_new(&kept, &data_dir);
        return Err(match back {
            Ok(()) => restart_old(backup::error::chain(&e)).await,
            Err(b) => Failure::new(
                Exit::Failed,
                format!(
                    "{}; and moving the old data directory back from {} failed: {b}. Move it back and start the cluster by hand",
                    backup::error::chain(&e),
                    kept.display()
                ),
            ),
        });
    }
    tracing::warn!(
        "rewind: the old data directory is kept as {}; starting the cluster on the restored one: sh -c {:?}",
        kept.display(),
        cfg.start
    );
    let verified = async {
        failpoint("rewind-after-swap")?;
        start_and_wait(settings, cfg, pg, &data_dir).await?;
        let db = dbconn::postgres::Postgres::connect(pg)
            .await
            .map_err(|e| e.to_string())?;
        let recovered = server::recovered(db.client())
            .await
            .map_err(|e| backup::error::chain(&e))?;
        if recovered.migration_head != want_head {
            return Err(format!(
                "the rewound cluster's migration head is {}, and the restore point's {}",
                head_text(&recovered.migration_head),
                head_text(&want_head)
            ));
        }
        Ok(recovered)
    }
    .await;
    let recovered = match verified {
        Ok(r) => r,
        Err(why) => return Err(put_back(settings, cfg, pg, dir, &kept, why).await),
    };
    let downtime = down.elapsed().as_secs_f64();
    if let Err(e) = server::put_back_auto_conf(&data_dir, &original_auto, &user) {
        tracing::warn!(
            "the rewound cluster runs, but its postgresql.auto.conf keeps dbward's recovery lines (harmless outside recovery; remove them by hand): {}",
            backup::error::chain(&e)
        );
    }
    dir.keep();
    tracing::warn!(
        "rewind: the cluster is at restore point {point_id} on a new timeline; restore points fall back to dumps until a new base is taken (`dbward backup --physical`)"
    );
    Ok(Rewound {
        point: point_id.to_string(),
        base: planned.base.id.clone(),
        data_dir,
        kept,
        recovered,
        seconds: started.elapsed().as_secs_f64(),
        downtime_seconds: downtime,
    })
}

fn head_text(h: &Option<backup::manifest::Head>) -> String {
    h.as_ref()
        .map(|h| format!("V{} {}", h.version, h.name))
        .unwrap_or_else(|| "none".into())
}

/// After a failed start on the restored directory: stop it, move it back to its partial name
/// (removed with `dir`), put the old directory back and start it.
async fn put_back(
    settings: &Settings,
    cfg: &PitrServer,
    pg: &dbconn::PgUrl,
    mut dir: NewDir,
    kept: &Path,
    why: String,
) -> Failure {
    let data_dir = &cfg.data_dir;
    tracing::error!("rewind failed: {why}; putting the old data directory back");
    let _ = run(settings, &cfg.stop).await;
    if let Some(pid) = server::postmaster_pid(data_dir) {
        // The restored directory keeps its name: it is not removed under a live server.
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
    let moved = dir.unpublish().and_then(|()| rename_new(kept, data_dir));
    if let Err(e) = moved {
        dir.keep();
        return Failure::new(
            Exit::Failed,
            format!(
                "{why}; and putting the old data directory back failed: {e}. It is kept at {}: move it back to {} and start the cluster",
                kept.display(),
                data_dir.display()
            ),
        );
    }
    drop(dir); // the restored directory, back at its partial name: this run's, removed
    match start_and_wait(settings, cfg, pg, data_dir).await {
        Ok(()) => Failure::new(
            Exit::Failed,
            format!("{why}; the old cluster was put back and runs again, unchanged"),
        ),
        Err(e) => Failure::new(
            Exit::Failed,
            format!(
                "{why}; the old data directory was put back in {}, but it did not start: {e}. Start it by hand: {}",
                data_dir.display(),
                cfg.start
            ),
        ),
    }
}

/// Runs `pitr.server.start`, then waits until the server on `data_dir` takes connections out
/// of recovery. A postmaster that is gone for 5 s once `start` returned is a failed start.
async fn start_and_wait(
    settings: &Settings,
    cfg: &PitrServer,
    pg: &dbconn::PgUrl,
    data_dir: &Path,
) -> Result<(), String> {
    run(settings, &cfg.start).await?;
    let began = Instant::now();
    let mut gone_since: Option<Instant> = None;
    let mut last = String::from("no answer yet");
    loop {
        if server::postmaster_pid(data_dir).is_none() {
            let since = *gone_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(5) {
                return Err(format!(
                    "the server on {} stopped (the end of its log says why: a restore point never reached ends recovery); last answer: {last}",
                    data_dir.display()
                ));
            }
        } else {
            gone_since = None;
            match server::out_of_recovery(pg).await {
                Ok(true) => return Ok(()),
                Ok(false) => last = "still in recovery".into(),
                Err(e) => last = e,
            }
        }
        if began.elapsed() > RECOVERY_LIMIT {
            return Err(format!(
                "the server did not finish recovery within {}: {last}",
                migrator::error::humanize(RECOVERY_LIMIT)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a `[pitr.server]` command line with `sh -c`; its output goes to the log.
async fn run(settings: &Settings, cmd: &str) -> Result<(), String> {
    let mut c = crate::hooks::command(settings, "sh");
    c.args(["-c", cmd]);
    let out = tokio::time::timeout(Duration::from_secs(600), c.output())
        .await
        .map_err(|_| format!("`{cmd}` did not finish within 10 minutes"))?
        .map_err(|e| format!("`{cmd}` could not run: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in text.lines() {
        tracing::info!("  {line}");
    }
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{cmd}` failed ({}): {}",
            out.status,
            text.trim().chars().take(500).collect::<String>()
        ))
    }
}

/// A failure point of the crash-consistency suite (nothing without the `failpoints` feature).
fn failpoint(name: &str) -> Result<(), String> {
    dbconn::failpoint::hit(name)
}
