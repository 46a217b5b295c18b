//! `dbward restore-drill [SNAPSHOT|latest|random]`: prove a snapshot restores. Text report (one
//! line per check), `--report` JSON, `--metrics` Prometheus textfile, and a receipt stored next
//! to the snapshot. Exit 0 only when every check passed.

use std::hash::{BuildHasher, Hasher};

use serde_json::json;

use migrator::DatabaseUrl;
use restore_drill::{Options, Scratch, Verdict};

use super::database_url;
use crate::cli::DrillArgs;
use crate::exit::Exit;
use crate::report::{Failure, Report};
use crate::service::select::resolve;
use crate::settings::Settings;

pub async fn run(settings: &Settings, args: &DrillArgs) -> Result<Report, Failure> {
    let url = database_url(settings)?;
    // One scheduled drill per database across hosts.
    let _turn = if args.scheduled {
        match crate::jobs::turn(settings, &url, crate::jobs::Job::Drill(drill_kind(args))).await? {
            crate::jobs::Decision::Run(turn) => Some(turn),
            crate::jobs::Decision::Done(said) => {
                tracing::info!("{said}");
                return Ok(Report {
                    text: format!("{said}\n"),
                    json: serde_json::json!({ "success": null, "done": said }),
                    code: Exit::Success,
                });
            }
        }
    } else {
        None
    };
    let stores = settings.stores().await?;
    let store = stores.primary();
    if args.stream {
        return stream(settings, args, &url, &stores).await;
    }
    if args.physical {
        use backup::pitr::cluster::Which;
        use restore_drill::physical::{drill, DrillOptions};
        let migrator::DatabaseUrl::Postgres(live) = &url else {
            return Err(Failure::new(
                Exit::Usage,
                "a physical drill restores a PostgreSQL cluster's base backup; the database is SQLite",
            ));
        };
        let which = match args.snapshot.as_str() {
            "latest" => Which::Latest,
            "random" => {
                return Err(Failure::new(
                    Exit::Usage,
                    "--physical drills `latest` (the newest base, to the end of the archive) or a base's id",
                ))
            }
            id => Which::Base(id.to_string()),
        };
        let opts = DrillOptions {
            probes: settings.drill.probes.clone(),
            max_rto: settings.drill.max_rto,
            migrations: migrations(settings)?,
            // The copy's server runs as `postgres` when dbward is root: its directory must be
            // one that user can reach, which the state dir (0700) is not. `backup.temp_dir`
            // when set, else the system's temp dir (TMPDIR).
            temp_dir: settings.temp_dir.clone().unwrap_or_else(std::env::temp_dir),
        };
        let archive = crate::service::pitr::archive(settings, &url).await?;
        let (m, report) = drill(archive, live, &which, &opts).await?;
        return finish(settings, args, &url, &[store], &m, report).await;
    }
    let which = if args.snapshot == "random" {
        let live = backup::owner::live_identity(&url).await?;
        let folder_owner = backup::owner::read(store, &url.name()).await?;
        let all = backup::owner::mine(
            store,
            &url.name(),
            backup::list(store, &url.name()).await?,
            &live,
            backup::owner::format_of(&url),
            folder_owner.as_ref(),
        )?;
        if all.is_empty() {
            return Err(Failure::new(
                Exit::Failed,
                format!("no snapshot of {} in {}", url.name(), settings.store),
            ));
        }
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        all[(h.finish() % all.len() as u64) as usize].id.clone()
    } else {
        args.snapshot.clone()
    };
    let (m, copies) = resolve(settings, &stores, &url, &which).await?;
    if let Some(p) = &m.stream {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "snapshot {} is a position in the stream (step {} of generation {}), not a file: drill the stream with `dbward restore-drill --stream`, or restore the position with `dbward restore {} --to PATH`",
                m.id, p.seq, p.generation, m.id
            ),
        ));
    }

    let scratch = match (&settings.drill.database, &url) {
        (None, _) => Scratch::SameServer,
        (Some(e), DatabaseUrl::Postgres(_)) if e == "ephemeral" => Scratch::Ephemeral,
        (Some(s), DatabaseUrl::Postgres(_)) => match DatabaseUrl::parse(s)? {
            DatabaseUrl::Postgres(pg) => Scratch::Server(pg),
            DatabaseUrl::Sqlite(_) => {
                return Err(Failure::new(
                    Exit::Usage,
                    "drill.database must be a postgres:// URL for a PostgreSQL snapshot",
                ))
            }
        },
        (Some(_), DatabaseUrl::Sqlite(_)) => Scratch::SameServer,
    };
    let migrations = migrations(settings)?;
    // An encrypted snapshot and no identity at all: refused before anything runs (exit 3).
    let identities = settings.identities_for(&m)?;
    let opts = Options {
        identities,
        scratch,
        probes: settings.drill.probes.clone(),
        max_rto: settings.drill.max_rto,
        max_snapshot_age: settings.drill.max_snapshot_age,
        migrations,
        temp_dir: settings.temp_dir(),
    };
    tracing::info!(
        "restore drill of snapshot {} ({}, {})",
        m.id,
        m.kind.as_str(),
        backup::bytes(m.stored_bytes)
    );
    let report = restore_drill::drill(&copies, &url, &m, &opts).await;
    finish(settings, args, &url, &copies, &m, report).await
}

