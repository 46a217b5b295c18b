//! `dbward migrate`: discover and lint, take the migration lock, read the history under it,
//! refuse on drift, then apply every pending migration in one transaction.

use std::time::Instant;

use serde_json::json;

use migrator::database::Open;
use migrator::{Database, DatabaseUrl, Kind, Plan, Severity};

use super::{database_url, dialect};
use crate::cli::MigrateArgs;
use crate::exit::Exit;
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
    let (doc, outcome) = match &result {
        Ok(r) => (&r.json, "applied".to_string()),
        Err(f) => (
            &f.details,
            format!("failed (exit {}): {}", f.code.code(), f.full()),
        ),
    };
    let applied: Vec<i64> = doc["applied"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["version"].as_i64()).collect())
        .unwrap_or_default();
    let repeatable: Vec<String> = doc["applied"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["repeatable"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if result.is_ok() && applied.is_empty() && repeatable.is_empty() {
        return result;
    }
    let mut e = crate::deploys::Entry::new("migrate", url.display(), outcome);
    e.applied = applied;
    e.repeatable = repeatable;
    e.snapshot = doc["snapshot"].as_str().map(str::to_string);
    e.reason = args.reason.clone();
    let store = settings.store().await.ok();
    let scope = state::Scope::of(&settings.state_dir, &url).await;
    crate::deploys::append(&scope, store.as_ref(), &e).await;
    result
}

async fn migrate(settings: &Settings, args: &MigrateArgs) -> Result<Report, Failure> {
    let started = Instant::now();
    let url = database_url(settings)?;

    // Everything that can be checked without the database is checked first.
    let files = migrator::discover(&settings.migrations)?;
    let (notes, warnings) = lint_gate(&files, &url)?;

    if args.dry_run {
        return dry_run(&url, &files, &warnings).await;
    }

    // A fresh volume gets its data back before anything else (restore.if_missing); without
    // it, a missing SQLite file whose snapshots are in the store is said loudly.
    if args.restore_if_missing || settings.restore_if_missing {
        crate::service::restore::restore_if_missing(settings, &url).await?;
    } else if let DatabaseUrl::Sqlite(p) = &url {
        if !p.exists() {
            warn_if_snapshots_exist(settings, &url).await;
        }
    }
    // Held until this function returns: the after-migrate hooks run under it too.
    let mut db = Database::open_locked(&url, Open::Create, args.lock_timeout).await?;
    failpoint("migrate-after-lock")?;
    // A SQLite file that was empty until now (opening created it) is a first deploy: nothing to
    // snapshot. Looked at under the lock, so a restore swapping the file in is never mistaken.
    let first_deploy = matches!(&url, DatabaseUrl::Sqlite(p) if std::fs::metadata(p).map_or(true, |m| m.len() == 0));
    let (plan, applied_repeatable) = plan_under_lock(&mut db, &files).await?;
    // The records of this database (found by its identity), and the store's copy of a failed
    // batch (a fresh state volume still knows it). With nothing pending and this host's own
    // records there, the store is not asked: a no-op deploy does not wait on it.
    let scope = state::Scope::of(&settings.state_dir, &url).await;
    let store = settings.store().await?;
    let failed = if plan.batch().is_empty() && scope.read().ok().flatten().is_some() {
        scope.read_failed()?
    } else {
        scope.find_failed(&store).await?
    };
    if let Some(f) = &failed {
        refuse_unfinished_undo(
            &scope,
            &store,
            f,
            &plan,
            &applied_repeatable,
            args.retry_failed,
        )
        .await?;
    }
    let batch = plan.batch();
    if batch.is_empty() {
        return nothing_pending(settings, &scope, &url, &plan, started).await;
    }

    if let Some(f) = &failed {
        refuse_failed_batch(f, &batch, args.retry_failed)?;
    }
    refuse_unwritable(&scope)?;
    // A dbward backup running now is said before a snapshot is taken (exit 4), not after.
    keep_backups_out(&mut db, args).await?;

    let (base, taken, fallback) = begin_deploy(
        &mut db,
        settings,
        args,
        &url,
        &scope,
        &plan,
        first_deploy,
        &notes,
    )
    .await?;
    let snapshot = base.pre_deploy_snapshot.clone();
    let names: Vec<String> = batch.iter().map(|f| f.file_name()).collect();
    // A database without its identity yet (a first deploy) gets its records once the batch
    // made one.
    let previous = scope.read().ok().flatten();
    let pre_recorded = scope.identity().is_some() && record(&scope, &base).is_ok();
    let batch_xid = match apply(&mut db, &plan.phases(), settings, args).await {
        Ok(xid) => xid,
        Err(stopped) if !stopped.part_way => {
            // Nothing changed: the records are as they were.
            if pre_recorded {
                if let Err(e) = scope.put_back(previous.as_ref()) {
                    tracing::warn!("{e}");
                }
            }
            return Err(stopped.failure);
        }
        Err(stopped) => {
            return Err(stopped_part_way(settings, &url, &store, &plan, base, stopped).await)
        }
    };
    let counters_after = if snapshot.is_some() {
        counters(&mut db).await
    } else {
        None
    };
    let mut deploy = state::Deploy {
        counters_after,
        batch_xid: base.batch_xid.or(batch_xid),
        unfinished: None,
        ..base
    };
    let head = deploy.head.clone();
    let (scope, recorded) = record_committed(settings, &url, &store, &deploy).await;
    let head_text = head
        .as_ref()
        .map(|h| h.label())
        .unwrap_or_else(|| "no versioned migration".into());
    // The result is the report (stdout); the log says it only with -v.
    tracing::debug!(
        "applied {} migration(s) in {:.2}s; head is {head_text}",
        names.len(),
        started.elapsed().as_secs_f64()
    );
    let json = json!({
        "database": url.display(),
        "applied": batch.iter().map(|f| applied_json(f)).collect::<Vec<_>>(),
        "head": head,
        "snapshot": snapshot,
        "snapshot_format": taken.as_ref().map(|m| m.format),
        "restore_point_fallback": fallback,
        "deploy_recorded": recorded,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    let json = hooks_after(settings, &scope, &mut deploy, recorded, &names, json).await?;
    if let Some(m) = &taken {
        retain_after(settings, &url, m).await;
    }
    Ok(Report {
        text: format!(
            "applied {} migration(s) in {:.2}s: {}\nhead: {head_text}\n",
            names.len(),
            started.elapsed().as_secs_f64(),
            names.join(", ")
        ),
        json,
        code: Exit::Success,
    })
}

/// The plan, from the history read under the lock (a runner that waited sees what the other one
/// applied); drift refuses it. Another tool's history stands in for dbward's (its files as rows)
/// until, the plan holding, it is recorded in dbward's (nothing run), before the deploy records
/// are looked up: the recording gives the database its identity.
async fn plan_under_lock<'a>(
    db: &mut Database,
    files: &'a migrator::Migrations,
) -> Result<(Plan<'a>, Vec<migrator::AppliedRepeatable>), Failure> {
    let migrator::adopt::History {
        applied,
        repeatable,
        adoption,
    } = migrator::adopt::history(db, files).await?;
    let plan = Plan::new(files, applied, &repeatable);
    if !plan.drift.is_empty() {
        return Err(migrator::Error::Drift { drift: plan.drift }.into());
    }
    if let Some(a) = adoption
        .as_ref()
        .filter(|a| a.standing == migrator::adopt::Standing::Pending)
    {
        migrator::adopt::record(db, a).await?;
    }
    Ok((plan, repeatable))
}

/// The deploy's record before its batch runs: the pre-deploy snapshot taken (under the lock,
/// once something is pending; if it fails, nothing is applied), or the unfinished deploy this
/// run resumes. Returns it with the snapshot taken and why a restore point fell back to a copy.
#[allow(clippy::too_many_arguments)]
async fn begin_deploy(
    db: &mut Database,
    settings: &Settings,
    args: &MigrateArgs,
    url: &DatabaseUrl,
    scope: &state::Scope,
    plan: &Plan<'_>,
    first_deploy: bool,
    notes: &[migrator::Finding],
) -> Result<(state::Deploy, Option<backup::Manifest>, Option<String>), Failure> {
    let batch = plan.batch();
    // The pre-deploy snapshot: under the lock, once something is pending. A first deploy has
    // nothing to protect; a deploy that stopped part way is resumed under its own snapshot.
    // If it fails, nothing is applied.
    // What a restore of this deploy would discard is measured from the application's write
    // counters (PostgreSQL: before the snapshot and before the batch; both: after it).
    // A statement of the first pending file recorded: that file ran in part.
    let progress = db.statement_progress().await.unwrap_or_default();
    let ran_in_part = plan
        .pending
        .first()
        .is_some_and(|f| progress.contains_key(&f.version));
    let resumed = resumable(scope, plan, ran_in_part);
    let pg = matches!(url, DatabaseUrl::Postgres(_));
    let will_snapshot = !(first_deploy || args.no_snapshot || resumed.is_some());
    let counters_before_snapshot = if pg && will_snapshot {
        counters(db).await
    } else {
        None
    };
    if pg {
        warn_if_archiving_fails(url).await;
    }
    let (taken, fallback) = if will_snapshot {
        let (m, fallback) = pre_deploy_snapshot(settings, url).await?;
        (Some(m), fallback)
    } else {
        (None, None)
    };
    let snapshot = match &resumed {
        Some(d) => d.pre_deploy_snapshot.clone(),
        None => taken.as_ref().map(|m| m.id.clone()),
    };

    failpoint("migrate-after-snapshot")?;
    let counters_before_apply = if pg && will_snapshot {
        counters(db).await
    } else {
        None
    };
    let not_additive: Vec<String> = notes
        .iter()
        .filter(|n| n.rule == migrator::lint::NOT_ADDITIVE)
        .filter(|n| batch.iter().any(|f| f.path == n.file))
        .map(|f| format!("{}:{}: {}", f.file.display(), f.line, f.message))
        .collect();
    // The deploy is recorded as under way before anything runs: killed part way, the next run
    // resumes it under the same snapshot (and a record that stays unfinished says so).
    let base = match resumed {
        Some(r) => state::Deploy {
            repeatable: union(
                &r.repeatable,
                &plan
                    .repeatable
                    .iter()
                    .map(|f| f.name.clone())
                    .collect::<Vec<_>>(),
            ),
            not_additive: union(&r.not_additive, &not_additive),
            unfinished: Some(UNDER_WAY.into()),
            hook_failed: None,
            counters_after: None,
            ..r
        },
        None => state::Deploy {
            counters_before_snapshot,
            counters_before_apply,
            unfinished: Some(UNDER_WAY.into()),
            ..new_deploy(url, plan, snapshot.clone(), not_additive)
        },
    };
    Ok((base, taken, fallback))
}

/// Applies the batch phase by phase ([`Plan::phases`]): each atomic batch in one transaction,
/// each non-transactional file statement by statement. The point of no return is marked as
/// soon as something committed (a stop request from then on says what stands). Returns the
/// first atomic batch's transaction id; on a failure, what committed before it.
async fn apply<'a>(
    db: &mut Database,
    phases: &[migrator::Phase<'a>],
    settings: &Settings,
    args: &MigrateArgs,
) -> Result<Option<u32>, Stopped<'a>> {
    let (lock_timeout, lock_retries) = (settings.lock_timeout, settings.lock_retries);
    let mut xid = None;
    let mut committed: Vec<&'a migrator::MigrationFile> = Vec::new();
    for phase in phases {
        let result = match phase {
            migrator::Phase::Batch(batch) => {
                let names: Vec<String> = batch.iter().map(|f| f.file_name()).collect();
                tracing::info!(
                    "applying {} migration(s) in one transaction: {}",
                    names.len(),
                    names.join(", ")
                );
                // No dbward dump begins while the batch runs (it would hold locks the DDL
                // queues behind); one that began since the check above is waited for, or
                // said (exit 4).
                let applied = match db.exclude_backups(backup_wait(args)).await {
                    Ok(()) => apply_retrying(db, batch, lock_timeout, lock_retries).await,
                    Err(e) => Err(e.into()),
                };
                db.backups_again().await;
                applied.map(|x| {
                    xid = xid.or(x);
                })
            }
            migrator::Phase::Statements(f) => db
                .apply_statements(f, lock_timeout, settings.no_transaction_lock_timeout)
                .await
                .map_err(Failure::from),
        };
        if let Err(failure) = result {
            let part_way = !committed.is_empty() || matches!(phase, migrator::Phase::Statements(_));
            return Err(Stopped {
                failure,
                committed,
                part_way,
            });
        }
        committed.extend(match phase {
            migrator::Phase::Batch(b) => b.clone(),
            migrator::Phase::Statements(f) => vec![*f],
        });
        let names: Vec<String> = committed.iter().map(|f| f.file_name()).collect();
        dbconn::committed::mark(format!(
            "the migrations {} were committed",
            names.join(", ")
        ));
        failpoint("migrate-after-commit").map_err(|failure| Stopped {
            failure,
            committed: committed.clone(),
            part_way: true,
        })?;
    }
    Ok(xid)
}

/// A batch that did not apply whole: the failure, the files that committed before it, and
/// whether the database changed (something committed, or a non-transactional file ran part of
/// its statements).
struct Stopped<'a> {
    failure: Failure,
    committed: Vec<&'a migrator::MigrationFile>,
    part_way: bool,
}

