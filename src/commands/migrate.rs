//! `dbward migrate`: discover and lint, take the migration lock, read the history under it,
//! refuse on drift, then apply every pending migration in one transaction.

use std::time::Instant;

use serde_json::json;

use migrator::database::Open;
use migrator::{Database, DatabaseUrl, Plan, Severity};

use super::{database_url, dialect};
use crate::cli::MigrateArgs;
use crate::report::{Failure, Report};
use crate::settings::Settings;
use crate::state;

/// `migrate`, with its outcome appended to the deploy log when it applied something or failed.
pub async fn run(settings: &Settings, args: &MigrateArgs) -> Result<Report, Failure> {
    let result = migrate(settings, args).await;
    if args.dry_run {
        return result;
    }
    let Ok(url) = database_url(settings) else {
        return result;
    };
    let entry = match &result {
        Ok(r) => {
            let applied: Vec<i64> = r.json["applied"]
                .as_array()
                .map(|a| a.iter().filter_map(|f| f["version"].as_i64()).collect())
                .unwrap_or_default();
            if applied.is_empty() {
                None
            } else {
                let mut e = crate::deploys::Entry::new("migrate", url.display(), "applied".into());
                e.applied = applied;
                e.snapshot = r.json["snapshot"].as_str().map(str::to_string);
                Some(e)
            }
        }
        Err(f) => Some(crate::deploys::Entry::new(
            "migrate",
            url.display(),
            format!("failed (exit {}): {}", f.code, f.message),
        )),
    };
    if let Some(mut e) = entry {
        e.reason = args.reason.clone();
        let store = settings.store().await.ok();
        crate::deploys::append(&settings.state_dir, store.as_ref(), &url.name(), &e).await;
    }
    result
}

