//! `dbward health`: poll the application's health endpoint; with `--restore-on-failure`, the
//! guard: restore the last deploy's pre-deploy snapshot if (and only if) that deploy applied
//! migrations and nobody migrated since. Exit 5 after such a restore.

use std::time::{Duration, Instant};

use serde_json::json;

use migrator::database::Open;
use migrator::Database;

use super::database_url;
use crate::cli::OnFailure;
use crate::cli::{HealthArgs, HealthFlags};
use crate::exit::Exit;
use crate::probe;
use crate::report::{Failure, Report};
use crate::service::restore::{restore_snapshot, Options};
use crate::service::select::resolve;
use crate::settings::{Health, Settings};
use crate::state;

pub async fn run(settings: &Settings, args: &HealthArgs) -> Result<Report, Failure> {
    let health = args.flags.apply(&settings.health)?;
    // A deploy whose after-migrate hook failed, or whose undo failed, is broken whatever the
    // application answers.
    if args.restore_on_failure {
        if let Some(reason) = broken(settings).await {
            return Err(guard(settings, &reason, &health).await);
        }
    }
    let verdict = match poll(&health).await {
        Ok(ok) => after_checks(settings, &health).await.map(|()| ok),
        Err(e) => Err(e),
    };
    match verdict {
        Ok((status, waited)) => Ok(Report {
            text: format!(
                "healthy: {} answered {status} after {:.1}s\n",
                health.url.as_deref().unwrap_or_default(),
                waited.as_secs_f64()
            ),
            json: json!({ "healthy": true, "status": status, "seconds": waited.as_secs_f64() }),
            code: Exit::Success,
        }),
        // A setting that is missing or unusable says nothing of the release: exit 2, and the
        // guard never restores for it.
        Err(Unhealthy::Setting(what)) => Err(Failure::new(
            Exit::Usage,
            format!(
                "{what}{}",
                if args.restore_on_failure {
                    "; a setting says nothing of the release: nothing was restored"
                } else {
                    ""
                }
            ),
        )),
        Err(reason) if args.restore_on_failure => {
            Err(guard(settings, &reason.to_string(), &health).await)
        }
        Err(reason) => Err(Failure::new(Exit::Failed, format!("unhealthy: {reason}"))),
    }
}

/// Why a release is not healthy: the guard's reason, in its message and the deploy log.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    /// A setting the check needs is missing or unusable: the health URL (not `http://`), the
    /// database URL for the SQL probes.
    #[error("{0}")]
    Setting(String),
    /// The endpoint's last answer (or why there was none) once the timeout ran out.
    #[error("{last} (still unhealthy after {})", migrator::error::humanize(*waited))]
    Endpoint { last: String, waited: Duration },
    /// A `--check` command failed (the end of its output), or could not run.
    #[error("{what}{output}")]
    Check {
        what: crate::hooks::Error,
        output: String,
    },
    /// A SQL probe returned false.
    #[error("probe `{0}` returned false")]
    ProbeFalse(String),
    /// A SQL probe could not run.
    #[error("probe `{sql}` failed: {}", backup::error::chain(cause))]
    ProbeFailed { sql: String, cause: migrator::Error },
    /// The application exited before it was healthy (`run`).
    #[error("{0}")]
    Exited(String),
}

/// Polls until a status in `expect_status` (any 2xx by default) or the timeout. Returns the
/// healthy status and how long it took, or why it was not healthy.
pub async fn poll(h: &Health) -> Result<(u16, Duration), Unhealthy> {
    let Some(url) = h.url.clone() else {
        return Err(Unhealthy::Setting(
            "no health URL: give --url, set DBWARD_HEALTH_URL, or `url` under [health]".into(),
        ));
    };
    let started = Instant::now();
    loop {
        let per_try = h.interval.max(Duration::from_secs(2)).min(h.timeout);
        let result = probe::ask(&url, per_try).await;
        let last = match result {
            Ok((code, body)) if probe::accepted(code, &h.expect_status) => match &h.expect_body {
                Some(want) if !body.contains(want.as_str()) => format!(
                    "{url} answered {code}, but its body does not contain `{want}` (the body begins: `{}`)",
                    body.chars().take(200).collect::<String>().trim()
                ),
                _ => return Ok((code, started.elapsed())),
            },
            Ok((code, _)) => format!("{url} answered {code}"),
            Err(e @ probe::Error::NotHttp(_)) => return Err(Unhealthy::Setting(e.to_string())),
            Err(e @ probe::Error::NoAnswer(_)) => e.to_string(),
        };
        if started.elapsed() + h.interval > h.timeout {
            return Err(Unhealthy::Endpoint {
                last,
                waited: h.timeout,
            });
        }
        tokio::time::sleep(h.interval).await;
    }
}