/// What an unfinished deploy record says while its batch runs.
const UNDER_WAY: &str = "under way (a record that stays so: the run was killed)";

/// The deploy to resume: the newest record, when it did not finish, part of it ran (some of its
/// files are applied, or the first pending one `ran_in_part`), and what is pending now is what
/// it had left to do (the end of its batch, same versions, same order). A deploy that changed
/// nothing before it stopped gets a new snapshot (the application wrote since the old one); a
/// deploy whose files changed otherwise (a fix in a new file) is a new deploy.
fn resumable(scope: &state::Scope, plan: &Plan, ran_in_part: bool) -> Option<state::Deploy> {
    let d = scope.read().ok().flatten()?;
    d.unfinished.as_ref()?;
    let pending: Vec<i64> = plan.pending.iter().map(|f| f.version).collect();
    let ran = d.applied.len() > pending.len() || ran_in_part;
    (ran && !pending.is_empty() && d.applied.ends_with(&pending)).then(|| {
        tracing::info!(
            "resuming the deploy of {} that stopped part way ({}): its pre-deploy snapshot {} covers it, no new one is taken",
            d.at,
            d.unfinished.as_deref().unwrap_or_default(),
            d.pre_deploy_snapshot.as_deref().unwrap_or("(none: a first deploy)")
        );
        d
    })
}