/// The migrations folder's files, when there is one: whether the restored head is known.
/// The migrations folder's files, for the migration-head check. A folder that was given but
/// does not exist is a configuration error (exit 2): the check would compare nothing and pass.
/// Without the setting and without `./migrations` (a host that only drills), the head is
/// checked against the manifest alone, and the check says so.
fn migrations(settings: &Settings) -> Result<Option<Vec<migrator::MigrationFile>>, Failure> {
    if settings.migrations.is_dir() {
        return Ok(Some(migrator::discover(&settings.migrations)?.versioned));
    }
    if settings.migrations_given {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "the migrations folder {} does not exist (database.migrations, --migrations or DBWARD_MIGRATIONS): the drill's migration-head check would compare the restored head with nothing. Fix the setting, or leave it out to check the head against the snapshot's manifest alone",
                settings.migrations.display()
            ),
        ));
    }
    Ok(None)
}

/// The receipt, `--report`, `--metrics` and the text of a drill's report.
async fn finish(
    settings: &Settings,
    args: &DrillArgs,
    url: &DatabaseUrl,
    copies: &[&backup::Store],
    m: &backup::Manifest,
    report: restore_drill::Report,
) -> Result<Report, Failure> {
    let store = copies[0];

    let receipt = backup::DrillReceipt {
        snapshot: m.id.clone(),
        at: report.started_at.clone(),
        success: report.success,
        rto_seconds: report.rto_seconds,
        failed_check: report.first_failure().map(|c| c.name.to_string()),
    };
    let receipt_json = serde_json::to_vec_pretty(&receipt).expect("serializes");
    // A receipt states what the snapshot proved; a drill stopped by a signal proved nothing.
    if report.environment_failure() {
        tracing::warn!(
            "the drill could not run (stopped, or a failure that is not the snapshot's): no receipt is stored for {}",
            m.id
        );
    } else {
        // The receipt goes next to the copy that was drilled: a copy that failed its checksum
        // (the primary's, when a mirror's was used) gets none, so nothing counts it as proven.
        let drilled = copies.get(report.copy).copied().unwrap_or(store);
        if report.copy > 0 {
            tracing::warn!(
                "the drill proved the copy in {}; the first copy ({}) did not verify and gets no receipt",
                drilled.describe(&m.data_key),
                copies[0].describe(&m.data_key)
            );
        }
        if let Err(e) = drilled
            .put(&backup::receipt_key(&url.name(), &m.id), &receipt_json)
            .await
        {
            tracing::error!(
                "could not store the drill receipt: {}",
                backup::error::chain(&e)
            );
        }
        record(settings, args, url, &m.id, &report).await;
    }
    present(settings, args, &m.id, report)
}

/// Adds a drill that ran to the drill history in the primary store (which `report` and
/// `schedule.once_within` read), whichever copy it drilled; outlives the snapshot.
async fn record(
    settings: &Settings,
    args: &DrillArgs,
    url: &DatabaseUrl,
    snapshot: &str,
    report: &restore_drill::Report,
) {
    let record = backup::DrillRecord {
        at: backup::manifest::now_rfc3339(time::OffsetDateTime::now_utc()),
        host: backup::hostname(),
        snapshot: snapshot.to_string(),
        kind: drill_kind(args),
        success: report.success,
        rto_seconds: report.rto_seconds,
        failed_check: report.first_failure().map(|c| c.name.to_string()),
        scheduled: args.scheduled,
    };
    let stored = match settings.store().await {
        Ok(store) => backup::record_drill(&store, &url.name(), &record).await,
        Err(e) => Err(e),
    };
    if let Err(e) = stored {
        tracing::error!(
            "could not add the drill to the store's drill history: {}",
            backup::error::chain(&e)
        );
    }
}

