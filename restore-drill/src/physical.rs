//! A physical drill: a base and the WAL archive restored by a private server into a scratch
//! data directory, checked, then stopped and removed ([`backup::pitr::cluster`] does the
//! restore).

use std::path::{Path, PathBuf};
use std::time::Instant;

use backup::pitr::cluster::{choose, materialize, plan, Archive, Chosen, Planned, Running, Which};
use backup::ErrorKind;
use dbconn::PgUrl;

use crate::checks::{classify, CheckFailure, Checks};
use time::OffsetDateTime;

/// What a physical drill checks beyond the restore itself.
pub struct DrillOptions {
    pub probes: Vec<String>,
    pub max_rto: Option<std::time::Duration>,
    /// The migrations folder's files, when there is one: the copy's head must be one of them.
    pub migrations: Option<Vec<migrator::MigrationFile>>,
    /// Where the scratch data directory is made: one the server's user can reach.
    pub temp_dir: PathBuf,
}

/// The WAL check: the chain from the base to its target, planned. The archive's refusals (a gap
/// short of the target, a base whose WAL is gone, another cluster's archive) fail the drill
/// against the base; anything else (a missing server binary, a bad setting) is this machine's.
async fn check_wal(checks: &mut Checks, chosen: Chosen, started: Instant) -> Option<Planned> {
    match plan(chosen).await {
        Ok(p) => {
            let wal = &p.plan;
            let detail = format!(
                "{} segment(s) {}..{} on timeline {}{}",
                wal.segments.len(),
                wal.segments.first().map(String::as_str).unwrap_or(""),
                wal.last,
                wal.timeline,
                wal.gap_before
                    .as_ref()
                    .map(|g| format!(" (a gap at {g}: replay ends before it)"))
                    .unwrap_or_default()
            );
            checks.record("wal", (Ok(((), detail)), started.elapsed().as_secs_f64()));
            Some(p)
        }
        Err(e) => {
            let why = if e.kind() == ErrorKind::Refused {
                CheckFailure::Snapshot(backup::error::chain(&e))
            } else {
                CheckFailure::Environment(backup::error::chain(&e))
            };
            checks.record::<()>("wal", (Err(why), started.elapsed().as_secs_f64()));
            None
        }
    }
}

/// A new name for the scratch data directory in `parent` (created, private). Short: the copy's
/// socket lives in it, and a socket's path has at most 107 bytes.
fn scratch_dir(parent: &Path) -> Result<PathBuf, backup::Error> {
    backup::scratch::create_private_dir(parent).map_err(backup::Error::io(format!(
        "creating the temp dir {}",
        parent.display()
    )))?;
    let tag = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish() as u16
    };
    Ok(parent.join(format!("dbward-drill-{}-{tag:04x}", std::process::id())))
}