/// `a`, then what of `b` is not in it.
fn union(a: &[String], b: &[String]) -> Vec<String> {
    let mut out = a.to_vec();
    out.extend(b.iter().filter(|x| !a.contains(x)).cloned());
    out
}

/// A deploy that stopped part way is recorded as such (the guard can undo it with its
/// pre-deploy snapshot, the next `migrate` resumes it), and the failure says what stands.
async fn stopped_part_way(
    settings: &Settings,
    url: &DatabaseUrl,
    store: &backup::Store,
    plan: &Plan<'_>,
    base: state::Deploy,
    stopped: Stopped<'_>,
) -> Failure {
    let Stopped {
        failure, committed, ..
    } = stopped;
    let head = committed
        .iter()
        .rev()
        .find(|f| f.kind == Kind::Versioned)
        .map(|f| f.head())
        .or_else(|| plan.head().map(migrator::Applied::head));
    // The record keeps the whole batch as the deploy's (a rerun finishes it), with the head
    // that stands now.
    let deploy = state::Deploy {
        head,
        unfinished: Some(
            failure
                .message
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
        ..base
    };
    let (_, recorded) = record_committed(settings, url, store, &deploy).await;
    let names: Vec<String> = committed.iter().map(|f| f.file_name()).collect();
    let mut failure = failure;
    failure.message.push_str(&format!(
        "\nThe deploy stopped part way: {}. {}`dbward migrate` run again resumes it{}.",
        if names.is_empty() {
            "nothing before it committed".to_string()
        } else {
            format!("committed before it: {}", names.join(", "))
        },
        match &deploy.pre_deploy_snapshot {
            Some(id) => format!("The pre-deploy snapshot {id} covers the whole deploy (`dbward restore pre-deploy` undoes it); "),
            None => String::new(),
        },
        if recorded { "" } else { " (its record could not be written: see above)" }
    ));
    failure.details["applied"] =
        serde_json::Value::Array(committed.iter().map(|f| applied_json(f)).collect());
    failure.details["snapshot"] = json!(deploy.pre_deploy_snapshot);
    failure
}

/// How long `migrate` waits for a dbward backup that is running: `--wait-for-backup`'s bound,
/// else not at all.
fn backup_wait(args: &MigrateArgs) -> std::time::Duration {
    if args.wait_for_backup {
        args.lock_timeout
    } else {
        std::time::Duration::ZERO
    }
}

/// PostgreSQL: stops at once (exit 4) while a dbward dump of the database runs, or with
/// `--wait-for-backup` waits for it; backups may run again afterwards (the pre-deploy dump
/// among them).
async fn keep_backups_out(db: &mut Database, args: &MigrateArgs) -> Result<(), Failure> {
    db.exclude_backups(backup_wait(args)).await?;
    db.backups_again().await;
    Ok(())
}

/// The batch, tried again after a table-lock wait timed out (see [`apply`]).
async fn apply_retrying(
    db: &mut Database,
    batch: &[&migrator::MigrationFile],
    lock_timeout: std::time::Duration,
    lock_retries: u32,
) -> Result<Option<u32>, Failure> {
    // A statement that waited `lock_timeout` for a table lock rolled the batch back (so the
    // application's queries never queue behind it for longer): tried again after a pause, as
    // the session holding the lock (a long query, the nightly dump) may be done by then.
    let mut attempt = 0;
    loop {
        match db.apply(batch, lock_timeout).await {
            Err(migrator::Error::Apply {
                lock_wait: true,
                file,
                ..
            }) if attempt < lock_retries => {
                attempt += 1;
                let pause = lock_backoff(attempt);
                tracing::warn!(
                    "{} waited longer than database.table_lock_timeout ({}) for a table lock; the batch was rolled back; trying again in {} (retry {attempt} of {lock_retries}, migrate.lock_retries)",
                    file.display(),
                    migrator::error::humanize(lock_timeout),
                    migrator::error::humanize(pause)
                );
                tokio::time::sleep(pause).await;
            }
            other => return Ok(other?),
        }
    }
}

/// The pause before retry `attempt` (from 1): 2 s doubling to at most 16 s, each between half
/// and one and a half of that (jitter: two runners retrying do not collide again).
fn lock_backoff(attempt: u32) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let base = 2f64 * f64::from(1u32 << attempt.saturating_sub(1).min(3));
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let jitter = 0.5 + (h.finish() % 1000) as f64 / 1000.0;
    std::time::Duration::from_secs_f64(base * jitter)
}