/// What must hold once the endpoint is healthy: each `--check` command exits 0 (within the
/// health timeout; its output goes to the log), then each SQL probe returns true against the
/// live database. The first that does not is the reason the deploy is unhealthy.
pub async fn after_checks(settings: &Settings, h: &Health) -> Result<(), Unhealthy> {
    for cmd in &h.checks {
        tracing::info!("health check: sh -c {cmd:?}");
        let what = format!("check `{cmd}`");
        let (status, tail) = crate::hooks::run_captured(settings, cmd, h.timeout, &what)
            .await
            .map_err(|e| Unhealthy::Check {
                what: e,
                output: String::new(),
            })?;
        if !status.success() {
            let tail = tail.trim();
            let start = tail.len().saturating_sub(500);
            let start = (start..=tail.len())
                .find(|i| tail.is_char_boundary(*i))
                .unwrap_or(tail.len());
            return Err(Unhealthy::Check {
                what: crate::hooks::Error::Failed { what, status },
                output: format!(": {}{}", if start > 0 { "..." } else { "" }, &tail[start..]),
            });
        }
    }
    if !h.probes.is_empty() {
        let url = database_url(settings).map_err(|f| Unhealthy::Setting(f.full()))?;
        for sql in &h.probes {
            let answer = async { Database::open(&url, Open::Existing).await?.probe(sql).await };
            match answer.await {
                Ok(true) => tracing::info!("health probe true: {sql}"),
                Ok(false) => return Err(Unhealthy::ProbeFalse(sql.clone())),
                Err(cause) => {
                    return Err(Unhealthy::ProbeFailed {
                        sql: sql.clone(),
                        cause,
                    })
                }
            }
        }
    }
    Ok(())
}

/// Why the last deploy is broken whatever the application answers, if it is and was not undone
/// yet: its after-migrate hook failed, or the guard judged it unhealthy and its undo did not
/// finish (the guard then retries the undo at once).
async fn broken(settings: &Settings) -> Option<String> {
    let url = database_url(settings).ok()?;
    let scope = state::Scope::of(&settings.state_dir, &url).await;
    let deploy = scope.read().ok()??;
    if deploy.restored.is_some() {
        return None;
    }
    if let Some(e) = &deploy.hook_failed {
        return Some(format!("the deploy at {} is broken: {e}", deploy.at));
    }
    unfinished_undo(settings, &url, &scope, deploy).await
}

/// Why the guard must undo `deploy` again: it found it unhealthy and its undo did not finish,
/// and the batch is still applied. An undo that did finish without being recorded as such
/// (the guard killed right after the swap, a restore by hand) is settled here: the record says
/// rolled back, the deploy restored, and there is nothing to retry.
pub async fn unfinished_undo(
    settings: &Settings,
    url: &migrator::DatabaseUrl,
    scope: &state::Scope,
    mut deploy: state::Deploy,
) -> Option<String> {
    if deploy.restored.is_some() {
        return None;
    }
    let mut failed = scope.read_failed().ok()??;
    let why = failed.undo_failed.clone()?;
    if deploy.pre_deploy_snapshot.as_deref() != Some(failed.snapshot.as_str()) {
        return None;
    }
    let mut db = Database::open(url, Open::Existing).await.ok()?;
    let (history, repeatable) = (
        db.applied().await.ok()?,
        db.applied_repeatable().await.ok()?,
    );
    drop(db);
    if !failed.still_applied(&history, &repeatable) {
        tracing::warn!(
            "the undo of the deploy at {} was not recorded as finished, but its batch is no longer applied: recording it as rolled back",
            deploy.at
        );
        failed.undo_failed = None;
        if let Ok(store) = settings.store().await {
            super::migrate::write_failed(scope, &store, &failed).await;
        } else if let Err(e) = scope.write_failed(&failed) {
            tracing::warn!("{}", backup::error::chain(&e));
        }
        deploy.restored = Some(backup::manifest::now_rfc3339(
            time::OffsetDateTime::now_utc(),
        ));
        if let Err(e) = scope.write(&deploy) {
            tracing::warn!("{}", backup::error::chain(&e));
        }
        return None;
    }
    Some(format!(
        "the deploy at {} was found unhealthy at {} ({}), and its undo did not finish ({why}); retrying the undo",
        deploy.at, failed.at, failed.reason
    ))
}