/// What kind of drill `args` asks for, as the drill history names it.
pub fn drill_kind(args: &DrillArgs) -> backup::DrillKind {
    if args.physical {
        backup::DrillKind::Physical
    } else if args.stream {
        backup::DrillKind::Stream
    } else {
        backup::DrillKind::Snapshot
    }
}

/// `--report`, `--metrics` and the text of a drill's report of `what`; exit 1 unless it passed.
fn present(
    settings: &Settings,
    args: &DrillArgs,
    what: &str,
    report: restore_drill::Report,
) -> Result<Report, Failure> {
    let report_json = serde_json::to_value(&report).expect("serializes");
    if let Some(path) = &args.report {
        std::fs::write(path, format!("{report_json:#}\n"))
            .map_err(|e| Failure::new(Exit::Failed, format!("--report {}: {e}", path.display())))?;
    }
    // The metrics are a view of the verdict, never the verdict: a file that cannot be written
    // is a warning (and `metrics_error` in --json), and the drill's result decides the exit.
    let metrics = match (&args.metrics, &settings.drill.metrics) {
        (Some(p), _) => Some((p, "--metrics")),
        (None, Some(p)) => Some((p, "the setting drill.metrics")),
        (None, None) => None,
    };
    let metrics_error = metrics.and_then(|(path, origin)| {
        let e = restore_drill::metrics::write(path, &report).err()?;
        let said = format!(
            "could not write the drill's metrics to {} ({origin}): {e}; the drill's own result stands. Create that directory (node_exporter's textfile collector reads it), or remove {origin}",
            path.display()
        );
        tracing::warn!("{said}");
        Some(said)
    });

    let mut text = format!(
        "restore drill of {what} ({} old)\n",
        age(report.snapshot_age_seconds)
    );
    for c in &report.checks {
        let v = match c.verdict {
            Verdict::Passed => "ok  ",
            Verdict::Failed => "FAIL",
            Verdict::Error => "ERR ",
            Verdict::Skipped => "skip",
        };
        text.push_str(&format!(
            "  {v} {:<15} {:>7.2}s  {}\n",
            c.name, c.seconds, c.detail
        ));
    }
    match report.rto_seconds {
        Some(r) => text.push_str(&format!("time to restore (RTO): {r:.2}s\n")),
        None => text.push_str("time to restore (RTO): never restored\n"),
    }
    if let Some(rpo) = report.rpo_seconds {
        text.push_str(&format!(
            "recovery point (RPO): the state recovered is from {rpo:.0}s before the drill\n"
        ));
    }
    if report.success {
        Ok(Report {
            text,
            json: json!({ "report": report_json, "metrics_error": metrics_error }),
            code: Exit::Success,
        })
    } else {
        let failed = report
            .first_failure()
            .map(|c| format!("{}: {}", c.name, c.detail))
            .unwrap_or_default();
        Err(Failure {
            details: json!({ "report": report_json, "metrics_error": metrics_error }),
            text,
            ..Failure::new(
                Exit::Failed,
                format!("restore drill of {what} failed at {failed}"),
            )
        })
    }
}

fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// `restore-drill --stream`: the newest state of a SQLite database's stream, drilled apart.
async fn stream(
    settings: &Settings,
    args: &DrillArgs,
    url: &DatabaseUrl,
    stores: &backup::StoreSet,
) -> Result<Report, Failure> {
    if !matches!(url, DatabaseUrl::Sqlite(_)) {
        return Err(Failure::new(
            Exit::Usage,
            "--stream drills a SQLite database's stream (`dbward replicate`)",
        ));
    }
    let opts = Options {
        identities: settings.identities()?,
        scratch: Scratch::SameServer,
        probes: settings.drill.probes.clone(),
        max_rto: settings.drill.max_rto,
        max_snapshot_age: settings.drill.max_snapshot_age,
        migrations: migrations(settings)?,
        temp_dir: settings.temp_dir(),
    };
    let id = crate::service::stream::whose(url, stores.primary()).await?;
    let report = restore_drill::stream::drill(stores, &url.name(), id.as_deref(), &opts).await;
    let what = report.snapshot.clone();
    if !report.environment_failure() {
        record(settings, args, url, &what, &report).await;
    }
    present(settings, args, &what, report)
}