/// Records the committed batch. A failure to record it must not say otherwise (exit 1 promises
/// the database is as it was): it is logged, and without the record the guard sees an older
/// deploy whose head no longer matches, so it never restores on a wrong basis. A first
/// deploy's database got its identity in the batch: its records are keyed by it. Any record of
/// a rolled-back batch is stale now. Returns the scope and whether the record was written.
async fn record_committed(
    settings: &Settings,
    url: &DatabaseUrl,
    store: &backup::Store,
    deploy: &state::Deploy,
) -> (state::Scope, bool) {
    let scope = state::Scope::of(&settings.state_dir, url).await;
    let recorded = record(&scope, deploy);
    if let Err(e) = &recorded {
        tracing::error!(
            "{}; the health guard will not restore this deploy automatically (restore it by id: {})",
            e.message,
            deploy
                .pre_deploy_snapshot
                .as_deref()
                .unwrap_or("no pre-deploy snapshot was taken")
        );
    }
    clear_failed(&scope, store).await;
    (scope, recorded.is_ok())
}

/// The after-migrate hooks, still under the lock. A failing hook is exit 6, and the deploy's
/// record (when it was written) gets `hook_failed`, so the guard restores it without polling.
async fn hooks_after(
    settings: &Settings,
    scope: &state::Scope,
    deploy: &mut state::Deploy,
    recorded: bool,
    names: &[String],
    mut json: serde_json::Value,
) -> Result<serde_json::Value, Failure> {
    let Err(e) = crate::hooks::after_migrate(settings, &crate::hooks::Batch::of(deploy)).await
    else {
        return Ok(json);
    };
    let e = e.to_string();
    json["hook_failed"] = json!(e);
    deploy.hook_failed = Some(e.clone());
    if recorded {
        if let Err(f) = record(scope, deploy) {
            tracing::error!("{}", f.full());
        }
    }
    Err(hook_failure(
        &e,
        names,
        deploy.pre_deploy_snapshot.as_deref(),
        json,
    ))
}