/// How long a guard waits for another guard of the same database on this host.
const GUARD_WAIT: std::time::Duration = std::time::Duration::from_secs(2 * 3600);

/// The restore-on-failure decision and action. Always a `Failure`: exit 5 when it restored,
/// exit 1 (with the reason it did not) otherwise.
pub async fn guard(settings: &Settings, reason: &str, health: &Health) -> Failure {
    match guard_inner(settings, reason, health).await {
        Ok(f) | Err(f) => f,
    }
}

/// The application's writes a restore of `deploy` would discard, per table: between the
/// snapshot and the batch, and since the batch (net of what the batch itself wrote).
fn discarded(
    deploy: &state::Deploy,
    now: Option<&migrator::database::Counters>,
) -> Option<std::collections::BTreeMap<String, i64>> {
    let after = deploy.counters_after.as_ref()?;
    let mut out = after.since(now?);
    if let (Some(a), Some(b)) = (
        &deploy.counters_before_snapshot,
        &deploy.counters_before_apply,
    ) {
        for (t, n) in a.since(b) {
            *out.entry(t).or_default() += n;
        }
    }
    Some(out)
}

/// `done`: said after the restore ("discarded") rather than before ("would discard").
fn describe_discarded(
    d: &Option<std::collections::BTreeMap<String, i64>>,
    done: bool,
    sqlite: bool,
) -> String {
    let (would, was) = if done {
        ("", "were")
    } else {
        ("would ", "would be")
    };
    match d {
        None => format!(
            "what the restore {would}discard{} could not be measured",
            if done { "ed" } else { "" }
        ),
        Some(d) if d.is_empty() => {
            format!(
                "no writes of the application since the snapshot {was} discarded, as far as its counters show{}",
                if sqlite { " (SQLite row counts miss updates)" } else { "" }
            )
        }
        Some(d) => format!(
            "the restore {would}discard{} {} write(s) the application made since the snapshot ({})",
            if done { "ed" } else { "" },
            d.values().sum::<i64>(),
            d.iter()
                .map(|(t, n)| format!("{t}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

async fn guard_inner(
    settings: &Settings,
    reason: &str,
    health: &Health,
) -> Result<Failure, Failure> {
    let on_failure = health.on_failure;
    let url = database_url(settings)?;
    let not = |why: String| {
        Failure::new(
            Exit::Failed,
            format!("unhealthy: {reason}. Not restoring: {why}"),
        )
    };
    // One guard at a time on this host: a second waits for the first, then finds the deploy
    // undone (or not) in the records the first one wrote (its scope read once the first is
    // done: the database's identity cannot be read while a rewind has the cluster down).
    let Some(_guard_lock) = state::guard_lock(&settings.state_dir, &url, GUARD_WAIT).await? else {
        return Err(not(format!(
            "another guard of {} on this host has been undoing it for {} and still is; see its log",
            url.display(),
            migrator::error::humanize(GUARD_WAIT)
        )));
    };
    let scope = state::Scope::of(&settings.state_dir, &url).await;
    let Some(mut deploy) = scope.read()? else {
        return Err(not(format!(
            "no deploy of {} is recorded in {}",
            url.display(),
            settings.state_dir.display()
        )));
    };
    if let Some(at) = &deploy.restored {
        return Err(not(format!("the pre-deploy snapshot of this deploy was already restored at {at}; it is never restored twice")));
    }
    if !deploy.changed() {
        return Err(not(
            "this host's last deploy applied no migrations, so the database is not what changed here (where hosts share a database, the guard of the host whose deploy applied the batch decides)".into(),
        ));
    }
    let Some(snapshot) = deploy.pre_deploy_snapshot.clone() else {
        return Err(not(
            "the last deploy took no pre-deploy snapshot (a first deploy, or --no-snapshot)".into(),
        ));
    };
    // The other hosts first (their answer may take up to the health timeout): the live
    // database is read, and its head checked, after it.
    let hosts = match on_failure {
        OnFailure::Report => None,
        _ => hosts_allow(settings, health, &scope, &url, &deploy, &snapshot, reason).await?,
    };
    let (history, repeatable, counters_now) = read_live(&url).await?;
    let batch = batch_of(&history, &repeatable, &deploy);
    let newest = dbconn::history::newest(&history);
    let now = newest.map(|h| (h.version, h.checksum.to_string()));
    let then = deploy
        .head
        .as_ref()
        .map(|h| (h.version, h.checksum.clone()));
    if now != then {
        return Err(not(format!(
            "the migration head moved since that deploy (now {}, the deploy left {}); someone migrated since",
            newest.map(|h| h.label()).unwrap_or_else(|| "none".into()),
            deploy.head.as_ref().map(|h| h.label()).unwrap_or_else(|| "none".into())
        )));
    }
    let discard = discarded(&deploy, counters_now.as_ref());
    let sqlite = matches!(url, migrator::DatabaseUrl::Sqlite(_));
    let discard_text = describe_discarded(&discard, false, sqlite);
    let measured = json!({ "would_discard": discard, "not_additive": deploy.not_additive, "on_failure": on_failure });
    if let Some(why) = keep_reason(on_failure, &deploy, &batch) {
        let outcome = format!("not restored: {reason}; {why}; {discard_text}");
        let logged = guard_entry("guard", &url, &deploy, &snapshot, outcome);
        let store = settings.store().await.ok();
        crate::deploys::append(&scope, store.as_ref(), &logged).await;
        let mut f = not(format!("{why}; {discard_text}"));
        f.details = measured;
        return Err(f);
    }
    tracing::warn!("restoring: {discard_text}");
    let stores = settings.stores().await?;
    let store = stores.primary();
    // From here on the guard undoes the deploy. The batch is recorded first, as one whose undo
    // has not finished: a `migrate` that starts meanwhile (a restarting unit, another host)
    // refuses it, and so does one after a failed or killed undo, instead of recording a deploy
    // that would hide this one from the next guard. It becomes "rolled back" only once the
    // undo succeeded.
    let began = backup::manifest::now_rfc3339(time::OffsetDateTime::now_utc());
    let failed = state::FailedBatch {
        at: began.clone(),
        reason: reason.to_string(),
        snapshot: snapshot.clone(),
        batch,
        database_id: None,
        undo_failed: Some(format!(
            "the undo began at {began} and did not finish (the guard was stopped or killed)"
        )),
    };
    super::migrate::write_failed(&scope, store, &failed).await;
    let records = Undo {
        scope: &scope,
        store,
        url: &url,
        snapshot: &snapshot,
        reason,
        hosts: hosts.as_ref(),
    };
    let undone = undo(settings, &url, &stores, &snapshot, &deploy, then).await;
    let (mut restored, kept, rewind) = match undone {
        Ok(done) => done,
        Err(f) => return Err(records.failed(&deploy, failed, f).await),
    };
    let warnings = rewind_warnings(rewind.as_ref());
    let hosts_said = hosts_said(hosts.as_ref());
    let outcome =
        format!("restored by the health guard: {reason}; {discard_text}{warnings}{hosts_said}");
    records.succeeded(&mut deploy, failed, outcome).await;
    // What a rewind discarded, counted from the stopped cluster's WAL once its success is
    // recorded (a guard stopped while it counts has nothing left to undo). Recorded: the
    // migration lock on the rewound cluster is let go, and a deploy may begin.
    let rewound = rewind.is_some();
    let counted = match rewind {
        Some(mut r) => {
            r.lock.release();
            crate::service::rewind::count_discarded(settings, &url, &mut r, deploy.batch_xid).await;
            restored = json!(r);
            Some(describe_rewind_discard(&r))
        }
        None => None,
    };
    let message = if rewound {
        format!(
                "unhealthy: {reason}. Rewound the cluster to the pre-deploy restore point {snapshot}; the failed cluster is kept as {kept}; {}{warnings}",
                counted.unwrap_or_else(|| describe_discarded(&discard, true, sqlite))
            )
    } else {
        format!("unhealthy: {reason}. Restored the pre-deploy snapshot {snapshot}; the failed database is kept as {kept}; {}", describe_discarded(&discard, true, sqlite))
    } + &hosts_said;
    Ok(Failure {
        details: json!({
            "discarded": if rewound { restored["discarded"].clone() } else { json!(discard) },
            "restored": restored,
            "rewound": rewound,
            "not_additive": deploy.not_additive,
            "hosts": hosts,
        }),
        ..Failure::new(Exit::Restored, message)
    })
}

/// What the other hosts of a shared database (`health.hosts`) say to undoing `deploy`:
/// `None` when none are set, or when this retries an undo that already began (its decision was
/// taken). The rule not met: the decision goes to the deploy log, and the guard's failure
/// (exit 1) comes back.
async fn hosts_allow(
    settings: &Settings,
    health: &Health,
    scope: &state::Scope,
    url: &migrator::DatabaseUrl,
    deploy: &state::Deploy,
    snapshot: &str,
    reason: &str,
) -> Result<Option<crate::hosts::Verdict>, Failure> {
    let retrying = scope
        .read_failed()
        .ok()
        .flatten()
        .is_some_and(|f| f.undo_failed.is_some() && f.snapshot == snapshot);
    if health.hosts.is_empty() || retrying {
        return Ok(None);
    }
    let verdict = crate::hosts::ask_until_met(health).await;
    if verdict.met {
        tracing::warn!("the other hosts: {verdict}");
        return Ok(Some(verdict));
    }
    let why = format!("the other hosts: {verdict}");
    let mut logged = guard_entry(
        "guard",
        url,
        deploy,
        snapshot,
        format!("not restored: {reason}; {why}"),
    );
    logged.hosts = Some(verdict.clone());
    let store = settings.store().await.ok();
    crate::deploys::append(scope, store.as_ref(), &logged).await;
    let mut f = Failure::new(
        Exit::Failed,
        format!("unhealthy: {reason}. Not restoring: {why}. The database stays as the serving hosts use it; fix or roll back this host's release, or restore by hand with `dbward restore pre-deploy`"),
    );
    f.details = json!({ "hosts": verdict });
    Err(f)
}

/// The live database's history, repeatable history and write counters (`None`, said, where
/// they cannot be read).
async fn read_live(
    url: &migrator::DatabaseUrl,
) -> Result<
    (
        Vec<migrator::Applied>,
        Vec<migrator::AppliedRepeatable>,
        Option<migrator::database::Counters>,
    ),
    Failure,
> {
    let mut db = Database::open(url, Open::Existing).await?;
    let history = db.applied().await?;
    let repeatable = db.applied_repeatable().await?;
    let counters = match db.write_counters().await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("{}", backup::error::chain(&e));
            None
        }
    };
    Ok((history, repeatable, counters))
}

/// The batch being rolled back, as the history recorded it: `migrate` refuses the same batch
/// again, so a restart loop stops before it touches the database.
fn batch_of(
    history: &[migrator::Applied],
    repeatable: &[migrator::AppliedRepeatable],
    deploy: &state::Deploy,
) -> Vec<state::BatchFile> {
    history
        .iter()
        .filter(|a| deploy.applied.contains(&a.version))
        .map(|a| state::BatchFile {
            version: a.version,
            name: a.name.clone(),
            checksum: a.checksum.to_string(),
            version_text: a.version_text.clone(),
        })
        .chain(
            repeatable
                .iter()
                .filter(|r| deploy.repeatable.contains(&r.name))
                .map(|r| state::BatchFile {
                    version: 0,
                    name: format!("R__{}", r.name),
                    checksum: r.checksum.to_string(),
                    version_text: None,
                }),
        )
        .collect()
}

/// Why `health.on_failure` keeps the deploy in place (`None`: it is undone).
fn keep_reason(
    on_failure: OnFailure,
    deploy: &state::Deploy,
    batch: &[state::BatchFile],
) -> Option<String> {
    match on_failure {
        OnFailure::Report => Some(
            "health.on_failure = report; restore it by hand with `dbward restore pre-deploy`"
                .to_string(),
        ),
        OnFailure::RestoreIfDestructive if deploy.not_additive.is_empty() => Some(format!(
            "the batch ({}) is purely additive, so the release still running on the old schema can keep running on this one (health.on_failure = restore-if-destructive); fix the new release, or restore by hand with `dbward restore pre-deploy`",
            batch.iter().map(|b| b.label()).collect::<Vec<_>>().join(", ")
        )),
        OnFailure::RestoreIfDestructive => {
            tracing::warn!(
                "the batch is not purely additive: {}",
                deploy.not_additive.join("; ")
            );
            None
        }
        OnFailure::Restore => None,
    }
}

/// Where a guard's undo of a deploy is recorded, and why it undoes it.
struct Undo<'a> {
    scope: &'a state::Scope,
    store: &'a backup::Store,
    url: &'a migrator::DatabaseUrl,
    snapshot: &'a str,
    reason: &'a str,
    /// The other hosts' answers that let the undo go ahead.
    hosts: Option<&'a crate::hosts::Verdict>,
}

impl Undo<'_> {
    /// An undo that failed (`f`): recorded as unfinished, so `migrate` refuses to go on and
    /// the next guard retries it, and said with what to do next. A second guard that finds the
    /// deploy undone by the first has nothing failed to record.
    async fn failed(
        &self,
        deploy: &state::Deploy,
        mut failed: state::FailedBatch,
        mut f: Failure,
    ) -> Failure {
        let undone_meanwhile = self
            .scope
            .read()
            .ok()
            .flatten()
            .is_some_and(|d| d.restored.is_some());
        if undone_meanwhile {
            failed.undo_failed = None;
            super::migrate::write_failed(self.scope, self.store, &failed).await;
            return f;
        }
        let first_line = f.message.lines().next().unwrap_or_default().to_string();
        failed.undo_failed = Some(first_line.clone());
        super::migrate::write_failed(self.scope, self.store, &failed).await;
        let logged = guard_entry(
            "guard",
            self.url,
            deploy,
            self.snapshot,
            format!("undo failed: {}; {first_line}", self.reason),
        );
        crate::deploys::append(self.scope, Some(self.store), &logged).await;
        let next = " The batch is still applied, and `migrate` refuses to go on until it is undone: fix the cause, then run `dbward health --restore-on-failure` again (it retries the undo at once), or `dbward restore pre-deploy`; or keep the batch with `dbward migrate --retry-failed`.";
        f.message = format!(
            "unhealthy: {}. Undoing the deploy failed: {}{next}",
            self.reason, f.message
        );
        f
    }

    /// An undo that succeeded: the batch is rolled back (no longer unfinished), the deploy is
    /// marked restored (never restored twice), and the deploy log says `outcome`.
    async fn succeeded(
        &self,
        deploy: &mut state::Deploy,
        mut failed: state::FailedBatch,
        outcome: String,
    ) {
        failed.undo_failed = None;
        super::migrate::write_failed(self.scope, self.store, &failed).await;
        deploy.restored = Some(backup::manifest::now_rfc3339(
            time::OffsetDateTime::now_utc(),
        ));
        if let Err(e) = self.scope.write(deploy) {
            tracing::error!(
                "restored, but recording it failed: {}",
                backup::error::chain(&e)
            );
        }
        let mut logged = guard_entry("restore", self.url, deploy, self.snapshot, outcome);
        logged.hosts = self.hosts.cloned();
        crate::deploys::append(self.scope, Some(self.store), &logged).await;
    }
}

/// `; warning: ...` for what a rewind warned of.
fn rewind_warnings(rewind: Option<&backup::pitr::rewind::Rewound>) -> String {
    rewind
        .map(|r| r.warnings.join("; "))
        .filter(|w| !w.is_empty())
        .map(|w| format!("; warning: {w}"))
        .unwrap_or_default()
}

/// `; the other hosts: ...` when they were asked.
fn hosts_said(hosts: Option<&crate::hosts::Verdict>) -> String {
    hosts
        .map(|v| format!("; the other hosts: {v}"))
        .unwrap_or_default()
}

/// What a rewind discarded, as the guard says it.
fn describe_rewind_discard(r: &backup::pitr::rewind::Rewound) -> String {
    match (&r.discarded, &r.discarded_unknown) {
        (Some(d), _) => format!(
            "the rewind discarded {} committed row change(s) made after the restore point, in every database of the cluster ({}; {} inserted, {} updated, {} deleted; counted in the stopped cluster's WAL from {} to {}, the batch's own left out)",
            d.total(),
            if d.by_database.is_empty() {
                "none".to_string()
            } else {
                d.by_database
                    .iter()
                    .map(|(db, n)| format!("{db}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            d.inserted,
            d.updated,
            d.deleted,
            d.from_lsn,
            d.to_lsn
        ),
        (None, Some(why)) => format!("what the rewind discarded could not be counted: {why}"),
        (None, None) => "what the rewind discarded was not counted".into(),
    }
}

/// Undoes `deploy`: rewinds the cluster to its restore point ([pitr.server]), or restores its
/// snapshot (a dump or a file). Returns what was restored (JSON), where the failed database is
/// kept, and whether it was a rewind.
async fn undo(
    settings: &Settings,
    url: &migrator::DatabaseUrl,
    stores: &backup::StoreSet,
    snapshot: &str,
    deploy: &state::Deploy,
    head: Option<(i64, String)>,
) -> Result<
    (
        serde_json::Value,
        String,
        Option<backup::pitr::rewind::Rewound>,
    ),
    Failure,
> {
    let point = match url {
        migrator::DatabaseUrl::Postgres(_) => {
            backup::pitr::cluster::point(stores.primary(), &url.name(), snapshot).await?
        }
        migrator::DatabaseUrl::Sqlite(_) => None,
    };
    if point.is_some() {
        tracing::warn!(
            "unhealthy after the deploy of {} that applied {:?}: rewinding the cluster to its pre-deploy restore point {snapshot} ([pitr.server]: stop, move the data directory aside, restore, start)",
            deploy.at,
            deploy.applied
        );
        // Checked and prepared (the base extracted beside the running cluster) before the
        // cluster is stopped: a rewind that fails this far changed nothing.
        let r = crate::service::rewind::rewind(settings, url, snapshot, head).await?;
        let kept = format!("the data directory {}", r.kept.display());
        return Ok((json!(r), kept, Some(r)));
    }
    tracing::warn!(
        "unhealthy after the deploy of {} that applied {:?}: restoring its pre-deploy snapshot {snapshot} \
         as `dbward restore {snapshot} --yes --force --terminate-connections` would \
         (a running SQLite app keeps writing to the file moved aside; PostgreSQL sessions are ended)",
        deploy.at,
        deploy.applied
    );
    let (m, copies) = resolve(settings, stores, url, snapshot).await?;
    let outcome = restore_snapshot(
        settings,
        &copies,
        url,
        &m,
        &Options {
            force: true,
            terminate_connections: true,
            to: None,
        },
    )
    .await?;
    let kept = outcome
        .outcome
        .replaced
        .as_ref()
        .map(|r| r.to_string())
        .unwrap_or_default();
    Ok((json!(outcome), kept, None))
}

/// The deploy log's entry for what the guard did with `deploy`.
fn guard_entry(
    event: &str,
    url: &migrator::DatabaseUrl,
    deploy: &state::Deploy,
    snapshot: &str,
    outcome: String,
) -> crate::deploys::Entry {
    let mut e = crate::deploys::Entry::new(event, url.display(), outcome);
    e.applied = deploy.applied.clone();
    e.repeatable = deploy.repeatable.clone();
    e.snapshot = Some(snapshot.to_string());
    e
}

impl HealthFlags {
    /// Flags over the `[health]` settings. An empty `expect_body` is a configuration error
    /// (exit 2): it would match every body, turning the release check off unseen (an unset
    /// `${DBWARD_RELEASE}` in a unit's `--expect-body`).
    pub fn apply(&self, base: &Health) -> Result<Health, Failure> {
        let health = Health {
            url: self.url.clone().or_else(|| base.url.clone()),
            timeout: self.timeout.unwrap_or(base.timeout),
            interval: self.interval.unwrap_or(base.interval),
            expect_status: if self.expect_status.is_empty() {
                base.expect_status.clone()
            } else {
                self.expect_status.clone()
            },
            expect_body: self
                .expect_body
                .clone()
                .or_else(|| base.expect_body.clone()),
            checks: if self.checks.is_empty() {
                base.checks.clone()
            } else {
                self.checks.clone()
            },
            probes: base.probes.clone(),
            on_failure: self.on_failure.unwrap_or(base.on_failure),
            hosts: base.hosts.clone(),
            hosts_rule: base.hosts_rule,
        };
        if health
            .expect_body
            .as_deref()
            .is_some_and(|b| b.trim().is_empty())
        {
            return Err(Failure::new(
                Exit::Usage,
                "the text the health answer must contain (--expect-body, health.expect_body) is empty: it would match every answer, so the release check would pass anything. Is the variable it comes from (DBWARD_RELEASE?) unset? Give the text, or leave the setting out",
            ));
        }
        Ok(health)
    }
}