/// A physical drill: the base and its WAL restored into a scratch data directory (in the temp
/// dir) by a private server, checked, then the server stopped and the directory removed,
/// whatever happened. The report's RTO runs from the first check to the promotion; its RPO is
/// how long before the drill the last replayed transaction committed.
pub async fn drill(
    archive: Archive,
    live: &PgUrl,
    which: &Which,
    opts: &DrillOptions,
) -> Result<(backup::Manifest, crate::Report), backup::Error> {
    let now = OffsetDateTime::now_utc();
    let started = Instant::now();
    let mut checks = Checks::default();
    let chosen = choose(archive, which).await?;
    let m = chosen.base.clone();
    // The archive's refusals (a gap short of the target, a base whose WAL is gone, another
    // cluster's archive) fail the drill against the base; anything else (a missing server
    // binary, a bad setting) is this machine's.
    let planned = check_wal(&mut checks, chosen, started).await;
    let dir = scratch_dir(&opts.temp_dir)?;
    let running = match &planned {
        None => None,
        Some(planned) => {
            checks
                .run("restore", async {
                    let r = materialize(planned, live, &dir).await.map_err(classify)?;
                    let detail = format!(
                        "base {} recovered to {} and promoted ({}), in {}",
                        m.id,
                        r.restored.target,
                        r.restored
                            .recovered
                            .replayed_to_lsn
                            .as_deref()
                            .unwrap_or("?"),
                        dir.display()
                    );
                    Ok((r, detail))
                })
                .await
        }
    };
    let rto = running.as_ref().map(|_| started.elapsed().as_secs_f64());
    let rpo = running.as_ref().and_then(|r| rpo_of(r, now));
    if let Some(r) = &running {
        check_copy(&mut checks, r, live, opts).await;
    }
    // The copy is stopped and removed here, before the report.
    drop(running);
    if let (Some(max), Some(r), false) = (opts.max_rto, rto, checks.failed) {
        let ok = r <= max.as_secs_f64();
        checks.record(
            "thresholds",
            (
                if ok {
                    Ok(((), String::new()))
                } else {
                    Err(CheckFailure::Snapshot(format!(
                        "RTO {r:.1}s exceeds drill.max_rto {}",
                        dbconn::error::humanize(max)
                    )))
                },
                0.0,
            ),
        );
    }
    let age = m
        .created()
        .map(|c| (now - c).as_seconds_f64())
        .unwrap_or(f64::NAN);
    let report = crate::Report {
        snapshot: m.id.clone(),
        database: m.database.clone(),
        engine: m.engine.clone(),
        started_at: backup::manifest::now_rfc3339(now),
        snapshot_age_seconds: age,
        rto_seconds: rto,
        rpo_seconds: rpo,
        stored_bytes: m.stored_bytes,
        raw_bytes: m.raw_bytes,
        encrypted: m.encryption.is_some(),
        copy: 0,
        success: !checks.failed,
        checks: checks.list,
    };
    Ok((m, report))
}

/// How long before `now` the last transaction the copy replayed committed.
fn rpo_of(r: &Running, now: OffsetDateTime) -> Option<f64> {
    let at = r.restored.recovered.last_transaction_at.as_deref()?;
    // PostgreSQL's text form: `2026-11-26 10:39:01.81558+00`.
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second][optional [.[subsecond]]][offset_hour sign:mandatory]"
    );
    let t = OffsetDateTime::parse(at, &fmt).ok()?;
    Some((now - t).as_seconds_f64().max(0.0))
}

/// The checks on the promoted copy: integrity, amcheck where it can run, the migration head
/// (one of the folder's files), the probes.
async fn check_copy(checks: &mut Checks, r: &Running, live: &PgUrl, opts: &DrillOptions) {
    let copy = async {
        let db = dbconn::postgres::Postgres::connect(&r.url)
            .await
            .map_err(|e| CheckFailure::Environment(backup::error::chain(&e)))?;
        Ok::<_, CheckFailure>(crate::postgres::Restored {
            server: r.url.clone(),
            name: live.dbname().to_string(),
            db,
            counts: Default::default(),
        })
    }
    .await;
    match copy {
        Ok(c) => {
            checks.run("integrity", c.integrity()).await;
            match c.amcheck_available().await {
                Ok(()) => {
                    checks.run("amcheck", c.amcheck()).await;
                }
                Err(why) => checks.skipped("amcheck", why.0),
            }
            checks
                .run("migration-head", async {
                    let head = c.head().await?;
                    let detail = match (&head, &opts.migrations) {
                        (None, _) => "no migration applied".to_string(),
                        (Some(h), Some(files)) if !files.iter().any(|f| f.version == h.version) => {
                            return Err(CheckFailure::Snapshot(format!(
                                "the copy's head V{} {} is not a file of the migrations folder",
                                h.version, h.name
                            )))
                        }
                        (Some(h), _) => h.label(),
                    };
                    Ok(((), detail))
                })
                .await;
            if !opts.probes.is_empty() {
                checks
                    .run(
                        "probes",
                        crate::checks::probes_true(&opts.probes, |p| c.probe(p)),
                    )
                    .await;
            }
        }
        Err(e) => {
            checks.record::<()>("integrity", (Err(e), 0.0));
        }
    }
}