/// The deploy's record must be writable before anything is applied: a batch whose record
/// cannot be written is a deploy the health guard cannot undo.
fn refuse_unwritable(scope: &state::Scope) -> Result<(), Failure> {
    scope.check_writable().map_err(|e| {
        Failure::new(
            Exit::Refused,
            format!(
                "{}; nothing was applied: a batch whose deploy record cannot be written is a deploy the health guard cannot undo. Free space in (or fix) the state dir, then run again",
                backup::error::chain(&e)
            ),
        )
    })
}

/// The record of a deploy that applies `plan`'s batch (its counters filled in by the caller).
fn new_deploy(
    url: &DatabaseUrl,
    plan: &Plan,
    snapshot: Option<String>,
    not_additive: Vec<String>,
) -> state::Deploy {
    let head = plan
        .pending
        .last()
        .map(|f| f.head())
        .or_else(|| plan.head().map(migrator::Applied::head));
    state::Deploy {
        database: url.display(),
        database_id: None,
        at: backup::manifest::now_rfc3339(time::OffsetDateTime::now_utc()),
        pre_deploy_snapshot: snapshot,
        applied: plan.pending.iter().map(|f| f.version).collect(),
        version_texts: plan
            .pending
            .iter()
            .filter_map(|f| Some((f.version, f.version_text.clone()?)))
            .collect(),
        head,
        restored: None,
        repeatable: plan.repeatable.iter().map(|f| f.name.clone()).collect(),
        hook_failed: None,
        not_additive,
        counters_before_snapshot: None,
        counters_before_apply: None,
        counters_after: None,
        batch_xid: None,
        unfinished: None,
    }
}

/// The lint gate, read once: errors refuse the run (exit 3), warnings are logged, and the
/// notes that name what is not purely additive are kept for the deploy record of the batch's
/// files. Returns the notes and the warnings.
fn lint_gate(
    files: &migrator::Migrations,
    url: &DatabaseUrl,
) -> Result<(Vec<migrator::Finding>, Vec<migrator::Finding>), Failure> {
    let (notes, findings): (Vec<_>, Vec<_>) = migrator::lint::all(files.all(), dialect(url))
        .into_iter()
        .partition(|f| f.severity == Severity::Note);
    let (errors, warnings): (Vec<_>, Vec<_>) = findings
        .into_iter()
        .partition(|f| f.severity == Severity::Error);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    // How dbward runs a file (a placeholder, a wrapping transaction dropped, a pragma that
    // does nothing): said, never in the way.
    for n in notes
        .iter()
        .filter(|n| n.rule != migrator::lint::NOT_ADDITIVE)
    {
        tracing::info!("{n}");
    }
    if !errors.is_empty() {
        return Err(migrator::Error::Lint { findings: errors }.into());
    }
    Ok((notes, warnings))
}