async fn migrate(settings: &Settings, args: &MigrateArgs) -> Result<Report, Failure> {
    let started = Instant::now();
    let url = database_url(settings)?;

    // Everything that can be checked without the database is checked first.
    let files = migrator::discover(&settings.migrations)?;
    let findings = migrator::lint::lint(&files, dialect(&url));
    let (errors, warnings): (Vec<_>, Vec<_>) = findings
        .into_iter()
        .partition(|f| f.severity == Severity::Error);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if !errors.is_empty() {
        return Err(migrator::Error::Lint { findings: errors }.into());
    }

    if args.dry_run {
        return dry_run(&url, &files, &warnings).await;
    }

    // A fresh volume gets its data back before anything else (restore.if_missing); without
    // it, a missing SQLite file whose snapshots are in the store is said loudly.
    if args.restore_if_missing || settings.restore_if_missing {
        super::restore::restore_if_missing(settings, &url).await?;
    } else if let DatabaseUrl::Sqlite(p) = &url {
        if !p.exists() {
            warn_if_snapshots_exist(settings, &url).await;
        }
    }
    let mut db = Database::open_locked(&url, Open::Create, args.lock_timeout).await?;
    failpoint("migrate-after-lock")?;
    // A SQLite file that was empty until now (opening created it) is a first deploy: nothing to
    // snapshot. Looked at under the lock, so a restore swapping the file in is never mistaken.
    let first_deploy = matches!(&url, DatabaseUrl::Sqlite(p) if std::fs::metadata(p).map_or(true, |m| m.len() == 0));
    // Read under the lock: a runner that waited sees what the other one applied.
    let plan = Plan::new(&files, db.applied().await?);
    if !plan.drift.is_empty() {
        return Err(migrator::Error::Drift { drift: plan.drift }.into());
    }
    if plan.pending.is_empty() {
        record(
            settings,
            &url,
            None,
            &[],
            plan.head().map(|h| state::Head {
                version: h.version,
                name: h.name.clone(),
                checksum: h.checksum.to_string(),
            }),
        )?;
        let head = head_text(&plan);
        tracing::info!("nothing pending; {} is at {head}", url.display());
        return Ok(Report {
            text: format!("nothing pending; database at {head}\n"),
            json: json!({ "database": url.display(), "applied": [], "head": plan.head(), "snapshot": null, "elapsed_ms": started.elapsed().as_millis() as u64 }),
            code: 0,
        });
    }

    refuse_failed_batch(settings, &url, &plan, args.retry_failed).await?;

    // The pre-deploy snapshot: under the lock, once something is pending. A first deploy has
    // nothing to protect. If it fails, nothing is applied.
    let snapshot = if first_deploy || args.no_snapshot {
        None
    } else {
        let m = super::backup::snapshot(settings, &url, backup::Kind::PreDeploy, None).await?;
        tracing::info!("pre-deploy snapshot {}", m.id);
        Some(m.id)
    };

    failpoint("migrate-after-snapshot")?;
    let names: Vec<String> = plan.pending.iter().map(|f| f.file_name()).collect();
    tracing::info!(
        "applying {} migration(s) in one transaction: {}",
        names.len(),
        names.join(", ")
    );
    db.apply(&plan.pending, settings.lock_timeout).await?;
    migrator::committed::mark(format!(
        "the migration batch ({}) was committed",
        names.join(", ")
    ));
    failpoint("migrate-after-commit")?;
    let last = plan.pending.last().expect("pending is not empty");
    let applied: Vec<i64> = plan.pending.iter().map(|f| f.version).collect();
    // The batch is committed: a failure to record it must not say otherwise (exit 1 promises
    // the database is as it was). Without the record the guard sees an older deploy whose head
    // no longer matches, so it never restores on a wrong basis.
    let recorded = record(
        settings,
        &url,
        snapshot.clone(),
        &applied,
        Some(state::Head {
            version: last.version,
            name: last.name.clone(),
            checksum: last.checksum.to_string(),
        }),
    );
    if let Err(e) = &recorded {
        tracing::error!(
            "{}; the health guard will not restore this deploy automatically (restore it by id: {})",
            e.message,
            snapshot.as_deref().unwrap_or("no pre-deploy snapshot was taken")
        );
    }
    // A batch went through: any record of a rolled-back one is stale.
    if let Err(e) = state::clear_failed(&settings.state_dir, &url.name()) {
        tracing::warn!("{e}");
    }
    if let Ok(store) = settings.store().await {
        if let Err(e) = store.delete(&state::failed_key(&url.name())).await {
            tracing::warn!("removing the failed-batch record from the store: {e}");
        }
    }
    let head = format!("V{} {}", last.version, last.name);
    tracing::info!(
        "applied {} migration(s) in {:.2}s; head is {head}",
        names.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(Report {
        text: format!(
            "applied {} migration(s): {}\nhead: {head}\n",
            names.len(),
            names.join(", ")
        ),
        json: json!({
            "database": url.display(),
            "applied": plan.pending.iter().map(|f| json!({ "version": f.version, "name": f.name, "file": f.path })).collect::<Vec<_>>(),
            "head": { "version": last.version, "name": last.name, "checksum": last.checksum.to_string() },
            "snapshot": snapshot,
            "deploy_recorded": recorded.is_ok(),
            "elapsed_ms": started.elapsed().as_millis() as u64,
        }),
        code: 0,
    })
}

/// Records this deploy in the state dir, for `restore pre-deploy` and the health guard. A
/// deploy that applied nothing is recorded too, so the guard never acts on an older one.
fn record(
    settings: &Settings,
    url: &DatabaseUrl,
    snapshot: Option<String>,
    applied: &[i64],
    head: Option<state::Head>,
) -> Result<(), Failure> {
    let deploy = state::Deploy {
        database: url.display(),
        at: backup::manifest::now_rfc3339(time::OffsetDateTime::now_utc()),
        pre_deploy_snapshot: snapshot,
        applied: applied.to_vec(),
        head,
        restored: None,
    };
    state::write(&settings.state_dir, &url.name(), &deploy).map_err(|e| {
        Failure::new(
            crate::report::EXIT_FAILED,
            format!("the migrations were applied, but recording the deploy failed: {e}"),
        )
    })
}

/// The batch the health guard rolled back is not applied again (a release that breaks its app
/// would otherwise loop: migrate, unhealthy, restore, restart) unless `--retry-failed`.
async fn refuse_failed_batch(
    settings: &Settings,
    url: &DatabaseUrl,
    plan: &Plan<'_>,
    retry: bool,
) -> Result<(), Failure> {
    let store = settings.store().await?;
    let Some(failed) = state::find_failed(&settings.state_dir, &store, &url.name())
        .await
        .map_err(|e| Failure::new(crate::report::EXIT_FAILED, e))?
    else {
        return Ok(());
    };
    let pending: Vec<state::BatchFile> = plan
        .pending
        .iter()
        .map(|f| state::BatchFile {
            version: f.version,
            name: f.name.clone(),
            checksum: f.checksum.to_string(),
        })
        .collect();
    if pending != failed.batch {
        return Ok(()); // a changed or added file makes a new batch
    }
    let names: Vec<String> = pending
        .iter()
        .map(|f| format!("V{} {}", f.version, f.name))
        .collect();
    if retry {
        tracing::warn!(
            "applying again the batch the health guard rolled back at {} (--retry-failed): {}",
            failed.at,
            names.join(", ")
        );
        return Ok(());
    }
    Err(Failure::new(
        crate::report::EXIT_REFUSED,
        format!(
            "this batch ({}) was rolled back by the health guard at {} (the app was unhealthy: {}; it restored snapshot {}). \
             Not applying it again: ship a fixed release (any changed or added migration makes a new batch), \
             or run `dbward migrate --retry-failed` once the cause is understood. Nothing was changed.",
            names.join(", "),
            failed.at,
            failed.reason,
            failed.snapshot
        ),
    ))
}

/// `migrate` creates a missing SQLite file (a first deploy must work), but a missing file whose
/// snapshots are in the store is more likely a lost volume than a first deploy.
async fn warn_if_snapshots_exist(settings: &Settings, url: &DatabaseUrl) {
    let Ok(store) = settings.store().await else {
        return;
    };
    if let Ok(all) = backup::list(&store, &url.name()).await {
        if let Some(newest) = all
            .iter()
            .find(|m| m.format == backup::owner::format_of(url))
        {
            tracing::warn!(
                "{} does not exist, but {} holds snapshots of `{}` (newest {}): if this is a lost volume, stop and run `dbward restore latest --if-missing` (or set restore.if_missing = true); creating a new empty database",
                url.display(),
                settings.store,
                url.name(),
                newest.id
            );
        }
    }
}

/// A failure point of the crash-consistency suite (nothing without the `failpoints` feature).
fn failpoint(name: &str) -> Result<(), Failure> {
    migrator::failpoint::hit(name).map_err(|e| Failure::new(crate::report::EXIT_FAILED, e))
}

fn head_text(plan: &Plan) -> String {
    plan.head()
        .map(|h| format!("V{} {}", h.version, h.name))
        .unwrap_or_else(|| "no migration".into())
}

/// The plan and the lint result; reads the history (if there is a database) and changes nothing.
async fn dry_run(
    url: &DatabaseUrl,
    files: &[migrator::MigrationFile],
    warnings: &[migrator::Finding],
) -> Result<Report, Failure> {
    let applied = match url {
        DatabaseUrl::Sqlite(p) if !p.exists() => Vec::new(),
        _ => Database::open(url, Open::Existing).await?.applied().await?,
    };
    let plan = Plan::new(files, applied);
    let mut text = format!("plan for {} (at {}):\n", url.display(), head_text(&plan));
    for f in &plan.pending {
        text.push_str(&format!("  apply {}\n", f.path.display()));
    }
    for d in &plan.drift {
        text.push_str(&format!("  drift: {d}\n"));
    }
    text.push_str(&format!(
        "{} migration(s) would be applied in one transaction; lint: 0 errors, {} warning(s); dry run, nothing changed\n",
        plan.pending.len(),
        warnings.len()
    ));
    let json = json!({
        "database": url.display(),
        "dry_run": true,
        "head": plan.head(),
        "pending": plan.pending.iter().map(|f| json!({ "version": f.version, "name": f.name, "file": f.path })).collect::<Vec<_>>(),
        "drift": plan.drift,
        "lint": warnings,
    });
    if !plan.drift.is_empty() {
        let mut failure: Failure = migrator::Error::Drift { drift: plan.drift }.into();
        failure.details = json;
        return Err(failure);
    }
    Ok(Report {
        text,
        json,
        code: 0,
    })
}