/// The pre-deploy snapshot (a restore point where the guard can rewind, else a dump or a
/// file), said in the log; the second value says why a dump was taken where a restore point
/// was wanted.
async fn pre_deploy_snapshot(
    settings: &Settings,
    url: &DatabaseUrl,
) -> Result<(backup::Manifest, Option<String>), Failure> {
    let (m, fallback) = crate::service::take::pre_deploy(settings, url).await?;
    match &m.point {
        Some(p) => tracing::info!(
            "pre-deploy restore point {} at {} (WAL segment {} archived) in {} ms",
            m.id,
            p.lsn,
            p.segment,
            m.duration_ms
        ),
        None => match &m.stream {
            Some(p) => tracing::info!(
                "pre-deploy stream position {}: step {} of generation {} (read at {}), in the primary store",
                m.id,
                p.seq,
                p.generation,
                p.captured_at
            ),
            None => tracing::info!("pre-deploy snapshot {}", m.id),
        },
    }
    Ok((m, fallback))
}

/// Retention over the stores, now that the deploy is done (the new snapshot is the newest, so
/// it is kept). A failure here is not the deploy's.
async fn retain_after(settings: &Settings, url: &DatabaseUrl, m: &backup::Manifest) {
    match crate::service::take::retain(settings, url, m).await {
        Ok(Some(removed)) if !removed.is_empty() => {
            tracing::info!("retention removed {}", removed.join(", "))
        }
        Ok(_) => {}
        Err(f) => tracing::warn!("retention after the deploy: {}", f.full()),
    }
}

/// Nothing to apply. A deploy whose after-migrate hooks failed is not finished: its hooks run
/// again (its record stays, so the guard can still restore it) until they pass. Otherwise this
/// deploy is recorded as one that changed nothing, and `hooks.always` runs the hooks anyway.
async fn nothing_pending(
    settings: &Settings,
    scope: &state::Scope,
    url: &DatabaseUrl,
    plan: &Plan<'_>,
    started: Instant,
) -> Result<Report, Failure> {
    let head = plan.head().map(migrator::Applied::head);
    let unfinished = scope
        .read()
        .ok()
        .flatten()
        .filter(|d| d.hook_failed.is_some() && d.restored.is_none() && d.head == head);
    let head_text = head_text(plan);
    let mut json =
        json!({ "database": url.display(), "applied": [], "head": plan.head(), "snapshot": null });
    if let Some(mut deploy) = unfinished {
        tracing::warn!(
            "nothing pending, but the after-migrate hooks of the deploy at {} failed ({}); running them again",
            deploy.at,
            deploy.hook_failed.as_deref().unwrap_or_default()
        );
        let result = crate::hooks::after_migrate(settings, &crate::hooks::Batch::of(&deploy)).await;
        json["snapshot"] = json!(deploy.pre_deploy_snapshot);
        return match result {
            Ok(()) => {
                deploy.hook_failed = None;
                record(scope, &deploy)?;
                Ok(Report {
                    text: format!("nothing pending; database at {head_text}; the after-migrate hooks of the deploy at {} passed this time\n", deploy.at),
                    json,
                    code: Exit::Success,
                })
            }
            Err(e) => {
                let e = e.to_string();
                deploy.hook_failed = Some(e.clone());
                record(scope, &deploy)?;
                json["hook_failed"] = json!(e);
                let names: Vec<String> = deploy
                    .applied
                    .iter()
                    .map(|v| format!("V{v}"))
                    .chain(deploy.repeatable.iter().map(|r| format!("R__{r}")))
                    .collect();
                Err(hook_failure(
                    &e,
                    &names,
                    deploy.pre_deploy_snapshot.as_deref(),
                    json,
                ))
            }
        };
    }
    let deploy = state::Deploy {
        database: url.display(),
        database_id: None,
        at: backup::manifest::now_rfc3339(time::OffsetDateTime::now_utc()),
        pre_deploy_snapshot: None,
        applied: Vec::new(),
        head,
        restored: None,
        repeatable: Vec::new(),
        ..Default::default()
    };
    record(scope, &deploy)?;
    tracing::debug!("nothing pending; {} is at {head_text}", url.display());
    if settings.hooks.always && !settings.hooks.after_migrate.is_empty() {
        // Nothing applied, no snapshot: only the head.
        if let Err(e) =
            crate::hooks::after_migrate(settings, &crate::hooks::Batch::of(&deploy)).await
        {
            let e = e.to_string();
            json["hook_failed"] = json!(e);
            return Err(hook_failure(&e, &[], None, json));
        }
    }
    json["elapsed_ms"] = json!(started.elapsed().as_millis() as u64);
    Ok(Report {
        text: format!("nothing pending; database at {head_text}\n"),
        json,
        code: Exit::Success,
    })
}

/// The application's write counters, or `None` (with a warning) when they cannot be read: they
/// inform the guard, they never fail a deploy.
async fn counters(db: &mut Database) -> Option<migrator::database::Counters> {
    match db.write_counters().await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(
                "{} (the health guard will not be able to say what a restore discards)",
                backup::error::chain(&e)
            );
            None
        }
    }
}

/// Exit 6: the batch is in the database, the deploy is broken.
fn hook_failure(
    e: &str,
    applied: &[String],
    snapshot: Option<&str>,
    details: serde_json::Value,
) -> Failure {
    let undo = match snapshot {
        Some(id) => format!(
            "the health guard restores its pre-deploy snapshot {id} (or run `dbward restore pre-deploy`)"
        ),
        None => "no pre-deploy snapshot was taken".into(),
    };
    let what = if applied.is_empty() {
        "nothing was applied".to_string()
    } else {
        format!(
            "the batch ({}) is committed and stays applied",
            applied.join(", ")
        )
    };
    Failure {
        details,
        ..Failure::new(
            Exit::HookFailed,
            format!("{e}; {what}; this deploy is broken: {undo}"),
        )
    }
}

fn applied_json(f: &migrator::MigrationFile) -> serde_json::Value {
    match f.kind {
        Kind::Versioned => match &f.version_text {
            None => json!({ "version": f.version, "name": f.name, "file": f.path }),
            Some(text) => {
                json!({ "version": f.version, "version_text": text, "name": f.name, "file": f.path })
            }
        },
        Kind::Repeatable => json!({ "repeatable": f.name, "file": f.path }),
    }
}

/// Records this deploy in the state dir, for `restore pre-deploy` and the health guard. A
/// deploy that applied nothing is recorded too, so the guard never acts on an older one.
fn record(scope: &state::Scope, deploy: &state::Deploy) -> Result<(), Failure> {
    scope.write(deploy).map_err(|e| {
        Failure::new(
            Exit::Failed,
            format!(
                "the migrations were applied, but recording the deploy failed: {}",
                backup::error::chain(&e)
            ),
        )
    })
}

/// The batch the health guard rolled back is not applied again (a release that breaks its app
/// would otherwise loop: migrate, unhealthy, restore, restart) unless `--retry-failed`.
fn refuse_failed_batch(
    failed: &state::FailedBatch,
    batch: &[&migrator::MigrationFile],
    retry: bool,
) -> Result<(), Failure> {
    // Compared as sets: the guard read repeatable files back in the database's collation order.
    let mut pending: Vec<state::BatchFile> =
        batch.iter().map(|f| state::BatchFile::of(f)).collect();
    let mut failed_batch = failed.batch.clone();
    let key = |b: &state::BatchFile| (b.version, b.name.clone());
    pending.sort_by_key(key);
    failed_batch.sort_by_key(key);
    if pending != failed_batch {
        return Ok(()); // a changed or added file makes a new batch
    }
    let names: Vec<String> = pending.iter().map(|f| f.label()).collect();
    if retry {
        tracing::warn!(
            "applying again the batch the health guard rolled back at {} (--retry-failed): {}",
            failed.at,
            names.join(", ")
        );
        return Ok(());
    }
    Err(Failure::new(
        Exit::Refused,
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

/// A deploy the health guard judged unhealthy but could not undo (its restore failed, or it was
/// killed while undoing): its batch is still applied and the release is broken. `migrate`
/// refuses to go on (and to record a deploy that would hide it from the guard) until the undo
/// is done (`dbward health --restore-on-failure` retries it) or the batch is accepted
/// (`--retry-failed`). A batch no longer applied was undone by other means (a restore by
/// hand): from then on it is a rolled-back batch like any other.
async fn refuse_unfinished_undo(
    scope: &state::Scope,
    store: &backup::Store,
    failed: &state::FailedBatch,
    plan: &Plan<'_>,
    applied_repeatable: &[migrator::AppliedRepeatable],
    retry: bool,
) -> Result<(), Failure> {
    let Some(why) = &failed.undo_failed else {
        return Ok(());
    };
    let why = why.trim_end_matches('.');
    let names: Vec<String> = failed.batch.iter().map(|f| f.label()).collect();
    if !failed.still_applied(&plan.applied, applied_repeatable) {
        tracing::warn!(
            "the batch the health guard could not undo ({}) is no longer applied: it was undone by other means; from now on it counts as rolled back",
            names.join(", ")
        );
        let mut undone = failed.clone();
        undone.undo_failed = None;
        write_failed(scope, store, &undone).await;
        return Ok(());
    }
    if retry {
        tracing::warn!(
            "keeping the batch the health guard could not undo ({}) (--retry-failed): the deploy of {} is accepted as it is",
            names.join(", "),
            failed.at
        );
        clear_failed(scope, store).await;
        return Ok(());
    }
    Err(Failure::new(
        Exit::Refused,
        format!(
            "the health guard found the deploy of this batch ({}) unhealthy at {} ({}) but could not undo it: {why}. \
             The batch is still applied. Nothing was changed. Fix what stopped the undo, then run \
             `dbward health --restore-on-failure` (it retries the undo at once) or `dbward restore pre-deploy`; \
             or keep the batch with `dbward migrate --retry-failed`.",
            names.join(", "),
            failed.at,
            failed.reason,
        ),
    ))
}

/// Writes the failed-batch record to the state dir and the store (a new host, a fresh state
/// volume still find it there). Failures are logged: the record informs later runs.
pub async fn write_failed(scope: &state::Scope, store: &backup::Store, f: &state::FailedBatch) {
    if let Err(e) = scope.write_failed(f) {
        tracing::error!(
            "recording the failed batch in the state dir failed: {}",
            backup::error::chain(&e)
        );
    }
    let mut f = f.clone();
    f.database_id = scope.identity().map(str::to_string);
    let json = serde_json::to_vec_pretty(&f).expect("serializes");
    if let Err(e) = store.put(&state::failed_key(scope.name()), &json).await {
        tracing::error!(
            "recording the failed batch in the store failed: {}",
            backup::error::chain(&e)
        );
    }
}

/// Forgets the failed batch in the state dir and the store.
async fn clear_failed(scope: &state::Scope, store: &backup::Store) {
    if let Err(e) = scope.clear_failed() {
        tracing::warn!("{}", backup::error::chain(&e));
    }
    if let Err(e) = store.delete(&state::failed_key(scope.name())).await {
        tracing::warn!(
            "removing the failed-batch record from the store: {}",
            backup::error::chain(&e)
        );
    }
}

/// WAL archiving that fails (a `file://` store the archiver's user cannot write since this
/// command's user made its folder) does not stop a deploy, but it is said loudly: the WAL
/// piles up on the server and restore points and bases cannot be taken.
async fn warn_if_archiving_fails(url: &DatabaseUrl) {
    let DatabaseUrl::Postgres(pg) = url else {
        return;
    };
    if let Some((wal, at)) = backup::pitr::wal::archiving_failure(pg).await {
        tracing::warn!(
            "the server's WAL archiving is failing (last failure on {wal}, at {at}; pg_stat_archiver and the server log say why): WAL piles up and no restore point or base can be taken. A `file://` store written by two users (this command's and PostgreSQL's) needs store.group"
        );
    }
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
    dbconn::failpoint::hit(name).map_err(|e| Failure::new(Exit::Failed, e))
}

fn head_text(plan: &Plan) -> String {
    plan.head()
        .map(|h| h.label())
        .unwrap_or_else(|| "no migration".into())
}

/// The plan and the lint result; reads the history (if there is a database) and changes nothing.
async fn dry_run(
    url: &DatabaseUrl,
    files: &migrator::Migrations,
    warnings: &[migrator::Finding],
) -> Result<Report, Failure> {
    let (applied, repeatable, adoption) = match url {
        DatabaseUrl::Sqlite(p) if !p.exists() => (Vec::new(), Vec::new(), None),
        _ => {
            let mut db = Database::open(url, Open::Existing).await?;
            let h = migrator::adopt::history(&mut db, files).await?;
            (h.applied, h.repeatable, h.adoption)
        }
    };
    let plan = Plan::new(files, applied, &repeatable);
    let mut text = format!("plan for {} (at {}):\n", url.display(), head_text(&plan));
    if let Some(a) = adoption
        .as_ref()
        .filter(|a| a.standing == migrator::adopt::Standing::Pending)
    {
        text.push_str(&format!(
            "  adopt {}'s history: record {} migration(s) it applied, without running them\n",
            a.tool.name(),
            a.files.len() + a.repeatable.len()
        ));
    }
    let phases = plan.phases();
    for phase in &phases {
        match phase {
            migrator::Phase::Batch(b) => {
                for f in b {
                    text.push_str(&format!("  apply {}\n", f.path.display()));
                }
            }
            migrator::Phase::Statements(f) => text.push_str(&format!(
                "  apply {} outside a transaction, statement by statement\n",
                f.path.display()
            )),
        }
    }
    for d in &plan.drift {
        text.push_str(&format!("  drift: {d}\n"));
    }
    // Without a marked file, the batch is one phase.
    let how = if phases
        .iter()
        .any(|p| matches!(p, migrator::Phase::Statements(_)))
    {
        format!("in {} steps (atomic batches, and the files marked to run outside a transaction between them)", phases.len())
    } else {
        "in one transaction".to_string()
    };
    text.push_str(&format!(
        "{} migration(s) would be applied {how}; lint: 0 errors, {} warning(s); dry run, nothing changed\n",
        plan.pending.len(),
        warnings.len()
    ));
    let json = json!({
        "database": url.display(),
        "dry_run": true,
        "head": plan.head(),
        "pending": plan.batch().into_iter().map(applied_json).collect::<Vec<_>>(),
        "adopt": adoption.as_ref().filter(|a| a.standing == migrator::adopt::Standing::Pending).map(|a| json!({ "tool": a.tool, "table": a.tool.table(), "migrations": a.files.len() + a.repeatable.len() })),
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
        code: Exit::Success,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_retries_back_off_with_jitter_up_to_16_seconds() {
        for attempt in 1..=8u32 {
            let base = 2f64 * f64::from(1u32 << (attempt - 1).min(3));
            let pause = super::lock_backoff(attempt).as_secs_f64();
            assert!(
                (base * 0.5..=base * 1.5).contains(&pause),
                "retry {attempt}: {pause}"
            );
        }
    }
}
